//! A sequencer crashes and a new one takes over, on the sans-IO cores: members report total
//! order unavailable, deliver nothing out of order meanwhile, and resume with the new
//! sequencer without delivering anything twice or in another order than before.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use member::{CoreConfig, Event, Mode, Output, PeerCore, Transmit};
use proto::{Datagram, DatagramType, Member};
use sequencer::{NodeOutput, SequencerNode};

const TRACKER: u16 = 5000;
const SEQ: u16 = 5001;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn member(name: &str, port: u16) -> Member {
    Member {
        ip: "127.0.0.1".into(),
        port,
        username: name.into(),
        uid: name.into(),
    }
}

/// Three total-order members and a sequencer that can be killed and replaced, with a filter
/// that loses chosen datagrams.
struct Net {
    now: Instant,
    peers: Vec<PeerCore>,
    sequencer: Option<SequencerNode>,
    delivered: Vec<Vec<(String, String)>>,
    events: Vec<Vec<Event>>,
    /// Sequenced copies to this member are lost while set.
    deaf: Option<SocketAddr>,
}

impl Net {
    fn new() -> Self {
        let now = Instant::now();
        let names = ["ann", "bob", "cat"];
        let peers = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                PeerCore::new(CoreConfig {
                    username: (*n).into(),
                    addr: addr(6000 + i as u16),
                    tracker: addr(TRACKER),
                    mode: Mode::Total,
                    ordering: ordering::Config::default(),
                    seals: Vec::new(),
                    multicast: None,
                })
            })
            .collect();
        let mut net = Self {
            now,
            peers,
            sequencer: Some(SequencerNode::new(
                addr(SEQ),
                Some(addr(TRACKER)),
                ordering::Config::default(),
                1,
            )),
            delivered: vec![Vec::new(); 3],
            events: vec![Vec::new(); 3],
            deaf: None,
        };
        let mut list: Vec<Member> = Vec::new();
        for (i, n) in names.iter().enumerate() {
            list.push(member(n, 6000 + i as u16));
            let mut with_seq = list.clone();
            with_seq.push(member("sequencer", SEQ));
            let now = net.now;
            net.peers[i].join(now, "g", &with_seq);
            net.run_for(Duration::from_millis(20));
        }
        net
    }

    fn deliver(&mut self, from: SocketAddr, to: SocketAddr, bytes: &[u8]) {
        let now = self.now;
        if to == addr(SEQ) {
            if let Some(s) = self.sequencer.as_mut() {
                s.handle_datagram(now, from, bytes);
            }
        } else if let Some(p) = self.peers.iter_mut().find(|p| p.addr() == to) {
            p.handle_datagram(now, from, bytes);
        }
    }

    /// Moves every datagram until none is in flight.
    fn settle(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..self.peers.len() {
                let from = self.peers[i].addr();
                while let Some(out) = self.peers[i].poll_output() {
                    moved = true;
                    match out {
                        Output::Transmit(Transmit { to, bytes, .. }) => {
                            self.deliver(from, to, &bytes)
                        }
                        Output::Deliver(m) => {
                            self.delivered[i].push((m.author.to_string(), m.text().into_owned()))
                        }
                        Output::Event(e) => self.events[i].push(e),
                        Output::Tracker(t) => panic!("a bare core asked the tracker: {t:?}"),
                    }
                }
            }
            while let Some(output) = self.sequencer.as_mut().and_then(|s| s.poll_output()) {
                let t = match output {
                    NodeOutput::Transmit(t) => t,
                    NodeOutput::ListMembers { group } => {
                        // The tracker's answer: every member.
                        let list: Vec<Member> = (0..self.peers.len())
                            .map(|i| member(["ann", "bob", "cat"][i], 6000 + i as u16))
                            .collect();
                        let now = self.now;
                        if let Some(s) = self.sequencer.as_mut() {
                            s.handle_members(now, &group, &list);
                        }
                        continue;
                    }
                    NodeOutput::Evicted | NodeOutput::TookOver { .. } => continue,
                };
                moved = true;
                let sequenced = proto::bundle::decode_single(&t.bytes)
                    .is_ok_and(|d| d.kind == DatagramType::Application);
                if sequenced && Some(t.to) == self.deaf {
                    continue;
                }
                self.deliver(addr(SEQ), t.to, &t.bytes);
            }
            if !moved {
                return;
            }
        }
    }

    /// Advances time in 5 ms steps, running every timer.
    fn run_for(&mut self, span: Duration) {
        let end = self.now + span;
        while self.now < end {
            self.settle();
            self.now += Duration::from_millis(5);
            let now = self.now;
            for p in &mut self.peers {
                p.handle_timeout(now);
            }
            if let Some(s) = self.sequencer.as_mut() {
                s.handle_timeout(now);
            }
        }
        self.settle();
    }

    fn send(&mut self, who: usize, text: &str) {
        let now = self.now;
        self.peers[who]
            .send(now, "g", text.as_bytes(), 0)
            .expect("joined");
        self.settle();
    }

    /// The tracker's Bye on the sequencer's behalf, as after its eviction.
    fn evict_sequencer(&mut self) {
        let bye = Datagram::new(
            DatagramType::Bye,
            "g",
            "sequencer",
            "",
            addr(SEQ),
            0,
            "sequencer",
        );
        let bytes = bye.encode(4096).expect("fits");
        let now = self.now;
        for p in &mut self.peers {
            p.handle_datagram(now, addr(TRACKER), &bytes);
        }
        self.settle();
    }
}

/// Relative order of what both delivered is the same, and neither delivered anything twice.
fn assert_consistent(a: &[(String, String)], b: &[(String, String)]) {
    for list in [a, b] {
        let unique: HashSet<_> = list.iter().collect();
        assert_eq!(unique.len(), list.len(), "delivered twice: {list:?}");
    }
    let common: HashSet<_> = a.iter().filter(|m| b.contains(m)).collect();
    let a_order: Vec<_> = a.iter().filter(|m| common.contains(m)).collect();
    let b_order: Vec<_> = b.iter().filter(|m| common.contains(m)).collect();
    assert_eq!(a_order, b_order, "members disagree on the order");
}

#[test]
fn a_new_sequencer_gives_every_member_what_the_old_one_sent_to_some_only() {
    let mut net = Net::new();
    assert!(net.peers.iter().all(|p| p.sequencer_ready("g")));
    for round in 0..3 {
        for who in 0..3 {
            net.send(who, &format!("m{who}-{round}"));
        }
    }
    net.run_for(Duration::from_millis(50));
    assert!(net.delivered.iter().all(|d| d.len() == 9));

    // ann's next two reach the sequencer, which multicasts them; cat never gets them, and
    // the sequencer dies before it can repair that.
    net.deaf = Some(net.peers[2].addr());
    net.send(0, "late-1");
    net.send(0, "late-2");
    net.sequencer = None;
    net.deaf = None;
    // Sent while no sequencer listens: kept, not delivered.
    net.send(1, "while-down-1");
    net.send(2, "while-down-2");
    net.run_for(Duration::from_millis(200));
    assert_eq!(net.delivered[0].len(), 11);
    assert_eq!(net.delivered[2].len(), 9);

    net.evict_sequencer();
    for events in &net.events {
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::SequencerLost { group, .. } if group == "g")),
            "every member reports total order unavailable: {events:?}"
        );
    }
    net.run_for(Duration::from_millis(300));
    assert_eq!(
        net.delivered[1].len(),
        11,
        "nothing delivered without a sequencer"
    );

    net.sequencer = Some(SequencerNode::new(
        addr(SEQ),
        Some(addr(TRACKER)),
        ordering::Config::default(),
        2,
    ));
    net.run_for(Duration::from_millis(1500));
    net.send(2, "after");
    net.run_for(Duration::from_millis(200));

    for (i, events) in net.events.iter().enumerate() {
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::SequencerBack { new: true, .. })),
            "member {i} resumes with the new sequencer: {events:?}"
        );
    }
    let expected_everywhere = ["while-down-1", "while-down-2", "after"];
    for d in &net.delivered {
        for text in expected_everywhere {
            assert!(
                d.iter().any(|(_, t)| t == text),
                "{text} delivered by all: {d:?}"
            );
        }
    }
    // Uniform agreement: what only ann and bob delivered from the old sequencer (late-1,
    // late-2) is recovered from ann by the new one and ordered again first, in its old
    // place: all three end with one sequence, nothing twice.
    assert_eq!(net.delivered[0], net.delivered[1], "ann and bob agree");
    assert_eq!(net.delivered[0], net.delivered[2], "cat agrees with them");
    for d in &net.delivered {
        assert_consistent(d, d);
    }
    assert_eq!(net.delivered[2].len(), 14);
    let late: Vec<usize> = (0..net.delivered[2].len())
        .filter(|&i| net.delivered[2][i].1.starts_with("late"))
        .collect();
    assert_eq!(
        late,
        [9, 10],
        "in their old place, before what was sent while down"
    );
}
