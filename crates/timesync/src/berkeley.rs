//! Berkeley's algorithm over TCP: the master polls its slaves, estimates each one's offset
//! with round-trip compensation, takes the fault-tolerant average, and tells each process
//! its own correction.
//!
//! Our slaves speak a line protocol: they open with `HELLO`, answer `TIME?` with
//! `NOW <nanoseconds>`, and apply `ADJUST <nanoseconds>`. The seed's slaves instead push
//! their `str(datetime.now())` every few seconds on a connection they keep, and expect an
//! absolute time string back; they are served too, but their offsets cannot be RTT
//! compensated (they measure no round trip), so their bound is reported as unknown.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clock::berkeley::{self, Round};
use clock::cristian::Sample;
use clock::{Estimate, Nanos, seed};

use crate::client::MAX_DRIFT_PPM;
use crate::local_clock::{LocalClock, utc_offset_s};

/// The last time a seed slave pushed, read on its clock and on ours at arrival.
type Pushed = Arc<Mutex<Option<(Nanos, Nanos)>>>;

enum Slave {
    Ours {
        reader: BufReader<TcpStream>,
        writer: TcpStream,
    },
    Seed {
        writer: TcpStream,
        last: Pushed,
        alive: Arc<AtomicBool>,
    },
}

/// One slave's line of a round's report.
#[derive(Debug, Clone)]
pub struct SlaveReport {
    /// Its address.
    pub addr: SocketAddr,
    /// Whether it is one of the seed's slaves (no round trip measured).
    pub seed: bool,
    /// Its estimated offset from the master, and the bound (0 for seed slaves: unknown).
    pub estimate: Estimate,
    /// The correction it was told.
    pub correction_ns: i64,
    /// Whether its offset counted in the average.
    pub counted: bool,
}

/// What one round did.
#[derive(Debug, Clone)]
pub struct RoundReport {
    /// The agreed time as an offset from the master's clock before the round.
    pub average_ns: i64,
    /// The master's own correction.
    pub master_correction_ns: i64,
    /// Every slave that took part.
    pub slaves: Vec<SlaveReport>,
    /// Slaves dropped because their connection failed.
    pub dropped: Vec<SocketAddr>,
}

/// The master of Berkeley's algorithm.
pub struct Master {
    listener: TcpListener,
    /// The master's clock (corrected each round).
    pub clock: LocalClock,
    slaves: HashMap<SocketAddr, Slave>,
    threshold_ns: i64,
    timeout: Duration,
}

impl Master {
    /// Listens on `addr`; offsets more than `threshold_ns` from the median are left out of
    /// the average.
    pub fn bind(addr: SocketAddr, clock: LocalClock, threshold_ns: i64) -> io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            listener,
            clock,
            slaves: HashMap::new(),
            threshold_ns,
            timeout: Duration::from_millis(500),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Slaves connected.
    pub fn slaves(&self) -> usize {
        self.slaves.len()
    }

    /// Takes in the slaves that connected since the last call; each is recognised by what
    /// it sends first (`HELLO`, or a seed time string).
    pub fn accept(&mut self) {
        while let Ok((stream, addr)) = self.listener.accept() {
            if let Err(e) = self.admit(stream, addr) {
                log::warn!("slave {addr} not admitted: {e}");
            }
        }
    }

    fn admit(&mut self, stream: TcpStream, addr: SocketAddr) -> io::Result<()> {
        stream.set_nonblocking(false)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(6)))?;
        let mut first = [0u8; 5];
        stream.peek(&mut first)?;
        let writer = stream.try_clone()?;
        if &first == b"HELLO" {
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            reader.read_line(&mut line)?;
            reader.get_ref().set_read_timeout(Some(self.timeout))?;
            self.slaves.insert(addr, Slave::Ours { reader, writer });
        } else {
            let last: Pushed = Arc::new(Mutex::new(None));
            let alive = Arc::new(AtomicBool::new(true));
            let (l, a, clock) = (last.clone(), alive.clone(), self.clock.clone());
            std::thread::spawn(move || read_seed_pushes(stream, l, a, clock));
            self.slaves.insert(
                addr,
                Slave::Seed {
                    writer,
                    last,
                    alive,
                },
            );
        }
        log::info!("slave {addr} connected");
        Ok(())
    }

    /// Polls every slave, computes the round, sends each its correction and corrects the
    /// master's clock.
    pub fn round(&mut self) -> RoundReport {
        self.accept();
        let mut estimates: Vec<(SocketAddr, Estimate, bool)> = Vec::new();
        let mut dropped = Vec::new();
        for (addr, slave) in &mut self.slaves {
            let estimate = match slave {
                Slave::Ours { reader, writer } => poll(reader, writer, &self.clock),
                Slave::Seed { last, alive, .. } => {
                    if !alive.load(Ordering::Relaxed) {
                        Err(io::ErrorKind::UnexpectedEof.into())
                    } else if let Some((theirs, arrived)) =
                        *last.lock().unwrap_or_else(|p| p.into_inner())
                    {
                        Ok(Estimate {
                            offset_ns: theirs.since(arrived),
                            bound_ns: 0,
                            rtt_ns: 0,
                        })
                    } else {
                        continue;
                    }
                }
            };
            match estimate {
                Ok(e) => estimates.push((*addr, e, matches!(slave, Slave::Seed { .. }))),
                Err(e) => {
                    log::info!("slave {addr} dropped: {e}");
                    dropped.push(*addr);
                }
            }
        }
        for addr in &dropped {
            self.slaves.remove(addr);
        }
        let inputs: Vec<(SocketAddr, Estimate)> =
            estimates.iter().map(|(a, e, _)| (*a, *e)).collect();
        let round: Round<SocketAddr> = berkeley::round(&inputs, self.threshold_ns);
        let agreed = self.clock.now().plus(round.average_ns);
        let offset = utc_offset_s();
        let mut slaves = Vec::new();
        for (s, (_, estimate, is_seed)) in round.slaves.iter().zip(&estimates) {
            let sent = match self.slaves.get_mut(&s.id) {
                Some(Slave::Ours { writer, .. }) => writeln!(writer, "ADJUST {}", s.correction_ns),
                // The seed's slave wants the time itself; transit delay it cannot be told of.
                Some(Slave::Seed { writer, .. }) => {
                    writer.write_all(seed::format(agreed, offset).as_bytes())
                }
                None => Ok(()),
            };
            if sent.is_err() {
                dropped.push(s.id);
                self.slaves.remove(&s.id);
                continue;
            }
            slaves.push(SlaveReport {
                addr: s.id,
                seed: *is_seed,
                estimate: *estimate,
                correction_ns: s.correction_ns,
                counted: s.counted,
            });
        }
        self.clock.adjust(round.master_correction_ns);
        RoundReport {
            average_ns: round.average_ns,
            master_correction_ns: round.master_correction_ns,
            slaves,
            dropped,
        }
    }
}

/// One `TIME?`/`NOW` exchange: the slave's offset from the master, Cristian-style.
fn poll(
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
    clock: &LocalClock,
) -> io::Result<Estimate> {
    let sent = clock.now();
    writer.write_all(b"TIME?\n")?;
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let received = clock.now();
    let theirs: i64 = line
        .trim()
        .strip_prefix("NOW ")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("expected NOW, got {line:?}"),
            )
        })?;
    let mut e = Sample {
        sent,
        server: Nanos(theirs),
        received,
        resolution_ns: 0,
    }
    .estimate();
    e.bound_ns += e.rtt_ns * MAX_DRIFT_PPM / 1_000_000 + 1;
    Ok(e)
}

/// A seed slave's pushes, timestamped on arrival (they come every few seconds; two may
/// arrive in one read, which the seed's own master could not handle).
fn read_seed_pushes(
    mut stream: TcpStream,
    last: Pushed,
    alive: Arc<AtomicBool>,
    clock: LocalClock,
) {
    let _ = stream.set_read_timeout(None);
    let mut buf = [0u8; 1024];
    let mut pending = String::new();
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let arrived = clock.now();
                pending.push_str(&String::from_utf8_lossy(&buf[..n]));
                for text in seed::split(&mut pending) {
                    match seed::parse(&text, utc_offset_s()) {
                        Ok(theirs) => {
                            *last.lock().unwrap_or_else(|p| p.into_inner()) =
                                Some((theirs, arrived))
                        }
                        Err(e) => log::debug!("seed slave sent {e}"),
                    }
                }
            }
        }
    }
    alive.store(false, Ordering::Relaxed);
}

/// What a slave was told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlaveEvent {
    /// The master asked for our time.
    Polled,
    /// The master's correction, applied.
    Adjusted {
        /// The correction.
        correction_ns: i64,
        /// How far our clock is from the real one afterwards (simulated clocks only).
        true_error_ns: i64,
    },
}

/// Runs one of our slaves against `master` until the connection ends or `stop` is set.
pub fn run_slave(
    master: SocketAddr,
    clock: &mut LocalClock,
    stop: &AtomicBool,
    mut on_event: impl FnMut(SlaveEvent),
) -> io::Result<()> {
    let stream = TcpStream::connect(master)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut writer = stream.try_clone()?;
    writer.write_all(b"HELLO\n")?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => return Err(e),
        }
        let text = line.trim();
        if text == "TIME?" {
            writeln!(writer, "NOW {}", clock.now().0)?;
            on_event(SlaveEvent::Polled);
        } else if let Some(n) = text.strip_prefix("ADJUST ").and_then(|n| n.parse().ok()) {
            clock.adjust(n);
            on_event(SlaveEvent::Adjusted {
                correction_ns: n,
                true_error_ns: clock.true_error_ns(),
            });
        } else {
            log::warn!("the master sent {text:?}");
        }
    }
    Ok(())
}
