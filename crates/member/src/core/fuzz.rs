//! Arbitrary datagrams at a member with streams in every state: nothing panics, nothing
//! is delivered that no member sent, and the ordering core's memory stays bounded.
use super::*;
use proptest::prelude::*;

/// The address of member `p` of these tests (`me` is 9, the tracker 8).
fn addr(p: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7000 + p))
}

/// `me`, in FIFO order, a member of group `g` with `a` (port 0) and `b` (port 1).
fn member_of_g(t: Instant, ordering: ordering::Config, seals: Vec<(String, GroupKey)>) -> PeerCore {
    let mut core = PeerCore::new(CoreConfig {
        username: "me".into(),
        addr: addr(9),
        tracker: addr(8),
        mode: Mode::Fifo,
        ordering,
        seals,
        multicast: None,
    });
    let members: Vec<proto::Member> = ["a", "b"]
        .iter()
        .enumerate()
        .map(|(i, n)| proto::Member {
            ip: "127.0.0.1".into(),
            port: 7000 + i as u16,
            username: (*n).into(),
            uid: (*n).into(),
        })
        .collect();
    core.join(t, "g", &members);
    core
}

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
        let mut core = member_of_g(t, ordering::Config { window: 64, ..ordering::Config::default() }, Vec::new());
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

    /// A sealed group's member fed genuine datagrams of its members sealed with the group's
    /// key and then changed (a few bytes flipped, cut or lengthened), datagrams sealed with
    /// another key or for another member, and plain ones: nothing panics, nothing opens,
    /// nothing is delivered.
    #[test]
    fn mutated_and_foreign_sealed_datagrams_never_panic_open_or_deliver(
        inputs in proptest::collection::vec(
            (
                0u8..4,
                any::<u64>(),
                0u16..2,
                proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
                0usize..3,
            ),
            1..60,
        ),
    ) {
        let t = Instant::now();
        let key = GroupKey::from_bytes([5; seal::KEY_LEN]);
        let mut core = member_of_g(t, ordering::Config::default(), vec![("g".into(), key.clone())]);
        let members_sealer = seal::Sealer::new(&key);
        let stranger = seal::Sealer::new(&GroupKey::from_bytes([6; seal::KEY_LEN]));
        while core.poll_output().is_some() {}
        for (how, counter, from, flips, cut) in inputs {
            let name = ["a", "b"][from as usize];
            let mut d = Datagram::new(DatagramType::Application, "g", name, "x", addr(from), counter % 50 + 1, name);
            d.sent_at_us = Some(1);
            let plain = d.encode(65_000).unwrap_or_default();
            let bytes = match how {
                // Genuine, then changed.
                0 => {
                    let genuine = members_sealer.seal(&plain, addr(9));
                    let mut b = genuine.clone();
                    for (at, bits) in &flips {
                        let i = at.index(b.len());
                        b[i] ^= bits;
                    }
                    // Two flips of one byte can cancel out: the datagram must be changed.
                    if b == genuine {
                        let i = flips[0].0.index(b.len());
                        b[i] ^= 1;
                    }
                    b.truncate(b.len() - cut.min(b.len()));
                    if cut == 2 {
                        b.push(0);
                    }
                    b
                }
                // Genuine, but sealed for another member.
                1 => members_sealer.seal(&plain, addr(0)),
                // Sealed with another key.
                2 => stranger.seal(&plain, addr(9)),
                // Plain.
                _ => plain,
            };
            core.handle_datagram(t, addr(from), &bytes);
            while let Some(out) = core.poll_output() {
                let delivered = matches!(out, Output::Deliver(_));
                prop_assert!(!delivered, "delivered from input kind {}", how);
            }
        }
        prop_assert_eq!(core.seal_stats().opened, 0);
    }
}
