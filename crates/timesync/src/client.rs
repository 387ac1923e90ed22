//! Clients: Cristian's algorithm over the seed's TCP time strings, and an NTP query.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use clock::cristian::{Cristian, Sample};
use clock::{Estimate, ntp, seed};

use crate::local_clock::{LocalClock, utc_offset_s};

/// Clocks are assumed to drift at most this much (NTP's tolerance); over a round trip it
/// widens every bound a little.
pub const MAX_DRIFT_PPM: i64 = 500;

fn widen(mut e: Estimate) -> Estimate {
    e.bound_ns += e.rtt_ns * MAX_DRIFT_PPM / 1_000_000 + 1;
    e
}

/// One Cristian exchange with a server that writes a time string and closes (ours or the
/// seed's).
pub fn cristian_sample(
    server: SocketAddr,
    clock: &LocalClock,
    timeout: Duration,
) -> io::Result<Sample> {
    let sent = clock.now();
    let mut stream = TcpStream::connect_timeout(&server, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let received = clock.now();
    let server_time = seed::parse(&text, utc_offset_s())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(Sample {
        sent,
        server: server_time,
        received,
        // The string has microseconds: the server's time is truncated by up to 1 µs.
        resolution_ns: 1_000,
    })
}

/// Cristian's algorithm with `samples` exchanges; the best (smallest round trip) wins.
pub fn cristian(
    server: SocketAddr,
    clock: &LocalClock,
    samples: usize,
    timeout: Duration,
) -> io::Result<Estimate> {
    let mut c = Cristian::new();
    let mut last_error = None;
    for _ in 0..samples.max(1) {
        match cristian_sample(server, clock, timeout) {
            Ok(s) => c.add(s),
            // A server that never answered is not waited for again and again.
            Err(e) if c.best().is_none() && is_timeout(&e) => return Err(silent(timeout)),
            Err(e) => last_error = Some(e),
        }
    }
    c.best()
        .map(widen)
        .ok_or_else(|| last_error.unwrap_or_else(|| io::ErrorKind::TimedOut.into()))
}

/// One NTP exchange over `socket` (which may be shared with other traffic: answers that
/// are not ours are skipped).
pub fn ntp_sample(
    socket: &UdpSocket,
    server: SocketAddr,
    clock: &LocalClock,
    timeout: Duration,
) -> io::Result<Estimate> {
    socket.set_read_timeout(Some(timeout))?;
    let sent = clock.now();
    socket.send_to(&ntp::request(sent), server)?;
    let mut buf = [0u8; 512];
    loop {
        let (n, from) = socket.recv_from(&mut buf)?;
        let received = clock.now();
        if from != server {
            continue;
        }
        match ntp::estimate(&buf[..n], sent, received) {
            Ok(e) => return Ok(widen(e)),
            Err(ntp::NtpError::Bogus) => continue,
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }
}

/// `samples` NTP exchanges; the one with the smallest delay wins.
pub fn ntp_query(
    server: SocketAddr,
    clock: &LocalClock,
    samples: usize,
    timeout: Duration,
) -> io::Result<Estimate> {
    let socket = UdpSocket::bind(if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })?;
    let mut best: Option<Estimate> = None;
    let mut last_error = None;
    for _ in 0..samples.max(1) {
        match ntp_sample(&socket, server, clock, timeout) {
            Ok(e) if best.is_none_or(|b| e.rtt_ns < b.rtt_ns) => best = Some(e),
            Ok(_) => {}
            Err(e) if best.is_none() && is_timeout(&e) => return Err(silent(timeout)),
            Err(e) => last_error = Some(e),
        }
    }
    best.ok_or_else(|| last_error.unwrap_or_else(|| io::ErrorKind::TimedOut.into()))
}

/// Whether `e` is a read that timed out (which the OS reports as "would block" for a socket
/// with a read timeout).
pub(crate) fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// The error for a server that did not answer within `timeout`.
fn silent(timeout: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no answer within {} ms", timeout.as_millis()),
    )
}
