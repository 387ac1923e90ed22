//! Fuzzing on the stable toolchain: arbitrary bytes, and valid messages with bytes flipped,
//! cut or spliced, fed to every decoder. Nothing may panic; whatever is accepted must
//! encode again; every rejection is one of the typed errors.

use proptest::prelude::*;
use proto::{Datagram, DatagramType, Envelope, JsonFramer, Reply, Request, compact};

fn valid_datagram() -> Vec<u8> {
    let mut d = Datagram::new(
        DatagramType::Nack,
        "group",
        "user",
        "text with \"quotes\" and \\ and ünïcode",
        "127.0.0.1:6000".parse().unwrap_or_else(|_| unreachable!()),
        42,
        "origin",
    );
    d.ranges = vec![proto::CounterRange::new(1, 5)];
    d.start = Some(3);
    let mut out = Vec::new();
    d.encode_into(&mut out);
    out
}

/// Two runs: two messages of one author, then a sequencer's copy naming another.
fn valid_compact() -> Vec<u8> {
    let mut writer = compact::CompactWriter::new();
    for (sender, counter) in [("user", 1), ("user", 2), (proto::SEQUENCER, 7)] {
        let mut d = Datagram::new(
            DatagramType::Application,
            "group",
            sender,
            "ünïcode \"text\"",
            "127.0.0.1:6000".parse().unwrap_or_else(|_| unreachable!()),
            counter,
            "user",
        );
        d.sent_at_us = Some(1_700_000_000_000_000);
        d.epoch = (sender == proto::SEQUENCER).then_some(3);
        let one = compact::from_datagram(&d).unwrap_or_else(|| unreachable!());
        assert!(writer.push(&one));
    }
    writer.finish().to_vec()
}

fn mutate(mut base: Vec<u8>, edits: &[(usize, u8)], cut: Option<usize>) -> Vec<u8> {
    for &(i, b) in edits {
        if !base.is_empty() {
            let n = base.len();
            base[i % n] = b;
        }
    }
    if let Some(c) = cut {
        base.truncate(c % (base.len() + 1));
    }
    base
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn datagram_decoding_never_panics_and_accepted_datagrams_reencode(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        cut in proptest::option::of(any::<usize>()),
        mutate_valid in any::<bool>(),
    ) {
        let input = if mutate_valid { mutate(valid_datagram(), &edits, cut) } else { bytes };
        if let Ok(d) = Datagram::decode(&input) {
            let mut again = Vec::new();
            d.encode_into(&mut again);
            prop_assert_eq!(Datagram::decode(&again).ok(), Some(d));
        }
    }

    #[test]
    fn compact_decoding_never_panics_and_accepted_messages_reencode(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        cut in proptest::option::of(any::<usize>()),
        mutate_valid in any::<bool>(),
    ) {
        let input = if mutate_valid {
            mutate(valid_compact(), &edits, cut)
        } else {
            [&[compact::MAGIC][..], &bytes].concat()
        };
        if let Ok(parsed) = compact::CompactDatagram::parse(&input) {
            // Every message accepted is one the encoder makes again, byte for byte.
            let mut writer = compact::CompactWriter::new();
            for run in parsed.runs() {
                for item in run.items() {
                    let mut one = Vec::new();
                    compact::encode_into(&mut one, &run.header, &item)?;
                    prop_assert!(writer.push(&one));
                }
            }
            let again = writer.finish().to_vec();
            let decoded = compact::decode(&again)?;
            prop_assert_eq!(decoded.len(), parsed.len());
            prop_assert_eq!(compact::decode(&input)?, decoded);
        }
    }

    #[test]
    fn request_and_reply_decoding_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        cut in proptest::option::of(any::<usize>()),
        kind in 1u8..=7,
    ) {
        let valid = Request::ListMembers { group: "g".into() }.encode();
        let valid = String::from_utf8_lossy(&valid).replace("\"Type\":4", &format!("\"Type\":{kind}"));
        for input in [bytes.clone(), mutate(valid.into_bytes(), &edits, cut)] {
            if let Ok(e) = Envelope::decode(&input) {
                prop_assert_eq!(Envelope::decode(&e.encode()).ok(), Some(e));
            }
            let _ = Reply::decode(&input);
        }
    }

    #[test]
    fn the_framer_never_panics_and_never_holds_more_than_its_limit(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..20),
    ) {
        let mut f = JsonFramer::new(256);
        for chunk in chunks {
            f.push(&chunk);
            while let Ok(Some(frame)) = f.next_frame() {
                prop_assert!(frame.len() <= 256);
            }
            prop_assert!(f.pending() <= 256 + 200, "{} bytes held", f.pending());
        }
    }
}
