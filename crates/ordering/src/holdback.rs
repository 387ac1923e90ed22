//! The holdback queue: messages that arrived ahead of a gap, waiting for it to close.

use std::collections::VecDeque;
use std::ops::RangeInclusive;

/// One position of the queue.
#[derive(Debug, Clone)]
enum Slot<T> {
    /// Not received yet.
    Missing,
    /// Received, waiting for the counters before it.
    Held(T),
    /// Given up on: released without a message.
    Skipped,
}

/// What [`HoldbackQueue::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Inserted {
    /// The message now waits in the queue.
    Held,
    /// The position was already filled: a duplicate.
    Duplicate,
}

/// What [`HoldbackQueue::pop_ready`] released from the front.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Released<T> {
    /// A message to deliver.
    Message(T),
    /// A counter given up on.
    Skipped,
}

/// Messages of one stream held back until the gap before them closes.
///
/// Position `i` stands for counter `next + i`, where `next` is the stream's next expected
/// counter (kept by the caller). The queue is empty whenever the stream is in order, so the
/// in-order path never touches it; its length never exceeds the window the caller enforces.
#[derive(Debug)]
pub(crate) struct HoldbackQueue<T> {
    slots: VecDeque<Slot<T>>,
    held: usize,
}

impl<T> HoldbackQueue<T> {
    pub(crate) fn new() -> Self {
        Self {
            slots: VecDeque::new(),
            held: 0,
        }
    }

    /// Positions in use, held or not (at most the window).
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Messages held.
    pub(crate) fn held(&self) -> usize {
        self.held
    }

    /// Puts the message with offset `offset` from the next expected counter in its place.
    pub(crate) fn insert(&mut self, offset: usize, payload: T) -> Inserted {
        if offset >= self.slots.len() {
            self.slots.resize_with(offset + 1, || Slot::Missing);
        }
        match self.slots[offset] {
            Slot::Missing => {
                self.slots[offset] = Slot::Held(payload);
                self.held += 1;
                Inserted::Held
            }
            Slot::Held(_) | Slot::Skipped => Inserted::Duplicate,
        }
    }

    /// Releases the front position if it is no longer missing.
    pub(crate) fn pop_ready(&mut self) -> Option<Released<T>> {
        match self.slots.front()? {
            Slot::Missing => None,
            Slot::Held(_) | Slot::Skipped => match self.slots.pop_front()? {
                Slot::Held(payload) => {
                    self.held -= 1;
                    Some(Released::Message(payload))
                }
                _ => Some(Released::Skipped),
            },
        }
    }

    /// Marks every missing position below `offset_end` (exclusive) as skipped; returns how
    /// many were.
    pub(crate) fn skip_missing_before(&mut self, offset_end: usize) -> u64 {
        if offset_end > self.slots.len() {
            self.slots.resize_with(offset_end, || Slot::Missing);
        }
        let mut skipped = 0;
        for slot in self.slots.iter_mut().take(offset_end) {
            if matches!(slot, Slot::Missing) {
                *slot = Slot::Skipped;
                skipped += 1;
            }
        }
        skipped
    }

    /// Marks the positions of `offsets` skipped where they are missing; returns how many were.
    pub(crate) fn skip_range(&mut self, offsets: RangeInclusive<usize>) -> u64 {
        if *offsets.end() >= self.slots.len() {
            self.slots.resize_with(offsets.end() + 1, || Slot::Missing);
        }
        let mut skipped = 0;
        for i in offsets {
            if matches!(self.slots[i], Slot::Missing) {
                self.slots[i] = Slot::Skipped;
                skipped += 1;
            }
        }
        skipped
    }

    /// Whether the position `offset` still waits for its message.
    pub(crate) fn is_missing(&self, offset: usize) -> bool {
        self.slots
            .get(offset)
            .is_none_or(|s| matches!(s, Slot::Missing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_only_a_contiguous_front() {
        let mut q = HoldbackQueue::new();
        assert_eq!(q.insert(2, 'c'), Inserted::Held);
        assert_eq!(q.insert(1, 'b'), Inserted::Held);
        assert_eq!(q.pop_ready(), None, "position 0 is still missing");
        assert_eq!(q.insert(0, 'a'), Inserted::Held);
        assert_eq!(q.pop_ready(), Some(Released::Message('a')));
        assert_eq!(q.pop_ready(), Some(Released::Message('b')));
        assert_eq!(q.pop_ready(), Some(Released::Message('c')));
        assert_eq!(q.pop_ready(), None);
        assert!(q.is_empty());
        assert_eq!(q.held(), 0);
    }

    #[test]
    fn a_filled_position_reports_a_duplicate_and_keeps_the_first() {
        let mut q = HoldbackQueue::new();
        q.insert(1, 'x');
        assert_eq!(q.insert(1, 'y'), Inserted::Duplicate);
        assert_eq!(q.held(), 1);
        q.skip_missing_before(1);
        assert_eq!(q.pop_ready(), Some(Released::Skipped));
        assert_eq!(q.pop_ready(), Some(Released::Message('x')));
    }

    #[test]
    fn skipping_leaves_held_messages_alone() {
        let mut q = HoldbackQueue::new();
        q.insert(1, 'b');
        q.insert(3, 'd');
        assert_eq!(q.skip_missing_before(5), 3);
        let released: Vec<_> = std::iter::from_fn(|| q.pop_ready()).collect();
        assert_eq!(
            released,
            [
                Released::Skipped,
                Released::Message('b'),
                Released::Skipped,
                Released::Message('d'),
                Released::Skipped
            ]
        );
        assert_eq!(q.skip_range(0..=2), 3);
        assert!(!q.is_missing(1));
    }
}
