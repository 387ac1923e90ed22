//! Points in time as nanoseconds since the Unix epoch, and estimates of clock offsets.

use std::time::{SystemTime, UNIX_EPOCH};

/// A reading of some clock: nanoseconds since 1970-01-01T00:00:00Z on that clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Nanos(pub i64);

impl Nanos {
    /// The time `t` of the system clock, as a value (the caller reads the clock; the
    /// algorithms never do).
    pub fn from_system(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Self(d.as_nanos() as i64),
            Err(e) => Self(-(e.duration().as_nanos() as i64)),
        }
    }

    /// Microseconds since the epoch (the unit of the messenger's `SentAt`).
    pub fn as_micros(self) -> i64 {
        self.0.div_euclid(1000)
    }

    /// This time moved by `ns` nanoseconds.
    pub fn plus(self, ns: i64) -> Self {
        Self(self.0.saturating_add(ns))
    }

    /// `self - earlier`, in nanoseconds.
    pub fn since(self, earlier: Nanos) -> i64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// An estimate of how far another clock is ahead of ours: the true offset lies within
/// `offset_ns ± bound_ns` (the algorithm's guarantee, given its assumptions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    /// Their clock minus ours, in nanoseconds.
    pub offset_ns: i64,
    /// Half-width of the interval that holds the true offset.
    pub bound_ns: i64,
    /// The round-trip time of the exchange that gave it (the smaller, the better).
    pub rtt_ns: i64,
}

impl Estimate {
    /// Our clock's reading `local` turned into theirs.
    pub fn apply(&self, local: Nanos) -> Nanos {
        local.plus(self.offset_ns)
    }
}

/// Formats nanoseconds as a readable duration with sign (`+1.234 ms`, `-56 µs`).
pub fn human(ns: i64) -> String {
    let sign = if ns < 0 { "-" } else { "+" };
    let a = ns.unsigned_abs() as f64;
    if a >= 1e9 {
        format!("{sign}{:.3} s", a / 1e9)
    } else if a >= 1e6 {
        format!("{sign}{:.3} ms", a / 1e6)
    } else {
        format!("{sign}{:.1} µs", a / 1e3)
    }
}
