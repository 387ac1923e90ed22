//! The peer of the group messenger: a member that joins groups, multicasts messages to them
//! over UDP, and delivers what the members send in FIFO or total order.
//!
//! - [`Channel`]: the handle a Rust program embeds — join, leave, send bytes with
//!   backpressure, receive deliveries and events as values — over the member's event loop
//!   (one mio loop around the sans-IO [`member::Member`]) on its own thread.
//! - The `peer` program's two modes are clients of it: [`interactive`] (a person at a
//!   terminal or a pipe, with the [`console`] and the `!` [`command`]s) and [`script`]
//!   (send a file's lines, measure, and [`report`]).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod channel;
pub mod command;
pub mod console;
mod driver;
pub mod interactive;
pub mod report;
pub mod script;

pub use channel::{
    Channel, ChannelConfig, ChannelError, ChannelEvent, ChannelStats, Delivery, GroupStatus,
    Pending,
};
pub use member::{Mode, SEQUENCER};
pub use runtime::Shutdown;
