//! [`Channel`]: the handle a Rust program uses to be a member of groups — connect to a
//! tracker under a name, join and leave groups, send bytes with backpressure, and receive
//! deliveries and membership events as values. It runs the peer's event loop on a thread of
//! its own; the handle talks to it through channels and wakes it.
//!
//! ```no_run
//! use std::time::Duration;
//! use peer::{Channel, ChannelConfig, ChannelEvent};
//!
//! let tracker = "127.0.0.1:5000".parse().unwrap();
//! let chan = Channel::connect(ChannelConfig::new("ford", tracker)).unwrap();
//! chan.join("books").unwrap();
//! chan.send("books", b"hello, books").unwrap(); // waits while the flow-control window is full
//! while let Some(event) = chan.recv_timeout(Duration::from_secs(1)).unwrap() {
//!     if let ChannelEvent::Message(m) = event {
//!         println!("{} says {}", m.author, String::from_utf8_lossy(&m.payload));
//!     }
//! }
//! chan.close().unwrap(); // a Bye to every group, Quit to the tracker (dropping it does the same)
//! ```
//!
//! [`Channel::open`] returns at once instead, for a program that goes on while the tracker
//! is away (the interactive peer): [`ChannelEvent::Registered`] says when we are in.
//! [`Channel::open_into`] puts the events on the program's own queue (to wait on them and on
//! its input at once); [`Channel::open_with`] hands them to a handler on the loop's thread
//! (to count or store them without a thread switch per message, as the script peer does).
//! [`Channel::begin_send_all`] hands messages to the loop without waiting for them to go
//! ([`Pending`] has the answer), for a program that paces its own sends.
//!
//! A program with its own event loop can instead drive the sans-IO [`member::Member`] and
//! the [`runtime`] pieces itself, as this loop does.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use member::Mode;
use runtime::Shutdown;
use thiserror::Error;

use crate::driver::Driver;

/// How to connect a [`Channel`].
#[derive(Debug, Clone)]
pub struct ChannelConfig {
    /// Our name: unique among live members (see `proto::check_name`).
    pub name: String,
    /// The tracker.
    pub tracker: SocketAddr,
    /// Further trackers sharing the tracker's registry (its `--registry`): when the one in
    /// use dies, the channel moves to the next, keeping its identity and groups.
    pub other_trackers: Vec<SocketAddr>,
    /// The UDP address to receive on (default 127.0.0.1 with a free port). Bound to
    /// `0.0.0.0`, we register the address of our interface towards the tracker.
    pub bind: SocketAddr,
    /// The address the other members reach us at, if not the bound one (behind a NAT).
    pub advertise: Option<SocketAddr>,
    /// Delivery order of every group this channel joins.
    pub order: Mode,
    /// Windows and timers of the ordering core (its `flow_window` bounds how far a sender
    /// runs ahead of its slowest member: [`Channel::send`] waits beyond it).
    pub ordering: ordering::Config,
    /// How long [`Channel::connect`] waits for the tracker to register us.
    pub connect_timeout: Duration,
    /// Largest bundle of messages to one member that reads bundles, in bytes (`Some(0)`:
    /// one datagram per message; `None`: 16 KiB on loopback, 1472 bytes elsewhere).
    pub bundle_bytes: Option<usize>,
    /// Pretend this process's clock is this many milliseconds ahead (negative: behind), to
    /// watch clock synchronization at work on one machine.
    pub clock_offset_ms: f64,
    /// Pretend this process's clock gains this many microseconds per second.
    pub clock_drift_ppm: f64,
    /// Sealed groups and their keys (see the `seal` crate): their datagrams are sealed, and
    /// only members showing the same key join them. One key per group.
    pub seals: Vec<(String, seal::GroupKey)>,
    /// An IPv4 multicast group (address and port) to listen on as well, on the interface of
    /// our address (127.0.0.1: loopback), sending with TTL 1: a message of an unsealed group
    /// whose other members all listen on the same group goes out once instead of once per
    /// member. `None` (the default): unicast only.
    pub multicast: Option<SocketAddr>,
}

impl ChannelConfig {
    /// FIFO order, on 127.0.0.1 with a free port, the default windows, 5 s to register.
    pub fn new(name: &str, tracker: SocketAddr) -> Self {
        Self {
            name: name.to_owned(),
            tracker,
            other_trackers: Vec::new(),
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: None,
            order: Mode::Fifo,
            ordering: ordering::Config::default(),
            connect_timeout: Duration::from_secs(5),
            bundle_bytes: None,
            clock_offset_ms: 0.0,
            clock_drift_ppm: 0.0,
            seals: Vec::new(),
            multicast: None,
        }
    }

    /// The same, in total order (the tracker must know a sequencer).
    pub fn total(mut self) -> Self {
        self.order = Mode::Total;
        self
    }

    /// The same, with `group` sealed by `key` (replacing any key given it before).
    pub fn sealed(mut self, group: &str, key: seal::GroupKey) -> Self {
        self.seals.retain(|(g, _)| g != group);
        self.seals.push((group.to_owned(), key));
        self
    }
}

/// A message delivered to us, in its group's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The group.
    pub group: Arc<str>,
    /// Who wrote it.
    pub author: Arc<str>,
    /// What they sent.
    pub payload: Vec<u8>,
    /// Its place: the author's counter in FIFO order, the group's sequence number in total
    /// order (the same at every member).
    pub seq: u64,
    /// When the author sent it (µs since the Unix epoch, on its synchronized clock; `None`
    /// from report peers, which do not say).
    pub sent_at_us: Option<u64>,
    /// When it was delivered to us, on our synchronized clock (µs since the Unix epoch):
    /// with `sent_at_us`, its latency (read once per turn of the loop, for every message
    /// it delivers).
    pub received_at_us: u64,
    /// When our loop delivered it (this process's monotonic clock): with the moment it is
    /// received from the channel, how long it waited there.
    pub delivered_at: std::time::Instant,
}

/// What a [`Channel`] receives, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelEvent {
    /// A message.
    Message(Delivery),
    /// The tracker registered us for the first time: joining and asking may begin (sent
    /// also after [`Channel::connect`], which waits for it).
    Registered,
    /// An attempt to connect to the tracker failed (said once per outage, until it is
    /// back); messaging in joined groups goes on meanwhile.
    TrackerUnreachable {
        /// The tracker's address.
        tracker: SocketAddr,
    },
    /// A member joined one of our groups.
    MemberJoined {
        /// The group.
        group: String,
        /// The member.
        member: String,
    },
    /// A member left one of our groups.
    MemberLeft {
        /// The group.
        group: String,
        /// The member.
        member: String,
    },
    /// The tracker evicted a member of one of our groups (it stopped answering).
    MemberEvicted {
        /// The group.
        group: String,
        /// The member.
        member: String,
    },
    /// Total order is unavailable in a group: its sequencer is lost. Messages wait.
    SequencerLost {
        /// The group.
        group: String,
        /// Why we think so.
        reason: String,
    },
    /// A sequencer orders the group again (`new`: a new one took over).
    SequencerBack {
        /// The group.
        group: String,
        /// Whether it is a new sequencer.
        new: bool,
    },
    /// The tracker had evicted us from a group; we registered and greeted it again.
    WeWereEvicted {
        /// The group.
        group: String,
    },
    /// The tracker connection was lost; messaging in joined groups goes on.
    TrackerLost {
        /// Why.
        reason: String,
    },
    /// We registered with the tracker again and asked to rejoin our groups: after it had
    /// evicted us (`evicted`), or on a new connection (it restarted, the connection broke,
    /// or we moved to another tracker sharing its registry).
    Rejoined {
        /// Whether the tracker had evicted us.
        evicted: bool,
        /// The tracker we are registered with now.
        tracker: SocketAddr,
    },
}

/// Why a [`Channel`] call failed; nothing changed.
#[derive(Debug, Error)]
pub enum ChannelError {
    /// The UDP address could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The tracker refused to register us (the name is taken, say).
    #[error("the tracker refused to register us: {0}")]
    Refused(String),
    /// The tracker did not register us in time, or is not connected now.
    #[error("the tracker at {0} cannot be reached")]
    Unreachable(SocketAddr),
    /// The tracker refused the join (the group uses the other order, say).
    #[error("cannot join {group}: {reason}")]
    JoinRefused {
        /// The group.
        group: String,
        /// The tracker's reason.
        reason: String,
    },
    /// The member protocol refused the request (not joined, too long, not text for a
    /// group with report peers).
    #[error(transparent)]
    Member(#[from] member::Error),
    /// The tracker knows no such group.
    #[error("no such group: {0}")]
    NoSuchGroup(String),
    /// The tracker would not answer, for this reason (the members of a sealed group whose
    /// key we do not hold).
    #[error("the tracker would not say: {0}")]
    QueryRefused(String),
    /// [`Channel::try_send`]: the flow-control window of the group is full now.
    #[error("the flow-control window of {0} is full: the slowest member is behind")]
    WouldBlock(String),
    /// The channel is closed (its loop ended).
    #[error("the channel is closed")]
    Closed,
    /// The event loop failed.
    #[error("the event loop failed: {0}")]
    Loop(String),
}

/// What the loop has seen and done: counters for a report, and how far each joined group
/// is (for a program that waits until every member is there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelStats {
    /// Every joined group, by name.
    pub groups: Vec<GroupStatus>,
    /// Datagrams in and out, and what was dropped.
    pub traffic: member::Traffic,
    /// Loss recovery and ordering.
    pub ordering: ordering::Counters,
    /// Datagrams and bundles that left the socket (tracker datagrams included).
    pub wire: runtime::OutboxStats,
    /// Sealed datagrams opened, and dropped by reason (wrong key, forged, replayed).
    pub sealed: seal::OpenStats,
    /// Messages to the tracker: requests, heartbeats and clock queries.
    pub tracker_messages: u64,
    /// Of those, datagrams (heartbeats and clock queries).
    pub tracker_datagrams: u64,
    /// The latest estimate of the tracker's clock against ours, once there is one.
    pub clock: Option<clock::Estimate>,
    /// Whether the first synchronization burst is over: from then on messages carry send
    /// times on the synchronized clock.
    pub clock_settled: bool,
}

/// How far a joined group is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStatus {
    /// The group.
    pub name: String,
    /// Members (not us) we have greeted and heard from.
    pub members_heard: usize,
    /// Total order: a sequencer orders the group (always true in FIFO order).
    pub sequencer_ready: bool,
    /// A sealed group (we hold its key).
    pub sealed: bool,
}

/// A request from the handle to the loop, with where to answer.
pub(crate) enum Call {
    Join {
        group: String,
        reply: Sender<Result<Vec<String>, ChannelError>>,
    },
    Leave {
        group: String,
        reply: Sender<Result<(), ChannelError>>,
    },
    Send {
        group: String,
        payload: Vec<u8>,
        wait: bool,
        reply: Sender<Result<u64, ChannelError>>,
    },
    SendAll {
        group: String,
        payloads: Vec<Vec<u8>>,
        reply: Sender<Result<usize, ChannelError>>,
    },
    Stats {
        reply: Sender<ChannelStats>,
    },
    Ask {
        query: member::Query,
        reply: Sender<Result<Vec<String>, ChannelError>>,
    },
}

/// Where the loop hands events, a turn's worth at a time: the channel's own queue, or the
/// program's.
/// It takes them all out of the vector it is given (whose room the loop keeps).
pub(crate) type EventSink = Box<dyn FnMut(&mut Vec<ChannelEvent>) + Send>;

/// Run on the loop's thread when it ends.
type OnEnd = Box<dyn FnOnce() + Send>;

/// The loop's side of a channel: the calls to apply, where events go, and the answer to
/// [`Channel::connect`].
pub(crate) struct Api {
    pub(crate) calls: Receiver<Call>,
    pub(crate) events: EventSink,
    pub(crate) ready: Option<Sender<()>>,
}

/// The channel's own queue of events: the loop hands them over a turn's worth at a time
/// (one wake-up for many deliveries), taken one by one from `ready`.
struct EventQueue {
    batches: Receiver<Vec<ChannelEvent>>,
    ready: VecDeque<ChannelEvent>,
}

/// A member of groups, for a Rust program: see the module docs.
pub struct Channel {
    calls: Sender<Call>,
    /// Behind a lock so that the channel can be shared by threads (one receiving while
    /// another sends).
    events: Mutex<EventQueue>,
    stop: Shutdown,
    thread: Option<JoinHandle<Result<(), ChannelError>>>,
    addr: SocketAddr,
}

impl Channel {
    /// Binds, starts the member's loop on its own thread, and waits until the tracker has
    /// registered us (at most `connect_timeout`).
    pub fn connect(config: ChannelConfig) -> Result<Self, ChannelError> {
        let timeout = config.connect_timeout;
        let tracker = config.tracker;
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut chan = Self::start(config, Some(ready_tx), None)?;
        match ready_rx.recv_timeout(timeout) {
            Ok(()) => Ok(chan),
            // The loop ended before: it says why.
            Err(RecvTimeoutError::Disconnected) => Err(chan
                .shut()
                .err()
                .unwrap_or(ChannelError::Unreachable(tracker))),
            Err(RecvTimeoutError::Timeout) => {
                let _ = chan.shut();
                Err(ChannelError::Unreachable(tracker))
            }
        }
    }

    /// Binds and starts the member's loop on its own thread without waiting for the
    /// tracker: [`ChannelEvent::Registered`] comes once it has registered us, and
    /// [`ChannelEvent::TrackerUnreachable`] while it cannot be reached (the loop keeps
    /// trying). Should the tracker refuse us, the loop ends: events end with
    /// [`ChannelError::Closed`], and [`close`](Self::close) says why.
    pub fn open(config: ChannelConfig) -> Result<Self, ChannelError> {
        Self::start(config, None, None)
    }

    /// [`open`](Self::open), with the events going to `events` instead of the channel's own
    /// queue (whose `recv` then returns [`ChannelError::Closed`]): for a program that waits
    /// on its events and on something else at once, such as a person's input, on one queue.
    /// `last` is sent when the loop has ended. Our own message, delivered at once in FIFO
    /// order, is in `events` by the time [`send`](Self::send) returns.
    pub fn open_into<T: From<ChannelEvent> + Send + 'static>(
        config: ChannelConfig,
        events: Sender<T>,
        last: T,
    ) -> Result<Self, ChannelError> {
        let end = events.clone();
        let sink: EventSink = Box::new(move |batch| {
            for e in batch.drain(..) {
                let _ = events.send(T::from(e));
            }
        });
        let on_end: OnEnd = Box::new(move || {
            let _ = end.send(last);
        });
        Self::start(config, None, Some((sink, Some(on_end))))
    }

    /// [`open`](Self::open), with every event handed to `handler` on the loop's own thread
    /// as it happens, instead of queued (`recv` then returns [`ChannelError::Closed`]), as a
    /// JGroups receiver's callbacks are. For a program that only counts, stores or forwards
    /// what arrives: no thread switch and no wake-up per hand-over. The handler must be
    /// quick — the loop, and so the whole member, waits for it — and must not call the
    /// channel (the loop that would answer is the one running it).
    pub fn open_with(
        config: ChannelConfig,
        mut handler: impl FnMut(ChannelEvent) + Send + 'static,
    ) -> Result<Self, ChannelError> {
        let sink: EventSink = Box::new(move |batch| batch.drain(..).for_each(&mut handler));
        Self::start(config, None, Some((sink, None)))
    }

    /// Binds and starts the loop; `ready` hears of our registration, `sink` takes the events
    /// instead of the channel's own queue.
    fn start(
        config: ChannelConfig,
        ready: Option<Sender<()>>,
        sink: Option<(EventSink, Option<OnEnd>)>,
    ) -> Result<Self, ChannelError> {
        proto::check_name("name", &config.name).map_err(ChannelError::Refused)?;
        if config.name == member::SEQUENCER {
            return Err(ChannelError::Refused(format!(
                "the name {:?} is reserved for the sequencer",
                member::SEQUENCER
            )));
        }
        let (calls_tx, calls_rx) = mpsc::channel();
        let (events_tx, events_rx) = mpsc::channel();
        let (events, on_end): (EventSink, Option<OnEnd>) = match sink {
            Some((sink, on_end)) => (sink, on_end),
            None => (
                Box::new(move |batch| {
                    let _ = events_tx.send(std::mem::take(batch));
                }),
                None,
            ),
        };
        let api = Api {
            calls: calls_rx,
            events,
            ready,
        };
        let mut driver = Driver::bind(&config, api).map_err(|source| ChannelError::Bind {
            addr: config.bind,
            source,
        })?;
        let addr = driver.local_addr();
        let stop = driver.shutdown_handle();
        let thread = std::thread::Builder::new()
            .name(format!("member {}", config.name))
            .spawn(move || {
                let result = driver.run().map_err(ChannelError::from);
                // The sink goes before the last word, so that nothing follows it.
                drop(driver);
                if let Some(on_end) = on_end {
                    on_end();
                }
                result
            })
            .map_err(|e| ChannelError::Loop(e.to_string()))?;
        Ok(Self {
            calls: calls_tx,
            events: Mutex::new(EventQueue {
                batches: events_rx,
                ready: VecDeque::new(),
            }),
            stop,
            thread: Some(thread),
            addr,
        })
    }

    /// The UDP address we receive on (and registered).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Joins `group` (created if needed) and returns its members' names after the join;
    /// waits for the tracker's answer.
    pub fn join(&self, group: &str) -> Result<Vec<String>, ChannelError> {
        self.call(|reply| Call::Join {
            group: group.to_owned(),
            reply,
        })
    }

    /// The groups the tracker knows; waits for its answer.
    pub fn groups(&self) -> Result<Vec<String>, ChannelError> {
        self.call(|reply| Call::Ask {
            query: member::Query::Groups,
            reply,
        })
    }

    /// The members of `group` as the tracker lists them ([`ChannelError::NoSuchGroup`] if
    /// it does not exist); waits for its answer.
    pub fn members(&self, group: &str) -> Result<Vec<String>, ChannelError> {
        self.call(|reply| Call::Ask {
            query: member::Query::Members(group.to_owned()),
            reply,
        })
    }

    /// Leaves `group`: its members get our Bye (with our last counter, so they deliver all
    /// we sent), and the tracker is told.
    pub fn leave(&self, group: &str) -> Result<(), ChannelError> {
        self.call(|reply| Call::Leave {
            group: group.to_owned(),
            reply,
        })
    }

    /// Multicasts `payload` to `group` and returns its counter; waits while the group's
    /// flow-control window is full (the slowest member is a window behind). Text reaches
    /// every member; other bytes only groups without report peers.
    pub fn send(&self, group: &str, payload: &[u8]) -> Result<u64, ChannelError> {
        self.call(|reply| Call::Send {
            group: group.to_owned(),
            payload: payload.to_vec(),
            wait: true,
            reply,
        })
    }

    /// [`send`](Self::send) without waiting: [`ChannelError::WouldBlock`] when the window
    /// is full (nothing was sent; try again after receiving, or later).
    pub fn try_send(&self, group: &str, payload: &[u8]) -> Result<u64, ChannelError> {
        self.call(|reply| Call::Send {
            group: group.to_owned(),
            payload: payload.to_vec(),
            wait: false,
            reply,
        })
    }

    /// Multicasts every one of `payloads` to `group`, in order, waiting for the flow-control
    /// window as [`send`](Self::send) does, in one call to the loop: the messages leave as
    /// fast as the window lets them, bundled. Returns how many went (all of them). An
    /// error (a message the member refuses, the channel closed) stops it: the messages
    /// before that one went. Owned payloads (`Vec<u8>`, `String`) are moved, not copied.
    pub fn send_all<P: Into<Vec<u8>>>(
        &self,
        group: &str,
        payloads: impl IntoIterator<Item = P>,
    ) -> Result<usize, ChannelError> {
        self.begin_send_all(group, payloads)?.wait()
    }

    /// [`send_all`](Self::send_all) without waiting for the messages to go: they are
    /// handed to the loop, which sends them in the order handed over (after what was handed
    /// before), and [`Pending`] has the answer later. For a program that paces its own
    /// sends: it is not woken by each answer, a wake-up that would compete for a CPU with
    /// the receivers of what it just sent.
    pub fn begin_send_all<P: Into<Vec<u8>>>(
        &self,
        group: &str,
        payloads: impl IntoIterator<Item = P>,
    ) -> Result<Pending<usize>, ChannelError> {
        let payloads = payloads.into_iter().map(Into::into).collect();
        self.begin(|reply| Call::SendAll {
            group: group.to_owned(),
            payloads,
            reply,
        })
    }

    /// What the loop has seen and done so far.
    pub fn stats(&self) -> Result<ChannelStats, ChannelError> {
        let (tx, rx) = mpsc::channel();
        self.calls
            .send(Call::Stats { reply: tx })
            .map_err(|_| ChannelError::Closed)?;
        self.stop.wake();
        rx.recv().map_err(|_| ChannelError::Closed)
    }

    /// The next event, waiting for it; `Err(Closed)` once the channel is closed and every
    /// event was received.
    pub fn recv(&self) -> Result<ChannelEvent, ChannelError> {
        let mut events = self.events();
        loop {
            if let Some(event) = events.ready.pop_front() {
                return Ok(event);
            }
            let batch = events.batches.recv().map_err(|_| ChannelError::Closed)?;
            events.ready.extend(batch);
        }
    }

    /// The next event if one is there.
    pub fn try_recv(&self) -> Result<Option<ChannelEvent>, ChannelError> {
        let mut events = self.events();
        loop {
            if let Some(event) = events.ready.pop_front() {
                return Ok(Some(event));
            }
            match events.batches.try_recv() {
                Ok(batch) => events.ready.extend(batch),
                Err(TryRecvError::Empty) => return Ok(None),
                Err(TryRecvError::Disconnected) => return Err(ChannelError::Closed),
            }
        }
    }

    /// The next event within `timeout`, or `None`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<ChannelEvent>, ChannelError> {
        let deadline = std::time::Instant::now() + timeout;
        let mut events = self.events();
        loop {
            if let Some(event) = events.ready.pop_front() {
                return Ok(Some(event));
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match events.batches.recv_timeout(left) {
                Ok(batch) => events.ready.extend(batch),
                Err(RecvTimeoutError::Timeout) => return Ok(None),
                Err(RecvTimeoutError::Disconnected) => return Err(ChannelError::Closed),
            }
        }
    }

    /// Leaves every group and tells the tracker, then stops the loop (waiting, at most about
    /// two seconds, for members still recovering our last messages). An error says why the
    /// loop had ended on its own (the tracker refused us, a socket failed).
    pub fn close(mut self) -> Result<(), ChannelError> {
        self.shut()
    }

    /// A handle that closes the channel from anywhere (a Ctrl-C handler, another thread),
    /// as [`stop`](Self::stop) does.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.stop.clone()
    }

    /// Asks the loop to leave every group, tell the tracker and stop, without waiting (for
    /// a thread that shares the channel with one blocked in [`recv`](Self::recv), which then
    /// returns [`ChannelError::Closed`]). Dropping the channel waits for the loop to end.
    pub fn stop(&self) {
        self.stop.shutdown();
    }

    fn events(&self) -> std::sync::MutexGuard<'_, EventQueue> {
        self.events.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn shut(&mut self) -> Result<(), ChannelError> {
        self.stop.shutdown();
        match self.thread.take().map(JoinHandle::join) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(e),
            Some(Err(_)) => Err(ChannelError::Loop("the loop panicked".into())),
        }
    }

    fn call<T>(
        &self,
        make: impl FnOnce(Sender<Result<T, ChannelError>>) -> Call,
    ) -> Result<T, ChannelError> {
        self.begin(make)?.wait()
    }

    /// Hands a call to the loop and wakes it; the answer comes on the [`Pending`].
    fn begin<T>(
        &self,
        make: impl FnOnce(Sender<Result<T, ChannelError>>) -> Call,
    ) -> Result<Pending<T>, ChannelError> {
        let (tx, rx) = mpsc::channel();
        self.calls
            .send(make(tx))
            .map_err(|_| ChannelError::Closed)?;
        self.stop.wake();
        Ok(Pending { answer: rx })
    }
}

/// The answer to come of a call handed to the loop without waiting, such as
/// [`Channel::begin_send_all`].
#[derive(Debug)]
#[must_use = "the answer says whether the messages went"]
pub struct Pending<T> {
    answer: Receiver<Result<T, ChannelError>>,
}

impl<T> Pending<T> {
    /// Waits for the answer ([`ChannelError::Closed`] if the loop ended first).
    pub fn wait(self) -> Result<T, ChannelError> {
        self.answer.recv().map_err(|_| ChannelError::Closed)?
    }

    /// The answer if it has come, without waiting.
    pub fn try_wait(&self) -> Option<Result<T, ChannelError>> {
        match self.answer.try_recv() {
            Ok(answer) => Some(answer),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(Err(ChannelError::Closed)),
        }
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        let _ = self.shut();
    }
}
