//! The ordering core's in-order path allocates nothing per message once warmed up: the
//! FIFO receiver, the sender, the sequencer and the total-order receiver. A member core
//! receiving compact datagrams allocates only each delivered payload.

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

/// A member core receiving compact bundles from a member it is in step with: the only
/// allocation per message is the buffer of the payload it hands the application; the rest
/// is one author name per run and an acknowledgement now and then.
#[test]
fn member_core_receiving_compact_bundles_allocates_only_each_payload() {
    use member::{CoreConfig, Mode, Output, PeerCore};
    use proto::compact::{self, CompactWriter};
    use std::net::SocketAddr;

    const PER_BUNDLE: usize = 100;
    const BUNDLES: usize = 100;
    let t0 = Instant::now();
    let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let core = |name: &str, port: u16| {
        PeerCore::new(CoreConfig {
            username: name.into(),
            addr: addr(port),
            tracker: addr(6000),
            mode: Mode::Fifo,
            ordering: Config::default(),
            seals: Vec::new(),
            multicast: None,
        })
    };
    let listed = |name: &str, port: u16| proto::Member {
        ip: "127.0.0.1".into(),
        port,
        username: name.into(),
        uid: name.into(),
    };
    let (mut ford, mut arthur) = (core("ford", 6001), core("arthur", 6002));
    ford.join(t0, "g", &[listed("arthur", 6002)]);
    arthur.join(t0, "g", &[listed("ford", 6001)]);
    // The handshake, and everything ford sends afterwards, as it would reach arthur.
    let mut to_arthur = Vec::new();
    let exchange = |ford: &mut PeerCore, arthur: &mut PeerCore, to_arthur: &mut Vec<Vec<u8>>| {
        for _ in 0..4 {
            while let Some(out) = ford.poll_output() {
                if let Output::Transmit(t) = out {
                    to_arthur.push(t.bytes.to_vec());
                }
            }
            for bytes in to_arthur.drain(..) {
                arthur.handle_datagram(t0, addr(6001), &bytes);
            }
            while let Some(out) = arthur.poll_output() {
                if let Output::Transmit(t) = out {
                    ford.handle_datagram(t0, addr(6002), &t.bytes);
                }
            }
        }
    };
    exchange(&mut ford, &mut arthur, &mut to_arthur);
    // Bundles of ford's messages, made as its outbox makes them.
    let mut bundles = |n: usize| -> Vec<Vec<u8>> {
        let mut writer = CompactWriter::new();
        (0..n)
            .map(|_| {
                for i in 0..PER_BUNDLE {
                    ford.send(t0, "g", format!("message {i:04} of a bundle").as_bytes(), 1)
                        .expect("joined");
                }
                while let Some(out) = ford.poll_output() {
                    if let Output::Transmit(t) = out
                        && compact::is_compact(&t.bytes)
                    {
                        assert!(writer.push(&t.bytes));
                    }
                }
                writer.finish().to_vec()
            })
            .collect()
    };
    let warm_up = bundles(5);
    let measured = bundles(BUNDLES);
    assert_eq!(
        compact::CompactDatagram::parse(&measured[0]).map(|d| d.len()),
        Ok(PER_BUNDLE),
        "ford sends arthur compact messages"
    );
    let mut delivered = 0;
    let mut receive = |arthur: &mut PeerCore, bundles: &[Vec<u8>]| {
        for b in bundles {
            arthur.handle_datagram(t0, addr(6001), b);
            while let Some(out) = arthur.poll_output() {
                if let Output::Deliver(m) = out {
                    delivered += 1;
                    std::hint::black_box(m);
                }
            }
        }
    };
    receive(&mut arthur, &warm_up);
    let info = allocation_counter::measure(|| receive(&mut arthur, &measured));
    let messages = (PER_BUNDLE * BUNDLES) as u64;
    assert_eq!(
        delivered,
        (PER_BUNDLE * (BUNDLES + 5)) as u64,
        "every message delivered"
    );
    // One per payload, one author name per datagram, and an acknowledgement to ford every
    // quarter flow window (a JSON control datagram: seven allocations, eight allowed).
    let acks = messages / (Config::default().flow_window / 4);
    assert!(
        info.count_total <= messages + BUNDLES as u64 + 8 * acks,
        "{} allocations for {messages} messages in {BUNDLES} datagrams: {info:?}",
        info.count_total
    );
}
