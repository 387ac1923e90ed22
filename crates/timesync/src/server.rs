//! A time server: on TCP it writes one `str(datetime.now())` time string per connection and
//! closes it (what the seed's Cristian client expects); on UDP, same port, it answers NTP
//! client requests (RFC 5905), so that `sntp`, `ntpdate` and `chronyd` can use it.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use clock::{ntp, seed};

use crate::local_clock::{LocalClock, utc_offset_s};

/// A running time server; stopped (and its threads joined) when dropped.
pub struct TimeServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Requests answered: TCP time strings, then NTP.
    pub served: Arc<[AtomicU64; 2]>,
}

impl TimeServer {
    /// Serves `clock`'s time on `addr` (TCP and UDP, same port; port 0 picks one) with the
    /// given NTP `stratum`.
    pub fn start(addr: SocketAddr, clock: LocalClock, stratum: u8) -> io::Result<Self> {
        let (tcp, udp) = bind_both(addr)?;
        let addr = tcp.local_addr()?;
        udp.set_read_timeout(Some(Duration::from_millis(100)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let served: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let offset = utc_offset_s();
        let mut threads = Vec::new();
        {
            let (stop, clock, served) = (stop.clone(), clock.clone(), served.clone());
            threads.push(std::thread::spawn(move || {
                // A blocking accept answers at once (a polling one would read the clock late
                // and bias every estimate); `drop` wakes it with a connection of its own.
                while let Ok((mut conn, _)) = tcp.accept() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    // The time is read as late as possible: right before it is sent.
                    let text = seed::format(clock.now(), offset);
                    let _ = conn.write_all(text.as_bytes());
                    served[0].fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        {
            let (stop, served) = (stop.clone(), served.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 512];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = udp.recv_from(&mut buf) else {
                        continue;
                    };
                    let received = clock.now();
                    match ntp::answer(&buf[..n], received, clock.now(), stratum) {
                        Ok(answer) => {
                            let _ = udp.send_to(&answer, from);
                            served[1].fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => log::debug!("ignored a datagram from {from}: {e}"),
                    }
                }
            }));
        }
        Ok(Self {
            addr,
            stop,
            threads,
            served,
        })
    }

    /// The address it serves on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TimeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = std::net::TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// TCP and UDP on one port (with port 0, the TCP port is chosen and UDP follows).
fn bind_both(addr: SocketAddr) -> io::Result<(TcpListener, UdpSocket)> {
    let mut last = None;
    for _ in 0..16 {
        let tcp = TcpListener::bind(addr)?;
        match UdpSocket::bind(tcp.local_addr()?) {
            Ok(udp) => return Ok((tcp, udp)),
            Err(e) if addr.port() == 0 => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::ErrorKind::AddrInUse.into()))
}
