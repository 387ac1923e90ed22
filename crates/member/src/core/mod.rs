//! The peer's protocol core, without I/O: group membership, the Hello/HelloAck handshake,
//! the checks every datagram passes, and the translation between datagrams and the
//! `ordering` cores. Datagrams and time come in; datagrams to send and messages to deliver
//! come out.
//!
//! One module per concern, each with its slice of a group's state: [`admission`] (the
//! checks every datagram passes, and where it goes), [`groups`] (joining and leaving),
//! [`handshake`] (Hello/HelloAck), [`flow`] (flow control), [`takeover`] (following the
//! sequencer across crashes), [`delivery`] (sending, and the ordering cores' outputs), and
//! [`timers`] (one table of a group's timers, dispatched by `handle_timeout` here).

use std::collections::VecDeque;

use crate::FastMap as HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ordering::{FifoReceiver, FifoSender, Output as Order, Start, TotalOrderReceiver};
use proto::bundle::BundleReaders;
use proto::{
    CounterRange, Datagram, DatagramType, LEGACY_DATAGRAM_LEN, PROTOCOL_VERSION, SEQUENCER,
};
use seal::GroupKey;
use thiserror::Error;

use crate::member::{Answer, JoinFailure, Registration, Ticket, TrackerRequest};
use crate::membership::{MemberInfo, Members};
use crate::seals::GroupSeals;
use crate::transmit::Transmit;

mod admission;
mod delivery;
mod flow;
mod groups;
mod handshake;
mod takeover;
mod timers;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;

use flow::Flow;
use groups::Departed;
use handshake::{HELLO_RETRY, Handshake};
use takeover::Takeover;
use timers::{Timer, Timers};

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
    /// Of the application datagrams, those sent once to an IP multicast group for every
    /// member (see [`CoreConfig::multicast`]).
    pub multicast_sent: u64,
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
    /// Total order: datagrams from the sequencer's address that belong to another
    /// sequencer's sequence than the one we follow (an earlier one's, late; or a new one's
    /// before we greeted it), dropped.
    pub other_epoch: u64,
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
    /// Dropped: a plain datagram for a sealed group, or a sealed one whose items name
    /// another group than the one whose key opened it. (Sealed datagrams that do not open
    /// are counted in [`PeerCore::seal_stats`].)
    pub unsealed: u64,
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
    /// The sealed groups whose keys we hold: every datagram of theirs is sealed as it
    /// leaves, and only datagrams sealed with their key are believed (see the `seal`
    /// crate). Each group needs its own key.
    pub seals: Vec<(String, GroupKey)>,
    /// The IP multicast group (address and port) this member also listens on, if any: it
    /// says so in its Hellos, and a message of an unsealed group whose every destination
    /// listens on the same group and reads the compact encoding is sent once, to it. The
    /// caller joins the group and reads it like the member's own socket.
    pub multicast: Option<SocketAddr>,
}

#[derive(Debug, Clone)]
struct Received {
    origin: Arc<str>,
    /// The author's counter, when the sequencer says (`OriginCounter`).
    origin_counter: Option<u64>,
    payload: Vec<u8>,
    sent_at_us: Option<u64>,
}

/// A member our datagrams go to, and what it reads.
#[derive(Debug, Clone, Copy)]
struct Destination {
    to: SocketAddr,
    /// It reads bundles.
    bundle: bool,
    /// It reads the compact encoding.
    compact: bool,
}

/// What we keep per joined group, one slice per concern, and the group's timers.
#[derive(Debug, Default)]
struct GroupState {
    members: Members,
    handshake: Handshake,
    takeover: Takeover,
    flow: Flow,
    timers: Timers,
    /// Where our messages go, as worked out from the members and the bundle readers at the
    /// versions given (a sender flat out works it out once, not per message).
    audience: Option<KeptAudience>,
}

/// The versions of the members and of the bundle readers, and where our messages go.
type KeptAudience = ((u64, u64), Arc<[Destination]>);

impl GroupState {
    /// Forgets what we kept of `member`'s stream and it of ours (it left, was evicted or
    /// started afresh).
    fn forget_streams(&mut self, member: &str) {
        self.takeover.skip_through.remove(member);
        self.flow.owed.remove(member);
        self.flow.acked_by.remove(member);
    }
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
    /// The sealed groups' keys.
    seals: GroupSeals,
    /// The plain datagram opened last (kept for its buffer).
    opened: Vec<u8>,
    /// See [`CoreConfig::multicast`].
    multicast: Option<SocketAddr>,
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
        let mut seals = GroupSeals::new(config.addr);
        for (group, key) in &config.seals {
            // Drivers check this first (`seal::check_keys`); a group left out is treated
            // as one we hold no key for: nothing of it is believed.
            if let Err(e) = seals.add(group, key) {
                log::error!("{e}: {group} stays closed to us");
            }
        }
        Self {
            seals,
            opened: Vec::new(),
            multicast: config.multicast.filter(|a| a.ip().is_multicast()),
            me: Arc::from(config.username.as_str()),
            addr: config.addr,
            tracker: config.tracker,
            mode: config.mode,
            flow_window: config.ordering.flow_window,
            bundle_readers: BundleReaders::default(),
            tx: FifoSender::new(config.ordering.clone()),
            fifo: FifoReceiver::new(config.ordering.clone()),
            total: TotalOrderReceiver::new(config.ordering, SEQUENCER),
            groups: HashMap::default(),
            departed: HashMap::default(),
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
                g.handshake.peers_greeted && g.members.get(SEQUENCER).is_some_and(|m| !m.heard)
            })
    }

    /// The tracker is now at `addr` (the link moved to another tracker sharing the
    /// registry): from now on a Bye on another's behalf is believed only from there.
    pub fn set_tracker(&mut self, addr: SocketAddr) {
        self.tracker = addr;
    }

    /// Datagram totals.
    pub fn traffic(&self) -> Traffic {
        self.traffic
    }

    /// What the sealed groups' keys opened and dropped.
    pub fn seal_stats(&self) -> seal::OpenStats {
        self.seals.stats()
    }

    /// Whether `group` is a sealed group whose key we hold.
    pub fn is_sealed(&self, group: &str) -> bool {
        self.seals.is_sealed(group)
    }

    /// What shows the tracker we hold `group`'s key, if it is sealed.
    pub fn seal_token(&self, group: &str) -> Option<&proto::Secret> {
        self.seals.token(group)
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

    /// Runs the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.linger(now);
        self.tx.handle_timeout(now);
        self.fifo.handle_timeout(now);
        self.total.handle_timeout(now);
        let mut due: Vec<(String, Timer)> = Vec::new();
        for (group, state) in &self.groups {
            due.extend(state.timers.due(now).map(|t| (group.clone(), t)));
        }
        for (group, timer) in due {
            match timer {
                Timer::HelloRetry => self.greet_again(now, &group),
                Timer::SequencerProbe => self.probe_sequencer(now, &group),
                Timer::FlowProbe => self.probe_flow(now, &group),
                Timer::TailProbe => self.probe_tail(now, &group),
            }
        }
        self.pump(now);
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
        .chain(self.groups.values().map(|g| g.timers.next()))
        .chain(self.departed.values().map(|d| Some(d.due())))
        .flatten()
        .min()
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
            d.multicast = self.multicast;
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

    /// Sends `bytes`, a datagram of `group`, to `to`: sealed with the group's key if it is
    /// a sealed group.
    fn transmit(&mut self, group: &str, to: SocketAddr, bytes: Arc<[u8]>, application: bool) {
        let dest = self.destination(to);
        let seal = self.seals.sealer(group);
        self.transmit_to(dest, bytes, seal, application);
    }

    /// How `to` is sent to.
    fn destination(&self, to: SocketAddr) -> Destination {
        Destination {
            to,
            bundle: self.bundle_readers.reads(&to),
            compact: self.bundle_readers.reads_compact(&to),
        }
    }

    /// [`transmit`](Self::transmit) with what it looks up already known.
    fn transmit_to(
        &mut self,
        dest: Destination,
        bytes: Arc<[u8]>,
        seal: Option<Arc<seal::Sealer>>,
        application: bool,
    ) {
        if application {
            self.traffic.app_datagrams_sent += 1;
            if dest.to.ip().is_multicast() {
                self.traffic.multicast_sent += 1;
            }
        } else {
            self.traffic.control_datagrams_sent += 1;
        }
        // A message made compact for members that read it, going to one that does not (one
        // that joined since, or a retransmission): in JSON.
        let bytes = if !dest.compact && proto::compact::is_compact(&bytes) {
            match proto::compact::to_json(&bytes) {
                Some(json) => Arc::from(json),
                None => {
                    log::debug!("cannot turn a compact message for {} into JSON", dest.to);
                    return;
                }
            }
        } else {
            bytes
        };
        self.outputs.push_back(Output::Transmit(Transmit {
            to: dest.to,
            bytes,
            bundle: dest.bundle,
            seal,
        }));
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

    /// Whether every member our multicasts in `group` go to reads the compact encoding (as
    /// its handshake said; a destination the bundle readers do not know as one still gets
    /// JSON, see [`transmit_to`](Self::transmit_to)).
    fn audience_reads_compact(&mut self, group: &str) -> bool {
        self.members_of(group).is_some() && self.destinations(group).iter().all(|d| d.compact)
    }

    /// Where our multicasts in `group` go ([`audience`](Self::audience)) and what each
    /// reads, or the IP multicast group they all listen on ([`ip_multicast`]
    /// (Self::ip_multicast)); kept until the members or what they read change.
    fn destinations(&mut self, group: &str) -> Arc<[Destination]> {
        let worked_out = |core: &Self| -> Arc<[Destination]> {
            if let Some(to) = core.ip_multicast(group) {
                return Arc::new([Destination {
                    to,
                    bundle: true,
                    compact: true,
                }]);
            }
            core.audience(group, false)
                .into_iter()
                .map(|to| core.destination(to))
                .collect()
        };
        let Some(state) = self.groups.get(group) else {
            // A group we left a moment ago: rare, not kept.
            return worked_out(self);
        };
        let versions = (state.members.version(), self.bundle_readers.version());
        if let Some((at, dests)) = &state.audience
            && *at == versions
        {
            return dests.clone();
        }
        let dests = worked_out(self);
        if let Some(state) = self.groups.get_mut(group) {
            state.audience = Some((versions, dests.clone()));
        }
        dests
    }

    /// The IP multicast group our multicasts in `group` go to instead of to each member:
    /// ours, when the group is not sealed (a seal names its one destination), and every
    /// member they go to, two or more, listens on the same group and reads the compact
    /// encoding. Whoever misses one asks the author for it, as after any loss.
    fn ip_multicast(&self, group: &str) -> Option<SocketAddr> {
        let ours = self.multicast?;
        if self.seals.is_sealed(group) {
            return None;
        }
        self.members_of(group)?
            .shared_multicast(
                |name| self.in_audience(name),
                |addr| self.bundle_readers.reads_compact(addr),
            )
            .filter(|shared| *shared == ours)
    }

    /// Whether our multicasts go to the member called `name`: every other member in FIFO
    /// mode, only the sequencer in total order.
    fn in_audience(&self, name: &str) -> bool {
        (name == SEQUENCER) == (self.mode == Mode::Total)
    }

    /// Where our multicasts in `group` go: every other member in FIFO mode, only the
    /// sequencer in total order.
    fn audience(&self, group: &str, newer_only: bool) -> Vec<SocketAddr> {
        let Some(members) = self.members_of(group) else {
            return Vec::new();
        };
        members
            .iter()
            .filter(|(name, _)| self.in_audience(name))
            .filter(|(_, m)| !newer_only || m.proto.is_some())
            .map(|(_, m)| m.addr)
            .collect()
    }
}
