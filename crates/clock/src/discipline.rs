//! Clock discipline between synchronizations: from successive estimates of another clock's
//! offset, the rate at which that offset changes (our clock's frequency error, as NTP
//! clients estimate it), so that the offset is carried forward between syncs instead of
//! held still; and a bound that widens with the time since the last sync.
//!
//! A clock that drifts 200 ppm moves 2 ms in a 10 s sync interval: held still, an offset
//! measured to a few microseconds is off by milliseconds by the end of the interval.
//! Carried forward at the measured rate, it stays within the rate's own error times the
//! time since the sync (the error of two offsets over their distance in time).

use crate::time::{Estimate, Nanos};

/// The largest frequency error believed, in parts per million: a measured rate beyond it
/// is taken for a bad pair of estimates (a clock stepped, say) and ignored, and before any
/// rate is known the bound widens this fast.
pub const MAX_DRIFT_PPM: f64 = 500.0;

/// How far apart two estimates must be for their difference to give a rate: closer ones
/// (the samples of one burst) differ by noise, not by drift.
pub const MIN_SPAN_NS: i64 = 2_000_000_000;

/// How much a clock's frequency may wander between syncs (ppm), added to the rate's own
/// uncertainty when the bound widens: temperature moves a crystal by about this much.
pub const WANDER_PPM: f64 = 1.0;

/// The offset of another clock, carried forward at its measured rate between estimates.
///
/// Feed every estimate with [`update`](Self::update) (our clock's reading when it was
/// made, and the estimate); read the offset at any later reading of our clock with
/// [`estimate_at`](Self::estimate_at). No clock is read inside.
#[derive(Debug, Clone, Default)]
pub struct Discipline {
    /// The estimate in force, and our clock's reading when it was made.
    current: Option<(Nanos, Estimate)>,
    /// An earlier estimate at least [`MIN_SPAN_NS`] before `current`: the rate is taken
    /// between the two.
    anchor: Option<(Nanos, Estimate)>,
    /// Their rate minus ours (ns per ns), and its uncertainty.
    rate: Option<(f64, f64)>,
}

impl Discipline {
    /// No estimate yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new estimate of the other clock, made when ours read `local`.
    pub fn update(&mut self, local: Nanos, estimate: Estimate) {
        if let Some(current) = self.current
            && local.since(current.0) >= MIN_SPAN_NS
        {
            self.anchor = Some(current);
        }
        self.current = Some((local, estimate));
        if let Some((then, earlier)) = self.anchor {
            let span = local.since(then) as f64;
            let rate = (estimate.offset_ns - earlier.offset_ns) as f64 / span;
            let uncertainty = (estimate.bound_ns + earlier.bound_ns) as f64 / span;
            if rate.abs() <= MAX_DRIFT_PPM * 1e-6 {
                self.rate = Some((rate, uncertainty));
            }
        }
    }

    /// The measured rate of the other clock against ours, in ppm (positive: theirs runs
    /// faster), once two estimates far enough apart gave one.
    pub fn rate_ppm(&self) -> Option<f64> {
        self.rate.map(|(r, _)| r * 1e6)
    }

    /// The other clock's offset when ours reads `local`: the last estimate carried forward
    /// at the measured rate, its bound widened by the rate's uncertainty (or, before a rate
    /// is known, by [`MAX_DRIFT_PPM`]) and [`WANDER_PPM`] times the time since it was made.
    pub fn estimate_at(&self, local: Nanos) -> Option<Estimate> {
        let (then, e) = self.current?;
        let elapsed = local.since(then) as f64;
        let (rate, uncertainty) = self.rate.unwrap_or((0.0, MAX_DRIFT_PPM * 1e-6));
        let widening = (uncertainty + WANDER_PPM * 1e-6) * elapsed.abs();
        Some(Estimate {
            offset_ns: e.offset_ns + (rate * elapsed) as i64,
            bound_ns: e.bound_ns + widening.ceil() as i64,
            rtt_ns: e.rtt_ns,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SkewedClock;

    const S: i64 = 1_000_000_000;

    /// Estimates of a true clock from one `drift_ppm` fast, every `interval` seconds,
    /// each off by `noise` (within its bound); returns the worst true error of the
    /// disciplined offset over the last interval, and whether it ever left its bound.
    fn run(drift_ppm: f64, interval: i64, noise: &[i64]) -> (i64, bool) {
        let epoch = Nanos(1_700_000_000 * S);
        let ours = SkewedClock::new(300_000_000, drift_ppm, epoch);
        let mut d = Discipline::new();
        let bound = 30_000;
        let mut worst = 0;
        let mut outside = false;
        for (k, n) in noise.iter().enumerate() {
            let real = epoch.plus(k as i64 * interval * S);
            let local = ours.read(real);
            // The true offset of the real clock from ours, measured with an error `n`.
            let truth = real.since(local);
            d.update(
                local,
                Estimate {
                    offset_ns: truth + n,
                    bound_ns: bound,
                    rtt_ns: 2 * bound,
                },
            );
            // Every second until the next estimate: how far off is the carried offset?
            for s in 1..=interval {
                let real = real.plus(s * S);
                let local = ours.read(real);
                let e = d.estimate_at(local).expect("estimated");
                let error = (e.offset_ns - real.since(local)).abs();
                outside |= error > e.bound_ns;
                if k + 1 == noise.len() {
                    worst = worst.max(error);
                }
            }
        }
        (worst, outside)
    }

    #[test]
    fn a_drifting_clock_stays_within_tens_of_microseconds_between_syncs() {
        let noise = [3_000, -5_000, 4_000, -2_000, 1_000, -4_000];
        for drift in [-200.0, -37.5, 0.0, 120.0, 200.0] {
            let (worst, outside) = run(drift, 10, &noise);
            assert!(!outside, "{drift} ppm: an error left its bound");
            assert!(
                worst <= 50_000,
                "{drift} ppm: {worst} ns off at the end of a 10 s interval"
            );
        }
    }

    #[test]
    fn without_a_rate_the_offset_is_held_and_the_bound_widens_at_the_largest_drift() {
        let mut d = Discipline::new();
        let t = Nanos(0);
        let e = Estimate {
            offset_ns: 1_000,
            bound_ns: 10_000,
            rtt_ns: 20_000,
        };
        d.update(t, e);
        let later = d.estimate_at(t.plus(10 * S)).expect("estimated");
        assert_eq!(later.offset_ns, 1_000);
        assert!(later.bound_ns >= 10_000 + 5_000_000, "{later:?}");
        assert_eq!(d.rate_ppm(), None);
        // A burst's samples 20 ms apart give no rate: their difference is noise.
        d.update(t.plus(20_000_000), e);
        assert_eq!(d.rate_ppm(), None);
    }

    #[test]
    fn holding_the_offset_still_would_miss_by_milliseconds() {
        // What the messenger did before: the last estimate, not carried forward.
        let epoch = Nanos(0);
        let ours = SkewedClock::new(0, 200.0, epoch);
        let real = epoch.plus(10 * S);
        let held = epoch.since(ours.read(epoch));
        let truth = real.since(ours.read(real));
        assert!((truth - held).abs() >= 1_900_000);
    }
}
