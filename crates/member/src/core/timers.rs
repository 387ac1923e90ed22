//! The timers of a group, in one table: what is due, and when the next one is.

use super::*;

/// The timers of a group, one slot each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Timer {
    /// Greet the members that did not answer our Hello again.
    HelloRetry,
    /// The sequencer is lost: greet its address again.
    SequencerProbe,
    /// Our window is closed: ask the members holding us back how far they are.
    FlowProbe,
    /// We are idle and some member has not acknowledged our last message: tell it our
    /// highest counter again (a lost tail would otherwise go unnoticed).
    TailProbe,
}

impl Timer {
    pub(super) const ALL: [Timer; 4] = [
        Timer::HelloRetry,
        Timer::SequencerProbe,
        Timer::FlowProbe,
        Timer::TailProbe,
    ];
}

/// When each [`Timer`] of a group is due (`None`: not armed).
#[derive(Debug, Default)]
pub(super) struct Timers([Option<Instant>; 4]);

impl Timers {
    /// The earliest armed timer's deadline.
    pub(super) fn next(&self) -> Option<Instant> {
        self.0.iter().flatten().min().copied()
    }

    /// The timers due at `now`, in the order they are handled.
    pub(super) fn due(&self, now: Instant) -> impl Iterator<Item = Timer> + '_ {
        Timer::ALL
            .into_iter()
            .filter(move |t| self[*t].is_some_and(|at| at <= now))
    }
}

impl std::ops::Index<Timer> for Timers {
    type Output = Option<Instant>;
    fn index(&self, t: Timer) -> &Option<Instant> {
        &self.0[t as usize]
    }
}

impl std::ops::IndexMut<Timer> for Timers {
    fn index_mut(&mut self, t: Timer) -> &mut Option<Instant> {
        &mut self.0[t as usize]
    }
}
