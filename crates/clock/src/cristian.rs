//! Cristian's algorithm: ask a time server, and take its answer plus half the round trip.

use crate::time::{Estimate, Nanos};

/// One exchange with the time server, read on our clock (`sent`, `received`) and theirs
/// (`server`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Our clock when the request went out.
    pub sent: Nanos,
    /// The server's time in its answer.
    pub server: Nanos,
    /// Our clock when the answer arrived.
    pub received: Nanos,
    /// How coarse the server's time is (1 µs for the seed's time strings, 0 if exact).
    pub resolution_ns: i64,
}

impl Sample {
    /// The round trip, on our clock.
    pub fn rtt_ns(&self) -> i64 {
        self.received.since(self.sent)
    }

    /// offset = server + RTT/2 − received, within ±RTT/2: the server read its clock
    /// somewhere inside the round trip, and the middle is the best guess.
    pub fn estimate(&self) -> Estimate {
        let rtt = self.rtt_ns().max(0);
        Estimate {
            offset_ns: self.server.since(self.received) + rtt / 2,
            bound_ns: rtt - rtt / 2 + self.resolution_ns,
            rtt_ns: rtt,
        }
    }
}

/// Collects samples and keeps the best: the smallest round trip gives the tightest bound.
#[derive(Debug, Clone, Default)]
pub struct Cristian {
    best: Option<Sample>,
    samples: usize,
}

impl Cristian {
    /// No samples yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one exchange.
    pub fn add(&mut self, sample: Sample) {
        self.samples += 1;
        if self.best.is_none_or(|b| sample.rtt_ns() < b.rtt_ns()) {
            self.best = Some(sample);
        }
    }

    /// How many samples were added.
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// The estimate of the sample with the smallest round trip.
    pub fn best(&self) -> Option<Estimate> {
        self.best.map(|s| s.estimate())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keeps_the_sample_with_the_smallest_round_trip() {
        let mut c = Cristian::new();
        c.add(Sample {
            sent: Nanos(0),
            server: Nanos(1_000_500),
            received: Nanos(1_000),
            resolution_ns: 0,
        });
        c.add(Sample {
            sent: Nanos(5_000),
            server: Nanos(1_005_100),
            received: Nanos(5_200),
            resolution_ns: 0,
        });
        let e = c.best().expect("two samples");
        assert_eq!(e.rtt_ns, 200);
        assert_eq!(e.offset_ns, 1_005_100 - 5_200 + 100);
        assert_eq!(e.bound_ns, 100);
        assert_eq!(c.samples(), 2);
    }

    proptest! {
        /// Wherever inside the round trip the server read its clock, the true offset lies
        /// within the bound.
        #[test]
        fn the_true_offset_is_always_within_the_bound(
            offset in -2_000_000_000i64..2_000_000_000,
            rtt in 0i64..50_000_000,
            at in 0.0f64..=1.0,
            start in 0i64..1_000_000_000_000,
        ) {
            // Real times of the exchange; our clock reads real − offset.
            let server_read = start + (rtt as f64 * at) as i64;
            let s = Sample {
                sent: Nanos(start - offset),
                server: Nanos(server_read),
                received: Nanos(start + rtt - offset),
                resolution_ns: 0,
            };
            let e = s.estimate();
            prop_assert!((e.offset_ns - offset).abs() <= e.bound_ns, "{e:?} vs {offset}");
        }
    }
}
