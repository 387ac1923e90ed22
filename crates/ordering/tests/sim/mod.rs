//! A deterministic simulation of a group: peers and a sequencer built from the real cores,
//! joined by an in-memory network whose faults (loss, duplication, delay and so reordering,
//! a crash) come from one seed. A scenario is plain data: print it, replay it.

#![allow(dead_code)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use ordering::{
    Config, FifoReceiver, FifoSender, Output, Sequenced, Sequencer, Start, TotalOrderReceiver,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub const GROUP: &str = "g";
pub const SEQUENCER: &str = "sequencer";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Fifo,
    Total,
}

/// The fault model, as data.
#[derive(Debug, Clone, PartialEq)]
pub struct Faults {
    /// Chance that any one datagram is lost.
    pub loss: f64,
    /// Chance that a datagram that is not lost arrives twice.
    pub duplication: f64,
    /// One-way delay, uniform in this range (µs): unequal delays reorder datagrams.
    pub delay_us: RangeInclusive<u64>,
    /// A peer that crashes (stops dead) at this time (µs), and is evicted by the others
    /// `eviction_after_us` later.
    pub crash: Option<(usize, u64)>,
    pub eviction_after_us: u64,
}

/// Everything that decides a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub seed: u64,
    pub mode: Mode,
    pub peers: usize,
    pub messages_per_peer: u64,
    /// Mean gap between one peer's sends (µs).
    pub send_gap_us: u64,
    pub window: u64,
    pub faults: Faults,
}

impl Scenario {
    /// The scenario a seed stands for.
    pub fn from_seed(seed: u64, mode: Mode) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let peers = rng.random_range(2..=5);
        let messages_per_peer = rng.random_range(1..=40);
        let max_delay = rng.random_range(50..=3000);
        let crash = rng
            .random_bool(0.3)
            .then(|| (rng.random_range(0..peers), rng.random_range(0..=20_000)));
        Self {
            seed,
            mode,
            peers,
            messages_per_peer,
            send_gap_us: rng.random_range(10..=1000),
            window: if rng.random_bool(0.3) { 16 } else { 4096 },
            faults: Faults {
                loss: rng.random_range(0.0..0.3),
                duplication: rng.random_range(0.0..0.1),
                delay_us: 20..=max_delay,
                crash,
                eviction_after_us: 100_000,
            },
        }
    }

    pub fn config(&self) -> Config {
        Config {
            window: self.window,
            // Enough announcements that losing every one of them is out of the question at
            // these loss rates; the property under test is recovery when loss is recoverable.
            digest_repeats: 24,
            ..Config::default()
        }
    }
}

type Msg = u64;

/// What travels between nodes. A Nack always concerns the receiving node's own stream.
#[derive(Debug, Clone)]
enum Packet {
    App {
        counter: u64,
        payload: Msg,
    },
    Seq {
        counter: u64,
        payload: Sequenced<Msg>,
    },
    Nack {
        ranges: Vec<RangeInclusive<u64>>,
    },
    Digest {
        highest: u64,
    },
    Unavailable {
        ranges: Vec<RangeInclusive<u64>>,
    },
}

#[derive(Debug)]
enum Event {
    Arrive {
        from: usize,
        to: usize,
        packet: Packet,
    },
    Send {
        peer: usize,
    },
    Evict {
        peer: usize,
    },
}

enum Role {
    FifoPeer {
        tx: FifoSender<Msg>,
        rx: FifoReceiver<Msg>,
    },
    TotalPeer {
        tx: FifoSender<Msg>,
        rx: TotalOrderReceiver<Sequenced<Msg>>,
    },
    Sequencer(Sequencer<Msg>),
}

/// One delivery as the application saw it: the author, the author's counter, the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub author: usize,
    pub author_counter: u64,
    pub payload: Msg,
    /// The sequence number in total order (0 in FIFO mode).
    pub seq: u64,
}

pub struct Outcome {
    pub scenario: Scenario,
    /// Per peer, what it delivered, in order.
    pub delivered: Vec<Vec<Seen>>,
    /// Per author, what it sent: counter → payload.
    pub sent: Vec<BTreeMap<u64, Msg>>,
    pub crashed: Option<usize>,
    pub max_held: usize,
    pub counters: Vec<ordering::Counters>,
    pub finished_at_us: u64,
}

pub struct Sim {
    scenario: Scenario,
    rng: ChaCha8Rng,
    t0: Instant,
    now_us: u64,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    events: HashMap<usize, Event>,
    next_event: usize,
    nodes: Vec<Role>,
    names: Vec<String>,
    dead: HashSet<usize>,
    evicted: HashSet<usize>,
    delivered: Vec<Vec<Seen>>,
    sent: Vec<BTreeMap<u64, Msg>>,
    to_send: Vec<u64>,
    max_held: usize,
    tie: u64,
}

impl Sim {
    pub fn new(scenario: Scenario) -> Self {
        let t0 = Instant::now();
        let config = scenario.config();
        let mut names: Vec<String> = (0..scenario.peers).map(|i| format!("p{i}")).collect();
        let mut nodes = Vec::new();
        for _ in 0..scenario.peers {
            let mut tx = FifoSender::new(config.clone());
            tx.open(GROUP);
            nodes.push(match scenario.mode {
                Mode::Fifo => {
                    let mut rx = FifoReceiver::new(config.clone());
                    for name in &names {
                        rx.add_sender(t0, GROUP, name, Start::At(1));
                    }
                    Role::FifoPeer { tx, rx }
                }
                Mode::Total => {
                    let mut rx = TotalOrderReceiver::new(config.clone(), SEQUENCER);
                    rx.join(t0, GROUP, Start::At(1));
                    Role::TotalPeer { tx, rx }
                }
            });
        }
        if scenario.mode == Mode::Total {
            let mut seq = Sequencer::new(config.clone());
            seq.open_group(GROUP);
            for name in &names {
                seq.add_author(t0, GROUP, name, Start::At(1));
            }
            nodes.push(Role::Sequencer(seq));
            names.push(SEQUENCER.into());
        }
        let peers = scenario.peers;
        let mut sim = Self {
            rng: ChaCha8Rng::seed_from_u64(scenario.seed ^ 0x5eed),
            t0,
            now_us: 0,
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            next_event: 0,
            nodes,
            names,
            dead: HashSet::new(),
            evicted: HashSet::new(),
            delivered: vec![Vec::new(); peers],
            sent: vec![BTreeMap::new(); peers],
            to_send: vec![scenario.messages_per_peer; peers],
            max_held: 0,
            tie: 0,
            scenario,
        };
        for peer in 0..peers {
            let at = sim.rng.random_range(0..=sim.scenario.send_gap_us);
            sim.schedule(at, Event::Send { peer });
        }
        if let Some((peer, at)) = sim.scenario.faults.crash {
            sim.schedule(
                at + sim.scenario.faults.eviction_after_us,
                Event::Evict { peer },
            );
        }
        sim
    }

    fn schedule(&mut self, at_us: u64, event: Event) {
        let id = self.next_event;
        self.next_event += 1;
        self.tie += 1;
        self.events.insert(id, event);
        self.queue.push(Reverse((at_us, self.tie, id)));
    }

    fn instant(&self, us: u64) -> Instant {
        self.t0 + Duration::from_micros(us)
    }

    fn us(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.t0).as_micros() as u64
    }

    fn node_of(&self, name: &str) -> usize {
        self.names
            .iter()
            .position(|n| n == name)
            .unwrap_or_else(|| panic!("unknown node name {name}"))
    }

    fn is_sequencer(&self, node: usize) -> bool {
        matches!(self.nodes[node], Role::Sequencer(_))
    }

    /// Puts a datagram on the network, where it may be lost, delayed or duplicated.
    fn transmit(&mut self, from: usize, to: usize, packet: Packet) {
        let faults = self.scenario.faults.clone();
        if self.rng.random_bool(faults.loss) {
            return;
        }
        let copies = if self.rng.random_bool(faults.duplication) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = self.rng.random_range(faults.delay_us.clone());
            self.schedule(
                self.now_us + delay,
                Event::Arrive {
                    from,
                    to,
                    packet: packet.clone(),
                },
            );
        }
    }

    /// Everyone a node multicasts to: in FIFO every peer it has not seen evicted (itself
    /// included); in total order a peer sends to the sequencer, the sequencer to every peer.
    fn audience(&self, node: usize) -> Vec<usize> {
        let peers = (0..self.scenario.peers).filter(|p| !self.evicted.contains(p));
        match (&self.nodes[node], self.scenario.mode) {
            (Role::FifoPeer { .. }, _) => peers.collect(),
            (Role::TotalPeer { .. }, _) => vec![self.scenario.peers],
            (Role::Sequencer(_), _) => peers.collect(),
        }
    }

    /// Drains a node's outputs into deliveries and the network.
    fn drain(&mut self, node: usize) {
        loop {
            let out = match &mut self.nodes[node] {
                Role::FifoPeer { tx, rx } => rx
                    .poll_output()
                    .map(|o| o.map_payload(Wire::App))
                    .or_else(|| tx.poll_output().map(|o| o.map_payload(Wire::App))),
                Role::TotalPeer { tx, rx } => rx
                    .poll_output()
                    .map(|o| o.map_payload(Wire::Seq))
                    .or_else(|| tx.poll_output().map(|o| o.map_payload(Wire::App))),
                Role::Sequencer(seq) => seq.poll_output().map(|o| o.map_payload(Wire::Seq)),
            };
            let Some(out) = out else { break };
            self.route(node, out);
        }
        let held = match &self.nodes[node] {
            Role::FifoPeer { rx, .. } => rx.held(),
            Role::TotalPeer { rx, .. } => rx.held(),
            Role::Sequencer(seq) => seq.held().0,
        };
        let streams = match &self.nodes[node] {
            Role::FifoPeer { .. } | Role::Sequencer(_) => self.scenario.peers,
            Role::TotalPeer { .. } => 1,
        };
        assert!(
            held as u64 <= self.scenario.window * streams as u64,
            "node {node} holds {held} messages, over {streams} streams of window {}",
            self.scenario.window
        );
        self.max_held = self.max_held.max(held);
    }

    fn route(&mut self, node: usize, out: Output<Wire>) {
        let packet_of = |counter, payload: Wire| match payload {
            Wire::App(payload) => Packet::App { counter, payload },
            Wire::Seq(payload) => Packet::Seq { counter, payload },
        };
        match out {
            Output::Deliver(d) => {
                let seen = match d.payload {
                    Wire::App(payload) => Seen {
                        author: self.node_of(&d.sender),
                        author_counter: d.counter,
                        payload,
                        seq: 0,
                    },
                    Wire::Seq(s) => Seen {
                        author: self.node_of(&s.origin),
                        author_counter: s.origin_counter,
                        payload: s.payload,
                        seq: d.counter,
                    },
                };
                self.delivered[node].push(seen);
            }
            Output::Multicast {
                counter, payload, ..
            } => {
                let packet = packet_of(counter, payload);
                for to in self.audience(node) {
                    self.transmit(node, to, packet.clone());
                }
            }
            Output::Retransmit {
                to,
                counter,
                payload,
                ..
            } => {
                let to = self.node_of(&to);
                self.transmit(node, to, packet_of(counter, payload));
            }
            Output::Nack { to, ranges, .. } => {
                let to = self.node_of(&to);
                self.transmit(node, to, Packet::Nack { ranges });
            }
            Output::Digest { highest, .. } => {
                for to in self.audience(node) {
                    self.transmit(node, to, Packet::Digest { highest });
                }
            }
            Output::Unavailable { to, ranges, .. } => {
                let to = self.node_of(&to);
                self.transmit(node, to, Packet::Unavailable { ranges });
            }
        }
    }

    fn arrive(&mut self, from: usize, to: usize, packet: Packet) {
        if self.dead.contains(&to) {
            return;
        }
        let now = self.instant(self.now_us);
        let from_name = self.names[from].clone();
        let from_sequencer = self.is_sequencer(from);
        // Inputs from unknown or evicted streams are refused by the cores with an error,
        // which is exactly what a daemon logs and counts; the simulation just ignores them.
        let _ = match (&mut self.nodes[to], packet) {
            (Role::FifoPeer { rx, .. }, Packet::App { counter, payload }) => {
                rx.handle_message(now, GROUP, &from_name, counter, payload)
            }
            (Role::FifoPeer { rx, .. }, Packet::Digest { highest }) => {
                rx.handle_digest(now, GROUP, &from_name, highest)
            }
            (Role::FifoPeer { rx, .. }, Packet::Unavailable { ranges }) => {
                rx.handle_unavailable(now, GROUP, &from_name, &ranges)
            }
            (Role::FifoPeer { tx, .. } | Role::TotalPeer { tx, .. }, Packet::Nack { ranges }) => {
                tx.handle_nack(GROUP, &from_name, &ranges)
            }
            (Role::TotalPeer { rx, .. }, Packet::Seq { counter, payload }) => {
                rx.handle_sequenced(now, GROUP, counter, payload)
            }
            (Role::TotalPeer { rx, .. }, Packet::Digest { highest }) if from_sequencer => {
                rx.handle_digest(now, GROUP, highest)
            }
            (Role::TotalPeer { rx, .. }, Packet::Unavailable { ranges }) if from_sequencer => {
                rx.handle_unavailable(now, GROUP, &ranges)
            }
            (Role::Sequencer(seq), Packet::App { counter, payload }) => {
                seq.handle_message(now, GROUP, &from_name, counter, payload)
            }
            (Role::Sequencer(seq), Packet::Digest { highest }) => {
                seq.handle_digest(now, GROUP, &from_name, highest)
            }
            (Role::Sequencer(seq), Packet::Unavailable { ranges }) => {
                seq.handle_unavailable(now, GROUP, &from_name, &ranges)
            }
            (Role::Sequencer(seq), Packet::Nack { ranges }) => {
                seq.handle_nack(GROUP, &from_name, &ranges)
            }
            (_, packet) => panic!("node {to} cannot take {packet:?} from {from}"),
        };
        self.drain(to);
    }

    fn send(&mut self, peer: usize) {
        if self.dead.contains(&peer) || self.to_send[peer] == 0 {
            return;
        }
        self.to_send[peer] -= 1;
        let now = self.instant(self.now_us);
        let payload = self.rng.random::<u64>();
        let tx = match &mut self.nodes[peer] {
            Role::FifoPeer { tx, .. } | Role::TotalPeer { tx, .. } => tx,
            Role::Sequencer(_) => unreachable!("only peers send"),
        };
        let counter = tx.send(now, GROUP, payload).expect("group open");
        self.sent[peer].insert(counter, payload);
        self.drain(peer);
        if self.to_send[peer] > 0 {
            let gap = self.rng.random_range(0..=2 * self.scenario.send_gap_us);
            self.schedule(self.now_us + gap, Event::Send { peer });
        }
    }

    fn evict(&mut self, peer: usize) {
        self.evicted.insert(peer);
        let name = self.names[peer].clone();
        for node in 0..self.nodes.len() {
            if self.dead.contains(&node) || node == peer {
                continue;
            }
            match &mut self.nodes[node] {
                Role::FifoPeer { rx, .. } => {
                    let _ = rx.handle_evicted(GROUP, &name);
                }
                Role::Sequencer(seq) => {
                    let _ = seq.handle_evicted(GROUP, &name);
                }
                Role::TotalPeer { .. } => {}
            }
            self.drain(node);
        }
    }

    fn next_timer(&self) -> Option<(u64, usize)> {
        (0..self.nodes.len())
            .filter(|n| !self.dead.contains(n))
            .filter_map(|n| {
                let at = match &self.nodes[n] {
                    Role::FifoPeer { tx, rx } => min(tx.poll_timeout(), rx.poll_timeout()),
                    Role::TotalPeer { tx, rx } => min(tx.poll_timeout(), rx.poll_timeout()),
                    Role::Sequencer(seq) => seq.poll_timeout(),
                }?;
                Some((self.us(at), n))
            })
            .min()
    }

    /// Runs until nothing is left to happen (or a time limit, which is a failure of
    /// liveness), then returns what every peer delivered.
    pub fn run(mut self) -> Outcome {
        const LIMIT_US: u64 = 120_000_000;
        loop {
            let event_at = self.queue.peek().map(|Reverse((at, _, _))| *at);
            let timer = self.next_timer();
            let next = match (event_at, timer) {
                (None, None) => break,
                (Some(e), Some((t, _))) => e.min(t),
                (Some(e), None) => e,
                (None, Some((t, _))) => t,
            };
            assert!(
                next <= LIMIT_US,
                "still busy after {LIMIT_US} µs of simulated time"
            );
            self.now_us = self.now_us.max(next);
            if let Some((at, node)) = timer
                && at <= next
                && event_at.is_none_or(|e| at < e)
            {
                let now = self.instant(self.now_us);
                match &mut self.nodes[node] {
                    Role::FifoPeer { tx, rx } => {
                        tx.handle_timeout(now);
                        rx.handle_timeout(now);
                    }
                    Role::TotalPeer { tx, rx } => {
                        tx.handle_timeout(now);
                        rx.handle_timeout(now);
                    }
                    Role::Sequencer(seq) => seq.handle_timeout(now),
                }
                self.drain(node);
                continue;
            }
            let Reverse((_, _, id)) = self.queue.pop().expect("peeked");
            let event = self.events.remove(&id).expect("scheduled");
            if let Some((peer, crash_at)) = self.scenario.faults.crash
                && self.now_us >= crash_at
            {
                self.dead.insert(peer);
            }
            match event {
                Event::Arrive { from, to, packet } => self.arrive(from, to, packet),
                Event::Send { peer } => self.send(peer),
                Event::Evict { peer } => self.evict(peer),
            }
        }
        let counters = self
            .nodes
            .iter()
            .map(|n| match n {
                Role::FifoPeer { tx, rx } => {
                    let mut c = rx.counters();
                    c += tx.counters();
                    c
                }
                Role::TotalPeer { tx, rx } => {
                    let mut c = rx.counters();
                    c += tx.counters();
                    c
                }
                Role::Sequencer(seq) => seq.counters(),
            })
            .collect();
        Outcome {
            crashed: self.scenario.faults.crash.map(|(p, _)| p),
            scenario: self.scenario,
            delivered: self.delivered,
            sent: self.sent,
            max_held: self.max_held,
            counters,
            finished_at_us: self.now_us,
        }
    }
}

/// Payloads of both kinds of stream, so one routing function serves every node.
#[derive(Debug, Clone)]
enum Wire {
    App(Msg),
    Seq(Sequenced<Msg>),
}

fn min(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Outcome {
    /// Checks every guarantee; returns what broke.
    pub fn check(&self) -> Result<(), String> {
        let alive: Vec<usize> = (0..self.scenario.peers)
            .filter(|p| Some(*p) != self.crashed)
            .collect();
        for &peer in &alive {
            let seen = &self.delivered[peer];
            // FIFO per author, at most once, nothing invented.
            let mut last: HashMap<usize, u64> = HashMap::new();
            for s in seen {
                let sent = self.sent[s.author].get(&s.author_counter);
                if sent != Some(&s.payload) {
                    return Err(format!(
                        "peer {peer} delivered {s:?}, but author {} sent {sent:?} under that counter",
                        s.author
                    ));
                }
                if let Some(prev) = last.insert(s.author, s.author_counter)
                    && prev >= s.author_counter
                {
                    return Err(format!(
                        "peer {peer} delivered counter {} of author {} after {prev}",
                        s.author_counter, s.author
                    ));
                }
            }
            // Everything of a live author; a prefix of a crashed one.
            for author in 0..self.scenario.peers {
                let got: Vec<u64> = seen
                    .iter()
                    .filter(|s| s.author == author)
                    .map(|s| s.author_counter)
                    .collect();
                let expected: Vec<u64> = self.sent[author].keys().copied().collect();
                if Some(author) == self.crashed {
                    if !expected.starts_with(&got) {
                        return Err(format!(
                            "peer {peer} delivered {got:?} of crashed author {author}, not a prefix of {expected:?}"
                        ));
                    }
                } else if got != expected {
                    return Err(format!(
                        "peer {peer} delivered {got:?} of author {author}, who sent {expected:?}"
                    ));
                }
            }
            if self.scenario.mode == Mode::Total {
                let seqs: Vec<u64> = seen.iter().map(|s| s.seq).collect();
                if seqs != (1..=seen.len() as u64).collect::<Vec<_>>() {
                    return Err(format!("peer {peer} delivered sequence numbers {seqs:?}"));
                }
            }
        }
        if self.scenario.mode == Mode::Total
            && let Some((&first, rest)) = alive.split_first()
        {
            for &peer in rest {
                if self.delivered[peer] != self.delivered[first] {
                    return Err(format!(
                        "total order broken: peer {first} delivered {:?}, peer {peer} delivered {:?}",
                        self.delivered[first], self.delivered[peer]
                    ));
                }
            }
        }
        Ok(())
    }
}
