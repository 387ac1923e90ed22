//! What the messenger's event loops share, below the programs and above the sans-IO cores:
//!
//! - [`Outbox`]: a turn's datagrams, sent per destination back to back, bundled for
//!   members that read bundles.
//! - [`TrackerLink`]: the persistent, self-healing connection to the tracker inside a mio
//!   loop.
//! - [`bind_udp`]: a UDP socket with the buffer sizes a busy member needs.
//! - [`CpuWakeLatency`]: an opt-in request that idle CPUs wake fast, for low latency, and
//!   [`no_wakeup_preemption`]: an opt-in that woken members let their waker finish.
//! - [`Shutdown`]: a handle that stops (or wakes) a loop from another thread or a signal
//!   handler.
//!
//! Argument parsing and logging set-up for the programs live apart, in `cli`.
// Denied, not forbidden: one system call (`sched::no_wakeup_preemption`) has no safe
// wrapper in the crates we use.
#![deny(unsafe_code)]
#![deny(missing_docs)]

mod cpu_latency;
mod outbox;
mod sched;
mod shutdown;
mod tracker_link;
mod udp;

pub use cpu_latency::CpuWakeLatency;
pub use outbox::{Outbox, OutboxStats};
pub use sched::{no_wakeup_preemption, wakeup_preemption_off};
pub use shutdown::Shutdown;
pub use tracker_link::{LinkEvent, TrackerLink};
pub use udp::{
    WriteWatch, bind_udp, join_multicast, multicast_interface, poll_udp, read_batch,
    send_multicast_on,
};
