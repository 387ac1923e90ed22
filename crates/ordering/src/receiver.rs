//! The FIFO receiver: per group and sender, the next expected counter, a holdback queue, and
//! the detection and recovery of gaps.

use std::collections::VecDeque;

use crate::FastMap as HashMap;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Instant;

use crate::holdback::{HoldbackQueue, Inserted, Released};
use crate::timers::{TimerQueue, claim};
use crate::{Config, Counters, Delivery, Error, Output};

/// Where a sender's stream begins for this receiver, and what the sender can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The sender speaks only the report's protocol: the first message received sets the
    /// counter (the report's rule); a gap is held only `legacy_holdback` and then skipped,
    /// because such a sender cannot retransmit and numbers its messages across all its groups.
    Legacy,
    /// The sender can retransmit, and `At(c)` is the first counter to deliver (the explicit
    /// start point of the handshake).
    At(u64),
    /// The sender's start point is not known yet (a handshake is under way). Messages wait,
    /// within the window, until [`FifoReceiver::set_start`]; if it has not come within
    /// `handshake_timeout`, the stream falls back to [`Start::Legacy`] from its lowest message
    /// (unless the sender is known to name one: [`FifoReceiver::expect_start`]).
    Handshake,
}

/// A stream's position, for inspection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamStatus {
    /// The next counter to deliver (meaningless until the stream has started).
    pub next: u64,
    /// Messages held back, waiting for a gap to close.
    pub held: usize,
    /// Whether the sender can retransmit (it completed the handshake).
    pub recovering: bool,
    /// Whether the stream knows where it starts.
    pub started: bool,
    /// Whether a gap is open (messages known to exist but not received).
    pub gap_open: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Recovering,
    Legacy,
}

#[derive(Debug)]
enum Phase<T> {
    /// The first message received will set the counter.
    First,
    /// Waiting for the start point; messages wait in `pending`. Without `until`, for as long
    /// as it takes: the sender is known to name one ([`FifoReceiver::expect_start`]).
    Awaiting {
        until: Option<Instant>,
        pending: Vec<(u64, T)>,
    },
    Active,
}

#[derive(Debug, Clone, Copy)]
struct Gap {
    due: Instant,
    /// Requests sent since the stream last advanced: only requests that brought no progress
    /// count towards giving up.
    attempts: u32,
    /// The stream's `next` when `attempts` began counting.
    stuck_at: u64,
    /// When it began.
    since: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Closing {
    final_counter: u64,
    deadline: Instant,
}

/// The state shared by every stream of a receiver while one of them works.
struct Ctx<'a, T> {
    config: &'a Config,
    outputs: &'a mut VecDeque<Output<T>>,
    counters: &'a mut Counters,
}

#[derive(Debug)]
struct Stream<T> {
    group: Arc<str>,
    sender: Arc<str>,
    kind: Kind,
    phase: Phase<T>,
    /// Next counter to deliver.
    next: u64,
    /// One past the highest counter known to exist (from a message, a digest or a Bye); a gap
    /// is open while `next < known_end`. It may lie beyond the window: the gap is then
    /// recovered one window at a time, and only [`Stream::window_end`] touches memory.
    known_end: u64,
    /// One past the highest counter a retransmission request has asked for.
    nacked_end: u64,
    holdback: HoldbackQueue<T>,
    gap: Option<Gap>,
    closing: Option<Closing>,
    /// The stream has ended (its sender left) and is to be forgotten.
    done: bool,
    scheduled: Option<Instant>,
}

impl<T> Stream<T> {
    fn new(group: Arc<str>, sender: Arc<str>, start: Start, now: Instant, config: &Config) -> Self {
        let (kind, phase, next) = match start {
            Start::Legacy => (Kind::Legacy, Phase::First, 0),
            Start::At(c) => (Kind::Recovering, Phase::Active, c),
            Start::Handshake => (
                Kind::Recovering,
                Phase::Awaiting {
                    until: Some(now + config.handshake_timeout),
                    pending: Vec::new(),
                },
                0,
            ),
        };
        Self {
            group,
            sender,
            kind,
            phase,
            next,
            known_end: next,
            nacked_end: next,
            holdback: HoldbackQueue::new(),
            gap: None,
            closing: None,
            done: false,
            scheduled: None,
        }
    }

    fn status(&self) -> StreamStatus {
        StreamStatus {
            next: self.next,
            held: self.held(),
            recovering: self.kind == Kind::Recovering,
            started: matches!(self.phase, Phase::Active),
            gap_open: self.next < self.known_end,
        }
    }

    fn held(&self) -> usize {
        match &self.phase {
            Phase::Awaiting { pending, .. } => pending.len(),
            _ => self.holdback.held(),
        }
    }

    fn deadline(&self) -> Option<Instant> {
        let awaiting = match &self.phase {
            Phase::Awaiting { until, .. } => *until,
            _ => None,
        };
        [
            awaiting,
            self.gap.map(|g| g.due),
            self.closing.map(|c| c.deadline),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The end of what may be requested or held now: `known_end`, within the window.
    fn window_end(&self, config: &Config) -> u64 {
        self.known_end.min(self.next.saturating_add(config.window))
    }

    fn finished(&self) -> bool {
        self.done
            || self
                .closing
                .is_some_and(|c| self.next > c.final_counter && matches!(self.phase, Phase::Active))
    }

    fn deliver(&self, ctx: &mut Ctx<'_, T>, counter: u64, payload: T) {
        ctx.counters.delivered += 1;
        ctx.outputs.push_back(Output::Deliver(Delivery {
            group: self.group.clone(),
            sender: self.sender.clone(),
            counter,
            payload,
        }));
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, T>, now: Instant, counter: u64, payload: T) {
        match &mut self.phase {
            Phase::Active => {}
            Phase::First => {
                self.next = counter;
                self.known_end = counter;
                self.nacked_end = counter;
                self.phase = Phase::Active;
            }
            Phase::Awaiting { pending, .. } => {
                if pending.iter().any(|(c, _)| *c == counter) {
                    ctx.counters.duplicates += 1;
                } else if pending.len() as u64 >= ctx.config.window {
                    ctx.counters.beyond_window += 1;
                } else {
                    pending.push((counter, payload));
                }
                return;
            }
        }
        self.on_active_message(ctx, now, counter, payload);
    }

    fn on_active_message(&mut self, ctx: &mut Ctx<'_, T>, now: Instant, counter: u64, payload: T) {
        if counter < self.next {
            ctx.counters.duplicates += 1;
            return;
        }
        if self.closing.is_some_and(|c| counter > c.final_counter) {
            // Past the final counter its sender announced: not a message of this stream.
            ctx.counters.beyond_window += 1;
            return;
        }
        let window = ctx.config.window;
        if counter - self.next >= window {
            match self.kind {
                Kind::Recovering => {
                    ctx.counters.beyond_window += 1;
                    return;
                }
                Kind::Legacy => {
                    // An old sender's single counter jumped (it sent in other groups, or
                    // much was lost): release what is held and restart the stream here.
                    self.skip_all_known(ctx);
                    ctx.counters.gaps_skipped += counter - self.next;
                    self.next = counter;
                    self.known_end = counter;
                }
            }
        }
        let offset = counter - self.next;
        if offset == 0 && self.holdback.is_empty() {
            // The in-order path: no queue, no timer.
            if counter < self.nacked_end {
                ctx.counters.gaps_recovered += 1;
            }
            self.next += 1;
            self.known_end = self.known_end.max(self.next);
            self.deliver(ctx, counter, payload);
        } else {
            if self.holdback.insert(offset as usize, payload) == Inserted::Duplicate {
                ctx.counters.duplicates += 1;
                return;
            }
            if counter < self.nacked_end {
                ctx.counters.gaps_recovered += 1;
            }
            self.known_end = self.known_end.max(counter + 1);
            self.release_ready(ctx);
        }
        self.update_gap(ctx.config, now);
    }

    fn release_ready(&mut self, ctx: &mut Ctx<'_, T>) {
        while let Some(released) = self.holdback.pop_ready() {
            let counter = self.next;
            self.next += 1;
            if let Released::Message(payload) = released {
                self.deliver(ctx, counter, payload);
            }
        }
        self.known_end = self.known_end.max(self.next);
    }

    /// Gives up on every missing counter below `known_end` that lies within the window, and
    /// releases what follows; a gap beyond the window is then taken up afresh.
    fn skip_all_known(&mut self, ctx: &mut Ctx<'_, T>) {
        let span = (self.window_end(ctx.config) - self.next) as usize;
        ctx.counters.gaps_skipped += self.holdback.skip_missing_before(span);
        self.release_ready(ctx);
        self.gap = None;
    }

    fn update_gap(&mut self, config: &Config, now: Instant) {
        if self.next >= self.known_end {
            self.gap = None;
        } else if self.gap.is_none() {
            let wait = match self.kind {
                Kind::Recovering => config.nack_delay,
                Kind::Legacy => config.legacy_holdback,
            };
            self.gap = Some(Gap {
                due: now + wait,
                attempts: 0,
                stuck_at: self.next,
                since: now,
            });
        }
    }

    /// The missing counters between `next` and the window's end, as at most `max` ranges.
    fn missing_ranges(&self, config: &Config) -> Vec<RangeInclusive<u64>> {
        let max = config.max_nack_ranges;
        let end = self.window_end(config);
        let mut ranges: Vec<RangeInclusive<u64>> = Vec::new();
        let mut run: Option<(u64, u64)> = None;
        let span = end - self.next;
        let scanned = span.min(self.holdback.len() as u64);
        let push = |ranges: &mut Vec<_>, r: (u64, u64)| {
            if ranges.len() < max {
                ranges.push(r.0..=r.1);
            }
        };
        for offset in 0..scanned {
            let counter = self.next + offset;
            if self.holdback.is_missing(offset as usize) {
                run = Some(run.map_or((counter, counter), |(a, _)| (a, counter)));
            } else if let Some(r) = run.take() {
                push(&mut ranges, r);
            }
        }
        if scanned < span {
            let first = run.take().map_or(self.next + scanned, |(a, _)| a);
            push(&mut ranges, (first, end - 1));
        } else if let Some(r) = run.take() {
            push(&mut ranges, r);
        }
        ranges
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_, T>, now: Instant) {
        if let Phase::Awaiting {
            until: Some(until), ..
        } = self.phase
            && until <= now
        {
            self.fall_back(ctx, now);
        }
        if let Some(closing) = self.closing
            && closing.deadline <= now
        {
            // The grace period of a leaving member is over: what is still missing is lost.
            self.end_stream(ctx, Some(closing.final_counter));
            return;
        }
        let Some(mut gap) = self.gap else { return };
        if gap.due > now {
            return;
        }
        if gap.stuck_at != self.next {
            gap.attempts = 0;
            gap.stuck_at = self.next;
            gap.since = now;
        }
        let patient = gap.attempts < ctx.config.nack_attempts;
        match self.kind {
            Kind::Legacy => self.skip_all_known(ctx),
            Kind::Recovering
                if !patient
                    && now.saturating_duration_since(gap.since) >= ctx.config.gap_patience =>
            {
                self.skip_all_known(ctx)
            }
            Kind::Recovering => {
                let ranges = self.missing_ranges(ctx.config);
                if let Some(last) = ranges.last() {
                    self.nacked_end = self.nacked_end.max(last.end() + 1);
                }
                ctx.counters.nacks_sent += 1;
                ctx.outputs.push_back(Output::Nack {
                    to: self.sender.clone(),
                    group: self.group.clone(),
                    ranges,
                });
                let interval = if patient {
                    ctx.config.nack_interval
                } else {
                    ctx.config.slow_nack_interval
                };
                self.gap = Some(Gap {
                    due: now + interval,
                    attempts: gap.attempts.saturating_add(1),
                    stuck_at: gap.stuck_at,
                    since: gap.since,
                });
            }
        }
        self.update_gap(ctx.config, now);
    }

    fn on_digest(&mut self, ctx: &mut Ctx<'_, T>, now: Instant, highest: u64) {
        if self.kind != Kind::Recovering || !matches!(self.phase, Phase::Active) {
            return;
        }
        let mut end = highest.saturating_add(1);
        if let Some(c) = self.closing {
            end = end.min(c.final_counter + 1);
        }
        self.known_end = self.known_end.max(end);
        self.update_gap(ctx.config, now);
    }

    fn on_unavailable(
        &mut self,
        ctx: &mut Ctx<'_, T>,
        now: Instant,
        ranges: &[RangeInclusive<u64>],
    ) {
        if !matches!(self.phase, Phase::Active) {
            return;
        }
        let window_end = self.next + ctx.config.window;
        for range in ranges {
            let first = (*range.start()).max(self.next);
            // A hostile start of 0 leaves nothing known below it: nothing to skip.
            let Some(known_last) = self.known_end.max(first).checked_sub(1) else {
                continue;
            };
            let last = (*range.end())
                .min(window_end.saturating_sub(1))
                .min(known_last);
            if first > last {
                continue;
            }
            let offsets = (first - self.next) as usize..=(last - self.next) as usize;
            ctx.counters.gaps_skipped += self.holdback.skip_range(offsets);
        }
        self.release_ready(ctx);
        self.update_gap(ctx.config, now);
    }

    fn on_bye(&mut self, ctx: &mut Ctx<'_, T>, now: Instant, final_counter: Option<u64>) {
        if matches!(self.phase, Phase::Awaiting { .. }) {
            self.fall_back(ctx, now);
        }
        match (self.kind, final_counter) {
            (Kind::Recovering, Some(f)) if self.next <= f => {
                self.closing = Some(Closing {
                    final_counter: f,
                    deadline: now + ctx.config.bye_grace,
                });
                self.known_end = self.known_end.max(f.saturating_add(1));
                self.update_gap(ctx.config, now);
            }
            // Everything up to the final counter is delivered already.
            (Kind::Recovering, Some(_)) => self.done = true,
            // An old sender's Bye carries no final counter: release what is held, in order,
            // skipping what cannot be waited for any longer.
            _ => self.end_stream(ctx, None),
        }
    }

    /// No start point came: the sender is probably old. Falls back to the report's rule from
    /// the lowest message that arrived.
    fn fall_back(&mut self, ctx: &mut Ctx<'_, T>, now: Instant) {
        self.kind = Kind::Legacy;
        if let Phase::Awaiting { mut pending, .. } =
            std::mem::replace(&mut self.phase, Phase::First)
        {
            pending.sort_unstable_by_key(|(c, _)| *c);
            for (counter, payload) in pending {
                self.on_message(ctx, now, counter, payload);
            }
        }
    }

    /// Releases what is held, skipping the gaps (and counting as skipped every counter up to
    /// `final_counter` that never came), and marks the stream for removal.
    fn end_stream(&mut self, ctx: &mut Ctx<'_, T>, final_counter: Option<u64>) {
        self.known_end = self.next + self.holdback.len() as u64;
        self.skip_all_known(ctx);
        if let Some(f) = final_counter
            && self.next <= f
            && matches!(self.phase, Phase::Active)
        {
            ctx.counters.gaps_skipped += f - self.next + 1;
        }
        self.done = true;
    }

    fn on_expect_start(&mut self) {
        match &mut self.phase {
            Phase::Awaiting { until, .. } => *until = None,
            // It fell back to the report's rule before anything came: nothing is decided yet.
            Phase::First => {
                self.kind = Kind::Recovering;
                self.phase = Phase::Awaiting {
                    until: None,
                    pending: Vec::new(),
                };
            }
            Phase::Active => {}
        }
    }

    fn on_start(&mut self, ctx: &mut Ctx<'_, T>, now: Instant, start: u64) {
        self.kind = Kind::Recovering;
        match std::mem::replace(&mut self.phase, Phase::Active) {
            Phase::Active => {
                // Already running from its first message: keep the position, but from now on
                // gaps are recovered.
            }
            Phase::First => {
                self.next = start;
                self.known_end = start;
                self.nacked_end = start;
            }
            Phase::Awaiting { mut pending, .. } => {
                self.next = start;
                self.known_end = start;
                self.nacked_end = start;
                pending.sort_unstable_by_key(|(c, _)| *c);
                for (counter, payload) in pending {
                    if counter < start {
                        ctx.counters.before_start += 1;
                    } else {
                        self.on_active_message(ctx, now, counter, payload);
                    }
                }
            }
        }
    }
}

/// Receives the streams of every sender in every group and delivers each in FIFO order.
///
/// Drive it as every core of this crate: feed each input with a `handle_*` method, then
/// drain [`poll_output`](Self::poll_output) until it returns `None`, and wake at
/// [`poll_timeout`](Self::poll_timeout) to call [`handle_timeout`](Self::handle_timeout).
/// It emits [`Output::Deliver`] and [`Output::Nack`].
#[derive(Debug)]
pub struct FifoReceiver<T> {
    config: Config,
    groups: HashMap<Arc<str>, HashMap<Arc<str>, Stream<T>>>,
    timers: TimerQueue<(Arc<str>, Arc<str>)>,
    outputs: VecDeque<Output<T>>,
    counters: Counters,
}

impl<T> FifoReceiver<T> {
    /// A receiver with no streams.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            groups: HashMap::default(),
            timers: TimerQueue::new(),
            outputs: VecDeque::new(),
            counters: Counters::default(),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Starts receiving `sender`'s stream in `group` from `start`. A stream that already
    /// exists is replaced (the sender joined again): what it held is dropped and counted as
    /// undeliverable.
    pub fn add_sender(&mut self, now: Instant, group: &str, sender: &str, start: Start) {
        let group_key = match self.groups.get_key_value(group) {
            Some((k, _)) => k.clone(),
            None => Arc::from(group),
        };
        let sender_key: Arc<str> = Arc::from(sender);
        let stream = Stream::new(
            group_key.clone(),
            sender_key.clone(),
            start,
            now,
            &self.config,
        );
        let streams = self.groups.entry(group_key.clone()).or_default();
        if let Some(old) = streams.insert(sender_key.clone(), stream) {
            self.counters.undeliverable += old.held() as u64;
        }
        let stream = streams.get_mut(sender).expect("just inserted");
        if let Some(at) = stream.deadline() {
            self.timers
                .schedule(&mut stream.scheduled, at, || (group_key, sender_key));
        }
    }

    /// Whether a stream of `sender` in `group` exists.
    pub fn has_sender(&self, group: &str, sender: &str) -> bool {
        self.groups
            .get(group)
            .is_some_and(|s| s.contains_key(sender))
    }

    /// The position of a stream, if it exists.
    pub fn stream(&self, group: &str, sender: &str) -> Option<StreamStatus> {
        Some(self.groups.get(group)?.get(sender)?.status())
    }

    /// Stops receiving in `group` (we left it); messages held are dropped and counted as
    /// undeliverable.
    pub fn remove_group(&mut self, group: &str) {
        if let Some(streams) = self.groups.remove(group) {
            for stream in streams.values() {
                self.counters.undeliverable += stream.held() as u64;
            }
        }
    }

    /// Sets the start point of a stream added with [`Start::Handshake`] (the sender's answer
    /// to our Hello, or its Hello); the messages that waited are then delivered or held. The
    /// stream learns that its sender can retransmit; a stream already running keeps its place.
    pub fn set_start(
        &mut self,
        now: Instant,
        group: &str,
        sender: &str,
        start: u64,
    ) -> Result<(), Error> {
        self.with_stream(group, sender, |s, ctx| s.on_start(ctx, now, start))
    }

    /// `sender` is known to speak our protocol (it named its epoch, say), so it will name
    /// where its stream starts for us, however late: a stream of it that has not started
    /// waits for [`set_start`](Self::set_start) and no longer falls back to the report's rule
    /// after `handshake_timeout` (one that fell back before anything arrived waits again).
    /// Guessing the start from the first message that arrives would deliver from another
    /// place than the other receivers.
    pub fn expect_start(&mut self, group: &str, sender: &str) -> Result<(), Error> {
        self.with_stream(group, sender, |s, _| s.on_expect_start())
    }

    /// A message with `counter` from `sender` in `group`.
    pub fn handle_message(
        &mut self,
        now: Instant,
        group: &str,
        sender: &str,
        counter: u64,
        payload: T,
    ) -> Result<(), Error> {
        self.with_stream(group, sender, |s, ctx| {
            s.on_message(ctx, now, counter, payload)
        })
    }

    /// `sender`'s announcement that its highest counter in `group` is `highest`.
    pub fn handle_digest(
        &mut self,
        now: Instant,
        group: &str,
        sender: &str,
        highest: u64,
    ) -> Result<(), Error> {
        self.with_stream(group, sender, |s, ctx| s.on_digest(ctx, now, highest))
    }

    /// `sender`'s answer that it can no longer retransmit `ranges`: they are skipped.
    pub fn handle_unavailable(
        &mut self,
        now: Instant,
        group: &str,
        sender: &str,
        ranges: &[RangeInclusive<u64>],
    ) -> Result<(), Error> {
        self.with_stream(group, sender, |s, ctx| s.on_unavailable(ctx, now, ranges))
    }

    /// `sender` left `group`. With its final counter (newer senders) its messages up to that
    /// counter are still recovered for `bye_grace`, then the stream is forgotten; without one
    /// (old senders) what is held is released at once and the stream forgotten.
    pub fn handle_bye(
        &mut self,
        now: Instant,
        group: &str,
        sender: &str,
        final_counter: Option<u64>,
    ) -> Result<(), Error> {
        self.with_stream(group, sender, |s, ctx| s.on_bye(ctx, now, final_counter))
    }

    /// `sender` was evicted from `group` (it failed): nothing more will come from it, so what
    /// it left held behind a gap is dropped and counted, and its stream is forgotten.
    pub fn handle_evicted(&mut self, group: &str, sender: &str) -> Result<(), Error> {
        let unknown = || Error::UnknownStream {
            group: group.to_owned(),
            sender: sender.to_owned(),
        };
        let streams = self.groups.get_mut(group).ok_or_else(unknown)?;
        let stream = streams.remove(sender).ok_or_else(unknown)?;
        self.counters.undeliverable += stream.held() as u64;
        Ok(())
    }

    /// Runs every timer due at `now`: retransmission requests, skipped gaps, handshake
    /// fallbacks, the end of a leaving member's grace period.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((at, (group, sender))) = self.timers.pop_due(now) {
            let Some(stream) = self.groups.get_mut(&group).and_then(|s| s.get_mut(&sender)) else {
                continue;
            };
            if !claim(&mut stream.scheduled, at) {
                continue;
            }
            // A timer that fires for a deadline not yet due (rescheduled later) just re-arms.
            let _ = self.with_stream(&group, &sender, |s, ctx| s.on_timer(ctx, now));
        }
    }

    /// The next action for the caller, if any.
    pub fn poll_output(&mut self) -> Option<Output<T>> {
        self.outputs.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    /// Totals since the receiver was made.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Messages held across all streams (each stream holds at most `window`).
    pub fn held(&self) -> usize {
        self.groups
            .values()
            .flat_map(|s| s.values())
            .map(Stream::held)
            .sum()
    }

    fn with_stream(
        &mut self,
        group: &str,
        sender: &str,
        f: impl FnOnce(&mut Stream<T>, &mut Ctx<'_, T>),
    ) -> Result<(), Error> {
        let Self {
            config,
            groups,
            timers,
            outputs,
            counters,
        } = self;
        let unknown = || Error::UnknownStream {
            group: group.to_owned(),
            sender: sender.to_owned(),
        };
        let streams = groups.get_mut(group).ok_or_else(unknown)?;
        let stream = streams.get_mut(sender).ok_or_else(unknown)?;
        let mut ctx = Ctx {
            config,
            outputs,
            counters,
        };
        f(stream, &mut ctx);
        if stream.finished() {
            streams.remove(sender);
        } else if let Some(at) = stream.deadline() {
            timers.schedule(&mut stream.scheduled, at, || {
                (stream.group.clone(), stream.sender.clone())
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const G: &str = "g";
    const S: &str = "s";

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    struct Harness {
        t0: Instant,
        rx: FifoReceiver<u64>,
    }

    impl Harness {
        fn new(start: Start) -> Self {
            Self::with(start, Config::default())
        }

        fn with(start: Start, config: Config) -> Self {
            let t0 = Instant::now();
            let mut rx = FifoReceiver::new(config);
            rx.add_sender(t0, G, S, start);
            Self { t0, rx }
        }

        fn at(&self, millis: u64) -> Instant {
            self.t0 + ms(millis)
        }

        /// Feeds message `counter` (payload = counter * 10) at `millis`.
        fn msg(&mut self, millis: u64, counter: u64) {
            let now = self.at(millis);
            self.rx
                .handle_message(now, G, S, counter, counter * 10)
                .expect("known stream");
        }

        /// Drains outputs: the counters delivered and the requests made.
        fn drain(&mut self) -> (Vec<u64>, Vec<Vec<RangeInclusive<u64>>>) {
            let mut delivered = Vec::new();
            let mut nacks = Vec::new();
            while let Some(out) = self.rx.poll_output() {
                match out {
                    Output::Deliver(d) => {
                        assert_eq!(d.payload, d.counter * 10, "payload matches its counter");
                        delivered.push(d.counter);
                    }
                    Output::Nack { to, group, ranges } => {
                        assert_eq!((&*to, &*group), (S, G));
                        nacks.push(ranges);
                    }
                    other => panic!("a receiver emitted {other:?}"),
                }
            }
            (delivered, nacks)
        }

        fn tick(&mut self, millis: u64) {
            self.rx.handle_timeout(self.at(millis));
        }
    }

    #[test]
    fn delivers_in_order_and_drops_duplicates() {
        let mut h = Harness::new(Start::At(1));
        for c in [1, 2, 2, 3, 1] {
            h.msg(0, c);
        }
        assert_eq!(h.drain().0, [1, 2, 3]);
        assert_eq!(h.rx.counters().duplicates, 2);
        assert_eq!(h.rx.counters().delivered, 3);
        assert_eq!(h.rx.poll_timeout(), None, "in order: no timer");
    }

    #[test]
    fn holds_back_until_the_gap_closes() {
        let mut h = Harness::new(Start::At(1));
        h.msg(0, 3);
        h.msg(0, 2);
        assert_eq!(h.drain().0, Vec::<u64>::new());
        assert_eq!(h.rx.held(), 2);
        h.msg(1, 1);
        assert_eq!(h.drain().0, [1, 2, 3]);
        assert_eq!(h.rx.held(), 0);
        assert_eq!(h.rx.counters().gaps_recovered, 0, "reordered, not lost");
    }

    #[test]
    fn asks_for_missing_counters_after_the_delay_then_repeats() {
        let mut h = Harness::new(Start::At(1));
        h.msg(0, 1);
        h.msg(0, 4);
        h.msg(0, 6);
        assert_eq!(h.rx.poll_timeout(), Some(h.at(3)), "nack_delay");
        h.tick(2);
        assert_eq!(h.drain(), (vec![1], vec![]), "no request before the delay");
        h.tick(3);
        assert_eq!(h.drain().1, [vec![2..=3, 5..=5]]);
        assert_eq!(
            h.rx.poll_timeout(),
            Some(h.at(18)),
            "then every nack_interval"
        );
        h.msg(5, 2);
        h.msg(5, 3);
        assert_eq!(h.drain().0, [2, 3, 4]);
        h.tick(18);
        assert_eq!(h.drain().1, [vec![5..=5]], "only what is still missing");
        h.msg(19, 5);
        assert_eq!(h.drain().0, [5, 6]);
        assert_eq!(h.rx.counters().gaps_recovered, 3);
        assert_eq!(h.rx.counters().nacks_sent, 2);
    }

    #[test]
    fn a_digest_reveals_a_lost_last_message() {
        let mut h = Harness::new(Start::At(1));
        h.msg(0, 1);
        h.rx.handle_digest(h.at(10), G, S, 2).expect("known");
        h.tick(13);
        assert_eq!(h.drain(), (vec![1], vec![vec![2..=2]]));
        h.msg(14, 2);
        assert_eq!(h.drain().0, [2]);
        // A digest of what was delivered already opens no gap.
        h.rx.handle_digest(h.at(20), G, S, 2).expect("known");
        h.tick(40);
        assert!(h.drain().1.is_empty());
    }

    #[test]
    fn gives_up_after_the_attempts_and_counts_the_skip() {
        let config = Config {
            nack_attempts: 2,
            gap_patience: Duration::ZERO,
            ..Config::default()
        };
        let mut h = Harness::with(Start::At(1), config);
        h.msg(0, 2);
        h.tick(3);
        h.tick(18);
        assert_eq!(h.drain().1.len(), 2);
        h.tick(33);
        assert_eq!(
            h.drain().0,
            [2],
            "the gap is skipped, what followed is delivered"
        );
        assert_eq!(h.rx.counters().gaps_skipped, 1);
        h.msg(40, 1);
        assert_eq!(h.rx.counters().duplicates, 1, "a late arrival is dropped");
    }

    #[test]
    fn a_sender_cut_off_for_a_while_is_asked_slowly_until_the_patience_is_over() {
        let config = Config {
            nack_attempts: 2,
            slow_nack_interval: Duration::from_millis(100),
            gap_patience: Duration::from_millis(1000),
            ..Config::default()
        };
        let mut h = Harness::with(Start::At(1), config);
        h.msg(0, 2);
        h.tick(3);
        h.tick(18);
        assert_eq!(h.drain().1.len(), 2, "two quick requests");
        // Past the quick requests, one every 100 ms, and nothing is skipped.
        h.tick(33);
        assert_eq!(h.drain().1.len(), 1);
        h.tick(100);
        assert!(h.drain().1.is_empty(), "not yet");
        h.tick(133);
        assert_eq!(h.drain().1.len(), 1);
        assert_eq!(h.rx.counters().gaps_skipped, 0);
        // The partition heals: the retransmission closes the gap, both are delivered.
        h.msg(500, 1);
        assert_eq!(h.drain().0, [1, 2]);
        // A gap that never closes is skipped once the patience is over.
        h.msg(600, 4);
        for t in (603..=1700).step_by(5) {
            h.tick(t);
        }
        let (delivered, _) = h.drain();
        assert_eq!(delivered, [4]);
        assert_eq!(h.rx.counters().gaps_skipped, 1);
    }

    #[test]
    fn drops_counters_beyond_the_window_without_buffering_them() {
        let config = Config {
            window: 8,
            ..Config::default()
        };
        let mut h = Harness::with(Start::At(1), config);
        h.msg(0, 9);
        h.msg(0, 1_000_000);
        h.rx.handle_digest(h.at(0), G, S, u64::MAX).expect("known");
        assert_eq!(h.rx.counters().beyond_window, 2);
        assert_eq!(h.rx.held(), 0);
        h.msg(0, 8);
        assert_eq!(h.rx.held(), 1, "the last slot of the window is usable");
        h.tick(3);
        let (_, nacks) = h.drain();
        assert_eq!(nacks, [vec![1..=7]], "requests stay inside the window");
    }

    #[test]
    fn unavailable_counters_are_skipped() {
        let mut h = Harness::new(Start::At(1));
        h.msg(0, 4);
        h.rx.handle_unavailable(h.at(1), G, S, &[1..=2, 100..=200])
            .expect("known");
        assert_eq!(h.drain().0, Vec::<u64>::new());
        h.msg(2, 3);
        assert_eq!(h.drain().0, [3, 4]);
        assert_eq!(h.rx.counters().gaps_skipped, 2);
    }

    #[test]
    fn unavailable_counters_of_a_stream_starting_at_zero_do_not_underflow() {
        // Found by fuzzing the peer core: a hostile Hello can set a start of 0.
        let mut h = Harness::new(Start::At(0));
        h.rx.handle_unavailable(h.at(1), G, S, &[0..=0, 0..=5])
            .expect("known");
        assert_eq!(h.rx.counters().gaps_skipped, 0, "nothing known to skip");
        h.msg(2, 0);
        assert_eq!(h.drain().0, [0]);
    }

    #[test]
    fn an_old_sender_starts_at_its_first_message_and_gaps_are_held_only_briefly() {
        let mut h = Harness::new(Start::Legacy);
        h.msg(0, 17);
        h.msg(0, 19);
        assert_eq!(h.drain(), (vec![17], vec![]));
        assert_eq!(h.rx.poll_timeout(), Some(h.at(5)), "legacy_holdback");
        h.tick(5);
        let (delivered, nacks) = h.drain();
        assert_eq!(delivered, [19]);
        assert!(
            nacks.is_empty(),
            "an old sender is never asked to retransmit"
        );
        h.msg(6, 18);
        assert_eq!(
            h.rx.counters().duplicates,
            1,
            "below a delivered counter: dropped"
        );
        // A reordered pair within the hold is put right.
        h.msg(7, 21);
        h.msg(8, 20);
        assert_eq!(h.drain().0, [20, 21]);
    }

    #[test]
    fn an_old_sender_may_jump_past_the_window() {
        let config = Config {
            window: 8,
            ..Config::default()
        };
        let mut h = Harness::with(Start::Legacy, config);
        h.msg(0, 1);
        h.msg(0, 3);
        h.msg(0, 500);
        assert_eq!(h.drain().0, [1, 3, 500]);
        assert!(h.rx.held() == 0);
    }

    #[test]
    fn handshake_holds_messages_until_the_start_point() {
        let mut h = Harness::new(Start::Handshake);
        h.msg(0, 6);
        h.msg(0, 4);
        h.msg(0, 5);
        assert_eq!(h.drain().0, Vec::<u64>::new());
        h.rx.set_start(h.at(1), G, S, 5).expect("known");
        assert_eq!(h.drain().0, [5, 6]);
        assert_eq!(h.rx.counters().before_start, 1);
        assert!(h.rx.stream(G, S).expect("exists").recovering);
    }

    #[test]
    fn handshake_falls_back_to_the_first_message_rule() {
        let mut h = Harness::new(Start::Handshake);
        h.msg(0, 9);
        h.msg(0, 8);
        h.tick(1199);
        assert_eq!(
            h.drain().0,
            Vec::<u64>::new(),
            "still waiting for the start point"
        );
        h.tick(1200);
        assert_eq!(h.drain().0, [8, 9]);
        let status = h.rx.stream(G, S).expect("exists");
        assert!(!status.recovering && status.started);
    }

    #[test]
    fn a_sender_known_to_name_its_start_is_waited_for_however_late() {
        // Told before the handshake's time is over: no fallback, however long it takes.
        let mut h = Harness::new(Start::Handshake);
        h.msg(0, 9);
        h.rx.expect_start(G, S).expect("known");
        h.msg(10, 8);
        h.tick(5000);
        assert_eq!(h.drain().0, Vec::<u64>::new(), "no start guessed");
        assert!(!h.rx.stream(G, S).expect("exists").started);
        h.rx.set_start(h.at(5001), G, S, 7).expect("known");
        h.msg(5002, 7);
        assert_eq!(h.drain().0, [7, 8, 9]);
        assert!(h.rx.stream(G, S).expect("exists").recovering);

        // Told after it fell back with nothing received: it waits again.
        let mut h = Harness::new(Start::Handshake);
        h.tick(1200);
        h.rx.expect_start(G, S).expect("known");
        h.msg(1300, 12);
        h.tick(6000);
        assert_eq!(
            h.drain().0,
            Vec::<u64>::new(),
            "12 is not taken for the start"
        );
        h.rx.set_start(h.at(6001), G, S, 11).expect("known");
        h.msg(6002, 11);
        assert_eq!(h.drain().0, [11, 12]);

        // Told once the report's rule already delivered: the stream keeps its place.
        let mut h = Harness::new(Start::Handshake);
        h.tick(1200);
        h.msg(1300, 4);
        h.rx.expect_start(G, S).expect("known");
        h.msg(1301, 5);
        assert_eq!(h.drain().0, [4, 5]);
    }

    #[test]
    fn bye_with_final_counter_recovers_the_tail_then_forgets_the_stream() {
        let mut h = Harness::new(Start::At(1));
        h.msg(0, 1);
        h.rx.handle_bye(h.at(1), G, S, Some(3)).expect("known");
        h.tick(4);
        assert_eq!(h.drain(), (vec![1], vec![vec![2..=3]]));
        h.msg(5, 2);
        h.msg(5, 3);
        assert_eq!(h.drain().0, [2, 3]);
        assert!(!h.rx.has_sender(G, S), "forgotten once complete");
    }

    #[test]
    fn bye_grace_runs_out_and_the_rest_is_skipped() {
        let mut h = Harness::new(Start::At(1));
        h.msg(0, 3);
        h.rx.handle_bye(h.at(0), G, S, Some(5)).expect("known");
        h.msg(0, 6);
        assert_eq!(h.rx.counters().beyond_window, 1, "past the final counter");
        let mut t = 0;
        while h.rx.has_sender(G, S) {
            t += 5;
            h.tick(t);
            assert!(t <= 1000, "the grace period bounds the wait");
        }
        assert_eq!(h.drain().0, [3]);
        assert_eq!(h.rx.counters().gaps_skipped, 4, "counters 1, 2, 4 and 5");
    }

    #[test]
    fn an_old_senders_bye_releases_what_is_held() {
        let mut h = Harness::new(Start::Legacy);
        h.msg(0, 1);
        h.msg(0, 4);
        h.rx.handle_bye(h.at(1), G, S, None).expect("known");
        assert_eq!(h.drain().0, [1, 4]);
        assert!(!h.rx.has_sender(G, S));
    }

    #[test]
    fn eviction_drops_and_counts_what_is_undeliverable() {
        let mut h = Harness::new(Start::At(1));
        h.msg(0, 2);
        h.msg(0, 3);
        h.rx.handle_evicted(G, S).expect("known");
        assert_eq!(h.rx.counters().undeliverable, 2);
        assert!(!h.rx.has_sender(G, S));
        assert_eq!(
            h.rx.handle_message(h.at(1), G, S, 1, 10),
            Err(Error::UnknownStream {
                group: G.into(),
                sender: S.into()
            })
        );
        h.tick(10_000);
        assert!(
            h.drain().1.is_empty(),
            "a forgotten stream's timers are stale"
        );
    }

    #[test]
    fn unknown_streams_are_errors_and_change_nothing() {
        let mut h = Harness::new(Start::At(1));
        assert!(h.rx.handle_message(h.at(0), G, "nobody", 1, 10).is_err());
        assert!(h.rx.handle_message(h.at(0), "other", S, 1, 10).is_err());
        assert!(h.rx.handle_bye(h.at(0), "other", S, None).is_err());
        assert_eq!(h.rx.counters(), Counters::default());
        assert!(h.rx.poll_output().is_none());
    }

    #[test]
    fn adding_a_sender_again_restarts_its_stream() {
        let mut h = Harness::new(Start::At(1));
        h.msg(0, 1);
        h.msg(0, 3);
        h.rx.add_sender(h.at(1), G, S, Start::At(1));
        assert_eq!(h.rx.counters().undeliverable, 1);
        h.msg(2, 1);
        assert_eq!(h.drain().0, [1, 1]);
    }
}
