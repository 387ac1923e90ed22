//! The tracker's event loop: one mio `Poll` over the TCP listener, the client connections,
//! the UDP socket and a waker, feeding the [`Registry`] and writing what it answers. Nothing
//! in the loop blocks but the shared registry's writes to etcd (see [`crate::store`]); a slow
//! or silent client costs only its own connection.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Token};
use proto::{Envelope, PROTOCOL_VERSION, Reply, Request};

use crate::config::TrackerConfig;
use crate::connection::{Connection, Status};
use crate::registry::{Eviction, Probe, Registry, RegistryOutput, Via};
use crate::stats::{Stats, bump};
use crate::store::Store;

const LISTENER: Token = Token(0);
const UDP: Token = Token(1);
const WAKER: Token = Token(2);
const FIRST_CONNECTION: usize = 3;

/// Most Bye datagrams waiting for the UDP socket; beyond it the oldest are dropped (their
/// How many times each eviction notice is sent (at 10 % loss, all three are lost once in
/// a thousand).
const NOTICE_COPIES: usize = 3;

/// members will learn of the eviction from the tracker's member lists).
const OUTBOX_LIMIT: usize = 100_000;

/// Under load, the UDP socket is read in batches this far apart instead of waking the loop
/// for every datagram: with thousands of members that is the difference between thousands
/// of wake-ups a second and a hundred. A heartbeat waits at most this long, against an
/// interval of a second. An idle socket wakes the loop at once again.
const HEARTBEAT_BATCH: Duration = Duration::from_millis(10);

/// Datagrams per [`LOAD_WINDOW`] above which the socket is read in batches. Below it every
/// datagram is read at once, so the time the tracker serves (NTP) is answered promptly.
const LOAD_THRESHOLD: u32 = 100;
const LOAD_WINDOW: Duration = Duration::from_millis(100);

/// Stops a running [`Tracker`] from another thread (or a signal handler).
pub use runtime::Shutdown;

/// The tracker daemon: bind it, then [`run`](Self::run) it until [`Shutdown::shutdown`].
#[derive(Debug)]
pub struct Tracker {
    config: TrackerConfig,
    poll: Poll,
    listener: TcpListener,
    udp: UdpSocket,
    local_addr: SocketAddr,
    stop: Shutdown,
    store: Store,
    connections: HashMap<Token, Connection>,
    next_token: usize,
    outbox: VecDeque<(SocketAddr, Arc<[u8]>)>,
    /// The interest the UDP socket is registered with (`None`: not registered).
    udp_interest: Option<Interest>,
    /// While heartbeats are read in batches: when the next batch is due.
    next_udp_read: Option<Instant>,
    /// Datagrams read in the current load window, and when it began.
    udp_load: (u32, Instant),
    stats: Arc<Stats>,
    /// Scratch space for every read (datagrams and connections), allocated once.
    buf: Box<[u8]>,
}

impl Tracker {
    /// Binds the TCP listener and the UDP socket on the same address and port (port 0 picks
    /// one free for both).
    pub fn bind(config: TrackerConfig) -> io::Result<Self> {
        let (listener, udp) = bind_pair(config.addr)?;
        let local_addr = listener.local_addr()?;
        let mut listener = TcpListener::from_std(listener);
        let mut udp = UdpSocket::from_std(udp);
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        poll.registry()
            .register(&mut udp, UDP, Interest::READABLE)?;
        let stop = Shutdown::new(poll.registry(), WAKER)?;
        let registry = Registry::new(config.liveness.clone(), config.sequencer);
        let store = match &config.shared {
            None => Store::local(registry),
            Some(shared) => {
                let waker = stop.clone();
                Store::shared(
                    registry,
                    shared,
                    local_addr,
                    move || waker.wake(),
                    Instant::now(),
                )
                .map_err(|e| io::Error::other(format!("the shared registry: {e}")))?
            }
        };
        Ok(Self {
            config,
            poll,
            listener,
            udp,
            local_addr,
            stop,
            store,
            connections: HashMap::new(),
            next_token: FIRST_CONNECTION,
            outbox: VecDeque::new(),
            udp_interest: Some(Interest::READABLE),
            next_udp_read: None,
            udp_load: (0, Instant::now()),
            stats: Arc::new(Stats::default()),
            buf: vec![0; 64 * 1024].into_boxed_slice(),
        })
    }

    /// The address the tracker listens on (TCP and UDP).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle that stops the tracker.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.stop.clone()
    }

    /// Calls made to the shared registry's etcd cluster so far (0 when not shared).
    pub fn etcd_calls(&self) -> u64 {
        self.store.etcd_calls()
    }

    /// The tracker's running totals, readable while it runs.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// How often liveness and idle connections are checked: a quarter of the heartbeat
    /// interval, so an eviction comes between 2 and 2.25 intervals of silence.
    fn sweep_interval(&self) -> Duration {
        (self.config.liveness.heartbeat / 4)
            .clamp(Duration::from_millis(5), Duration::from_millis(250))
    }

    /// Serves until [`Shutdown::shutdown`] is called.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut next_sweep = Instant::now() + self.sweep_interval();
        while !self.stop.requested() {
            let wake = self
                .next_udp_read
                .map_or(next_sweep, |at| at.min(next_sweep));
            let timeout = wake.saturating_duration_since(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(now),
                    UDP => {
                        if event.is_readable() {
                            self.read_udp_batch(now);
                        }
                    }
                    WAKER => self.store.catch_up(now),
                    token => self.serve(token, now),
                }
            }
            if self.next_udp_read.is_some_and(|at| now >= at) {
                self.read_udp_batch(now);
            }
            if now >= next_sweep {
                self.store.handle_timeout(now);
                self.close_expired(now);
                next_sweep = now + self.sweep_interval();
            }
            self.drain_registry();
            self.flush_outbox()?;
        }
        log::info!("tracker at {} stopped", self.local_addr);
        Ok(())
    }

    fn accept(&mut self, now: Instant) {
        loop {
            match self.listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer, now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of file descriptors, say: keep serving what is open.
                    log::warn!("accepting a connection failed: {e}");
                    return;
                }
            }
        }
    }

    fn admit(&mut self, mut stream: TcpStream, peer: SocketAddr, now: Instant) {
        if self.connections.len() >= self.config.max_connections {
            bump(&self.stats.connections_refused);
            log::warn!(
                "refusing {peer}: {} connections open",
                self.connections.len()
            );
            let mut busy = Reply::failure("tracker busy: too many connections").encode();
            busy.push(b'\n');
            let _ = stream.write(&busy);
            return;
        }
        bump(&self.stats.connections_accepted);
        let mut conn = Connection::new(stream, peer, self.config.max_request_len, now);
        // The report's client writes its request right after connecting, so it is usually
        // here already: answer it before the connection ever enters epoll, and most one-shot
        // connections are served and closed with no epoll call at all.
        let wants_write = match conn.pump(
            now,
            &mut self.store,
            &self.stats,
            self.config.max_request_len,
            &mut self.buf,
        ) {
            Status::Close => return,
            Status::Keep { wants_write } => wants_write,
        };
        let token = Token(self.next_token);
        self.next_token += 1;
        let interest = if wants_write {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut conn.stream, token, interest)
        {
            log::warn!("cannot watch the connection of {peer}: {e}");
            return;
        }
        log::debug!("{peer}: connected");
        self.connections.insert(token, conn);
    }

    fn serve(&mut self, token: Token, now: Instant) {
        let Some(conn) = self.connections.get_mut(&token) else {
            return;
        };
        match conn.pump(
            now,
            &mut self.store,
            &self.stats,
            self.config.max_request_len,
            &mut self.buf,
        ) {
            Status::Close => self.close(token),
            Status::Keep { wants_write } => {
                let interest = if wants_write {
                    Interest::READABLE | Interest::WRITABLE
                } else {
                    Interest::READABLE
                };
                if self
                    .poll
                    .registry()
                    .reregister(&mut conn.stream, token, interest)
                    .is_err()
                {
                    self.close(token);
                }
            }
        }
    }

    fn close(&mut self, token: Token) {
        if let Some(mut conn) = self.connections.remove(&token) {
            let _ = self.poll.registry().deregister(&mut conn.stream);
            log::debug!("{}: closed", conn.peer);
        }
    }

    fn close_expired(&mut self, now: Instant) {
        let idle = self.config.idle_timeout;
        let expired: Vec<Token> = self
            .connections
            .iter()
            .filter(|(_, c)| c.expired(now, idle))
            .map(|(t, _)| *t)
            .collect();
        for token in expired {
            bump(&self.stats.connections_timed_out);
            self.close(token);
        }
    }

    /// Reads every waiting datagram. Under load (more than [`LOAD_THRESHOLD`] datagrams in a
    /// [`LOAD_WINDOW`]) more are likely: the socket leaves epoll and is read again after
    /// [`HEARTBEAT_BATCH`]; otherwise, or once a read finds nothing, it waits in epoll.
    fn read_udp_batch(&mut self, now: Instant) {
        let received = self.read_udp(now) as u32;
        if now - self.udp_load.1 >= LOAD_WINDOW {
            self.udp_load = (0, now);
        }
        self.udp_load.0 += received;
        let loaded = self.udp_load.0 > LOAD_THRESHOLD;
        self.next_udp_read = (received > 0 && loaded).then(|| now + HEARTBEAT_BATCH);
    }

    /// Reads datagrams until the socket is empty; returns how many.
    fn read_udp(&mut self, now: Instant) -> usize {
        let mut received = 0;
        loop {
            let (len, from) = match self.udp.recv_from(&mut self.buf) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return received,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // An ICMP error for an earlier send (a member that is gone): carry on.
                    log::debug!("udp: {e}");
                    continue;
                }
            };
            received += 1;
            if clock::ntp::is_request(&self.buf[..len]) {
                // The tracker is the messenger's time server: NTP on the heartbeat port.
                self.answer_ntp(from, len);
                continue;
            }
            let reply =
                match Envelope::decode_limited(&self.buf[..len], self.config.max_request_len) {
                    Ok(envelope) => self.store.handle_envelope(now, envelope, Via::Udp(from)),
                    Err(e) => Reply::failure(format!("bad datagram: {e}")),
                };
            if reply.success {
                bump(&self.stats.heartbeats_udp);
            } else {
                bump(&self.stats.datagrams_dropped);
                log::debug!(
                    "dropped a datagram from {from}: {}",
                    reply.text().unwrap_or_default()
                );
            }
        }
    }

    /// Answers an NTP client request (RFC 5905) with the system clock.
    fn answer_ntp(&mut self, from: SocketAddr, len: usize) {
        let received = clock::Nanos::from_system(SystemTime::now());
        match clock::ntp::answer(
            &self.buf[..len],
            received,
            clock::Nanos::from_system(SystemTime::now()),
            1,
        ) {
            Ok(answer) => {
                bump(&self.stats.ntp_answers);
                self.outbox.push_back((from, Arc::from(&answer[..])));
            }
            Err(e) => {
                bump(&self.stats.datagrams_dropped);
                log::debug!("bad NTP request from {from}: {e}");
            }
        }
    }

    /// Sends what the registry asks: probes and eviction notices.
    fn drain_registry(&mut self) {
        while let Some(output) = self.store.registry.poll_output() {
            match output {
                RegistryOutput::Probe(probe) => self.send_probe(probe),
                RegistryOutput::Eviction(eviction) => self.announce_eviction(eviction),
            }
        }
    }

    /// Asks a suspect member whether it is alive: a Heartbeat request in its name, sent to
    /// its address, which a newer member answers with a heartbeat at once.
    fn send_probe(&mut self, probe: Probe) {
        {
            let bytes = Envelope {
                request: Request::Heartbeat {
                    username: probe.username,
                },
                proto: Some(PROTOCOL_VERSION),
                secret: None,
                seal: None,
            }
            .encode();
            if self.outbox.len() >= OUTBOX_LIMIT {
                self.outbox.pop_front();
            }
            self.outbox.push_back((probe.addr, Arc::from(bytes)));
        }
    }

    /// Logs an eviction with its reason, and queues a Bye on the evicted member's behalf to
    /// every remaining member of each of its groups, and to the member itself if it speaks
    /// the newer protocol.
    fn announce_eviction(&mut self, eviction: Eviction) {
        {
            bump(&self.stats.evictions);
            let m = &eviction.member;
            log::warn!(
                "evicted {:?} ({}:{}): silent for {:.2?}, more than {} x its {:?} heartbeat interval; \
                 telling {} group(s)",
                m.username,
                m.ip,
                m.port,
                eviction.silent_for,
                self.config.liveness.multiplier,
                eviction.interval,
                eviction.groups.len()
            );
            // Each notice goes out NOTICE_COPIES times, back to back: one lost datagram
            // would leave a member waiting for a dead one (a Bye is idempotent everywhere,
            // the report's peers included).
            for (to, bytes) in eviction.notices() {
                for _ in 0..NOTICE_COPIES {
                    if self.outbox.len() >= OUTBOX_LIMIT {
                        self.outbox.pop_front();
                    }
                    bump(&self.stats.byes_sent);
                    self.outbox.push_back((to, bytes.clone()));
                }
            }
        }
    }

    fn flush_outbox(&mut self) -> io::Result<()> {
        while let Some((to, bytes)) = self.outbox.front() {
            match self.udp.send_to(bytes, *to) {
                Ok(_) => {
                    self.outbox.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("cannot send a Bye to {to}: {e}");
                    self.outbox.pop_front();
                }
            }
        }
        // Readable only while not reading in batches; writable only while Byes wait.
        let readable = self.next_udp_read.is_none().then_some(Interest::READABLE);
        let writable = (!self.outbox.is_empty()).then_some(Interest::WRITABLE);
        let wanted = match (readable, writable) {
            (Some(r), Some(w)) => Some(r | w),
            (r, w) => r.or(w),
        };
        if wanted != self.udp_interest {
            let registry = self.poll.registry();
            match (self.udp_interest, wanted) {
                (None, Some(i)) => registry.register(&mut self.udp, UDP, i)?,
                (Some(_), Some(i)) => registry.reregister(&mut self.udp, UDP, i)?,
                (Some(_), None) => registry.deregister(&mut self.udp)?,
                (None, None) => {}
            }
            self.udp_interest = wanted;
        }
        Ok(())
    }
}

/// Binds TCP and UDP on one port. With port 0 the TCP port is taken first and UDP follows
/// it; if that UDP port happens to be busy, another pair is tried.
fn bind_pair(addr: SocketAddr) -> io::Result<(std::net::TcpListener, std::net::UdpSocket)> {
    let mut last_error = None;
    for _ in 0..16 {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        match runtime::bind_udp(SocketAddr::new(addr.ip(), port), 4 << 20, 0) {
            Ok(udp) => return Ok((listener, udp)),
            Err(e) if addr.port() == 0 => last_error = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_error.unwrap_or_else(|| io::ErrorKind::AddrInUse.into()))
}
