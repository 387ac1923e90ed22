//! The sequencer: FIFO-orders each author's messages and gives each the next number of its
//! group's sequence, which every member then delivers in FIFO order.

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Instant;

use crate::{Config, Counters, Error, FifoReceiver, FifoSender, Output, Start};

/// A message in the sequencer's stream: who wrote it, and its counter in the author's own
/// stream (for tracing), around the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequenced<T> {
    /// The author (the datagram's `Origin`).
    pub origin: Arc<str>,
    /// The author's counter for the message.
    pub origin_counter: u64,
    /// The message.
    pub payload: T,
}

/// The sequencer of total order.
///
/// Its input side is a [`FifoReceiver`] over the authors' streams (with the same loss
/// recovery as any receiver: it asks authors for what it missed); every message that
/// receiver delivers is numbered by a [`FifoSender`] whose stream per group is the total
/// order, multicast to the group and retransmitted on request. Emits
/// [`Output::Multicast`] and [`Output::Retransmit`] of [`Sequenced`] messages, plus the
/// requests, digests and "unavailable" answers of both sides.
#[derive(Debug)]
pub struct Sequencer<T> {
    input: FifoReceiver<T>,
    output: FifoSender<Sequenced<T>>,
    pending: std::collections::VecDeque<Output<Sequenced<T>>>,
}

impl<T: Clone> Sequencer<T> {
    /// A sequencer with no group.
    pub fn new(config: Config) -> Self {
        Self {
            input: FifoReceiver::new(config.clone()),
            output: FifoSender::new(config),
            pending: std::collections::VecDeque::new(),
        }
    }

    /// Opens `group`'s sequence (numbers from 1) unless it is open; returns the next sequence
    /// number, the `Start` a new member is told.
    pub fn open_group(&mut self, group: &str) -> u64 {
        self.output.open(group)
    }

    /// Forgets `group` (it has no members left).
    pub fn close_group(&mut self, group: &str) {
        self.output.close(group);
        self.input.remove_group(group);
    }

    /// The next sequence number of `group`, if it is open.
    pub fn next_sequence(&self, group: &str) -> Option<u64> {
        self.output.next_counter(group)
    }

    /// Starts receiving `author`'s stream in `group` (opening the group if needed).
    pub fn add_author(&mut self, now: Instant, group: &str, author: &str, start: Start) {
        self.output.open(group);
        self.input.add_sender(now, group, author, start);
    }

    /// The position of `author`'s stream in `group`, if known.
    pub fn author_stream(&self, group: &str, author: &str) -> Option<crate::StreamStatus> {
        self.input.stream(group, author)
    }

    /// Whether `author`'s stream in `group` is known.
    pub fn has_author(&self, group: &str, author: &str) -> bool {
        self.input.has_sender(group, author)
    }

    /// Sets the start point of an author added with [`Start::Handshake`].
    pub fn set_author_start(
        &mut self,
        now: Instant,
        group: &str,
        author: &str,
        start: u64,
    ) -> Result<(), Error> {
        self.input.set_start(now, group, author, start)?;
        self.sequence(now);
        Ok(())
    }

    /// A message from `author` with the author's `counter`.
    pub fn handle_message(
        &mut self,
        now: Instant,
        group: &str,
        author: &str,
        counter: u64,
        payload: T,
    ) -> Result<(), Error> {
        self.input
            .handle_message(now, group, author, counter, payload)?;
        self.sequence(now);
        Ok(())
    }

    /// An author's announcement of its highest counter.
    pub fn handle_digest(
        &mut self,
        now: Instant,
        group: &str,
        author: &str,
        highest: u64,
    ) -> Result<(), Error> {
        self.input.handle_digest(now, group, author, highest)
    }

    /// An author's answer that it can no longer retransmit `ranges`.
    pub fn handle_unavailable(
        &mut self,
        now: Instant,
        group: &str,
        author: &str,
        ranges: &[RangeInclusive<u64>],
    ) -> Result<(), Error> {
        self.input.handle_unavailable(now, group, author, ranges)?;
        self.sequence(now);
        Ok(())
    }

    /// An author left `group` (see [`FifoReceiver::handle_bye`]).
    pub fn handle_bye(
        &mut self,
        now: Instant,
        group: &str,
        author: &str,
        final_counter: Option<u64>,
    ) -> Result<(), Error> {
        self.input.handle_bye(now, group, author, final_counter)?;
        self.sequence(now);
        Ok(())
    }

    /// An author was evicted (see [`FifoReceiver::handle_evicted`]).
    pub fn handle_evicted(&mut self, group: &str, author: &str) -> Result<(), Error> {
        self.input.handle_evicted(group, author)
    }

    /// A member asks for `ranges` of the sequence of `group`.
    pub fn handle_nack(
        &mut self,
        group: &str,
        requester: &str,
        ranges: &[RangeInclusive<u64>],
    ) -> Result<(), Error> {
        self.output.handle_nack(group, requester, ranges)
    }

    /// Numbers a message that an earlier sequencer of `group` ordered and some member
    /// delivered, ahead of anything still to come from the authors: after a sequencer crash
    /// the messages some members lack are ordered again in their old order, so that every
    /// member's sequence stays a prefix of one sequence. Opens the group if it is not.
    /// Returns the number given.
    pub fn sequence_recovered(
        &mut self,
        now: Instant,
        group: &str,
        origin: Arc<str>,
        origin_counter: u64,
        payload: T,
    ) -> u64 {
        let number = self.output.open(group);
        let message = Sequenced {
            origin,
            origin_counter,
            payload,
        };
        // Cannot fail: the group is open.
        let _ = self.output.send(now, group, message);
        number
    }

    /// Runs the timers of both sides due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.input.handle_timeout(now);
        self.sequence(now);
        self.output.handle_timeout(now);
    }

    /// The next action for the caller, if any.
    pub fn poll_output(&mut self) -> Option<Output<Sequenced<T>>> {
        self.pending
            .pop_front()
            .or_else(|| self.output.poll_output())
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.input.poll_timeout(), self.output.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Totals of both sides: messages ordered (`sent`), received from authors
    /// (`delivered`), and the recovery figures of each.
    pub fn counters(&self) -> Counters {
        let mut c = self.input.counters();
        c += self.output.counters();
        c
    }

    /// Messages held waiting for an author's gap, plus those kept for retransmission.
    pub fn held(&self) -> (usize, usize) {
        (self.input.held(), self.output.buffered())
    }

    /// Numbers every message the input side delivered, in the order it delivered them.
    fn sequence(&mut self, now: Instant) {
        while let Some(out) = self.input.poll_output() {
            match out {
                Output::Deliver(d) => {
                    let message = Sequenced {
                        origin: d.sender,
                        origin_counter: d.counter,
                        payload: d.payload,
                    };
                    // The group is open: authors are added only through `add_author`.
                    let _ = self.output.send(now, &d.group, message);
                }
                Output::Nack { to, group, ranges } => {
                    self.pending.push_back(Output::Nack { to, group, ranges })
                }
                // A receiver emits nothing else.
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn multicasts(seq: &mut Sequencer<&'static str>) -> Vec<(u64, String, &'static str)> {
        std::iter::from_fn(|| seq.poll_output())
            .filter_map(|o| match o {
                Output::Multicast {
                    counter, payload, ..
                } => Some((counter, payload.origin.to_string(), payload.payload)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn numbers_messages_in_one_sequence_keeping_each_authors_fifo_order() {
        let t0 = Instant::now();
        let mut seq = Sequencer::new(Config::default());
        seq.add_author(t0, "g", "a", Start::At(1));
        seq.add_author(t0, "g", "b", Start::At(1));
        seq.handle_message(t0, "g", "a", 2, "a2").expect("known");
        seq.handle_message(t0, "g", "b", 1, "b1").expect("known");
        seq.handle_message(t0, "g", "a", 1, "a1").expect("known");
        assert_eq!(
            multicasts(&mut seq),
            [
                (1, "b".into(), "b1"),
                (2, "a".into(), "a1"),
                (3, "a".into(), "a2")
            ]
        );
        assert_eq!(seq.next_sequence("g"), Some(4));
        assert!(
            seq.handle_message(t0, "g", "stranger", 1, "x").is_err(),
            "an unknown author is refused"
        );
    }

    #[test]
    fn recovers_an_authors_gap_and_retransmits_its_own_sequence() {
        let t0 = Instant::now();
        let mut seq = Sequencer::new(Config::default());
        seq.add_author(t0, "g", "a", Start::At(1));
        seq.handle_message(t0, "g", "a", 2, "a2").expect("known");
        assert!(multicasts(&mut seq).is_empty());
        let deadline = seq.poll_timeout().expect("a gap timer");
        seq.handle_timeout(deadline);
        let nack = seq.poll_output();
        assert_eq!(
            nack,
            Some(Output::Nack {
                to: "a".into(),
                group: "g".into(),
                ranges: vec![1..=1]
            })
        );
        seq.handle_message(deadline, "g", "a", 1, "a1")
            .expect("known");
        assert_eq!(multicasts(&mut seq).len(), 2);
        seq.handle_nack("g", "member", &[2..=2]).expect("open");
        match seq.poll_output() {
            Some(Output::Retransmit {
                to,
                counter,
                payload,
                ..
            }) => {
                assert_eq!((&*to, counter, payload.payload), ("member", 2, "a2"));
                assert_eq!(payload.origin_counter, 2);
            }
            other => panic!("expected a retransmission, got {other:?}"),
        }
    }
}
