//! The one output type for a datagram to send, shared by the peer and the sequencer cores.

use std::net::SocketAddr;
use std::sync::Arc;

/// One datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Destination.
    pub to: SocketAddr,
    /// The encoded datagram; one multicast shares one buffer among its destinations.
    pub bytes: Arc<[u8]>,
    /// The destination reads bundles (it announced [`proto::bundle::BUNDLE_VERSION`]): the
    /// caller may pack this datagram with others queued for it.
    pub bundle: bool,
}
