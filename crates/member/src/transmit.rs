//! The one output type for a datagram to send, shared by the peer and the sequencer cores.

use std::net::SocketAddr;
use std::sync::Arc;

use seal::Sealer;

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
    /// For a sealed group: seal it with this as it leaves (a bundle of datagrams that share
    /// it is sealed whole). Only datagrams sealed with the same sealer may share a bundle.
    pub seal: Option<Arc<Sealer>>,
}

impl Transmit {
    /// The bytes to put on the wire for this datagram alone: sealed if it must be.
    pub fn wire(&self) -> std::borrow::Cow<'_, [u8]> {
        match &self.seal {
            Some(sealer) => std::borrow::Cow::Owned(sealer.seal(&self.bytes, self.to)),
            None => std::borrow::Cow::Borrowed(&self.bytes),
        }
    }
}
