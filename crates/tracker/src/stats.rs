//! What the tracker has done, readable from another thread while it runs.

use std::sync::atomic::{AtomicU64, Ordering};

/// Running totals of the tracker; read with [`Stats::snapshot`].
#[derive(Debug, Default)]
pub struct Stats {
    pub(crate) requests: AtomicU64,
    pub(crate) bad_requests: AtomicU64,
    pub(crate) failed_requests: AtomicU64,
    pub(crate) heartbeats_udp: AtomicU64,
    pub(crate) datagrams_dropped: AtomicU64,
    pub(crate) connections_accepted: AtomicU64,
    pub(crate) connections_refused: AtomicU64,
    pub(crate) connections_timed_out: AtomicU64,
    pub(crate) evictions: AtomicU64,
    pub(crate) byes_sent: AtomicU64,
    pub(crate) ntp_answers: AtomicU64,
}

/// A copy of the totals at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Requests answered over TCP (including failures).
    pub requests: u64,
    /// Requests that could not be decoded (malformed, oversized, unknown Type).
    pub bad_requests: u64,
    /// Well-formed requests refused (unknown member or group, name taken, ...).
    pub failed_requests: u64,
    /// Heartbeats accepted over UDP.
    pub heartbeats_udp: u64,
    /// UDP datagrams dropped: malformed, not a heartbeat, unknown member, wrong source.
    pub datagrams_dropped: u64,
    /// TCP connections accepted.
    pub connections_accepted: u64,
    /// TCP connections refused because `max_connections` were open.
    pub connections_refused: u64,
    /// TCP connections closed for being idle.
    pub connections_timed_out: u64,
    /// Members evicted for silence.
    pub evictions: u64,
    /// Bye datagrams sent on behalf of evicted members.
    pub byes_sent: u64,
    /// NTP requests answered (the tracker serves time).
    pub ntp_answers: u64,
}

macro_rules! counters {
    ($($field:ident),*) => {
        impl Stats {
            /// The totals now.
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $($field: self.$field.load(Ordering::Relaxed)),* }
            }
        }
    };
}
counters!(
    requests,
    bad_requests,
    failed_requests,
    heartbeats_udp,
    datagrams_dropped,
    connections_accepted,
    connections_refused,
    connections_timed_out,
    evictions,
    byes_sent,
    ntp_answers
);

/// Adds one to a counter.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
