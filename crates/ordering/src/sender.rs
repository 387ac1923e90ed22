//! The FIFO sender: per-group counters, a bounded retransmission buffer, and the idle
//! announcement of the highest counter.

use std::collections::VecDeque;

use crate::FastMap as HashMap;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Instant;

use crate::timers::{TimerQueue, claim};
use crate::{Config, Counters, Error, Output};

#[derive(Debug)]
struct SendStream<T> {
    group: Arc<str>,
    /// Counter the next message gets.
    next: u64,
    /// The latest messages, for retransmission: counters `next - buffer.len() .. next`.
    buffer: VecDeque<T>,
    last_send: Option<Instant>,
    /// Digests still to send for the current highest counter.
    digests_left: u32,
    scheduled: Option<Instant>,
}

impl<T> SendStream<T> {
    /// When the next digest is due: `digest_interval` after the last send, then at doubling
    /// intervals (capped at `digest_max_interval`), while the sender stays idle.
    fn digest_due(&self, config: &Config) -> Option<Instant> {
        let last = self.last_send?;
        if self.digests_left == 0 {
            return None;
        }
        let sent = config.digest_repeats.saturating_sub(self.digests_left);
        let mut due = last;
        let mut step = config.digest_interval;
        for _ in 0..=sent {
            due += step.min(config.digest_max_interval);
            step = step.saturating_mul(2);
        }
        Some(due)
    }
}

/// Numbers and multicasts this member's messages in each group, and answers retransmission
/// requests from a bounded buffer.
///
/// Counters start at 1 in each group ([`open`](Self::open)). Emits [`Output::Multicast`],
/// [`Output::Retransmit`], [`Output::Unavailable`] and [`Output::Digest`]; drive it like every
/// core of the crate (`handle_*`, then drain `poll_output`, wake at `poll_timeout`).
#[derive(Debug)]
pub struct FifoSender<T> {
    config: Config,
    groups: HashMap<Arc<str>, SendStream<T>>,
    /// Groups closed but not forgotten: their buffers still answer retransmission
    /// requests (the tail of our stream after our Bye), nothing more.
    closed: HashMap<Arc<str>, SendStream<T>>,
    timers: TimerQueue<Arc<str>>,
    outputs: VecDeque<Output<T>>,
    counters: Counters,
}

impl<T: Clone> FifoSender<T> {
    /// A sender with no open group.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            groups: HashMap::default(),
            closed: HashMap::default(),
            timers: TimerQueue::new(),
            outputs: VecDeque::new(),
            counters: Counters::default(),
        }
    }

    /// Opens `group` with counters from 1, unless it is open already; returns the counter
    /// the next message will get (the `Start` to announce in Hello).
    pub fn open(&mut self, group: &str) -> u64 {
        self.open_at(group, 1)
    }

    /// Opens `group` with counters from `first`, unless it is open already; returns the
    /// counter the next message will get.
    pub fn open_at(&mut self, group: &str, first: u64) -> u64 {
        if let Some(stream) = self.groups.get(group) {
            return stream.next;
        }
        self.closed.remove(group);
        let key: Arc<str> = Arc::from(group);
        self.groups.insert(
            key.clone(),
            SendStream {
                group: key,
                next: first,
                buffer: VecDeque::with_capacity(self.config.retransmit_buffer.min(1024)),
                last_send: None,
                digests_left: 0,
                scheduled: None,
            },
        );
        first
    }

    /// Closes `group` (we leave it) and returns the last counter sent in it, for the Bye's
    /// final counter; `None` if it was not open. Its buffer still answers retransmission
    /// requests (the members recover the tail of our stream after our Bye) until
    /// [`forget`](Self::forget).
    pub fn close(&mut self, group: &str) -> Option<u64> {
        let (key, stream) = self.groups.remove_entry(group)?;
        let last = stream.next - 1;
        self.closed.insert(key, stream);
        Some(last)
    }

    /// Forgets a closed group's buffer.
    pub fn forget(&mut self, group: &str) {
        self.closed.remove(group);
    }

    /// The groups closed and not forgotten.
    pub fn closed_groups(&self) -> impl Iterator<Item = &str> {
        self.closed.keys().map(|g| &**g)
    }

    /// The counter the next message in `group` will get, if it is open.
    pub fn next_counter(&self, group: &str) -> Option<u64> {
        self.groups.get(group).map(|s| s.next)
    }

    /// Whether `group` is open.
    pub fn is_open(&self, group: &str) -> bool {
        self.groups.contains_key(group)
    }

    /// Numbers `payload` with the group's next counter, keeps a copy for retransmission, and
    /// queues its multicast. Returns the counter.
    pub fn send(&mut self, now: Instant, group: &str, payload: T) -> Result<u64, Error> {
        let stream = self
            .groups
            .get_mut(group)
            .ok_or_else(|| Error::UnknownGroup {
                group: group.to_owned(),
            })?;
        let counter = stream.next;
        stream.next += 1;
        if self.config.retransmit_buffer > 0 {
            if stream.buffer.len() == self.config.retransmit_buffer {
                stream.buffer.pop_front();
            }
            stream.buffer.push_back(payload.clone());
        }
        stream.last_send = Some(now);
        stream.digests_left = self.config.digest_repeats;
        self.counters.sent += 1;
        self.outputs.push_back(Output::Multicast {
            group: stream.group.clone(),
            counter,
            payload,
        });
        if let Some(at) = stream.digest_due(&self.config) {
            // Usually a no-op: an earlier digest timer is pending and re-arms itself lazily.
            self.timers
                .schedule(&mut stream.scheduled, at, || stream.group.clone());
        }
        Ok(counter)
    }

    /// `requester` asks for `ranges` of our stream in `group`: queues a retransmission of
    /// each buffered counter (at most `max_retransmit_per_nack`) and one "unavailable" for
    /// the counters no longer buffered. Counters never sent are ignored.
    pub fn handle_nack(
        &mut self,
        group: &str,
        requester: &str,
        ranges: &[RangeInclusive<u64>],
    ) -> Result<(), Error> {
        self.retransmit(
            group,
            requester,
            ranges,
            self.config.max_retransmit_per_nack,
        )
    }

    /// Sends `to` again every message of `group` from counter `first` on (a new sequencer
    /// taking over our stream from there), and "unavailable" for the part no longer
    /// buffered. Unlike a request, not capped: the whole rest of the stream is owed.
    pub fn resend_from(
        &mut self,
        now: Instant,
        group: &str,
        to: &str,
        first: u64,
    ) -> Result<(), Error> {
        self.retransmit(group, to, &[first..=u64::MAX], u64::MAX)?;
        if let Some(stream) = self.groups.get_mut(group) {
            // Announce the highest counter again, in case the last resent message is lost.
            stream.last_send = Some(now);
            stream.digests_left = self.config.digest_repeats;
            if let Some(at) = stream.digest_due(&self.config) {
                self.timers
                    .schedule(&mut stream.scheduled, at, || stream.group.clone());
            }
        }
        Ok(())
    }

    fn retransmit(
        &mut self,
        group: &str,
        requester: &str,
        ranges: &[RangeInclusive<u64>],
        mut budget: u64,
    ) -> Result<(), Error> {
        let stream = self
            .groups
            .get(group)
            .or_else(|| self.closed.get(group))
            .ok_or_else(|| Error::UnknownGroup {
                group: group.to_owned(),
            })?;
        let oldest = stream.next - stream.buffer.len() as u64;
        let to: Arc<str> = Arc::from(requester);
        let mut unavailable = Vec::new();
        for range in ranges {
            let first = *range.start();
            let last = (*range.end()).min(stream.next.saturating_sub(1));
            if first > last {
                continue;
            }
            if first < oldest {
                let gone_last = last.min(oldest - 1);
                self.counters.unavailable_sent += gone_last - first + 1;
                unavailable.push(first..=gone_last);
            }
            for counter in first.max(oldest)..=last {
                if budget == 0 {
                    break;
                }
                budget -= 1;
                let payload = stream.buffer[(counter - oldest) as usize].clone();
                self.counters.retransmissions_sent += 1;
                self.outputs.push_back(Output::Retransmit {
                    to: to.clone(),
                    group: stream.group.clone(),
                    counter,
                    payload,
                });
            }
        }
        if !unavailable.is_empty() {
            self.outputs.push_back(Output::Unavailable {
                to,
                group: stream.group.clone(),
                ranges: unavailable,
            });
        }
        Ok(())
    }

    /// Runs the timers due at `now`: the digests of idle groups.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((at, group)) = self.timers.pop_due(now) {
            let Some(stream) = self.groups.get_mut(&group) else {
                continue;
            };
            if !claim(&mut stream.scheduled, at) {
                continue;
            }
            if let Some(due) = stream.digest_due(&self.config)
                && due <= now
            {
                stream.digests_left -= 1;
                self.counters.digests_sent += 1;
                self.outputs.push_back(Output::Digest {
                    group: stream.group.clone(),
                    highest: stream.next - 1,
                });
            }
            if let Some(at) = stream.digest_due(&self.config) {
                self.timers
                    .schedule(&mut stream.scheduled, at, || stream.group.clone());
            }
        }
    }

    /// The next action for the caller, if any.
    pub fn poll_output(&mut self) -> Option<Output<T>> {
        self.outputs.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    /// Totals since the sender was made.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Messages kept for retransmission across all groups (each group keeps at most
    /// `retransmit_buffer`).
    pub fn buffered(&self) -> usize {
        self.groups.values().map(|s| s.buffer.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn drain(tx: &mut FifoSender<u64>) -> Vec<Output<u64>> {
        std::iter::from_fn(|| tx.poll_output()).collect()
    }

    #[test]
    fn numbers_messages_per_group_from_one() {
        let t0 = Instant::now();
        let mut tx = FifoSender::new(Config::default());
        assert_eq!(tx.open("a"), 1);
        assert_eq!(tx.open("b"), 1);
        assert_eq!(tx.send(t0, "a", 10), Ok(1));
        assert_eq!(tx.send(t0, "a", 20), Ok(2));
        assert_eq!(tx.send(t0, "b", 30), Ok(1));
        assert_eq!(tx.open("a"), 3, "opening again keeps the counter");
        assert_eq!(
            tx.send(t0, "c", 1),
            Err(Error::UnknownGroup { group: "c".into() })
        );
        let counters: Vec<_> = drain(&mut tx)
            .into_iter()
            .map(|o| match o {
                Output::Multicast { group, counter, .. } => (group.to_string(), counter),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            counters,
            [("a".into(), 1), ("a".into(), 2), ("b".into(), 1)]
        );
        assert_eq!(tx.close("a"), Some(2), "the final counter for the Bye");
    }

    #[test]
    fn resends_the_whole_rest_of_a_stream_beyond_the_request_cap_then_announces_it() {
        let t0 = Instant::now();
        let config = Config {
            retransmit_buffer: 4,
            max_retransmit_per_nack: 1,
            ..Config::default()
        };
        let mut tx = FifoSender::new(config);
        tx.open("g");
        for p in 1..=6 {
            tx.send(t0, "g", p).expect("open");
        }
        drain(&mut tx);
        tx.resend_from(t0, "g", "sequencer", 2).expect("open");
        let out = drain(&mut tx);
        let resent: Vec<_> = out
            .iter()
            .filter_map(|o| match o {
                Output::Retransmit { counter, .. } => Some(*counter),
                _ => None,
            })
            .collect();
        assert_eq!(
            resent,
            [3, 4, 5, 6],
            "everything buffered, despite the cap of 1"
        );
        assert!(out.contains(&Output::Unavailable {
            to: "sequencer".into(),
            group: "g".into(),
            ranges: vec![2..=2]
        }));
        let at = tx.poll_timeout().expect("a digest is due");
        tx.handle_timeout(at);
        assert!(
            drain(&mut tx).contains(&Output::Digest {
                group: "g".into(),
                highest: 6
            }),
            "the new owner learns where the stream ends"
        );
    }

    #[test]
    fn a_closed_group_still_answers_for_its_tail_until_forgotten() {
        let t0 = Instant::now();
        let mut tx = FifoSender::new(Config::default());
        tx.open("g");
        for p in ['a', 'b', 'c'] {
            tx.send(t0, "g", p).expect("open");
        }
        while tx.poll_output().is_some() {}
        assert_eq!(tx.close("g"), Some(3));
        assert!(
            tx.send(t0, "g", 'd').is_err(),
            "closed: nothing more is sent"
        );
        tx.handle_nack("g", "kat", &[3..=3]).expect("still answers");
        assert!(matches!(
            tx.poll_output(),
            Some(Output::Retransmit {
                counter: 3,
                payload: 'c',
                ..
            })
        ));
        tx.forget("g");
        assert!(tx.handle_nack("g", "kat", &[3..=3]).is_err());
        assert_eq!(tx.closed_groups().count(), 0);
    }

    #[test]
    fn retransmits_from_a_bounded_buffer_and_reports_the_rest_unavailable() {
        let t0 = Instant::now();
        let config = Config {
            retransmit_buffer: 3,
            ..Config::default()
        };
        let mut tx = FifoSender::new(config);
        tx.open("g");
        for p in 1..=5 {
            tx.send(t0, "g", p * 100).expect("open");
        }
        assert_eq!(tx.buffered(), 3);
        drain(&mut tx);
        tx.handle_nack("g", "r", &[1..=3, 5..=9]).expect("open");
        let out = drain(&mut tx);
        let resent: Vec<_> = out
            .iter()
            .filter_map(|o| match o {
                Output::Retransmit {
                    to,
                    counter,
                    payload,
                    ..
                } => {
                    assert_eq!(&**to, "r");
                    Some((*counter, *payload))
                }
                _ => None,
            })
            .collect();
        assert_eq!(resent, [(3, 300), (5, 500)], "never-sent 6..=9 are ignored");
        assert!(out.contains(&Output::Unavailable {
            to: "r".into(),
            group: "g".into(),
            ranges: vec![1..=2]
        }));
        assert_eq!(tx.counters().retransmissions_sent, 2);
        assert_eq!(tx.counters().unavailable_sent, 2);
    }

    #[test]
    fn caps_the_retransmissions_one_request_can_cause() {
        let t0 = Instant::now();
        let config = Config {
            max_retransmit_per_nack: 4,
            ..Config::default()
        };
        let mut tx = FifoSender::new(config);
        tx.open("g");
        for p in 0..100 {
            tx.send(t0, "g", p).expect("open");
        }
        drain(&mut tx);
        tx.handle_nack("g", "r", &[1..=100, 1..=100]).expect("open");
        assert_eq!(drain(&mut tx).len(), 4);
    }

    #[test]
    fn announces_the_highest_counter_only_while_idle_and_only_when_it_changed() {
        let t0 = Instant::now();
        let mut tx = FifoSender::new(Config {
            digest_repeats: 5,
            digest_max_interval: ms(60),
            ..Config::default()
        });
        tx.open("g");
        tx.send(t0, "g", 1).expect("open");
        tx.send(t0 + ms(5), "g", 2).expect("open");
        drain(&mut tx);
        let mut digests = Vec::new();
        let mut now = t0;
        while let Some(at) = tx.poll_timeout() {
            assert!(at >= now, "deadlines move forward");
            now = at;
            tx.handle_timeout(now);
            for out in drain(&mut tx) {
                if let Output::Digest { highest, .. } = out {
                    digests.push((now - t0, highest));
                }
            }
        }
        // Idle from 5 ms: digests after 10, 20, 40 ms of idleness, then every 60 ms (the cap).
        assert_eq!(
            digests,
            [
                (ms(15), 2),
                (ms(35), 2),
                (ms(75), 2),
                (ms(135), 2),
                (ms(195), 2)
            ]
        );
        assert_eq!(tx.poll_timeout(), None, "silent until the next send");
    }
}
