//! The peer daemon: one mio loop over the UDP socket, the user's input (read by a helper
//! thread that wakes the loop, see [`crate::console`]), the tracker link and timers. It feeds the [`PeerCore`] and
//! does what the core asks; it makes no protocol decisions of its own.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::time::{Duration, Instant, SystemTime};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use proto::{Envelope, GroupOrder, PROTOCOL_VERSION, Reply, Request};
use thiserror::Error;

use crate::channel::{Api, Call, ChannelError, ChannelEvent, Delivery};
use crate::command::{self, Command, HELP};
use crate::console::{Input, Screen, visible};
use crate::report::{Dropped, Failover, Flow, Latency, Recovery, Report};
use member::{CoreConfig, Event, Message, Mode, Output, PeerCore, Transmit};
use runtime::{LinkEvent, TrackerLink};

const UDP: Token = Token(0);
const WAKER: Token = Token(1);
const TRACKER: Token = Token(2);

/// Datagrams read per wake-up before other work gets a turn.
const READ_BATCH: usize = 512;

/// Most messages a script sends in one turn of the loop (flat out, or catching up): they
/// leave together at the end of the turn, bundled.
const SEND_BATCH: usize = 64;

/// How long a quitting peer keeps answering retransmission requests once they stop coming.
const LINGER: Duration = Duration::from_millis(300);

/// Most latency samples a script keeps (see `Measure::arrivals`).
const MAX_LATENCY_SAMPLES: usize = 20_000;

/// Clock synchronization with the tracker (NTP on its UDP port): a burst of requests at
/// start and every `SYNC_PERIOD`; the answer with the smallest delay of each burst wins.
const SYNC_BURST: u32 = 5;
const SYNC_SPACING: Duration = Duration::from_millis(20);
const SYNC_PERIOD: Duration = Duration::from_secs(10);
/// How long a script waits for a first synchronization before it sends unsynchronized.
const SYNC_PATIENCE: Duration = Duration::from_secs(2);

/// Why a peer stopped with an error.
#[derive(Debug, Error)]
pub enum PeerError {
    /// A socket failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The tracker refused to register us (the username is taken, say).
    #[error("the tracker refused to register us: {0}")]
    Refused(String),
    /// In script mode, the tracker refused to let us join the script's group (it uses the
    /// other delivery order, or total order has no sequencer).
    #[error("cannot join {group}: {reason}")]
    JoinRefused {
        /// The group.
        group: String,
        /// The tracker's reason.
        reason: String,
    },
}

/// What a script-mode peer does.
#[derive(Debug, Clone)]
pub struct Script {
    /// One message per line.
    pub lines: Vec<String>,
    /// The group to join.
    pub group: String,
    /// Start sending once this many members (ourselves included) are in the group.
    pub members: usize,
    /// Deliveries to wait for; by default every member sends as many lines as we do.
    pub expect: Option<u64>,
    /// Messages per second; `None` sends flat out.
    pub rate: Option<f64>,
    /// Give up waiting (for members, or for deliveries) after this long.
    pub timeout: Duration,
    /// Where to write each delivery as `GROUP<TAB>AUTHOR<TAB>COUNTER<TAB>TEXT`, if anywhere.
    pub deliveries: Option<std::path::PathBuf>,
}

/// What a peer is started with.
#[derive(Debug, Clone)]
pub struct PeerOptions {
    /// The UDP address to bind (and to register, unless `advertise` says otherwise).
    pub addr: SocketAddr,
    /// The address the other members reach us at, registered with the tracker. `None`:
    /// the bound address; bound to `0.0.0.0`, the address of our interface towards the
    /// tracker, with the bound port.
    pub advertise: Option<SocketAddr>,
    /// Our name.
    pub username: String,
    /// The tracker's address.
    pub tracker: SocketAddr,
    /// Delivery order.
    pub mode: Mode,
    /// Windows and timers of the ordering core.
    pub ordering: ordering::Config,
    /// Script mode, or interactive when `None`.
    pub script: Option<Script>,
    /// Largest bundle to a member that reads bundles, in bytes (`Some(0)`: never bundle;
    /// `None`: 16 KiB on loopback, 1472 bytes elsewhere).
    pub max_bundle: Option<usize>,
    /// Pretend this process's clock is this many milliseconds ahead of the real one.
    pub clock_offset_ms: f64,
    /// Pretend this process's clock gains this many microseconds per second.
    pub clock_drift_ppm: f64,
}

/// Stops a running [`Peer`] cleanly (the tracker is told, the groups get Bye).
pub use runtime::Shutdown;

#[derive(Debug)]
enum Purpose {
    Register,
    /// A heartbeat over the tracker connection, which keeps it from being closed as idle.
    KeepAlive,
    Join(String),
    Rejoin(String),
    ListGroups,
    ListMembers(String),
    Exit(String),
    Quit,
    /// A [`Channel`](crate::Channel)'s join, answered on its sender.
    ApiJoin(String, Sender<Result<Vec<String>, ChannelError>>),
}

#[derive(Debug)]
enum Phase {
    /// Registering and joining.
    Starting,
    /// Waiting for the other members.
    Waiting {
        since: Instant,
    },
    /// Sending one line after another.
    Sending {
        next: usize,
        next_at: Instant,
    },
    /// Waiting for the deliveries.
    Draining {
        since: Instant,
    },
    /// Done; answering late requests before leaving.
    Lingering {
        since: Instant,
    },
    Done,
}

#[derive(Debug)]
struct Quitting {
    deadline: Instant,
    /// The tracker answered our Quit, or there is nobody to tell.
    acked: bool,
    /// Our Quit went out.
    told: bool,
}

#[derive(Debug, Default)]
struct Measure {
    sent: u64,
    delivered: u64,
    first_send: Option<Instant>,
    first_delivery: Option<Instant>,
    last_delivery: Option<Instant>,
    /// Per sampled delivery: the send time it carried (µs, synchronized clock of its sender)
    /// and our clock's reading on arrival. Every `stride`-th delivery is kept, and the stride
    /// doubles whenever [`MAX_LATENCY_SAMPLES`] are held: memory stays bounded however long
    /// a script runs, and the percentiles stay those of an even sample.
    arrivals: Vec<(i64, clock::Nanos)>,
    stride: u64,
    timed: u64,
    /// Members the tracker evicted while we ran.
    evicted: Vec<String>,
}

/// A [`Channel`](crate::Channel)'s send waiting for the window of its group.
struct WaitingSend {
    group: String,
    payload: Vec<u8>,
    reply: Sender<Result<u64, ChannelError>>,
}

/// An interactive peer's console: the user's input, in order, and where lines go.
pub struct Console {
    /// What the user types (see [`read_lines`](crate::console::read_lines)).
    pub input: Receiver<Input>,
    /// Where lines for the user go.
    pub screen: Box<dyn Screen>,
}

/// A member of the group messenger.
pub struct Peer {
    options: PeerOptions,
    /// Script mode, or interactive when `None` (taken out of `options`).
    script: Option<Arc<Script>>,
    /// The script waits for the flow-control window of its group to open.
    flow_blocked: bool,
    /// Datagrams sent to the tracker, not counted as group traffic.
    tracker_udp: u64,
    poll: Poll,
    udp: UdpSocket,
    stop: Shutdown,
    link: TrackerLink<Purpose>,
    core: PeerCore,
    outbox: runtime::Outbox,
    udp_pending: bool,
    registered: bool,
    /// When we registered again after the tracker told us it had evicted us, until its
    /// answer.
    registering_again: Option<Instant>,
    heartbeat: Duration,
    next_heartbeat: Option<Instant>,
    /// Messages to the tracker (heartbeats, keep-alives, clock queries), for the report.
    heartbeats_sent: u64,
    /// UDP heartbeats alone: every tenth is also sent over the tracker connection.
    udp_heartbeats: u64,
    selected: Option<String>,
    phase: Phase,
    measure: Measure,
    deliveries: Option<io::BufWriter<std::fs::File>>,
    quitting: Option<Quitting>,
    nacks_seen: (u64, Instant),
    /// Interactive mode: where lines for the user go.
    screen: Option<RefCell<Box<dyn Screen>>>,
    /// Embedded (a [`Channel`](crate::Channel)): its calls, and where its events go.
    api: Option<Api>,
    /// Embedded: sends waiting for their group's flow-control window, in order.
    waiting_sends: VecDeque<WaitingSend>,
    /// Interactive mode: what the user typed, in order, not applied yet. A line waits for
    /// what it depends on: our registration, the answer to the tracker request of the line
    /// before it, a tracker connection if it needs one.
    pending: VecDeque<Input>,
    /// The line whose tracker request is out: the lines after it wait for its answer, and it
    /// is applied again if the connection is lost before the answer.
    awaiting: Option<String>,
    /// Registered on the current tracker connection (a lost connection clears it).
    session: bool,
    /// We told the user the tracker cannot be reached (told once per outage).
    told_unreachable: bool,
    report: Option<Report>,
    buf: Box<[u8]>,
    /// This process's clock (simulated skew, if asked for) and its estimated offset from
    /// the tracker's: the synchronized clock is their sum.
    local: clock::SkewedClock,
    sync: Option<clock::Estimate>,
    /// The tracker's clock carried forward between syncs at its measured rate.
    discipline: clock::Discipline,
    sync_burst: Option<clock::Estimate>,
    sync_outstanding: VecDeque<clock::Nanos>,
    sync_left: u32,
    next_sync: Option<Instant>,
    registered_at: Option<Instant>,
    /// When the first burst's last answer is due: a script stamps nothing before, so every
    /// message carries the best estimate of that burst.
    first_burst_done: Option<Instant>,
}

fn real_now() -> clock::Nanos {
    clock::Nanos::from_system(SystemTime::now())
}

impl Peer {
    /// Binds the UDP socket; the tracker is contacted once [`run`](Self::run) starts.
    pub fn bind(mut options: PeerOptions) -> Result<Self, PeerError> {
        let std_udp = runtime::bind_udp(options.addr, 8 << 20, 4 << 20)?;
        let bound = std_udp.local_addr()?;
        let addr = match options.advertise {
            Some(addr) => addr,
            None if bound.ip().is_unspecified() => {
                SocketAddr::new(route_towards(options.tracker)?, bound.port())
            }
            None => bound,
        };
        let mut udp = UdpSocket::from_std(std_udp);
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut udp, UDP, Interest::READABLE | Interest::WRITABLE)?;
        let stop = Shutdown::new(poll.registry(), WAKER)?;
        let now = Instant::now();
        let core = PeerCore::new(CoreConfig {
            username: options.username.clone(),
            addr,
            tracker: options.tracker,
            mode: options.mode,
            ordering: options.ordering.clone(),
        });
        let options_skew = (options.clock_offset_ms, options.clock_drift_ppm);
        let deliveries = match options.script.as_ref().and_then(|s| s.deliveries.as_ref()) {
            Some(path) => Some(io::BufWriter::new(std::fs::File::create(path)?)),
            None => None,
        };
        let max_bundle = options.max_bundle;
        // Kept once, shared: each step of the script reads it without copying its lines.
        let script = options.script.take().map(Arc::new);
        Ok(Self {
            link: TrackerLink::new(options.tracker, TRACKER, now),
            script,
            flow_blocked: false,
            tracker_udp: 0,
            options: PeerOptions { addr, ..options },
            poll,
            udp,
            stop,
            core,
            outbox: runtime::Outbox::new().with_max_bundle(max_bundle),
            udp_pending: false,
            registered: false,
            registering_again: None,
            heartbeat: Duration::from_secs(1),
            next_heartbeat: None,
            heartbeats_sent: 0,
            udp_heartbeats: 0,
            selected: None,
            phase: Phase::Starting,
            measure: Measure::default(),
            deliveries,
            quitting: None,
            nacks_seen: (0, now),
            screen: None,
            api: None,
            waiting_sends: VecDeque::new(),
            pending: VecDeque::new(),
            awaiting: None,
            session: false,
            told_unreachable: false,
            report: None,
            buf: vec![0; 64 * 1024].into_boxed_slice(),
            local: clock::SkewedClock::new(
                (options_skew.0 * 1e6) as i64,
                options_skew.1,
                real_now(),
            ),
            sync: None,
            discipline: clock::Discipline::new(),
            sync_burst: None,
            sync_outstanding: VecDeque::new(),
            sync_left: 0,
            next_sync: None,
            registered_at: None,
            first_burst_done: None,
        })
    }

    /// The UDP address this peer receives on.
    pub fn local_addr(&self) -> SocketAddr {
        self.options.addr
    }

    /// A handle that makes the peer quit cleanly.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.stop.clone()
    }

    /// Runs until the user quits (interactive, with `console`) or the script is done;
    /// returns the script's measurements, if any.
    pub fn run(&mut self, console: Option<Console>) -> Result<Option<Report>, PeerError> {
        let input = match console {
            Some(Console { input, screen }) if self.script.is_none() => {
                self.screen = Some(RefCell::new(screen));
                Some(input)
            }
            _ => None,
        };
        let mut events = Events::with_capacity(256);
        loop {
            let now = Instant::now();
            self.link.handle_timeout(self.poll.registry(), now);
            if self.core.poll_timeout().is_some_and(|at| at <= now) {
                self.core.handle_timeout(now);
            }
            self.heartbeat_if_due(now);
            self.sync_if_due(now);
            self.script_step(now)?;
            self.handle_link_events(now)?;
            self.apply_input(now)?;
            self.apply_calls(now);
            self.drain_core(now)?;
            self.flush_outbox();
            if self.stop.requested() && self.quitting.is_none() {
                self.begin_quit(now);
                self.drain_core(now)?;
                self.flush_outbox();
            }
            if self.quit_done(now) {
                self.flush_outbox();
                break;
            }
            let timeout = self
                .next_wake(now)
                .map(|at| at.saturating_duration_since(now));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e.into());
            }
            let now = Instant::now();
            let mut udp_ready = self.udp_pending;
            for event in events.iter() {
                match event.token() {
                    UDP => udp_ready |= event.is_readable(),
                    TRACKER => self.link.handle_ready(now),
                    _ => {}
                }
            }
            if udp_ready {
                self.read_udp(now);
            }
            if let Some(input) = &input {
                loop {
                    match input.try_recv() {
                        Ok(Input::Interrupt) => self.stop.shutdown(),
                        Ok(item) => self.pending.push_back(item),
                        Err(TryRecvError::Disconnected) => {
                            if self.pending.back() != Some(&Input::End) {
                                self.pending.push_back(Input::End);
                            }
                            break;
                        }
                        Err(TryRecvError::Empty) => break,
                    }
                }
            }
        }
        if let Some(d) = self.deliveries.as_mut() {
            d.flush()?;
        }
        Ok(self.report.take())
    }

    /// Runs as the loop of a [`Channel`](crate::Channel) until it is closed.
    pub(crate) fn run_api(&mut self, api: Api) -> Result<(), PeerError> {
        self.api = Some(api);
        let result = self.run(None).map(|_| ());
        for waiting in self.waiting_sends.drain(..) {
            let _ = waiting.reply.send(Err(ChannelError::Closed));
        }
        result
    }

    /// Applies a [`Channel`](crate::Channel)'s calls, and the sends that waited for their
    /// window and may go now.
    fn apply_calls(&mut self, now: Instant) {
        let Some(api) = &self.api else {
            return;
        };
        let calls: Vec<Call> = std::iter::from_fn(|| api.calls.try_recv().ok()).collect();
        for call in calls {
            if self.quitting.is_some() {
                break;
            }
            match call {
                Call::Join { group, reply } => {
                    if self.core.is_joined(&group) {
                        let _ = reply.send(Ok(Vec::new()));
                        continue;
                    }
                    let request = self.join_request(&group);
                    if let Err(Purpose::ApiJoin(_, reply)) =
                        self.link.request(request, Purpose::ApiJoin(group, reply))
                    {
                        let _ = reply.send(Err(ChannelError::Unreachable(self.link.addr())));
                    }
                }
                Call::Leave { group, reply } => {
                    if !self.core.leave(now, &group) {
                        let _ = reply.send(Err(member::Error::NotJoined { group }.into()));
                        continue;
                    }
                    let request = Request::ExitGroup {
                        username: self.options.username.clone(),
                        group: group.clone(),
                    };
                    let _ = self.link.request(request, Purpose::Exit(group));
                    let _ = reply.send(Ok(()));
                }
                Call::Send {
                    group,
                    payload,
                    wait,
                    reply,
                } => {
                    let waiting = WaitingSend {
                        group,
                        payload,
                        reply,
                    };
                    // Sends keep their order: none overtakes one that waits.
                    if self.waiting_sends.is_empty()
                        && (!self.core.is_joined(&waiting.group)
                            || self.core.window_open(now, &waiting.group))
                    {
                        self.api_send(now, waiting);
                    } else if wait {
                        self.waiting_sends.push_back(waiting);
                    } else {
                        let _ = waiting
                            .reply
                            .send(Err(ChannelError::WouldBlock(waiting.group)));
                    }
                }
            }
        }
        while let Some(front) = self.waiting_sends.front() {
            if self.core.is_joined(&front.group) && !self.core.window_open(now, &front.group) {
                break;
            }
            let waiting = self.waiting_sends.pop_front().expect("looked at above");
            self.api_send(now, waiting);
        }
    }

    fn api_send(&mut self, now: Instant, waiting: WaitingSend) {
        let stamp = self.synced_now_us().max(0) as u64;
        let result = self
            .core
            .send(now, &waiting.group, &waiting.payload, stamp)
            .map_err(ChannelError::from);
        let _ = waiting.reply.send(result);
    }

    /// Applies what the user typed, in order, as far as what each line depends on allows:
    /// nothing before our first registration, nothing while a line waits for the tracker's
    /// answer, and a line that needs the tracker only while it is connected (messages to
    /// joined groups go on without it).
    fn apply_input(&mut self, now: Instant) -> Result<(), PeerError> {
        if self.screen.is_none() {
            return Ok(());
        }
        if !self.registered && !self.told_unreachable && self.link_tried() {
            self.told_unreachable = true;
            self.say(format_args!(
                "cannot reach the tracker at {} yet; retrying, and what you type waits for it",
                self.link.addr()
            ))?;
        }
        while self.quitting.is_none() && self.awaiting.is_none() {
            let Some(item) = self.pending.front() else {
                break;
            };
            // Quitting waits only for a registration on its way (then the tracker is told);
            // any other line for our registration, and for the tracker if it asks it.
            let registering = self.link.is_up() && !self.session;
            let ready = match item {
                Input::End | Input::Interrupt => !registering,
                Input::Line(line) | Input::Mangled(line) => match command::parse(line) {
                    Ok(Command::Quit) => !registering,
                    Ok(c) if c.needs_tracker() => self.session,
                    _ => self.registered,
                },
            };
            if !ready {
                if !self.told_unreachable && self.link_tried() {
                    self.told_unreachable = true;
                    self.say(format_args!(
                        "the tracker at {} cannot be reached; retrying, and what you typed waits for it ({} line(s) now)",
                        self.link.addr(),
                        self.pending.len()
                    ))?;
                }
                break;
            }
            let item = self.pending.pop_front().expect("looked at above");
            match item {
                Input::Line(line) => self.handle_line(now, &line)?,
                Input::Mangled(line) => {
                    self.say("warning: that line was not valid UTF-8; its invalid bytes were replaced with \u{fffd}")?;
                    self.handle_line(now, &line)?;
                }
                Input::End | Input::Interrupt => self.begin_quit(now),
            }
        }
        self.show_prompt();
        Ok(())
    }

    /// Whether a connection to the tracker was attempted and failed since we last had one
    /// (before the first attempt, input simply waits).
    fn link_tried(&self) -> bool {
        !self.link.is_up() && self.link.failed_attempts() > 0
    }

    fn next_wake(&self, now: Instant) -> Option<Instant> {
        if self.udp_pending {
            return Some(now);
        }
        let script = match &self.phase {
            // While the window is closed, an acknowledgement (a datagram) or the core's
            // timer wakes us.
            Phase::Sending { .. } if self.flow_blocked => None,
            Phase::Sending { next_at, .. } => Some(*next_at),
            Phase::Waiting { .. } | Phase::Draining { .. } | Phase::Lingering { .. } => {
                Some(now + Duration::from_millis(20))
            }
            Phase::Starting | Phase::Done => None,
        };
        let quitting = self
            .quitting
            .as_ref()
            .map(|_| now + Duration::from_millis(20));
        [
            self.core.poll_timeout(),
            self.link.poll_timeout(),
            self.next_heartbeat,
            self.next_sync,
            script,
            quitting,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// This process's clock now (with its simulated skew, if any).
    fn local_now(&self) -> clock::Nanos {
        self.local.read(real_now())
    }

    /// The synchronized clock in microseconds since the epoch: what messages are stamped
    /// with and latencies are measured by.
    fn synced_now_us(&self) -> i64 {
        let local = self.local_now();
        self.discipline
            .estimate_at(local)
            .map_or(local, |e| e.apply(local))
            .as_micros()
    }

    /// Sends the next NTP request of a burst to the tracker when it is due.
    fn sync_if_due(&mut self, now: Instant) {
        if self.next_sync.is_none_or(|at| at > now) {
            return;
        }
        if self.sync_left == 0 {
            self.sync_left = SYNC_BURST;
            self.sync_burst = None;
        }
        let sent = self.local_now();
        let request = clock::ntp::request(sent);
        self.sync_outstanding.push_back(sent);
        if self.sync_outstanding.len() > 2 * SYNC_BURST as usize {
            self.sync_outstanding.pop_front();
        }
        let tracker = self.options.tracker;
        self.send_datagram(tracker, Arc::from(&request[..]));
        self.heartbeats_sent += 1;
        self.sync_left -= 1;
        if self.sync_left == 0 {
            self.first_burst_done.get_or_insert(now + SYNC_SPACING);
        }
        self.next_sync = Some(
            now + if self.sync_left == 0 {
                SYNC_PERIOD
            } else {
                SYNC_SPACING
            },
        );
    }

    /// An NTP answer from the tracker: keeps the burst's best estimate.
    fn handle_sync_answer(&mut self, bytes: &[u8]) {
        let received = self.local_now();
        let Ok(packet) = clock::ntp::Packet::decode(bytes) else {
            return;
        };
        let Some(i) = self
            .sync_outstanding
            .iter()
            .position(|t| clock::ntp::NtpTime::from_nanos(*t) == packet.origin)
        else {
            return;
        };
        let Some(sent) = self.sync_outstanding.remove(i) else {
            return;
        };
        match clock::ntp::estimate(bytes, sent, received) {
            Ok(e) => {
                if self.sync_burst.is_none_or(|b| e.rtt_ns < b.rtt_ns) {
                    self.sync_burst = Some(e);
                    self.sync = Some(e);
                    self.discipline.update(received, e);
                    log::debug!(
                        "clock: the tracker is {} ahead (± {})",
                        clock::human(e.offset_ns),
                        clock::human(e.bound_ns)
                    );
                }
            }
            Err(e) => log::debug!("clock: unusable NTP answer: {e}"),
        }
    }

    fn read_udp(&mut self, now: Instant) {
        self.udp_pending = false;
        for _ in 0..READ_BATCH {
            match self.udp.recv_from(&mut self.buf) {
                Ok((n, from))
                    if from == self.options.tracker
                        && n >= clock::ntp::PACKET_LEN
                        && self.buf[0] & 7 == clock::ntp::MODE_SERVER =>
                {
                    let answer = self.buf[..n].to_vec();
                    self.handle_sync_answer(&answer);
                }
                Ok((n, from))
                    if from == self.options.tracker && runtime::is_probe(&self.buf[..n]) =>
                {
                    // The tracker suspects we are gone (our heartbeats were lost or late):
                    // answer at once.
                    log::info!("the tracker asked whether we are alive: answering");
                    self.next_heartbeat = Some(now);
                    self.heartbeat_if_due(now);
                }
                Ok((n, from)) => self.core.handle_datagram(now, from, &self.buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => log::debug!("udp: {e}"),
            }
        }
        // More may be waiting: come back after other work had its turn.
        self.udp_pending = true;
    }

    /// Sends a datagram to the tracker (heartbeats, clock queries) at once.
    fn send_datagram(&mut self, to: SocketAddr, bytes: Arc<[u8]>) {
        self.tracker_udp += 1;
        self.outbox.send(&self.udp, to, bytes);
    }

    fn flush_outbox(&mut self) {
        self.outbox.flush(&self.udp);
    }

    fn heartbeat_if_due(&mut self, now: Instant) {
        if !self.registered || self.next_heartbeat.is_some_and(|at| at > now) {
            return;
        }
        let beat = Envelope {
            request: Request::Heartbeat {
                username: self.options.username.clone(),
            },
            proto: Some(PROTOCOL_VERSION),
            secret: self.link.secret().cloned(),
        }
        .encode();
        let tracker = self.options.tracker;
        self.send_datagram(tracker, Arc::from(beat));
        self.heartbeats_sent += 1;
        self.udp_heartbeats += 1;
        self.next_heartbeat = Some(now + self.heartbeat);
        // Heartbeats go by UDP; the tracker connection would look idle and be closed (the
        // tracker's default is 30 s), so every tenth also goes over it.
        if self.udp_heartbeats % 10 == 0 && self.link.is_up() {
            let request = Request::Heartbeat {
                username: self.options.username.clone(),
            };
            if self.link.request(request, Purpose::KeepAlive).is_ok() {
                self.heartbeats_sent += 1;
            }
        }
    }

    /// Prints a line for the user, keeping the prompt tidy on a terminal.
    /// Registers with the tracker again (it evicted us), once however many groups tell us;
    /// its answer rejoins our groups.
    fn register_again(&mut self, now: Instant) {
        if self
            .registering_again
            .is_some_and(|at| now.saturating_duration_since(at) < Duration::from_secs(1))
        {
            return;
        }
        self.registering_again = Some(now);
        let request = Request::register(self.options.addr, &self.options.username);
        let _ = self.link.request(request, Purpose::Register);
    }

    /// In script mode, where standard output is the report, one line of news about the
    /// group on standard error, written at once.
    fn tell_stderr(&self, line: &str) {
        if self.script.is_some() {
            let text = format!("{}: {}\n", self.options.username, visible(line));
            let _ = io::stderr().write_all(text.as_bytes());
        }
    }

    /// Shows a line to the user (interactive mode only; a script's output is its report).
    /// Whatever in it came from the network must have been made [`visible`].
    fn say(&self, line: impl std::fmt::Display) -> io::Result<()> {
        match &self.screen {
            Some(screen) => screen.borrow_mut().line(&line.to_string()),
            None => Ok(()),
        }
    }

    /// The prompt: our name and the group we write to.
    fn prompt(&self) -> String {
        match &self.selected {
            Some(group) => format!("[{}@{}]> ", self.options.username, visible(group)),
            None => format!("[{}]> ", self.options.username),
        }
    }

    fn show_prompt(&self) {
        if let Some(screen) = &self.screen
            && self.quitting.is_none()
        {
            let idle = self.registered && self.pending.is_empty() && self.awaiting.is_none();
            screen.borrow_mut().prompt(&self.prompt(), idle);
        }
    }

    /// Sends a tracker request for the user's `line`; the lines after it wait for the answer.
    fn ask(&mut self, line: &str, request: Request, purpose: Purpose) {
        match self.link.request(request, purpose) {
            Ok(()) => self.awaiting = Some(line.to_owned()),
            // The connection went between the check and now: the line waits for the next.
            Err(_) => self.pending.push_front(Input::Line(line.to_owned())),
        }
    }

    fn handle_line(&mut self, now: Instant, line: &str) -> Result<(), PeerError> {
        if self.quitting.is_some() {
            return Ok(());
        }
        let me = self.options.username.clone();
        match command::parse(line) {
            Err(usage) => self.say(visible(&usage))?,
            Ok(Command::Nothing) => {}
            Ok(Command::Help) => {
                for l in HELP.lines() {
                    self.say(l)?;
                }
            }
            Ok(Command::ListGroups) => self.ask(line, Request::ListGroups, Purpose::ListGroups),
            Ok(Command::ListMembers(group)) => self.ask(
                line,
                Request::ListMembers {
                    group: group.clone(),
                },
                Purpose::ListMembers(group),
            ),
            Ok(Command::Join(group)) => {
                if self.core.is_joined(&group) {
                    self.selected = Some(group.clone());
                    let group = visible(&group);
                    self.say(format_args!("already in {group}; writing to {group}"))?;
                } else {
                    let request = self.join_request(&group);
                    self.ask(line, request, Purpose::Join(group));
                }
            }
            Ok(Command::Write(group)) => {
                if self.core.is_joined(&group) {
                    self.say(format_args!("writing to {}", visible(&group)))?;
                    self.selected = Some(group);
                } else {
                    let group = visible(&group);
                    self.say(format_args!(
                        "not a member of {group}: join it first (!j {group})"
                    ))?;
                }
            }
            Ok(Command::Exit(group)) => {
                if self.core.leave(now, &group) {
                    let request = Request::ExitGroup {
                        username: me,
                        group: group.clone(),
                    };
                    if self
                        .link
                        .request(request, Purpose::Exit(group.clone()))
                        .is_err()
                    {
                        log::info!("could not tell the tracker we left {group}");
                    }
                    let left = visible(&group).into_owned();
                    if self.selected.as_deref() == Some(group.as_str()) {
                        let mut rest = self.core.groups();
                        rest.sort_by(|a, b| natural_order(a, b));
                        self.selected = rest.into_iter().next();
                        match &self.selected {
                            Some(next) => self.say(format_args!(
                                "left {left}; writing to {} now",
                                visible(next)
                            ))?,
                            None => self.say(format_args!(
                                "left {left}; you are in no group now: !j GROUP joins one"
                            ))?,
                        }
                    } else {
                        self.say(format_args!("left {left}"))?;
                    }
                } else {
                    self.say(format_args!("not a member of {}", visible(&group)))?;
                }
            }
            Ok(Command::Quit) => self.begin_quit(now),
            Ok(Command::Say(text)) => match self.selected.clone() {
                None => self
                    .say("no group selected: join one with !j GROUP, or pick one with !w GROUP")?,
                Some(group) => {
                    let stamp = self.synced_now_us().max(0) as u64;
                    if let Err(e) = self.core.send(now, &group, text.as_bytes(), stamp) {
                        self.say(format_args!("error: {e}"))?;
                    }
                }
            },
        }
        self.drain_core(now)?;
        self.flush_outbox();
        Ok(())
    }

    fn handle_link_events(&mut self, now: Instant) -> Result<(), PeerError> {
        while let Some(event) = self.link.poll_event() {
            match event {
                LinkEvent::Connected => {
                    log::info!("connected to the tracker at {}", self.link.addr());
                    let request = Request::register(self.options.addr, &self.options.username);
                    let _ = self.link.request(request, Purpose::Register);
                }
                LinkEvent::Disconnected { reason } => {
                    self.emit(ChannelEvent::TrackerLost {
                        reason: reason.clone(),
                    });
                    self.session = false;
                    self.told_unreachable = false;
                    let line = format!(
                        "lost the tracker ({reason}); messaging in joined groups goes on, reconnecting"
                    );
                    log::info!("{line}");
                    self.say(&line)?;
                }
                LinkEvent::Lost(purpose) => match purpose {
                    Purpose::ApiJoin(_, answer) => {
                        let _ = answer.send(Err(ChannelError::Unreachable(self.link.addr())));
                    }
                    Purpose::Quit => {
                        if let Some(q) = self.quitting.as_mut() {
                            q.acked = true;
                        }
                    }
                    Purpose::ListGroups | Purpose::ListMembers(_) | Purpose::Join(_) => {
                        // Asked again once we are registered on a new connection.
                        if let Some(line) = self.awaiting.take() {
                            self.pending.push_front(Input::Line(line));
                        }
                    }
                    Purpose::Register
                    | Purpose::KeepAlive
                    | Purpose::Rejoin(_)
                    | Purpose::Exit(_) => {}
                },
                LinkEvent::Reply(purpose, reply) => self.handle_reply(now, purpose, reply)?,
            }
        }
        Ok(())
    }

    fn handle_reply(
        &mut self,
        now: Instant,
        purpose: Purpose,
        reply: Reply,
    ) -> Result<(), PeerError> {
        let reason = || {
            let text = reply.text().unwrap_or_else(|_| reply.content.to_string());
            visible(&text).into_owned()
        };
        if matches!(
            purpose,
            Purpose::ListGroups | Purpose::ListMembers(_) | Purpose::Join(_)
        ) {
            self.awaiting = None;
        }
        match purpose {
            Purpose::Register if !reply.success => return Err(PeerError::Refused(reason())),
            Purpose::Register => {
                // Shown in every request about us from now on.
                self.link.set_secret(reply.secret.clone());
                if let Some(ready) = self.api.as_mut().and_then(|a| a.ready.take()) {
                    let _ = ready.send(Ok(()));
                }
                self.session = true;
                self.told_unreachable = false;
                if self.quitting.as_ref().is_some_and(|q| !q.told) {
                    // We were asked to quit while our registration was on its way: now the
                    // tracker knows us, tell it we leave.
                    self.send_quit();
                }
                if let Some(ms) = reply.heartbeat_ms {
                    self.heartbeat = Duration::from_millis(ms.max(10));
                }
                self.next_heartbeat = Some(now + self.heartbeat);
                self.next_sync.get_or_insert(now);
                self.registered_at.get_or_insert(now);
                if self.registered {
                    // The tracker came back, or had evicted us: join our groups again.
                    let evicted = self.registering_again.take().is_some();
                    for group in self.core.groups() {
                        let request = self.join_request(&group);
                        let _ = self.link.request(request, Purpose::Rejoin(group));
                    }
                    self.say(if evicted {
                        "registered again and rejoined our groups"
                    } else {
                        "the tracker is back; registered and rejoined our groups"
                    })?;
                } else {
                    self.registered = true;
                    if let Some(script) = &self.script {
                        let request = self.join_request(&script.group);
                        let _ = self
                            .link
                            .request(request, Purpose::Join(script.group.clone()));
                    } else {
                        self.say(format_args!(
                                "registered as {} with the tracker at {} ({} order); !h lists the commands",
                                self.options.username,
                                self.link.addr(),
                                match self.options.mode {
                                    Mode::Fifo => "FIFO",
                                    Mode::Total => "total",
                                }
                            ),
                        )?;
                    }
                }
            }
            Purpose::Join(group) | Purpose::Rejoin(group) if reply.success => {
                let members = reply.members().unwrap_or_default();
                let fresh = !self.core.is_joined(&group);
                self.core.join(now, &group, &members);
                if self.script.is_some() {
                    if matches!(self.phase, Phase::Starting) {
                        self.phase = Phase::Waiting { since: now };
                    }
                } else if fresh {
                    self.selected.get_or_insert_with(|| group.clone());
                    let writing = self.selected.clone().unwrap_or_default();
                    self.say(format_args!(
                        "joined {}; writing to {}",
                        visible(&group),
                        visible(&writing)
                    ))?;
                }
            }
            Purpose::ApiJoin(group, answer) => {
                if reply.success {
                    let members = reply.members().unwrap_or_default();
                    self.core.join(now, &group, &members);
                    let names = members.into_iter().map(|m| m.username).collect();
                    let _ = answer.send(Ok(names));
                } else {
                    let reason = reply.text().unwrap_or_else(|_| reply.content.to_string());
                    let _ = answer.send(Err(ChannelError::JoinRefused { group, reason }));
                }
            }
            Purpose::Join(group) if self.script.is_some() => {
                return Err(PeerError::JoinRefused {
                    group,
                    reason: reason(),
                });
            }
            Purpose::Join(group) | Purpose::Rejoin(group) => {
                let line = format!("error: cannot join {}: {}", visible(&group), reason());
                log::info!("{line}");
                self.say(&line)?;
            }
            Purpose::ListGroups => {
                let mut names = reply.names().unwrap_or_default();
                names.sort_by(|a, b| natural_order(a, b));
                let list = if names.is_empty() {
                    "(none)".to_owned()
                } else {
                    names
                        .iter()
                        .map(|g| {
                            let mark = if self.core.is_joined(g) {
                                " (joined)"
                            } else {
                                ""
                            };
                            format!("[{}]{mark}", visible(g))
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                self.say(format_args!("groups: {list}"))?;
            }
            Purpose::ListMembers(group) => {
                if reply.success {
                    let list = reply
                        .members()
                        .unwrap_or_default()
                        .iter()
                        .map(|m| format!("({})", visible(&m.username)))
                        .collect::<Vec<_>>()
                        .join(", ");
                    self.say(format_args!("members: {list}"))?;
                } else {
                    self.say(format_args!("no such group: {}", visible(&group)))?;
                }
            }
            Purpose::Exit(group) => {
                if !reply.success {
                    log::info!("the tracker did not let us leave {group}: {}", reason());
                }
            }
            Purpose::Quit => {
                if let Some(q) = self.quitting.as_mut() {
                    q.acked = true;
                }
            }
            Purpose::KeepAlive if !reply.success && self.registering_again.is_none() => {
                // The tracker no longer knows us: it evicted us and its notice was lost.
                log::info!("the tracker refused our heartbeat: {}", reason());
                for group in self.core.groups() {
                    self.core.on_self_evicted(now, &group);
                }
            }
            Purpose::KeepAlive => {}
        }
        Ok(())
    }

    fn drain_core(&mut self, now: Instant) -> Result<(), PeerError> {
        while let Some(output) = self.core.poll_output() {
            match output {
                // Queued: the end of the loop's turn sends them, bundled and per member.
                Output::Transmit(Transmit { to, bytes, bundle }) => {
                    self.outbox.queue(to, bytes, bundle)
                }
                Output::Deliver(message) => self.deliver(now, message)?,
                Output::Event(event) => {
                    if self.api.is_some() {
                        self.emit(match event.clone() {
                            Event::Joined { group, member } => {
                                ChannelEvent::MemberJoined { group, member }
                            }
                            Event::Left { group, member } => {
                                ChannelEvent::MemberLeft { group, member }
                            }
                            Event::Evicted { group, member } => {
                                ChannelEvent::MemberEvicted { group, member }
                            }
                            Event::SequencerLost { group, reason } => {
                                ChannelEvent::SequencerLost { group, reason }
                            }
                            Event::SequencerBack { group, new } => {
                                ChannelEvent::SequencerBack { group, new }
                            }
                            Event::WeWereEvicted { group } => ChannelEvent::WeWereEvicted { group },
                        });
                    }
                    let line = match event {
                        Event::Joined { group, member } => format!("* {member} joined {group}"),
                        Event::Left { group, member } => format!("* {member} left {group}"),
                        Event::Evicted { group, member } => {
                            self.measure.evicted.push(member.clone());
                            format!("* {member} was evicted from {group} (it stopped answering)")
                        }
                        Event::SequencerLost { group, reason } => {
                            let line = format!(
                                "* total order unavailable in {group}: lost the sequencer ({reason}); \
                                 messages wait, nothing is delivered out of order"
                            );
                            self.tell_stderr(&line);
                            line
                        }
                        Event::WeWereEvicted { group } => {
                            self.register_again(now);
                            let line = format!(
                                "* the tracker had evicted us from {group} (our heartbeats did not reach it in time); \
                                 registering again and greeting the group afresh"
                            );
                            self.tell_stderr(&line);
                            line
                        }
                        Event::SequencerBack { group, new } => {
                            let line = if new {
                                format!("* total order in {group} resumes with a new sequencer")
                            } else {
                                format!(
                                    "* total order in {group} resumes (the sequencer answers again)"
                                )
                            };
                            self.tell_stderr(&line);
                            line
                        }
                    };
                    // Names and groups came from the network: shown harmless.
                    let line = visible(&line);
                    log::info!("{line}");
                    self.say(&line)?;
                }
            }
        }
        Ok(())
    }

    fn deliver(&mut self, now: Instant, m: Message) -> Result<(), PeerError> {
        self.measure.delivered += 1;
        self.measure.first_delivery.get_or_insert(now);
        self.measure.last_delivery = Some(now);
        if let (Some(sent), Some(_)) = (m.sent_at_us, &self.script) {
            // Kept as our clock's reading: latencies are computed at the end, with the best
            // synchronization, also for messages that arrived before the first one.
            let measure = &mut self.measure;
            measure.timed += 1;
            if measure.timed % measure.stride.max(1) == 0 {
                measure
                    .arrivals
                    .push((sent as i64, self.local.read(real_now())));
                if measure.arrivals.len() >= MAX_LATENCY_SAMPLES {
                    let kept: Vec<_> = measure.arrivals.iter().copied().step_by(2).collect();
                    measure.arrivals = kept;
                    measure.stride = measure.stride.max(1) * 2;
                }
            }
        }
        if let Some(file) = self.deliveries.as_mut() {
            writeln!(
                file,
                "{}\t{}\t{}\t{}",
                m.group,
                m.author,
                m.counter,
                m.text()
            )?;
        }
        // Formatted straight into the output, and only when there is one (not in script
        // mode): nothing is built per delivery.
        if self.screen.is_some() {
            self.say(format_args!(
                "in {} {} says:: {}",
                visible(&m.group),
                visible(&m.author),
                visible(&m.text())
            ))?;
        }
        if self.api.is_some() {
            self.emit(ChannelEvent::Message(Delivery {
                group: m.group.to_string(),
                author: m.author.to_string(),
                payload: m.payload,
                seq: m.counter,
                sent_at_us: m.sent_at_us,
            }));
        }
        Ok(())
    }

    /// Hands an event to the embedding program, if there is one (a receiver gone is not
    /// our concern: the channel is being dropped).
    fn emit(&self, event: ChannelEvent) {
        if let Some(api) = &self.api {
            let _ = api.events.send(event);
        }
    }

    /// Our JoinGroup for `group`, declaring our delivery order: the tracker refuses us if
    /// the group uses the other one.
    fn join_request(&self, group: &str) -> Request {
        Request::JoinGroup {
            username: self.options.username.clone(),
            group: group.to_owned(),
            order: Some(match self.options.mode {
                Mode::Fifo => GroupOrder::Fifo,
                Mode::Total => GroupOrder::Total,
            }),
        }
    }

    fn script_step(&mut self, now: Instant) -> Result<(), PeerError> {
        let Some(script) = self.script.clone() else {
            return Ok(());
        };
        let expected = script
            .expect
            .unwrap_or(script.lines.len() as u64 * script.members as u64);
        match self.phase {
            Phase::Starting | Phase::Done => {}
            Phase::Waiting { since } => {
                let heard = self.core.members_heard(&script.group) + 1 >= script.members;
                let ordered =
                    self.options.mode == Mode::Fifo || self.core.sequencer_ready(&script.group);
                let synced = (self.sync.is_some()
                    && self.first_burst_done.is_some_and(|at| now >= at))
                    || self
                        .registered_at
                        .is_some_and(|at| now - at > SYNC_PATIENCE);
                if heard && ordered && synced {
                    log::debug!("all {} members are here: sending", script.members);
                    self.measure.first_send = Some(now);
                    self.phase = Phase::Sending {
                        next: 0,
                        next_at: now,
                    };
                } else if now - since > script.timeout {
                    log::warn!(
                        "gave up waiting for {} members in {}",
                        script.members,
                        script.group
                    );
                    self.phase = Phase::Lingering { since: now };
                }
            }
            Phase::Sending {
                mut next,
                mut next_at,
            } => {
                let step = script
                    .rate
                    .map_or(Duration::ZERO, |r| Duration::from_secs_f64(1.0 / r));
                self.flow_blocked = false;
                // Every message due goes now (flat out: a batch), as long as the slowest
                // member keeps up; the end of the turn sends the batch bundled.
                for _ in 0..SEND_BATCH {
                    if now < next_at {
                        break;
                    }
                    if !self.core.window_open(now, &script.group) {
                        self.flow_blocked = true;
                        break;
                    }
                    if let Some(line) = script.lines.get(next) {
                        self.core
                            .send(
                                now,
                                &script.group,
                                line.as_bytes(),
                                self.synced_now_us().max(0) as u64,
                            )
                            .map_err(|e| {
                                PeerError::Io(io::Error::new(
                                    io::ErrorKind::InvalidInput,
                                    e.to_string(),
                                ))
                            })?;
                        self.measure.sent += 1;
                    }
                    next += 1;
                    if next >= script.lines.len() {
                        self.phase = Phase::Draining { since: now };
                        return Ok(());
                    }
                    next_at = if step.is_zero() { now } else { next_at + step };
                }
                self.phase = Phase::Sending { next, next_at };
            }
            Phase::Draining { since } => {
                if self.measure.delivered >= expected || now - since > script.timeout {
                    self.phase = Phase::Lingering { since: now };
                }
            }
            Phase::Lingering { since } => {
                if now - since >= LINGER && self.quiet(now) {
                    let report = self.build_report(&script, expected);
                    self.report = Some(report);
                    self.phase = Phase::Done;
                    self.begin_quit(now);
                }
            }
        }
        Ok(())
    }

    /// True when no retransmission request has come for [`LINGER`].
    fn quiet(&mut self, now: Instant) -> bool {
        let nacks = self.core.traffic().nacks_received;
        if nacks != self.nacks_seen.0 {
            self.nacks_seen = (nacks, now);
        }
        now - self.nacks_seen.1 >= LINGER
    }

    fn build_report(&mut self, script: &Script, expected: u64) -> Report {
        // From the first send, or for a member that only receives, the first delivery.
        let start = [self.measure.first_send, self.measure.first_delivery]
            .into_iter()
            .flatten()
            .min();
        let mut duration = match (start, self.measure.last_delivery) {
            (Some(a), Some(b)) if b > a => b - a,
            _ => Duration::ZERO,
        };
        let traffic = self.core.traffic();
        let order = self.core.ordering_counters();
        // Signed: a clock badly out of step shows as a negative latency, not as zero.
        let mut latencies: Vec<i64> = self
            .measure
            .arrivals
            .iter()
            .map(|(sent, arrived)| {
                // The tracker's offset at that moment, carried at its measured rate.
                self.discipline
                    .estimate_at(*arrived)
                    .map_or(*arrived, |e| e.apply(*arrived))
                    .as_micros()
                    - sent
            })
            .collect();
        if self.measure.first_send.is_none()
            && let Some(&first) = latencies.first()
        {
            // A member that only receives measures from when the first message it delivered
            // was sent (its one-way latency earlier than its delivery), not from that
            // delivery: a burst delivered at once is not infinitely fast.
            duration += Duration::from_micros(first.max(0) as u64);
        }
        let wire = self.outbox.stats();
        let datagrams = wire.datagrams.saturating_sub(self.tracker_udp);
        let messages = traffic.app_datagrams_sent + traffic.control_datagrams_sent;
        Report {
            username: self.options.username.clone(),
            group: script.group.clone(),
            mode: match self.options.mode {
                Mode::Fifo => "fifo".into(),
                Mode::Total => "total".into(),
            },
            sent: self.measure.sent,
            delivered: self.measure.delivered,
            expected,
            complete: self.measure.delivered >= expected,
            duration_ms: duration.as_secs_f64() * 1e3,
            delivered_per_second: if duration.is_zero() {
                0.0
            } else {
                self.measure.delivered as f64 / duration.as_secs_f64()
            },
            latency: Latency::of(&mut latencies),
            datagrams_sent: datagrams,
            bundles_sent: wire.bundles,
            app_datagrams_sent: traffic.app_datagrams_sent,
            control_datagrams_sent: traffic.control_datagrams_sent,
            messages_per_datagram: if datagrams == 0 {
                0.0
            } else {
                messages as f64 / datagrams as f64
            },
            tracker_messages_sent: self.link.requests_sent + self.heartbeats_sent,
            datagrams_per_message: if self.measure.sent == 0 {
                0.0
            } else {
                datagrams as f64 / self.measure.sent as f64
            },
            dropped: Dropped {
                malformed: traffic.malformed,
                spoofed: traffic.spoofed,
                unknown: traffic.unknown,
                other_mode: traffic.other_mode,
                beyond_window: order.beyond_window,
            },
            evicted: self.measure.evicted.clone(),
            times_evicted: traffic.times_evicted,
            clock_synced: self.sync.is_some(),
            clock_offset_us: self.sync.map_or(0, |e| e.offset_ns / 1000),
            clock_bound_us: self.sync.map_or(0, |e| (e.bound_ns + 999) / 1000),
            recovery: Recovery {
                nacks_sent: order.nacks_sent,
                retransmissions_sent: order.retransmissions_sent,
                gaps_recovered: order.gaps_recovered,
                gaps_skipped: order.gaps_skipped,
                duplicates: order.duplicates,
            },
            failover: Failover {
                sequencer_losses: traffic.sequencer_losses,
                takeovers: traffic.sequencer_takeovers,
                already_delivered: traffic.already_delivered,
            },
            flow: Flow {
                window_closed: traffic.window_closed,
                probes_sent: traffic.flow_probes,
                acks_sent: traffic.acks_sent,
                acks_received: traffic.acks_received,
            },
        }
    }

    /// Leaves every group (Bye with our final counter), tells the tracker, and from then on
    /// only answers retransmission requests until they stop.
    fn begin_quit(&mut self, now: Instant) {
        if self.quitting.is_some() {
            return;
        }
        for group in self.core.groups() {
            self.core.leave(now, &group);
        }
        self.nacks_seen = (self.core.traffic().nacks_received, now);
        // Only a registered member may say Quit: a peer whose registration was refused (its
        // name is taken) must not make the tracker forget the member who has the name. A
        // registration on its way is answered first (see `handle_reply`).
        let registering = self.link.is_up() && !self.session;
        self.quitting = Some(Quitting {
            deadline: now + Duration::from_secs(2),
            acked: !self.session && !registering,
            told: false,
        });
        if self.session {
            self.send_quit();
        }
    }

    fn send_quit(&mut self) {
        let request = Request::Quit {
            username: self.options.username.clone(),
        };
        let sent = self.link.request(request, Purpose::Quit).is_ok();
        if let Some(q) = self.quitting.as_mut() {
            q.told = sent;
            q.acked |= !sent;
        }
    }

    fn quit_done(&mut self, now: Instant) -> bool {
        let Some(q) = &self.quitting else {
            return false;
        };
        let (acked, deadline) = (q.acked, q.deadline);
        now >= deadline || (acked && self.quiet(now))
    }
}

/// The address of our interface that datagrams to `to` leave from (no datagram is sent:
/// connecting a UDP socket only asks the routing table).
fn route_towards(to: SocketAddr) -> io::Result<std::net::IpAddr> {
    let any: SocketAddr = if to.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let probe = std::net::UdpSocket::bind(any)?;
    probe.connect(to)?;
    Ok(probe.local_addr()?.ip())
}

/// Orders names as a person expects: runs of digits by their value (`g2` before `g10`).
fn natural_order(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for ((da, x), (db, y)) in ca.iter().zip(&cb) {
        let order = if *da && *db {
            let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
            x.len().cmp(&y.len()).then_with(|| x.cmp(y))
        } else {
            x.cmp(y)
        };
        if order.is_ne() {
            return order;
        }
    }
    ca.len().cmp(&cb.len()).then_with(|| a.cmp(b))
}

#[cfg(test)]
mod tests {
    use super::natural_order;

    #[test]
    fn names_sort_by_the_value_of_their_numbers() {
        let mut names = vec!["g10", "g2", "g1", "books", "g02x", "a"];
        names.sort_by(|a, b| natural_order(a, b));
        assert_eq!(names, ["a", "books", "g1", "g2", "g02x", "g10"]);
    }
}
