//! Flow control: an author sends at most a window beyond what its slowest live member has
//! delivered; members acknowledge what they delivered, and an author whose window is closed
//! asks the members holding it back how far they are.

use super::*;

/// Flow control: how long an author whose window is closed waits before asking the members
/// it waits for how far they are (a Digest, which they answer with an Ack), and again after.
pub(super) const FLOW_PROBE: Duration = Duration::from_millis(20);

/// Flow control: a member that acknowledges nothing new for this long while the author waits
/// for it stops holding the author back until it acknowledges again. It is probably frozen
/// and about to be evicted; if not, it recovers what it missed by retransmission requests.
pub(super) const FLOW_STALL: Duration = Duration::from_secs(1);

/// How often an idle author tells the members that have not acknowledged its last message
/// its highest counter, and for how long after its last message. The ordering core's own
/// announcements stop after a few seconds; a member cut off for longer (a partition) would
/// never learn that our last messages exist. Acknowledgements end it early.
pub(super) const TAIL_PROBE: Duration = Duration::from_millis(500);
pub(super) const TAIL_PATIENCE: Duration = Duration::from_secs(10);

/// Flow control (asking the members that hold us back is [`Timer::FlowProbe`]).
#[derive(Debug, Default)]
pub(super) struct Flow {
    /// As an author: how far each member (and, in total order, we ourselves) delivered our
    /// stream.
    pub(super) acked_by: HashMap<String, Acked>,
    /// As a member: per author, the highest counter of its stream we delivered and the
    /// highest we acknowledged.
    pub(super) owed: HashMap<Arc<str>, (u64, u64)>,
    /// As an author: when we last sent a message.
    pub(super) last_sent: Option<Instant>,
    /// As an author: the window stays open for counters below this, as the last look at
    /// every member found (at the instant given), so that a sender flat out does not look
    /// at every member for every message.
    pub(super) open_below: Option<(u64, Instant)>,
}

/// How long what one look at every member found keeps the window open without another:
/// far below [`FLOW_STALL`], so a member's lack of progress is timed as closely.
const LOOK_AGAIN: Duration = Duration::from_millis(5);

/// How far one member delivered our stream.
#[derive(Debug, Clone, Copy)]
pub(super) struct Acked {
    /// Our highest counter it delivered.
    pub(super) through: u64,
    /// Since when it holds us back without progress (renewed whenever it catches up or
    /// acknowledges more).
    pub(super) since: Instant,
}

/// Records that `member` delivered our stream through `counter`.
pub(super) fn acknowledge(
    acked_by: &mut HashMap<String, Acked>,
    member: &str,
    counter: u64,
    now: Instant,
) {
    match acked_by.get_mut(member) {
        Some(a) if counter > a.through => {
            a.through = counter;
            a.since = now;
        }
        Some(_) => {}
        None => {
            acked_by.insert(
                member.to_owned(),
                Acked {
                    through: counter,
                    since: now,
                },
            );
        }
    }
}

/// How far a member is taken to have delivered our stream before it acknowledged
/// anything: up to just before the start we told it (it cannot lack what came before), or
/// everything sent if we told it none.
fn acked_before_any(our_start: Option<u64>, sent: u64) -> u64 {
    our_start.map_or(sent, |s| s.saturating_sub(1))
}

impl PeerCore {
    /// Flow control: whether `group` takes another message of ours now, that is whether
    /// fewer than [`ordering::Config::flow_window`] of our messages are still undelivered
    /// at the slowest member (in total order, ourselves included: our own messages come
    /// back through the sequencer). The report's peers never acknowledge and are not waited
    /// for, nor is a member that acknowledged nothing for a second. While the window is
    /// closed the core asks the members it waits for how far they are, every 20 ms.
    /// [`send`](Self::send) does not check it: a caller sending flat out asks first.
    pub fn window_open(&mut self, now: Instant, group: &str) -> bool {
        if let (Some(next), Some(state)) = (self.tx.next_counter(group), self.groups.get(group))
            && let Some((below, at)) = state.flow.open_below
            && next.saturating_sub(1) < below
            && now.saturating_duration_since(at) < LOOK_AGAIN
        {
            return true;
        }
        let open = self.flow_floor(now, group).is_none();
        if let Some(state) = self.groups.get_mut(group) {
            if open {
                state.timers[Timer::FlowProbe] = None;
            } else if state.timers[Timer::FlowProbe].is_none() {
                state.timers[Timer::FlowProbe] = Some(now + FLOW_PROBE);
                self.traffic.window_closed += 1;
            }
        }
        open
    }

    /// Flow control: `None` if the window of `group` is open, else our highest counter sent
    /// and the members (by address) that hold us back.
    pub(super) fn flow_floor(
        &mut self,
        now: Instant,
        group: &str,
    ) -> Option<(u64, Vec<SocketAddr>)> {
        if self.flow_window == 0 {
            return None;
        }
        let sent = self.tx.next_counter(group)?.saturating_sub(1);
        let state = self.groups.get_mut(group)?;
        let window = self.flow_window;
        // The least acknowledgement of the members waited for: the window is open for
        // counters below it plus the window.
        let mut least = u64::MAX;
        let mut holding = Vec::new();
        let mut check = |name: &str, addr: SocketAddr, our_start: Option<u64>| {
            let acked = match state.flow.acked_by.get_mut(name) {
                Some(a) => a,
                None => state.flow.acked_by.entry(name.to_owned()).or_insert(Acked {
                    through: acked_before_any(our_start, sent),
                    since: now,
                }),
            };
            if acked.through >= sent {
                acked.since = now;
                least = least.min(acked.through);
            } else if now.saturating_duration_since(acked.since) < FLOW_STALL {
                least = least.min(acked.through);
                if acked.through.saturating_add(window) <= sent {
                    holding.push(addr);
                }
            }
        };
        for (name, m) in state.members.iter() {
            if name != SEQUENCER && m.proto.is_some() && m.heard {
                check(name, m.addr, m.our_start);
            }
        }
        if self.mode == Mode::Total
            && let Some(seq) = state.members.get(SEQUENCER)
        {
            // Our own messages come back from the sequencer: it is asked when we lag.
            check(&self.me, seq.addr, seq.our_start);
        }
        state.flow.open_below = holding
            .is_empty()
            .then(|| (least.saturating_add(window), now));
        (!holding.is_empty()).then_some((sent, holding))
    }

    /// An acknowledgement of our stream from a member.
    pub(super) fn on_ack(&mut self, now: Instant, d: Datagram) {
        if *d.origin != *self.me {
            return;
        }
        self.traffic.acks_received += 1;
        let sent = self
            .tx
            .next_counter(&d.group)
            .map_or(0, |n| n.saturating_sub(1));
        if let Some(state) = self.groups.get_mut(&d.group) {
            acknowledge(
                &mut state.flow.acked_by,
                &d.username,
                d.counter.min(sent),
                now,
            );
        }
    }

    /// Flow control, as a member: we delivered `author`'s `counter` in the group of `state`;
    /// every quarter of the window the author is owed word of how far we are (true: send it
    /// an acknowledgement now). In total order our own messages coming back count as
    /// acknowledged by us.
    pub(super) fn owes_ack(
        state: &mut GroupState,
        now: Instant,
        author: &Arc<str>,
        counter: u64,
        flow_window: u64,
        me: &str,
        mode: Mode,
    ) -> bool {
        if flow_window == 0 {
            return false;
        }
        let every = (flow_window / 4).max(1);
        if **author == *me {
            if mode == Mode::Total {
                acknowledge(&mut state.flow.acked_by, author, counter, now);
            }
            return false;
        }
        match state.flow.owed.get_mut(author) {
            Some((delivered, acked)) => {
                *delivered = (*delivered).max(counter);
                *delivered >= *acked + every
            }
            None => {
                state.flow.owed.insert(author.clone(), (counter, 0));
                false
            }
        }
    }

    /// Tells `author` how far we delivered its stream in `group`.
    pub(super) fn send_ack(&mut self, group: &str, author: &str) {
        let Some(addr) = self.newer_member(group, author) else {
            return;
        };
        let Some((delivered, acked)) = self
            .groups
            .get_mut(group)
            .and_then(|s| s.flow.owed.get_mut(author))
        else {
            return;
        };
        *acked = *delivered;
        let ack = Datagram::new(
            DatagramType::Ack,
            group,
            &*self.me,
            "",
            self.addr,
            *delivered,
            author,
        );
        let bytes = self.encode(&ack);
        self.traffic.acks_sent += 1;
        self.transmit(group, addr, bytes, false);
    }

    /// We sent a message in `group`: the tail probe waits for us to be idle.
    pub(super) fn sent_tail(&mut self, now: Instant, group: &str) {
        if self.flow_window == 0 {
            return;
        }
        if let Some(state) = self.groups.get_mut(group) {
            state.flow.last_sent = Some(now);
            state.timers[Timer::TailProbe] = Some(now + TAIL_PROBE);
        }
    }

    /// Idle in `group`: tells the members that have not acknowledged our last message (in
    /// total order, the sequencer, if our last message has not come back) our highest
    /// counter, which makes them ask for what they lack; again every [`TAIL_PROBE`] until
    /// they acknowledge it, or [`TAIL_PATIENCE`] after our last message.
    pub(super) fn probe_tail(&mut self, now: Instant, group: &str) {
        let Some(sent) = self.tx.next_counter(group).map(|n| n.saturating_sub(1)) else {
            return;
        };
        let Some(state) = self.groups.get_mut(group) else {
            return;
        };
        state.timers[Timer::TailProbe] = None;
        if state
            .flow
            .last_sent
            .is_none_or(|at| now.saturating_duration_since(at) >= TAIL_PATIENCE)
        {
            return;
        }
        let behind = |name: &str, our_start: Option<u64>| {
            let through = state
                .flow
                .acked_by
                .get(name)
                .map_or(acked_before_any(our_start, sent), |a| a.through);
            through < sent
        };
        let mut holding = Vec::new();
        match self.mode {
            Mode::Fifo => {
                for (name, m) in state.members.iter() {
                    if name != SEQUENCER
                        && m.proto.is_some()
                        && m.heard
                        && behind(name, m.our_start)
                    {
                        holding.push(m.addr);
                    }
                }
            }
            Mode::Total => {
                if let Some(seq) = state.members.get(SEQUENCER)
                    && behind(&self.me, seq.our_start)
                {
                    holding.push(seq.addr);
                }
            }
        }
        if holding.is_empty() {
            return;
        }
        state.timers[Timer::TailProbe] = Some(now + TAIL_PROBE);
        let digest = self.control(DatagramType::Digest, group, sent, None);
        for to in holding {
            self.traffic.flow_probes += 1;
            self.transmit(group, to, digest.clone(), false);
        }
    }

    /// Our window in `group` is still closed: asks the members holding us back how far
    /// they are (a Digest of our highest counter, which also makes them request what they
    /// lack).
    pub(super) fn probe_flow(&mut self, now: Instant, group: &str) {
        let Some((sent, holding)) = self.flow_floor(now, group) else {
            if let Some(state) = self.groups.get_mut(group) {
                state.timers[Timer::FlowProbe] = None;
            }
            return;
        };
        if let Some(state) = self.groups.get_mut(group) {
            state.timers[Timer::FlowProbe] = Some(now + FLOW_PROBE);
        }
        let digest = self.control(DatagramType::Digest, group, sent, None);
        for to in holding {
            self.traffic.flow_probes += 1;
            self.transmit(group, to, digest.clone(), false);
        }
    }
}
