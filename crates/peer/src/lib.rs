//! The peer of the group messenger: a member that joins groups, multicasts messages to them
//! over UDP, and delivers what the members send in FIFO or total order.
//!
//! - [`Channel`]: the handle a Rust program embeds — join, leave, send bytes with
//!   backpressure, receive deliveries and events as values — over the same loop on its
//!   own thread.
//! - [`Peer`]: one mio loop over the UDP socket, the user's input, the tracker link and
//!   timers around the sans-IO [`member::PeerCore`], in interactive or script mode.
//! - [`console`]: the interactive peer's input, applied in the order typed, and its output,
//!   with whatever came from the network made harmless for a terminal.
//! - [`command`]: the `!` commands; [`report`]: a script's measurements.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod channel;
pub mod command;
pub mod console;
mod peer;
pub mod report;

pub use channel::{Channel, ChannelConfig, ChannelError, ChannelEvent, Delivery};
pub use member::{Mode, SEQUENCER};
pub use peer::{Console, Peer, PeerError, PeerOptions, Script, Shutdown};
