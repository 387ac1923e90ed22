use super::*;
use proptest::prelude::*;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The receiver's address in these tests.
const ME: u16 = 100;

fn opener(group: &str, key: &GroupKey) -> Opener {
    let mut o = Opener::new(addr(ME));
    o.add(group, key).expect("one key per group");
    o
}

#[test]
fn a_sealed_datagram_opens_once_into_what_was_sealed_and_hides_it() {
    let key = GroupKey::generate();
    let sealer = Sealer::new(&key);
    let plain = br#"{"Type":0,"Content":"the plans are in the cellar"}"#;
    let sealed = sealer.seal(plain, addr(ME));
    assert!(is_sealed(&sealed));
    assert_eq!(sealed.len(), plain.len() + OVERHEAD);
    assert!(
        !sealed.windows(5).any(|w| w == b"plans"),
        "the text travels encrypted"
    );
    let mut o = opener("books", &key);
    let mut out = Vec::new();
    assert_eq!(o.open(addr(1), &sealed, &mut out).as_deref(), Ok("books"));
    assert_eq!(out, plain);
    assert_eq!(
        o.open(addr(1), &sealed, &mut out).err(),
        Some(Refusal::Replayed)
    );
    // Resent from elsewhere: still the same sender's number.
    assert_eq!(
        o.open(addr(2), &sealed, &mut out).err(),
        Some(Refusal::Replayed)
    );
    let s = o.stats();
    assert_eq!((s.opened, s.replayed, s.dropped()), (1, 2, 2));
}

#[test]
fn a_datagram_sealed_with_another_key_or_changed_anywhere_is_dropped() {
    let key = GroupKey::generate();
    let mut o = opener("books", &key);
    let mut out = Vec::new();
    let stranger = Sealer::new(&GroupKey::generate()).seal(b"{}", addr(ME));
    assert_eq!(
        o.open(addr(9), &stranger, &mut out).err(),
        Some(Refusal::UnknownKey)
    );
    let sealed = Sealer::new(&key).seal(b"{\"Type\":0}", addr(ME));
    for at in 0..sealed.len() {
        let mut changed = sealed.clone();
        changed[at] ^= 0x01;
        let got = o.open(addr(1), &changed, &mut out);
        assert!(got.is_err(), "a change at byte {at} went through");
        assert!(out.is_empty(), "nothing is handed out at byte {at}");
    }
    assert_eq!(
        o.open(addr(1), &sealed[..OVERHEAD - 1], &mut out).err(),
        Some(Refusal::Malformed)
    );
    // The original still opens: the changed copies left no trace in the window.
    assert_eq!(o.open(addr(1), &sealed, &mut out).as_deref(), Ok("books"));
    assert!(o.stats().forged > 0);
}

#[test]
fn reordered_datagrams_open_within_the_window_and_older_ones_do_not() {
    let key = GroupKey::generate();
    let sealer = Sealer::new(&key);
    let sealed: Vec<Vec<u8>> = (0..2000)
        .map(|n| sealer.seal(format!("{n}").as_bytes(), addr(ME)))
        .collect();
    let mut o = opener("books", &key);
    let mut out = Vec::new();
    // Every other one first, then the ones skipped, backwards.
    for s in sealed.iter().step_by(2) {
        assert!(o.open(addr(1), s, &mut out).is_ok());
    }
    let mut late = 0;
    for s in sealed.iter().skip(1).step_by(2).rev() {
        match o.open(addr(1), s, &mut out) {
            Ok(_) => late += 1,
            Err(refusal) => assert_eq!(refusal, Refusal::Replayed),
        }
    }
    // 1999 (above the highest, so new), then the odd numbers within 1,024 below it: 977 to
    // 1997.
    assert_eq!(late, 512);
}

#[test]
fn a_restarted_sender_is_heard_and_its_earlier_incarnation_no_more() {
    let key = GroupKey::generate();
    let before = Sealer::new(&key);
    let old = before.seal(b"1", addr(ME));
    let older = before.seal(b"2", addr(ME));
    std::thread::sleep(std::time::Duration::from_millis(2));
    let after = Sealer::new(&key);
    let mut o = opener("books", &key);
    let mut out = Vec::new();
    assert!(o.open(addr(1), &old, &mut out).is_ok());
    assert!(
        o.open(addr(1), &after.seal(b"3", addr(ME)), &mut out)
            .is_ok()
    );
    assert_eq!(
        o.open(addr(1), &older, &mut out).err(),
        Some(Refusal::Stale)
    );
    assert_eq!(o.stats().stale, 1);
}

#[test]
fn a_datagram_sealed_for_another_member_does_not_open_here() {
    let key = GroupKey::generate();
    let for_another = Sealer::new(&key).seal(b"{}", addr(ME + 1));
    let mut o = opener("books", &key);
    let mut out = Vec::new();
    assert_eq!(
        o.open(addr(1), &for_another, &mut out).err(),
        Some(Refusal::Forged)
    );
    let v6: SocketAddr = "[::1]:100".parse().expect("addr");
    assert_eq!(
        o.open(addr(1), &Sealer::new(&key).seal(b"{}", v6), &mut out)
            .err(),
        Some(Refusal::Forged)
    );
}

#[test]
fn two_groups_cannot_share_a_key() {
    let key = GroupKey::generate();
    let mut o = opener("books", &key);
    assert!(o.add("books", &key).is_ok());
    assert_eq!(
        o.add("films", &key),
        Err(SharedKey("books".into(), "films".into()))
    );
    // The refused group changed nothing: the key still opens as "books".
    let sealed = Sealer::new(&key).seal(b"{}", addr(ME));
    let mut out = Vec::new();
    assert_eq!(o.open(addr(1), &sealed, &mut out).as_deref(), Ok("books"));
    let other = GroupKey::generate();
    assert!(check_distinct(&[("books".into(), key.clone()), ("films".into(), other)]).is_ok());
    assert!(check_distinct(&[("books".into(), key.clone()), ("films".into(), key)]).is_err());
}

proptest! {
    /// Arbitrary bytes never open, whatever they start with, and never panic.
    #[test]
    fn arbitrary_bytes_never_open(mut bytes in proptest::collection::vec(any::<u8>(), 0..200), sealed_mark in any::<bool>()) {
        let key = GroupKey::from_bytes([7; KEY_LEN]);
        let mut o = opener("books", &key);
        if sealed_mark && bytes.len() > 10 {
            bytes[0] = MAGIC;
            bytes[1] = VERSION;
            bytes[2..10].copy_from_slice(&key.id().0);
        }
        let mut out = Vec::new();
        prop_assert!(o.open(addr(1), &bytes, &mut out).is_err());
        prop_assert!(out.is_empty());
    }

    /// A genuine sealed datagram with bytes changed, cut or added never opens.
    #[test]
    fn a_mutated_sealed_datagram_never_opens(
        plain in proptest::collection::vec(any::<u8>(), 0..300),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
        cut in 0usize..8,
        extra in proptest::collection::vec(any::<u8>(), 0..4),
    ) {
        let key = GroupKey::from_bytes([9; KEY_LEN]);
        let sealed = Sealer::new(&key).seal(&plain, addr(ME));
        let mut changed = sealed.clone();
        for (at, bits) in &flips {
            let i = at.index(changed.len());
            changed[i] ^= bits;
        }
        changed.truncate(changed.len() - cut.min(changed.len()));
        changed.extend_from_slice(&extra);
        prop_assume!(changed != sealed);
        let mut o = opener("books", &key);
        let mut out = Vec::new();
        prop_assert!(o.open(addr(1), &changed, &mut out).is_err());
        prop_assert!(out.is_empty());
    }
}
