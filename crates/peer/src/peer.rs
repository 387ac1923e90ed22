//! The peer daemon: one mio loop over the UDP socket, the user's input (read by a helper
//! thread that wakes the loop, see [`crate::console`]), the tracker link and timers. It feeds
//! the sans-IO [`Member`] (the whole member protocol, the tracker dialog included) and does
//! what it asks; it makes no protocol decisions of its own.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::time::{Duration, Instant, SystemTime};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use thiserror::Error;

use crate::channel::{Api, Call, ChannelError, ChannelEvent, Delivery};
use crate::command::{self, Command, HELP};
use crate::console::{Input, Screen, visible};
use crate::report::{Dropped, Failover, Flow, Latency, Recovery, Report};
use member::{
    Answer, Ask, CoreConfig, Event, JoinFailure, Member, MemberConfig, Message, Mode, Output,
    Query, Registration, Ticket, Transmit,
};
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

/// Who asked the tracker something, to hand the answer to.
enum Origin {
    /// A line the user typed (the lines after it wait for the answer).
    Line(String),
    /// A line asking for the members of a group.
    Members(String, String),
    /// A [`Channel`](crate::Channel)'s join or question, answered on its sender (with the
    /// group asked about, if any).
    Api(Sender<Result<Vec<String>, ChannelError>>, Option<String>),
    /// The script's join.
    Script,
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
    poll: Poll,
    udp: UdpSocket,
    stop: Shutdown,
    link: TrackerLink<Ask>,
    member: Member,
    outbox: runtime::Outbox,
    udp_pending: bool,
    /// Requests to the tracker waiting for their answer, by ticket.
    tickets: HashMap<Ticket, Origin>,
    selected: Option<String>,
    phase: Phase,
    measure: Measure,
    deliveries: Option<io::BufWriter<std::fs::File>>,
    /// When quitting, the latest we wait for the tracker's answer and the others' requests.
    quit_deadline: Option<Instant>,
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
    /// We told the user the tracker cannot be reached (told once per outage).
    told_unreachable: bool,
    report: Option<Report>,
    buf: Box<[u8]>,
    /// This process's clock (simulated skew, if asked for); the member's clock
    /// synchronization reads the same.
    local: clock::SkewedClock,
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
        let local = clock::SkewedClock::new(
            (options.clock_offset_ms * 1e6) as i64,
            options.clock_drift_ppm,
            real_now(),
        );
        let member = Member::new(
            MemberConfig {
                core: CoreConfig {
                    username: options.username.clone(),
                    addr,
                    tracker: options.tracker,
                    mode: options.mode,
                    ordering: options.ordering.clone(),
                },
                clock: Some(Box::new(move |_| local.read(real_now()))),
            },
            now,
        );
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
            options: PeerOptions { addr, ..options },
            poll,
            udp,
            stop,
            member,
            outbox: runtime::Outbox::new().with_max_bundle(max_bundle),
            udp_pending: false,
            tickets: HashMap::new(),
            selected: None,
            phase: Phase::Starting,
            measure: Measure::default(),
            deliveries,
            quit_deadline: None,
            nacks_seen: (0, now),
            screen: None,
            api: None,
            waiting_sends: VecDeque::new(),
            pending: VecDeque::new(),
            awaiting: None,
            told_unreachable: false,
            report: None,
            buf: vec![0; 64 * 1024].into_boxed_slice(),
            local,
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
            if self.member.poll_timeout().is_some_and(|at| at <= now) {
                self.member.handle_timeout(now);
            }
            self.script_step(now)?;
            self.handle_link_events(now)?;
            self.apply_input(now)?;
            self.apply_calls(now);
            self.drain_core(now)?;
            self.flush_outbox();
            if self.stop.requested() && self.quit_deadline.is_none() {
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
            if self.member.is_quitting() {
                break;
            }
            match call {
                Call::Join { group, reply } => match self.member.join(now, &group) {
                    Ok(ticket) => {
                        self.tickets.insert(ticket, Origin::Api(reply, None));
                    }
                    Err(member::Error::AlreadyJoined { .. }) => {
                        let _ = reply.send(Ok(Vec::new()));
                    }
                    Err(member::Error::NoTracker) => {
                        let _ = reply.send(Err(ChannelError::Unreachable(self.link.addr())));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                },
                Call::Ask { query, reply } => {
                    let group = match &query {
                        Query::Members(group) => Some(group.clone()),
                        Query::Groups => None,
                    };
                    match self.member.ask(now, query) {
                        Ok(ticket) => {
                            self.tickets.insert(ticket, Origin::Api(reply, group));
                        }
                        Err(member::Error::NoTracker) => {
                            let _ = reply.send(Err(ChannelError::Unreachable(self.link.addr())));
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e.into()));
                        }
                    }
                }
                Call::Leave { group, reply } => {
                    let _ = reply.send(self.member.leave(now, &group).map_err(Into::into));
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
                        && (!self.member.core().is_joined(&waiting.group)
                            || self.member.window_open(now, &waiting.group))
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
            if self.member.core().is_joined(&front.group)
                && !self.member.window_open(now, &front.group)
            {
                break;
            }
            let waiting = self.waiting_sends.pop_front().expect("looked at above");
            self.api_send(now, waiting);
        }
    }

    fn api_send(&mut self, now: Instant, waiting: WaitingSend) {
        let result = self
            .member
            .send(now, &waiting.group, &waiting.payload)
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
        if !self.member.is_registered() && !self.told_unreachable && self.link_tried() {
            self.told_unreachable = true;
            self.say(format_args!(
                "cannot reach the tracker at {} yet; retrying, and what you type waits for it",
                self.link.addr()
            ))?;
        }
        while !self.member.is_quitting() && self.awaiting.is_none() {
            let Some(item) = self.pending.front() else {
                break;
            };
            // Quitting waits only for a registration on its way (then the tracker is told);
            // any other line for our registration, and for the tracker if it asks it.
            let registering = self.link.is_up() && !self.member.in_session();
            let ready = match item {
                Input::End | Input::Interrupt => !registering,
                Input::Line(line) | Input::Mangled(line) => match command::parse(line) {
                    Ok(Command::Quit) => !registering,
                    Ok(c) if c.needs_tracker() => self.member.in_session(),
                    _ => self.member.is_registered(),
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
        let quitting = self.quit_deadline.map(|_| now + Duration::from_millis(20));
        [
            self.member.poll_timeout(),
            self.link.poll_timeout(),
            script,
            quitting,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn read_udp(&mut self, now: Instant) {
        self.udp_pending = false;
        for _ in 0..READ_BATCH {
            match self.udp.recv_from(&mut self.buf) {
                Ok((n, from)) => self.member.handle_datagram(now, from, &self.buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => log::debug!("udp: {e}"),
            }
        }
        // More may be waiting: come back after other work had its turn.
        self.udp_pending = true;
    }

    fn flush_outbox(&mut self) {
        self.outbox.flush(&self.udp);
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
            && !self.member.is_quitting()
        {
            let idle =
                self.member.is_registered() && self.pending.is_empty() && self.awaiting.is_none();
            screen.borrow_mut().prompt(&self.prompt(), idle);
        }
    }

    /// Sends a tracker request for the user's `line`; the lines after it wait for the answer.
    fn ask(&mut self, line: &str, asked: Result<Ticket, member::Error>, origin: Origin) {
        match asked {
            Ok(ticket) => {
                self.tickets.insert(ticket, origin);
                self.awaiting = Some(line.to_owned());
            }
            // The connection went between the check and now: the line waits for the next.
            Err(_) => self.pending.push_front(Input::Line(line.to_owned())),
        }
    }

    fn handle_line(&mut self, now: Instant, line: &str) -> Result<(), PeerError> {
        if self.member.is_quitting() {
            return Ok(());
        }
        match command::parse(line) {
            Err(usage) => self.say(visible(&usage))?,
            Ok(Command::Nothing) => {}
            Ok(Command::Help) => {
                for l in HELP.lines() {
                    self.say(l)?;
                }
            }
            Ok(Command::ListGroups) => {
                let asked = self.member.ask(now, Query::Groups);
                self.ask(line, asked, Origin::Line(line.to_owned()));
            }
            Ok(Command::ListMembers(group)) => {
                let asked = self.member.ask(now, Query::Members(group.clone()));
                self.ask(line, asked, Origin::Members(line.to_owned(), group));
            }
            Ok(Command::Join(group)) => {
                if self.member.core().is_joined(&group) {
                    self.selected = Some(group.clone());
                    let group = visible(&group);
                    self.say(format_args!("already in {group}; writing to {group}"))?;
                } else {
                    let asked = self.member.join(now, &group);
                    self.ask(line, asked, Origin::Line(line.to_owned()));
                }
            }
            Ok(Command::Write(group)) => {
                if self.member.core().is_joined(&group) {
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
                if self.member.leave(now, &group).is_ok() {
                    let left = visible(&group).into_owned();
                    if self.selected.as_deref() == Some(group.as_str()) {
                        let mut rest = self.member.core().groups();
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
                    if let Err(e) = self.member.send(now, &group, text.as_bytes()) {
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
                    self.member.tracker_connected(now);
                }
                LinkEvent::Disconnected { reason } => {
                    self.member.tracker_disconnected(now);
                    self.emit(ChannelEvent::TrackerLost {
                        reason: reason.clone(),
                    });
                    self.told_unreachable = false;
                    let line = format!(
                        "lost the tracker ({reason}); messaging in joined groups goes on, reconnecting"
                    );
                    log::info!("{line}");
                    self.say(&line)?;
                }
                LinkEvent::Lost(ask) => self.member.tracker_unanswered(now, ask),
                LinkEvent::Reply(ask, reply) => self.member.handle_tracker_reply(now, ask, &reply),
            }
            self.drain_core(now)?;
        }
        Ok(())
    }

    /// What the member tells about our dealings with the tracker.
    fn tracker_news(&mut self, now: Instant, event: Event) -> Result<(), PeerError> {
        match event {
            Event::RegistrationRefused { reason } => {
                return Err(PeerError::Refused(visible(&reason).into_owned()));
            }
            Event::Registered(how) => {
                self.told_unreachable = false;
                if let Some(ready) = self.api.as_mut().and_then(|a| a.ready.take()) {
                    let _ = ready.send(Ok(()));
                }
                if let Some(script) = &self.script {
                    // The script's group, once (again, if the connection went before the
                    // tracker answered).
                    let asked = self.tickets.values().any(|o| matches!(o, Origin::Script));
                    if matches!(self.phase, Phase::Starting) && !asked {
                        let group = script.group.clone();
                        if let Ok(ticket) = self.member.join(now, &group) {
                            self.tickets.insert(ticket, Origin::Script);
                        }
                    }
                }
                match how {
                    // Said on the console only (a script's output is its report).
                    Registration::First => self.say(format_args!(
                        "registered as {} with the tracker at {} ({} order); !h lists the commands",
                        self.options.username,
                        self.link.addr(),
                        match self.options.mode {
                            Mode::Fifo => "FIFO",
                            Mode::Total => "total",
                        }
                    ))?,
                    Registration::AfterEviction => {
                        self.emit(ChannelEvent::Rejoined { evicted: true });
                        self.say("registered again and rejoined our groups")?;
                    }
                    Registration::TrackerBack => {
                        self.emit(ChannelEvent::Rejoined { evicted: false });
                        self.say("the tracker is back; registered and rejoined our groups")?;
                    }
                }
            }
            Event::GroupJoined {
                ticket,
                group,
                members,
            } => match self.tickets.remove(&ticket) {
                Some(Origin::Api(answer, _)) => {
                    let _ = answer.send(Ok(members));
                }
                Some(Origin::Script) => {
                    if matches!(self.phase, Phase::Starting) {
                        self.phase = Phase::Waiting { since: now };
                    }
                }
                Some(Origin::Line(_) | Origin::Members(..)) | None => {
                    self.awaiting = None;
                    self.selected.get_or_insert_with(|| group.clone());
                    let writing = self.selected.clone().unwrap_or_default();
                    self.say(format_args!(
                        "joined {}; writing to {}",
                        visible(&group),
                        visible(&writing)
                    ))?;
                }
            },
            Event::JoinFailed {
                ticket,
                group,
                reason,
            } => {
                let origin = ticket.and_then(|t| self.tickets.remove(&t));
                match (origin, reason) {
                    (Some(Origin::Api(answer, _)), JoinFailure::Refused(reason)) => {
                        let _ = answer.send(Err(ChannelError::JoinRefused { group, reason }));
                    }
                    (Some(Origin::Api(answer, _)), JoinFailure::Unanswered) => {
                        let _ = answer.send(Err(ChannelError::Unreachable(self.link.addr())));
                    }
                    (Some(Origin::Script), JoinFailure::Refused(reason)) => {
                        return Err(PeerError::JoinRefused {
                            group,
                            reason: visible(&reason).into_owned(),
                        });
                    }
                    // Asked again once we are registered on a new connection.
                    (Some(Origin::Script), JoinFailure::Unanswered) => {}
                    (
                        Some(Origin::Line(line) | Origin::Members(line, _)),
                        JoinFailure::Unanswered,
                    ) => {
                        // Asked again once we are registered on a new connection.
                        self.awaiting = None;
                        self.pending.push_front(Input::Line(line));
                    }
                    (_, reason) => {
                        self.awaiting = None;
                        let why = match reason {
                            JoinFailure::Refused(reason) => reason,
                            JoinFailure::Unanswered => "the tracker did not answer".into(),
                        };
                        let line =
                            format!("error: cannot join {}: {}", visible(&group), visible(&why));
                        log::info!("{line}");
                        self.say(&line)?;
                    }
                }
            }
            Event::Answered { ticket, answer } => {
                self.awaiting = None;
                let origin = self.tickets.remove(&ticket);
                if let Some(Origin::Api(reply, group)) = origin {
                    let _ = reply.send(match answer {
                        Answer::Groups(names) | Answer::Members(names) => Ok(names),
                        Answer::NoSuchGroup => {
                            Err(ChannelError::NoSuchGroup(group.unwrap_or_default()))
                        }
                        Answer::Unanswered => Err(ChannelError::Unreachable(self.link.addr())),
                    });
                    return Ok(());
                }
                match (answer, origin) {
                    (Answer::Unanswered, Some(Origin::Line(line) | Origin::Members(line, _))) => {
                        self.pending.push_front(Input::Line(line));
                    }
                    (Answer::Groups(mut names), _) => {
                        names.sort_by(|a, b| natural_order(a, b));
                        let list = if names.is_empty() {
                            "(none)".to_owned()
                        } else {
                            names
                                .iter()
                                .map(|g| {
                                    let mark = if self.member.core().is_joined(g) {
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
                    (Answer::Members(names), _) => {
                        let list = names
                            .iter()
                            .map(|m| format!("({})", visible(m)))
                            .collect::<Vec<_>>()
                            .join(", ");
                        self.say(format_args!("members: {list}"))?;
                    }
                    (Answer::NoSuchGroup, Some(Origin::Members(_, group))) => {
                        self.say(format_args!("no such group: {}", visible(&group)))?;
                    }
                    (Answer::NoSuchGroup | Answer::Unanswered, _) => {}
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn drain_core(&mut self, now: Instant) -> Result<(), PeerError> {
        while let Some(output) = self.member.poll_output() {
            match output {
                // Queued: the end of the loop's turn sends them, bundled and per member.
                Output::Transmit(Transmit { to, bytes, bundle }) => {
                    self.outbox.queue(to, bytes, bundle)
                }
                Output::Tracker(request) => {
                    if let Err(ask) = self.link.send(&request.envelope, request.ask) {
                        self.member.tracker_unanswered(now, ask);
                    }
                }
                Output::Deliver(message) => self.deliver(now, message)?,
                Output::Event(
                    event @ (Event::Registered(_)
                    | Event::RegistrationRefused { .. }
                    | Event::GroupJoined { .. }
                    | Event::JoinFailed { .. }
                    | Event::Answered { .. }),
                ) => self.tracker_news(now, event)?,
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
                            _ => continue,
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
                        _ => continue,
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
                let core = self.member.core();
                let heard = core.members_heard(&script.group) + 1 >= script.members;
                let ordered =
                    self.options.mode == Mode::Fifo || core.sequencer_ready(&script.group);
                let synced = self.member.clock().is_some_and(|c| c.settled(now))
                    || self
                        .member
                        .registered_at()
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
                    if !self.member.window_open(now, &script.group) {
                        self.flow_blocked = true;
                        break;
                    }
                    if let Some(line) = script.lines.get(next) {
                        self.member
                            .send(now, &script.group, line.as_bytes())
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
        let nacks = self.member.core().traffic().nacks_received;
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
        let traffic = self.member.core().traffic();
        let order = self.member.core().ordering_counters();
        // Signed: a clock badly out of step shows as a negative latency, not as zero.
        let mut latencies: Vec<i64> = self
            .measure
            .arrivals
            .iter()
            .map(|(sent, arrived)| {
                // The tracker's offset at that moment, carried at its measured rate.
                self.member.synchronized(*arrived).as_micros() - sent
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
        let sync = self.member.clock().and_then(|c| c.estimate());
        let datagrams = wire
            .datagrams
            .saturating_sub(self.member.tracker_datagrams());
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
            tracker_messages_sent: self.member.tracker_messages(),
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
            clock_synced: sync.is_some(),
            clock_offset_us: sync.map_or(0, |e| e.offset_ns / 1000),
            clock_bound_us: sync.map_or(0, |e| (e.bound_ns + 999) / 1000),
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
        if self.quit_deadline.is_some() {
            return;
        }
        self.member.quit(now);
        self.quit_deadline = Some(now + Duration::from_secs(2));
        self.nacks_seen = (self.member.core().traffic().nacks_received, now);
    }

    fn quit_done(&mut self, now: Instant) -> bool {
        match self.quit_deadline {
            None => false,
            Some(deadline) => {
                now >= deadline || (self.member.quit_acknowledged() && self.quiet(now))
            }
        }
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
