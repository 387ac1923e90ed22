//! The sequencer daemon's event loop: one mio `Poll` over its UDP socket, the tracker link
//! (registration and heartbeats, like any member) and timers, around [`SequencerNode`].

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Poll, Token};
use proto::SEQUENCER;
use proto::{Envelope, PROTOCOL_VERSION, Request};
use runtime::{LinkEvent, TrackerLink};

use crate::node::{NodeOutput, SequencerNode};

const UDP: Token = Token(0);
const WAKER: Token = Token(1);
const TRACKER: Token = Token(2);
const READ_BATCH: usize = 512;

/// A new epoch for a sequencer starting now: microseconds since the Unix epoch, different
/// for every start of a sequencer in practice.
fn epoch_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64)
}

/// Stops a running [`SequencerServer`].
pub use runtime::Shutdown;

/// What happened that the user should see: between the sequencer and its tracker (the
/// registration is reported when the tracker confirms it, never before), and the groups it
/// took over from an earlier sequencer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum News {
    /// We took `group` over from an earlier sequencer: total order resumes there.
    TookOver {
        /// The group.
        group: String,
        /// Members that greeted us in time.
        members: usize,
        /// Messages of the earlier sequence ordered again for members that lacked them.
        recovered: usize,
    },
    /// The tracker accepted our registration (again, after `again`).
    Registered {
        /// The tracker.
        tracker: SocketAddr,
        /// Whether this is a registration after a lost connection or an eviction.
        again: bool,
    },
    /// The tracker refused our registration.
    Refused {
        /// The tracker.
        tracker: SocketAddr,
        /// Its reason.
        reason: String,
    },
    /// No registration within a second of starting (or of losing the tracker): it is
    /// unreachable for now; the sequencer goes on and keeps trying.
    Unreachable {
        /// The tracker.
        tracker: SocketAddr,
    },
    /// The connection to the tracker was lost; sequencing goes on, and it reconnects.
    Lost {
        /// The tracker.
        tracker: SocketAddr,
        /// Why.
        reason: String,
    },
}

/// How long without a registration before the user is told the tracker is unreachable.
const REGISTRATION_PATIENCE: Duration = Duration::from_secs(1);

/// Every this many UDP heartbeats one goes over the tracker connection too, so that the
/// tracker never closes it as idle (its idle timeout is 30 s by default).
const KEEPALIVE_EVERY: u64 = 10;

/// Why a request went to the tracker.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Purpose {
    Register,
    KeepAlive,
    /// The members of a group we take over.
    Members(String),
}

/// The sequencer daemon.
pub struct SequencerServer {
    poll: Poll,
    udp: UdpSocket,
    write_watch: runtime::WriteWatch,
    addr: SocketAddr,
    stop: Shutdown,
    node: SequencerNode,
    link: Option<TrackerLink<Purpose>>,
    heartbeat: Duration,
    next_heartbeat: Option<Instant>,
    heartbeats: u64,
    registered: bool,
    /// The core said the tracker evicted us: register again.
    evicted: bool,
    /// Groups whose member lists the core asked for.
    member_lists: Vec<String>,
    /// When to tell the user the tracker is unreachable, if still unregistered then.
    patience_until: Option<Instant>,
    news: Vec<News>,
    outbox: runtime::Outbox,
    udp_pending: bool,
    buf: Box<[u8]>,
}

impl SequencerServer {
    /// Binds `addr`; with `tracker`, registers there as `sequencer` and heartbeats.
    pub fn bind(
        addr: SocketAddr,
        tracker: Option<SocketAddr>,
        config: ordering::Config,
    ) -> io::Result<Self> {
        let std_udp = runtime::bind_udp(addr, 8 << 20, 8 << 20)?;
        let addr = std_udp.local_addr()?;
        let (poll, udp, stop) = runtime::poll_udp(std_udp, UDP, WAKER)?;
        let now = Instant::now();
        Ok(Self {
            poll,
            udp,
            write_watch: runtime::WriteWatch::new(UDP),
            addr,
            stop,
            node: SequencerNode::new(addr, tracker, config, epoch_now()),
            link: tracker.map(|t| TrackerLink::new(t, TRACKER, now)),
            heartbeat: Duration::from_secs(1),
            next_heartbeat: None,
            heartbeats: 0,
            registered: false,
            evicted: false,
            member_lists: Vec::new(),
            patience_until: tracker.map(|_| now + REGISTRATION_PATIENCE),
            news: Vec::new(),
            outbox: runtime::Outbox::new(),
            udp_pending: false,
            buf: vec![0; 64 * 1024].into_boxed_slice(),
        })
    }

    /// Uses `more` trackers too, sharing the first one's registry (their `--registry`):
    /// when the tracker in use dies, the sequencer moves to the next and registers there.
    pub fn with_other_trackers(mut self, more: &[SocketAddr]) -> Self {
        if let Some(link) = self.link.as_mut() {
            let mut all = vec![link.addr()];
            all.extend_from_slice(more);
            *link = TrackerLink::with_trackers(all, TRACKER, Instant::now());
        }
        self
    }

    /// Holds the keys of these sealed groups (see [`SequencerNode::add_seals`]).
    pub fn with_seals(
        mut self,
        seals: &[(String, seal::GroupKey)],
    ) -> Result<Self, seal::SharedKey> {
        self.node.add_seals(seals)?;
        Ok(self)
    }

    /// Sets the largest bundle towards members that read bundles (`Some(0)`: never bundle;
    /// `None`: 16 KiB on loopback, 1472 bytes elsewhere).
    pub fn with_max_bundle(mut self, max: Option<usize>) -> Self {
        self.outbox = std::mem::take(&mut self.outbox).with_max_bundle(max);
        self
    }

    /// Sends a sequenced message once to the members' IP multicast group when they all
    /// listen on one (see [`SequencerNode::send_multicast`]): out of the interface of our
    /// address (which must be a definite IPv4 address; 127.0.0.1: loopback), TTL 1.
    pub fn with_multicast(mut self) -> io::Result<Self> {
        let interface = runtime::multicast_interface(self.addr)?;
        runtime::send_multicast_on(&self.udp, interface)?;
        if interface.is_loopback() {
            self.outbox = std::mem::take(&mut self.outbox)
                .with_multicast_limit(proto::bundle::LOOPBACK_BUNDLE_LEN);
        }
        self.node.send_multicast(true);
        Ok(self)
    }

    /// What the sequencer sent on the wire: datagrams, bundles among them.
    pub fn outbox_stats(&self) -> runtime::OutboxStats {
        self.outbox.stats()
    }

    /// The address the sequencer receives on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A handle that stops the sequencer.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.stop.clone()
    }

    /// The protocol core (for its counters).
    pub fn node(&self) -> &SequencerNode {
        &self.node
    }

    /// Serves until [`Shutdown::shutdown`]; `on_news` hears of the tracker registration.
    pub fn run(&mut self, on_news: &mut dyn FnMut(News)) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        while !self.stop.requested() {
            let now = Instant::now();
            if self.node.poll_timeout().is_some_and(|at| at <= now) {
                self.node.handle_timeout(now);
            }
            // The core's outputs first: an eviction it heard of means registering again now.
            self.transmit();
            self.tracker_work(now);
            for news in self.news.drain(..) {
                on_news(news);
            }
            self.transmit();
            let wake = if self.udp_pending {
                Some(now)
            } else {
                [
                    self.node.poll_timeout(),
                    self.link.as_ref().and_then(TrackerLink::poll_timeout),
                    self.next_heartbeat,
                    self.patience_until,
                ]
                .into_iter()
                .flatten()
                .min()
            };
            let timeout = wake.map(|at| at.saturating_duration_since(now));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = Instant::now();
            let mut readable = self.udp_pending;
            for event in events.iter() {
                match event.token() {
                    UDP => readable |= event.is_readable(),
                    TRACKER => {
                        if let Some(link) = self.link.as_mut() {
                            link.handle_ready(now);
                        }
                    }
                    _ => {}
                }
            }
            if readable {
                self.read(now);
            }
        }
        Ok(())
    }

    fn read(&mut self, now: Instant) {
        let tracker = self.link.as_ref().map(TrackerLink::addr);
        let (node, next_heartbeat) = (&mut self.node, &mut self.next_heartbeat);
        self.udp_pending =
            runtime::read_batch(&self.udp, &mut self.buf, READ_BATCH, |from, datagram| {
                if Some(from) == tracker && member::is_probe(datagram) {
                    // The tracker suspects we are gone: answer at once.
                    log::info!("the tracker asked whether the sequencer is alive: answering");
                    *next_heartbeat = Some(now);
                } else {
                    node.handle_datagram(now, from, datagram);
                }
            });
    }

    fn transmit(&mut self) {
        // What a batch of received datagrams produced leaves together: per member, back to
        // back, bundled for members that read bundles.
        while let Some(output) = self.node.poll_output() {
            match output {
                NodeOutput::Transmit(t) => self.outbox.queue(t.to, t.bytes, t.bundle, t.seal),
                NodeOutput::Evicted => self.evicted = true,
                NodeOutput::ListMembers { group } => self.member_lists.push(group),
                NodeOutput::TookOver {
                    group,
                    members,
                    recovered,
                } => self.news.push(News::TookOver {
                    group,
                    members,
                    recovered,
                }),
            }
        }
        self.outbox.flush(&self.udp);
        self.write_watch
            .follow(self.poll.registry(), &mut self.udp, &self.outbox);
    }

    fn tracker_work(&mut self, now: Instant) {
        let Some(link) = self.link.as_mut() else {
            return;
        };
        let tracker = link.addr();
        link.handle_timeout(self.poll.registry(), now);
        // Register on every (re)connection, and again when the tracker evicted us.
        let mut register = std::mem::take(&mut self.evicted) && link.is_up();
        while let Some(event) = link.poll_event() {
            match event {
                LinkEvent::Connected => {
                    register = true;
                    // Evictions are believed from the tracker we talk to now.
                    self.node.set_tracker(link.addr());
                }
                LinkEvent::Reply(Purpose::Register, reply) => {
                    if reply.success {
                        // Shown in every request about us from now on.
                        link.set_secret(reply.secret.clone());
                        if let Some(ms) = reply.heartbeat_ms {
                            self.heartbeat = Duration::from_millis(ms.max(10));
                        }
                        self.next_heartbeat.get_or_insert(now);
                        self.patience_until = None;
                        self.news.push(News::Registered {
                            tracker,
                            again: self.registered,
                        });
                        self.registered = true;
                    } else {
                        self.news.push(News::Refused {
                            tracker,
                            reason: reply.text().unwrap_or_default(),
                        });
                    }
                }
                LinkEvent::Reply(Purpose::KeepAlive, reply) => {
                    if !reply.success {
                        log::info!(
                            "the tracker refused our heartbeat: {}",
                            reply.text().unwrap_or_default()
                        );
                    }
                }
                LinkEvent::Reply(Purpose::Members(group), reply) => {
                    let members = reply.members().unwrap_or_default();
                    self.node.handle_members(now, &group, &members);
                }
                LinkEvent::Disconnected {
                    tracker: lost,
                    reason,
                } => {
                    self.news.push(News::Lost {
                        tracker: lost,
                        reason,
                    });
                    self.patience_until = Some(now + REGISTRATION_PATIENCE);
                }
                LinkEvent::Lost(_) => {}
            }
        }
        if register {
            let _ = link.request(Request::register(self.addr, SEQUENCER), Purpose::Register);
        }
        for group in self.member_lists.drain(..) {
            let request = Request::ListMembers {
                group: group.clone(),
            };
            let seal = self.node.seal_token(&group).cloned();
            if link
                .request_showing(request, seal, Purpose::Members(group))
                .is_err()
            {
                log::debug!("could not ask the tracker for a group's members: not connected");
            }
        }
        if self.patience_until.is_some_and(|at| at <= now) {
            self.patience_until = None;
            self.news.push(News::Unreachable { tracker });
        }
        if self.next_heartbeat.is_some_and(|at| at <= now) {
            let heartbeat = Request::Heartbeat {
                username: SEQUENCER.into(),
            };
            self.heartbeats += 1;
            if self.heartbeats % KEEPALIVE_EVERY == 0 && link.is_up() {
                let _ = link.request(heartbeat.clone(), Purpose::KeepAlive);
            }
            let beat = Envelope {
                request: heartbeat,
                proto: Some(PROTOCOL_VERSION),
                secret: link.secret().cloned(),
                seal: None,
            }
            .encode();
            self.outbox.send(&self.udp, tracker, Arc::from(beat));
            self.next_heartbeat = Some(now + self.heartbeat);
        }
    }
}
