//! The sequencer's protocol core, without I/O: who is in each group (from their Hello and
//! Bye, and the tracker's eviction notices), the handshake answers that tell a new member
//! where the sequence starts, and the translation between datagrams and the ordering core's
//! [`Sequencer`].

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Instant;

use ordering::{Output as Order, Sequenced, Sequencer, Start};
use peer::{MemberInfo, Members, SEQUENCER};
use proto::{CounterRange, Datagram, DatagramType, PROTOCOL_VERSION};

/// A message as an author submitted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    /// The text.
    pub text: Arc<str>,
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
    /// Dropped: not a valid datagram.
    pub malformed: u64,
    /// Dropped: claimed a member's name from another address.
    pub spoofed: u64,
    /// Dropped: from a member that never said Hello.
    pub unknown: u64,
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Destination.
    pub to: SocketAddr,
    /// The encoded datagram (shared by all destinations of one multicast).
    pub bytes: Arc<[u8]>,
}

/// The sequencer of every group.
#[derive(Debug)]
pub struct SequencerNode {
    addr: SocketAddr,
    tracker: Option<SocketAddr>,
    seq: Sequencer<Submitted>,
    groups: HashMap<String, Members>,
    outputs: VecDeque<Transmit>,
    traffic: NodeTraffic,
}

fn ranges_of(ranges: &[CounterRange]) -> Vec<RangeInclusive<u64>> {
    ranges.iter().map(|r| r.first..=r.last).collect()
}

impl SequencerNode {
    /// A sequencer receiving at `addr`; Byes on another member's behalf are believed only
    /// from `tracker`.
    pub fn new(addr: SocketAddr, tracker: Option<SocketAddr>, config: ordering::Config) -> Self {
        Self {
            addr,
            tracker,
            seq: Sequencer::new(config),
            groups: HashMap::new(),
            outputs: VecDeque::new(),
            traffic: NodeTraffic::default(),
        }
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
        let d = match Datagram::decode(bytes) {
            Ok(d) => d,
            Err(e) => {
                self.traffic.malformed += 1;
                log::debug!("dropped a datagram from {from}: {e}");
                return;
            }
        };
        if d.kind == DatagramType::Bye && Some(from) == self.tracker {
            if let Some(members) = self.groups.get_mut(&d.group)
                && members.remove(&d.username).is_some()
            {
                log::info!("{} was evicted from {}", d.username, d.group);
                let _ = self.seq.handle_evicted(&d.group, &d.username);
            }
            return;
        }
        if d.kind == DatagramType::Hello {
            let claimed = d
                .src_ip
                .parse::<IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, d.src_port));
            if claimed != Some(from) {
                self.traffic.spoofed += 1;
                return;
            }
            self.on_hello(now, from, &d);
            self.pump(now);
            return;
        }
        let members = self.groups.get(&d.group);
        if !members.is_some_and(|m| m.is_at(&d.username, from)) {
            if members.is_some_and(|m| m.get(&d.username).is_some()) {
                self.traffic.spoofed += 1;
            } else {
                self.traffic.unknown += 1;
                log::debug!(
                    "dropped a datagram from {:?}, who never said Hello",
                    d.username
                );
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
                    members.remove(author);
                }
                self.seq.handle_bye(now, group, author, d.final_counter)
            }
            DatagramType::Hello | DatagramType::HelloAck => Ok(()),
        };
        self.pump(now);
    }

    fn on_hello(&mut self, now: Instant, from: SocketAddr, d: &Datagram) {
        let (group, author) = (d.group.as_str(), d.username.as_str());
        let next = self.seq.open_group(group);
        let members = self.groups.entry(group.to_owned()).or_default();
        let previous = members
            .get(author)
            .filter(|m| m.addr == from && m.start == d.start)
            .cloned();
        let repeated = previous.is_some();
        // A repeated Hello (its first answer was lost or slow) gets the same start as the
        // first: a later one would make the member skip messages already sent to it.
        let start_told = previous.and_then(|m| m.our_start).unwrap_or(next);
        members.insert(
            author,
            MemberInfo {
                addr: from,
                proto: d.proto,
                start: d.start,
                heard: true,
                our_start: Some(start_told),
            },
        );
        log::debug!(
            "Hello from {author} in {group} (its start {:?}): told the sequence starts at {start_told}{}",
            d.start,
            if repeated { ", again" } else { "" }
        );
        if !repeated {
            let start = match (d.proto, d.start) {
                (Some(_), Some(s)) => Start::At(s),
                _ => Start::Legacy,
            };
            log::info!("{author} joined {group}");
            self.seq.add_author(now, group, author, start);
        }
        if d.proto.is_some() {
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
            self.send(from, encode(&ack));
        }
    }

    /// Runs the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.seq.handle_timeout(now);
        self.pump(now);
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.seq.poll_timeout()
    }

    /// The next datagram to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.outputs.pop_front()
    }

    fn send(&mut self, to: SocketAddr, bytes: Arc<[u8]>) {
        self.traffic.datagrams_sent += 1;
        self.outputs.push_back(Transmit { to, bytes });
    }

    fn addr_of(&self, group: &str, name: &str, newer_only: bool) -> Option<SocketAddr> {
        let m = self.groups.get(group)?.get(name)?;
        (!newer_only || m.proto.is_some()).then_some(m.addr)
    }

    fn everyone(&self, group: &str, newer_only: bool) -> Vec<SocketAddr> {
        self.groups.get(group).map_or_else(Vec::new, |members| {
            members
                .iter()
                .filter(|(_, m)| !newer_only || m.proto.is_some())
                .map(|(_, m)| m.addr)
                .collect()
        })
    }

    fn sequenced(&self, group: &str, seq: u64, s: &Sequenced<Submitted>) -> Arc<[u8]> {
        let mut d = Datagram::new(
            DatagramType::Application,
            group,
            SEQUENCER,
            &*s.payload.text,
            self.addr,
            seq,
            &*s.origin,
        );
        d.sent_at_us = s.payload.sent_at_us;
        encode(&d)
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
                    let bytes = self.sequenced(&group, counter, &payload);
                    for to in self.everyone(&group, false) {
                        self.send(to, bytes.clone());
                    }
                }
                Order::Retransmit {
                    to,
                    group,
                    counter,
                    payload,
                } => {
                    if let Some(addr) = self.addr_of(&group, &to, true) {
                        let bytes = self.sequenced(&group, counter, &payload);
                        self.send(addr, bytes);
                    }
                }
                Order::Nack { to, group, ranges } => {
                    if let Some(addr) = self.addr_of(&group, &to, true) {
                        let first = ranges.first().map_or(0, |r| *r.start());
                        let bytes = self.control(DatagramType::Nack, &group, first, &to, &ranges);
                        self.send(addr, bytes);
                    }
                }
                Order::Digest { group, highest } => {
                    let bytes = self.control(DatagramType::Digest, &group, highest, SEQUENCER, &[]);
                    for to in self.everyone(&group, true) {
                        self.send(to, bytes.clone());
                    }
                }
                Order::Unavailable { to, group, ranges } => {
                    if let Some(addr) = self.addr_of(&group, &to, true) {
                        let bytes =
                            self.control(DatagramType::Unavailable, &group, 0, SEQUENCER, &ranges);
                        self.send(addr, bytes);
                    }
                }
                Order::Deliver(_) => {}
            }
        }
    }
}

fn encode(d: &Datagram) -> Arc<[u8]> {
    let mut out = Vec::with_capacity(192);
    d.encode_into(&mut out);
    Arc::from(out)
}
