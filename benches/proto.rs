//! Criterion benchmarks of the wire encoding: a 100-byte application datagram encoded and
//! decoded, a bundle of 64-byte messages packed and unpacked (throughput in messages), the
//! same in the compact encoding, and a tracker request decoded.
//!
//! Run: `cargo bench --bench proto`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use groupcast::proto::bundle::{BundleWriter, LOOPBACK_BUNDLE_LEN, decode_bundle};
use groupcast::proto::compact::{self, CompactWriter};
use groupcast::proto::{Datagram, DatagramType, Request};

fn application_datagram() -> Datagram {
    Datagram::new(
        DatagramType::Application,
        "distrib",
        "katerina",
        "x".repeat(100),
        "127.0.0.1:40000".parse().expect("address"),
        123_456,
        "katerina",
    )
}

fn datagram(c: &mut Criterion) {
    let mut group = c.benchmark_group("datagram_100B");
    group.throughput(Throughput::Elements(1));
    let message = application_datagram();
    let mut buf = Vec::with_capacity(512);
    message.encode_into(&mut buf);
    let encoded = buf.clone();

    group.bench_function("encode", |b| {
        b.iter(|| {
            buf.clear();
            black_box(&message).encode_into(&mut buf);
            black_box(&buf);
        })
    });
    group.bench_function("decode", |b| {
        b.iter(|| Datagram::decode(black_box(&encoded)).expect("valid"))
    });
    group.bench_function("encode_decode", |b| {
        b.iter(|| {
            buf.clear();
            black_box(&message).encode_into(&mut buf);
            Datagram::decode(black_box(&buf)).expect("valid")
        })
    });
    group.finish();
}

/// A bundle as a peer sends it flat out: up to 16 KiB of already-encoded messages with
/// 64-byte texts (about 75 of them).
fn bundle(c: &mut Criterion) {
    let mut message = application_datagram();
    message.content = "x".repeat(64);
    message.sent_at_us = Some(1_800_000_000_000_000);
    let items: Vec<Vec<u8>> = (0..200u64)
        .map(|counter| {
            message.counter = counter;
            message.encode(4096).expect("fits")
        })
        .collect();
    let mut writer = BundleWriter::new();
    let mut packed = 0;
    for item in &items {
        if !writer.fits(item, LOOPBACK_BUNDLE_LEN) {
            break;
        }
        writer.push(item);
        packed += 1;
    }
    let bundle = writer.finish().to_vec();
    let mut group = c.benchmark_group("bundle_16KiB_64B_messages");
    group.throughput(Throughput::Elements(packed as u64));
    group.bench_function("pack", |b| {
        b.iter(|| {
            for item in &items[..packed] {
                writer.push(black_box(item));
            }
            black_box(writer.finish().len())
        })
    });
    group.bench_function("unpack_and_decode", |b| {
        b.iter(|| decode_bundle(black_box(&bundle)).expect("valid"))
    });
    group.finish();
}

/// The same messages in the compact encoding (one run: one author), 16 KiB of them: packed
/// from one-message datagrams, checked and read borrowed (what a member's receive path
/// does), and decoded into owned datagrams (what code working on `Datagram`s pays).
fn compact(c: &mut Criterion) {
    let mut message = application_datagram();
    message.content = "x".repeat(64);
    message.sent_at_us = Some(1_800_000_000_000_000);
    let items: Vec<Vec<u8>> = (0..400u64)
        .map(|counter| {
            message.counter = counter;
            compact::from_datagram(&message).expect("a message")
        })
        .collect();
    let mut writer = CompactWriter::new();
    let mut packed = 0;
    for item in &items {
        if !writer.fits(item, LOOPBACK_BUNDLE_LEN) {
            break;
        }
        writer.push(item);
        packed += 1;
    }
    let datagram = writer.finish().to_vec();
    let mut group = c.benchmark_group("compact_16KiB_64B_messages");
    group.throughput(Throughput::Elements(packed as u64));
    group.bench_function("pack", |b| {
        b.iter(|| {
            for item in &items[..packed] {
                writer.push(black_box(item));
            }
            black_box(writer.finish().len())
        })
    });
    group.bench_function("parse_and_read_borrowed", |b| {
        b.iter(|| {
            let parsed = compact::CompactDatagram::parse(black_box(&datagram)).expect("valid");
            let mut bytes = 0;
            for run in parsed.runs() {
                for item in run.items() {
                    bytes += item.payload.len() + item.counter as usize;
                }
            }
            black_box(bytes)
        })
    });
    group.bench_function("decode_owned", |b| {
        b.iter(|| compact::decode(black_box(&datagram)).expect("valid"))
    });
    group.finish();
}

fn request(c: &mut Criterion) {
    let mut group = c.benchmark_group("request");
    group.throughput(Throughput::Elements(1));
    let heartbeat = Request::Heartbeat {
        username: "katerina".into(),
    }
    .encode();
    group.bench_function("decode_heartbeat", |b| {
        b.iter(|| Request::decode(black_box(&heartbeat)).expect("valid"))
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
    targets = datagram, bundle, compact, request
}
criterion_main!(benches);
