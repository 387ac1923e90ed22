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

/// A member daemon's loop: a `Poll` watching `udp` (readable, as `udp_token`; writable
/// only when asked through [`WriteWatch`]) and the [`Shutdown`](crate::Shutdown) that
/// wakes it (as `waker_token`).
pub fn poll_udp(
    udp: std::net::UdpSocket,
    udp_token: mio::Token,
    waker_token: mio::Token,
) -> io::Result<(mio::Poll, mio::net::UdpSocket, crate::Shutdown)> {
    let mut udp = mio::net::UdpSocket::from_std(udp);
    let poll = mio::Poll::new()?;
    poll.registry()
        .register(&mut udp, udp_token, mio::Interest::READABLE)?;
    let stop = crate::Shutdown::new(poll.registry(), waker_token)?;
    Ok((poll, udp, stop))
}

/// Whether the loop watches its UDP socket (registered by [`poll_udp`]) for room to write:
/// only while datagrams the socket refused wait in the outbox. Watched always, the socket
/// would wake the loop for an empty turn after nearly every send: a datagram's room is
/// freed once the kernel has handed it on (on loopback, within the `sendto` itself), and
/// each freeing is a writable edge — a turn that takes a CPU from the receivers of what
/// was just sent.
#[derive(Debug)]
pub struct WriteWatch {
    token: mio::Token,
    on: bool,
}

impl WriteWatch {
    /// For the socket [`poll_udp`] registered as `token` (readable only).
    pub fn new(token: mio::Token) -> Self {
        Self { token, on: false }
    }

    /// Watches for room to write while `waiting` (datagrams wait for it), stops once not.
    /// The kernel reports the socket writable at once if it already is.
    pub fn update(
        &mut self,
        registry: &mio::Registry,
        udp: &mut mio::net::UdpSocket,
        waiting: bool,
    ) -> io::Result<()> {
        if waiting == self.on {
            return Ok(());
        }
        let interest = if waiting {
            mio::Interest::READABLE | mio::Interest::WRITABLE
        } else {
            mio::Interest::READABLE
        };
        registry.reregister(udp, self.token, interest)?;
        self.on = waiting;
        Ok(())
    }

    /// [`update`](Self::update)s after a flush of `outbox`: watched while anything waits in
    /// it. A failure is logged: what waits then goes at the loop's next turn.
    pub fn follow(
        &mut self,
        registry: &mio::Registry,
        udp: &mut mio::net::UdpSocket,
        outbox: &crate::Outbox,
    ) {
        if let Err(e) = self.update(registry, udp, !outbox.is_empty()) {
            log::warn!("cannot watch the socket for room to write: {e}");
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const UDP: mio::Token = mio::Token(0);
    const WAKER: mio::Token = mio::Token(1);

    /// Whether a poll of `wait` reports `UDP` writable.
    fn writable_reported(poll: &mut mio::Poll, wait: Duration) -> bool {
        let mut events = mio::Events::with_capacity(8);
        poll.poll(&mut events, Some(wait)).unwrap();
        events.iter().any(|e| e.token() == UDP && e.is_writable())
    }

    #[test]
    fn sending_wakes_the_loop_only_while_it_watches_for_room_to_write() {
        let localhost = SocketAddr::from(([127, 0, 0, 1], 0));
        let receiver = bind_udp(localhost, 0, 0).unwrap();
        let to = receiver.local_addr().unwrap();
        let (mut poll, mut udp, _stop) =
            poll_udp(bind_udp(localhost, 0, 0).unwrap(), UDP, WAKER).unwrap();
        // Registered: writable at once. Not asked for since, so the first poll reports
        // what registering found at most, and sends after it report nothing.
        let _ = writable_reported(&mut poll, Duration::ZERO);
        let mut watch = WriteWatch::new(UDP);
        for _ in 0..3 {
            udp.send_to(b"hello", to).unwrap();
        }
        assert!(!writable_reported(&mut poll, Duration::from_millis(50)));

        // Datagrams wait: the socket is writable, and the loop hears it at once.
        watch.update(poll.registry(), &mut udp, true).unwrap();
        assert!(writable_reported(&mut poll, Duration::from_secs(5)));
        // Asked twice: no second registration.
        watch.update(poll.registry(), &mut udp, true).unwrap();
        udp.send_to(b"hello", to).unwrap();
        assert!(writable_reported(&mut poll, Duration::from_secs(5)));

        // Nothing waits any more: sends wake nobody.
        watch.update(poll.registry(), &mut udp, false).unwrap();
        udp.send_to(b"hello", to).unwrap();
        assert!(!writable_reported(&mut poll, Duration::from_millis(50)));
    }
}
