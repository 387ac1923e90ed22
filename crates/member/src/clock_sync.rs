//! When a member asks the tracker for the time, and what it makes of the answers: a burst of
//! NTP requests after registering and every [`PERIOD`] after, the best answer of each burst
//! (the smallest round trip) kept and carried forward between bursts by a
//! [`clock::Discipline`]. No clock is read here: every reading of the local clock is an
//! argument.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use clock::{Estimate, Nanos};

/// Requests in one burst.
pub const BURST: u32 = 5;
/// Between the requests of a burst.
pub const SPACING: Duration = Duration::from_millis(20);
/// Between bursts.
pub const PERIOD: Duration = Duration::from_secs(10);

/// The clock-synchronization schedule and state of one member.
#[derive(Debug, Default)]
pub struct ClockSync {
    /// When the next request is due (`None` until [`start`](Self::start)).
    next: Option<Instant>,
    /// Requests left in the current burst.
    left: u32,
    /// Our clock's readings when the requests without an answer yet were sent.
    outstanding: VecDeque<Nanos>,
    /// The best estimate of the current burst.
    burst_best: Option<Estimate>,
    /// The best estimate of the latest burst that gave one.
    last: Option<Estimate>,
    discipline: clock::Discipline,
    /// When the first burst's last answer is due.
    first_burst_done: Option<Instant>,
}

impl ClockSync {
    /// Starts the schedule (once registered); later calls change nothing.
    pub fn start(&mut self, now: Instant) {
        self.next.get_or_insert(now);
    }

    /// When the next request is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next
    }

    /// The NTP request to send now, if one is due; `local` is our clock's reading.
    pub fn query_if_due(
        &mut self,
        now: Instant,
        local: Nanos,
    ) -> Option<[u8; clock::ntp::PACKET_LEN]> {
        if self.next.is_none_or(|at| at > now) {
            return None;
        }
        if self.left == 0 {
            self.left = BURST;
            self.burst_best = None;
        }
        self.outstanding.push_back(local);
        if self.outstanding.len() > 2 * BURST as usize {
            self.outstanding.pop_front();
        }
        self.left -= 1;
        if self.left == 0 {
            self.first_burst_done.get_or_insert(now + SPACING);
        }
        self.next = Some(now + if self.left == 0 { PERIOD } else { SPACING });
        Some(clock::ntp::request(local))
    }

    /// An NTP answer arrived when our clock read `local`. Returns whether it was ours and
    /// usable.
    pub fn handle_answer(&mut self, bytes: &[u8], local: Nanos) -> bool {
        let Ok(packet) = clock::ntp::Packet::decode(bytes) else {
            return false;
        };
        let Some(i) = self
            .outstanding
            .iter()
            .position(|t| clock::ntp::NtpTime::from_nanos(*t) == packet.origin)
        else {
            return false;
        };
        let Some(sent) = self.outstanding.remove(i) else {
            return false;
        };
        match clock::ntp::estimate(bytes, sent, local) {
            Ok(e) => {
                if self.burst_best.is_none_or(|b| e.rtt_ns < b.rtt_ns) {
                    self.burst_best = Some(e);
                    self.last = Some(e);
                    self.discipline.update(local, e);
                    log::debug!(
                        "clock: the tracker is {} ahead (± {})",
                        clock::human(e.offset_ns),
                        clock::human(e.bound_ns)
                    );
                }
                true
            }
            Err(e) => {
                log::debug!("clock: unusable NTP answer: {e}");
                false
            }
        }
    }

    /// The best estimate of the latest burst, as measured (not carried forward).
    pub fn estimate(&self) -> Option<Estimate> {
        self.last
    }

    /// The tracker's clock when ours reads `local`: the last estimate carried forward at
    /// the measured rate, or `local` itself before any.
    pub fn synchronized(&self, local: Nanos) -> Nanos {
        self.discipline
            .estimate_at(local)
            .map_or(local, |e| e.apply(local))
    }

    /// Whether the first burst is over (its last answer was due) and gave an estimate:
    /// from then on, timestamps carry the best estimate of that burst.
    pub fn settled(&self, now: Instant) -> bool {
        self.last.is_some() && self.first_burst_done.is_some_and(|at| now >= at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tracker whose clock is `offset` ahead of ours, answering after `delay` each way.
    fn answer(request: &[u8], local_sent: Nanos, offset: i64, delay: i64) -> (Vec<u8>, Nanos) {
        let arrived = local_sent.plus(delay);
        let answer =
            clock::ntp::answer(request, arrived.plus(offset), arrived.plus(offset), 1).unwrap();
        (answer.to_vec(), arrived.plus(delay))
    }

    #[test]
    fn a_burst_of_five_every_period_and_the_offset_is_found() {
        let t0 = Instant::now();
        let mut sync = ClockSync::default();
        let base = Nanos(1_700_000_000_000_000_000);
        assert!(
            sync.query_if_due(t0, base).is_none(),
            "nothing before start"
        );
        sync.start(t0);
        let mut sent = Vec::new();
        let mut now = t0;
        while now < t0 + PERIOD + Duration::from_millis(500) {
            let local = base.plus(now.duration_since(t0).as_nanos() as i64);
            if let Some(request) = sync.query_if_due(now, local) {
                sent.push(now.duration_since(t0));
                let (bytes, back) = answer(&request, local, 2_000_000, 100_000);
                assert!(sync.handle_answer(&bytes, back));
            }
            now += Duration::from_millis(5);
        }
        assert_eq!(sent.len(), 2 * BURST as usize, "{sent:?}");
        assert_eq!(sent[1] - sent[0], SPACING);
        assert_eq!(sent[BURST as usize] - sent[BURST as usize - 1], PERIOD);
        assert_eq!(sent[BURST as usize + 1] - sent[BURST as usize], SPACING);
        let e = sync.estimate().unwrap();
        assert!((e.offset_ns - 2_000_000).abs() <= 1_000, "{e:?}");
        assert!(sync.settled(now));
        assert!((sync.synchronized(base).since(base) - e.offset_ns).abs() <= 1_000);
    }

    #[test]
    fn answers_to_requests_we_did_not_send_are_ignored() {
        let t0 = Instant::now();
        let mut sync = ClockSync::default();
        sync.start(t0);
        let base = Nanos(1_700_000_000_000_000_000);
        let request = sync.query_if_due(t0, base).unwrap();
        let stranger = clock::ntp::request(base.plus(-7));
        let (bytes, back) = answer(&stranger, base, 5_000_000, 10);
        assert!(!sync.handle_answer(&bytes, back));
        assert!(!sync.handle_answer(b"not ntp", back));
        assert_eq!(sync.estimate(), None);
        let (bytes, back) = answer(&request, base, 5_000_000, 10);
        assert!(sync.handle_answer(&bytes, back));
        assert!(!sync.handle_answer(&bytes, back), "an answer counts once");
    }
}
