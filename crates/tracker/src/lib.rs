//! The tracker daemon of the group messenger: the registry of members and groups, the
//! control protocol of the report (TCP, one JSON request per reply), heartbeats (UDP
//! datagrams or TCP requests), and failure detection.
//!
//! Two layers, as everywhere in this project:
//! - [`Registry`] is the membership logic as a plain state machine: requests and time in,
//!   replies and [`Eviction`]s out; testable without sockets.
//! - [`Tracker`] is one mio event loop around it: a TCP listener and its connections, a UDP
//!   socket on the same port, a waker for [`Shutdown`], and a periodic sweep for liveness
//!   and idle connections. It never blocks inside the loop, but for one thing: with a
//!   registry shared through etcd ([`SharedRegistry`], `--registry`), a request that
//!   changes the registry is answered once etcd has committed the change.
//!
//! Compatibility: the report's client opens one connection per request, sends one
//! (possibly indented) JSON value and reads one reply; the tracker closes such connections
//! after the reply. A client that puts `"Proto"` in its requests (see [`proto::Envelope`])
//! keeps its connection for as many requests as it likes, and a member that registers with
//! it heartbeats at the tracker's interval instead of the report's 60 s.
//!
//! ```no_run
//! use tracker::{Tracker, TrackerConfig};
//!
//! let mut tracker = Tracker::bind(TrackerConfig::new("127.0.0.1:5000".parse()?))?;
//! let stop = tracker.shutdown_handle();
//! std::thread::spawn(move || { std::thread::sleep(std::time::Duration::from_secs(60)); stop.shutdown() });
//! tracker.run()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod config;
mod connection;
mod etcd;
mod registry;
mod server;
mod shared;
mod stats;
mod store;

pub use config::TrackerConfig;
pub use registry::{
    Eviction, LEGACY_HEARTBEAT, Liveness, MAX_NAME_LEN, Probe, Registry, RegistryOutput, Via,
};
pub use server::{Shutdown, Tracker};
pub use shared::{Change, SharedGroup, SharedMember};
pub use stats::{Stats, StatsSnapshot};
pub use store::SharedRegistry;
