//! Criterion benchmarks of the ordering core: deliveries per second through the FIFO
//! receiver (in order, and with 10% of messages reordered), the sender, the sequencer, and
//! the whole total-order path (sequencer then a member's receiver).
//!
//! Run: `cargo bench --bench ordering`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use groupcast::ordering::{
    Config, FifoReceiver, FifoSender, Output, Sequencer, Start, TotalOrderReceiver,
};

const BATCH: u64 = 10_000;

/// Counters `base..base + BATCH` with every tenth message swapped with the one after it:
/// 10% of messages arrive ahead of their predecessor.
fn reordered_batch() -> Vec<u64> {
    let mut order: Vec<u64> = (0..BATCH).collect();
    for i in (0..BATCH as usize - 1).step_by(10) {
        order.swap(i, i + 1);
    }
    order
}

fn fifo_receiver(c: &mut Criterion) {
    let mut group = c.benchmark_group("fifo_receiver");
    group.throughput(Throughput::Elements(BATCH));
    let t0 = Instant::now();

    group.bench_function("in_order", |b| {
        let mut rx = FifoReceiver::new(Config::default());
        rx.add_sender(t0, "books", "alice", Start::At(1));
        let mut next = 1u64;
        b.iter(|| {
            for _ in 0..BATCH {
                rx.handle_message(t0, "books", "alice", next, next)
                    .expect("known stream");
                next += 1;
                while let Some(out) = rx.poll_output() {
                    black_box(out);
                }
            }
        });
    });

    group.bench_function("reordered_10pct", |b| {
        let order = reordered_batch();
        let mut rx = FifoReceiver::new(Config::default());
        rx.add_sender(t0, "books", "alice", Start::At(1));
        let mut base = 1u64;
        b.iter(|| {
            for &offset in &order {
                let counter = base + offset;
                rx.handle_message(t0, "books", "alice", counter, counter)
                    .expect("known stream");
                while let Some(out) = rx.poll_output() {
                    black_box(out);
                }
            }
            base += BATCH;
        });
    });
    group.finish();
}

fn sender(c: &mut Criterion) {
    let mut group = c.benchmark_group("fifo_sender");
    group.throughput(Throughput::Elements(BATCH));
    group.bench_function("send", |b| {
        let mut tx = FifoSender::new(Config::default());
        tx.open("books");
        let mut now = Instant::now();
        b.iter(|| {
            for i in 0..BATCH {
                now += Duration::from_nanos(100);
                tx.send(now, "books", i).expect("open");
                while let Some(out) = tx.poll_output() {
                    black_box(out);
                }
            }
            tx.handle_timeout(now);
        });
    });
    group.finish();
}

fn sequencer(c: &mut Criterion) {
    const AUTHORS: [&str; 4] = ["a", "b", "c", "d"];
    let mut group = c.benchmark_group("sequencer");
    group.throughput(Throughput::Elements(BATCH));
    let t0 = Instant::now();

    group.bench_function("order_4_authors", |b| {
        let mut seq = Sequencer::new(Config::default());
        for a in AUTHORS {
            seq.add_author(t0, "books", a, Start::At(1));
        }
        let mut counters = [1u64; 4];
        b.iter(|| {
            for i in 0..BATCH as usize {
                let a = i % AUTHORS.len();
                seq.handle_message(t0, "books", AUTHORS[a], counters[a], i as u64)
                    .expect("known author");
                counters[a] += 1;
                while let Some(out) = seq.poll_output() {
                    black_box(out);
                }
            }
        });
    });

    group.bench_function("order_and_deliver_total", |b| {
        let mut seq = Sequencer::new(Config::default());
        let mut rx = TotalOrderReceiver::new(Config::default(), "sequencer");
        for a in AUTHORS {
            seq.add_author(t0, "books", a, Start::At(1));
        }
        rx.join(t0, "books", Start::At(1));
        let mut counters = [1u64; 4];
        b.iter(|| {
            for i in 0..BATCH as usize {
                let a = i % AUTHORS.len();
                seq.handle_message(t0, "books", AUTHORS[a], counters[a], i as u64)
                    .expect("known author");
                counters[a] += 1;
                while let Some(out) = seq.poll_output() {
                    if let Output::Multicast {
                        counter, payload, ..
                    } = out
                    {
                        rx.handle_sequenced(t0, "books", counter, payload)
                            .expect("joined");
                    }
                }
                while let Some(out) = rx.poll_output() {
                    black_box(out);
                }
            }
        });
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = fifo_receiver, sender, sequencer
}
criterion_main!(benches);
