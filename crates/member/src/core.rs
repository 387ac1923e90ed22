//! The peer's protocol core, without I/O: group membership, the Hello/HelloAck handshake,
//! the checks every datagram passes, and the translation between datagrams and the
//! `ordering` cores. Datagrams and time come in; datagrams to send and messages to deliver
//! come out.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ordering::{FifoReceiver, FifoSender, Output as Order, Start, TotalOrderReceiver};
use proto::bundle::BundleReaders;
use proto::{
    CounterRange, Datagram, DatagramType, LEGACY_DATAGRAM_LEN, PROTOCOL_VERSION, SEQUENCER,
};
use thiserror::Error;

use crate::member::{Answer, JoinFailure, Registration, Ticket, TrackerRequest};
use crate::membership::{MemberInfo, Members};
use crate::transmit::Transmit;

/// How long to wait for a member's answer to our Hello before asking again, and how many
/// times to ask (about a second: even at 30 % loss each way, twenty tries all fail about
/// once in a million); after that the ordering core's handshake timeout treats it as an old
/// peer, which never answers.
const HELLO_RETRY: Duration = Duration::from_millis(50);
const HELLO_ATTEMPTS: u32 = 20;

/// While the sequencer of a group is lost, how often to greet its address in case a new one
/// listens there (a new sequencer collects Hellos for `sequencer::TAKEOVER_WINDOW`, 500 ms).
const SEQUENCER_PROBE: Duration = Duration::from_millis(100);

/// One eviction of ours is told twice (the tracker's Bye, its refusal of our heartbeat):
/// within this long, the second is the same eviction.
const SELF_EVICTION_DEBOUNCE: Duration = Duration::from_secs(2);

/// Flow control: how long an author whose window is closed waits before asking the members
/// it waits for how far they are (a Digest, which they answer with an Ack), and again after.
const FLOW_PROBE: Duration = Duration::from_millis(20);

/// Flow control: a member that acknowledges nothing new for this long while the author waits
/// for it stops holding the author back until it acknowledges again. It is probably frozen
/// and about to be evicted; if not, it recovers what it missed by retransmission requests.
const FLOW_STALL: Duration = Duration::from_secs(1);

/// After leaving a group, how long we still answer requests for the tail of our stream
/// there: the members wait `bye_grace` (1 s) for it after our Bye.
const LINGER: Duration = Duration::from_secs(2);

/// When our Bye is said again after leaving (a lost Bye would leave the members waiting
/// for our stream, and a lost last message with it unnoticed).
const BYE_REPEATS: [Duration; 2] = [Duration::from_millis(50), Duration::from_millis(250)];

/// A group we left a moment ago.
#[derive(Debug)]
struct Departed {
    members: Members,
    bye: Arc<[u8]>,
    left_at: Instant,
    byes_repeated: usize,
}

impl Departed {
    /// When something is next due: a repeated Bye, or the end of the linger.
    fn due(&self) -> Instant {
        BYE_REPEATS
            .get(self.byes_repeated)
            .map_or(self.left_at + LINGER, |d| self.left_at + *d)
    }
}

/// Delivery order of a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Each sender's messages in the order sent.
    Fifo,
    /// One order for the whole group, the sequencer's.
    Total,
}

/// A message handed to the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The group it was sent to.
    pub group: Arc<str>,
    /// Who wrote it.
    pub author: Arc<str>,
    /// Its counter: the author's in FIFO mode, the sequence number in total order.
    pub counter: u64,
    /// What the author sent: UTF-8 text from the report's peers, any bytes from newer ones.
    pub payload: Vec<u8>,
    /// When the author sent it (µs since the Unix epoch on the author's clock), if it said.
    pub sent_at_us: Option<u64>,
}

impl Message {
    /// The payload as text (bytes that are not UTF-8 replaced with U+FFFD).
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.payload)
    }
}

/// Something about the group worth telling the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A member announced itself (its Hello arrived).
    Joined {
        /// The group.
        group: String,
        /// The member.
        member: String,
    },
    /// A member left (its Bye arrived).
    Left {
        /// The group.
        group: String,
        /// The member.
        member: String,
    },
    /// The tracker evicted a member that stopped sending heartbeats.
    Evicted {
        /// The group.
        group: String,
        /// The member.
        member: String,
    },
    /// Total order is unavailable in the group: its sequencer is gone. Nothing is delivered
    /// out of order meanwhile; messages sent are kept and sequenced when one returns.
    SequencerLost {
        /// The group.
        group: String,
        /// Why we think so.
        reason: String,
    },
    /// The tracker evicted us (our heartbeats did not reach it in time): the others forgot
    /// us, so we greet them afresh, our stream starting at our next message.
    WeWereEvicted {
        /// The group.
        group: String,
    },
    /// A sequencer (a new one, or the old one after a false alarm) orders the group again.
    SequencerBack {
        /// The group.
        group: String,
        /// Whether it is a new sequencer, which took over after what members delivered.
        new: bool,
    },
    /// The tracker accepted our registration (a [`Member`](crate::Member)'s event).
    Registered(Registration),
    /// The tracker refused our registration (the name is taken, or not a valid name): the
    /// member cannot go on under this name.
    RegistrationRefused {
        /// The tracker's words.
        reason: String,
    },
    /// A join of the application succeeded: we are in the group.
    GroupJoined {
        /// The ticket [`Member::join`](crate::Member::join) returned.
        ticket: Ticket,
        /// The group.
        group: String,
        /// Its members, as the tracker listed them (us included).
        members: Vec<String>,
    },
    /// A join did not happen: the application's (with its ticket), or one of our groups
    /// joined again after registering again (no ticket).
    JoinFailed {
        /// The ticket [`Member::join`](crate::Member::join) returned, if it was the
        /// application's join.
        ticket: Option<Ticket>,
        /// The group.
        group: String,
        /// Why.
        reason: JoinFailure,
    },
    /// The tracker answered a question of the application.
    Answered {
        /// The ticket [`Member::ask`](crate::Member::ask) returned.
        ticket: Ticket,
        /// Its answer.
        answer: Answer,
    },
}

/// What the core asks its caller to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this datagram.
    Transmit(Transmit),
    /// Hand this message to the application.
    Deliver(Message),
    /// Tell the user.
    Event(Event),
    /// Send this request over the tracker connection (a [`Member`](crate::Member)'s
    /// output; a bare `PeerCore` never asks).
    Tracker(TrackerRequest),
}

/// Why a request of the application was refused; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    /// The group was not joined.
    #[error("not a member of group {group:?}: join it first (!j {group})")]
    NotJoined {
        /// The group named.
        group: String,
    },
    /// The payload is not UTF-8 text, and the group has members that speak only the report's
    /// protocol (or that have not announced theirs yet): they could not read it.
    #[error(
        "a payload that is not UTF-8 text cannot go to {group:?}: {member:?} speaks only the report's protocol (or has not said yet)"
    )]
    NotText {
        /// The group.
        group: String,
        /// A member that could not read it.
        member: String,
    },
    /// The group was joined already.
    #[error("already a member of group {group:?}")]
    AlreadyJoined {
        /// The group named.
        group: String,
    },
    /// The request needs the tracker, and we are not registered on a connection to it.
    #[error("the tracker cannot be reached now: try again once it can")]
    NoTracker,
    /// The member is quitting.
    #[error("quitting: nothing more is sent")]
    Quitting,
    /// The message does not fit in one datagram the report's peers can read.
    #[error(
        "message too long: {chars} characters, and at most {max_chars} fit in one datagram (fewer if they are not plain ASCII)"
    )]
    TooLong {
        /// Its length in characters.
        chars: usize,
        /// How many plain ASCII characters would fit.
        max_chars: usize,
    },
}

/// What the core has seen and done, beyond the ordering counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Datagrams received.
    pub datagrams_received: u64,
    /// Application datagrams sent (first transmissions and retransmissions).
    pub app_datagrams_sent: u64,
    /// Control datagrams sent (Hello, HelloAck, Bye, Nack, Digest, Unavailable).
    pub control_datagrams_sent: u64,
    /// Dropped: not a valid datagram.
    pub malformed: u64,
    /// Dropped: claimed to come from a member but arrived from another address.
    pub spoofed: u64,
    /// Dropped: from a member or for a group we do not know.
    pub unknown: u64,
    /// Retransmission requests received (others still recovering our messages).
    pub nacks_received: u64,
    /// Dropped: a stream this mode does not deliver (the sequencer's in FIFO mode, the
    /// authors' own multicasts in total order).
    pub other_mode: u64,
    /// Total order: sequenced messages not delivered because we had delivered them from an
    /// earlier sequencer.
    pub already_delivered: u64,
    /// Times the tracker told us it had evicted us from a group (we greeted it afresh).
    pub times_evicted: u64,
    /// Total order: times a group's sequencer was lost.
    pub sequencer_losses: u64,
    /// Total order: times a new sequencer took a group over.
    pub sequencer_takeovers: u64,
    /// Flow control: acknowledgements sent to authors (included in the control datagrams).
    pub acks_sent: u64,
    /// Flow control: acknowledgements received from members.
    pub acks_received: u64,
    /// Flow control: times our window closed (we waited for the slowest member).
    pub window_closed: u64,
    /// Flow control: Digests sent to ask the members we waited for how far they are.
    pub flow_probes: u64,
}

/// What [`PeerCore::new`] needs.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// This member's name.
    pub username: String,
    /// This member's UDP address (as registered with the tracker).
    pub addr: SocketAddr,
    /// The tracker's address: the only source believed for a Bye on another's behalf.
    pub tracker: SocketAddr,
    /// Delivery order.
    pub mode: Mode,
    /// Windows and timers of the ordering cores.
    pub ordering: ordering::Config,
}

#[derive(Debug, Clone)]
struct Received {
    origin: Arc<str>,
    /// The author's counter, when the sequencer says (`OriginCounter`).
    origin_counter: Option<u64>,
    payload: Vec<u8>,
    sent_at_us: Option<u64>,
}

#[derive(Debug, Default)]
struct GroupState {
    members: Members,
    hello_attempts: u32,
    hello_retry_at: Option<Instant>,
    /// In total order the other members are greeted only once the sequencer has welcomed
    /// us, so that a member who hears our Hello knows the sequencer includes us: otherwise it
    /// could start sending before our place in the sequence is fixed.
    peers_greeted: bool,
    /// Total order: the epoch of the sequencer we deliver from (its HelloAck's).
    sequencer_epoch: Option<u64>,
    /// Total order: the sequencer is lost; when to greet its address next.
    sequencer_probe_at: Option<Instant>,
    /// Total order: each author's highest counter delivered, told to a new sequencer.
    delivered: HashMap<Arc<str>, u64>,
    /// Total order, after a takeover: per author, the counter up to which what the new
    /// sequencer sends was delivered already (from the old one). An entry goes at the first
    /// message beyond it.
    skip_through: HashMap<Arc<str>, u64>,
    /// When we last greeted the group afresh after our own eviction: the tracker's notice
    /// and its refusal of our heartbeat both tell us, and greeting twice would make the
    /// others skip what we sent between the two.
    greeted_after_eviction: Option<Instant>,
    /// Flow control, as an author: how far each member (and, in total order, we ourselves)
    /// delivered our stream.
    acked_by: HashMap<String, Acked>,
    /// Flow control, as an author: while our window is closed, when to ask again.
    flow_probe_at: Option<Instant>,
    /// Flow control, as a member: per author, the highest counter of its stream we
    /// delivered and the highest we acknowledged.
    owed: HashMap<Arc<str>, (u64, u64)>,
}

impl GroupState {
    /// Forgets what we kept of `member`'s stream and it of ours (it left, was evicted or
    /// started afresh).
    fn forget_streams(&mut self, member: &str) {
        self.skip_through.remove(member);
        self.owed.remove(member);
        self.acked_by.remove(member);
    }
}

/// How far one member delivered our stream.
#[derive(Debug, Clone, Copy)]
struct Acked {
    /// Our highest counter it delivered.
    through: u64,
    /// Since when it holds us back without progress (renewed whenever it catches up or
    /// acknowledges more).
    since: Instant,
}

/// One member's protocol state across all its groups.
#[derive(Debug)]
pub struct PeerCore {
    me: Arc<str>,
    addr: SocketAddr,
    tracker: SocketAddr,
    mode: Mode,
    tx: FifoSender<Arc<[u8]>>,
    fifo: FifoReceiver<Received>,
    total: TotalOrderReceiver<Received>,
    groups: HashMap<String, GroupState>,
    /// Groups we left a moment ago: we still answer their members' requests for the tail
    /// of our stream, and say our Bye again, until [`LINGER`] is over.
    departed: HashMap<String, Departed>,
    outputs: VecDeque<Output>,
    traffic: Traffic,
    /// See [`ordering::Config::flow_window`].
    flow_window: u64,
    /// Members that announced they read bundles.
    bundle_readers: BundleReaders,
}

/// Records that `member` delivered our stream through `counter`.
fn acknowledge(acked_by: &mut HashMap<String, Acked>, member: &str, counter: u64, now: Instant) {
    match acked_by.get_mut(member) {
        Some(a) if counter > a.through => {
            a.through = counter;
            a.since = now;
        }
        Some(_) => {}
        None => {
            acked_by.insert(
                member.to_owned(),
                Acked {
                    through: counter,
                    since: now,
                },
            );
        }
    }
}

fn ranges_of(ranges: &[CounterRange]) -> Vec<RangeInclusive<u64>> {
    ranges.iter().map(|r| r.first..=r.last).collect()
}

fn wire_ranges(ranges: &[RangeInclusive<u64>]) -> Vec<CounterRange> {
    ranges
        .iter()
        .take(proto::MAX_RANGES)
        .map(|r| CounterRange::new(*r.start(), *r.end()))
        .collect()
}

impl PeerCore {
    /// A member of no group yet.
    pub fn new(config: CoreConfig) -> Self {
        Self {
            me: Arc::from(config.username.as_str()),
            addr: config.addr,
            tracker: config.tracker,
            mode: config.mode,
            flow_window: config.ordering.flow_window,
            bundle_readers: BundleReaders::default(),
            tx: FifoSender::new(config.ordering.clone()),
            fifo: FifoReceiver::new(config.ordering.clone()),
            total: TotalOrderReceiver::new(config.ordering, SEQUENCER),
            groups: HashMap::new(),
            departed: HashMap::new(),
            outputs: VecDeque::new(),
            traffic: Traffic::default(),
        }
    }

    /// This member's name.
    pub fn username(&self) -> &str {
        &self.me
    }

    /// This member's UDP address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The delivery order.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The groups joined, in no particular order.
    pub fn groups(&self) -> Vec<String> {
        self.groups.keys().cloned().collect()
    }

    /// Whether `group` is joined.
    pub fn is_joined(&self, group: &str) -> bool {
        self.groups.contains_key(group)
    }

    /// Other members of `group` whose Hello or HelloAck has arrived: the ones whose streams
    /// are set up both ways.
    pub fn members_heard(&self, group: &str) -> usize {
        self.groups.get(group).map_or(0, |g| {
            g.members
                .iter()
                .filter(|(name, m)| m.heard && name.as_str() != SEQUENCER)
                .count()
        })
    }

    /// Where we are in `author`'s stream in `group` (FIFO), or in the group's sequence
    /// (total order, whatever `author`): the next counter to deliver, and whether the
    /// handshake fixed the start. A stream starts where the handshake put it: a member
    /// delivers what an author sent from then on, not what it sent before it heard us.
    pub fn stream(&self, group: &str, author: &str) -> Option<ordering::StreamStatus> {
        match self.mode {
            Mode::Fifo => self.fifo.stream(group, author),
            Mode::Total => self.total.stream(group),
        }
    }

    /// Whether the sequencer of `group` is ready for our messages: it told us where its
    /// sequence starts, or it never answered our Hellos (the report's sequencer has no
    /// handshake: its sequence starts with whatever it forwards first).
    pub fn sequencer_ready(&self, group: &str) -> bool {
        self.total.stream(group).is_some_and(|s| s.started)
            || self.groups.get(group).is_some_and(|g| {
                g.peers_greeted && g.members.get(SEQUENCER).is_some_and(|m| !m.heard)
            })
    }

    /// Datagram totals.
    pub fn traffic(&self) -> Traffic {
        self.traffic
    }

    /// Ordering totals of the sender and the receiver of this mode.
    pub fn ordering_counters(&self) -> ordering::Counters {
        let mut c = self.tx.counters();
        c += match self.mode {
            Mode::Fifo => self.fifo.counters(),
            Mode::Total => self.total.counters(),
        };
        c
    }

    /// We joined `group`; `members` is the tracker's list after the join. Sends a Hello to
    /// every other member and prepares their streams. Joining a group already joined (after
    /// the tracker came back) only greets members not known yet.
    pub fn join(&mut self, now: Instant, group: &str, members: &[proto::Member]) {
        // Joining again ends what was left of an earlier stay (its stream starts afresh).
        self.departed.remove(group);
        let start = self.tx.open(group);
        let fresh = !self.groups.contains_key(group);
        let state = self.groups.entry(group.to_owned()).or_default();
        let mut greet = Vec::new();
        for m in members {
            if *m.username == *self.me || state.members.get(&m.username).is_some() {
                continue;
            }
            let Ok(ip) = m.ip.parse::<IpAddr>() else {
                continue;
            };
            let addr = SocketAddr::new(ip, m.port);
            state.members.insert(
                &m.username,
                MemberInfo {
                    our_start: Some(start),
                    ..MemberInfo::listed(addr)
                },
            );
            if m.username == SEQUENCER {
                if self.mode == Mode::Total {
                    greet.push(addr);
                }
                continue;
            }
            match self.mode {
                Mode::Fifo => {
                    self.fifo
                        .add_sender(now, group, &m.username, Start::Handshake);
                    greet.push(addr);
                }
                // Greeted once the sequencer has answered (see `peers_greeted`).
                Mode::Total if state.peers_greeted => greet.push(addr),
                Mode::Total => {}
            }
        }
        if fresh {
            match self.mode {
                Mode::Fifo => {
                    self.fifo.add_sender(now, group, &self.me, Start::At(start));
                    state.peers_greeted = true;
                }
                Mode::Total => self.total.join(now, group, Start::Handshake),
            }
            state.hello_attempts = 1;
            state.hello_retry_at = Some(now + HELLO_RETRY);
        }
        let hello = self.control(DatagramType::Hello, group, start, None);
        for to in greet {
            self.transmit(to, hello.clone(), false);
        }
    }

    /// We leave `group`: every member gets a Bye with our final counter (again a little
    /// later, in case it is lost), and for a while we still answer their requests for the
    /// tail of our stream. Returns false if the group was not joined.
    pub fn leave(&mut self, now: Instant, group: &str) -> bool {
        let Some(state) = self.groups.remove(group) else {
            return false;
        };
        let final_counter = self.tx.close(group).unwrap_or(0);
        let mut bye = Datagram::new(
            DatagramType::Bye,
            group,
            &*self.me,
            "",
            self.addr,
            final_counter,
            &*self.me,
        );
        bye.final_counter = Some(final_counter);
        let bytes = self.encode(&bye);
        for (_, m) in state.members.iter() {
            self.transmit(m.addr, bytes.clone(), false);
        }
        self.fifo.remove_group(group);
        self.total.leave(group);
        self.departed.insert(
            group.to_owned(),
            Departed {
                members: state.members,
                bye: bytes,
                left_at: now,
                byes_repeated: 0,
            },
        );
        true
    }

    /// Multicasts `payload` to `group`, stamped with `sent_at_us`; returns its counter.
    /// UTF-8 text reaches every member; other bytes only groups whose members all speak the
    /// newer protocol (the report's peers read text only), else [`Error::NotText`].
    pub fn send(
        &mut self,
        now: Instant,
        group: &str,
        payload: &[u8],
        sent_at_us: u64,
    ) -> Result<u64, Error> {
        let counter = self
            .tx
            .next_counter(group)
            .ok_or_else(|| Error::NotJoined {
                group: group.to_owned(),
            })?;
        let mut d = Datagram::new(
            DatagramType::Application,
            group,
            &*self.me,
            "",
            self.addr,
            counter,
            &*self.me,
        );
        if !d.set_payload(payload)
            && let Some(member) = self.reader_of_text_only(group)
        {
            return Err(Error::NotText {
                group: group.to_owned(),
                member,
            });
        }
        d.sent_at_us = Some(sent_at_us);
        let bytes = d.encode(LEGACY_DATAGRAM_LEN).map_err(|e| {
            // What the datagram spends besides the payload is the same for any payload: the
            // rest of the limit is what a text of plain characters may take.
            let carried = d.data.as_ref().map_or_else(
                || serde_json::to_string(&d.content).map_or(d.content.len(), |t| t.len() - 2),
                String::len,
            );
            let overhead = match e {
                proto::Error::Oversized { len, .. } => len.saturating_sub(carried),
                _ => 0,
            };
            Error::TooLong {
                chars: String::from_utf8_lossy(payload).chars().count(),
                max_chars: LEGACY_DATAGRAM_LEN.saturating_sub(overhead),
            }
        })?;
        let sent = self
            .tx
            .send(now, group, Arc::from(bytes))
            .map_err(|_| Error::NotJoined {
                group: group.to_owned(),
            })?;
        debug_assert_eq!(sent, counter);
        if self.mode == Mode::Fifo {
            // B-multicast includes ourselves: our own stream is delivered here, in order.
            let me = self.me.clone();
            let _ = self.fifo.handle_message(
                now,
                group,
                &me,
                counter,
                Received {
                    origin: me.clone(),
                    origin_counter: Some(counter),
                    payload: payload.to_vec(),
                    sent_at_us: Some(sent_at_us),
                },
            );
        }
        self.pump(now);
        Ok(counter)
    }

    /// A member of `group` that could not read a binary payload: one of the report's peers,
    /// or one that has not announced its protocol yet (in total order, the sequencer,
    /// which forwards it to everyone).
    fn reader_of_text_only(&self, group: &str) -> Option<String> {
        let state = self.groups.get(group)?;
        state
            .members
            .iter()
            .find(|(name, m)| {
                m.proto.is_none() && (name.as_str() != SEQUENCER || self.mode == Mode::Total)
            })
            .map(|(name, _)| name.clone())
    }

    /// One datagram that arrived from `from`: a single one, or a bundle of several (each
    /// checked and handled as if it had come alone).
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        self.traffic.datagrams_received += 1;
        match proto::bundle::decode_datagrams(bytes) {
            Ok(items) => {
                for d in items {
                    self.handle_one(now, from, d);
                }
            }
            Err(e) => {
                self.traffic.malformed += 1;
                log::debug!("dropped a datagram from {from}: {e}");
            }
        }
    }

    fn handle_one(&mut self, now: Instant, from: SocketAddr, d: Datagram) {
        let Some(state) = self.groups.get_mut(&d.group) else {
            if let Some(departed) = self.departed.get(&d.group)
                && d.kind == DatagramType::Nack
                && departed.members.admits(&d, from).is_some()
            {
                // A member of a group we left still recovers the tail of our stream.
                self.traffic.nacks_received += 1;
                let _ = self
                    .tx
                    .handle_nack(&d.group, &d.username, &ranges_of(&d.ranges));
                self.pump(now);
                return;
            }
            self.traffic.unknown += 1;
            log::debug!("dropped a datagram for group {:?}, not joined", d.group);
            return;
        };
        if d.kind == DatagramType::Bye && from == self.tracker && d.username == *self.me {
            self.on_self_evicted(now, &d.group);
            self.pump(now);
            return;
        }
        if d.kind == DatagramType::Bye && from == self.tracker && d.username != *self.me {
            if self.mode == Mode::Total && d.username == SEQUENCER {
                self.sequencer_lost(now, &d.group, "the tracker evicted it");
            } else {
                self.on_evicted(&d.group, &d.username);
            }
            self.pump(now);
            return;
        }
        // From here on `from` is the sender's registered address, which differs from the
        // datagram's source for the report's peers (see the source rule in `membership`).
        let source = if d.kind == DatagramType::Hello {
            state.members.admits_hello(&d, from)
        } else {
            state.members.admits(&d, from)
        };
        let Some(from) = source else {
            if d.kind == DatagramType::Hello || state.members.get(&d.username).is_some() {
                self.traffic.spoofed += 1;
                log::debug!(
                    "dropped a datagram claiming to be {:?} from {from}",
                    d.username
                );
            } else {
                self.traffic.unknown += 1;
                log::debug!("dropped a datagram from unknown member {:?}", d.username);
            }
            return;
        };
        if matches!(d.kind, DatagramType::Hello | DatagramType::HelloAck) {
            self.bundle_readers.note(from, d.proto);
        }
        match d.kind {
            DatagramType::Hello if d.username == SEQUENCER => self.on_sequencer_hello(now, d),
            DatagramType::Hello => self.on_hello(now, from, d),
            DatagramType::HelloAck => self.on_hello_ack(now, d),
            DatagramType::Application => self.on_application(now, d),
            DatagramType::Bye => self.on_bye(now, d),
            DatagramType::Nack => {
                self.traffic.nacks_received += 1;
                let _ = self
                    .tx
                    .handle_nack(&d.group, &d.username, &ranges_of(&d.ranges));
            }
            DatagramType::Digest => self.on_digest(now, d),
            DatagramType::Unavailable => self.on_unavailable(now, d),
            DatagramType::Ack => self.on_ack(now, d),
        }
        self.pump(now);
    }

    /// Flow control: whether `group` takes another message of ours now, that is whether
    /// fewer than [`ordering::Config::flow_window`] of our messages are still undelivered
    /// at the slowest member (in total order, ourselves included: our own messages come
    /// back through the sequencer). The report's peers never acknowledge and are not waited
    /// for, nor is a member that acknowledged nothing for a second. While the window is
    /// closed the core asks the members it waits for how far they are, every 20 ms.
    /// [`send`](Self::send) does not check it: a caller sending flat out asks first.
    pub fn window_open(&mut self, now: Instant, group: &str) -> bool {
        let open = self.flow_floor(now, group).is_none();
        if let Some(state) = self.groups.get_mut(group) {
            if open {
                state.flow_probe_at = None;
            } else if state.flow_probe_at.is_none() {
                state.flow_probe_at = Some(now + FLOW_PROBE);
                self.traffic.window_closed += 1;
            }
        }
        open
    }

    /// Flow control: `None` if the window of `group` is open, else our highest counter sent
    /// and the members (by address) that hold us back.
    fn flow_floor(&mut self, now: Instant, group: &str) -> Option<(u64, Vec<SocketAddr>)> {
        if self.flow_window == 0 {
            return None;
        }
        let sent = self.tx.next_counter(group)?.saturating_sub(1);
        let state = self.groups.get_mut(group)?;
        let limit = sent.checked_sub(self.flow_window)?;
        let mut holding = Vec::new();
        let mut check = |name: &str, addr: SocketAddr, our_start: Option<u64>| {
            let acked = match state.acked_by.get_mut(name) {
                Some(a) => a,
                None => state.acked_by.entry(name.to_owned()).or_insert(Acked {
                    through: our_start.map_or(sent, |s| s.saturating_sub(1)),
                    since: now,
                }),
            };
            if acked.through >= sent {
                acked.since = now;
            } else if acked.through <= limit
                && now.saturating_duration_since(acked.since) < FLOW_STALL
            {
                holding.push(addr);
            }
        };
        for (name, m) in state.members.iter() {
            if name != SEQUENCER && m.proto.is_some() && m.heard {
                check(name, m.addr, m.our_start);
            }
        }
        if self.mode == Mode::Total
            && let Some(seq) = state.members.get(SEQUENCER)
        {
            // Our own messages come back from the sequencer: it is asked when we lag.
            check(&self.me, seq.addr, seq.our_start);
        }
        (!holding.is_empty()).then_some((sent, holding))
    }

    /// An acknowledgement of our stream from a member.
    fn on_ack(&mut self, now: Instant, d: Datagram) {
        if *d.origin != *self.me {
            return;
        }
        self.traffic.acks_received += 1;
        let sent = self
            .tx
            .next_counter(&d.group)
            .map_or(0, |n| n.saturating_sub(1));
        if let Some(state) = self.groups.get_mut(&d.group) {
            acknowledge(&mut state.acked_by, &d.username, d.counter.min(sent), now);
        }
    }

    /// Flow control, as a member: we delivered `author`'s `counter` in `group`; every
    /// quarter of the window, the author hears how far we are.
    fn delivered_from(&mut self, now: Instant, group: &str, author: &Arc<str>, counter: u64) {
        if self.flow_window == 0 {
            return;
        }
        let every = (self.flow_window / 4).max(1);
        let Some(state) = self.groups.get_mut(group) else {
            return;
        };
        if **author == *self.me {
            if self.mode == Mode::Total {
                acknowledge(&mut state.acked_by, author, counter, now);
            }
            return;
        }
        let due = match state.owed.get_mut(author) {
            Some((delivered, acked)) => {
                *delivered = (*delivered).max(counter);
                *delivered >= *acked + every
            }
            None => {
                state.owed.insert(author.clone(), (counter, 0));
                false
            }
        };
        if due {
            self.send_ack(group, author);
        }
    }

    /// Tells `author` how far we delivered its stream in `group`.
    fn send_ack(&mut self, group: &str, author: &str) {
        let Some(addr) = self.newer_member(group, author) else {
            return;
        };
        let Some((delivered, acked)) = self
            .groups
            .get_mut(group)
            .and_then(|s| s.owed.get_mut(author))
        else {
            return;
        };
        *acked = *delivered;
        let ack = Datagram::new(
            DatagramType::Ack,
            group,
            &*self.me,
            "",
            self.addr,
            *delivered,
            author,
        );
        let bytes = self.encode(&ack);
        self.traffic.acks_sent += 1;
        self.transmit(addr, bytes, false);
    }

    fn on_hello(&mut self, now: Instant, from: SocketAddr, d: Datagram) {
        let group = d.group.as_str();
        let name = d.username.as_str();
        let Some(state) = self.groups.get_mut(group) else {
            return;
        };
        let known = state.members.get(name).cloned();
        let rejoined = match &known {
            None => true,
            Some(k) => k.addr != from || (k.start.is_some() && k.start != d.start),
        };
        // What we tell it of our stream: the same as before, unless it is new here.
        let our_start = known
            .as_ref()
            .filter(|_| !rejoined)
            .and_then(|k| k.our_start)
            .or_else(|| self.tx.next_counter(group))
            .unwrap_or(1);
        state.members.insert(
            name,
            MemberInfo {
                addr: from,
                proto: d.proto,
                start: d.start,
                heard: true,
                our_start: Some(our_start),
            },
        );
        if self.mode == Mode::Fifo && name != SEQUENCER {
            let start = match (d.proto, d.start) {
                (Some(_), Some(s)) => Start::At(
                    self.groups
                        .get_mut(group)
                        .map_or(s, |g| g.members.resume_point(name, from, s)),
                ),
                _ => Start::Legacy,
            };
            if rejoined || !self.fifo.has_sender(group, name) {
                self.fifo.add_sender(now, group, name, start);
            } else if let Start::At(s) = start {
                let _ = self.fifo.set_start(now, group, name, s);
            }
        }
        if rejoined {
            if let Some(state) = self.groups.get_mut(group) {
                // Its counters start again: what we skipped of its old stream is moot, and
                // so are the acknowledgements either way.
                state.forget_streams(name);
            }
            self.outputs.push_back(Output::Event(Event::Joined {
                group: group.to_owned(),
                member: name.to_owned(),
            }));
        }
        // In total order we answer only once the sequencer has welcomed us: an answer makes
        // the other member count us in, and it must not start sending before our place in
        // the sequence is fixed. `greet_peers` greets it then.
        let welcomed = self
            .groups
            .get(group)
            .is_some_and(|s| s.peers_greeted || self.mode == Mode::Fifo);
        if d.proto.is_some() && welcomed {
            let ack = self.control(DatagramType::HelloAck, group, our_start, None);
            self.transmit(from, ack, false);
        }
    }

    fn on_hello_ack(&mut self, now: Instant, d: Datagram) {
        let group = d.group.as_str();
        let name = d.username.as_str();
        if let Some(m) = self
            .groups
            .get_mut(group)
            .and_then(|s| s.members.get_mut(name))
        {
            m.proto = d.proto.or(m.proto);
            if !m.heard {
                log::debug!("handshake with {name} in {group} done (its HelloAck)");
            }
            m.heard = true;
        }
        let Some(start) = d.start else { return };
        match (self.mode, name == SEQUENCER) {
            (Mode::Total, true) => {
                self.on_sequencer_ack(now, group, start, &d);
                self.greet_peers(group);
            }
            (Mode::Fifo, false) => {
                let _ = self.fifo.set_start(now, group, name, start);
            }
            _ => {}
        }
    }

    /// The sequencer's HelloAck: where its sequence starts for us. From a sequencer of
    /// another epoch than the one we delivered from, it took the group over: its sequence
    /// replaces the old one, and our messages it lacks go to it again.
    fn on_sequencer_ack(&mut self, now: Instant, group: &str, start: u64, d: &Datagram) {
        let Some(state) = self.groups.get_mut(group) else {
            return;
        };
        let was_lost = state.sequencer_probe_at.take().is_some();
        let new = match (state.sequencer_epoch, d.epoch) {
            (Some(old), Some(epoch)) => old != epoch,
            _ => false,
        };
        if d.epoch.is_some() {
            state.sequencer_epoch = d.epoch;
        }
        if !new {
            let _ = self.total.set_start(now, group, start);
            if was_lost {
                log::info!("the sequencer of {group} answers again: total order resumes");
                self.outputs.push_back(Output::Event(Event::SequencerBack {
                    group: group.to_owned(),
                    new: false,
                }));
            }
            return;
        }
        // Nothing held from the old sequence can be delivered any more: the new one
        // sequences again whatever no member delivered.
        state.skip_through = state.delivered.clone();
        self.total.leave(group);
        self.total.join(now, group, Start::At(start));
        self.traffic.sequencer_takeovers += 1;
        if let Some(resume) = d.resume {
            let _ = self.tx.resend_from(now, group, SEQUENCER, resume);
        }
        log::info!(
            "a new sequencer took {group} over: its sequence starts at {start} for us, our messages resume from {:?}",
            d.resume
        );
        self.outputs.push_back(Output::Event(Event::SequencerBack {
            group: group.to_owned(),
            new: true,
        }));
    }

    /// A Hello from a sequencer: one of another epoch than ours prompts us to greet it.
    fn on_sequencer_hello(&mut self, now: Instant, d: Datagram) {
        let Some(state) = self.groups.get(&d.group) else {
            return;
        };
        if self.mode != Mode::Total
            || d.epoch.is_none()
            || state.sequencer_epoch.is_none()
            || d.epoch == state.sequencer_epoch
        {
            return;
        }
        self.sequencer_lost(now, &d.group, "a new sequencer listens in its place");
        self.probe_sequencer(now, &d.group);
    }

    /// The tracker evicted us from `group` and told its members, who forgot us: greet them
    /// again with our stream starting at our next message (what they did not deliver of the
    /// old one they dropped; nothing is delivered twice). Called on the tracker's Bye naming
    /// us, or by the caller when the tracker no longer knows us.
    pub fn on_self_evicted(&mut self, now: Instant, group: &str) {
        let (Some(next), Some(state)) = (self.tx.next_counter(group), self.groups.get_mut(group))
        else {
            return;
        };
        if state
            .greeted_after_eviction
            .is_some_and(|at| now.saturating_duration_since(at) < SELF_EVICTION_DEBOUNCE)
        {
            return;
        }
        state.greeted_after_eviction = Some(now);
        let mut greet = Vec::new();
        for (name, m) in state.members.iter_mut() {
            m.heard = false;
            m.our_start = Some(next);
            let wanted = match self.mode {
                Mode::Fifo => name != SEQUENCER,
                Mode::Total => name == SEQUENCER || state.peers_greeted,
            };
            if wanted {
                greet.push(m.addr);
            }
        }
        state.hello_attempts = 1;
        state.hello_retry_at = Some(now + HELLO_RETRY);
        self.traffic.times_evicted += 1;
        let hello = self.control(DatagramType::Hello, group, next, None);
        for to in greet {
            self.transmit(to, hello.clone(), false);
        }
        self.outputs.push_back(Output::Event(Event::WeWereEvicted {
            group: group.to_owned(),
        }));
    }

    /// Total order in `group` is unavailable until a sequencer answers.
    fn sequencer_lost(&mut self, now: Instant, group: &str, reason: &str) {
        let Some(state) = self.groups.get_mut(group) else {
            return;
        };
        if state.sequencer_probe_at.is_some() {
            return;
        }
        state.sequencer_probe_at = Some(now + SEQUENCER_PROBE);
        self.traffic.sequencer_losses += 1;
        log::info!(
            "total order unavailable in {group}: lost the sequencer ({reason}); nothing is delivered out of order, messages wait for a sequencer"
        );
        self.outputs.push_back(Output::Event(Event::SequencerLost {
            group: group.to_owned(),
            reason: reason.to_owned(),
        }));
    }

    /// Greets the sequencer's address while it is lost: our old epoch, what we delivered of
    /// each author, and where our own stream must resume.
    fn probe_sequencer(&mut self, now: Instant, group: &str) {
        let Some(state) = self.groups.get_mut(group) else {
            return;
        };
        let Some(seq) = state.members.get(SEQUENCER) else {
            return;
        };
        state.sequencer_probe_at = Some(now + SEQUENCER_PROBE);
        let to = seq.addr;
        let start = state
            .delivered
            .get(&*self.me)
            .map(|c| c + 1)
            .or(seq.our_start)
            .unwrap_or(1);
        let mut hello = Datagram::new(
            DatagramType::Hello,
            group,
            &*self.me,
            "",
            self.addr,
            start,
            &*self.me,
        );
        hello.proto = Some(PROTOCOL_VERSION);
        hello.start = Some(start);
        hello.epoch = state.sequencer_epoch;
        hello.final_counter = self.tx.next_counter(group).map(|n| n.saturating_sub(1));
        hello.frontier = state
            .delivered
            .iter()
            .take(proto::MAX_FRONTIER)
            .map(|(author, c)| (author.to_string(), *c))
            .collect();
        let bytes = self.encode(&hello);
        self.transmit(to, bytes, false);
    }

    /// Sends our Hello to the members other than the sequencer, once.
    fn greet_peers(&mut self, group: &str) {
        let Some(state) = self.groups.get_mut(group) else {
            return;
        };
        if state.peers_greeted {
            return;
        }
        state.peers_greeted = true;
        let targets: Vec<(SocketAddr, Option<u64>)> = state
            .members
            .iter()
            // Members whose Hello came before our welcome were not answered: greet them too.
            .filter(|(name, _)| name.as_str() != SEQUENCER)
            .map(|(_, m)| (m.addr, m.our_start))
            .collect();
        for (to, our_start) in targets {
            let start = our_start
                .or_else(|| self.tx.next_counter(group))
                .unwrap_or(1);
            let hello = self.control(DatagramType::Hello, group, start, None);
            self.transmit(to, hello, false);
        }
    }

    fn on_application(&mut self, now: Instant, mut d: Datagram) {
        let from_sequencer = d.username == SEQUENCER;
        let Ok(bytes) = d.take_payload() else {
            self.traffic.malformed += 1;
            log::debug!(
                "dropped a message from {:?}: its Data is not base64",
                d.username
            );
            return;
        };
        let payload = Received {
            origin: Arc::from(
                if from_sequencer {
                    &d.origin
                } else {
                    &d.username
                }
                .as_str(),
            ),
            origin_counter: d.origin_counter,
            payload: bytes,
            sent_at_us: d.sent_at_us,
        };
        let accepted = match (self.mode, from_sequencer) {
            (Mode::Fifo, false) => self
                .fifo
                .handle_message(now, &d.group, &d.username, d.counter, payload)
                .is_ok(),
            (Mode::Total, true) => self
                .total
                .handle_sequenced(now, &d.group, d.counter, payload)
                .is_ok(),
            _ => false,
        };
        if !accepted {
            self.traffic.other_mode += 1;
        }
    }

    fn on_bye(&mut self, now: Instant, d: Datagram) {
        if self.mode == Mode::Total && d.username == SEQUENCER {
            self.sequencer_lost(now, &d.group, "it said Bye");
            return;
        }
        // It stays reachable for the tail of its stream (up to its final counter).
        let was_member = self.groups.get_mut(&d.group).is_some_and(|state| {
            state.forget_streams(&d.username);
            state.members.depart(&d.username).is_some()
        });
        if !was_member {
            // A repeated Bye (they are sent more than once, in case one is lost).
            return;
        }
        if self.mode == Mode::Fifo {
            let _ = self
                .fifo
                .handle_bye(now, &d.group, &d.username, d.final_counter);
        }
        self.outputs.push_back(Output::Event(Event::Left {
            group: d.group,
            member: d.username,
        }));
    }

    fn on_evicted(&mut self, group: &str, member: &str) {
        let Some(state) = self.groups.get_mut(group) else {
            return;
        };
        let removed = state.members.remove(member);
        if removed.is_none() {
            return;
        }
        state.forget_streams(member);
        if let (Some(stream), Some(info)) = (self.fifo.stream(group, member), removed.as_ref())
            && stream.started
        {
            state
                .members
                .remember_eviction(member, info.addr, stream.next);
        }
        let _ = self.fifo.handle_evicted(group, member);
        self.outputs.push_back(Output::Event(Event::Evicted {
            group: group.to_owned(),
            member: member.to_owned(),
        }));
    }

    fn on_digest(&mut self, now: Instant, d: Datagram) {
        if d.username != SEQUENCER && self.flow_window > 0 {
            // An author asking how far we are (its window is closed), or idle.
            self.send_ack(&d.group, &d.username);
        }
        match (self.mode, d.username == SEQUENCER) {
            (Mode::Fifo, false) => {
                let _ = self
                    .fifo
                    .handle_digest(now, &d.group, &d.username, d.counter);
            }
            (Mode::Total, true) => {
                let _ = self.total.handle_digest(now, &d.group, d.counter);
            }
            _ => {}
        }
    }

    fn on_unavailable(&mut self, now: Instant, d: Datagram) {
        let ranges = ranges_of(&d.ranges);
        match (self.mode, d.username == SEQUENCER) {
            (Mode::Fifo, false) => {
                let _ = self
                    .fifo
                    .handle_unavailable(now, &d.group, &d.username, &ranges);
            }
            (Mode::Total, true) => {
                let _ = self.total.handle_unavailable(now, &d.group, &ranges);
            }
            _ => {}
        }
    }

    /// Runs the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.linger(now);
        self.tx.handle_timeout(now);
        self.fifo.handle_timeout(now);
        self.total.handle_timeout(now);
        let mut resend = Vec::new();
        let mut give_up_on_sequencer = Vec::new();
        for (group, state) in &mut self.groups {
            if state.hello_retry_at.is_some_and(|at| at <= now) {
                state.hello_attempts += 1;
                state.hello_retry_at =
                    (state.hello_attempts < HELLO_ATTEMPTS).then(|| now + HELLO_RETRY);
                if state.hello_retry_at.is_none() && !state.peers_greeted {
                    // The sequencer does not answer: greet the others all the same.
                    give_up_on_sequencer.push(group.clone());
                }
                for (name, m) in state.members.iter() {
                    let is_sequencer = name == SEQUENCER;
                    let wanted = !m.heard
                        && match self.mode {
                            Mode::Fifo => !is_sequencer,
                            Mode::Total => is_sequencer || state.peers_greeted,
                        };
                    if wanted {
                        resend.push((group.clone(), m.addr, m.our_start));
                    }
                }
            }
        }
        for group in give_up_on_sequencer {
            self.greet_peers(&group);
        }
        for group in self.groups_due(now, |g| g.sequencer_probe_at) {
            self.probe_sequencer(now, &group);
        }
        for group in self.groups_due(now, |g| g.flow_probe_at) {
            self.probe_flow(now, &group);
        }
        for (group, to, our_start) in resend {
            // The same start as the first Hello: the member may have recorded it already.
            let start = our_start
                .or_else(|| self.tx.next_counter(&group))
                .unwrap_or(1);
            let hello = self.control(DatagramType::Hello, &group, start, None);
            self.transmit(to, hello, false);
        }
        self.pump(now);
    }

    /// Groups we left: our Bye again when due, and the end of the linger (our stream there
    /// is forgotten).
    fn linger(&mut self, now: Instant) {
        let mut again = Vec::new();
        self.departed.retain(|group, d| {
            while d.due() <= now && d.byes_repeated < BYE_REPEATS.len() {
                d.byes_repeated += 1;
                again.extend(d.members.iter().map(|(_, m)| (m.addr, d.bye.clone())));
            }
            let keep = d.due() > now;
            if !keep {
                log::debug!("forgot our stream in {group}: nobody asked for its tail");
            }
            keep
        });
        for (to, bye) in again {
            self.transmit(to, bye, false);
        }
        let gone: Vec<String> = self
            .tx
            .closed_groups()
            .filter(|g| !self.departed.contains_key(*g))
            .map(str::to_owned)
            .collect();
        for group in gone {
            self.tx.forget(&group);
        }
    }

    /// The groups whose `timer` is due at `now`.
    fn groups_due(
        &self,
        now: Instant,
        timer: impl Fn(&GroupState) -> Option<Instant>,
    ) -> Vec<String> {
        self.groups
            .iter()
            .filter(|(_, g)| timer(g).is_some_and(|at| at <= now))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The next action for the caller, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.tx.poll_timeout(),
            self.fifo.poll_timeout(),
            self.total.poll_timeout(),
        ]
        .into_iter()
        .chain(self.groups.values().map(|g| g.hello_retry_at))
        .chain(self.groups.values().map(|g| g.sequencer_probe_at))
        .chain(self.groups.values().map(|g| g.flow_probe_at))
        .chain(self.departed.values().map(|d| Some(d.due())))
        .flatten()
        .min()
    }

    /// Our window in `group` is still closed: asks the members holding us back how far
    /// they are (a Digest of our highest counter, which also makes them request what they
    /// lack).
    fn probe_flow(&mut self, now: Instant, group: &str) {
        let Some((sent, holding)) = self.flow_floor(now, group) else {
            if let Some(state) = self.groups.get_mut(group) {
                state.flow_probe_at = None;
            }
            return;
        };
        if let Some(state) = self.groups.get_mut(group) {
            state.flow_probe_at = Some(now + FLOW_PROBE);
        }
        let digest = self.control(DatagramType::Digest, group, sent, None);
        for to in holding {
            self.traffic.flow_probes += 1;
            self.transmit(to, digest.clone(), false);
        }
    }

    /// A control datagram of ours: Hello and HelloAck carry our protocol version and the
    /// start of our stream in `group`.
    fn control(
        &self,
        kind: DatagramType,
        group: &str,
        counter: u64,
        ranges: Option<(&str, &[RangeInclusive<u64>])>,
    ) -> Arc<[u8]> {
        let origin = ranges.map_or(&*self.me, |(owner, _)| owner);
        let mut d = Datagram::new(kind, group, &*self.me, "", self.addr, counter, origin);
        if matches!(kind, DatagramType::Hello | DatagramType::HelloAck) {
            d.proto = Some(PROTOCOL_VERSION);
            d.start = Some(counter);
        }
        if let Some((_, r)) = ranges {
            d.ranges = wire_ranges(r);
        }
        self.encode(&d)
    }

    fn encode(&self, d: &Datagram) -> Arc<[u8]> {
        let mut out = Vec::with_capacity(160);
        d.encode_into(&mut out);
        Arc::from(out)
    }

    fn transmit(&mut self, to: SocketAddr, bytes: Arc<[u8]>, application: bool) {
        if application {
            self.traffic.app_datagrams_sent += 1;
        } else {
            self.traffic.control_datagrams_sent += 1;
        }
        let bundle = self.bundle_readers.reads(&to);
        self.outputs
            .push_back(Output::Transmit(Transmit { to, bytes, bundle }));
    }

    /// The address of `name` in `group`, if it may receive the newer datagram types.
    /// The address of `name` in `group` (a member, or one that said Bye and may still be
    /// asked for the tail of its stream), if it speaks the newer protocol.
    fn newer_member(&self, group: &str, name: &str) -> Option<SocketAddr> {
        let m = self.members_of(group)?.reachable(name)?;
        m.proto.map(|_| m.addr)
    }

    /// The members of `group`: joined, or left a moment ago (while we still answer for the
    /// tail of our stream there).
    fn members_of(&self, group: &str) -> Option<&Members> {
        self.groups
            .get(group)
            .map(|g| &g.members)
            .or_else(|| self.departed.get(group).map(|d| &d.members))
    }

    /// Where our multicasts in `group` go: every other member in FIFO mode, only the
    /// sequencer in total order.
    fn audience(&self, group: &str, newer_only: bool) -> Vec<SocketAddr> {
        let Some(members) = self.members_of(group) else {
            return Vec::new();
        };
        members
            .iter()
            .filter(|(name, _)| (name.as_str() == SEQUENCER) == (self.mode == Mode::Total))
            .filter(|(_, m)| !newer_only || m.proto.is_some())
            .map(|(_, m)| m.addr)
            .collect()
    }

    /// Total order: records that `m` is delivered in `group`; false if it was delivered
    /// already, from a sequencer before a takeover.
    fn first_delivery(&mut self, group: &str, m: &Received) -> bool {
        let (Some(state), Some(counter)) = (self.groups.get_mut(group), m.origin_counter) else {
            return true;
        };
        if let Some(&through) = state.skip_through.get(&m.origin) {
            if counter <= through {
                return false;
            }
            state.skip_through.remove(&m.origin);
        }
        match state.delivered.get_mut(&m.origin) {
            Some(c) => *c = counter,
            None => {
                state.delivered.insert(m.origin.clone(), counter);
            }
        }
        true
    }

    /// Turns what the ordering cores want into datagrams and deliveries.
    fn pump(&mut self, now: Instant) {
        while let Some(out) = self.tx.poll_output() {
            match out {
                Order::Multicast { group, payload, .. } => {
                    for to in self.audience(&group, false) {
                        self.transmit(to, payload.clone(), true);
                    }
                }
                Order::Retransmit {
                    to, group, payload, ..
                } => {
                    if let Some(addr) = self.newer_member(&group, &to) {
                        self.transmit(addr, payload, true);
                    }
                }
                Order::Digest { group, highest } => {
                    let digest = self.control(DatagramType::Digest, &group, highest, None);
                    for to in self.audience(&group, true) {
                        self.transmit(to, digest.clone(), false);
                    }
                }
                Order::Unavailable { to, group, ranges } => {
                    if let Some(addr) = self.newer_member(&group, &to) {
                        let me = self.me.clone();
                        let d = self.control(
                            DatagramType::Unavailable,
                            &group,
                            0,
                            Some((&me, &ranges)),
                        );
                        self.transmit(addr, d, false);
                    }
                }
                Order::Deliver(_) | Order::Nack { .. } => {}
            }
        }
        loop {
            let out = match self.mode {
                Mode::Fifo => self.fifo.poll_output(),
                Mode::Total => self.total.poll_output(),
            };
            let Some(out) = out else { break };
            match out {
                Order::Deliver(d) => {
                    if self.mode == Mode::Total && !self.first_delivery(&d.group, &d.payload) {
                        self.traffic.already_delivered += 1;
                        continue;
                    }
                    let author_counter = match self.mode {
                        Mode::Fifo => Some(d.counter),
                        Mode::Total => d.payload.origin_counter,
                    };
                    if let Some(c) = author_counter {
                        self.delivered_from(now, &d.group, &d.payload.origin, c);
                    }
                    self.outputs.push_back(Output::Deliver(Message {
                        group: d.group,
                        author: d.payload.origin,
                        counter: d.counter,
                        payload: d.payload.payload,
                        sent_at_us: d.payload.sent_at_us,
                    }));
                }
                Order::Nack { to, group, ranges } => {
                    if let Some(addr) = self.newer_member(&group, &to) {
                        let first = ranges.first().map_or(0, |r| *r.start());
                        let nack =
                            self.control(DatagramType::Nack, &group, first, Some((&to, &ranges)));
                        self.transmit(addr, nack, false);
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::Member;

    const TRACKER: &str = "127.0.0.1:5000";

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn core(name: &str, port: u16, mode: Mode) -> PeerCore {
        PeerCore::new(CoreConfig {
            username: name.into(),
            addr: addr(port),
            tracker: TRACKER.parse().expect("addr"),
            mode,
            ordering: ordering::Config::default(),
        })
    }

    fn member(name: &str, port: u16) -> Member {
        Member {
            ip: "127.0.0.1".into(),
            port,
            username: name.into(),
            uid: name.into(),
        }
    }

    /// Runs the cores against each other until no datagram is left in flight; returns the
    /// deliveries and events of each, and the datagrams each sent.
    struct Net {
        cores: Vec<PeerCore>,
        delivered: Vec<Vec<(String, String)>>,
        events: Vec<Vec<Event>>,
        sent: Vec<Vec<(SocketAddr, Datagram)>>,
    }

    impl Net {
        fn new(cores: Vec<PeerCore>) -> Self {
            let n = cores.len();
            Self {
                cores,
                delivered: vec![Vec::new(); n],
                events: vec![Vec::new(); n],
                sent: vec![Vec::new(); n],
            }
        }

        fn settle(&mut self, now: Instant) {
            loop {
                let mut moved = false;
                for i in 0..self.cores.len() {
                    let from = self.cores[i].addr;
                    while let Some(out) = self.cores[i].poll_output() {
                        moved = true;
                        match out {
                            Output::Transmit(Transmit { to, bytes, .. }) => {
                                self.sent[i].push((to, Datagram::decode(&bytes).expect("valid")));
                                if let Some(j) = self.cores.iter().position(|c| c.addr == to) {
                                    self.cores[j].handle_datagram(now, from, &bytes);
                                }
                            }
                            Output::Deliver(m) => self.delivered[i]
                                .push((m.author.to_string(), m.text().into_owned())),
                            Output::Event(e) => self.events[i].push(e),
                            Output::Tracker(t) => panic!("a bare core asked the tracker: {t:?}"),
                        }
                    }
                }
                if !moved {
                    return;
                }
            }
        }
    }

    /// Ford and kat in FIFO, handshake done, the default windows.
    fn fifo_pair(t: Instant) -> Net {
        flow_pair(t, ordering::Config::default().flow_window)
    }

    /// Ford and kat in FIFO, handshake done, ford's flow-control window `window`.
    fn flow_pair(t: Instant, window: u64) -> Net {
        let mut ford = core("ford", 6001, Mode::Fifo);
        ford.flow_window = window;
        let mut kat = core("kat", 6002, Mode::Fifo);
        kat.flow_window = window;
        let mut net = Net::new(vec![ford, kat]);
        net.cores[0].join(t, "books", &[member("ford", 6001)]);
        net.settle(t);
        net.cores[1].join(t, "books", &[member("ford", 6001), member("kat", 6002)]);
        net.settle(t);
        assert_eq!(net.cores[0].members_heard("books"), 1);
        net
    }

    #[test]
    fn flow_control_holds_a_sender_to_its_slowest_member_and_asks_it_how_far_it_is() {
        let t = Instant::now();
        let mut net = flow_pair(t, 8);
        // Kat acknowledges as it delivers: the window never closes.
        for i in 0..20 {
            assert!(net.cores[0].window_open(t, "books"), "message {i}");
            net.cores[0]
                .send(t, "books", "m".as_bytes(), 1)
                .expect("joined");
            net.settle(t);
        }
        assert!(net.cores[0].traffic().acks_received >= 20 / 2 - 1);
        assert_eq!(net.cores[0].traffic().window_closed, 0);
        // Now eight messages never reach kat: the window closes on the eighth.
        for _ in 0..8 {
            assert!(net.cores[0].window_open(t, "books"));
            net.cores[0]
                .send(t, "books", "lost".as_bytes(), 1)
                .expect("joined");
            while net.cores[0].poll_output().is_some() {}
        }
        assert!(!net.cores[0].window_open(t, "books"));
        assert_eq!(net.cores[0].traffic().window_closed, 1);
        // After 20 ms ford asks kat (a Digest); kat requests what it lacks, ford sends it,
        // kat delivers and acknowledges, and the window opens again.
        let later = t + FLOW_PROBE;
        assert!(net.cores[0].poll_timeout().is_some_and(|at| at <= later));
        net.cores[0].handle_timeout(later);
        net.settle(later);
        assert!(
            net.sent[0].iter().any(|(to, d)| *to == addr(6002)
                && d.kind == DatagramType::Digest
                && d.counter == 28),
            "ford asked kat"
        );
        let after = later + Duration::from_millis(10);
        net.cores[1].handle_timeout(after);
        net.settle(after);
        assert_eq!(
            net.delivered[1]
                .iter()
                .filter(|(_, text)| text == "lost")
                .count(),
            8
        );
        assert!(
            net.sent[1].iter().any(|(to, d)| *to == addr(6001)
                && d.kind == DatagramType::Ack
                && d.counter == 28
                && d.origin == "ford"),
            "kat acknowledged all 28"
        );
        assert!(net.cores[0].window_open(after, "books"));
    }

    #[test]
    fn a_bundle_is_handled_item_by_item_and_only_newer_members_are_sent_bundles() {
        let t = Instant::now();
        let mut net = flow_pair(t, 0);
        // Both announced the current version: each may bundle towards the other.
        net.cores[1]
            .send(t, "books", "warm-up".as_bytes(), 1)
            .expect("joined");
        let mut bundle_flags = Vec::new();
        while let Some(out) = net.cores[1].poll_output() {
            if let Output::Transmit(Transmit { to, bytes, bundle }) = out {
                bundle_flags.push(bundle);
                net.cores[0].handle_datagram(t, addr(6002), &bytes);
                assert_eq!(to, addr(6001));
            }
        }
        assert_eq!(bundle_flags, [true]);
        // An old peer (no Proto) joins.
        let old = Datagram::new(
            DatagramType::Hello,
            "books",
            "old",
            "",
            addr(6003),
            0,
            "old",
        );
        net.cores[0].handle_datagram(t, addr(6003), &old.encode(4096).expect("fits"));
        // Kat's next two messages arrive in one bundle, with a forged third item claiming
        // to be from the old peer: the two are delivered in order, the forgery is dropped.
        let item = |counter: u64, name: &str, text: &str| {
            let mut d = Datagram::new(
                DatagramType::Application,
                "books",
                name,
                text,
                addr(6002),
                counter,
                name,
            );
            d.sent_at_us = Some(1);
            d.encode(4096).expect("fits")
        };
        let mut w = proto::bundle::BundleWriter::new();
        w.push(&item(2, "kat", "two"));
        w.push(&item(3, "kat", "three"));
        w.push(&item(1, "old", "forged"));
        let bundle = w.finish().to_vec();
        while net.cores[0].poll_output().is_some() {}
        let spoofed = net.cores[0].traffic().spoofed;
        net.cores[0].handle_datagram(t, addr(6002), &bundle);
        net.settle(t);
        let texts: Vec<&str> = net.delivered[0]
            .iter()
            .filter(|(a, _)| a == "kat")
            .map(|(_, t)| t.as_str())
            .collect();
        assert_eq!(texts, ["two", "three"]);
        assert_eq!(net.cores[0].traffic().spoofed, spoofed + 1);
        // A broken bundle is one malformed datagram, nothing else.
        net.cores[0].handle_datagram(t, addr(6002), b"[{\"Type\":2},");
        assert_eq!(net.cores[0].traffic().malformed, 1);
        // The old peer never gets a datagram marked for bundling.
        net.cores[0]
            .send(t, "books", "to all".as_bytes(), 1)
            .expect("joined");
        while let Some(out) = net.cores[0].poll_output() {
            if let Output::Transmit(Transmit { to, bundle, .. }) = out {
                assert_eq!(bundle, to != addr(6003), "to {to}");
            }
        }
    }

    #[test]
    fn neither_an_old_peer_nor_a_frozen_member_holds_the_sender_back() {
        let t = Instant::now();
        let mut net = flow_pair(t, 8);
        // An old peer (it never announces the newer protocol) joins: never waited for.
        let mut old = Datagram::new(
            DatagramType::Hello,
            "books",
            "old",
            "",
            addr(6003),
            0,
            "old",
        );
        old.start = None;
        net.cores[0].handle_datagram(t, addr(6003), &old.encode(4096).expect("fits"));
        for _ in 0..8 {
            net.cores[0]
                .send(t, "books", "m".as_bytes(), 1)
                .expect("joined");
            net.settle(t);
        }
        assert!(net.cores[0].window_open(t, "books"), "kat acknowledged");
        // Kat freezes: the window closes and stays closed while kat may still answer...
        for _ in 0..8 {
            net.cores[0]
                .send(t, "books", "m".as_bytes(), 1)
                .expect("joined");
            while net.cores[0].poll_output().is_some() {}
        }
        assert!(!net.cores[0].window_open(t, "books"));
        assert!(!net.cores[0].window_open(t + Duration::from_millis(900), "books"));
        // ...and opens once kat has been silent for a second.
        assert!(net.cores[0].window_open(t + FLOW_STALL, "books"));
    }

    #[test]
    fn two_members_handshake_and_deliver_fifo_including_to_themselves() {
        let t = Instant::now();
        let mut net = fifo_pair(t);
        assert_eq!(net.cores[1].members_heard("books"), 1);
        assert_eq!(
            net.events[0],
            [Event::Joined {
                group: "books".into(),
                member: "kat".into()
            }]
        );
        for text in ["one", "two"] {
            net.cores[0]
                .send(t, "books", text.as_bytes(), 1)
                .expect("joined");
        }
        net.cores[1]
            .send(t, "books", "three".as_bytes(), 1)
            .expect("joined");
        net.settle(t);
        // FIFO orders each sender's messages; how the senders interleave is free.
        for (i, delivered) in net.delivered.iter().enumerate() {
            let of = |author: &str| -> Vec<&str> {
                delivered
                    .iter()
                    .filter(|(a, _)| a == author)
                    .map(|(_, t)| t.as_str())
                    .collect()
            };
            assert_eq!(of("ford"), ["one", "two"], "member {i}");
            assert_eq!(of("kat"), ["three"], "member {i}");
            assert_eq!(delivered.len(), 3, "member {i}: each message once");
        }
    }

    #[test]
    fn datagrams_from_the_wrong_address_are_dropped_and_counted() {
        let t = Instant::now();
        let mut ford = core("ford", 6001, Mode::Fifo);
        ford.join(t, "books", &[member("ford", 6001), member("kat", 6002)]);
        while ford.poll_output().is_some() {}
        let mut forged = Datagram::new(
            DatagramType::Application,
            "books",
            "kat",
            "I am kat, honest",
            addr(6002),
            1,
            "kat",
        );
        forged.start = Some(1);
        // From another host: not even a report peer's fresh socket comes from there.
        let elsewhere = SocketAddr::from(([127, 0, 0, 2], 7777));
        let bytes = forged.encode(4096).expect("fits");
        ford.handle_datagram(t, elsewhere, &bytes);
        // A Hello whose claimed address is not where it came from.
        forged.kind = DatagramType::Hello;
        ford.handle_datagram(t, elsewhere, &forged.encode(4096).expect("fits"));
        // A Bye on kat's behalf from anyone but the tracker.
        forged.kind = DatagramType::Bye;
        ford.handle_datagram(t, elsewhere, &forged.encode(4096).expect("fits"));
        ford.handle_datagram(t, addr(6001), b"{not json");
        let traffic = ford.traffic();
        assert_eq!((traffic.spoofed, traffic.malformed), (3, 1));
        assert!(
            ford.poll_output().is_none(),
            "nothing delivered, nothing changed"
        );
        assert_eq!(ford.members_heard("books"), 0);
    }

    /// A datagram of the report's protocol (its eight keys) from `name` at `port`.
    fn old_datagram(kind: DatagramType, name: &str, port: u16, counter: u64) -> Vec<u8> {
        let text = if kind == DatagramType::Application {
            format!("{name} says {counter}")
        } else {
            String::new()
        };
        Datagram::new(kind, "books", name, &text, addr(port), counter, name)
            .encode(4096)
            .expect("fits")
    }

    fn texts(core: &mut PeerCore) -> Vec<String> {
        std::iter::from_fn(|| core.poll_output())
            .filter_map(|o| match o {
                Output::Deliver(m) => Some(m.text().into_owned()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_report_peer_sending_from_fresh_sockets_is_believed_from_its_own_ip_only() {
        let t = Instant::now();
        let mut ford = core("ford", 6001, Mode::Fifo);
        ford.join(t, "books", &[member("ford", 6001)]);
        while ford.poll_output().is_some() {}
        // The report's client sends each datagram from a new socket: an ephemeral port.
        ford.handle_datagram(
            t,
            addr(40001),
            &old_datagram(DatagramType::Hello, "old", 6003, 0),
        );
        ford.handle_datagram(
            t,
            addr(40002),
            &old_datagram(DatagramType::Application, "old", 6003, 1),
        );
        // Its address in SrcPort is the one it registered: answers go there.
        let mut to = Vec::new();
        ford.send(t, "books", "hi old".as_bytes(), 1)
            .expect("joined");
        while let Some(o) = ford.poll_output() {
            if let Output::Transmit(Transmit { to: dest, .. }) = o {
                to.push(dest);
            }
        }
        assert_eq!(to, [addr(6003)]);
        let delivered = {
            ford.handle_datagram(
                t,
                addr(40003),
                &old_datagram(DatagramType::Application, "old", 6003, 2),
            );
            texts(&mut ford)
        };
        assert_eq!(delivered, ["old says 2"]);
        // From another host, or naming another port than the registered one: refused.
        let stranger = SocketAddr::from(([127, 0, 0, 2], 40004));
        ford.handle_datagram(
            t,
            stranger,
            &old_datagram(DatagramType::Application, "old", 6003, 3),
        );
        ford.handle_datagram(
            t,
            addr(40005),
            &old_datagram(DatagramType::Application, "old", 6099, 3),
        );
        assert!(texts(&mut ford).is_empty());
        assert_eq!(ford.traffic().spoofed, 2);
    }

    #[test]
    fn bytes_that_are_not_text_reach_newer_peers_and_are_refused_where_report_peers_are() {
        let t = Instant::now();
        let mut net = fifo_pair(t);
        let binary = [0u8, 0xff, 0x80, b'\n'];
        net.cores[0]
            .send(t, "books", &binary, 1)
            .expect("every member speaks the newer protocol");
        let mut got = Vec::new();
        while let Some(out) = net.cores[0].poll_output() {
            if let Output::Transmit(Transmit { to, bytes, .. }) = out {
                net.cores[1].handle_datagram(t, addr(6001), &bytes);
                assert_eq!(to, addr(6002));
            }
        }
        while let Some(out) = net.cores[1].poll_output() {
            if let Output::Deliver(m) = out {
                got.push(m.payload);
            }
        }
        assert_eq!(got, [binary.to_vec()]);
        // A member of the report's protocol in the group: text only, and nothing is sent.
        let sent = net.cores[0].ordering_counters().sent;
        net.cores[0].handle_datagram(
            t,
            addr(40001),
            &old_datagram(DatagramType::Hello, "old", 6003, 0),
        );
        let refused = net.cores[0].send(t, "books", &binary, 1);
        assert!(
            matches!(refused, Err(Error::NotText { ref member, .. }) if member == "old"),
            "{refused:?}"
        );
        assert_eq!(net.cores[0].ordering_counters().sent, sent);
        assert!(net.cores[0].send(t, "books", b"text is fine", 1).is_ok());
    }

    #[test]
    fn the_last_message_before_a_bye_is_recovered_from_the_member_that_left() {
        let t = Instant::now();
        let mut net = fifo_pair(t);
        net.cores[0].send(t, "books", b"one", 1).expect("joined");
        net.settle(t);
        // "two" is lost on its way to kat; then ford leaves.
        net.cores[0].send(t, "books", b"two", 1).expect("joined");
        while net.cores[0].poll_output().is_some() {}
        assert!(net.cores[0].leave(t, "books"));
        net.settle(t);
        // kat asks for the gap below ford's final counter; ford, gone from the group,
        // still answers.
        let mut at = t;
        for _ in 0..20 {
            at += Duration::from_millis(5);
            for c in &mut net.cores {
                c.handle_timeout(at);
            }
            net.settle(at);
        }
        let kat: Vec<&str> = net.delivered[1]
            .iter()
            .map(|(_, text)| text.as_str())
            .collect();
        assert_eq!(kat, ["one", "two"]);
        let lefts = net.events[1]
            .iter()
            .filter(|e| matches!(e, Event::Left { .. }))
            .count();
        assert_eq!(
            lefts, 1,
            "a repeated Bye is one departure: {:?}",
            net.events[1]
        );
        // After the linger, ford forgets its stream there.
        net.cores[0].handle_timeout(t + LINGER + Duration::from_millis(1));
        assert_eq!(net.cores[0].tx.closed_groups().count(), 0);
    }

    #[test]
    fn a_newer_peer_is_believed_only_from_its_bound_socket() {
        let t = Instant::now();
        let mut net = fifo_pair(t);
        let mut ford = net.cores.swap_remove(0);
        assert_eq!(
            ford.members_heard("books"),
            1,
            "kat announced the newer protocol"
        );
        let mut forged = Datagram::new(
            DatagramType::Application,
            "books",
            "kat",
            "not from kat's socket",
            addr(6002),
            1,
            "kat",
        );
        forged.sent_at_us = Some(1);
        ford.handle_datagram(t, addr(40001), &forged.encode(4096).expect("fits"));
        // A Hello in kat's name without `Proto`, from the same IP: not kat's socket either.
        ford.handle_datagram(
            t,
            addr(40002),
            &old_datagram(DatagramType::Hello, "kat", 6002, 0),
        );
        assert!(texts(&mut ford).is_empty());
        assert_eq!(ford.traffic().spoofed, 2);
    }

    #[test]
    fn only_the_tracker_may_say_bye_for_another_member() {
        let t = Instant::now();
        let mut ford = core("ford", 6001, Mode::Fifo);
        ford.join(t, "books", &[member("ford", 6001), member("kat", 6002)]);
        while ford.poll_output().is_some() {}
        let bye = Datagram::new(DatagramType::Bye, "books", "kat", "", addr(6002), 0, "kat");
        ford.handle_datagram(
            t,
            TRACKER.parse().expect("addr"),
            &bye.encode(4096).expect("fits"),
        );
        assert_eq!(
            ford.poll_output(),
            Some(Output::Event(Event::Evicted {
                group: "books".into(),
                member: "kat".into()
            }))
        );
        // kat is gone: its datagrams are no longer believed.
        let app = Datagram::new(
            DatagramType::Application,
            "books",
            "kat",
            "x",
            addr(6002),
            1,
            "kat",
        );
        ford.handle_datagram(t, addr(6002), &app.encode(4096).expect("fits"));
        assert_eq!(ford.traffic().unknown, 1);
    }

    #[test]
    fn old_peers_get_only_the_reports_datagram_types() {
        let t = Instant::now();
        let mut ford = core("ford", 6001, Mode::Fifo);
        ford.join(t, "books", &[member("ford", 6001)]);
        while ford.poll_output().is_some() {}
        // An old peer's Hello: no Proto, so no HelloAck and no newer Types for it.
        let hello = Datagram::new(
            DatagramType::Hello,
            "books",
            "old",
            "",
            addr(6009),
            0,
            "old",
        );
        ford.handle_datagram(t, addr(6009), &hello.encode(4096).expect("fits"));
        for i in 0..3 {
            ford.send(t, "books", format!("m{i}").as_bytes(), 1)
                .expect("joined");
        }
        let mut later = t;
        for _ in 0..20 {
            later += Duration::from_millis(50);
            ford.handle_timeout(later);
        }
        let mut kinds = Vec::new();
        while let Some(out) = ford.poll_output() {
            if let Output::Transmit(Transmit { to, bytes, .. }) = out {
                assert_eq!(to, addr(6009));
                kinds.push(Datagram::decode(&bytes).expect("valid").kind);
            }
        }
        assert_eq!(kinds, [DatagramType::Application; 3]);
    }

    #[test]
    fn a_message_too_long_for_old_peers_is_refused_with_a_clear_error() {
        let t = Instant::now();
        let mut ford = core("ford", 6001, Mode::Fifo);
        assert_eq!(
            ford.send(t, "books", "hi".as_bytes(), 1),
            Err(Error::NotJoined {
                group: "books".into()
            })
        );
        ford.join(t, "books", &[member("ford", 6001)]);
        let long = "x".repeat(5000);
        let Err(Error::TooLong {
            chars: 5000,
            max_chars,
        }) = ford.send(t, "books", long.as_bytes(), 1)
        else {
            panic!("a 5000-character message must be refused");
        };
        assert_eq!(ford.ordering_counters().sent, 0);
        // The limit it states, in characters, is the true one.
        let over = "x".repeat(max_chars + 1);
        assert!(ford.send(t, "books", over.as_bytes(), 1).is_err());
        assert!(
            ford.send(t, "books", "x".repeat(max_chars).as_bytes(), 1)
                .is_ok()
        );
    }

    #[test]
    fn a_repeated_hello_gets_the_same_start_as_the_first() {
        let t = Instant::now();
        let mut ford = core("ford", 6001, Mode::Fifo);
        ford.join(t, "books", &[member("ford", 6001)]);
        let mut hello = Datagram::new(
            DatagramType::Hello,
            "books",
            "kat",
            "",
            addr(6002),
            1,
            "kat",
        );
        hello.proto = Some(PROTOCOL_VERSION);
        hello.start = Some(1);
        let bytes = hello.encode(4096).expect("fits");
        ford.handle_datagram(t, addr(6002), &bytes);
        for i in 0..5 {
            ford.send(t, "books", format!("m{i}").as_bytes(), 1)
                .expect("joined");
        }
        ford.handle_datagram(t, addr(6002), &bytes);
        let acks: Vec<Option<u64>> = std::iter::from_fn(|| ford.poll_output())
            .filter_map(|o| match o {
                Output::Transmit(Transmit { bytes, .. }) => {
                    let d = Datagram::decode(&bytes).expect("valid");
                    (d.kind == DatagramType::HelloAck).then_some(d.start)
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            acks,
            [Some(1), Some(1)],
            "kat already receives from counter 1"
        );
    }
}

#[cfg(test)]
mod fuzz {
    //! Arbitrary datagrams at a member with streams in every state: nothing panics, nothing
    //! is delivered that no member sent, and the ordering core's memory stays bounded.
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn hostile_datagrams_never_panic_or_deliver_what_was_not_sent(
            inputs in proptest::collection::vec(
                (0u8..9, any::<u64>(), 0u16..3, proptest::collection::vec(any::<u8>(), 0..80)),
                0..120,
            ),
        ) {
            let t = Instant::now();
            let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], 7000 + p));
            let mut core = PeerCore::new(CoreConfig {
                username: "me".into(),
                addr: addr(9),
                tracker: addr(8),
                mode: Mode::Fifo,
                ordering: ordering::Config { window: 64, ..ordering::Config::default() },
            });
            let members: Vec<proto::Member> = ["a", "b"]
                .iter()
                .enumerate()
                .map(|(i, n)| proto::Member { ip: "127.0.0.1".into(), port: 7000 + i as u16, username: (*n).into(), uid: (*n).into() })
                .collect();
            core.join(t, "g", &members);
            let mut now = t;
            for (kind, counter, from, junk) in inputs {
                now += Duration::from_millis(counter % 7);
                let bytes = if kind == 8 {
                    junk
                } else {
                    let kind = DatagramType::from_code(i64::from(kind) % 7 + 1).unwrap_or(DatagramType::Application);
                    let name = ["a", "b", "me"][from as usize % 3];
                    let mut d = Datagram::new(kind, "g", name, "x", addr(from), counter % 200, name);
                    d.proto = (counter % 2 == 0).then_some(2);
                    d.start = Some(counter % 50);
                    d.final_counter = Some(counter % 300);
                    d.ranges = vec![proto::CounterRange::new(counter % 100, counter % 100 + counter % 5)];
                    d.encode(65_000).unwrap_or_default()
                };
                core.handle_datagram(now, addr(from), &bytes);
                core.handle_timeout(now);
                while let Some(out) = core.poll_output() {
                    if let Output::Deliver(m) = out {
                        prop_assert_eq!(m.payload.as_slice(), b"x", "only what members sent is delivered");
                    }
                }
                prop_assert!(core.fifo.held() <= 64 * 3, "memory bound: {}", core.fifo.held());
            }
        }
    }
}
