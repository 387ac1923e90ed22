//! `Channel` against a real tracker in this process: the tracker's answers as values, a
//! stream sent with backpressure, a channel opened before its tracker exists, and a name
//! the tracker refuses.

#![allow(clippy::unwrap_used)] // a test may stop at the first surprise

use std::time::{Duration, Instant};

use peer::{Channel, ChannelConfig, ChannelError, ChannelEvent};

/// A tracker on 127.0.0.1 with a port the OS picks, on a thread, stopped when dropped.
struct LocalTracker {
    addr: std::net::SocketAddr,
    stop: tracker::Shutdown,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LocalTracker {
    fn start() -> Self {
        Self::start_at(([127, 0, 0, 1], 0).into())
    }

    fn start_at(addr: std::net::SocketAddr) -> Self {
        let config = tracker::TrackerConfig::new(addr);
        let mut tracker = tracker::Tracker::bind(config).unwrap();
        let addr = tracker.local_addr();
        let stop = tracker.shutdown_handle();
        let thread = std::thread::spawn(move || {
            let _ = tracker.run();
        });
        Self {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for LocalTracker {
    fn drop(&mut self) {
        self.stop.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_channel_asks_the_tracker_for_groups_and_members() {
    let tracker = LocalTracker::start();
    let ford = Channel::connect(ChannelConfig::new("ford", tracker.addr)).unwrap();
    let kat = Channel::connect(ChannelConfig::new("kat", tracker.addr)).unwrap();
    assert!(ford.groups().unwrap().is_empty());
    ford.join("books").unwrap();
    kat.join("films").unwrap();
    kat.join("books").unwrap();
    let mut groups = ford.groups().unwrap();
    groups.sort();
    assert_eq!(groups, ["books", "films"]);
    assert_eq!(kat.members("books").unwrap(), ["ford", "kat"]);
    assert_eq!(ford.members("films").unwrap(), ["kat"]);
    match ford.members("poetry") {
        Err(ChannelError::NoSuchGroup(group)) => assert_eq!(group, "poetry"),
        other => panic!("{other:?}"),
    }
    kat.close().unwrap();
    ford.close().unwrap();
}

/// The next event that `pick` keeps, within ten seconds.
fn next<T>(chan: &Channel, mut pick: impl FnMut(ChannelEvent) -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if let Some(event) = chan.recv_timeout(left).unwrap()
            && let Some(kept) = pick(event)
        {
            return kept;
        }
    }
    panic!("the event never came");
}

/// Ford and kat in "books", each having heard the other; ford's flow-control window is
/// `window` messages.
fn ford_and_kat_in_books(tracker: &LocalTracker, window: u64) -> (Channel, Channel) {
    let mut config = ChannelConfig::new("ford", tracker.addr);
    config.ordering.flow_window = window;
    let ford = Channel::connect(config).unwrap();
    let kat = Channel::connect(ChannelConfig::new("kat", tracker.addr)).unwrap();
    kat.join("books").unwrap();
    ford.join("books").unwrap();
    next(&kat, |e| {
        matches!(e, ChannelEvent::MemberJoined { ref member, .. } if member == "ford").then_some(())
    });
    // Kat heard ford's Hello; ford must have heard kat's answer too, or kat does not hold
    // its window yet and the whole stream may go before kat's first acknowledgement.
    let deadline = Instant::now() + Duration::from_secs(5);
    while ford.stats().unwrap().groups[0].members_heard < 1 {
        assert!(Instant::now() < deadline, "ford never heard kat");
        std::thread::sleep(Duration::from_millis(5));
    }
    (ford, kat)
}

/// The next message kat delivers.
fn next_message(chan: &Channel) -> peer::Delivery {
    next(chan, |e| match e {
        ChannelEvent::Message(m) => Some(m),
        _ => None,
    })
}

#[test]
fn send_all_waits_for_the_slowest_member_and_every_message_arrives_in_order() {
    let tracker = LocalTracker::start();
    // A small window: the stream must wait for kat's acknowledgements many times.
    let (ford, kat) = ford_and_kat_in_books(&tracker, 16);
    let lines: Vec<String> = (0..2000).map(|i| format!("line {i}")).collect();
    assert_eq!(ford.send_all("books", lines.clone()).unwrap(), lines.len());
    for (i, line) in lines.iter().enumerate() {
        let m = next_message(&kat);
        assert_eq!(
            (&*m.author, m.payload.as_slice()),
            ("ford", line.as_bytes())
        );
        assert_eq!(m.seq, i as u64 + 1);
        // On the synchronized clock: each channel estimated its own offset to the tracker
        // (within tens of µs), so a loopback latency may read a little below zero; never
        // by a millisecond.
        let sent = m.sent_at_us.unwrap();
        assert!(
            m.received_at_us + 1_000 >= sent,
            "received at {} µs, sent at {sent} µs",
            m.received_at_us
        );
    }
    let stats = ford.stats().unwrap();
    assert!(stats.traffic.window_closed > 0, "{stats:?}");
    assert_eq!(stats.groups.len(), 1);
    assert_eq!(stats.groups[0].name, "books");
    assert_eq!(stats.groups[0].members_heard, 1);
    // Refused as a whole: nothing of it goes to a group we are not in.
    match ford.send_all("films", ["a"]) {
        Err(ChannelError::Member(_)) => {}
        other => panic!("{other:?}"),
    }
    ford.close().unwrap();
    kat.close().unwrap();
}

#[test]
fn sends_handed_over_without_waiting_go_in_order_and_each_is_answered() {
    let tracker = LocalTracker::start();
    let (ford, kat) = ford_and_kat_in_books(&tracker, 16);
    let lines: Vec<String> = (0..1000).map(|i| format!("line {i}")).collect();
    // Ten hand-overs at once, far more than the window: the loop holds them, in order.
    let pending: Vec<_> = lines
        .chunks(100)
        .map(|chunk| ford.begin_send_all("books", chunk.to_vec()).unwrap())
        .collect();
    let refused = ford.begin_send_all("films", ["a"]).unwrap();
    for answer in pending {
        assert_eq!(answer.wait().unwrap(), 100);
    }
    match refused.wait() {
        Err(ChannelError::Member(_)) => {}
        other => panic!("{other:?}"),
    }
    for (i, line) in lines.iter().enumerate() {
        let m = next_message(&kat);
        assert_eq!(m.payload, line.as_bytes());
        assert_eq!(m.seq, i as u64 + 1);
    }
    // Asked without waiting: no answer yet or the count, never anything else.
    let last = ford.begin_send_all("books", ["last"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let answer = loop {
        if let Some(answer) = last.try_wait() {
            break answer;
        }
        assert!(Instant::now() < deadline, "never answered");
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(answer.unwrap(), 1);
    assert_eq!(next_message(&kat).payload, b"last");
    // Handed over and then the loop ends: the answer says so.
    let orphan = ford.begin_send_all("books", ["x"]).unwrap();
    ford.close().unwrap();
    assert!(matches!(orphan.wait(), Ok(1) | Err(ChannelError::Closed)));
    kat.close().unwrap();
}

#[test]
fn a_channel_opened_before_its_tracker_says_so_and_registers_when_it_comes() {
    let addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let yann = Channel::open(ChannelConfig::new("yann", addr)).unwrap();
    let unreachable = next(&yann, |e| match e {
        ChannelEvent::TrackerUnreachable { tracker } => Some(tracker),
        _ => None,
    });
    assert_eq!(unreachable, addr);
    assert!(matches!(
        yann.join("books"),
        Err(ChannelError::Unreachable(a)) if a == addr
    ));
    let _tracker = LocalTracker::start_at(addr);
    next(&yann, |e| {
        matches!(e, ChannelEvent::Registered).then_some(())
    });
    assert!(yann.join("books").unwrap().contains(&"yann".to_owned()));
    yann.close().unwrap();
}

#[test]
fn a_name_the_tracker_refuses_ends_the_channel_and_close_says_why() {
    let tracker = LocalTracker::start();
    let first = Channel::connect(ChannelConfig::new("yann", tracker.addr)).unwrap();
    match Channel::connect(ChannelConfig::new("yann", tracker.addr)) {
        Err(ChannelError::Refused(_)) => {}
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a second yann was registered"),
    }
    let twin = Channel::open(ChannelConfig::new("yann", tracker.addr)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match twin.recv_timeout(Duration::from_millis(100)) {
            Err(ChannelError::Closed) => break,
            Ok(event) => assert!(Instant::now() < deadline, "still open: {event:?}"),
            Err(other) => panic!("{other}"),
        }
    }
    assert!(matches!(twin.close(), Err(ChannelError::Refused(_))));
    // The real yann is untouched.
    assert_eq!(
        first.members("books").err().map(|e| e.to_string()),
        Some("no such group: books".into())
    );
    first.join("books").unwrap();
    first.close().unwrap();
}
