//! Properties of the receivers and the sequencer over arbitrary arrival sequences: whatever
//! the network does, nothing is delivered twice, out of order, or that was not sent; memory
//! stays within its bounds; and everything arrives when losses are recoverable.

#![allow(clippy::unwrap_used)] // a test may stop at the first surprise

use std::time::{Duration, Instant};

use ordering::{Config, FifoReceiver, Output, Sequencer, Start};
use proptest::collection::vec;
use proptest::prelude::*;

const G: &str = "g";
const S: &str = "s";

/// The payload the sender attached to `counter`; anything else delivered was invented.
fn payload_of(counter: u64) -> u64 {
    counter.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xabc
}

/// Drains a receiver: checks each delivery against the sender and the order so far, and
/// returns the retransmission requests.
fn drain(
    rx: &mut FifoReceiver<u64>,
    delivered: &mut Vec<u64>,
) -> Result<Vec<std::ops::RangeInclusive<u64>>, TestCaseError> {
    let mut requested = Vec::new();
    while let Some(out) = rx.poll_output() {
        match out {
            Output::Deliver(d) => {
                prop_assert_eq!(d.payload, payload_of(d.counter), "nothing invented");
                if let Some(&last) = delivered.last() {
                    prop_assert!(d.counter > last, "{} delivered after {}", d.counter, last);
                }
                delivered.push(d.counter);
            }
            Output::Nack { ranges, .. } => requested.extend(ranges),
            other => prop_assert!(false, "a receiver emitted {:?}", other),
        }
    }
    Ok(requested)
}

fn config(window: u64) -> Config {
    Config {
        window,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Counters 1..=n, some lost, some duplicated, in any order; the sender answers every
    /// request. Every message is delivered exactly once, in order, and the holdback never
    /// exceeds the window.
    #[test]
    fn fifo_holds_under_loss_duplication_and_reordering(
        n in 1u64..200,
        arrivals in vec((any::<u64>(), 1u8..=3), 0..400),
        window in prop_oneof![Just(4u64), Just(32), Just(4096)],
    ) {
        let t0 = Instant::now();
        let mut now = t0;
        let mut rx = FifoReceiver::new(config(window));
        rx.add_sender(t0, G, S, Start::At(1));
        let mut delivered = Vec::new();
        for (pick, copies) in arrivals {
            let counter = pick % n + 1;
            for _ in 0..copies {
                rx.handle_message(now, G, S, counter, payload_of(counter)).unwrap();
            }
            now += Duration::from_micros(50);
            drain(&mut rx, &mut delivered)?;
            prop_assert!(rx.held() as u64 <= window);
        }
        // The sender falls idle and announces its highest counter; from then on, answer
        // every request until the receiver has nothing left to wait for.
        rx.handle_digest(now, G, S, n).unwrap();
        let mut rounds = 0;
        while let Some(at) = rx.poll_timeout() {
            rounds += 1;
            prop_assert!(rounds < 10_000, "recovery does not converge");
            now = now.max(at);
            rx.handle_timeout(now);
            for range in drain(&mut rx, &mut delivered)? {
                for counter in range {
                    prop_assert!(counter >= 1 && counter <= n, "asked for {} of 1..={}", counter, n);
                    rx.handle_message(now, G, S, counter, payload_of(counter)).unwrap();
                }
            }
            drain(&mut rx, &mut delivered)?;
            prop_assert!(rx.held() as u64 <= window);
        }
        prop_assert_eq!(delivered, (1..=n).collect::<Vec<_>>());
        prop_assert_eq!(rx.counters().gaps_skipped, 0);
        prop_assert_eq!(rx.held(), 0);
    }

    /// Whatever arrives — any counters, digests and "unavailable" answers, with no recovery at
    /// all — deliveries stay in order and at most once, memory stays within the window, and
    /// every message is accounted for: delivered, dropped as a duplicate or beyond the window,
    /// or still held.
    #[test]
    fn nothing_is_delivered_twice_or_out_of_order_whatever_arrives(
        inputs in vec((0u8..10, any::<u64>(), 0u64..40), 0..300),
        window in prop_oneof![Just(4u64), Just(64)],
    ) {
        let t0 = Instant::now();
        let mut now = t0;
        let mut rx = FifoReceiver::new(config(window));
        rx.add_sender(t0, G, S, Start::At(1));
        let mut delivered = Vec::new();
        let mut fed = 0u64;
        for (kind, value, near) in inputs {
            // Mostly counters near the front of the stream, sometimes anywhere at all.
            let counter = if kind == 0 { value } else { near + 1 };
            match kind {
                1 => rx.handle_digest(now, G, S, counter).unwrap(),
                2 => rx.handle_unavailable(now, G, S, &[counter..=counter + value % 5]).unwrap(),
                3 => rx.handle_timeout(now),
                _ => {
                    fed += 1;
                    rx.handle_message(now, G, S, counter, payload_of(counter)).unwrap();
                }
            }
            now += Duration::from_millis(value % 4);
            drain(&mut rx, &mut delivered)?;
            prop_assert!(rx.held() as u64 <= window);
            let c = rx.counters();
            prop_assert_eq!(fed, c.delivered + c.duplicates + c.beyond_window + rx.held() as u64);
        }
    }

    /// An old sender numbers messages across all its groups, so its counters jump; it cannot
    /// retransmit. The stream never delivers backwards or twice, holds a gap only briefly,
    /// and holds nothing once its timers have run.
    #[test]
    fn an_old_senders_stream_never_goes_backwards_and_never_stalls(
        steps in vec((1u64..20, 0u8..4, 0u64..8), 1..200),
    ) {
        let t0 = Instant::now();
        let mut now = t0;
        let mut rx = FifoReceiver::new(config(64));
        rx.add_sender(t0, G, S, Start::Legacy);
        let mut delivered = Vec::new();
        let mut counter = 100u64;
        let mut late = Vec::new();
        let mut fed = 0u64;
        for (jump, action, pause) in steps {
            counter += jump;
            match action {
                // Reordered: arrives after the next one.
                0 => late.push(counter),
                _ => {
                    fed += 1;
                    rx.handle_message(now, G, S, counter, payload_of(counter)).unwrap();
                    for c in late.drain(..) {
                        fed += 1;
                        rx.handle_message(now, G, S, c, payload_of(c)).unwrap();
                    }
                }
            }
            now += Duration::from_millis(pause);
            rx.handle_timeout(now);
            prop_assert!(drain(&mut rx, &mut delivered)?.is_empty(), "never asks an old sender");
        }
        for c in late.drain(..) {
            fed += 1;
            rx.handle_message(now, G, S, c, payload_of(c)).unwrap();
        }
        now += Duration::from_secs(1);
        rx.handle_timeout(now);
        drain(&mut rx, &mut delivered)?;
        prop_assert_eq!(rx.held(), 0, "a gap of an old sender is never waited on for long");
        let c = rx.counters();
        prop_assert_eq!(fed, c.delivered + c.duplicates);
    }

    /// The sequencer's output is one gap-free sequence holding every input message once, with
    /// each author's messages in the author's order, whatever the interleaving of arrivals.
    #[test]
    fn sequencer_output_is_a_fifo_preserving_permutation_of_its_input(
        authors in 1usize..5,
        per_author in 1u64..30,
        order in vec(any::<u64>(), 0..200),
    ) {
        let t0 = Instant::now();
        let mut seq = Sequencer::new(Config::default());
        let names: Vec<String> = (0..authors).map(|a| format!("a{a}")).collect();
        for name in &names {
            seq.add_author(t0, G, name, Start::At(1));
        }
        // Each author's messages 1..=per_author, reversed in pairs where `order` says so.
        let mut arrivals = Vec::new();
        for (a, _) in names.iter().enumerate() {
            let mut counters: Vec<u64> = (1..=per_author).collect();
            for (i, bits) in order.iter().enumerate() {
                let j = i % counters.len();
                if bits % 3 == 0 && j + 1 < counters.len() {
                    counters.swap(j, j + 1);
                }
            }
            arrivals.extend(counters.into_iter().map(|c| (a, c)));
        }
        // Interleave authors by a stable shuffle keyed on `order`.
        arrivals.sort_by_key(|&(a, c)| (order.get(c as usize % order.len().max(1)).copied().unwrap_or(0) ^ a as u64, a, c));
        // Keep each author's relative order as arranged above.
        for (a, c) in arrivals {
            seq.handle_message(t0, G, &names[a], c, (a as u64) << 32 | c).unwrap();
        }
        let mut out = Vec::new();
        while let Some(o) = seq.poll_output() {
            if let Output::Multicast { counter, payload, .. } = o {
                out.push((counter, payload));
            }
        }
        prop_assert_eq!(out.len() as u64, authors as u64 * per_author);
        for (i, (counter, s)) in out.iter().enumerate() {
            prop_assert_eq!(*counter, i as u64 + 1, "gap-free sequence");
            prop_assert_eq!(s.payload & 0xffff_ffff, s.origin_counter);
        }
        for name in &names {
            let mine: Vec<u64> = out.iter().filter(|(_, s)| *s.origin == **name).map(|(_, s)| s.origin_counter).collect();
            prop_assert_eq!(mine, (1..=per_author).collect::<Vec<_>>());
        }
    }
}
