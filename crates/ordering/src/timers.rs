//! Deadlines of many streams in one heap, with stale entries recognised and ignored.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// A min-heap of `(deadline, key)`.
///
/// Each stream remembers the one deadline it has scheduled; an entry whose deadline no longer
/// matches its stream's is stale and is passed over when it comes up, so rescheduling never
/// has to search the heap. Nothing is pushed on the in-order path.
#[derive(Debug)]
pub(crate) struct TimerQueue<K> {
    heap: BinaryHeap<Reverse<(Instant, K)>>,
}

impl<K: Ord> TimerQueue<K> {
    pub(crate) fn new() -> Self {
        Self {
            heap: BinaryHeap::new(),
        }
    }

    /// Schedules `key` at `at` unless the stream already has an earlier or equal deadline in
    /// the heap; `scheduled` is the stream's record of its own entry.
    /// The key is built only when an entry is pushed, so the common case costs nothing.
    pub(crate) fn schedule(
        &mut self,
        scheduled: &mut Option<Instant>,
        at: Instant,
        key: impl FnOnce() -> K,
    ) {
        if scheduled.is_none_or(|s| at < s) {
            *scheduled = Some(at);
            self.heap.push(Reverse((at, key())));
        }
    }

    /// The earliest deadline in the heap (possibly a stale one: waking for it is harmless).
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Takes the earliest entry due at or before `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(Instant, K)> {
        if self.next_deadline()? <= now {
            self.heap.pop().map(|Reverse(entry)| entry)
        } else {
            None
        }
    }

    /// Entries in the heap, stale ones included.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }
}

/// Takes a popped entry as the stream's own: true if `at` is the deadline the stream had
/// scheduled (and clears it), false if the entry is stale.
pub(crate) fn claim(scheduled: &mut Option<Instant>, at: Instant) -> bool {
    if *scheduled == Some(at) {
        *scheduled = None;
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn keeps_one_entry_per_stream_unless_an_earlier_deadline_comes() {
        let t0 = Instant::now();
        let mut q = TimerQueue::new();
        let mut mine = None;
        q.schedule(&mut mine, t0 + Duration::from_millis(10), || "a");
        q.schedule(&mut mine, t0 + Duration::from_millis(20), || "a");
        assert_eq!(q.len(), 1, "a later deadline does not add an entry");
        q.schedule(&mut mine, t0 + Duration::from_millis(5), || "a");
        assert_eq!(q.len(), 2);
        assert_eq!(q.next_deadline(), Some(t0 + Duration::from_millis(5)));
        assert_eq!(q.pop_due(t0), None, "nothing is due yet");

        let (at, key) = q.pop_due(t0 + Duration::from_millis(10)).expect("due");
        assert_eq!((at, key), (t0 + Duration::from_millis(5), "a"));
        assert!(claim(&mut mine, at));
        let (stale, _) = q.pop_due(t0 + Duration::from_millis(10)).expect("due");
        assert!(!claim(&mut mine, stale), "the superseded entry is stale");
    }
}
