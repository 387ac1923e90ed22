//! Binding the daemons' UDP sockets, and reading them a batch at a time.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

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

/// The interface IP multicast uses for a member at `addr`: the one of its IPv4 address
/// (127.0.0.1: loopback). IP multicast is IPv4 only here, and needs a definite interface.
pub fn multicast_interface(addr: SocketAddr) -> io::Result<Ipv4Addr> {
    match addr.ip() {
        IpAddr::V4(ip) if !ip.is_unspecified() => Ok(ip),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("IP multicast needs a definite IPv4 address to send from, not {addr}"),
        )),
    }
}

/// A non-blocking socket that receives what is sent to the IP multicast `group` on
/// `interface`: bound to the group's address and port (so nothing else sent to that port
/// reaches it), shared with the other members on this host (`SO_REUSEADDR`: each gets every
/// datagram).
pub fn join_multicast(
    group: SocketAddr,
    interface: Ipv4Addr,
    recv_buffer: usize,
) -> io::Result<std::net::UdpSocket> {
    let IpAddr::V4(ip) = group.ip() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{group} is not an IPv4 multicast group"),
        ));
    };
    if !ip.is_multicast() || group.port() == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{group} is not an IPv4 multicast group and port (224.0.0.0/4, port > 0)"),
        ));
    }
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    if recv_buffer > 0 {
        let _ = socket.set_recv_buffer_size(recv_buffer);
    }
    socket.set_nonblocking(true)?;
    socket.bind(&group.into())?;
    socket.join_multicast_v4(&ip, &interface)?;
    Ok(socket.into())
}

/// Makes `udp` send IP multicast out of `interface`, to this link only (TTL 1), and to the
/// other members on this host too (loopback on).
pub fn send_multicast_on(udp: &impl std::os::fd::AsFd, interface: Ipv4Addr) -> io::Result<()> {
    let socket = socket2::SockRef::from(udp);
    socket.set_multicast_if_v4(&interface)?;
    socket.set_multicast_ttl_v4(1)?;
    socket.set_multicast_loop_v4(true)
}

/// A member daemon's loop: a `Poll` watching `udp` (readable and writable, as `udp_token`)
/// and the [`Shutdown`] that wakes it (as `waker_token`).
pub fn poll_udp(
    udp: std::net::UdpSocket,
    udp_token: mio::Token,
    waker_token: mio::Token,
) -> io::Result<(mio::Poll, mio::net::UdpSocket, crate::Shutdown)> {
    let mut udp = mio::net::UdpSocket::from_std(udp);
    let poll = mio::Poll::new()?;
    poll.registry().register(
        &mut udp,
        udp_token,
        mio::Interest::READABLE | mio::Interest::WRITABLE,
    )?;
    let stop = crate::Shutdown::new(poll.registry(), waker_token)?;
    Ok((poll, udp, stop))
}

/// Reads at most `max` datagrams from `udp` into `buf`, handing each to `handle`: a batch,
/// after which the loop gives other work a turn. Returns whether more may be waiting (the
/// batch was used up) rather than the socket being empty. Failures other than "empty" are
/// logged and skipped: one bad datagram (an ICMP error reported on the socket, say) must
/// not stop a daemon.
pub fn read_batch(
    udp: &mio::net::UdpSocket,
    buf: &mut [u8],
    max: usize,
    mut handle: impl FnMut(SocketAddr, &[u8]),
) -> bool {
    for _ in 0..max {
        match udp.recv_from(buf) {
            Ok((n, from)) => handle(from, &buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => log::debug!("udp: {e}"),
        }
    }
    true
}
