//! Wire types of the group messenger and their JSON encoding, compatible with the report's
//! Python implementation. No I/O: bytes in, typed values out, and back.
//!
//! - [`Request`] and [`Reply`]: tracker control (`{"Type": n, "Content": ...}` over TCP;
//!   heartbeats also as a UDP datagram of the same form).
//! - [`Datagram`]: group traffic over UDP (Hello, Application, Bye, and the newer Types that
//!   only peers announcing [`PROTOCOL_VERSION`] receive).
//! - [`JsonFramer`]: splits a TCP stream into consecutive JSON values.
//!
//! Every decoder checks the size limit before parsing and returns an [`Error`] that says what
//! was wrong; decoding is pure, so a rejected input changes nothing.
//!
//! ```
//! use proto::{Datagram, DatagramType, LEGACY_DATAGRAM_LEN};
//!
//! let src = "127.0.0.1:5000".parse().unwrap();
//! let hello = Datagram::new(DatagramType::Application, "books", "ford", "hi", src, 1, "ford");
//! let bytes = hello.encode(LEGACY_DATAGRAM_LEN)?;
//! assert_eq!(Datagram::decode(&bytes)?, hello);
//! # Ok::<(), proto::Error>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod bundle;
pub mod compact;
mod control;
mod datagram;
mod error;
mod framing;

/// The username of the sequencer in every group (the report's convention): reserved at the
/// tracker, and the author of every total-order delivery's copy.
pub const SEQUENCER: &str = "sequencer";

pub use control::{
    Envelope, GroupOrder, MAX_NAME_LEN, MAX_REQUEST_LEN, Member, Reply, Request, Secret, check_name,
};
pub use datagram::{
    CounterRange, Datagram, DatagramType, LEGACY_DATAGRAM_LEN, MAX_DATAGRAM_LEN, MAX_FRONTIER,
    MAX_RANGES, PROTOCOL_VERSION,
};
pub use error::Error;
pub use framing::JsonFramer;
