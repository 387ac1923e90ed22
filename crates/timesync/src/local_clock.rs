//! This process's clock: the system clock, or a simulated skewed one over it.

use std::time::SystemTime;

use clock::{Nanos, SkewedClock};

/// The clock a program reads: the real one shifted by a simulated offset and drift (both
/// zero unless asked for), which it may correct.
#[derive(Debug, Clone)]
pub struct LocalClock {
    skew: SkewedClock,
}

impl LocalClock {
    /// A clock `offset_ms` ahead of the real one, drifting `drift_ppm`.
    pub fn new(offset_ms: f64, drift_ppm: f64) -> Self {
        Self {
            skew: SkewedClock::new((offset_ms * 1e6) as i64, drift_ppm, real_now()),
        }
    }

    /// What this clock reads now.
    pub fn now(&self) -> Nanos {
        self.skew.read(real_now())
    }

    /// How far this clock is ahead of the real one now (known only because it is
    /// simulated: with no skew asked for it is 0, whatever the real clock's own error).
    pub fn true_error_ns(&self) -> i64 {
        self.skew.error_at(real_now())
    }

    /// Applies a correction, as setting the clock would (the machine's clock is never
    /// touched).
    pub fn adjust(&mut self, correction_ns: i64) {
        self.skew.adjust(correction_ns);
    }
}

/// The system clock now.
pub fn real_now() -> Nanos {
    Nanos::from_system(SystemTime::now())
}

/// This machine's offset from UTC in seconds, for the seed's local-time strings.
pub fn utc_offset_s() -> i32 {
    chrono::Local::now().offset().local_minus_utc()
}
