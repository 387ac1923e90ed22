//! A whole system in one process for the examples: a tracker and a sequencer on 127.0.0.1
//! with ports the OS picks, each on a thread of its own, stopped when dropped.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::thread::JoinHandle;

/// A tracker (and a sequencer, for total order) running in this process.
pub struct LocalSystem {
    /// The tracker's address, for [`peer::ChannelConfig::new`].
    pub tracker: SocketAddr,
    stops: Vec<tracker::Shutdown>,
    threads: Vec<JoinHandle<()>>,
}

impl LocalSystem {
    /// Starts a tracker with a sequencer, at the given addresses or on 127.0.0.1 with
    /// ports the OS picks.
    pub fn start(at: Option<(SocketAddr, SocketAddr)>) -> std::io::Result<Self> {
        let localhost: SocketAddr = ([127, 0, 0, 1], 0).into();
        let (tracker_addr, sequencer_addr) = at.unwrap_or((localhost, localhost));
        let mut sequencer =
            sequencer::SequencerServer::bind(sequencer_addr, None, ordering::Config::default())?;
        let mut config = tracker::TrackerConfig::new(tracker_addr);
        config.sequencer = Some(sequencer.local_addr());
        let mut tracker = tracker::Tracker::bind(config)?;
        let addr = tracker.local_addr();
        let stops = vec![tracker.shutdown_handle(), sequencer.shutdown_handle()];
        let threads = vec![
            std::thread::spawn(move || {
                let _ = tracker.run();
            }),
            std::thread::spawn(move || {
                let _ = sequencer.run(&mut |_| {});
            }),
        ];
        Ok(Self {
            tracker: addr,
            stops,
            threads,
        })
    }
}

impl Drop for LocalSystem {
    fn drop(&mut self) {
        for stop in &self.stops {
            stop.shutdown();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
