use super::*;
use proptest::prelude::*;

fn addr() -> SocketAddr {
    "127.0.0.1:5001".parse().expect("address")
}

fn message(sender: &str, counter: u64, payload: &[u8]) -> Datagram {
    let mut d = Datagram::new(
        DatagramType::Application,
        "books",
        sender,
        "",
        addr(),
        counter,
        sender,
    );
    d.set_payload(payload);
    d.sent_at_us = Some(1_700_000_000_000_000u64.wrapping_add(counter));
    d
}

fn pack(items: &[Vec<u8>], max: usize) -> Vec<Vec<u8>> {
    let mut w = CompactWriter::new();
    let mut out = Vec::new();
    for item in items {
        if !w.is_empty() && !w.fits(item, max) {
            out.push(w.finish().to_vec());
        }
        assert!(w.push(item));
    }
    out.push(w.finish().to_vec());
    out
}

#[test]
fn packed_messages_decode_to_the_datagrams_they_were_made_of() {
    let mut sent = vec![
        message("ford", 1, b"hello"),
        message("ford", 2, &[0, 0xff, 0xfe]),
        message("arthur", 1, "τι κάνεις".as_bytes()),
    ];
    // The sequencer's copy: another origin, its counter and an epoch.
    let mut copy = message(crate::SEQUENCER, 9, b"ordered");
    copy.origin = "ford".into();
    copy.origin_counter = Some(3);
    copy.epoch = Some(77);
    sent.push(copy);
    let items: Vec<Vec<u8>> = sent
        .iter()
        .map(|d| from_datagram(d).expect("compact"))
        .collect();
    let packed = pack(&items, MAX_DATAGRAM_LEN);
    assert_eq!(packed.len(), 1);
    let parsed = CompactDatagram::parse(&packed[0]).expect("valid");
    assert_eq!(parsed.len(), 4);
    let runs: Vec<(&str, usize)> = parsed.runs().map(|r| (r.header.sender, r.len())).collect();
    assert_eq!(
        runs,
        [("ford", 2), ("arthur", 1), (crate::SEQUENCER, 1)],
        "one run per sender in a row"
    );
    assert_eq!(decode(&packed[0]).expect("valid"), sent);
    let json: usize = sent
        .iter()
        .map(|d| d.encode(MAX_DATAGRAM_LEN).expect("fits").len() + 1)
        .sum();
    assert!(
        packed[0].len() * 2 < json,
        "{} bytes compact, {json} as a JSON bundle",
        packed[0].len()
    );
}

#[test]
fn a_writer_keeps_to_its_limit_and_the_order() {
    let items: Vec<Vec<u8>> = (1..=50)
        .map(|c| from_datagram(&message("ford", c, &[b'x'; 40])).expect("compact"))
        .collect();
    let max = 300;
    let packed = pack(&items, max);
    assert!(packed.len() > 5, "{} datagrams", packed.len());
    let mut counters = Vec::new();
    for p in &packed {
        assert!(p.len() <= max, "{} > {max}", p.len());
        counters.extend(decode(p).expect("valid").iter().map(|d| d.counter));
    }
    assert_eq!(counters, (1..=50).collect::<Vec<_>>());
    let mut w = CompactWriter::new();
    assert!(!w.push(b"{\"Type\":2}"), "JSON is not a compact message");
    assert!(!w.push(&packed[0]), "nor is a datagram of several");
}

#[test]
fn one_message_turns_back_into_its_json() {
    let d = message("ford", 7, b"for the report's peers");
    let bytes = from_datagram(&d).expect("compact");
    assert_eq!(
        to_json(&bytes),
        Some(d.encode(MAX_DATAGRAM_LEN).expect("fits"))
    );
    let mut hello = d.clone();
    hello.kind = DatagramType::Hello;
    assert_eq!(from_datagram(&hello), None, "only messages are compact");
}

#[test]
fn every_cut_and_every_bad_field_refuses_the_whole_datagram() {
    let items: Vec<Vec<u8>> = [message("ford", 1, b"a"), message("zaphod", 300, b"bc")]
        .iter()
        .map(|d| from_datagram(d).expect("compact"))
        .collect();
    let whole = pack(&items, MAX_DATAGRAM_LEN).remove(0);
    for cut in 0..whole.len() {
        if cut == items[0].len() {
            // Where the first run ends: a datagram of its one message.
            assert_eq!(
                CompactDatagram::parse(&whole[..cut]).map(|d| d.len()),
                Ok(1)
            );
            continue;
        }
        assert!(
            CompactDatagram::parse(&whole[..cut]).is_err(),
            "cut at {cut}"
        );
    }
    let mut longer = whole.clone();
    longer.push(0);
    assert!(
        CompactDatagram::parse(&longer).is_err(),
        "a byte after the last run"
    );
    let one = &items[0];
    let header = 1 + header_len(&one[1..]).expect("header");
    let changed = |at: usize, value: u8| {
        let mut b = one.clone();
        b[at] = value;
        b
    };
    assert!(
        CompactDatagram::parse(&changed(1, 1)).is_err(),
        "kind Hello"
    );
    assert!(
        CompactDatagram::parse(&changed(header + 1, 0)).is_err(),
        "a count of 0"
    );
    assert!(
        CompactDatagram::parse(&changed(header + 4, 0x10)).is_err(),
        "unknown flag"
    );
    let size = u16::from_be_bytes([one[header + 2], one[header + 3]]);
    for wrong in [size - 1, size + 1, 0] {
        let mut b = one.clone();
        b[header + 2..header + 4].copy_from_slice(&wrong.to_be_bytes());
        assert!(
            CompactDatagram::parse(&b).is_err(),
            "size {wrong} for {size}"
        );
    }
    // One run of one more message than a datagram may hold (each 3 bytes: no flags,
    // counter 0, no payload).
    let mut many = one[..header].to_vec();
    let count = u16::try_from(MAX_BUNDLE_ITEMS + 1).expect("u16");
    many.extend_from_slice(&count.to_be_bytes());
    many.extend_from_slice(&(count * 3).to_be_bytes());
    for _ in 0..=MAX_BUNDLE_ITEMS {
        many.extend_from_slice(&[0, 0, 0]);
    }
    assert!(matches!(
        CompactDatagram::parse(&many),
        Err(Error::Invalid { .. })
    ));
}

#[test]
fn varints_refuse_needless_zeros_values_past_u64_and_cuts() {
    for bad in [
        &[0x81, 0x00][..],
        &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02],
        &[0xff; 11],
        &[0x80, 0x80],
        &[],
    ] {
        assert!(Cursor(bad).varint("v").is_err(), "{bad:?}");
    }
}

#[test]
fn varints_round_trip_at_their_edges() {
    for v in [
        0,
        1,
        127,
        128,
        16_383,
        16_384,
        u64::from(u32::MAX),
        u64::MAX - 1,
        u64::MAX,
    ] {
        let mut out = Vec::new();
        put_varint(&mut out, v);
        let mut c = Cursor(&out);
        assert_eq!(c.varint("v"), Ok(v));
        assert!(c.0.is_empty());
    }
}

proptest! {
    /// Whatever the bytes, decoding never panics; what parses yields exactly the messages it
    /// counted, each within the datagram.
    #[test]
    fn arbitrary_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        if let Some(first) = bytes.first_mut() {
            *first = MAGIC;
        }
        if let Ok(parsed) = CompactDatagram::parse(&bytes) {
            let mut n = 0;
            for run in parsed.runs() {
                for item in run.items() {
                    prop_assert!(item.payload.len() < bytes.len());
                    n += 1;
                }
            }
            prop_assert_eq!(n, parsed.len());
            prop_assert!(n > 0);
        }
    }

    /// Messages of any content round-trip through the writer, and a changed byte either
    /// refuses the datagram or still decodes to as many messages without panicking.
    #[test]
    fn messages_round_trip_and_mutations_never_panic(
        msgs in proptest::collection::vec(
            (0usize..3, any::<u64>(), proptest::option::of(any::<u64>()), proptest::collection::vec(any::<u8>(), 0..50)),
            1..20,
        ),
        at in any::<prop::sample::Index>(),
        bits in 1u8..=255,
    ) {
        let sent: Vec<Datagram> = msgs
            .iter()
            .map(|(who, counter, sent_at, payload)| {
                let mut d = message(["ford", "arthur", "zaphod"][*who], *counter, payload);
                d.sent_at_us = *sent_at;
                d
            })
            .collect();
        let items: Vec<Vec<u8>> = sent.iter().map(|d| from_datagram(d).expect("compact")).collect();
        let packed = pack(&items, MAX_DATAGRAM_LEN).remove(0);
        prop_assert_eq!(decode(&packed)?, sent);
        let mut changed = packed.clone();
        let i = at.index(changed.len());
        changed[i] ^= bits;
        if let Ok(parsed) = CompactDatagram::parse(&changed) {
            let n: usize = parsed.runs().map(|r| r.items().count()).sum();
            prop_assert_eq!(n, parsed.len());
        }
    }
}
