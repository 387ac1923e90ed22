use super::flow::{FLOW_PROBE, FLOW_STALL};
use super::groups::LINGER;
use super::*;
use proto::Member;
use std::collections::BTreeMap;

const TRACKER: &str = "127.0.0.1:5000";

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn core(name: &str, port: u16, mode: Mode) -> PeerCore {
    sealed_core(name, port, mode, Vec::new())
}

fn sealed_core(name: &str, port: u16, mode: Mode, seals: Vec<(String, GroupKey)>) -> PeerCore {
    PeerCore::new(CoreConfig {
        username: name.into(),
        addr: addr(port),
        tracker: TRACKER.parse().expect("addr"),
        mode,
        ordering: ordering::Config::default(),
        seals,
        multicast: None,
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
    /// What each sent as it went on the wire (sealed, in a sealed group).
    wire: Vec<Vec<(SocketAddr, Vec<u8>)>>,
}

impl Net {
    fn new(cores: Vec<PeerCore>) -> Self {
        let n = cores.len();
        Self {
            cores,
            delivered: vec![Vec::new(); n],
            events: vec![Vec::new(); n],
            sent: vec![Vec::new(); n],
            wire: vec![Vec::new(); n],
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
                        Output::Transmit(t) => {
                            let to = t.to;
                            self.sent[i]
                                .push((to, proto::bundle::decode_single(&t.bytes).expect("valid")));
                            let wire = t.wire().into_owned();
                            // An IP multicast group reaches every core listening on it
                            // but the sender.
                            for j in 0..self.cores.len() {
                                let c = &self.cores[j];
                                let listens = to.ip().is_multicast()
                                    && c.multicast == Some(to)
                                    && c.addr != from;
                                if c.addr == to || listens {
                                    self.cores[j].handle_datagram(now, from, &wire);
                                }
                            }
                            self.wire[i].push((to, wire));
                        }
                        Output::Deliver(m) => {
                            self.delivered[i].push((m.author.to_string(), m.text().into_owned()))
                        }
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
        net.sent[0]
            .iter()
            .any(|(to, d)| *to == addr(6002) && d.kind == DatagramType::Digest && d.counter == 28),
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
        if let Output::Transmit(Transmit {
            to, bytes, bundle, ..
        }) = out
        {
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
            kinds.push(proto::bundle::decode_single(&bytes).expect("valid").kind);
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
                let d = proto::bundle::decode_single(&bytes).expect("valid");
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

#[test]
fn a_silent_sequencer_is_greeted_until_it_answers_and_a_silent_peer_only_for_a_second() {
    let t = Instant::now();
    let mut c = core("ford", 6001, Mode::Total);
    c.join(
        t,
        "books",
        &[
            member(SEQUENCER, 5001),
            member("ford", 6001),
            member("kat", 6002),
        ],
    );
    // Nothing ever answers (a partition): count the Hellos to each, second by second.
    let mut hellos: BTreeMap<(u16, u64), usize> = BTreeMap::new();
    let mut now = t;
    while now < t + Duration::from_secs(4) {
        if c.poll_timeout().is_some_and(|at| at <= now) {
            c.handle_timeout(now);
        }
        while let Some(out) = c.poll_output() {
            if let Output::Transmit(tx) = out
                && proto::bundle::decode_single(&tx.bytes)
                    .is_ok_and(|d| d.kind == DatagramType::Hello)
            {
                let second = now.duration_since(t).as_secs();
                *hellos.entry((tx.to.port(), second)).or_default() += 1;
            }
        }
        now += Duration::from_millis(5);
    }
    for second in 1..4 {
        assert!(
            hellos.get(&(5001, second)).is_some_and(|n| *n >= 3),
            "the sequencer, second {second}: {hellos:?}"
        );
    }
    assert!(
        !hellos
            .keys()
            .any(|(port, second)| *port == 6002 && *second >= 2),
        "kat is greeted once the sequencer gave no answer, then not for ever: {hellos:?}"
    );
}

/// Ford, a total-order member of "books" with the sequencer, not yet greeted by it.
fn joined_with_sequencer(t: Instant) -> PeerCore {
    let mut c = core("ford", 6001, Mode::Total);
    c.join(t, "books", &[member(SEQUENCER, 5001), member("ford", 6001)]);
    c
}

/// Runs `c`'s timers every 50 ms from `from` until `until`, its outputs dropped; returns the
/// time reached.
fn timers_until(c: &mut PeerCore, from: Instant, until: Instant) -> Instant {
    let mut now = from;
    while now < until {
        c.handle_timeout(now);
        while c.poll_output().is_some() {}
        now += Duration::from_millis(50);
    }
    now
}

/// A total-order member of "books" whose sequencer (epoch 1) welcomed it.
fn welcomed_by_sequencer(t: Instant) -> PeerCore {
    let mut c = joined_with_sequencer(t);
    c.handle_datagram(t, addr(5001), &from_sequencer(DatagramType::HelloAck));
    while c.poll_output().is_some() {}
    assert!(c.sequencer_ready("books"));
    c
}

/// The sequencer's (epoch 1) Hello or HelloAck to ford in "books": our place starts at 1.
fn from_sequencer(kind: DatagramType) -> Vec<u8> {
    let mut d = Datagram::new(kind, "books", SEQUENCER, "", addr(5001), 1, SEQUENCER);
    d.proto = Some(PROTOCOL_VERSION);
    d.start = (kind == DatagramType::HelloAck).then_some(1);
    d.epoch = Some(1);
    d.encode(4096).expect("fits")
}

fn sequenced(counter: u64, epoch: Option<u64>) -> Vec<u8> {
    let mut d = Datagram::new(
        DatagramType::Application,
        "books",
        SEQUENCER,
        format!("kat says {counter}"),
        addr(5001),
        counter,
        "kat",
    );
    d.origin_counter = Some(counter);
    d.epoch = epoch;
    d.encode(4096).expect("fits")
}

#[test]
fn a_sequenced_message_of_another_epoch_is_not_taken_for_our_sequencers() {
    let t = Instant::now();
    let mut c = welcomed_by_sequencer(t);
    // A successor's message 1 (epoch 2) reaches us before we greeted it: dropped, and the
    // successor is greeted (a Hello to the sequencer's address).
    c.handle_datagram(t, addr(5001), &sequenced(1, Some(2)));
    let out: Vec<Output> = std::iter::from_fn(|| c.poll_output()).collect();
    assert!(
        !out.iter().any(|o| matches!(o, Output::Deliver(_))),
        "{out:?}"
    );
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Event(Event::SequencerLost { .. })))
    );
    assert!(out.iter().any(|o| matches!(o, Output::Transmit(tx)
        if tx.to == addr(5001)
            && proto::bundle::decode_single(&tx.bytes).is_ok_and(|d| d.kind == DatagramType::Hello))));
    assert_eq!(c.traffic().other_epoch, 1);
    // A late one of an earlier epoch is dropped quietly; ours is delivered.
    c.handle_datagram(t, addr(5001), &sequenced(1, Some(0)));
    assert!(texts(&mut c).is_empty());
    c.handle_datagram(t, addr(5001), &sequenced(1, Some(1)));
    assert_eq!(texts(&mut c), ["kat says 1"]);
    assert_eq!(c.traffic().other_epoch, 2);
}

#[test]
fn a_sequencer_that_names_its_epoch_is_waited_for_past_the_handshakes_time() {
    // Our sequencer collects its members' Hellos for up to 2 s (one listed member may have
    // crashed) and prompts us meanwhile; its HelloAck then comes after the 1.2 s in which a
    // report's sequencer would have answered. Taking the first sequenced message for our
    // start would skip what the others deliver before it (seed 2576 of the all-faults sim).
    let t = Instant::now();
    let mut c = joined_with_sequencer(t);
    let at = |ms: u64| t + Duration::from_millis(ms);
    c.handle_datagram(at(300), addr(5001), &from_sequencer(DatagramType::Hello));
    let now = timers_until(&mut c, at(300), at(1900));
    // Its HelloAck to us is lost; messages 3 and 4 of its sequence reach us.
    c.handle_datagram(now, addr(5001), &sequenced(3, Some(1)));
    c.handle_datagram(now, addr(5001), &sequenced(4, Some(1)));
    c.handle_timeout(now + Duration::from_millis(10));
    assert!(texts(&mut c).is_empty(), "3 is not taken for our start");
    c.handle_datagram(
        at(2000),
        addr(5001),
        &from_sequencer(DatagramType::HelloAck),
    );
    c.handle_datagram(at(2001), addr(5001), &sequenced(1, Some(1)));
    c.handle_datagram(at(2001), addr(5001), &sequenced(2, Some(1)));
    assert_eq!(
        texts(&mut c),
        ["kat says 1", "kat says 2", "kat says 3", "kat says 4"]
    );
}

#[test]
fn a_member_that_lost_a_sequencer_of_ours_before_its_welcome_waits_for_its_place() {
    // Epoch 1's message 3 comes before its HelloAck (its epoch becomes the one we follow),
    // then one of epoch 2: the sequencer is taken for lost and our stream starts afresh.
    // It must still wait for a HelloAck, not take epoch 1's next message for its start
    // once the handshake's time is over.
    let t = Instant::now();
    let at = |ms: u64| t + Duration::from_millis(ms);
    let mut c = joined_with_sequencer(t);
    c.handle_datagram(at(10), addr(5001), &sequenced(3, Some(1)));
    c.handle_datagram(at(20), addr(5001), &sequenced(1, Some(2)));
    let now = timers_until(&mut c, at(20), at(1600));
    c.handle_datagram(now, addr(5001), &sequenced(4, Some(1)));
    c.handle_timeout(now + Duration::from_millis(10));
    assert!(texts(&mut c).is_empty(), "4 is not taken for our start");
    c.handle_datagram(
        at(1700),
        addr(5001),
        &from_sequencer(DatagramType::HelloAck),
    );
    for n in 1..=3 {
        c.handle_datagram(at(1701), addr(5001), &sequenced(n, Some(1)));
    }
    assert_eq!(
        texts(&mut c),
        ["kat says 1", "kat says 2", "kat says 3", "kat says 4"]
    );
}

#[test]
fn an_idle_author_tells_a_member_that_missed_its_last_message_until_it_acknowledges() {
    let t = Instant::now();
    let mut net = flow_pair(t, 8);
    net.cores[0]
        .send(t, "books", b"last words", 1)
        .expect("joined");
    // The message is lost on its way to kat.
    while net.cores[0].poll_output().is_some() {}
    let digests_to_kat = |net: &mut Net, now: Instant| {
        net.cores[0].handle_timeout(now);
        std::iter::from_fn(|| net.cores[0].poll_output())
            .filter(|o| {
                matches!(o, Output::Transmit(tx)
                if tx.to == addr(6002)
                    && proto::bundle::decode_single(&tx.bytes).is_ok_and(|d| d.kind == DatagramType::Digest))
            })
            .count()
    };
    // Long after the ordering core's own announcements have stopped, still told.
    let mut told = 0;
    let mut now = t;
    while now < t + Duration::from_secs(6) {
        now += Duration::from_millis(50);
        told += digests_to_kat(&mut net, now);
    }
    assert!(told >= 10, "{told} digests in 6 s");
    assert!(
        net.cores[0].poll_timeout().is_some(),
        "still waiting for kat's acknowledgement"
    );
    // The network heals: kat hears the next one, recovers the message, and acknowledges
    // it at the one after (its answer to the first went before it had recovered).
    let healed = now;
    while now < healed + Duration::from_secs(2) {
        now += Duration::from_millis(5);
        for c in &mut net.cores {
            c.handle_timeout(now);
        }
        net.settle(now);
    }
    assert_eq!(digests_to_kat(&mut net, now + Duration::from_secs(1)), 0);
    assert_eq!(
        net.delivered[1].last().map(|(_, text)| text.as_str()),
        Some("last words")
    );
}

#[test]
fn a_sealed_group_hears_only_its_key_and_nothing_twice() {
    let t = Instant::now();
    let key = GroupKey::generate();
    let seals = || vec![("books".to_owned(), key.clone())];
    let mut net = Net::new(vec![
        sealed_core("ford", 6001, Mode::Fifo, seals()),
        sealed_core("kat", 6002, Mode::Fifo, seals()),
    ]);
    net.cores[0].join(t, "books", &[member("ford", 6001)]);
    net.settle(t);
    net.cores[1].join(t, "books", &[member("ford", 6001), member("kat", 6002)]);
    net.settle(t);
    assert_eq!(
        net.cores[0].members_heard("books"),
        1,
        "the handshake went sealed"
    );
    net.cores[0]
        .send(t, "books", b"the plans", 1)
        .expect("joined");
    net.settle(t);
    assert_eq!(said(&net, 1), ["the plans"]);
    // Everything ford sent to kat went sealed, and says nothing in clear.
    let to_kat: Vec<&Vec<u8>> = net.wire[0]
        .iter()
        .filter(|(to, _)| *to == addr(6002))
        .map(|(_, w)| w)
        .collect();
    assert!(!to_kat.is_empty());
    assert!(to_kat.iter().all(|w| seal::is_sealed(w)));
    assert!(!to_kat.iter().any(|w| w.windows(5).any(|x| x == b"plans")));
    // Replayed: dropped, counted, not delivered again.
    for w in &to_kat {
        net.cores[1].handle_datagram(t, addr(6001), w);
    }
    assert_eq!(net.cores[1].seal_stats().replayed, to_kat.len() as u64);
    // Sealed with another key, or plain (even from ford's own address): dropped.
    let stranger = seal::Sealer::new(&GroupKey::generate());
    let forged = old_datagram(DatagramType::Application, "ford", 6001, 2);
    net.cores[1].handle_datagram(t, addr(6001), &stranger.seal(&forged, addr(6002)));
    net.cores[1].handle_datagram(t, addr(6001), &forged);
    assert_eq!(net.cores[1].seal_stats().unknown_key, 1);
    assert_eq!(net.cores[1].traffic().unsealed, 1);
    assert_eq!(said(&net, 1), ["the plans"], "nothing more delivered");
    // A member with the wrong key hears nothing and is heard by nobody.
    let mut eve = sealed_core(
        "eve",
        6003,
        Mode::Fifo,
        vec![("books".into(), GroupKey::generate())],
    );
    eve.join(
        t,
        "books",
        &[
            member("ford", 6001),
            member("kat", 6002),
            member("eve", 6003),
        ],
    );
    net.cores.push(eve);
    net.delivered.push(Vec::new());
    net.events.push(Vec::new());
    net.sent.push(Vec::new());
    net.wire.push(Vec::new());
    net.settle(t);
    net.cores[2]
        .send(t, "books", b"let me in", 1)
        .expect("joined");
    net.cores[0].send(t, "books", b"second", 1).expect("joined");
    net.settle(t);
    assert_eq!(said(&net, 1), ["the plans", "second"]);
    assert_eq!(said(&net, 2), ["let me in"], "only her own");
    assert!(net.cores[0].seal_stats().unknown_key > 0);
    assert_eq!(net.cores[2].seal_stats().opened, 0);
}

/// What core `i` delivered so far in a [`Net`], by text.
fn said(net: &Net, i: usize) -> Vec<&str> {
    net.delivered[i]
        .iter()
        .map(|(_, text)| text.as_str())
        .collect()
}

const GROUP_ADDR: &str = "239.255.0.1:7400";

fn multicast_core(name: &str, port: u16, multicast: Option<&str>) -> PeerCore {
    let mut core = core(name, port, Mode::Fifo);
    core.multicast = multicast.map(|m| m.parse().expect("group"));
    core
}

/// The first core sends `text` to `books`; returns where its application datagrams went,
/// in address order, once everything has settled.
fn send_and_see(net: &mut Net, t: Instant, text: &str) -> Vec<SocketAddr> {
    let mark = net.sent[0].len();
    net.cores[0]
        .send(t, "books", text.as_bytes(), 1)
        .expect("joined");
    net.settle(t);
    let mut to: Vec<SocketAddr> = net.sent[0][mark..]
        .iter()
        .filter(|(_, d)| d.kind == DatagramType::Application)
        .map(|(to, _)| *to)
        .collect();
    to.sort();
    to
}

#[test]
fn a_message_goes_once_to_the_multicast_group_only_while_every_member_listens_there() {
    let t = Instant::now();
    let group: SocketAddr = GROUP_ADDR.parse().expect("group");
    let names = [("ford", 6001), ("kat", 6002), ("lou", 6003)];
    let mut net = Net::new(
        names
            .iter()
            .map(|(n, p)| multicast_core(n, *p, Some(GROUP_ADDR)))
            .collect(),
    );
    let mut listed = Vec::new();
    for (i, (name, port)) in names.iter().enumerate() {
        listed.push(member(name, *port));
        net.cores[i].join(t, "books", &listed);
        net.settle(t);
    }
    assert_eq!(net.cores[0].members_heard("books"), 2);
    // Everyone listens on the group: one datagram, delivered by both others.
    assert_eq!(send_and_see(&mut net, t, "once"), [group]);
    assert_eq!(net.cores[0].traffic().multicast_sent, 1);
    for (delivered, (name, _)) in net.delivered.iter().zip(names).skip(1) {
        assert!(
            delivered.contains(&("ford".into(), "once".into())),
            "{name}"
        );
    }
    // A member that listens on no group joins: each member gets its own copy again.
    let mut moe = multicast_core("moe", 6004, None);
    listed.push(member("moe", 6004));
    moe.join(t, "books", &listed);
    let mut net = Net::new(net.cores.into_iter().chain([moe]).collect());
    net.settle(t);
    assert_eq!(net.cores[0].members_heard("books"), 3);
    assert_eq!(
        send_and_see(&mut net, t, "each"),
        [addr(6002), addr(6003), addr(6004)]
    );
    for i in 1..4 {
        assert!(net.delivered[i].contains(&("ford".into(), "each".into())));
    }
    assert_eq!(net.cores[0].traffic().multicast_sent, 1);
}

#[test]
fn a_multicast_group_is_never_used_for_a_sealed_group_or_while_a_member_listens_elsewhere() {
    let t = Instant::now();
    let key = GroupKey::generate();
    // A sealed group whose members all listen on one group: still one datagram each (a seal
    // names the one member it is for).
    let seals = || vec![("books".to_owned(), key.clone())];
    let mut cores: Vec<PeerCore> = [("ford", 6001), ("kat", 6002), ("lou", 6003)]
        .iter()
        .map(|(n, p)| {
            let mut c = sealed_core(n, *p, Mode::Fifo, seals());
            c.multicast = Some(GROUP_ADDR.parse().expect("group"));
            c
        })
        .collect();
    let mut listed = Vec::new();
    for (i, (name, port)) in [("ford", 6001), ("kat", 6002), ("lou", 6003)]
        .iter()
        .enumerate()
    {
        listed.push(member(name, *port));
        cores[i].join(t, "books", &listed);
    }
    let mut net = Net::new(cores);
    net.settle(t);
    assert_eq!(net.cores[0].members_heard("books"), 2);
    assert_eq!(
        send_and_see(&mut net, t, "sealed"),
        [addr(6002), addr(6003)]
    );
    assert!(net.delivered[2].contains(&("ford".into(), "sealed".into())));

    // A member whose Hello names another address than ours (here a unicast one, which
    // is taken as no group at all) gets its own copy, and so does everyone else.
    let mut ford = multicast_core("ford", 6001, Some(GROUP_ADDR));
    ford.join(t, "news", &[member("ford", 6001)]);
    for (name, port) in [("kat", 6002), ("mallory", 6003)] {
        let mut hello = Datagram::new(DatagramType::Hello, "news", name, "", addr(port), 1, name);
        hello.proto = Some(PROTOCOL_VERSION);
        hello.start = Some(1);
        hello.multicast = Some(match name {
            "kat" => GROUP_ADDR.parse().expect("group"),
            _ => addr(9),
        });
        ford.handle_datagram(t, addr(port), &hello.encode(4096).expect("fits"));
    }
    while ford.poll_output().is_some() {}
    ford.send(t, "news", b"to each", 1).expect("joined");
    let mut dests = Vec::new();
    while let Some(out) = ford.poll_output() {
        if let Output::Transmit(tx) = out
            && proto::bundle::decode_single(&tx.bytes)
                .is_ok_and(|d| d.kind == DatagramType::Application)
        {
            dests.push(tx.to);
        }
    }
    dests.sort();
    assert_eq!(dests, [addr(6002), addr(6003)]);
}

#[test]
fn a_message_made_compact_from_its_parts_is_the_compact_form_of_its_json() {
    let ford = core("ford", 6001, Mode::Fifo);
    for payload in [&b"hello there"[..], &[0xff, 0, 7][..], b""] {
        let mut d = Datagram::new(
            DatagramType::Application,
            "books",
            "ford",
            "",
            addr(6001),
            42,
            "ford",
        );
        d.set_payload(payload);
        d.sent_at_us = Some(1_700_000_000_000_000);
        assert_eq!(
            ford.compact_message("books", 42, payload, 1_700_000_000_000_000),
            proto::compact::from_datagram(&d),
            "{payload:?}"
        );
    }
}
