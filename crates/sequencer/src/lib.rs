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
//!
//! # Across a sequencer crash
//!
//! A new sequencer (a restart at the same address) takes a group over from the members'
//! Hellos: each names the earlier sequencer's epoch, what it delivered of each author, and
//! the last number of the earlier sequence it reached. The guarantee is *uniform agreement
//! among survivors*: every member's total-order sequence stays a suffix, from where it
//! joined, of one sequence. What the dying sequencer had sent to some members only is
//! fetched from the member that delivered furthest and ordered again first, in its old
//! order; then each author resumes after the highest counter any member delivered.
//!
//! Bounds: members keep their last 4,096 deliveries (at most 4 MiB of payload) for this; a
//! member further behind than that lacks what fell out. Members are awaited for 0.5 s, and
//! up to 2 s for any the tracker lists that has not greeted; one silent longer keeps its
//! place but does not count. If the furthest member does not answer in 0.5 s (it died too),
//! the next furthest is asked. A crash while members are still joining (their place in the
//! sequence not yet fixed) can still give a late joiner messages from before its place.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod node;
mod recovery;
mod server;

pub use node::{NodeOutput, NodeTraffic, SequencerNode, Submitted};
pub use server::{News, SequencerServer, Shutdown};
