//! `Channel` against a real tracker in this process: the tracker's answers as values.

#![allow(clippy::unwrap_used)] // a test may stop at the first surprise

use peer::{Channel, ChannelConfig, ChannelError};

/// A tracker on 127.0.0.1 with a port the OS picks, on a thread, stopped when dropped.
struct LocalTracker {
    addr: std::net::SocketAddr,
    stop: tracker::Shutdown,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LocalTracker {
    fn start() -> Self {
        let config = tracker::TrackerConfig::new(([127, 0, 0, 1], 0).into());
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
    kat.close();
    ford.close();
}
