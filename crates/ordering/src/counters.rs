//! What happened to the messages that went through a core, for logs, tests and experiments.

use std::ops::AddAssign;

/// Running totals kept by every component of the core. A field a component never touches
/// stays zero (a receiver sends no retransmissions, a sender delivers nothing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Messages handed to the application, in order.
    pub delivered: u64,
    /// Messages at or below a counter already delivered or skipped: duplicates, or late
    /// arrivals after their gap was given up on. Dropped.
    pub duplicates: u64,
    /// Messages that arrived after a retransmission request had been sent for them.
    pub gaps_recovered: u64,
    /// Counters given up on: after `nack_attempts` requests, after the short hold of an old
    /// sender (whose counters also skip numbers it used in other groups), on "unavailable",
    /// or when a leaving member's grace period ran out.
    pub gaps_skipped: u64,
    /// Messages whose counter lay at or beyond the holdback window: dropped, never buffered.
    pub beyond_window: u64,
    /// Held messages dropped because their sender was evicted before the gap before them
    /// could be recovered.
    pub undeliverable: u64,
    /// Messages older than the start point a stream was given (sent before the join).
    pub before_start: u64,
    /// Retransmission requests sent.
    pub nacks_sent: u64,
    /// Messages sent by a sender (first transmissions).
    pub sent: u64,
    /// Messages sent again in answer to a retransmission request.
    pub retransmissions_sent: u64,
    /// Counters answered as no longer available for retransmission.
    pub unavailable_sent: u64,
    /// Highest-counter announcements sent by idle senders.
    pub digests_sent: u64,
}

impl AddAssign for Counters {
    fn add_assign(&mut self, o: Self) {
        self.delivered += o.delivered;
        self.duplicates += o.duplicates;
        self.gaps_recovered += o.gaps_recovered;
        self.gaps_skipped += o.gaps_skipped;
        self.beyond_window += o.beyond_window;
        self.undeliverable += o.undeliverable;
        self.before_start += o.before_start;
        self.nacks_sent += o.nacks_sent;
        self.sent += o.sent;
        self.retransmissions_sent += o.retransmissions_sent;
        self.unavailable_sent += o.unavailable_sent;
        self.digests_sent += o.digests_sent;
    }
}
