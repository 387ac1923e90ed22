//! Clock synchronization without I/O: the algorithms take the clock readings of an exchange
//! as values and return estimates; the caller owns the sockets and reads the clocks.
//!
//! - [`cristian`]: ask a time server; offset = server time + RTT/2 − receive time, within
//!   ±RTT/2; the best of several samples is the one with the smallest round trip.
//! - [`ntp`]: the RFC 5905 packet, a server's answer, and the client's four-timestamp
//!   estimate (offset = ((T2 − T1) + (T3 − T4)) / 2 within ± delay / 2).
//! - [`berkeley`]: the master's fault-tolerant average and each process's correction.
//! - [`SkewedClock`]: a simulated clock with an offset and a drift, whose error is known,
//!   so that the true residual error of every algorithm can be measured on one machine.
//! - [`seed`]: the time strings of the lab's Python programs.
//!
//! ```
//! use clock::{Nanos, cristian::Sample};
//!
//! // We sent at 1000 ns and heard back at 1400 ns; the server said 5000 ns.
//! let e = Sample { sent: Nanos(1_000), server: Nanos(5_000), received: Nanos(1_400), resolution_ns: 0 }.estimate();
//! assert_eq!((e.offset_ns, e.bound_ns), (3_800, 200)); // its clock is 3.8 µs ahead, ± 0.2 µs
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod berkeley;
pub mod cristian;
mod discipline;
pub mod ntp;
pub mod seed;
mod skew;
mod time;

pub use discipline::{Discipline, MAX_DRIFT_PPM, MIN_SPAN_NS, WANDER_PPM};
pub use skew::SkewedClock;
pub use time::{Estimate, Nanos, human};
