//! Datagrams on their way out of a non-blocking UDP socket.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use mio::net::UdpSocket;

/// Datagrams waiting for a non-blocking socket: each is sent at once when nothing waits
/// before it, and kept, in order, when the socket would block — the event loop calls
/// [`flush`](Self::flush) when the socket is writable again. One multicast shares one buffer
/// among its destinations.
#[derive(Debug, Default)]
pub struct Outbox {
    queue: VecDeque<(SocketAddr, Arc<[u8]>)>,
}

impl Outbox {
    /// An empty outbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends `bytes` to `to` now if possible, else queues it behind what waits.
    pub fn send(&mut self, udp: &UdpSocket, to: SocketAddr, bytes: Arc<[u8]>) {
        self.queue.push_back((to, bytes));
        if self.queue.len() == 1 {
            self.flush(udp);
        }
    }

    /// Sends what waits until the socket would block. A datagram the socket refuses for
    /// another reason (a destination that is gone) is dropped and logged.
    pub fn flush(&mut self, udp: &UdpSocket) {
        while let Some((to, bytes)) = self.queue.front() {
            match udp.send_to(bytes, *to) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => log::debug!("cannot send to {to}: {e}"),
            }
            self.queue.pop_front();
        }
    }

    /// Datagrams waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}
