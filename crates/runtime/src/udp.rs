//! Binding the daemons' UDP sockets.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// A non-blocking UDP socket bound to `addr`, with receive and send buffers of the given
/// sizes so that bursts are absorbed rather than dropped (the kernel may grant less, which
/// is not an error; 0 keeps the system's default).
pub fn bind_udp(
    addr: SocketAddr,
    recv_buffer: usize,
    send_buffer: usize,
) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if recv_buffer > 0 {
        let _ = socket.set_recv_buffer_size(recv_buffer);
    }
    if send_buffer > 0 {
        let _ = socket.set_send_buffer_size(send_buffer);
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}
