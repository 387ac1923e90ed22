//! What every member of a group shares — the peers and the sequencer — without I/O.
//!
//! - [`Members`]: who is in a group, where they listen and what they speak, and the
//!   *source rule* that decides which datagrams may be believed to come from them.
//! - [`PeerCore`]: the member protocol of a peer — membership, the Hello/HelloAck handshake
//!   (newer peers announce `Proto` and the start of their stream; old peers get the report's
//!   behaviour), the checks every datagram passes, flow control, sequencer takeover, and the
//!   translation between datagrams and the `ordering` cores. Datagrams and time come in;
//!   [`Transmit`]s, deliveries and events come out.
//! - [`Transmit`]: one datagram to send, the one output type of every member core.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod core;
mod membership;
mod transmit;

pub use crate::core::{CoreConfig, Error, Event, Message, Mode, Output, PeerCore, Traffic};
pub use membership::{MemberInfo, Members, claimed_addr, hello_source};
pub use proto::SEQUENCER;
pub use transmit::Transmit;
