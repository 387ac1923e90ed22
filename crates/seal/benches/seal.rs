//! What sealing and opening cost per datagram: a single 211-byte datagram (one message of
//! Experiment 2) and a 16 KiB bundle (the largest on loopback).

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use seal::{GroupKey, Opener, Sealer};

fn seal_and_open(c: &mut Criterion) {
    let key = GroupKey::generate();
    let to: SocketAddr = "127.0.0.1:6002".parse().expect("addr");
    let from: SocketAddr = "127.0.0.1:6001".parse().expect("addr");
    let mut group = c.benchmark_group("seal");
    for len in [211usize, 16 * 1024 - seal::OVERHEAD] {
        let plain = vec![b'x'; len];
        group.throughput(Throughput::Bytes(len as u64));
        let sealer = Sealer::new(&key);
        let mut out = Vec::new();
        group.bench_function(format!("seal {len} bytes"), |b| {
            b.iter(|| sealer.seal_into(black_box(&plain), to, &mut out))
        });
        // As on the wire: the sender is known (its window and cipher are there), and each
        // datagram opened is a new number.
        let mut opener = Opener::new(to);
        opener.add("books", &key).expect("one key");
        opener
            .open(from, &sealer.seal(&plain, to), &mut out)
            .expect("opens");
        group.bench_function(format!("open {len} bytes"), |b| {
            b.iter_batched_ref(
                || {
                    (
                        sealer.seal(&plain, to),
                        Vec::with_capacity(len + seal::OVERHEAD),
                    )
                },
                |(sealed, out)| {
                    assert!(opener.open(from, sealed, out).is_ok());
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, seal_and_open);
criterion_main!(benches);
