//! The sequencer daemon of the group messenger: gives each group's messages one total order.
//!
//! Every member in total-order mode sends its messages only to the sequencer; the sequencer
//! orders each author's messages FIFO (recovering their losses), numbers them in one
//! sequence per group, and multicasts each to every member with `Username` `sequencer` and
//! `Origin` the author. Members that lose some of the sequence ask for it again.
//!
//! - [`SequencerNode`]: the protocol without I/O (membership from Hello and Bye, the
//!   handshake that tells a new member where the sequence starts, datagram mapping).
//! - [`SequencerServer`]: one mio loop around it, registered with the tracker and sending
//!   heartbeats like any member.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod node;
mod recovery;
mod server;

pub use node::{NodeOutput, NodeTraffic, SequencerNode, Submitted};
pub use server::{SequencerServer, Shutdown, TrackerNews};
