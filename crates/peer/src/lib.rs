//! The peer daemon of the group messenger: joins groups, multicasts messages to them over
//! UDP, and delivers what the members send in FIFO or total order.
//!
//! - [`PeerCore`]: the protocol without I/O — membership, the Hello/HelloAck handshake
//!   (newer peers announce `Proto` and the start of their stream; old peers get the report's
//!   behaviour), the checks every datagram passes (a datagram must come from the address of
//!   the member it names; a Bye on another's behalf only from the tracker), and the
//!   translation between datagrams and the `ordering` cores.
//! - [`TrackerLink`]: the tracker connection inside an event loop, with reconnection.
//! - [`Peer`]: one mio loop over the UDP socket, standard input, the tracker link and
//!   timers, in interactive or script mode.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod command;
pub mod console;
mod core;
mod membership;
mod peer;
pub mod report;
mod tracker_link;

pub use crate::core::{
    CoreConfig, Error, Event, Message, Mode, Output, PeerCore, SEQUENCER, Traffic,
};
pub use membership::{MemberInfo, Members, claimed_addr, hello_source};
pub use peer::{Console, Peer, PeerError, PeerOptions, Script, Shutdown};
pub use tracker_link::{LinkEvent, TrackerLink};
