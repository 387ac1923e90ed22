//! A simulated local clock: the real one, shifted by an offset and running fast or slow by
//! a drift rate, so synchronization can be shown and measured on one machine.

use crate::time::Nanos;

/// A clock that reads `real + offset + drift × (real − epoch)`. Its error against the real
/// clock is known exactly, which is what lets tests measure the true residual error of an
/// algorithm. `adjust` applies a correction, as a process would to its own clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SkewedClock {
    offset_ns: i64,
    drift_ppm: f64,
    epoch: Nanos,
}

impl SkewedClock {
    /// A clock `offset_ns` ahead of the real one at real time `epoch`, gaining `drift_ppm`
    /// microseconds per second of real time (negative: slow, behind).
    pub fn new(offset_ns: i64, drift_ppm: f64, epoch: Nanos) -> Self {
        Self {
            offset_ns,
            drift_ppm,
            epoch,
        }
    }

    /// The real clock itself.
    pub fn exact(epoch: Nanos) -> Self {
        Self::new(0, 0.0, epoch)
    }

    /// What this clock reads when the real clock reads `real`.
    pub fn read(&self, real: Nanos) -> Nanos {
        real.plus(self.error_at(real))
    }

    /// How far this clock is ahead of the real one at real time `real`.
    pub fn error_at(&self, real: Nanos) -> i64 {
        let drift = (real.since(self.epoch) as f64 * self.drift_ppm * 1e-6) as i64;
        self.offset_ns + drift
    }

    /// Moves this clock by `correction_ns` (as setting it would).
    pub fn adjust(&mut self, correction_ns: i64) {
        self.offset_ns += correction_ns;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_and_drift_add_up() {
        let epoch = Nanos(1_000_000_000_000);
        let mut c = SkewedClock::new(-500_000_000, 100.0, epoch);
        assert_eq!(c.read(epoch), epoch.plus(-500_000_000));
        // 10 s later a +100 ppm clock has gained 1 ms.
        let later = epoch.plus(10_000_000_000);
        assert_eq!(c.error_at(later), -500_000_000 + 1_000_000);
        c.adjust(500_000_000);
        assert_eq!(c.error_at(later), 1_000_000);
        assert_eq!(SkewedClock::exact(epoch).read(later), later);
    }
}
