//! The whole member as one sans-IO state machine: the group protocol of a [`PeerCore`], the
//! dialog with the tracker (register, join, leave, heartbeats, answering probes, rejoining
//! after the tracker restarts, registering again after it evicted us, quitting) and the
//! clock synchronization with it.
//!
//! The tracker connection itself is the driver's: the member hands out
//! [`Output::Tracker`] requests, each with an [`Ask`] saying why it was made, and the driver
//! hands back, with that `Ask`, the tracker's [`Reply`] ([`Member::handle_tracker_reply`]) or
//! the news that none will come ([`Member::tracker_unanswered`]); it also says when the
//! connection comes up and goes down. Everything else flows as with a [`PeerCore`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clock::Nanos;
use proto::{Envelope, GroupOrder, PROTOCOL_VERSION, Reply, Request, Secret};

use crate::clock_sync::ClockSync;
use crate::core::{CoreConfig, Error, Event, Mode, Output, PeerCore};
use crate::transmit::Transmit;

/// Names a request of the application to the tracker (a join, a query) in the event that
/// answers it.
pub type Ticket = u64;

/// Why a request went to the tracker: handed back with its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ask {
    /// Our registration.
    Register,
    /// A heartbeat over the connection, which keeps it from being closed as idle; its
    /// refusal means the tracker forgot us.
    KeepAlive,
    /// The application's join.
    Join {
        /// The group.
        group: String,
        /// The application's name for the request.
        ticket: Ticket,
    },
    /// Joining a group of ours again after registering again.
    Rejoin(String),
    /// Leaving a group.
    Exit(String),
    /// Leaving the tracker.
    Quit,
    /// The application's question.
    Query {
        /// The question.
        query: Query,
        /// The application's name for the request.
        ticket: Ticket,
    },
}

/// A request for the tracker connection, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackerRequest {
    /// What to send (it shows our secret once we have one).
    pub envelope: Envelope,
    /// Why; hand it back with the answer.
    pub ask: Ask,
}

/// Which registration succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// Our first.
    First,
    /// After the tracker told us it had evicted us: our groups are being joined again.
    AfterEviction,
    /// On a new connection (the tracker restarted, or the connection broke): our groups
    /// are being joined again.
    TrackerBack,
}

/// Why a join did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinFailure {
    /// The tracker said no (the group uses the other order, the name is reserved, ...).
    Refused(String),
    /// The connection was lost before the tracker answered.
    Unanswered,
}

/// A question for the tracker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// Which groups exist.
    Groups,
    /// Who is in a group.
    Members(String),
}

/// The tracker's answer to a [`Query`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The groups.
    Groups(Vec<String>),
    /// The members of the group asked about.
    Members(Vec<String>),
    /// The group asked about does not exist.
    NoSuchGroup,
    /// The tracker would not say, for this reason (a sealed group, to a client without its
    /// key).
    Refused(String),
    /// The connection was lost before the tracker answered.
    Unanswered,
}

/// Reads the local clock at a given instant, for clock synchronization: a driver returns
/// its clock's reading now (the instant is the one it passed in), a simulation a pure
/// function of the instant.
pub type LocalClock = Box<dyn Fn(Instant) -> Nanos + Send>;

/// What [`Member::new`] needs.
pub struct MemberConfig {
    /// The group protocol's settings.
    pub core: CoreConfig,
    /// Synchronize with the tracker's clock, reading ours with this; `None`: no clock
    /// synchronization (deliveries carry no send time worth trusting).
    pub clock: Option<LocalClock>,
}

#[derive(Debug, Default)]
struct Quitting {
    /// Our Quit went out.
    told: bool,
    /// The tracker answered it, or there is nobody to tell.
    acked: bool,
}

/// The dialog with the tracker.
#[derive(Debug)]
struct Session {
    /// Registered on the current connection.
    current: bool,
    /// A Register is out, not answered yet.
    registering: bool,
    /// When we registered again after the tracker evicted us, until its answer.
    registering_again: Option<Instant>,
    secret: Option<Secret>,
    heartbeat: Duration,
    next_heartbeat: Option<Instant>,
    /// UDP heartbeats sent: every tenth also goes over the connection.
    udp_heartbeats: u64,
    /// Over the connection: requests sent.
    requests: u64,
    /// Datagrams to the tracker (heartbeats, clock queries).
    datagrams: u64,
    registered_at: Option<Instant>,
    quitting: Option<Quitting>,
}

/// A whole member of the group messenger, without I/O. See the crate's documentation for
/// how to drive it.
pub struct Member {
    core: PeerCore,
    username: String,
    addr: SocketAddr,
    tracker: SocketAddr,
    mode: Mode,
    session: Session,
    clock: Option<(ClockSync, LocalClock)>,
    /// The send time stamped at the latest `now` a send carried: the messages of one
    /// instant (a turn of the driver's loop) share one reading of the clock.
    send_stamp: Option<(Instant, u64)>,
    out: VecDeque<Output>,
    next_ticket: Ticket,
    /// The latest time an input carried (for the core's events handled in `poll_output`).
    now: Instant,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("username", &self.username)
            .field("addr", &self.addr)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl Member {
    /// A member that has not contacted the tracker yet; it registers once the driver says
    /// the connection is up ([`tracker_connected`](Self::tracker_connected)).
    pub fn new(config: MemberConfig, now: Instant) -> Self {
        let core = config.core;
        Self {
            username: core.username.clone(),
            addr: core.addr,
            tracker: core.tracker,
            mode: core.mode,
            core: PeerCore::new(core),
            session: Session {
                current: false,
                registering: false,
                registering_again: None,
                secret: None,
                heartbeat: Duration::from_secs(1),
                next_heartbeat: None,
                udp_heartbeats: 0,
                requests: 0,
                datagrams: 0,
                registered_at: None,
                quitting: None,
            },
            clock: config.clock.map(|c| (ClockSync::default(), c)),
            send_stamp: None,
            out: VecDeque::new(),
            next_ticket: 0,
            now,
        }
    }

    /// The group protocol, for what it tells (`groups`, `is_joined`, `members_heard`,
    /// `traffic`, ...).
    pub fn core(&self) -> &PeerCore {
        &self.core
    }

    /// Our name.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// Our UDP address, as registered.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The tracker's address.
    pub fn tracker(&self) -> SocketAddr {
        self.tracker
    }

    /// The tracker is now at `addr`: the connection moved to another tracker sharing the
    /// registry. Heartbeats and clock queries go there from now on, and only its Byes on
    /// another's behalf are believed. Call it before
    /// [`tracker_connected`](Self::tracker_connected).
    pub fn set_tracker(&mut self, addr: SocketAddr) {
        self.tracker = addr;
        self.core.set_tracker(addr);
    }

    /// Whether the tracker accepted our registration at least once.
    pub fn is_registered(&self) -> bool {
        self.session.registered_at.is_some()
    }

    /// Whether we are registered on the current connection: requests to the tracker can
    /// be made.
    pub fn in_session(&self) -> bool {
        self.session.current
    }

    /// Whether our registration is on its way (sent, not answered).
    pub fn is_registering(&self) -> bool {
        self.session.registering
    }

    /// When the tracker first accepted us.
    pub fn registered_at(&self) -> Option<Instant> {
        self.session.registered_at
    }

    /// Messages to the tracker: requests over the connection, heartbeats and clock
    /// queries by datagram.
    pub fn tracker_messages(&self) -> u64 {
        self.session.requests + self.session.datagrams
    }

    /// Datagrams to the tracker (not group traffic).
    pub fn tracker_datagrams(&self) -> u64 {
        self.session.datagrams
    }

    /// The clock synchronization, if asked for.
    pub fn clock(&self) -> Option<&ClockSync> {
        self.clock.as_ref().map(|(c, _)| c)
    }

    /// The synchronized clock (the tracker's, as we estimate it) when ours reads `local`.
    pub fn synchronized(&self, local: Nanos) -> Nanos {
        self.clock().map_or(local, |c| c.synchronized(local))
    }

    /// The synchronized clock at `now`, in µs since the epoch: what messages are stamped
    /// with (0 without a clock).
    pub fn stamp(&self, now: Instant) -> u64 {
        match &self.clock {
            Some((sync, read)) => sync.synchronized(read(now)).as_micros().max(0) as u64,
            None => 0,
        }
    }

    /// Whether the quit is over as far as the tracker goes: it answered our Quit, or
    /// there was nobody to tell, or the connection went.
    pub fn quit_acknowledged(&self) -> bool {
        self.session.quitting.as_ref().is_some_and(|q| q.acked)
    }

    /// Whether [`quit`](Self::quit) was called.
    pub fn is_quitting(&self) -> bool {
        self.session.quitting.is_some()
    }

    // ---- the tracker connection, as the driver sees it

    /// The connection to the tracker is up (again): we register.
    pub fn tracker_connected(&mut self, now: Instant) {
        self.now = now;
        self.session.registering = true;
        self.request(
            Request::register(self.addr, self.username.clone()),
            Ask::Register,
        );
    }

    /// The connection was lost: nothing goes to the tracker until it is up again (group
    /// messaging goes on).
    pub fn tracker_disconnected(&mut self, now: Instant) {
        self.now = now;
        self.session.current = false;
        self.session.registering = false;
    }

    /// A request will get no answer (the connection was lost, or was not up when the
    /// driver tried to send it).
    pub fn tracker_unanswered(&mut self, now: Instant, ask: Ask) {
        self.now = now;
        match ask {
            Ask::Register => self.session.registering = false,
            Ask::Join { group, ticket } => self.out.push_back(Output::Event(Event::JoinFailed {
                ticket: Some(ticket),
                group,
                reason: JoinFailure::Unanswered,
            })),
            Ask::Query { ticket, .. } => self.out.push_back(Output::Event(Event::Answered {
                ticket,
                answer: Answer::Unanswered,
            })),
            Ask::Quit => {
                if let Some(q) = self.session.quitting.as_mut() {
                    q.acked = true;
                }
            }
            // Rejoined at the next registration; left by the tracker itself when it
            // evicts us or when we quit.
            Ask::Rejoin(_) | Ask::Exit(_) | Ask::KeepAlive => {}
        }
    }

    /// The tracker answered the request made for `ask`.
    pub fn handle_tracker_reply(&mut self, now: Instant, ask: Ask, reply: &Reply) {
        self.now = now;
        let reason = || reply.text().unwrap_or_else(|_| reply.content.to_string());
        match ask {
            Ask::Register if !reply.success => {
                self.session.registering = false;
                if let Some(q) = self.session.quitting.as_mut() {
                    q.acked = true;
                    return;
                }
                self.out
                    .push_back(Output::Event(Event::RegistrationRefused {
                        reason: reason(),
                    }));
            }
            Ask::Register => self.registered(now, reply),
            Ask::Join { group, ticket } if reply.success => {
                let members = reply.members().unwrap_or_default();
                self.core.join(now, &group, &members);
                self.out.push_back(Output::Event(Event::GroupJoined {
                    ticket,
                    group,
                    members: members.into_iter().map(|m| m.username).collect(),
                }));
            }
            Ask::Join { group, ticket } => self.out.push_back(Output::Event(Event::JoinFailed {
                ticket: Some(ticket),
                group,
                reason: JoinFailure::Refused(reason()),
            })),
            // Left meanwhile: the tracker's list is not ours to act on.
            Ask::Rejoin(group) if reply.success && self.core.is_joined(&group) => {
                let members = reply.members().unwrap_or_default();
                self.core.join(now, &group, &members);
            }
            Ask::Rejoin(_) if reply.success => {}
            Ask::Rejoin(group) => self.out.push_back(Output::Event(Event::JoinFailed {
                ticket: None,
                group,
                reason: JoinFailure::Refused(reason()),
            })),
            Ask::Exit(group) => {
                if !reply.success {
                    log::info!("the tracker did not let us leave {group}: {}", reason());
                }
            }
            Ask::Quit => {
                if let Some(q) = self.session.quitting.as_mut() {
                    q.acked = true;
                }
            }
            Ask::KeepAlive
                if !reply.success
                    && self.session.registering_again.is_none()
                    && self.session.quitting.is_none() =>
            {
                // The tracker no longer knows us: it evicted us and its notice was lost.
                log::info!("the tracker refused our heartbeat: {}", reason());
                for group in self.core.groups() {
                    self.core.on_self_evicted(now, &group);
                }
            }
            Ask::KeepAlive => {}
            Ask::Query { ticket, query } => {
                let answer = match query {
                    Query::Groups => Answer::Groups(reply.names().unwrap_or_default()),
                    Query::Members(_) if reply.success => Answer::Members(
                        reply
                            .members()
                            .unwrap_or_default()
                            .into_iter()
                            .map(|m| m.username)
                            .collect(),
                    ),
                    // A reason (a sealed group's members are not shown without its key),
                    // or the report's empty list for an unknown group.
                    Query::Members(_) => match reply.content.as_str() {
                        Some(reason) => Answer::Refused(reason.to_owned()),
                        None => Answer::NoSuchGroup,
                    },
                };
                self.out
                    .push_back(Output::Event(Event::Answered { ticket, answer }));
            }
        }
    }

    fn registered(&mut self, now: Instant, reply: &Reply) {
        let s = &mut self.session;
        s.registering = false;
        s.current = true;
        // Shown in every request about us from now on.
        s.secret = reply.secret.clone();
        if let Some(ms) = reply.heartbeat_ms {
            s.heartbeat = Duration::from_millis(ms.max(10));
        }
        s.next_heartbeat = Some(now + s.heartbeat);
        if let Some((sync, _)) = self.clock.as_mut() {
            sync.start(now);
        }
        if s.quitting.as_ref().is_some_and(|q| !q.told) {
            // Asked to quit while our registration was on its way: now the tracker knows
            // us, tell it we leave.
            self.send_quit();
            return;
        }
        let s = &mut self.session;
        let kind = if s.registered_at.is_none() {
            Registration::First
        } else if s.registering_again.take().is_some() {
            Registration::AfterEviction
        } else {
            Registration::TrackerBack
        };
        s.registered_at.get_or_insert(now);
        if kind != Registration::First {
            for group in self.core.groups() {
                let request = self.join_request(&group);
                self.request(request, Ask::Rejoin(group));
            }
        }
        self.out.push_back(Output::Event(Event::Registered(kind)));
    }

    // ---- requests of the application

    /// Asks the tracker to let us join `group`; the answer comes as
    /// [`Event::GroupJoined`] or [`Event::JoinFailed`] with the returned ticket.
    pub fn join(&mut self, now: Instant, group: &str) -> Result<Ticket, Error> {
        self.now = now;
        self.ready_for_tracker()?;
        if self.core.is_joined(group) {
            return Err(Error::AlreadyJoined {
                group: group.to_owned(),
            });
        }
        let ticket = self.ticket();
        let request = self.join_request(group);
        self.request(
            request,
            Ask::Join {
                group: group.to_owned(),
                ticket,
            },
        );
        Ok(ticket)
    }

    /// Leaves `group`: a Bye to its members (see [`PeerCore::leave`]) and an ExitGroup to
    /// the tracker when it can be reached.
    pub fn leave(&mut self, now: Instant, group: &str) -> Result<(), Error> {
        self.now = now;
        if !self.core.leave(now, group) {
            return Err(Error::NotJoined {
                group: group.to_owned(),
            });
        }
        if self.session.current {
            let request = Request::ExitGroup {
                username: self.username.clone(),
                group: group.to_owned(),
            };
            self.request(request, Ask::Exit(group.to_owned()));
        } else {
            log::info!("could not tell the tracker we left {group}: it cannot be reached");
        }
        Ok(())
    }

    /// Asks the tracker a question; the answer comes as [`Event::Answered`] with the
    /// returned ticket.
    pub fn ask(&mut self, now: Instant, query: Query) -> Result<Ticket, Error> {
        self.now = now;
        self.ready_for_tracker()?;
        let ticket = self.ticket();
        let request = match &query {
            Query::Groups => Request::ListGroups,
            Query::Members(group) => Request::ListMembers {
                group: group.clone(),
            },
        };
        self.request(request, Ask::Query { query, ticket });
        Ok(ticket)
    }

    /// Sends `payload` to `group` (see [`PeerCore::send`]), stamped with the synchronized
    /// clock as of `now` (read once for every message sent at the same `now`).
    pub fn send(&mut self, now: Instant, group: &str, payload: &[u8]) -> Result<u64, Error> {
        self.now = now;
        if self.session.quitting.is_some() {
            return Err(Error::Quitting);
        }
        let stamp = match self.send_stamp {
            Some((at, stamp)) if at == now => stamp,
            _ => {
                let stamp = self.stamp(now);
                self.send_stamp = Some((now, stamp));
                stamp
            }
        };
        self.core.send(now, group, payload, stamp)
    }

    /// Whether the flow-control window of `group` lets a message go now (see
    /// [`PeerCore::window_open`]).
    pub fn window_open(&mut self, now: Instant, group: &str) -> bool {
        self.core.window_open(now, group)
    }

    /// Leaves every group and the tracker. Our registration, if it is on its way, is
    /// answered first (only a registered member may say Quit). Then, for a while, the
    /// driver keeps feeding datagrams (the others may still recover our last messages)
    /// until [`quit_acknowledged`](Self::quit_acknowledged) and the retransmission
    /// requests stop.
    pub fn quit(&mut self, now: Instant) {
        self.now = now;
        if self.session.quitting.is_some() {
            return;
        }
        for group in self.core.groups() {
            self.core.leave(now, &group);
        }
        let s = &self.session;
        self.session.quitting = Some(Quitting {
            told: false,
            acked: !s.current && !s.registering,
        });
        if self.session.current {
            self.send_quit();
        }
    }

    // ---- the network and time

    /// A datagram arrived from `from`: from the tracker (a clock answer, a probe), or for
    /// the group protocol.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        self.now = now;
        if from == self.tracker {
            if bytes.len() >= clock::ntp::PACKET_LEN && bytes[0] & 7 == clock::ntp::MODE_SERVER {
                if let Some((sync, read)) = self.clock.as_mut() {
                    sync.handle_answer(bytes, read(now));
                }
                return;
            }
            if is_probe(bytes) {
                // The tracker suspects we are gone (our heartbeats were lost or late):
                // answer at once.
                log::info!("the tracker asked whether we are alive: answering");
                self.session.next_heartbeat = Some(now);
                self.heartbeat_if_due(now);
                return;
            }
        }
        self.core.handle_datagram(now, from, bytes);
    }

    /// Time passed: heartbeats, clock queries and the group protocol's timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        if self.core.poll_timeout().is_some_and(|at| at <= now) {
            self.core.handle_timeout(now);
        }
        self.heartbeat_if_due(now);
        // The local clock is read only when a query is due.
        if self.session.quitting.is_none()
            && let Some((sync, read)) = self.clock.as_mut()
            && sync.poll_timeout().is_some_and(|at| at <= now)
            && let Some(query) = sync.query_if_due(now, read(now))
        {
            self.session.datagrams += 1;
            self.out.push_back(Output::Transmit(Transmit {
                to: self.tracker,
                bytes: query.as_slice().into(),
                bundle: false,
                seal: None,
            }));
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) is due next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let heartbeat = self
            .session
            .next_heartbeat
            .filter(|_| self.is_registered() && self.session.quitting.is_none());
        let sync = self
            .clock
            .as_ref()
            .and_then(|(c, _)| c.poll_timeout())
            .filter(|_| self.session.quitting.is_none());
        [self.core.poll_timeout(), heartbeat, sync]
            .into_iter()
            .flatten()
            .min()
    }

    /// What to do next: drain it after every input until `None`.
    pub fn poll_output(&mut self) -> Option<Output> {
        if let Some(out) = self.out.pop_front() {
            return Some(out);
        }
        let out = self.core.poll_output()?;
        if let Output::Event(Event::WeWereEvicted { .. }) = &out {
            self.register_again(self.now);
        }
        Some(out)
    }

    // ---- inside

    fn ticket(&mut self) -> Ticket {
        self.next_ticket += 1;
        self.next_ticket
    }

    fn ready_for_tracker(&self) -> Result<(), Error> {
        if self.session.quitting.is_some() {
            Err(Error::Quitting)
        } else if !self.session.current {
            Err(Error::NoTracker)
        } else {
            Ok(())
        }
    }

    fn request(&mut self, request: Request, ask: Ask) {
        self.session.requests += 1;
        // A sealed group's key shown (as its token) where the tracker asks for it.
        let seal = match &request {
            Request::JoinGroup { group, .. } | Request::ListMembers { group } => {
                self.core.seal_token(group).cloned()
            }
            _ => None,
        };
        let envelope = Envelope {
            request,
            proto: Some(PROTOCOL_VERSION),
            secret: self.session.secret.clone(),
            seal,
        };
        self.out
            .push_back(Output::Tracker(TrackerRequest { envelope, ask }));
    }

    /// Our JoinGroup for `group`, declaring our delivery order: the tracker refuses us if
    /// the group uses the other one.
    fn join_request(&self, group: &str) -> Request {
        Request::JoinGroup {
            username: self.username.clone(),
            group: group.to_owned(),
            order: Some(match self.mode {
                Mode::Fifo => GroupOrder::Fifo,
                Mode::Total => GroupOrder::Total,
            }),
        }
    }

    fn send_quit(&mut self) {
        let request = Request::Quit {
            username: self.username.clone(),
        };
        self.request(request, Ask::Quit);
        if let Some(q) = self.session.quitting.as_mut() {
            q.told = true;
        }
    }

    fn heartbeat_if_due(&mut self, now: Instant) {
        let s = &mut self.session;
        if s.registered_at.is_none()
            || s.quitting.is_some()
            || s.next_heartbeat.is_some_and(|at| at > now)
        {
            return;
        }
        let beat = Envelope {
            request: Request::Heartbeat {
                username: self.username.clone(),
            },
            proto: Some(PROTOCOL_VERSION),
            secret: s.secret.clone(),
            seal: None,
        }
        .encode();
        s.datagrams += 1;
        s.udp_heartbeats += 1;
        s.next_heartbeat = Some(now + s.heartbeat);
        self.out.push_back(Output::Transmit(Transmit {
            to: self.tracker,
            bytes: beat.into(),
            bundle: false,
            seal: None,
        }));
        // Heartbeats go by datagram; the connection would look idle and be closed (the
        // tracker's default is 30 s), so every tenth also goes over it.
        if self.session.udp_heartbeats % 10 == 0 && self.session.current {
            let request = Request::Heartbeat {
                username: self.username.clone(),
            };
            self.request(request, Ask::KeepAlive);
        }
    }

    /// Registers again (the tracker evicted us), once however many groups tell us; its
    /// answer rejoins our groups.
    fn register_again(&mut self, now: Instant) {
        if self
            .session
            .registering_again
            .is_some_and(|at| now.saturating_duration_since(at) < Duration::from_secs(1))
            || !self.session.current
        {
            return;
        }
        self.session.registering_again = Some(now);
        self.session.registering = true;
        self.request(
            Request::register(self.addr, self.username.clone()),
            Ask::Register,
        );
    }
}

/// Whether `bytes`, arriving from the tracker's address, ask whether we are alive: a
/// Heartbeat request in our name, the tracker's probe of a member it suspects. A member
/// answers with a heartbeat at once.
pub fn is_probe(bytes: &[u8]) -> bool {
    matches!(
        Envelope::decode(bytes),
        Ok(Envelope {
            request: Request::Heartbeat { .. },
            ..
        })
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::DatagramType;

    const TRACKER: ([u8; 4], u16) = ([127, 0, 0, 1], 5000);

    fn member(now: Instant, clock: bool) -> Member {
        let config = MemberConfig {
            core: CoreConfig {
                username: "ford".into(),
                addr: ([127, 0, 0, 1], 6001).into(),
                tracker: TRACKER.into(),
                mode: Mode::Fifo,
                ordering: ordering::Config::default(),
                seals: Vec::new(),
                multicast: None,
            },
            clock: clock.then(|| {
                let t0 = now;
                Box::new(move |at: Instant| {
                    Nanos(1_700_000_000_000_000_000).plus(at.duration_since(t0).as_nanos() as i64)
                }) as LocalClock
            }),
        };
        Member::new(config, now)
    }

    fn drain(m: &mut Member) -> Vec<Output> {
        std::iter::from_fn(|| m.poll_output()).collect()
    }

    /// The tracker requests among `outputs`.
    fn asks(outputs: &[Output]) -> Vec<(Request, Ask)> {
        outputs
            .iter()
            .filter_map(|o| match o {
                Output::Tracker(t) => Some((t.envelope.request.clone(), t.ask.clone())),
                _ => None,
            })
            .collect()
    }

    fn events(outputs: &[Output]) -> Vec<Event> {
        outputs
            .iter()
            .filter_map(|o| match o {
                Output::Event(e) => Some(e.clone()),
                _ => None,
            })
            .collect()
    }

    /// Datagrams to the tracker among `outputs`, decoded as heartbeats (`None`: not one).
    fn to_tracker(outputs: &[Output]) -> Vec<Option<Envelope>> {
        outputs
            .iter()
            .filter_map(|o| match o {
                Output::Transmit(t) if t.to == SocketAddr::from(TRACKER) => {
                    Some(Envelope::decode(&t.bytes).ok())
                }
                _ => None,
            })
            .collect()
    }

    fn registered(heartbeat_ms: u64) -> Reply {
        Reply {
            heartbeat_ms: Some(heartbeat_ms),
            secret: Some(Secret::new("s3cret".to_owned())),
            ..Reply::ok("ok")
        }
    }

    fn listed(names: &[(&str, u16)]) -> Reply {
        let members: Vec<proto::Member> = names
            .iter()
            .map(|(name, port)| proto::Member {
                ip: "127.0.0.1".into(),
                port: *port,
                username: (*name).into(),
                uid: (*name).into(),
            })
            .collect();
        Reply::ok(serde_json::to_value(members).unwrap())
    }

    /// A member registered on a connection, its outputs drained.
    fn registered_member(now: Instant) -> Member {
        let mut m = member(now, false);
        m.tracker_connected(now);
        let out = drain(&mut m);
        assert_eq!(asks(&out)[0].1, Ask::Register);
        m.handle_tracker_reply(now, Ask::Register, &registered(100));
        assert_eq!(
            events(&drain(&mut m)),
            vec![Event::Registered(Registration::First)]
        );
        m
    }

    /// Joins `group` with `peers` listed (us first).
    fn joined(m: &mut Member, now: Instant, group: &str) {
        let ticket = m.join(now, group).unwrap();
        let out = drain(m);
        let (request, ask) = asks(&out).pop().unwrap();
        assert!(matches!(
            request,
            Request::JoinGroup {
                order: Some(GroupOrder::Fifo),
                ..
            }
        ));
        m.handle_tracker_reply(now, ask, &listed(&[("ford", 6001), ("kat", 6002)]));
        let out = drain(m);
        assert!(events(&out).contains(&Event::GroupJoined {
            ticket,
            group: group.into(),
            members: vec!["ford".into(), "kat".into()],
        }));
    }

    #[test]
    fn messages_sent_at_one_instant_share_one_reading_of_the_clock() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let t0 = Instant::now();
        let reads = Arc::new(AtomicUsize::new(0));
        let mut m = member(t0, false);
        let counted = reads.clone();
        m.clock = Some((
            ClockSync::default(),
            Box::new(move |at: Instant| {
                counted.fetch_add(1, Ordering::Relaxed);
                Nanos(1_700_000_000_000_000_000).plus(at.duration_since(t0).as_nanos() as i64)
            }),
        ));
        m.tracker_connected(t0);
        let out = drain(&mut m);
        m.handle_tracker_reply(t0, asks(&out)[0].1.clone(), &registered(100));
        drain(&mut m);
        joined(&mut m, t0, "books");
        let t1 = t0 + Duration::from_millis(1);
        let t2 = t1 + Duration::from_micros(1);
        let before = reads.load(Ordering::Relaxed);
        for (at, text) in [(t1, "one"), (t1, "two"), (t2, "three")] {
            m.send(at, "books", text.as_bytes()).unwrap();
        }
        assert_eq!(
            reads.load(Ordering::Relaxed) - before,
            2,
            "one reading per instant"
        );
        let stamps: Vec<u64> = drain(&mut m)
            .into_iter()
            .filter_map(|o| match o {
                Output::Deliver(d) => d.sent_at_us,
                _ => None,
            })
            .collect();
        assert_eq!(stamps.len(), 3, "our own deliveries carry their send times");
        assert_eq!(stamps[0], stamps[1]);
        assert_eq!(stamps[2], stamps[0] + 1, "a microsecond later");
    }

    #[test]
    fn it_registers_when_connected_then_heartbeats_showing_its_secret() {
        let t0 = Instant::now();
        let mut m = member(t0, false);
        assert_eq!(
            m.poll_timeout(),
            None,
            "nothing to do before the tracker is up"
        );
        assert_eq!(m.join(t0, "books"), Err(Error::NoTracker));
        m.tracker_connected(t0);
        let out = drain(&mut m);
        assert!(matches!(
            asks(&out).as_slice(),
            [(Request::Register { .. }, Ask::Register)]
        ));
        assert!(m.is_registering() && !m.in_session());
        m.handle_tracker_reply(t0, Ask::Register, &registered(100));
        assert_eq!(
            events(&drain(&mut m)),
            vec![Event::Registered(Registration::First)]
        );
        assert!(m.in_session() && m.is_registered());
        assert_eq!(m.poll_timeout(), Some(t0 + Duration::from_millis(100)));
        let mut beats = 0;
        let mut keepalives = 0;
        for step in 1..=20 {
            let now = t0 + Duration::from_millis(100 * step);
            m.handle_timeout(now);
            let out = drain(&mut m);
            for beat in to_tracker(&out) {
                let beat = beat.expect("a heartbeat");
                assert!(matches!(beat.request, Request::Heartbeat { .. }));
                assert_eq!(beat.secret, Some(Secret::new("s3cret".to_owned())));
                beats += 1;
            }
            keepalives += asks(&out)
                .iter()
                .filter(|(_, a)| *a == Ask::KeepAlive)
                .count();
        }
        assert_eq!(beats, 20, "one heartbeat per interval");
        assert_eq!(keepalives, 2, "every tenth also over the connection");
        assert_eq!(m.tracker_datagrams(), 20);
    }

    #[test]
    fn joins_and_questions_are_answered_by_ticket_even_when_the_connection_goes() {
        let t0 = Instant::now();
        let mut m = registered_member(t0);
        joined(&mut m, t0, "books");
        assert!(m.core().is_joined("books"));
        // The Hello to kat went out with the join.
        assert_eq!(
            m.join(t0, "books"),
            Err(Error::AlreadyJoined {
                group: "books".into()
            })
        );
        let ticket = m.join(t0, "films").unwrap();
        let question = m.ask(t0, Query::Members("books".into())).unwrap();
        let out = drain(&mut m);
        let pending = asks(&out);
        assert_eq!(pending.len(), 2);
        // The connection breaks before either is answered.
        m.tracker_disconnected(t0);
        for (_, ask) in pending {
            m.tracker_unanswered(t0, ask);
        }
        let news = events(&drain(&mut m));
        assert!(news.contains(&Event::JoinFailed {
            ticket: Some(ticket),
            group: "films".into(),
            reason: JoinFailure::Unanswered,
        }));
        assert!(news.contains(&Event::Answered {
            ticket: question,
            answer: Answer::Unanswered,
        }));
        assert!(!m.core().is_joined("films"));
        assert_eq!(m.ask(t0, Query::Groups), Err(Error::NoTracker));
        // Messaging in joined groups goes on without the tracker.
        assert!(m.send(t0, "books", b"still here").is_ok());
    }

    #[test]
    fn a_new_connection_means_registering_again_and_rejoining_our_groups() {
        let t0 = Instant::now();
        let mut m = registered_member(t0);
        joined(&mut m, t0, "books");
        m.tracker_disconnected(t0);
        let t1 = t0 + Duration::from_secs(3);
        m.tracker_connected(t1);
        let out = drain(&mut m);
        assert!(matches!(asks(&out).as_slice(), [(_, Ask::Register)]));
        m.handle_tracker_reply(t1, Ask::Register, &registered(100));
        let out = drain(&mut m);
        assert_eq!(
            events(&out),
            vec![Event::Registered(Registration::TrackerBack)]
        );
        let rejoin = asks(&out);
        assert_eq!(rejoin.len(), 1);
        assert_eq!(rejoin[0].1, Ask::Rejoin("books".into()));
        // A restarted tracker lists a newcomer: it is greeted.
        m.handle_tracker_reply(
            t1,
            Ask::Rejoin("books".into()),
            &listed(&[("ford", 6001), ("kat", 6002), ("zaphod", 6003)]),
        );
        let out = drain(&mut m);
        let hello_to_zaphod = out.iter().any(|o| {
            matches!(o,
            Output::Transmit(t) if t.to == SocketAddr::from(([127, 0, 0, 1], 6003))
                && proto::bundle::decode_single(&t.bytes).is_ok_and(|d| d.kind == DatagramType::Hello))
        });
        assert!(hello_to_zaphod, "{out:?}");
        // Left while the rejoin was on its way: its answer does not rejoin.
        m.leave(t1, "books").unwrap();
        drain(&mut m);
        m.handle_tracker_reply(t1, Ask::Rejoin("books".into()), &listed(&[("ford", 6001)]));
        assert!(!m.core().is_joined("books"));
    }

    #[test]
    fn a_refused_heartbeat_means_we_were_evicted_so_we_register_again_and_rejoin() {
        let t0 = Instant::now();
        let mut m = registered_member(t0);
        joined(&mut m, t0, "books");
        let t1 = t0 + Duration::from_secs(5);
        m.handle_tracker_reply(t1, Ask::KeepAlive, &Reply::failure("who are you?"));
        let out = drain(&mut m);
        assert!(events(&out).contains(&Event::WeWereEvicted {
            group: "books".into()
        }));
        assert!(matches!(
            asks(&out).as_slice(),
            [(Request::Register { .. }, Ask::Register)]
        ));
        m.handle_tracker_reply(t1, Ask::Register, &registered(100));
        let out = drain(&mut m);
        assert_eq!(
            events(&out),
            vec![Event::Registered(Registration::AfterEviction)]
        );
        assert_eq!(asks(&out)[0].1, Ask::Rejoin("books".into()));
    }

    #[test]
    fn a_probe_from_the_tracker_is_answered_with_a_heartbeat_at_once() {
        let t0 = Instant::now();
        let mut m = registered_member(t0);
        let probe = Envelope {
            request: Request::Heartbeat {
                username: "ford".into(),
            },
            proto: Some(PROTOCOL_VERSION),
            secret: None,
            seal: None,
        }
        .encode();
        let t1 = t0 + Duration::from_millis(30);
        m.handle_datagram(t1, TRACKER.into(), &probe);
        let beats = to_tracker(&drain(&mut m));
        assert_eq!(beats.len(), 1);
        // The same bytes from anyone else are not a probe (nor a valid datagram).
        m.handle_datagram(t1, ([127, 0, 0, 1], 6002).into(), &probe);
        assert!(to_tracker(&drain(&mut m)).is_empty());
        assert_eq!(m.core().traffic().malformed, 1);
    }

    #[test]
    fn quitting_while_registering_tells_the_tracker_once_it_knows_us() {
        let t0 = Instant::now();
        let mut m = member(t0, false);
        m.tracker_connected(t0);
        drain(&mut m);
        m.quit(t0);
        assert!(
            asks(&drain(&mut m)).is_empty(),
            "not registered yet: no Quit"
        );
        assert!(!m.quit_acknowledged());
        m.handle_tracker_reply(t0, Ask::Register, &registered(100));
        let out = drain(&mut m);
        assert!(events(&out).is_empty(), "{out:?}");
        assert!(matches!(
            asks(&out).as_slice(),
            [(Request::Quit { .. }, Ask::Quit)]
        ));
        m.handle_tracker_reply(t0, Ask::Quit, &Reply::ok("bye"));
        assert!(m.quit_acknowledged());
        assert_eq!(m.send(t0, "books", b"x"), Err(Error::Quitting));
    }

    #[test]
    fn quitting_with_no_tracker_to_tell_is_over_at_once() {
        let t0 = Instant::now();
        let mut m = member(t0, false);
        m.quit(t0);
        assert!(m.quit_acknowledged());
        assert!(drain(&mut m).is_empty());
    }

    #[test]
    fn a_refused_registration_is_said_once() {
        let t0 = Instant::now();
        let mut m = member(t0, false);
        m.tracker_connected(t0);
        drain(&mut m);
        m.handle_tracker_reply(t0, Ask::Register, &Reply::failure("name taken"));
        assert_eq!(
            events(&drain(&mut m)),
            vec![Event::RegistrationRefused {
                reason: "name taken".into()
            }]
        );
        assert!(!m.is_registered() && !m.in_session());
    }

    #[test]
    fn the_clock_is_synchronized_with_the_tracker_after_registering() {
        let t0 = Instant::now();
        let mut m = member(t0, true);
        m.tracker_connected(t0);
        drain(&mut m);
        m.handle_tracker_reply(t0, Ask::Register, &registered(1000));
        drain(&mut m);
        let local = |at: Instant| {
            Nanos(1_700_000_000_000_000_000).plus(at.duration_since(t0).as_nanos() as i64)
        };
        // A tracker 3 ms ahead, 50 µs away each way.
        let mut now = t0;
        let mut queries = 0;
        while now < t0 + Duration::from_millis(200) {
            if m.poll_timeout().is_some_and(|at| at <= now) {
                m.handle_timeout(now);
            }
            for o in drain(&mut m) {
                if let Output::Transmit(t) = o
                    && t.to == SocketAddr::from(TRACKER)
                    && clock::ntp::is_request(&t.bytes)
                {
                    queries += 1;
                    let there = local(now).plus(50_000 + 3_000_000);
                    let answer = clock::ntp::answer(&t.bytes, there, there, 1).unwrap();
                    let back = now + Duration::from_micros(100);
                    m.handle_datagram(back, TRACKER.into(), &answer);
                }
            }
            now += Duration::from_millis(1);
        }
        assert_eq!(queries, 5, "one burst");
        let e = m.clock().unwrap().estimate().unwrap();
        assert!((e.offset_ns - 3_000_000).abs() < 10_000, "{e:?}");
        let stamp = m.stamp(now) as i64;
        let expected = local(now).plus(3_000_000).as_micros();
        assert!((stamp - expected).abs() < 50, "{stamp} vs {expected}");
    }
}
