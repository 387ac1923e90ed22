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
//! chan.close(); // a Bye to every group, Quit to the tracker (dropping it does the same)
//! ```
//!
//! A program with its own event loop can instead drive the sans-IO [`member::Member`] and
//! the [`runtime`] pieces itself, as this loop does.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::thread::JoinHandle;
use std::time::Duration;

use member::Mode;
use thiserror::Error;

use crate::Shutdown;
use crate::peer::{Peer, PeerError, PeerOptions};

/// How to connect a [`Channel`].
#[derive(Debug, Clone)]
pub struct ChannelConfig {
    /// Our name: unique among live members (see `proto::check_name`).
    pub name: String,
    /// The tracker.
    pub tracker: SocketAddr,
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
}

impl ChannelConfig {
    /// FIFO order, on 127.0.0.1 with a free port, the default windows, 5 s to register.
    pub fn new(name: &str, tracker: SocketAddr) -> Self {
        Self {
            name: name.to_owned(),
            tracker,
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: None,
            order: Mode::Fifo,
            ordering: ordering::Config::default(),
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// The same, in total order (the tracker must know a sequencer).
    pub fn total(mut self) -> Self {
        self.order = Mode::Total;
        self
    }
}

/// A message delivered to us, in its group's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The group.
    pub group: String,
    /// Who wrote it.
    pub author: String,
    /// What they sent.
    pub payload: Vec<u8>,
    /// Its place: the author's counter in FIFO order, the group's sequence number in total
    /// order (the same at every member).
    pub seq: u64,
    /// When the author sent it (µs since the Unix epoch, on its synchronized clock).
    pub sent_at_us: Option<u64>,
}

/// What a [`Channel`] receives, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelEvent {
    /// A message.
    Message(Delivery),
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
    /// evicted us (`evicted`), or on a new connection (it restarted, or the connection
    /// broke).
    Rejoined {
        /// Whether the tracker had evicted us.
        evicted: bool,
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
    Ask {
        query: member::Query,
        reply: Sender<Result<Vec<String>, ChannelError>>,
    },
}

/// The loop's side of a channel: the calls to apply, where events go, and the answer to
/// [`Channel::connect`].
pub(crate) struct Api {
    pub(crate) calls: Receiver<Call>,
    pub(crate) events: Sender<ChannelEvent>,
    pub(crate) ready: Option<Sender<Result<(), ChannelError>>>,
}

/// A member of groups, for a Rust program: see the module docs.
pub struct Channel {
    calls: Sender<Call>,
    /// Behind a lock so that the channel can be shared by threads (one receiving while
    /// another sends).
    events: Mutex<Receiver<ChannelEvent>>,
    stop: Shutdown,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

impl Channel {
    /// Binds, starts the member's loop on its own thread, and waits until the tracker has
    /// registered us (at most `connect_timeout`).
    pub fn connect(config: ChannelConfig) -> Result<Self, ChannelError> {
        proto::check_name("name", &config.name).map_err(ChannelError::Refused)?;
        let mut peer = Peer::bind(PeerOptions {
            addr: config.bind,
            advertise: config.advertise,
            username: config.name.clone(),
            tracker: config.tracker,
            mode: config.order,
            ordering: config.ordering,
            script: None,
            max_bundle: None,
            clock_offset_ms: 0.0,
            clock_drift_ppm: 0.0,
        })
        .map_err(|e| match e {
            PeerError::Io(source) => ChannelError::Bind {
                addr: config.bind,
                source,
            },
            other => ChannelError::Loop(other.to_string()),
        })?;
        let addr = peer.local_addr();
        let stop = peer.shutdown_handle();
        let (calls_tx, calls_rx) = mpsc::channel();
        let (events_tx, events_rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let failed = ready_tx.clone();
        let api = Api {
            calls: calls_rx,
            events: events_tx,
            ready: Some(ready_tx),
        };
        let thread = std::thread::Builder::new()
            .name(format!("member {}", config.name))
            .spawn(move || {
                if let Err(e) = peer.run_api(api) {
                    let _ = failed.send(Err(match e {
                        PeerError::Refused(reason) => ChannelError::Refused(reason),
                        other => ChannelError::Loop(other.to_string()),
                    }));
                }
            })
            .map_err(|e| ChannelError::Loop(e.to_string()))?;
        let mut chan = Self {
            calls: calls_tx,
            events: Mutex::new(events_rx),
            stop,
            thread: Some(thread),
            addr,
        };
        match ready_rx.recv_timeout(config.connect_timeout) {
            Ok(Ok(())) => Ok(chan),
            Ok(Err(e)) => {
                chan.shut();
                Err(e)
            }
            Err(_) => {
                chan.shut();
                Err(ChannelError::Unreachable(config.tracker))
            }
        }
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

    /// The next event, waiting for it; `Err(Closed)` once the channel is closed and every
    /// event was received.
    pub fn recv(&self) -> Result<ChannelEvent, ChannelError> {
        self.events().recv().map_err(|_| ChannelError::Closed)
    }

    /// The next event if one is there.
    pub fn try_recv(&self) -> Result<Option<ChannelEvent>, ChannelError> {
        match self.events().try_recv() {
            Ok(e) => Ok(Some(e)),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(ChannelError::Closed),
        }
    }

    /// The next event within `timeout`, or `None`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<ChannelEvent>, ChannelError> {
        match self.events().recv_timeout(timeout) {
            Ok(e) => Ok(Some(e)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(ChannelError::Closed),
        }
    }

    /// Leaves every group and tells the tracker, then stops the loop (waiting, at most about
    /// two seconds, for members still recovering our last messages).
    pub fn close(mut self) {
        self.shut();
    }

    /// Asks the loop to leave every group, tell the tracker and stop, without waiting (for
    /// a thread that shares the channel with one blocked in [`recv`](Self::recv), which then
    /// returns [`ChannelError::Closed`]). Dropping the channel waits for the loop to end.
    pub fn stop(&self) {
        self.stop.shutdown();
    }

    fn events(&self) -> std::sync::MutexGuard<'_, Receiver<ChannelEvent>> {
        self.events.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn shut(&mut self) {
        self.stop.shutdown();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    fn call<T>(
        &self,
        make: impl FnOnce(Sender<Result<T, ChannelError>>) -> Call,
    ) -> Result<T, ChannelError> {
        let (tx, rx) = mpsc::channel();
        self.calls
            .send(make(tx))
            .map_err(|_| ChannelError::Closed)?;
        self.stop.wake();
        rx.recv().map_err(|_| ChannelError::Closed)?
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.shut();
    }
}
