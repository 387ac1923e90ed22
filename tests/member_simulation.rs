//! Whole members in a deterministic simulation: whole peers (`member::Member`, the group
//! protocol and the dialog with the tracker), the sequencer's core
//! (`sequencer::SequencerNode`) and the tracker's registry (`tracker::Registry`) driven
//! together under a virtual clock, over a simulated network with seeded loss, duplication,
//! delay and reordering. Faults drawn per seed: a member that crashes (and is evicted), a
//! tracker that crashes and restarts empty (the members register again and rejoin), and a
//! partition between members that heals. Heartbeats and the tracker's probes cross the
//! lossy network like everything else; the tracker connection is reliable while it is up.
//! Each seed checks FIFO and at most once for every author, completeness (no gap, to the
//! end) for live ones, and in total order one sequence at every live member.
//!
//! What it found, and what it leaves out: a partition used to make members skip what a live
//! member sent during it (gaps were given up on after about a second of requests; now they
//! are asked for slowly until `gap_patience`), and a member that joined during a partition
//! fell back to the report's protocol towards the sequencer (it is now greeted until it
//! answers). Partitions start once the handshakes are over: a member that joins during a
//! partition longer than its second of Hellos is never greeted by the members on the other
//! side, who learn of newcomers only from their Hello (the tracker announces evictions,
//! not joins) — a known limit.
//!
//! Each seed fixes the scenario and the network's random draws; the member cores iterate
//! hash maps whose order differs from process to process, so a replay repeats the scenario
//! but not always the very same run. A failing seed prints its scenario and the command
//! that replays it:
//! `SIM_SEED=<seed> SIM_MODE=<fifo|total> cargo test --test member_simulation replay -- --nocapture`.
//! `SIM_SEEDS` sets how many seeds each mode runs (default 1000).

#![allow(clippy::unwrap_used)] // a test may stop at the first surprise

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use member::{
    Ask, CoreConfig, Event, Member, MemberConfig, Mode, Output, TrackerRequest, Transmit,
};
use proto::{Envelope, Reply, Request};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sequencer::{NodeOutput, SequencerNode};
use tracker::{Liveness, Registry, RegistryOutput, Via};

const GROUP: &str = "g";
const HEARTBEAT: Duration = Duration::from_millis(100);
const RUN_FOR: Duration = Duration::from_secs(8);
/// The tracker connection's round trip.
const TCP_DELAY: Duration = Duration::from_micros(300);
const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn addr(port: u16) -> SocketAddr {
    SocketAddr::new(LOCAL, port)
}

fn liveness() -> Liveness {
    Liveness {
        heartbeat: HEARTBEAT,
        multiplier: 2,
        probe: Duration::from_millis(500),
    }
}

/// The fault model and the workload of one run, drawn from its seed: plain data, printed
/// when a run fails.
#[derive(Debug, Clone)]
struct Scenario {
    peers: usize,
    messages: usize,
    loss_per_mille: u32,
    dup_per_mille: u32,
    max_delay: Duration,
    /// A peer that crashes (stops everything) at this time, if any.
    crash: Option<(usize, Duration)>,
    /// The tracker crashes at this time and restarts, empty, after this long.
    tracker_restart: Option<(Duration, Duration)>,
    /// From this time, for this long, datagrams between these peers and the others (the
    /// sequencer is with the others) are lost; the tracker reaches everyone.
    partition: Option<(Duration, Duration, Vec<usize>)>,
    /// Total order: the sequencer crashes at this time in the middle of what it was
    /// sending (a random part of its pending datagrams goes out), and a new one starts at
    /// its address after this long.
    sequencer_crash: Option<(Duration, Duration)>,
    /// The members listen on an IP multicast group, and the sequencer sends there: one
    /// datagram to it goes to every member (but its sender), each copy lost, delayed or
    /// cut off by the partition on its own.
    multicast: bool,
}

/// The members' IP multicast group when the scenario has one.
const MULTICAST_GROUP: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(239, 255, 0, 1)), 7400);

impl Scenario {
    /// `Faults::Known` keeps out the sequencer crashes of the known limits (see
    /// [`Faults`]).
    fn draw(rng: &mut ChaCha8Rng, faults: Faults) -> Self {
        let peers = rng.random_range(2..=5);
        let mut scenario = Self {
            peers,
            messages: rng.random_range(10..=60),
            loss_per_mille: [0, 10, 50, 100, 200][rng.random_range(0..5)],
            dup_per_mille: [0, 20, 100][rng.random_range(0..3)],
            max_delay: Duration::from_micros(rng.random_range(50..3000)),
            crash: rng.random_bool(0.4).then(|| {
                (
                    rng.random_range(0..peers),
                    Duration::from_millis(rng.random_range(20..600)),
                )
            }),
            tracker_restart: rng.random_bool(0.3).then(|| {
                (
                    Duration::from_millis(rng.random_range(30..800)),
                    Duration::from_millis(rng.random_range(50..1500)),
                )
            }),
            // Once the handshakes are over: a member that joins during a partition is
            // greeted for about a second only (see the note at the top).
            partition: rng.random_bool(0.3).then(|| {
                let side: Vec<usize> = (0..peers).filter(|_| rng.random_bool(0.5)).collect();
                (
                    Duration::from_millis(rng.random_range(1100..1800)),
                    Duration::from_millis(rng.random_range(10..1500)),
                    side,
                )
            }),
            sequencer_crash: rng.random_bool(0.3).then(|| {
                let earliest = match faults {
                    Faults::Known => 300,
                    Faults::All => 50,
                };
                (
                    Duration::from_millis(rng.random_range(earliest..1500)),
                    Duration::from_millis(rng.random_range(20..800)),
                )
            }),
            multicast: false,
        };
        // Drawn last, so the other draws of a seed stay what they were before it existed.
        scenario.multicast = rng.random_bool(0.5);
        if faults == Faults::Known && scenario.sequencer_crash.is_some() {
            scenario.partition = None;
        }
        scenario
    }
}

/// Which faults a run draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Faults {
    /// Everything except the sequencer crashes of the known limits of the takeover: a
    /// crash while members are still joining and greeting the first sequencer (the
    /// successor resumes each author after the highest counter any member delivered, which
    /// is not the same as everything below it being delivered by someone when a member
    /// joined mid-stream; messages are then lost by all, or delivered twice or out of
    /// order), and a crash with a member partitioned away for the whole takeover window
    /// (the successor resumes without its frontier, and sequences again, in another order,
    /// what only it delivered).
    Known,
    /// Those too (`cargo test --test member_simulation -- --ignored`).
    All,
}

/// A datagram on its way: arrival, order of sending (ties), from, to, bytes.
type InFlight = (Duration, u64, SocketAddr, SocketAddr, Vec<u8>);

struct SimPeer {
    name: String,
    addr: SocketAddr,
    member: Member,
    /// Its tracker connection is up.
    connected: bool,
    /// In the group (the tracker said yes to its join).
    joined: bool,
    alive: bool,
    sent: usize,
    next_send: Duration,
    /// (author, text) in delivery order.
    delivered: Vec<(String, String)>,
    /// When each was delivered, and its counter (the sequence number in total order).
    delivered_at: Vec<(Duration, u64)>,
}

struct Sim {
    base: Instant,
    now: Duration,
    rng: ChaCha8Rng,
    scenario: Scenario,
    mode: Mode,
    net: BinaryHeap<Reverse<InFlight>>,
    sent: u64,
    /// Datagrams sent to the multicast group (each then went to every member).
    to_group: u64,
    peers: Vec<SimPeer>,
    sequencer: Option<SequencerNode>,
    /// `None` while the tracker is down.
    registry: Option<Registry>,
    tracker: SocketAddr,
    /// Replies on their way over tracker connections: when, to which peer, for what.
    replies: Vec<(Duration, usize, Ask, Reply)>,
    /// The first sequencer crashed.
    sequencer_died: bool,
    /// `SIM_TRACE` is set: print every control datagram and event (read once, not per
    /// datagram).
    trace: bool,
}

impl Sim {
    fn new(seed: u64, mode: Mode, faults: Faults) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let scenario = Scenario::draw(&mut rng, faults);
        let base = Instant::now();
        let tracker = addr(5000);
        let seq_addr = addr(5001);
        let sequencer = (mode == Mode::Total).then(|| {
            let mut node =
                SequencerNode::new(seq_addr, Some(tracker), ordering::Config::default(), 1);
            node.send_multicast(scenario.multicast);
            node
        });
        let peers = (0..scenario.peers)
            .map(|i| {
                let name = format!("p{i}");
                let addr = addr(6000 + i as u16);
                let config = MemberConfig {
                    core: CoreConfig {
                        username: name.clone(),
                        addr,
                        tracker,
                        mode,
                        ordering: ordering::Config::default(),
                        seals: Vec::new(),
                        multicast: scenario.multicast.then_some(MULTICAST_GROUP),
                    },
                    clock: None,
                };
                SimPeer {
                    member: Member::new(config, base),
                    name,
                    addr,
                    connected: false,
                    joined: false,
                    alive: true,
                    sent: 0,
                    next_send: Duration::ZERO,
                    delivered: Vec::new(),
                    delivered_at: Vec::new(),
                }
            })
            .collect();
        Self {
            base,
            now: Duration::ZERO,
            rng,
            scenario,
            mode,
            net: BinaryHeap::new(),
            sent: 0,
            to_group: 0,
            peers,
            sequencer,
            registry: Some(Self::fresh_registry(mode)),
            tracker,
            replies: Vec::new(),
            sequencer_died: false,
            trace: std::env::var_os("SIM_TRACE").is_some(),
        }
    }

    fn fresh_registry(mode: Mode) -> Registry {
        Registry::new(liveness(), (mode == Mode::Total).then_some(addr(5001)))
    }

    fn at(&self) -> Instant {
        self.base + self.now
    }

    /// Which side of the partition an address is on, while it lasts (`None`: no partition
    /// now, or the tracker, which reaches everyone).
    fn side(&self, a: SocketAddr) -> Option<bool> {
        let (from, span, side) = self.scenario.partition.as_ref()?;
        if self.now < *from || self.now >= *from + *span || a == self.tracker {
            return None;
        }
        Some(
            self.peers
                .iter()
                .position(|p| p.addr == a)
                .is_some_and(|i| side.contains(&i)),
        )
    }

    /// A datagram into the network, through the fault model.
    fn post(&mut self, from: SocketAddr, to: SocketAddr, bytes: &[u8]) {
        if to == MULTICAST_GROUP {
            self.to_group += 1;
            let listeners: Vec<SocketAddr> = self
                .peers
                .iter()
                .map(|p| p.addr)
                .filter(|a| *a != from)
                .collect();
            for to in listeners {
                self.post(from, to, bytes);
            }
            return;
        }
        if self.rng.random_range(0..1000) < self.scenario.loss_per_mille {
            return;
        }
        if let (Some(a), Some(b)) = (self.side(from), self.side(to))
            && a != b
        {
            return;
        }
        let copies = if self.rng.random_range(0..1000) < self.scenario.dup_per_mille {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = Duration::from_micros(
                self.rng
                    .random_range(10..=self.scenario.max_delay.as_micros() as u64),
            );
            self.sent += 1;
            self.net.push(Reverse((
                self.now + delay,
                self.sent,
                from,
                to,
                bytes.to_vec(),
            )));
        }
    }

    /// A request over peer `i`'s tracker connection: answered a round trip later, or at
    /// once not at all if the connection is down.
    fn tracker_request(&mut self, i: usize, request: TrackerRequest) {
        let at = self.at();
        match self.registry.as_mut() {
            Some(registry) if self.peers[i].connected => {
                let reply = registry.handle_envelope(at, request.envelope, Via::Tcp(LOCAL));
                self.replies
                    .push((self.now + TCP_DELAY, i, request.ask, reply));
            }
            _ => self.peers[i].member.tracker_unanswered(at, request.ask),
        }
    }

    /// Moves every output of every node into the network, the tracker or the record.
    fn drain(&mut self) {
        for i in 0..self.peers.len() {
            while let Some(out) = self.peers[i].member.poll_output() {
                if !self.peers[i].alive {
                    continue;
                }
                match out {
                    Output::Transmit(Transmit { to, bytes, .. }) => {
                        let from = self.peers[i].addr;
                        self.post(from, to, &bytes);
                    }
                    Output::Deliver(m) => {
                        let p = &mut self.peers[i];
                        p.delivered
                            .push((m.author.to_string(), m.text().into_owned()));
                        p.delivered_at.push((self.now, m.counter));
                    }
                    Output::Tracker(request) => self.tracker_request(i, request),
                    // Registered: join, unless joined already (then the member rejoins by
                    // itself).
                    Output::Event(Event::Registered(_)) if !self.peers[i].joined => {
                        let at = self.at();
                        let _ = self.peers[i].member.join(at, GROUP);
                    }
                    Output::Event(Event::GroupJoined { .. }) => {
                        self.peers[i].joined = true;
                        self.peers[i].next_send = self.now;
                    }
                    Output::Event(Event::RegistrationRefused { reason }) => {
                        panic!("{} was refused: {reason}", self.peers[i].name)
                    }
                    // Lost with the tracker: asked again once registered again.
                    Output::Event(Event::JoinFailed { reason, .. }) => {
                        assert_eq!(reason, member::JoinFailure::Unanswered);
                    }
                    Output::Event(e) => {
                        if self.trace {
                            println!("{:?} {}: {e:?}", self.now, self.peers[i].name);
                        }
                    }
                }
            }
        }
        if let Some(seq) = self.sequencer.as_mut() {
            let mut out = Vec::new();
            let mut lists = Vec::new();
            while let Some(output) = seq.poll_output() {
                match output {
                    NodeOutput::Transmit(t) => out.push(t),
                    NodeOutput::ListMembers { group } => lists.push(group),
                    NodeOutput::Evicted | NodeOutput::TookOver { .. } => {}
                }
            }
            // The tracker's answer (a round trip later in reality; at once here).
            let at = self.base + self.now;
            for group in lists {
                let members = self
                    .registry
                    .as_ref()
                    .and_then(|r| r.members_of(&group))
                    .unwrap_or_default();
                seq.handle_members(at, &group, &members);
                while let Some(output) = seq.poll_output() {
                    if let NodeOutput::Transmit(t) = output {
                        out.push(t);
                    }
                }
            }
            for t in out {
                self.post(addr(5001), t.to, &t.bytes);
            }
        }
        let mut outputs = Vec::new();
        if let Some(registry) = self.registry.as_mut() {
            outputs.extend(std::iter::from_fn(|| registry.poll_output()));
        }
        for output in outputs {
            match output {
                RegistryOutput::Probe(probe) => {
                    let bytes = Envelope {
                        request: Request::Heartbeat {
                            username: probe.username,
                        },
                        proto: Some(proto::PROTOCOL_VERSION),
                        secret: None,
                        seal: None,
                    }
                    .encode();
                    let tracker = self.tracker;
                    self.post(tracker, probe.addr, &bytes);
                }
                // The tracker's notices are not lost (a lost one is the sequencer's and the
                // members' problem in the real system too, but not this test's).
                RegistryOutput::Eviction(eviction) => {
                    for (to, bye) in eviction.notices() {
                        self.sent += 1;
                        let arrival = self.now + Duration::from_micros(20);
                        self.net.push(Reverse((
                            arrival,
                            self.sent,
                            self.tracker,
                            to,
                            bye.to_vec(),
                        )));
                    }
                }
            }
        }
    }

    fn step(&mut self) {
        let at = self.at();
        // The sequencer dies in the middle of a multicast; a successor takes its place.
        if let Some((when, downtime)) = self.scenario.sequencer_crash
            && self.mode == Mode::Total
        {
            if self.now >= when && self.now < when + downtime && self.sequencer.is_some() {
                let mut dying = self.sequencer.take().unwrap();
                let pending: Vec<Transmit> = std::iter::from_fn(|| dying.poll_output())
                    .filter_map(|o| match o {
                        NodeOutput::Transmit(t) => Some(t),
                        NodeOutput::Evicted
                        | NodeOutput::ListMembers { .. }
                        | NodeOutput::TookOver { .. } => None,
                    })
                    .collect();
                let sent = self.rng.random_range(0..=pending.len());
                for t in &pending[..sent] {
                    self.post(addr(5001), t.to, &t.bytes);
                }
                self.sequencer_died = true;
            } else if self.now >= when + downtime && self.sequencer.is_none() {
                let mut node = SequencerNode::new(
                    addr(5001),
                    Some(self.tracker),
                    ordering::Config::default(),
                    2,
                );
                node.send_multicast(self.scenario.multicast);
                self.sequencer = Some(node);
            }
        }
        // Crash.
        if let Some((victim, when)) = self.scenario.crash
            && self.now >= when
        {
            self.peers[victim].alive = false;
        }
        // The tracker goes down, and comes back empty.
        if let Some((down, span)) = self.scenario.tracker_restart {
            if self.now >= down && self.now < down + span && self.registry.is_some() {
                self.registry = None;
                for (_, i, ask, _) in std::mem::take(&mut self.replies) {
                    self.peers[i].member.tracker_unanswered(at, ask);
                }
                for p in &mut self.peers {
                    if p.connected {
                        p.connected = false;
                        p.member.tracker_disconnected(at);
                    }
                }
            } else if self.now >= down + span && self.registry.is_none() {
                self.registry = Some(Self::fresh_registry(self.mode));
            }
        }
        // Connections, one member after another, while the tracker is up.
        if self.registry.is_some() {
            for i in 0..self.peers.len() {
                let p = &mut self.peers[i];
                if p.alive && !p.connected && self.now >= Duration::from_millis(10 * i as u64) {
                    p.connected = true;
                    p.member.tracker_connected(at);
                }
            }
        }
        // Replies due.
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.replies)
            .into_iter()
            .partition(|(when, ..)| *when <= self.now);
        self.replies = later;
        for (_, i, ask, reply) in due {
            if self.peers[i].alive {
                self.peers[i].member.handle_tracker_reply(at, ask, &reply);
            }
        }
        // Sends, at their times.
        for i in 0..self.peers.len() {
            let messages = self.scenario.messages;
            let p = &mut self.peers[i];
            if !p.alive || !p.joined || p.sent >= messages || self.now < p.next_send {
                continue;
            }
            if !p.member.window_open(at, GROUP) {
                continue;
            }
            let text = format!("{} {}", p.name, p.sent);
            if p.member.send(at, GROUP, text.as_bytes()).is_ok() {
                p.sent += 1;
            }
            // Spread over a few seconds, so that faults strike mid-stream.
            let gap = self.rng.random_range(100..60_000);
            self.peers[i].next_send = self.now + Duration::from_micros(gap);
        }
        // Timers.
        for p in &mut self.peers {
            if p.alive && p.member.poll_timeout().is_some_and(|t| t <= at) {
                p.member.handle_timeout(at);
            }
        }
        if let Some(seq) = self.sequencer.as_mut()
            && seq.poll_timeout().is_some_and(|t| t <= at)
        {
            seq.handle_timeout(at);
        }
        if let Some(registry) = self.registry.as_mut()
            && registry.poll_timeout().is_some_and(|t| t <= at)
        {
            registry.handle_timeout(at);
        }
        self.drain();
        // Datagrams due now.
        while let Some(Reverse((when, _, _, _, _))) = self.net.peek() {
            if *when > self.now {
                break;
            }
            let Reverse((_, _, from, to, bytes)) = self.net.pop().unwrap();
            if self.trace {
                if let Ok(items) = proto::bundle::decode_datagrams(&bytes) {
                    for d in items {
                        if d.kind != proto::DatagramType::Application {
                            println!(
                                "{:?} {from} -> {to}: {:?} {} {} epoch {:?} start {:?} resume {:?} final {:?} through {:?} frontier {:?}",
                                self.now,
                                d.kind,
                                d.username,
                                d.counter,
                                d.epoch,
                                d.start,
                                d.resume,
                                d.final_counter,
                                d.through,
                                d.frontier
                            );
                        }
                    }
                }
            }
            if to == addr(5001) {
                if let Some(seq) = self.sequencer.as_mut() {
                    seq.handle_datagram(at, from, &bytes);
                }
            } else if to == self.tracker {
                // Heartbeats (and answers to probes, which are heartbeats).
                if self.trace {
                    println!("{:?} {from} -> tracker: {} bytes", self.now, bytes.len());
                }
                if let (Some(registry), Ok(envelope)) =
                    (self.registry.as_mut(), Envelope::decode(&bytes))
                {
                    registry.handle_envelope(at, envelope, Via::Udp(from));
                }
            } else if let Some(p) = self.peers.iter_mut().find(|p| p.addr == to && p.alive) {
                p.member.handle_datagram(at, from, &bytes);
            }
            self.drain();
        }
    }

    /// The next instant anything can happen.
    fn advance(&mut self) {
        let mut next = self.now + Duration::from_millis(5);
        if let Some(Reverse((when, ..))) = self.net.peek() {
            next = next.min(*when);
        }
        for (when, ..) in &self.replies {
            next = next.min(*when);
        }
        let timers = self
            .peers
            .iter()
            .filter(|p| p.alive)
            .filter_map(|p| p.member.poll_timeout())
            .chain(
                self.sequencer
                    .iter()
                    .filter_map(SequencerNode::poll_timeout),
            )
            .chain(self.registry.iter().filter_map(Registry::poll_timeout))
            .min();
        if let Some(t) = timers {
            next = next.min(t.saturating_duration_since(self.base));
        }
        for p in &self.peers {
            if p.alive && p.joined && p.sent < self.scenario.messages {
                next = next.min(p.next_send.max(self.now));
            }
        }
        self.now = next.max(self.now + Duration::from_micros(1));
    }

    fn run(&mut self) {
        while self.now < RUN_FOR {
            self.step();
            self.advance();
        }
    }

    /// The guarantees, or what broke them.
    fn check(&self, mode: Mode) -> Result<(), String> {
        let crashed = self.scenario.crash.map(|(i, _)| i);
        let live: Vec<&SimPeer> = self.peers.iter().filter(|p| p.alive).collect();
        // In total order the member that started first delivers the whole sequence; the
        // others a suffix of it (checked below).
        let longest = *live.iter().max_by_key(|p| p.delivered.len()).unwrap();
        for p in &live {
            let mut per_author: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
            for (author, text) in &p.delivered {
                let k: usize = text
                    .rsplit(' ')
                    .next()
                    .and_then(|k| k.parse().ok())
                    .ok_or(format!("{}: invented {text:?}", p.name))?;
                if !text.starts_with(&format!("{author} ")) {
                    return Err(format!("{}: {text:?} delivered as {author}'s", p.name));
                }
                per_author.entry(author).or_default().push(k);
            }
            for (i, author) in self.peers.iter().enumerate() {
                // A member's stream starts where the handshake between the two put it
                // (the author sends only to members it has heard): from there on, every
                // message once, in order, with no gap; to the end for a live author.
                let got = per_author.remove(author.name.as_str()).unwrap_or_default();
                let first = got.first().copied().unwrap_or(0);
                if got.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(format!(
                        "{} delivered {}'s messages {got:?}: not each once, in order",
                        p.name, author.name
                    ));
                }
                if Some(i) == crashed || self.sequencer_died || evicted(author) {
                    // A crashed author's stream may have holes: if its handshake with this
                    // member never completed before it died, the member treated it as a
                    // peer of the report's protocol, whose gaps are skipped, not asked for.
                    // After a sequencer crash, what it delivered to some members only stays
                    // delivered by those only (checked below). An author evicted while
                    // alive starts afresh (see `evicted`).
                    continue;
                }
                let run: Vec<usize> = (first..first + got.len()).collect();
                if got != run {
                    return Err(format!(
                        "{} delivered {}'s messages {got:?}: not each once, in order, without gaps",
                        p.name, author.name
                    ));
                }
                if mode == Mode::Total && !std::ptr::eq(*p, longest) {
                    continue;
                }
                // To the end; and a member that delivered nothing of it must have started
                // after its end (counters start at 1: message k has counter k + 1).
                let started_after_end = got.is_empty()
                    && mode == Mode::Fifo
                    && p.member
                        .core()
                        .stream(GROUP, &author.name)
                        .is_some_and(|s| s.started && s.next > author.sent as u64);
                let complete = !got.is_empty() && first + got.len() == author.sent;
                if !(complete || started_after_end || author.sent == 0 && got.is_empty()) {
                    return Err(format!(
                        "{} delivered {}'s messages {first}..{} of the {} it sent (its stream: {:?})",
                        p.name,
                        author.name,
                        first + got.len(),
                        author.sent,
                        p.member.core().stream(GROUP, &author.name)
                    ));
                }
            }
            if let Some((author, _)) = per_author.into_iter().next() {
                return Err(format!("{} delivered from unknown author {author}", p.name));
            }
        }
        if self.sequencer_died {
            self.check_after_sequencer_crash(&live, crashed)?;
        }
        if mode == Mode::Total {
            // One sequence: each member delivers it from the place the sequencer gave it,
            // across sequencer crashes too (uniform agreement: what the dying sequencer
            // sent to some members only is recovered and ordered again for the others).
            for p in &live {
                if !longest.delivered.ends_with(&p.delivered) {
                    let offset = longest.delivered.len().saturating_sub(p.delivered.len());
                    let first = (0..p.delivered.len())
                        .find(|&i| longest.delivered.get(offset + i) != Some(&p.delivered[i]))
                        .unwrap_or(0);
                    let around = |d: &[(String, String)], from: usize| -> Vec<String> {
                        d.iter()
                            .skip(from.saturating_sub(2))
                            .take(5)
                            .map(|(_, t)| t.clone())
                            .collect()
                    };
                    return Err(format!(
                        "{} and {} delivered different sequences: from {}'s delivery {first}, {:?} against {:?}",
                        longest.name,
                        p.name,
                        p.name,
                        around(&p.delivered, first),
                        around(&longest.delivered, offset + first)
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Sim {
    /// After a sequencer crash, the documented limit: a message the old sequencer sent to
    /// some members only stays delivered by those only. What must still hold: the members
    /// agree on the order of every two messages both delivered, and every message of a live
    /// author is delivered by some live member (nothing is lost by all).
    fn check_after_sequencer_crash(
        &self,
        live: &[&SimPeer],
        crashed: Option<usize>,
    ) -> Result<(), String> {
        for (a, p) in live.iter().enumerate() {
            let place: BTreeMap<&(String, String), usize> = p
                .delivered
                .iter()
                .enumerate()
                .map(|(i, m)| (m, i))
                .collect();
            for q in &live[a + 1..] {
                let order: Vec<(usize, usize)> = q
                    .delivered
                    .iter()
                    .enumerate()
                    .filter_map(|(j, m)| place.get(m).map(|&i| (i, j)))
                    .collect();
                if let Some(w) = order.windows(2).find(|w| w[0].0 > w[1].0) {
                    let show = |who: &SimPeer, k: usize| {
                        format!("{:?} at {:?}", who.delivered[k], who.delivered_at[k])
                    };
                    return Err(format!(
                        "{} and {} delivered common messages in different orders: {} has {} then {}; {} has {} then {}",
                        p.name,
                        q.name,
                        q.name,
                        show(q, w[0].1),
                        show(q, w[1].1),
                        p.name,
                        show(p, w[1].0),
                        show(p, w[0].0)
                    ));
                }
            }
        }
        for (i, author) in self.peers.iter().enumerate() {
            if Some(i) == crashed || evicted(author) {
                continue;
            }
            for k in 0..author.sent {
                let m = (author.name.clone(), format!("{} {k}", author.name));
                if !live.iter().any(|p| p.delivered.contains(&m)) {
                    return Err(format!(
                        "{}'s message {k} was delivered by nobody",
                        author.name
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Whether the tracker evicted `p` at some point though it was alive (its heartbeats and
/// its answers to the probes were all lost): the members dropped what they had not
/// delivered of its stream, and it greeted them afresh — a hole, by design.
fn evicted(p: &SimPeer) -> bool {
    p.member.core().traffic().times_evicted > 0
}

fn mode_of(name: &str) -> Mode {
    match name {
        "total" => Mode::Total,
        _ => Mode::Fifo,
    }
}

/// Runs one seed; returns how many datagrams went to the multicast group.
fn run_seed(seed: u64, mode: Mode, faults: Faults) -> Result<u64, String> {
    let mut sim = Sim::new(seed, mode, faults);
    sim.run();
    sim.check(mode).map(|()| sim.to_group).map_err(|e| {
        let m = if mode == Mode::Total { "total" } else { "fifo" };
        format!(
            "seed {seed} ({m}): {e}\n  scenario: {:?}\n  replay: SIM_SEED={seed} SIM_MODE={m}{} cargo test --test member_simulation replay -- --nocapture",
            sim.scenario,
            if faults == Faults::All { " SIM_FAULTS=all" } else { "" }
        )
    })
}

fn many(mode: Mode, faults: Faults) {
    let seeds: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let (passed, failures): (Vec<_>, Vec<_>) = (0..seeds)
        .map(|seed| run_seed(seed, mode, faults))
        .partition(Result::is_ok);
    let failures: Vec<String> = failures.into_iter().filter_map(Result::err).collect();
    // About half the scenarios have the members on a multicast group: it must be used.
    let multicast_runs = passed
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|n| *n > 0))
        .count();
    assert!(
        seeds < 20 || multicast_runs as u64 >= seeds / 10,
        "only {multicast_runs} of {seeds} seeds sent anything to the multicast group"
    );
    if std::env::var_os("SIM_ALL").is_some() {
        for f in &failures {
            let mut lines = f.lines();
            println!("{}", lines.next().unwrap_or_default());
            println!("{}", lines.next().unwrap_or_default());
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds failed; the first:\n{}",
        failures.len(),
        failures[0]
    );
}

#[test]
fn whole_fifo_members_deliver_everything_once_in_order_under_loss_and_a_crash() {
    many(Mode::Fifo, Faults::Known);
}

#[test]
fn whole_total_order_members_deliver_one_sequence_under_loss_and_a_crash() {
    many(Mode::Total, Faults::Known);
}

#[test]
#[ignore = "known limits of the sequencer takeover (see Faults::All): fails on a few seeds in a thousand"]
fn whole_total_order_members_across_sequencer_crashes_at_any_time() {
    many(Mode::Total, Faults::All);
}

#[test]
fn replay() {
    let Ok(seed) = std::env::var("SIM_SEED") else {
        return;
    };
    let mode = mode_of(&std::env::var("SIM_MODE").unwrap_or_default());
    let seed: u64 = seed.parse().unwrap();
    let faults = match std::env::var("SIM_FAULTS").as_deref() {
        Ok("all") => Faults::All,
        _ => Faults::Known,
    };
    let mut sim = Sim::new(seed, mode, faults);
    println!("scenario: {:?}", sim.scenario);
    sim.run();
    for p in &sim.peers {
        let mut by: BTreeMap<&str, usize> = BTreeMap::new();
        for (a, _) in &p.delivered {
            *by.entry(a).or_default() += 1;
        }
        println!(
            "{} (alive {}): sent {}, heard {} members, delivered {by:?}; {:?}",
            p.name,
            p.alive,
            p.sent,
            p.member.core().members_heard(GROUP),
            p.member.core().traffic()
        );
        println!("  ordering: {:?}", p.member.core().ordering_counters());
        println!("  stream: {:?}", p.member.core().stream(GROUP, ""));
        if sim.trace {
            let texts: Vec<&str> = p.delivered.iter().map(|(_, t)| t.as_str()).collect();
            println!("  delivered: {texts:?}");
        }
    }
    if let Some(seq) = &sim.sequencer {
        println!("sequencer: {:?}; {:?}", seq.traffic(), seq.counters());
    }
    if let Err(e) = sim.check(mode) {
        panic!("{e}");
    }
}
