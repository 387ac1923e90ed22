//! The loop behind a [`Channel`](crate::Channel): one mio loop over the UDP socket, the
//! tracker link, timers and the channel's calls (which wake it). It feeds the sans-IO
//! [`Member`] (the whole member protocol, the tracker dialog included), does what it asks,
//! and hands deliveries and events to the channel; it makes no protocol decisions of its own.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant, SystemTime};

use mio::net::UdpSocket;
use mio::{Events, Poll, Token};

use crate::channel::{
    Api, Call, ChannelConfig, ChannelError, ChannelEvent, ChannelStats, Delivery, GroupStatus,
};
use member::{
    Answer, Ask, CoreConfig, Event, JoinFailure, Member, MemberConfig, Message, Mode, Output,
    Query, Registration, Ticket, Transmit,
};
use runtime::{LinkEvent, Shutdown, TrackerLink};

const UDP: Token = Token(0);
const WAKER: Token = Token(1);
const TRACKER: Token = Token(2);
const MULTICAST: Token = Token(3);

/// Datagrams read per wake-up before other work gets a turn.
const READ_BATCH: usize = 512;

/// How long a quitting member keeps answering retransmission requests once they stop coming.
const LINGER: Duration = Duration::from_millis(300);

/// The longest a quitting member waits for the tracker's answer and the others' requests.
const QUIT_PATIENCE: Duration = Duration::from_secs(2);

/// Why the loop stopped with an error.
#[derive(Debug)]
pub(crate) enum LoopError {
    /// A socket failed.
    Io(io::Error),
    /// The tracker refused to register us (the name is taken, say).
    Refused(String),
}

impl From<io::Error> for LoopError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<LoopError> for ChannelError {
    fn from(e: LoopError) -> Self {
        match e {
            LoopError::Io(e) => ChannelError::Loop(e.to_string()),
            LoopError::Refused(reason) => ChannelError::Refused(reason),
        }
    }
}

/// A call waiting for the tracker's answer: where to answer, and the group it asks about.
type Asked = (Sender<Result<Vec<String>, ChannelError>>, Option<String>);

/// Most messages sent in one turn of the loop: about one loopback bundle (16 KiB) of short
/// messages, so that a sender flat out makes one datagram, one system call and one wake-up
/// of each receiver per bundle rather than per 64 messages (the earlier figure). Measured with
/// the runner, 2 and 16 members in FIFO order: ~15 % more throughput than 64; total order
/// unchanged. A steady sender hands over fewer per turn and is not affected; reading what
/// arrived waits at most this many sends (~0.2 ms flat out).
const SEND_BATCH: usize = 192;

/// Messages for a group waiting for its flow-control window, in order.
struct Outgoing {
    group: String,
    payloads: VecDeque<Vec<u8>>,
    reply: Reply,
    /// How many went, and the counter of the last.
    sent: usize,
    last: u64,
}

/// Where a send is answered.
enum Reply {
    /// [`Channel::send`](crate::Channel::send): the message's counter.
    One(Sender<Result<u64, ChannelError>>),
    /// [`Channel::send_all`](crate::Channel::send_all): how many went.
    All(Sender<Result<usize, ChannelError>>),
}

impl Outgoing {
    fn new(group: String, payloads: Vec<Vec<u8>>, reply: Reply) -> Self {
        Self {
            group,
            payloads: payloads.into(),
            reply,
            sent: 0,
            last: 0,
        }
    }

    /// Answers the caller: every message went, or why not (the member refused one, the
    /// channel closed).
    fn answer(self, refused: Option<ChannelError>) {
        // A caller gone is not our concern.
        match self.reply {
            Reply::One(reply) => drop(reply.send(refused.map_or(Ok(self.last), Err))),
            Reply::All(reply) => drop(reply.send(refused.map_or(Ok(self.sent), Err))),
        }
    }
}

/// The member, its sockets, and the channel it serves.
pub(crate) struct Driver {
    poll: Poll,
    udp: UdpSocket,
    write_watch: runtime::WriteWatch,
    stop: Shutdown,
    link: TrackerLink<Ask>,
    member: Member,
    outbox: runtime::Outbox,
    udp_pending: bool,
    /// The IP multicast group's socket, if we listen on one, and whether more may wait in it.
    multicast: Option<UdpSocket>,
    multicast_pending: bool,
    /// The channel's calls waiting for the tracker's answer, by ticket.
    tickets: HashMap<Ticket, Asked>,
    api: Api,
    /// Events not handed to the channel yet (they go at the end of a turn's work).
    events: Vec<ChannelEvent>,
    /// The synchronized clock when this turn's first delivery was made, in µs.
    stamp: Option<u64>,
    /// Sends waiting for their group's flow-control window, in order.
    outgoing: VecDeque<Outgoing>,
    /// Sends whose messages all went (or one was refused), answered once the turn's
    /// datagrams left: waking the caller first would have the caller's thread compete with
    /// our own for a CPU while the datagrams wait.
    answers_due: Vec<(Outgoing, Option<ChannelError>)>,
    /// More is to be sent at once (this turn's share went; the window is open).
    send_more: bool,
    /// When quitting, the latest we wait for the tracker's answer and the others' requests.
    quit_deadline: Option<Instant>,
    /// Retransmission requests received so far, and when that count last changed.
    nacks_seen: (u64, Instant),
    /// We told the channel the tracker cannot be reached (told once per outage).
    told_unreachable: bool,
    buf: Box<[u8]>,
    /// Our delivery order.
    order: Mode,
    /// This process's clock (simulated skew, if asked for); the member's clock
    /// synchronization reads the same.
    local: clock::SkewedClock,
}

fn real_now() -> clock::Nanos {
    clock::Nanos::from_system(SystemTime::now())
}

impl Driver {
    /// Binds the UDP socket and sets up the member; the tracker is contacted once
    /// [`run`](Self::run) starts.
    pub(crate) fn bind(config: &ChannelConfig, api: Api) -> io::Result<Self> {
        let std_udp = runtime::bind_udp(config.bind, 8 << 20, 4 << 20)?;
        let bound = std_udp.local_addr()?;
        let addr = match config.advertise {
            Some(addr) => addr,
            None if bound.ip().is_unspecified() => {
                SocketAddr::new(route_towards(config.tracker)?, bound.port())
            }
            None => bound,
        };
        let mut outbox = runtime::Outbox::new().with_max_bundle(config.bundle_bytes);
        let mut multicast = None;
        if let Some(group) = config.multicast {
            let interface = runtime::multicast_interface(addr)?;
            runtime::send_multicast_on(&std_udp, interface)?;
            multicast = Some(UdpSocket::from_std(runtime::join_multicast(
                group,
                interface,
                8 << 20,
            )?));
            if interface.is_loopback() {
                outbox = outbox.with_multicast_limit(proto::bundle::LOOPBACK_BUNDLE_LEN);
            }
        }
        let (poll, udp, stop) = runtime::poll_udp(std_udp, UDP, WAKER)?;
        if let Some(socket) = &mut multicast {
            poll.registry()
                .register(socket, MULTICAST, mio::Interest::READABLE)?;
        }
        let now = Instant::now();
        let local = clock::SkewedClock::new(
            (config.clock_offset_ms * 1e6) as i64,
            config.clock_drift_ppm,
            real_now(),
        );
        let member = Member::new(
            MemberConfig {
                core: CoreConfig {
                    username: config.name.clone(),
                    addr,
                    tracker: config.tracker,
                    mode: config.order,
                    ordering: config.ordering.clone(),
                    seals: config.seals.clone(),
                    multicast: config.multicast,
                },
                clock: Some(Box::new(move |_| local.read(real_now()))),
            },
            now,
        );
        Ok(Self {
            link: TrackerLink::with_trackers(
                std::iter::once(config.tracker)
                    .chain(config.other_trackers.iter().copied())
                    .collect(),
                TRACKER,
                now,
            ),
            poll,
            udp,
            write_watch: runtime::WriteWatch::new(UDP),
            stop,
            member,
            outbox,
            udp_pending: false,
            multicast,
            multicast_pending: false,
            tickets: HashMap::new(),
            api,
            events: Vec::new(),
            stamp: None,
            outgoing: VecDeque::new(),
            answers_due: Vec::new(),
            send_more: false,
            quit_deadline: None,
            nacks_seen: (0, now),
            told_unreachable: false,
            buf: vec![0; 64 * 1024].into_boxed_slice(),
            order: config.order,
            local,
        })
    }

    /// The UDP address we registered (the one the other members reach us at).
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.member.core().addr()
    }

    /// A handle that makes the loop quit cleanly.
    pub(crate) fn shutdown_handle(&self) -> Shutdown {
        self.stop.clone()
    }

    /// Runs until the channel is closed: then leaves every group, tells the tracker, and
    /// answers late retransmission requests until they stop (at most [`QUIT_PATIENCE`]).
    pub(crate) fn run(&mut self) -> Result<(), LoopError> {
        let result = self.run_loop();
        self.answer_sent();
        for out in self.outgoing.drain(..) {
            out.answer(Some(ChannelError::Closed));
        }
        result
    }

    fn run_loop(&mut self) -> Result<(), LoopError> {
        let mut events = Events::with_capacity(256);
        loop {
            let now = Instant::now();
            self.link.handle_timeout(self.poll.registry(), now);
            if self.member.poll_timeout().is_some_and(|at| at <= now) {
                self.member.handle_timeout(now);
            }
            self.handle_link_events(now)?;
            self.apply_calls(now);
            self.drain_member(now)?;
            self.flush_outbox();
            self.answer_sent();
            if self.stop.requested() && self.quit_deadline.is_none() {
                self.begin_quit(now);
                self.drain_member(now)?;
                self.flush_outbox();
            }
            if self.quit_done(now) {
                self.flush_outbox();
                return Ok(());
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
            let mut multicast_ready = self.multicast_pending;
            for event in events.iter() {
                match event.token() {
                    UDP => udp_ready |= event.is_readable(),
                    MULTICAST => multicast_ready = true,
                    TRACKER => self.link.handle_ready(now),
                    _ => {}
                }
            }
            if udp_ready {
                self.read_udp(now);
            }
            if multicast_ready {
                self.read_multicast(now);
            }
        }
    }

    /// Applies the channel's calls, and the sends that waited for their window and may go
    /// now.
    fn apply_calls(&mut self, now: Instant) {
        while let Ok(call) = self.api.calls.try_recv() {
            if self.member.is_quitting() {
                // Its reply sender goes with it: the caller sees the channel closed.
                continue;
            }
            match call {
                Call::Join { group, reply } => {
                    let joined = self.member.join(now, &group);
                    self.asked(joined, (reply, None));
                }
                Call::Ask { query, reply } => {
                    let group = match &query {
                        Query::Members(group) => Some(group.clone()),
                        Query::Groups => None,
                    };
                    let asked = self.member.ask(now, query);
                    self.asked(asked, (reply, group));
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
                    // Sends keep their order: none overtakes one that waits.
                    let goes_now = self.outgoing.is_empty() && self.window_open(now, &group);
                    if !wait && !goes_now {
                        let _ = reply.send(Err(ChannelError::WouldBlock(group)));
                    } else {
                        self.outgoing.push_back(Outgoing::new(
                            group,
                            vec![payload],
                            Reply::One(reply),
                        ));
                    }
                }
                Call::SendAll {
                    group,
                    payloads,
                    reply,
                } => self
                    .outgoing
                    .push_back(Outgoing::new(group, payloads, Reply::All(reply))),
                Call::Stats { reply } => {
                    let _ = reply.send(self.stats(now));
                }
            }
        }
        self.send_outgoing(now);
    }

    /// Sends what waits, in order, as far as the flow-control window of its group takes it
    /// and at most [`SEND_BATCH`] messages this turn (they leave together, bundled; then
    /// datagrams get their turn). A send is answered once its last message went (after our
    /// own delivery of it, and once the turn's datagrams are out: the loop drains the
    /// member, flushes, then answers) or the member refused one.
    fn send_outgoing(&mut self, now: Instant) {
        let mut budget = SEND_BATCH;
        while budget > 0 {
            let Some(mut out) = self.outgoing.pop_front() else {
                break;
            };
            let mut refused = None;
            while budget > 0 && self.window_open(now, &out.group) {
                let Some(payload) = out.payloads.pop_front() else {
                    break;
                };
                match self.member.send(now, &out.group, &payload) {
                    Ok(counter) => {
                        out.sent += 1;
                        out.last = counter;
                        budget -= 1;
                    }
                    Err(e) => {
                        refused = Some(e.into());
                        break;
                    }
                }
            }
            if refused.is_none() && !out.payloads.is_empty() {
                // The window is full, or this turn's share is sent.
                self.outgoing.push_front(out);
                break;
            }
            self.answers_due.push((out, refused));
        }
        self.send_more = budget == 0 && !self.outgoing.is_empty();
    }

    /// Answers the sends finished this turn (see [`Driver::answers_due`]).
    fn answer_sent(&mut self) {
        for (out, refused) in self.answers_due.drain(..) {
            out.answer(refused);
        }
    }

    /// Whether a send to `group` may go now: the window is open, or we are not in the
    /// group (the member refuses the send with its reason).
    fn window_open(&mut self, now: Instant, group: &str) -> bool {
        !self.member.core().is_joined(group) || self.member.window_open(now, group)
    }

    /// Keeps a call whose tracker request is out, or answers it at once when the request
    /// could not be made.
    fn asked(&mut self, ticket: Result<Ticket, member::Error>, (reply, group): Asked) {
        match ticket {
            Ok(ticket) => {
                self.tickets.insert(ticket, (reply, group));
            }
            // Joining a group we are in already: nothing to ask.
            Err(member::Error::AlreadyJoined { .. }) => {
                let _ = reply.send(Ok(Vec::new()));
            }
            Err(member::Error::NoTracker) => {
                let _ = reply.send(Err(ChannelError::Unreachable(self.link.addr())));
            }
            Err(e) => {
                let _ = reply.send(Err(e.into()));
            }
        }
    }

    fn stats(&mut self, now: Instant) -> ChannelStats {
        let core = self.member.core();
        let mut groups: Vec<GroupStatus> = core
            .groups()
            .into_iter()
            .map(|name| GroupStatus {
                members_heard: core.members_heard(&name),
                sequencer_ready: self.order == Mode::Fifo || core.sequencer_ready(&name),
                sealed: core.is_sealed(&name),
                name,
            })
            .collect();
        groups.sort_by(|a, b| a.name.cmp(&b.name));
        ChannelStats {
            groups,
            traffic: core.traffic(),
            ordering: core.ordering_counters(),
            wire: self.outbox.stats(),
            sealed: core.seal_stats(),
            tracker_messages: self.member.tracker_messages(),
            tracker_datagrams: self.member.tracker_datagrams(),
            clock: self.member.clock().and_then(|c| c.estimate()),
            clock_settled: self.member.clock().is_some_and(|c| c.settled(now)),
        }
    }

    fn next_wake(&self, now: Instant) -> Option<Instant> {
        if self.udp_pending || self.multicast_pending || self.send_more {
            return Some(now);
        }
        let quitting = self.quit_deadline.map(|_| now + Duration::from_millis(20));
        [
            self.member.poll_timeout(),
            self.link.poll_timeout(),
            quitting,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn read_udp(&mut self, now: Instant) {
        let member = &mut self.member;
        // More may be waiting after a full batch: we come back after other work had its turn.
        self.udp_pending = runtime::read_batch(&self.udp, &mut self.buf, READ_BATCH, |from, d| {
            member.handle_datagram(now, from, d)
        });
    }

    /// Reads the IP multicast group's socket like our own, but for what we sent there
    /// ourselves (it comes back to us: the loop is on for the members on this host).
    fn read_multicast(&mut self, now: Instant) {
        let Some(socket) = &self.multicast else {
            return;
        };
        let member = &mut self.member;
        let me = member.core().addr();
        self.multicast_pending =
            runtime::read_batch(socket, &mut self.buf, READ_BATCH, |from, d| {
                if from != me {
                    member.handle_datagram(now, from, d);
                }
            });
    }

    fn flush_outbox(&mut self) {
        self.outbox.flush(&self.udp);
        self.write_watch
            .follow(self.poll.registry(), &mut self.udp, &self.outbox);
    }

    fn handle_link_events(&mut self, now: Instant) -> Result<(), LoopError> {
        while let Some(event) = self.link.poll_event() {
            match event {
                LinkEvent::Connected => {
                    log::info!("connected to the tracker at {}", self.link.addr());
                    self.told_unreachable = false;
                    self.member.set_tracker(self.link.addr());
                    self.member.tracker_connected(now);
                }
                LinkEvent::Disconnected { reason, .. } => {
                    log::info!(
                        "lost the tracker ({reason}); messaging in joined groups goes on, reconnecting"
                    );
                    self.member.tracker_disconnected(now);
                    self.emit(ChannelEvent::TrackerLost { reason });
                }
                LinkEvent::Lost(ask) => self.member.tracker_unanswered(now, ask),
                LinkEvent::Reply(ask, reply) => self.member.handle_tracker_reply(now, ask, &reply),
            }
            self.drain_member(now)?;
        }
        if !self.told_unreachable && !self.link.is_up() && self.link.failed_attempts() > 0 {
            self.told_unreachable = true;
            self.emit(ChannelEvent::TrackerUnreachable {
                tracker: self.link.addr(),
            });
        }
        Ok(())
    }

    /// What the member tells about our dealings with the tracker.
    fn tracker_news(&mut self, event: Event) -> Result<(), LoopError> {
        match event {
            Event::RegistrationRefused { reason } => return Err(LoopError::Refused(reason)),
            Event::Registered(how) => {
                if let Some(ready) = self.api.ready.take() {
                    let _ = ready.send(());
                }
                self.emit(match how {
                    Registration::First => ChannelEvent::Registered,
                    Registration::AfterEviction => ChannelEvent::Rejoined {
                        evicted: true,
                        tracker: self.link.addr(),
                    },
                    Registration::TrackerBack => ChannelEvent::Rejoined {
                        evicted: false,
                        tracker: self.link.addr(),
                    },
                });
            }
            Event::GroupJoined {
                ticket, members, ..
            } => {
                if let Some((reply, _)) = self.tickets.remove(&ticket) {
                    let _ = reply.send(Ok(members));
                }
            }
            Event::JoinFailed {
                ticket,
                group,
                reason,
            } => {
                if let Some((reply, _)) = ticket.and_then(|t| self.tickets.remove(&t)) {
                    let _ = reply.send(Err(match reason {
                        JoinFailure::Refused(reason) => ChannelError::JoinRefused { group, reason },
                        JoinFailure::Unanswered => ChannelError::Unreachable(self.link.addr()),
                    }));
                }
            }
            Event::Answered { ticket, answer } => {
                if let Some((reply, group)) = self.tickets.remove(&ticket) {
                    let _ = reply.send(match answer {
                        Answer::Groups(names) | Answer::Members(names) => Ok(names),
                        Answer::NoSuchGroup => {
                            Err(ChannelError::NoSuchGroup(group.unwrap_or_default()))
                        }
                        Answer::Refused(reason) => Err(ChannelError::QueryRefused(reason)),
                        Answer::Unanswered => Err(ChannelError::Unreachable(self.link.addr())),
                    });
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn drain_member(&mut self, now: Instant) -> Result<(), LoopError> {
        while let Some(output) = self.member.poll_output() {
            match output {
                // Queued: the end of the loop's turn sends them, bundled and per member.
                Output::Transmit(Transmit {
                    to,
                    bytes,
                    bundle,
                    seal,
                }) => self.outbox.queue(to, bytes, bundle, seal),
                Output::Tracker(request) => {
                    if let Err(ask) = self.link.send(&request.envelope, request.ask) {
                        self.member.tracker_unanswered(now, ask);
                    }
                }
                Output::Deliver(message) => self.deliver(now, message),
                Output::Event(
                    event @ (Event::Registered(_)
                    | Event::RegistrationRefused { .. }
                    | Event::GroupJoined { .. }
                    | Event::JoinFailed { .. }
                    | Event::Answered { .. }),
                ) => self.tracker_news(event)?,
                Output::Event(event) => {
                    log::info!("{event:?}");
                    self.emit(match event {
                        Event::Joined { group, member } => {
                            ChannelEvent::MemberJoined { group, member }
                        }
                        Event::Left { group, member } => ChannelEvent::MemberLeft { group, member },
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
            }
        }
        self.flush_events();
        Ok(())
    }

    fn deliver(&mut self, now: Instant, m: Message) {
        // One reading of the synchronized clock serves every delivery of a turn.
        let received_at_us = match self.stamp {
            Some(stamp) => stamp,
            None => {
                let local = self.local.read(real_now());
                let stamp = self.member.synchronized(local).as_micros().max(0) as u64;
                *self.stamp.insert(stamp)
            }
        };
        self.emit(ChannelEvent::Message(Delivery {
            group: m.group,
            author: m.author,
            payload: m.payload,
            seq: m.counter,
            sent_at_us: m.sent_at_us,
            received_at_us,
            delivered_at: now,
        }));
    }

    /// Hands an event to the channel (a receiver gone is not our concern: the channel is
    /// being dropped).
    fn emit(&mut self, event: ChannelEvent) {
        self.events.push(event);
    }

    /// Hands the events gathered so far to the channel, at once.
    fn flush_events(&mut self) {
        self.stamp = None;
        if !self.events.is_empty() {
            (self.api.events)(&mut self.events);
        }
    }

    /// Leaves every group (Bye with our final counter), tells the tracker, and from then on
    /// only answers retransmission requests until they stop.
    fn begin_quit(&mut self, now: Instant) {
        if self.quit_deadline.is_some() {
            return;
        }
        self.member.quit(now);
        self.quit_deadline = Some(now + QUIT_PATIENCE);
        self.nacks_seen = (self.member.core().traffic().nacks_received, now);
    }

    /// True when no retransmission request has come for [`LINGER`].
    fn quiet(&mut self, now: Instant) -> bool {
        let nacks = self.member.core().traffic().nacks_received;
        if nacks != self.nacks_seen.0 {
            self.nacks_seen = (nacks, now);
        }
        now - self.nacks_seen.1 >= LINGER
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
