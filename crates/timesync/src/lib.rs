//! Clock synchronization programs over the sans-IO `clock` crate: a time server (the seed's
//! TCP time strings and NTP on UDP, one port), Cristian and NTP clients, and Berkeley's
//! master and slave. Every program can run with a simulated skewed clock ([`LocalClock`])
//! so that synchronization shows on one machine; the machine's clock is never changed.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod berkeley;
pub mod client;
mod local_clock;
pub mod server;

pub use local_clock::{LocalClock, real_now, utc_offset_s};
