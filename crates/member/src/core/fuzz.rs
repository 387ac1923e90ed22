//! Arbitrary datagrams at a member with streams in every state: nothing panics, nothing
//! is delivered that no member sent, and the ordering core's memory stays bounded.
use super::*;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn hostile_datagrams_never_panic_or_deliver_what_was_not_sent(
        inputs in proptest::collection::vec(
            (0u8..9, any::<u64>(), 0u16..3, proptest::collection::vec(any::<u8>(), 0..80)),
            0..120,
        ),
    ) {
        let t = Instant::now();
        let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], 7000 + p));
        let mut core = PeerCore::new(CoreConfig {
            username: "me".into(),
            addr: addr(9),
            tracker: addr(8),
            mode: Mode::Fifo,
            ordering: ordering::Config { window: 64, ..ordering::Config::default() },
            seals: Vec::new(),
        });
        let members: Vec<proto::Member> = ["a", "b"]
            .iter()
            .enumerate()
            .map(|(i, n)| proto::Member { ip: "127.0.0.1".into(), port: 7000 + i as u16, username: (*n).into(), uid: (*n).into() })
            .collect();
        core.join(t, "g", &members);
        let mut now = t;
        for (kind, counter, from, junk) in inputs {
            now += Duration::from_millis(counter % 7);
            let bytes = if kind == 8 {
                junk
            } else {
                let kind = DatagramType::from_code(i64::from(kind) % 7 + 1).unwrap_or(DatagramType::Application);
                let name = ["a", "b", "me"][from as usize % 3];
                let mut d = Datagram::new(kind, "g", name, "x", addr(from), counter % 200, name);
                d.proto = (counter % 2 == 0).then_some(2);
                d.start = Some(counter % 50);
                d.final_counter = Some(counter % 300);
                d.ranges = vec![proto::CounterRange::new(counter % 100, counter % 100 + counter % 5)];
                d.encode(65_000).unwrap_or_default()
            };
            core.handle_datagram(now, addr(from), &bytes);
            core.handle_timeout(now);
            while let Some(out) = core.poll_output() {
                if let Output::Deliver(m) = out {
                    prop_assert_eq!(m.payload.as_slice(), b"x", "only what members sent is delivered");
                }
            }
            prop_assert!(core.fifo.held() <= 64 * 3, "memory bound: {}", core.fifo.held());
        }
    }
}
