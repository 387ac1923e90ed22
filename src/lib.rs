//! Group messenger with FIFO and total-order multicast over UDP.
//!
//! This facade re-exports the embeddable layers, so one dependency brings both:
//! [`proto`] (the wire types and their JSON encoding) and [`ordering`] (the sans-IO ordering
//! core). The daemons live in their own crates (`tracker`, `peer`, `sequencer`).
#![forbid(unsafe_code)]

pub use ordering;
pub use proto;
