//! The sequencer's protocol core, without I/O: who is in each group (from their Hello and
//! Bye, and the tracker's eviction notices), the handshake answers that tell a new member
//! where the sequence starts, and the translation between datagrams and the ordering core's
//! [`Sequencer`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::{Duration, Instant};

use member::seals::{GroupSeals, Opened};
use member::{MemberInfo, Members, SEQUENCER, Transmit, hello_source};
use ordering::{Output as Order, Sequenced, Sequencer, Start};
use proto::bundle::BundleReaders;
use proto::{CounterRange, Datagram, DatagramType, PROTOCOL_VERSION, Secret};
use seal::{GroupKey, Sealer, SharedKey};

use crate::recovery::{Recovery, Source};

/// A message as an author submitted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    /// The text (`Content`; empty when the payload is binary).
    pub text: Arc<str>,
    /// A binary payload as the author encoded it (`Data`, base64), passed on as it came:
    /// the sequencer never decodes payloads.
    pub data: Option<Arc<str>>,
    /// The author's send time, carried through to every member.
    pub sent_at_us: Option<u64>,
}

/// What the sequencer has seen and done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeTraffic {
    /// Datagrams received.
    pub datagrams_received: u64,
    /// Datagrams sent.
    pub datagrams_sent: u64,
    /// Of those, sequenced messages sent once to the members' IP multicast group (see
    /// [`SequencerNode::send_multicast`]).
    pub multicast_sent: u64,
    /// Dropped: not a valid datagram.
    pub malformed: u64,
    /// Dropped: claimed a member's name from another address.
    pub spoofed: u64,
    /// Dropped: from a member that never said Hello.
    pub unknown: u64,
    /// Dropped: a plain datagram for a sealed group, or one sealed with another group's key.
    pub unsealed: u64,
}

/// What the sequencer core asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeOutput {
    /// Send this datagram.
    Transmit(Transmit),
    /// The tracker told us it evicted us: register again (our groups' members greet us
    /// again by themselves).
    Evicted,
    /// We are taking `group` over from an earlier sequencer: ask the tracker who its
    /// members are and hand the list to [`SequencerNode::handle_members`]. Each is then
    /// asked to greet us within the takeover window: a member with nothing to send would
    /// otherwise not notice the change in time, and what only it delivered would be
    /// sequenced again in another order.
    ListMembers {
        /// The group.
        group: String,
    },
    /// We took `group` over from an earlier sequencer: its members are admitted, and what
    /// some lacked of the earlier sequence is ordered again (for the user to see).
    TookOver {
        /// The group.
        group: String,
        /// Members that greeted us in time.
        members: usize,
        /// Messages of the earlier sequence ordered again first.
        recovered: usize,
    },
}

/// How long a new sequencer collects the Hellos of a group's members, who delivered from a
/// sequencer before it, before it fixes where each author's stream resumes. Members greet a
/// lost sequencer every 50 ms, so every live member is heard well within it.
pub const TAKEOVER_WINDOW: Duration = Duration::from_millis(500);

/// How long the window stays open at most while a member the tracker lists has not greeted
/// us (or while the tracker has not answered who the members are): one that delivered
/// further than the others must be heard, or what only it delivered is ordered again in
/// another place. A member that crashed too is evicted by the tracker and drops out of its
/// list; one that stays silent this long is left out (see [`crate::recovery`]).
pub const TAKEOVER_WINDOW_MAX: Duration = Duration::from_secs(2);

/// At most one prompt to greet us per address this often, and this many addresses
/// remembered: bounds what stray datagrams can make the sequencer send.
const PROMPT_INTERVAL: Duration = Duration::from_millis(100);
const PROMPTS_REMEMBERED: usize = 4096;

/// One member's Hello waiting for a takeover window to close.
#[derive(Debug, Clone)]
struct Greeting {
    from: SocketAddr,
    proto: Option<u32>,
    start: Option<u64>,
    frontier: BTreeMap<String, u64>,
    /// The highest counter it ever sent (`Final` of a resuming Hello): a frontier of
    /// another member beyond it is stale (it rejoined since).
    highest: Option<u64>,
    resuming: bool,
    /// The earlier sequencer it delivered from, and the last number of that sequencer's
    /// sequence it delivered (`Through`).
    epoch: Option<u64>,
    through: Option<u64>,
    /// The IP multicast group it also listens on.
    multicast: Option<SocketAddr>,
}

/// A group this sequencer took over from an earlier one.
#[derive(Debug, Default)]
struct Takeover {
    /// Closes the collection of Hellos, while they are still being collected, if every
    /// listed member greeted us by then.
    closes_at: Option<Instant>,
    /// Closes it whoever is missing.
    closes_at_latest: Option<Instant>,
    /// The end of the first window (`closes_at` moves on while a listed member is awaited).
    first_window_ends: Option<Instant>,
    /// Hellos collected so far, by member.
    greetings: BTreeMap<String, Greeting>,
    /// Each author's highest counter delivered by any member that greeted us: its stream
    /// resumes after it (what some member delivered is never sequenced again).
    delivered: HashMap<String, u64>,
    /// The `Resume` each member was told (a repeated Hello gets the same).
    resumes: HashMap<String, u64>,
    /// The group's members as the tracker last listed them, while Hellos are collected
    /// (`None` until it answers).
    listed: Option<Vec<(String, SocketAddr)>>,
    /// When to ask the listed members not heard yet to greet us again.
    next_prompt: Option<Instant>,
    /// After the window: fetching what the earlier sequencer sent to some members only
    /// (see [`crate::recovery`]); members are admitted when it is done.
    recovery: Option<Recovery>,
    /// Where our sequence starts for the members of the earlier sequencer: the first
    /// message recovered, if any.
    first_seq: Option<u64>,
}

impl Takeover {
    /// Hellos are still held, not answered: the window is open or a recovery runs.
    fn holds_hellos(&self) -> bool {
        self.closes_at.is_some() || self.recovery.is_some()
    }

    /// Every member the tracker listed greeted us (false until it answered).
    fn everyone_greeted(&self) -> bool {
        self.listed.as_ref().is_some_and(|listed| {
            listed
                .iter()
                .all(|(name, _)| self.greetings.contains_key(name))
        })
    }
}

/// The sequencer of every group.
#[derive(Debug)]
pub struct SequencerNode {
    addr: SocketAddr,
    tracker: Option<SocketAddr>,
    epoch: u64,
    seq: Sequencer<Submitted>,
    groups: HashMap<String, Members>,
    takeovers: HashMap<String, Takeover>,
    prompted: HashMap<SocketAddr, Instant>,
    outputs: VecDeque<NodeOutput>,
    traffic: NodeTraffic,
    /// Members that announced they read bundles.
    bundle_readers: BundleReaders,
    /// The sealed groups' keys.
    seals: GroupSeals,
    /// We may send to the members' IP multicast group (see
    /// [`send_multicast`](SequencerNode::send_multicast)).
    multicast: bool,
    /// Per group, where its sequenced messages go (see [`fan_out`](SequencerNode::fan_out)).
    fan_out_kept: HashMap<String, FanOut>,
}

/// Where a group's sequenced messages go, as worked out at the versions of its members and
/// of the bundle readers given.
#[derive(Debug, Clone, Default)]
struct FanOut {
    versions: (u64, u64),
    /// The IP multicast group every member listens on and reads compact datagrams from.
    multicast: Option<SocketAddr>,
    /// Every member, with how it reads a sequenced message.
    members: Arc<[Destination]>,
}

/// A member a sequenced message goes to: its address, the encoding it reads, and whether it
/// takes bundles.
#[derive(Debug, Clone, Copy)]
struct Destination {
    to: SocketAddr,
    form: Form,
    bundle: bool,
}

fn ranges_of(ranges: &[CounterRange]) -> Vec<RangeInclusive<u64>> {
    ranges.iter().map(|r| r.first..=r.last).collect()
}

impl SequencerNode {
    /// A sequencer receiving at `addr`; Byes on another member's behalf are believed only
    /// from `tracker`. `epoch` names this incarnation and must differ from any earlier
    /// sequencer's of the same groups (the start time in microseconds does): members that
    /// delivered from an earlier one see it change and resume with this one.
    pub fn new(
        addr: SocketAddr,
        tracker: Option<SocketAddr>,
        config: ordering::Config,
        epoch: u64,
    ) -> Self {
        Self {
            addr,
            tracker,
            epoch,
            seq: Sequencer::new(config),
            groups: HashMap::new(),
            takeovers: HashMap::new(),
            prompted: HashMap::new(),
            outputs: VecDeque::new(),
            traffic: NodeTraffic::default(),
            bundle_readers: BundleReaders::default(),
            seals: GroupSeals::new(addr),
            multicast: false,
            fan_out_kept: HashMap::new(),
        }
    }

    /// From now on a sequenced message of an unsealed group whose members, two or more, all
    /// listen on the same IP multicast group (their Hellos say so) and read the compact
    /// encoding is sent once, to that group, rather than once per member; whoever misses it
    /// asks again as after any loss. The caller's socket must be able to send there.
    pub fn send_multicast(&mut self, on: bool) {
        self.multicast = on;
    }

    /// The tracker is now at `addr` (the sequencer moved to another tracker sharing the
    /// registry): Byes on another's behalf are believed from there only.
    pub fn set_tracker(&mut self, addr: SocketAddr) {
        self.tracker = Some(addr);
    }

    /// Holds the keys of these sealed groups from now on: their datagrams are sealed as
    /// they leave, and only datagrams sealed with their key are believed. Each group needs
    /// its own key.
    pub fn add_seals(&mut self, seals: &[(String, GroupKey)]) -> Result<(), SharedKey> {
        for (group, key) in seals {
            self.seals.add(group, key)?;
        }
        Ok(())
    }

    /// What shows the tracker that we hold `group`'s key, if it is a sealed group (to list
    /// its members).
    pub fn seal_token(&self, group: &str) -> Option<&Secret> {
        self.seals.token(group)
    }

    /// What the sealed groups' keys opened and dropped.
    pub fn seal_stats(&self) -> seal::OpenStats {
        self.seals.stats()
    }

    /// Whether `group` is a sealed group whose key we hold.
    pub fn is_sealed(&self, group: &str) -> bool {
        self.seals.is_sealed(group)
    }

    /// This incarnation's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Datagram totals.
    pub fn traffic(&self) -> NodeTraffic {
        self.traffic
    }

    /// Ordering totals: `sent` counts messages sequenced.
    pub fn counters(&self) -> ordering::Counters {
        self.seq.counters()
    }

    /// Members known in `group`.
    pub fn members(&self, group: &str) -> usize {
        self.groups.get(group).map_or(0, Members::len)
    }

    /// One datagram from `from`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        self.traffic.datagrams_received += 1;
        match self.seals.open(from, bytes) {
            Opened::Items { items, sealed_as } => {
                for d in items {
                    if self
                        .seals
                        .admits(&d, sealed_as.as_deref(), from, self.tracker)
                    {
                        self.handle_one(now, from, d);
                    } else {
                        self.traffic.unsealed += 1;
                        log::debug!(
                            "dropped a datagram for {:?}: not sealed with its key",
                            d.group
                        );
                    }
                }
            }
            // Counted (and logged once per source) by the opener.
            Opened::Refused => {}
            Opened::Malformed(e) => {
                self.traffic.malformed += 1;
                log::debug!("dropped a datagram from {from}: {e}");
            }
        }
    }

    fn handle_one(&mut self, now: Instant, from: SocketAddr, d: Datagram) {
        if d.kind == DatagramType::Bye && Some(from) == self.tracker && d.username == SEQUENCER {
            // The tracker took our silence for a crash: register again (the members greet
            // us, find our epoch unchanged, and go on).
            log::warn!("the tracker evicted the sequencer; registering again");
            if !self.outputs.contains(&NodeOutput::Evicted) {
                self.outputs.push_back(NodeOutput::Evicted);
            }
            return;
        }
        if d.kind == DatagramType::Bye && Some(from) == self.tracker {
            if let Some(members) = self.groups.get_mut(&d.group)
                && let Some(info) = members.remove(&d.username)
            {
                log::info!("{} was evicted from {}", d.username, d.group);
                if let Some(stream) = self.seq.author_stream(&d.group, &d.username)
                    && stream.started
                {
                    members.remember_eviction(&d.username, info.addr, stream.next);
                }
                let _ = self.seq.handle_evicted(&d.group, &d.username);
            }
            return;
        }
        // Members are known by their registered address, which is not the source of the
        // report's peers' datagrams (they send from fresh sockets): `Members::admits_hello` and
        // `Members::admits` say when to believe them.
        if d.kind == DatagramType::Hello {
            let known = self.groups.get(&d.group);
            let source = match known {
                Some(members) => members.admits_hello(&d, from),
                None => hello_source(&d, from),
            };
            let Some(from) = source else {
                self.traffic.spoofed += 1;
                return;
            };
            self.bundle_readers.note(from, d.proto);
            self.on_hello(now, from, &d);
            self.pump(now);
            return;
        }
        if d.kind == DatagramType::Recovered {
            // From a member not admitted yet: the recovery checks it is the one it asked.
            if let Some(r) = self
                .takeovers
                .get_mut(&d.group)
                .and_then(|t| t.recovery.as_mut())
            {
                r.on_recovered(now, from, &d);
                if r.is_done() {
                    self.run_recoveries(now);
                    self.pump(now);
                }
            }
            return;
        }
        let members = self.groups.get(&d.group);
        if members.and_then(|m| m.admits(&d, from)).is_none() {
            if members.is_some_and(|m| m.get(&d.username).is_some()) {
                self.traffic.spoofed += 1;
            } else {
                self.traffic.unknown += 1;
                log::debug!(
                    "dropped a datagram from {:?}, who never said Hello",
                    d.username
                );
                // Likely a member of an earlier sequencer that has not noticed the change:
                // our Hello tells it to greet us and resume.
                self.prompt(now, from, &d.group);
            }
            return;
        }
        let (group, author) = (d.group.as_str(), d.username.as_str());
        let _ = match d.kind {
            DatagramType::Application => self.seq.handle_message(
                now,
                group,
                author,
                d.counter,
                Submitted {
                    text: Arc::from(d.content.as_str()),
                    data: d.data.as_deref().map(Arc::from),
                    sent_at_us: d.sent_at_us,
                },
            ),
            DatagramType::Nack => self.seq.handle_nack(group, author, &ranges_of(&d.ranges)),
            DatagramType::Digest => self.seq.handle_digest(now, group, author, d.counter),
            DatagramType::Unavailable => {
                self.seq
                    .handle_unavailable(now, group, author, &ranges_of(&d.ranges))
            }
            DatagramType::Bye => {
                if let Some(members) = self.groups.get_mut(group) {
                    // Still reachable: the tail of its stream may need asking for.
                    members.depart(author);
                }
                self.seq.handle_bye(now, group, author, d.final_counter)
            }
            // Members acknowledge to authors, never to the sequencer.
            DatagramType::Hello
            | DatagramType::HelloAck
            | DatagramType::Ack
            | DatagramType::Recover
            | DatagramType::Recovered => Ok(()),
        };
        self.pump(now);
    }

    fn on_hello(&mut self, now: Instant, from: SocketAddr, d: &Datagram) {
        let (group, author) = (d.group.as_str(), d.username.as_str());
        if d.epoch == Some(self.epoch)
            && self
                .groups
                .get(group)
                .is_some_and(|m| m.is_at(author, from))
        {
            // It thought we were gone (the tracker suspected us); we were not: same answer
            // as before, its stream goes on untouched.
            self.acknowledge(from, group, author);
            return;
        }
        let greeting = Greeting {
            from,
            proto: d.proto,
            start: d.start,
            frontier: d.frontier.clone(),
            highest: d.final_counter,
            resuming: d.epoch.is_some_and(|e| e != self.epoch),
            epoch: d.epoch,
            through: d.through,
            multicast: d.multicast_group(),
        };
        let fresh = self.seq.next_sequence(group).is_none()
            && !self
                .takeovers
                .get(group)
                .is_some_and(Takeover::holds_hellos);
        if fresh && (greeting.resuming || self.tracker.is_some()) {
            // The first we hear of this group. A member of an earlier sequencer, or (with a
            // tracker to ask) maybe a new member of a group an earlier sequencer ordered,
            // whose other members have not greeted us yet: collect every member's Hello
            // before deciding where each author resumes. The tracker's list ends the wait
            // as soon as everyone in it greeted us (at once for a group that is new).
            let takeover = self.takeovers.entry(group.to_owned()).or_default();
            if takeover.greetings.is_empty() {
                log::info!(
                    "{group} is new to us: collecting its members' Hellos (asking the tracker who they are) for {TAKEOVER_WINDOW:?} to {TAKEOVER_WINDOW_MAX:?}, or until all have greeted"
                );
                takeover.closes_at = Some(now + TAKEOVER_WINDOW);
                takeover.closes_at_latest = Some(now + TAKEOVER_WINDOW_MAX);
                takeover.first_window_ends = Some(now + TAKEOVER_WINDOW);
                takeover.listed = None;
                takeover.next_prompt = Some(now + PROMPT_INTERVAL);
                self.outputs.push_back(NodeOutput::ListMembers {
                    group: group.to_owned(),
                });
            }
            takeover.greetings.insert(author.to_owned(), greeting);
            self.close_takeovers(now);
            return;
        }
        if let Some(takeover) = self.takeovers.get_mut(group).filter(|t| t.holds_hellos()) {
            takeover.greetings.insert(author.to_owned(), greeting);
            self.close_takeovers(now);
            return;
        }
        self.admit(now, group, author, &greeting);
    }

    /// The tracker's list of `group`'s members, asked for by [`NodeOutput::ListMembers`]:
    /// while we collect the group's Hellos, every member not heard yet is asked to greet us.
    /// They are asked again every 100 ms until they greet us or the window
    /// closes (a prompt can be lost too).
    pub fn handle_members(&mut self, now: Instant, group: &str, members: &[proto::Member]) {
        let Some(takeover) = self
            .takeovers
            .get_mut(group)
            .filter(|t| t.closes_at.is_some())
        else {
            return;
        };
        let listed: Vec<(String, SocketAddr)> = members
            .iter()
            .filter(|m| m.username != SEQUENCER)
            .filter_map(|m| {
                Some((
                    m.username.clone(),
                    SocketAddr::new(m.ip.parse().ok()?, m.port),
                ))
            })
            .collect();
        if listed.is_empty() {
            // A tracker restarted empty knows no member of the group yet (they join it
            // again in a moment): that says nothing of who is in it. Asked again soon.
            return;
        }
        takeover.listed = Some(listed);
        // The silent ones are asked at once (`prompt` limits how often per address).
        let silent: Vec<SocketAddr> = takeover
            .listed
            .iter()
            .flatten()
            .filter(|(name, _)| !takeover.greetings.contains_key(name))
            .map(|(_, addr)| *addr)
            .collect();
        for to in silent {
            self.prompt(now, to, group);
        }
        self.close_takeovers(now);
        self.pump(now);
    }

    /// Asks the listed members of the groups being taken over that did not greet us yet to
    /// do so, when it is time to, and the tracker again who the members are (one crashed
    /// meanwhile drops out of its list; a tracker that was down may answer now).
    fn prompt_silent(&mut self, now: Instant) {
        let mut due = Vec::new();
        for (group, t) in &mut self.takeovers {
            if t.closes_at.is_none() || t.next_prompt.is_none_or(|at| at > now) {
                continue;
            }
            t.next_prompt = Some(now + PROMPT_INTERVAL);
            self.outputs.push_back(NodeOutput::ListMembers {
                group: group.clone(),
            });
            for (name, addr) in t.listed.iter().flatten() {
                if !t.greetings.contains_key(name) {
                    due.push((group.clone(), *addr));
                }
            }
        }
        for (group, to) in due {
            self.prompt(now, to, &group);
        }
    }

    /// Ends the takeover windows due at `now`: every author's stream resumes after the
    /// highest counter any member delivered; what the earlier sequencer sent to some
    /// members only is recovered (see [`crate::recovery`]) before the members are admitted.
    fn close_takeovers(&mut self, now: Instant) {
        let tracker = self.tracker;
        for t in self.takeovers.values_mut() {
            // Waiting for a listed member past the first window: look again at the next
            // prompt.
            if let (Some(at), Some(latest), Some(_)) = (t.closes_at, t.closes_at_latest, tracker)
                && at <= now
                && !t.everyone_greeted()
                && latest > now
            {
                t.closes_at = Some(t.next_prompt.unwrap_or(latest).max(now).min(latest));
            }
        }
        let due: Vec<String> = self
            .takeovers
            .iter()
            .filter(|(_, t)| match (t.closes_at, tracker) {
                (None, _) => false,
                // Nobody to ask who the members are: the first window.
                (Some(at), None) => at <= now,
                // Everyone listed greeted us, past the first window (members that have not
                // noticed the change yet may still greet us as their old sequencer, and a
                // later Hello with what they delivered must count), or at once if no
                // member came from an earlier sequencer (a group new to everyone).
                (Some(_), Some(_)) => {
                    let resuming = t.greetings.values().any(|g| g.resuming);
                    let first_window_over = t.first_window_ends.is_none_or(|at| at <= now);
                    t.everyone_greeted() && (first_window_over || !resuming)
                        || t.closes_at_latest.is_none_or(|at| at <= now)
                }
            })
            .map(|(g, _)| g.clone())
            .collect();
        for group in due {
            let Some(takeover) = self.takeovers.get_mut(&group) else {
                continue;
            };
            takeover.closes_at = None;
            takeover.closes_at_latest = None;
            for g in takeover.greetings.values() {
                for (author, &counter) in &g.frontier {
                    let best = takeover.delivered.entry(author.clone()).or_insert(0);
                    *best = (*best).max(counter);
                }
            }
            takeover.recovery = recovery_for(now, &takeover.greetings, takeover.listed.as_deref());
            match &takeover.recovery {
                Some(r) => log::info!(
                    "took over {group}: recovering numbers {:?} of the earlier sequence, which some members lack, from {}",
                    r.wanted(),
                    r.source().map_or("nobody", |s| s.name.as_str())
                ),
                None => self.complete_takeover(now, &group),
            }
        }
        self.run_recoveries(now);
    }

    /// Asks for what has not come yet, and completes the takeovers whose recovery is done.
    fn run_recoveries(&mut self, now: Instant) {
        let mut requests = Vec::new();
        let mut done = Vec::new();
        for (group, t) in &mut self.takeovers {
            let Some(r) = t.recovery.as_mut() else {
                continue;
            };
            if let Some(request) = r.poll_request(now, group, self.addr) {
                requests.push(request);
            }
            if r.is_done() {
                done.push(group.clone());
            }
        }
        for (to, d) in requests {
            self.send(&d.group, to, encode(&d));
        }
        for group in done {
            self.complete_takeover(now, &group);
        }
    }

    /// Admits the members collected in the takeover of `group`, then orders what was
    /// recovered of the earlier sequence, first in ours.
    fn complete_takeover(&mut self, now: Instant, group: &str) {
        let first = self.seq.open_group(group);
        let Some(takeover) = self.takeovers.get_mut(group) else {
            return;
        };
        let recovered = takeover
            .recovery
            .take()
            .map(Recovery::into_messages)
            .unwrap_or_default();
        let greetings = std::mem::take(&mut takeover.greetings);
        takeover.first_seq = greetings.values().any(|g| g.resuming).then_some(first);
        log::info!(
            "took over {group}: {} member(s), resuming {} author stream(s) after what they delivered, {} message(s) of the earlier sequence ordered again first",
            greetings.len(),
            takeover.delivered.len(),
            recovered.len()
        );
        for (author, greeting) in &greetings {
            self.admit(now, group, author, greeting);
        }
        if greetings.values().any(|g| g.resuming) {
            self.outputs.push_back(NodeOutput::TookOver {
                group: group.to_owned(),
                members: greetings.len(),
                recovered: recovered.len(),
            });
        }
        for m in recovered {
            self.seq
                .sequence_recovered(now, group, m.origin, m.origin_counter, m.submitted);
        }
    }

    /// Makes `author` a member of `group` and answers its Hello.
    fn admit(&mut self, now: Instant, group: &str, author: &str, greeting: &Greeting) {
        let next = self.seq.open_group(group);
        let members = self.groups.entry(group.to_owned()).or_default();
        let from = greeting.from;
        let previous = members
            .get(author)
            .filter(|m| m.addr == from && m.start == greeting.start)
            .cloned();
        let repeated = previous.is_some();
        let same_place = members.is_at(author, from);
        // A repeated Hello (its first answer was lost or slow) gets the same start as the
        // first: a later one would make the member skip messages already sent to it.
        let first_seq = self
            .takeovers
            .get(group)
            .and_then(|t| t.first_seq)
            .filter(|_| greeting.resuming);
        let start_told = previous
            .and_then(|m| m.our_start)
            .or(first_seq)
            .unwrap_or(next);
        members.insert(
            author,
            MemberInfo {
                addr: from,
                proto: greeting.proto,
                start: greeting.start,
                heard: true,
                our_start: Some(start_told),
                multicast: greeting.multicast,
            },
        );
        log::debug!(
            "Hello from {author} in {group} (its start {:?}): told the sequence starts at {start_told}{}",
            greeting.start,
            if repeated { ", again" } else { "" }
        );
        if !repeated {
            let start = match (greeting.proto, greeting.start) {
                (Some(_), Some(s)) if greeting.resuming => {
                    // Whatever any member delivered of this author is not sequenced again.
                    let takeover = self.takeovers.entry(group.to_owned()).or_default();
                    let after_delivered = takeover
                        .delivered
                        .get(author)
                        .map(|&d| greeting.highest.map_or(d, |h| d.min(h)))
                        .map_or(s, |d| d.saturating_add(1));
                    let resume = s.max(after_delivered);
                    takeover.resumes.insert(author.to_owned(), resume);
                    log::info!("{author} resumes in {group} from its message {resume}");
                    Start::At(resume)
                }
                (Some(_), Some(s)) => {
                    // An evicted author alive after all goes on where its stream stopped,
                    // also when the tracker's word of the eviction never reached us (lost):
                    // greeting us again from the same place with a later start, it is the
                    // same stream going on.
                    let going_on = same_place
                        .then(|| self.seq.author_stream(group, author))
                        .flatten()
                        .filter(|stream| stream.started)
                        .map_or(u64::MAX, |stream| stream.next);
                    Start::At(
                        self.groups
                            .get_mut(group)
                            .map_or(s, |m| m.resume_point(author, from, s))
                            .min(going_on),
                    )
                }
                _ => Start::Legacy,
            };
            log::info!("{author} joined {group}");
            self.seq.add_author(now, group, author, start);
        }
        self.acknowledge(from, group, author);
    }

    /// Sends `author` our HelloAck: where the sequence starts for it, our epoch, and where
    /// its own stream resumes if it came from an earlier sequencer.
    fn acknowledge(&mut self, to: SocketAddr, group: &str, author: &str) {
        let Some(member) = self.groups.get(group).and_then(|m| m.get(author)) else {
            return;
        };
        if member.proto.is_none() {
            return;
        }
        let start_told = member.our_start.unwrap_or(1);
        let mut ack = Datagram::new(
            DatagramType::HelloAck,
            group,
            SEQUENCER,
            "",
            self.addr,
            start_told,
            SEQUENCER,
        );
        ack.proto = Some(PROTOCOL_VERSION);
        ack.start = Some(start_told);
        ack.epoch = Some(self.epoch);
        ack.resume = self
            .takeovers
            .get(group)
            .and_then(|t| t.resumes.get(author).copied());
        self.send(group, to, encode(&ack));
    }

    /// Asks whoever sent us a datagram of `group` without greeting us first to greet us
    /// (at most once per [`PROMPT_INTERVAL`] per address).
    fn prompt(&mut self, now: Instant, to: SocketAddr, group: &str) {
        if self
            .prompted
            .get(&to)
            .is_some_and(|&at| now.saturating_duration_since(at) < PROMPT_INTERVAL)
        {
            return;
        }
        if self.prompted.len() >= PROMPTS_REMEMBERED {
            self.prompted.clear();
        }
        self.prompted.insert(to, now);
        let mut hello = Datagram::new(
            DatagramType::Hello,
            group,
            SEQUENCER,
            "",
            self.addr,
            0,
            SEQUENCER,
        );
        hello.proto = Some(PROTOCOL_VERSION);
        hello.epoch = Some(self.epoch);
        self.send(group, to, encode(&hello));
    }

    /// Runs the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.prompt_silent(now);
        self.close_takeovers(now);
        self.run_recoveries(now);
        self.seq.handle_timeout(now);
        self.pump(now);
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.takeovers
            .values()
            .filter_map(|t| t.closes_at)
            .chain(
                self.takeovers
                    .values()
                    .filter(|t| t.closes_at.is_some())
                    .filter_map(|t| t.next_prompt),
            )
            .chain(
                self.takeovers
                    .values()
                    .filter_map(|t| t.recovery.as_ref().map(Recovery::next_timeout)),
            )
            .chain(self.seq.poll_timeout())
            .min()
    }

    /// What to do next, if anything: drain it after every input until `None`.
    pub fn poll_output(&mut self) -> Option<NodeOutput> {
        self.outputs.pop_front()
    }

    /// Sends `bytes`, a datagram of `group`, to `to`: sealed if it is a sealed group.
    fn send(&mut self, group: &str, to: SocketAddr, bytes: Arc<[u8]>) {
        // An IP multicast group is sent to only when all its listeners read bundles.
        let bundle = self.bundle_readers.reads(&to) || to.ip().is_multicast();
        let seal = self.seals.sealer(group);
        self.transmit(to, bytes, bundle, seal);
    }

    /// Sends `bytes` to `to`, in a bundle if `bundle`, sealed with `seal` if given.
    fn transmit(
        &mut self,
        to: SocketAddr,
        bytes: Arc<[u8]>,
        bundle: bool,
        seal: Option<Arc<Sealer>>,
    ) {
        self.traffic.datagrams_sent += 1;
        self.outputs.push_back(NodeOutput::Transmit(Transmit {
            to,
            bytes,
            bundle,
            seal,
        }));
    }

    fn addr_of(&self, group: &str, name: &str, newer_only: bool) -> Option<SocketAddr> {
        let m = self.groups.get(group)?.reachable(name)?;
        (!newer_only || m.proto.is_some()).then_some(m.addr)
    }

    /// The IP multicast group the members of `group` all listen on, if sequenced messages
    /// may go there once (see [`send_multicast`](Self::send_multicast)).
    fn ip_multicast(&mut self, group: &str) -> Option<SocketAddr> {
        if !self.multicast || self.seals.is_sealed(group) {
            return None;
        }
        self.fan_out(group).multicast
    }

    /// Where the sequenced messages of `group` go: worked out again only when its members
    /// or what they read change, since it is asked for every message (with sixteen
    /// members, working it out each time was a sixth of the sequencer's time).
    fn fan_out(&mut self, group: &str) -> FanOut {
        let Some(members) = self.groups.get(group) else {
            return FanOut::default();
        };
        let versions = (members.version(), self.bundle_readers.version());
        if let Some(kept) = self.fan_out_kept.get(group)
            && kept.versions == versions
        {
            return kept.clone();
        }
        let readers = &self.bundle_readers;
        let fan_out = FanOut {
            versions,
            multicast: members.shared_multicast(|_| true, |addr| readers.reads_compact(addr)),
            members: members
                .iter()
                .map(|(_, m)| Destination {
                    to: m.addr,
                    form: self.form(m.addr, m.proto.is_some()),
                    bundle: readers.reads(&m.addr),
                })
                .collect(),
        };
        self.fan_out_kept.insert(group.to_owned(), fan_out.clone());
        fan_out
    }

    /// How a sequenced message is encoded for the member at `to`.
    fn form(&self, to: SocketAddr, newer: bool) -> Form {
        match (newer, self.bundle_readers.reads_compact(&to)) {
            (false, _) => Form::Report,
            (true, false) => Form::Newer,
            (true, true) => Form::Compact,
        }
    }

    /// A sequenced message. For newer members it names our epoch: a member still following
    /// an earlier sequencer (or one that already follows a later one) must not take our
    /// sequence numbers for its sequencer's. The report's peers get it without.
    fn sequenced(&self, group: &str, seq: u64, s: &Sequenced<Submitted>, form: Form) -> Arc<[u8]> {
        if form == Form::Compact
            && s.payload.data.is_none()
            && let Some(bytes) = self.sequenced_compact(group, seq, s)
        {
            return bytes;
        }
        let newer = form != Form::Report;
        let mut d = Datagram::new(
            DatagramType::Application,
            group,
            SEQUENCER,
            &*s.payload.text,
            self.addr,
            seq,
            &*s.origin,
        );
        d.data = s.payload.data.as_deref().map(str::to_owned);
        d.sent_at_us = s.payload.sent_at_us;
        d.origin_counter = Some(s.origin_counter);
        if newer {
            d.epoch = Some(self.epoch);
        }
        if form == Form::Compact
            && let Some(bytes) = proto::compact::from_datagram(&d)
        {
            return Arc::from(bytes);
        }
        encode(&d)
    }

    /// A sequenced text message in the compact encoding, made straight from what the
    /// author sent (`None` if it cannot be: a name too long for the layout).
    fn sequenced_compact(
        &self,
        group: &str,
        seq: u64,
        s: &Sequenced<Submitted>,
    ) -> Option<Arc<[u8]>> {
        let header = proto::compact::RunHeader {
            group,
            sender: SEQUENCER,
            addr: self.addr,
        };
        let item = proto::compact::Item {
            counter: seq,
            sent_at_us: s.payload.sent_at_us,
            origin_counter: Some(s.origin_counter),
            epoch: Some(self.epoch),
            origin: (*s.origin != *SEQUENCER).then_some(&*s.origin),
            payload: s.payload.text.as_bytes(),
        };
        let mut out = Vec::with_capacity(64 + s.payload.text.len());
        proto::compact::encode_into(&mut out, &header, &item).ok()?;
        Some(Arc::from(out))
    }

    fn control(
        &self,
        kind: DatagramType,
        group: &str,
        counter: u64,
        origin: &str,
        ranges: &[RangeInclusive<u64>],
    ) -> Arc<[u8]> {
        let mut d = Datagram::new(kind, group, SEQUENCER, "", self.addr, counter, origin);
        // Control datagrams go to newer members only: our epoch, as on sequenced messages.
        d.epoch = Some(self.epoch);
        d.ranges = ranges
            .iter()
            .take(proto::MAX_RANGES)
            .map(|r| CounterRange::new(*r.start(), *r.end()))
            .collect();
        encode(&d)
    }

    fn pump(&mut self, _now: Instant) {
        while let Some(out) = self.seq.poll_output() {
            match out {
                Order::Multicast {
                    group,
                    counter,
                    payload,
                } => {
                    if let Some(to) = self.ip_multicast(&group) {
                        let bytes = self.sequenced(&group, counter, &payload, Form::Compact);
                        self.send(&group, to, bytes);
                        self.traffic.multicast_sent += 1;
                        continue;
                    }
                    // One encoding for each kind of member, made only if one needs it.
                    let mut encoded: [Option<Arc<[u8]>>; 3] = Default::default();
                    let seal = self.seals.sealer(&group);
                    for d in self.fan_out(&group).members.iter() {
                        let bytes = encoded[d.form as usize]
                            .get_or_insert_with(|| {
                                self.sequenced(&group, counter, &payload, d.form)
                            })
                            .clone();
                        self.transmit(d.to, bytes, d.bundle, seal.clone());
                    }
                }
                Order::Retransmit {
                    to,
                    group,
                    counter,
                    payload,
                } => {
                    if let Some(addr) = self.addr_of(&group, &to, true) {
                        let bytes =
                            self.sequenced(&group, counter, &payload, self.form(addr, true));
                        self.send(&group, addr, bytes);
                    }
                }
                Order::Nack { to, group, ranges } => {
                    if let Some(addr) = self.addr_of(&group, &to, true) {
                        let first = ranges.first().map_or(0, |r| *r.start());
                        let bytes = self.control(DatagramType::Nack, &group, first, &to, &ranges);
                        self.send(&group, addr, bytes);
                    }
                }
                Order::Digest { group, highest } => {
                    let bytes = self.control(DatagramType::Digest, &group, highest, SEQUENCER, &[]);
                    for d in self.fan_out(&group).members.iter() {
                        if d.form != Form::Report {
                            self.send(&group, d.to, bytes.clone());
                        }
                    }
                }
                Order::Unavailable { to, group, ranges } => {
                    if let Some(addr) = self.addr_of(&group, &to, true) {
                        let bytes =
                            self.control(DatagramType::Unavailable, &group, 0, SEQUENCER, &ranges);
                        self.send(&group, addr, bytes);
                    }
                }
                Order::Deliver(_) => {}
            }
        }
    }
}

/// What to recover of the earlier sequence after a takeover window, from the members that
/// greeted us (see [`crate::recovery`]): the numbers between the least and the furthest any
/// newer member delivered of the latest earlier sequencer's sequence. Only members the
/// tracker `listed` (when it did) are asked for them: a stranger's Hello claiming to have
/// delivered further would only delay the takeover.
fn recovery_for(
    now: Instant,
    greetings: &BTreeMap<String, Greeting>,
    listed: Option<&[(String, SocketAddr)]>,
) -> Option<Recovery> {
    let resumers = || {
        greetings
            .values()
            .filter(|g| g.resuming && g.proto.is_some() && g.through.is_some())
    };
    let epoch = resumers().filter_map(|g| g.epoch).max()?;
    let of_epoch = || resumers().filter(|g| g.epoch == Some(epoch));
    let lowest = of_epoch().filter_map(|g| g.through).min()?;
    let sources = greetings
        .iter()
        .filter(|(_, g)| g.resuming && g.proto.is_some() && g.epoch == Some(epoch))
        .filter(|(name, g)| {
            listed.is_none_or(|l| l.iter().any(|(n, a)| n == *name && *a == g.from))
        })
        .filter_map(|(name, g)| {
            Some(Source {
                name: name.clone(),
                addr: g.from,
                through: g.through?,
            })
        })
        .collect();
    Recovery::new(now, epoch, lowest, sources)
}

/// The encodings of a sequenced message, one per kind of member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// JSON of the report's keys, for the report's peers.
    Report,
    /// JSON with our epoch, for newer members.
    Newer,
    /// The compact encoding, for members that read it.
    Compact,
}

fn encode(d: &Datagram) -> Arc<[u8]> {
    let mut out = Vec::with_capacity(192);
    d.encode_into(&mut out);
    Arc::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sequenced_message_made_compact_directly_is_the_compact_form_of_its_json() {
        let us: SocketAddr = ([127, 0, 0, 1], 5001).into();
        let node = SequencerNode::new(us, None, ordering::Config::default(), 7);
        let s = Sequenced {
            origin: Arc::from("ford"),
            origin_counter: 12,
            payload: Submitted {
                text: Arc::from("hello there"),
                data: None,
                sent_at_us: Some(1_700_000_000_000_000),
            },
        };
        let direct = node.sequenced("books", 40, &s, Form::Compact);
        let newer =
            proto::Datagram::decode(&node.sequenced("books", 40, &s, Form::Newer)).expect("json");
        assert_eq!(
            proto::compact::from_datagram(&newer).as_deref(),
            Some(&direct[..])
        );
        assert_eq!(proto::bundle::decode_single(&direct), Ok(newer));
    }

    /// Where the sequencer sends a message of ford's in `books`, whose three members greeted
    /// it naming `groups` as the multicast groups they listen on, with `send_multicast` on
    /// or off.
    fn destinations_of_a_message(groups: [&str; 3], on: bool) -> Vec<SocketAddr> {
        let us: SocketAddr = ([127, 0, 0, 1], 5001).into();
        let mut node = SequencerNode::new(us, None, ordering::Config::default(), 1);
        node.send_multicast(on);
        let t = Instant::now();
        for (i, (name, group)) in ["ford", "kat", "lou"].iter().zip(groups).enumerate() {
            let from: SocketAddr = ([127, 0, 0, 1], 6001 + i as u16).into();
            let mut hello = Datagram::new(DatagramType::Hello, "books", *name, "", from, 1, *name);
            hello.proto = Some(PROTOCOL_VERSION);
            hello.start = Some(1);
            hello.multicast = group.parse().ok();
            node.handle_datagram(t, from, &encode(&hello));
        }
        let _: Vec<_> = std::iter::from_fn(|| node.poll_output()).collect();
        let ford: SocketAddr = ([127, 0, 0, 1], 6001).into();
        let mut m = Datagram::new(
            DatagramType::Application,
            "books",
            "ford",
            "hi",
            ford,
            1,
            "ford",
        );
        m.sent_at_us = Some(1);
        node.handle_datagram(t, ford, &encode(&m));
        sent_messages(&mut node)
            .into_iter()
            .map(|(to, _)| to)
            .collect()
    }

    /// Where the application datagrams the node sends now go, sorted, and whether each is
    /// compact.
    fn sent_messages(node: &mut SequencerNode) -> Vec<(SocketAddr, bool)> {
        let mut to: Vec<(SocketAddr, bool)> = std::iter::from_fn(|| node.poll_output())
            .filter_map(|o| match o {
                NodeOutput::Transmit(tx)
                    if proto::bundle::decode_single(&tx.bytes)
                        .is_ok_and(|d| d.kind == DatagramType::Application) =>
                {
                    Some((tx.to, proto::compact::is_compact(&tx.bytes)))
                }
                _ => None,
            })
            .collect();
        to.sort();
        to
    }

    #[test]
    fn a_sequenced_message_goes_once_to_the_group_every_member_listens_on_and_only_then() {
        let group: SocketAddr = ([239, 255, 0, 1], 7400).into();
        let each: Vec<SocketAddr> = (6001..=6003)
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
            .collect();
        let all = ["239.255.0.1:7400"; 3];
        assert_eq!(destinations_of_a_message(all, true), [group]);
        // Not asked to: to each member.
        assert_eq!(destinations_of_a_message(all, false), each);
        // One member listens elsewhere, or on none: to each.
        let split = ["239.255.0.1:7400", "239.255.0.2:7400", "239.255.0.1:7400"];
        assert_eq!(destinations_of_a_message(split, true), each);
        let one_deaf = ["239.255.0.1:7400", "", "239.255.0.1:7400"];
        assert_eq!(destinations_of_a_message(one_deaf, true), each);
        // Members naming a unicast address (a third party's) as their group: ignored.
        assert_eq!(destinations_of_a_message(["127.0.0.1:9"; 3], true), each);
    }

    #[test]
    fn each_message_goes_to_the_members_of_its_moment_in_the_form_each_reads() {
        let us: SocketAddr = ([127, 0, 0, 1], 5001).into();
        let mut node = SequencerNode::new(us, None, ordering::Config::default(), 1);
        let t = Instant::now();
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let greet = |node: &mut SequencerNode, name: &str, port: u16, proto: Option<u32>| {
            let mut hello =
                Datagram::new(DatagramType::Hello, "books", name, "", addr(port), 1, name);
            hello.proto = proto;
            hello.start = Some(1);
            node.handle_datagram(t, addr(port), &encode(&hello));
            let _: Vec<_> = std::iter::from_fn(|| node.poll_output()).collect();
        };
        // Ford's message `counter`: to whom the sequencer sends it, and whether compact.
        let send = |node: &mut SequencerNode, counter: u64| {
            let mut m = Datagram::new(
                DatagramType::Application,
                "books",
                "ford",
                "hi",
                addr(6001),
                counter,
                "ford",
            );
            m.sent_at_us = Some(1);
            node.handle_datagram(t, addr(6001), &encode(&m));
            sent_messages(node)
        };
        greet(&mut node, "ford", 6001, Some(PROTOCOL_VERSION));
        greet(&mut node, "kat", 6002, Some(PROTOCOL_VERSION));
        assert_eq!(send(&mut node, 1), [(addr(6001), true), (addr(6002), true)]);
        // One of the report's peers joins: from the next message on it gets JSON.
        greet(&mut node, "lou", 6003, None);
        assert_eq!(
            send(&mut node, 2),
            [(addr(6001), true), (addr(6002), true), (addr(6003), false)]
        );
        // Kat leaves: the next message is not for her.
        let mut bye = Datagram::new(DatagramType::Bye, "books", "kat", "", addr(6002), 1, "kat");
        bye.proto = Some(PROTOCOL_VERSION);
        node.handle_datagram(t, addr(6002), &encode(&bye));
        let _: Vec<_> = std::iter::from_fn(|| node.poll_output()).collect();
        assert_eq!(
            send(&mut node, 3),
            [(addr(6001), true), (addr(6003), false)]
        );
    }

    #[test]
    fn the_trackers_bye_naming_us_asks_the_driver_to_register_again_once() {
        let tracker: SocketAddr = ([127, 0, 0, 1], 5000).into();
        let us: SocketAddr = ([127, 0, 0, 1], 5001).into();
        let mut node = SequencerNode::new(us, Some(tracker), ordering::Config::default(), 7);
        let bye = Datagram::new(DatagramType::Bye, "books", SEQUENCER, "", us, 0, SEQUENCER);
        let bytes = bye.encode(proto::LEGACY_DATAGRAM_LEN).expect("encodes");
        let now = Instant::now();
        // From anyone but the tracker, it is not believed (the stranger is only asked to
        // greet us).
        node.handle_datagram(now, ([127, 0, 0, 1], 6001).into(), &bytes);
        let outputs: Vec<_> = std::iter::from_fn(|| node.poll_output()).collect();
        assert!(!outputs.contains(&NodeOutput::Evicted), "{outputs:?}");
        // Told twice (one notice per group) before the driver looked: one registration.
        node.handle_datagram(now, tracker, &bytes);
        node.handle_datagram(now, tracker, &bytes);
        assert_eq!(node.poll_output(), Some(NodeOutput::Evicted));
        assert_eq!(node.poll_output(), None);
    }

    /// A sequencer of epoch 2 at port 5001 with a tracker at 5000, and the moment ford (at
    /// 6001) greets it as a member of the sequencer of epoch 1.
    fn greeted_by_a_member_of_epoch_1() -> (SequencerNode, Instant) {
        let us: SocketAddr = ([127, 0, 0, 1], 5001).into();
        let ford: SocketAddr = ([127, 0, 0, 1], 6001).into();
        let tracker: SocketAddr = ([127, 0, 0, 1], 5000).into();
        let mut node = SequencerNode::new(us, Some(tracker), ordering::Config::default(), 2);
        let t = Instant::now();
        let mut hello = Datagram::new(DatagramType::Hello, "books", "ford", "", ford, 5, "ford");
        hello.proto = Some(PROTOCOL_VERSION);
        hello.start = Some(5);
        hello.epoch = Some(1);
        node.handle_datagram(t, ford, &encode(&hello));
        (node, t)
    }

    /// A member as the tracker lists it.
    fn listed(name: &str, port: u16) -> proto::Member {
        proto::Member {
            ip: "127.0.0.1".into(),
            port,
            username: name.into(),
            uid: name.into(),
        }
    }

    /// The tracker evicted ford while it was alive, and its word of it to us was lost: ford
    /// greets us again from the same place with a later start (what it sent meanwhile did
    /// not reach us). Its stream goes on where we stopped: we ask for the rest, and nothing
    /// it sent is skipped.
    #[test]
    fn a_member_greeting_again_with_a_later_start_goes_on_where_its_stream_stopped() {
        let us: SocketAddr = ([127, 0, 0, 1], 5001).into();
        let ford: SocketAddr = ([127, 0, 0, 1], 6001).into();
        let mut node = SequencerNode::new(us, None, ordering::Config::default(), 1);
        let t = Instant::now();
        let hello = |start: u64| {
            let mut h = Datagram::new(
                DatagramType::Hello,
                "books",
                "ford",
                "",
                ford,
                start,
                "ford",
            );
            h.proto = Some(PROTOCOL_VERSION);
            h.start = Some(start);
            encode(&h)
        };
        let message = |counter: u64| {
            let d = Datagram::new(
                DatagramType::Application,
                "books",
                "ford",
                format!("m{counter}"),
                ford,
                counter,
                "ford",
            );
            encode(&d)
        };
        node.handle_datagram(t, ford, &hello(1));
        for c in 1..=3 {
            node.handle_datagram(t, ford, &message(c));
        }
        assert_eq!(node.counters().sent, 3);
        let _: Vec<_> = std::iter::from_fn(|| node.poll_output()).collect();
        // Messages 4 and 5 were lost with the eviction notice; ford greets again at 6.
        node.handle_datagram(t, ford, &hello(6));
        node.handle_datagram(t, ford, &message(6));
        assert_eq!(node.counters().sent, 3, "6 waits for 4 and 5");
        let later = node.poll_timeout().expect("a gap timer");
        node.handle_timeout(later);
        let asked: Vec<Vec<CounterRange>> = std::iter::from_fn(|| node.poll_output())
            .filter_map(|o| match o {
                NodeOutput::Transmit(t) => proto::bundle::decode_single(&t.bytes)
                    .ok()
                    .filter(|d| d.kind == DatagramType::Nack)
                    .map(|d| d.ranges),
                _ => None,
            })
            .collect();
        assert_eq!(asked, [vec![CounterRange::new(4, 5)]]);
        node.handle_datagram(later, ford, &message(4));
        node.handle_datagram(later, ford, &message(5));
        assert_eq!(node.counters().sent, 6, "nothing skipped");
    }

    #[test]
    fn a_takeover_asks_every_listed_member_to_greet_until_it_does() {
        let kat: SocketAddr = ([127, 0, 0, 1], 6002).into();
        let (mut node, t) = greeted_by_a_member_of_epoch_1();
        let out: Vec<_> = std::iter::from_fn(|| node.poll_output()).collect();
        assert_eq!(
            out,
            [NodeOutput::ListMembers {
                group: "books".into()
            }]
        );
        let members = [
            listed("ford", 6001),
            listed("kat", 6002),
            listed(SEQUENCER, 5001),
        ];
        node.handle_members(t, "books", &members);
        let prompted = |node: &mut SequencerNode| -> Vec<SocketAddr> {
            std::iter::from_fn(|| node.poll_output())
                .filter_map(|o| match o {
                    NodeOutput::Transmit(tx) => Some(tx.to),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(prompted(&mut node), [kat], "only the silent member");
        // Its prompt was lost: asked again (and the tracker asked again who the members
        // are), past the first window while it stays silent, until the longest window ends.
        let later = t + PROMPT_INTERVAL;
        assert!(node.poll_timeout().is_some_and(|at| at <= later));
        node.handle_timeout(later);
        assert_eq!(prompted(&mut node), [kat]);
        node.handle_timeout(t + TAKEOVER_WINDOW);
        let _ = prompted(&mut node);
        let after_first_window = t + TAKEOVER_WINDOW + PROMPT_INTERVAL;
        assert!(
            node.poll_timeout()
                .is_some_and(|at| at > t + TAKEOVER_WINDOW)
        );
        node.handle_timeout(after_first_window);
        assert_eq!(prompted(&mut node), [kat], "still waited for");
        node.handle_timeout(t + TAKEOVER_WINDOW_MAX);
        let _ = prompted(&mut node);
        node.handle_timeout(t + TAKEOVER_WINDOW_MAX + PROMPT_INTERVAL);
        assert!(prompted(&mut node).is_empty(), "the window is closed");
        assert!(node.members("books") == 1, "ford is admitted without kat");
    }

    #[test]
    fn a_takeover_window_closes_early_once_every_listed_member_greeted() {
        let (mut node, t) = greeted_by_a_member_of_epoch_1();
        // The tracker does not answer at first (it is down): the window waits for its list.
        node.handle_timeout(t + TAKEOVER_WINDOW);
        assert_eq!(
            node.members("books"),
            0,
            "not before the tracker said who is in"
        );
        let asked: Vec<_> = std::iter::from_fn(|| node.poll_output())
            .filter(|o| matches!(o, NodeOutput::ListMembers { .. }))
            .collect();
        assert!(!asked.is_empty(), "the tracker is asked again");
        let ford_listed = listed("ford", 6001);
        node.handle_members(t + TAKEOVER_WINDOW, "books", &[ford_listed]);
        assert_eq!(
            node.members("books"),
            1,
            "ford admitted as soon as the list is complete"
        );
    }
}
