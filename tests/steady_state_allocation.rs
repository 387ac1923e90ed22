//! The ordering core's in-order path allocates nothing per message once warmed up: the
//! FIFO receiver, the sender, the sequencer and the total-order receiver.

use std::time::{Duration, Instant};

use groupcast::ordering::{
    Config, FifoReceiver, FifoSender, Output, Sequencer, Start, TotalOrderReceiver,
};

const MESSAGES: u64 = 10_000;

#[test]
fn fifo_receiver_in_order_allocates_nothing_per_message() {
    let t0 = Instant::now();
    let mut rx = FifoReceiver::new(Config::default());
    rx.add_sender(t0, "g", "alice", Start::At(1));
    let mut run = |from: u64, to: u64| {
        for c in from..to {
            rx.handle_message(t0, "g", "alice", c, c).expect("known");
            while let Some(out) = rx.poll_output() {
                std::hint::black_box(out);
            }
        }
    };
    run(1, 100); // warm up: the output queue reaches its working size
    let info = allocation_counter::measure(|| run(100, 100 + MESSAGES));
    assert_eq!(info.count_total, 0, "{info:?}");
}

#[test]
fn sender_allocates_nothing_per_message_once_its_buffer_is_full() {
    let t0 = Instant::now();
    let config = Config {
        retransmit_buffer: 1024,
        ..Config::default()
    };
    let mut tx = FifoSender::new(config);
    tx.open("g");
    let mut now = t0;
    let mut run = |n: u64| {
        for c in 0..n {
            now += Duration::from_micros(1);
            tx.send(now, "g", c).expect("open");
            while let Some(out) = tx.poll_output() {
                std::hint::black_box(out);
            }
            tx.handle_timeout(now);
        }
    };
    run(2048); // warm up: the ring buffer is full and recycles its slots
    let info = allocation_counter::measure(|| run(MESSAGES));
    assert_eq!(info.count_total, 0, "{info:?}");
}

#[test]
fn sequencer_and_total_order_receiver_allocate_nothing_per_message() {
    let t0 = Instant::now();
    let config = Config {
        retransmit_buffer: 1024,
        ..Config::default()
    };
    let mut seq = Sequencer::new(config.clone());
    let mut rx = TotalOrderReceiver::new(config, "sequencer");
    for author in ["a", "b"] {
        seq.add_author(t0, "g", author, Start::At(1));
    }
    rx.join(t0, "g", Start::At(1));
    let mut counters = [1u64, 1];
    let mut run = |n: u64| {
        for i in 0..n {
            let a = (i % 2) as usize;
            let author = ["a", "b"][a];
            seq.handle_message(t0, "g", author, counters[a], i)
                .expect("known");
            counters[a] += 1;
            while let Some(out) = seq.poll_output() {
                if let Output::Multicast {
                    counter, payload, ..
                } = out
                {
                    rx.handle_sequenced(t0, "g", counter, payload)
                        .expect("joined");
                }
            }
            while let Some(out) = rx.poll_output() {
                std::hint::black_box(out);
            }
        }
    };
    run(2048);
    let info = allocation_counter::measure(|| run(MESSAGES));
    assert_eq!(info.count_total, 0, "{info:?}");
}
