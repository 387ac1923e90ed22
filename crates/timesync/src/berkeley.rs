//! Berkeley's algorithm over TCP: the master polls its slaves, estimates each one's offset
//! with round-trip compensation, takes the fault-tolerant average, and tells each process
//! its own correction.
//!
//! Our slaves speak a line protocol with our master: the master greets a slave that says
//! nothing with `BERKELEY 1`, the slave answers `HELLO`, then answers `TIME?` with
//! `NOW <nanoseconds>` and applies `ADJUST <nanoseconds>`. The seed's slaves instead push
//! their `str(datetime.now())` every few seconds on a connection they keep, and expect an
//! absolute time string back; they are served too, but their offsets cannot be RTT
//! compensated (they measure no round trip), so their bound is reported as unknown.
//!
//! Who speaks first tells the programs apart, and nobody sends the other side a line it
//! cannot read. The seed's slave sends its time the moment it connects; our slave waits
//! [`GREETING_WAIT`] for our master's greeting. So our master waits [`SILENCE`] after
//! accepting: a slave that has sent something by then is a seed slave (never greeted,
//! since a greeting would kill its reader); one still silent is ours, and is greeted. The
//! seed's master never speaks first (it sends a synchronized time only to slaves that
//! pushed theirs), so our slave that hears no greeting is talking to it, and behaves as
//! the seed's slave: it pushes its time string every few seconds and applies the
//! synchronized times it is sent. Anything but a time string would end the seed master's
//! reader thread for that slave (it parses every read as a time).

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clock::berkeley::{self, Round};
use clock::cristian::Sample;
use clock::{Estimate, Nanos, seed};

use crate::client::{MAX_DRIFT_PPM, is_timeout};
use crate::local_clock::{LocalClock, utc_offset_s};

/// How long our master waits after accepting a slave before it takes the slave's silence
/// for one of ours and greets it (the seed's slaves send their time at once).
pub const SILENCE: Duration = Duration::from_millis(300);

/// How long our slave waits for our master's greeting before it takes the master for the
/// seed's, which never speaks first.
pub const GREETING_WAIT: Duration = Duration::from_millis(1500);

/// Our master's greeting to a slave that stayed silent.
const GREETING: &str = "BERKELEY 1";

/// How often a slave of the seed's master pushes its time (the seed's slaves: 5 s).
pub const SEED_PUSH_INTERVAL: Duration = Duration::from_secs(5);

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

    /// Takes in the slaves that connected since the last call; each is recognised by
    /// whether it speaks first (a seed slave's time string) or waits to be greeted (ours).
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
        stream.set_read_timeout(Some(SILENCE))?;
        let mut first = [0u8; 1];
        let silent = match stream.peek(&mut first) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => false,
            Err(e) if is_timeout(&e) => true,
            Err(e) => return Err(e),
        };
        let mut writer = stream.try_clone()?;
        if silent {
            writeln!(writer, "{GREETING}")?;
            stream.set_read_timeout(Some(Duration::from_secs(6)))?;
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            reader.read_line(&mut line)?;
            if line.trim() != "HELLO" {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("greeted, it answered {:?} instead of HELLO", line.trim()),
                ));
            }
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
    /// The master is ours (it greeted us): offsets are measured with round trips.
    OurMaster,
    /// The master never greeted us: it is taken for the seed's, and we behave as its
    /// slaves do (push our time string, apply the synchronized time it sends).
    SeedMaster,
    /// The master asked for our time.
    Polled,
    /// The master's correction, applied.
    Adjusted {
        /// The correction.
        correction_ns: i64,
        /// Our clock's reading just after the correction: the synchronized time.
        synchronized: Nanos,
        /// How far our clock is from the real one afterwards (simulated clocks only).
        true_error_ns: i64,
    },
}

/// Runs a slave against `master` (ours, or the seed's: see the module docs for how it
/// tells them apart) until the connection ends or `stop` is set. With the seed's master
/// it pushes its time every `push_interval` (the seed's slaves: [`SEED_PUSH_INTERVAL`]).
pub fn run_slave(
    master: SocketAddr,
    clock: &mut LocalClock,
    stop: &AtomicBool,
    push_interval: Duration,
    mut on_event: impl FnMut(SlaveEvent),
) -> io::Result<()> {
    let stream = TcpStream::connect(master)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(GREETING_WAIT))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let greeted = match reader.read_line(&mut line) {
        Ok(0) => return Ok(()),
        Ok(_) => line.trim() == GREETING,
        Err(e) if is_timeout(&e) => false,
        Err(e) => return Err(e),
    };
    if !greeted {
        // Silence, or anything but our master's greeting: only time strings go back.
        on_event(SlaveEvent::SeedMaster);
        return serve_seed_master(reader, writer, line, clock, stop, push_interval, on_event);
    }
    on_event(SlaveEvent::OurMaster);
    writer.write_all(b"HELLO\n")?;
    reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(200)))?;
    while !stop.load(Ordering::Relaxed) {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {
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
                synchronized: clock.now(),
                true_error_ns: clock.true_error_ns(),
            });
        } else {
            log::warn!("the master sent {text:?}");
        }
    }
    Ok(())
}

/// A slave of the seed's master: pushes our time string (nothing else, no newline, as the
/// seed's slaves do) every `push_interval`, and sets our clock to each synchronized time
/// it is sent. `pending` holds what was read already.
fn serve_seed_master(
    mut reader: BufReader<TcpStream>,
    mut writer: TcpStream,
    mut pending: String,
    clock: &mut LocalClock,
    stop: &AtomicBool,
    push_interval: Duration,
    mut on_event: impl FnMut(SlaveEvent),
) -> io::Result<()> {
    reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(50)))?;
    let mut next_push = std::time::Instant::now();
    let mut buf = [0u8; 1024];
    while !stop.load(Ordering::Relaxed) {
        if std::time::Instant::now() >= next_push {
            writer.write_all(seed::format(clock.now(), utc_offset_s()).as_bytes())?;
            next_push += push_interval;
        }
        match reader.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => pending.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(e) if is_timeout(&e) => {
                continue;
            }
            Err(e) => return Err(e),
        }
        for text in seed::split(&mut pending) {
            match seed::parse(&text, utc_offset_s()) {
                Ok(agreed) => {
                    let correction_ns = agreed.since(clock.now());
                    clock.adjust(correction_ns);
                    on_event(SlaveEvent::Adjusted {
                        correction_ns,
                        synchronized: clock.now(),
                        true_error_ns: clock.true_error_ns(),
                    });
                }
                Err(e) => log::warn!("the master sent {e}"),
            }
        }
    }
    Ok(())
}
