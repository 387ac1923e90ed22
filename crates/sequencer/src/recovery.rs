//! Uniform agreement across a sequencer crash: before a new sequencer orders anything of a
//! group it took over, it fetches what the earlier sequencer had sent to some members but
//! not to all, and orders it again in the same order.
//!
//! Why it works: before the crash every member's sequence was a prefix of the earlier
//! sequencer's (each from where it joined). Each member tells the new sequencer, in its
//! Hello, the last number of that sequence it delivered (`Through`). The member that
//! delivered furthest holds the others' missing part in its tail (the last messages it
//! delivered, kept with their numbers); the new sequencer asks it for the numbers between
//! the lowest `Through` and the highest (`Recover`), receives them (`Recovered`, asking again
//! for what was lost), and multicasts them first. Members skip what they delivered already
//! (by each author's counter), so each ends with the old sequence up to the furthest point,
//! then the new one.
//!
//! Bounds: a member keeps the last 4,096 messages it delivered (at most 4 MiB of payload); a
//! member further behind than that, or one that did not greet the new sequencer within its
//! takeover window, may lack what is not re-sent. If the furthest member does not answer (it
//! died too), the next furthest is asked: what only the dead delivered is not needed for the
//! survivors to agree.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::{CounterRange, Datagram, DatagramType};

use crate::node::Submitted;

/// How often the member asked is asked again for what has not come.
pub(crate) const RECOVERY_RETRY: Duration = Duration::from_millis(50);

/// How long a member may stay silent before the next furthest is asked instead.
pub(crate) const RECOVERY_PATIENCE: Duration = Duration::from_millis(500);

/// Most messages recovered: members keep their last 4,096 deliveries, so no member holds
/// more (and a Hello claiming a far higher number cannot make us want more).
pub(crate) const MAX_RECOVERED: u64 = 4096;

/// The first number wanted: just after `lowest`, but no more than a tail before `last`.
fn first_wanted(lowest: u64, last: u64) -> u64 {
    lowest
        .saturating_add(1)
        .max(last.saturating_sub(MAX_RECOVERED - 1))
}

/// One message of the earlier sequence, as a member delivered it.
#[derive(Debug, Clone)]
pub(crate) struct Recovered {
    pub(crate) origin: Arc<str>,
    pub(crate) origin_counter: u64,
    pub(crate) submitted: Submitted,
}

/// A member that may hold what is wanted: who, where, and the last number it delivered.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    pub(crate) name: String,
    pub(crate) addr: SocketAddr,
    pub(crate) through: u64,
}

/// Fetching the part of the earlier sequence that some members lack.
#[derive(Debug)]
pub(crate) struct Recovery {
    epoch: u64,
    /// The last number the member that delivered least reached.
    lowest: u64,
    /// The numbers wanted: from just after the member that delivered least to the last
    /// delivered by the source asked now.
    first: u64,
    last: u64,
    got: BTreeMap<u64, Recovered>,
    /// Furthest first; the first is the one asked.
    sources: Vec<Source>,
    next_ask: Instant,
    /// When the source asked gives way to the next (reset whenever it answers).
    patience_ends: Instant,
}

impl Recovery {
    /// A recovery of the numbers after `lowest` of the sequence of `epoch`, from `sources`
    /// (any order); `None` if no source delivered beyond `lowest` (nothing to recover).
    pub(crate) fn new(
        now: Instant,
        epoch: u64,
        lowest: u64,
        mut sources: Vec<Source>,
    ) -> Option<Self> {
        sources.retain(|s| s.through > lowest);
        sources.sort_by(|a, b| b.through.cmp(&a.through).then_with(|| a.name.cmp(&b.name)));
        let last = sources.first()?.through;
        Some(Self {
            epoch,
            lowest,
            first: first_wanted(lowest, last),
            last,
            got: BTreeMap::new(),
            sources,
            next_ask: now,
            patience_ends: now + RECOVERY_PATIENCE,
        })
    }

    /// The numbers wanted, for the log.
    pub(crate) fn wanted(&self) -> RangeInclusive<u64> {
        self.first..=self.last
    }

    /// The member asked now.
    pub(crate) fn source(&self) -> Option<&Source> {
        self.sources.first()
    }

    /// One `Recovered` datagram from `from`: kept if it comes from the member asked and is
    /// one of the numbers wanted.
    pub(crate) fn on_recovered(&mut self, now: Instant, from: SocketAddr, d: &Datagram) {
        let Some(source) = self.sources.first() else {
            return;
        };
        let (Some(origin_counter), Some(epoch)) = (d.origin_counter, d.epoch) else {
            return;
        };
        if source.addr != from
            || source.name != d.username
            || epoch != self.epoch
            || !(self.first..=self.last).contains(&d.counter)
        {
            return;
        }
        self.patience_ends = now + RECOVERY_PATIENCE;
        self.got.insert(
            d.counter,
            Recovered {
                origin: Arc::from(d.origin.as_str()),
                origin_counter,
                submitted: Submitted {
                    text: Arc::from(d.content.as_str()),
                    data: d.data.as_deref().map(Arc::from),
                    sent_at_us: d.sent_at_us,
                },
            },
        );
    }

    /// Whether every number wanted has come (or nobody is left to ask).
    pub(crate) fn is_done(&self) -> bool {
        self.sources.is_empty() || self.got.len() as u64 > self.last.saturating_sub(self.first)
    }

    /// When [`poll_request`](Self::poll_request) has something to do.
    pub(crate) fn next_timeout(&self) -> Instant {
        self.next_ask.min(self.patience_ends)
    }

    /// The request due at `now`, if any: to the source asked (the next one if the last stayed
    /// silent too long), for what has not come, at most [`proto::MAX_RANGES`] ranges.
    pub(crate) fn poll_request(
        &mut self,
        now: Instant,
        group: &str,
        us: SocketAddr,
    ) -> Option<(SocketAddr, Datagram)> {
        if now >= self.patience_ends {
            let gone = self.sources.remove(0);
            log::warn!(
                "{} did not answer for what only it may have delivered (through {}); asking the next",
                gone.name,
                gone.through
            );
            self.patience_ends = now + RECOVERY_PATIENCE;
            self.next_ask = now;
            // What only the silent one had delivered is not needed by the survivors.
            if let Some(next) = self.sources.first() {
                self.last = next.through;
                self.first = first_wanted(self.lowest, self.last);
                let last = self.last;
                self.got.retain(|&n, _| n <= last);
            }
        }
        if self.is_done() || now < self.next_ask {
            return None;
        }
        self.next_ask = now + RECOVERY_RETRY;
        let source = self.sources.first()?;
        let mut missing = Vec::new();
        let mut start = None;
        for n in self.first..=self.last {
            match (self.got.contains_key(&n), start) {
                (false, None) => start = Some(n),
                (true, Some(s)) => {
                    missing.push(CounterRange::new(s, n - 1));
                    start = None;
                }
                _ => {}
            }
            if missing.len() == proto::MAX_RANGES {
                break;
            }
        }
        if let Some(s) = start.filter(|_| missing.len() < proto::MAX_RANGES) {
            missing.push(CounterRange::new(s, self.last));
        }
        let mut d = Datagram::new(
            DatagramType::Recover,
            group,
            member::SEQUENCER,
            "",
            us,
            self.first,
            member::SEQUENCER,
        );
        d.epoch = Some(self.epoch);
        d.ranges = missing;
        Some((source.addr, d))
    }

    /// What came, in its old order: the part up to the first number still missing (a
    /// message after a hole cannot be placed without the hole).
    pub(crate) fn into_messages(self) -> Vec<Recovered> {
        let mut out = Vec::with_capacity(self.got.len());
        for (expect, (n, m)) in (self.first..).zip(self.got) {
            if n != expect {
                break;
            }
            out.push(m);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(name: &str, port: u16, through: u64) -> Source {
        Source {
            name: name.into(),
            addr: ([127, 0, 0, 1], port).into(),
            through,
        }
    }

    fn recovered(from: &Source, n: u64) -> Datagram {
        let mut d = Datagram::new(
            DatagramType::Recovered,
            "g",
            from.name.as_str(),
            format!("m{n}"),
            from.addr,
            n,
            "author",
        );
        d.origin_counter = Some(n);
        d.epoch = Some(1);
        d
    }

    #[test]
    fn asks_the_furthest_member_for_what_is_missing_until_it_has_it_all() {
        let t = Instant::now();
        let us = ([127, 0, 0, 1], 5001).into();
        let (ann, bob) = (source("ann", 6001, 7), source("bob", 6002, 4));
        let mut r = Recovery::new(t, 1, 4, vec![bob.clone(), ann.clone()]).expect("a gap");
        assert_eq!(r.wanted(), 5..=7);
        let (to, ask) = r.poll_request(t, "g", us).expect("asks at once");
        assert_eq!(
            (to, ask.ranges.clone()),
            (ann.addr, vec![CounterRange::new(5, 7)])
        );
        // 6 comes; a stranger's and bob's answers are not taken.
        r.on_recovered(t, ann.addr, &recovered(&ann, 6));
        r.on_recovered(t, bob.addr, &recovered(&bob, 5));
        assert!(r.poll_request(t, "g", us).is_none(), "not before the retry");
        let (_, ask) = r
            .poll_request(t + RECOVERY_RETRY, "g", us)
            .expect("asks again");
        assert_eq!(
            ask.ranges,
            [CounterRange::new(5, 5), CounterRange::new(7, 7)]
        );
        r.on_recovered(t, ann.addr, &recovered(&ann, 5));
        r.on_recovered(t, ann.addr, &recovered(&ann, 7));
        assert!(r.is_done());
        let texts: Vec<_> = r
            .into_messages()
            .into_iter()
            .map(|m| m.submitted.text.to_string())
            .collect();
        assert_eq!(texts, ["m5", "m6", "m7"]);
    }

    #[test]
    fn a_silent_source_gives_way_to_the_next_and_a_huge_claim_wants_no_more_than_a_tail() {
        let t = Instant::now();
        let us = ([127, 0, 0, 1], 5001).into();
        let liar = source("liar", 6009, u64::MAX);
        let bob = source("bob", 6002, 10);
        let mut r = Recovery::new(t, 1, 3, vec![liar, bob.clone()]).expect("a gap");
        assert_eq!(
            *r.wanted().end() - *r.wanted().start() + 1,
            MAX_RECOVERED,
            "never more than a tail"
        );
        let _ = r.poll_request(t, "g", us);
        let (to, ask) = r
            .poll_request(t + RECOVERY_PATIENCE, "g", us)
            .expect("the next is asked");
        assert_eq!(to, bob.addr);
        assert_eq!(ask.ranges, [CounterRange::new(4, 10)]);
        // bob has only 4 and 6: after its patience too, the part before the hole is kept.
        r.on_recovered(t, bob.addr, &recovered(&bob, 4));
        r.on_recovered(t, bob.addr, &recovered(&bob, 6));
        let _ = r.poll_request(t + RECOVERY_PATIENCE * 3, "g", us);
        assert!(r.is_done(), "nobody left to ask");
        assert_eq!(r.into_messages().len(), 1);
    }
}
