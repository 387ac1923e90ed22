//! The tracker's options, with the defaults a small deployment wants.

use std::net::SocketAddr;
use std::time::Duration;

use crate::registry::Liveness;
use crate::store::SharedRegistry;

/// Everything a [`Tracker`](crate::Tracker) is started with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackerConfig {
    /// Where to listen: TCP for control requests, UDP (same port) for heartbeats. Port 0
    /// picks a free port, the same for both.
    pub addr: SocketAddr,
    /// The sequencer's address, if total order is offered: it is a member (`sequencer`) of
    /// every group.
    pub sequencer: Option<SocketAddr>,
    /// Heartbeat interval of newer members and the eviction multiplier.
    pub liveness: Liveness,
    /// Most TCP connections open at once; more are answered "busy" and closed.
    pub max_connections: usize,
    /// Longest request accepted, in bytes; a longer one is answered with an error and its
    /// connection closed.
    pub max_request_len: usize,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// The registry shared with other trackers through etcd; `None` (the default): this
    /// process's memory only.
    pub shared: Option<SharedRegistry>,
}

impl TrackerConfig {
    /// The defaults, listening on `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            sequencer: None,
            liveness: Liveness::default(),
            max_connections: 1024,
            max_request_len: proto::MAX_REQUEST_LEN,
            idle_timeout: Duration::from_secs(30),
            shared: None,
        }
    }
}
