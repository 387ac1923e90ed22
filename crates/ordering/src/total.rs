//! The total-order receiver: FIFO over the sequencer's stream of each group.

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Instant;

use crate::{Config, Counters, Error, FifoReceiver, Output, Start, StreamStatus};

/// Delivers, in each group, the sequencer's stream in the order of its sequence numbers, and
/// nothing else; since every member delivers the same stream with the same recovery, all
/// members of a group deliver the same sequence.
///
/// Emits [`Output::Deliver`] (the `sender` is the sequencer, the payload the sequenced
/// message) and [`Output::Nack`] to the sequencer.
#[derive(Debug)]
pub struct TotalOrderReceiver<T> {
    inner: FifoReceiver<T>,
    sequencer: Arc<str>,
}

impl<T> TotalOrderReceiver<T> {
    /// A receiver for the stream of the sequencer named `sequencer` (the report's
    /// `sequencer`).
    pub fn new(config: Config, sequencer: &str) -> Self {
        Self {
            inner: FifoReceiver::new(config),
            sequencer: Arc::from(sequencer),
        }
    }

    /// Starts receiving `group`'s sequence from `start` (usually the sequencer's answer to
    /// our Hello, or [`Start::Handshake`] until it comes).
    pub fn join(&mut self, now: Instant, group: &str, start: Start) {
        self.inner.add_sender(now, group, &self.sequencer, start);
    }

    /// Stops receiving `group`.
    pub fn leave(&mut self, group: &str) {
        self.inner.remove_group(group);
    }

    /// Sets the start point of a group joined with [`Start::Handshake`].
    pub fn set_start(&mut self, now: Instant, group: &str, start: u64) -> Result<(), Error> {
        self.inner.set_start(now, group, &self.sequencer, start)
    }

    /// The sequencer of `group` is known to be one of ours (it named its epoch): it will say
    /// where its sequence starts for us, however late, and the stream waits for that instead
    /// of falling back to the report's rule (see [`FifoReceiver::expect_start`]).
    pub fn expect_start(&mut self, group: &str) -> Result<(), Error> {
        self.inner.expect_start(group, &self.sequencer)
    }

    /// A sequenced message with sequence number `seq`.
    pub fn handle_sequenced(
        &mut self,
        now: Instant,
        group: &str,
        seq: u64,
        payload: T,
    ) -> Result<(), Error> {
        self.inner
            .handle_message(now, group, &self.sequencer, seq, payload)
    }

    /// The sequencer's announcement of its highest sequence number in `group`.
    pub fn handle_digest(&mut self, now: Instant, group: &str, highest: u64) -> Result<(), Error> {
        self.inner
            .handle_digest(now, group, &self.sequencer, highest)
    }

    /// The sequencer's answer that it can no longer retransmit `ranges`.
    pub fn handle_unavailable(
        &mut self,
        now: Instant,
        group: &str,
        ranges: &[RangeInclusive<u64>],
    ) -> Result<(), Error> {
        self.inner
            .handle_unavailable(now, group, &self.sequencer, ranges)
    }

    /// Runs the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.inner.handle_timeout(now);
    }

    /// The next action for the caller, if any.
    pub fn poll_output(&mut self) -> Option<Output<T>> {
        self.inner.poll_output()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.inner.poll_timeout()
    }

    /// Totals since the receiver was made.
    pub fn counters(&self) -> Counters {
        self.inner.counters()
    }

    /// The position of `group`'s sequence, if joined.
    pub fn stream(&self, group: &str) -> Option<StreamStatus> {
        self.inner.stream(group, &self.sequencer)
    }

    /// Messages held across all groups.
    pub fn held(&self) -> usize {
        self.inner.held()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivers_only_the_sequencers_stream_in_sequence_order() {
        let t0 = Instant::now();
        let mut rx = TotalOrderReceiver::new(Config::default(), "sequencer");
        rx.join(t0, "g", Start::At(1));
        rx.handle_sequenced(t0, "g", 2, 'b').expect("joined");
        rx.handle_sequenced(t0, "g", 1, 'a').expect("joined");
        assert!(rx.handle_sequenced(t0, "other", 1, 'x').is_err());
        let delivered: Vec<_> = std::iter::from_fn(|| rx.poll_output())
            .map(|o| match o {
                Output::Deliver(d) => (d.counter, d.payload, d.sender.to_string()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            delivered,
            [(1, 'a', "sequencer".into()), (2, 'b', "sequencer".into())]
        );
        assert_eq!(rx.stream("g").map(|s| s.next), Some(3));
    }
}
