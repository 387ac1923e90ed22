//! Bundles: several group datagrams in one UDP datagram, as a JSON array of them.
//!
//! A sender with messages already queued for one member packs them into one datagram, so
//! the member's kernel and process wake once for many messages. A bundle is plain JSON (an
//! array of the datagram objects, in the order they were queued), so it is built from the
//! already-encoded datagrams without encoding anything again. Only members that announced
//! [`BUNDLE_VERSION`] or later receive bundles; the report's peers always get single
//! datagrams, which never start with `[`.

use std::net::SocketAddr;

use crate::datagram::{Datagram, MAX_DATAGRAM_LEN};
use crate::error::{Error, check_len};

/// The first protocol version (the `Proto` of Hello and HelloAck) that reads bundles.
pub const BUNDLE_VERSION: u32 = 3;

/// Most datagrams one bundle may hold; bounds the work one datagram can ask of its receiver.
pub const MAX_BUNDLE_ITEMS: usize = 4096;

/// The default largest bundle towards a member on this machine (loopback: its MTU is
/// 64 KiB, so no IP fragmentation; a lost bundle costs its messages a retransmission).
pub const LOOPBACK_BUNDLE_LEN: usize = 16 * 1024;

/// The default largest bundle towards other hosts: one Ethernet frame (1500 bytes less the
/// IP and UDP headers), so bundles are never fragmented on a LAN.
pub const LAN_BUNDLE_LEN: usize = 1472;

/// Whether `bytes` is a bundle rather than a single datagram.
pub fn is_bundle(bytes: &[u8]) -> bool {
    bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[')
}

/// Decodes a bundle into its datagrams, each checked as [`Datagram::decode`] checks one. One
/// bad item refuses the whole bundle: its sender is not one of ours.
pub fn decode_bundle(bytes: &[u8]) -> Result<Vec<Datagram>, Error> {
    check_len(bytes, MAX_DATAGRAM_LEN)?;
    // One pass: the items are parsed straight into datagrams (the datagram's size limit
    // holds for the whole bundle, so for each item too).
    let items: Vec<Datagram> = serde_json::from_slice(bytes).map_err(|e| Error::Syntax {
        detail: format!("bundle: {e}"),
    })?;
    if items.len() > MAX_BUNDLE_ITEMS {
        return Err(Error::Invalid {
            detail: format!(
                "bundle of {} datagrams, at most {MAX_BUNDLE_ITEMS}",
                items.len()
            ),
        });
    }
    for item in &items {
        item.validate()?;
    }
    Ok(items)
}

/// The datagrams one UDP datagram carried: itself, or the items of a bundle.
#[derive(Debug)]
// A short-lived value on the stack; boxing the single datagram would cost an allocation
// per datagram received.
#[allow(clippy::large_enum_variant)]
pub enum Datagrams {
    /// A single datagram (taken by the first call to `next`).
    One(Option<Datagram>),
    /// The items of a bundle, in order.
    Many(std::vec::IntoIter<Datagram>),
}

impl Iterator for Datagrams {
    type Item = Datagram;

    fn next(&mut self) -> Option<Datagram> {
        match self {
            Self::One(d) => d.take(),
            Self::Many(items) => items.next(),
        }
    }
}

/// Decodes what one UDP datagram carries, a bundle, a compact datagram or a single one, each checked as
/// [`Datagram::decode`] checks one.
pub fn decode_datagrams(bytes: &[u8]) -> Result<Datagrams, Error> {
    if crate::compact::is_compact(bytes) {
        crate::compact::decode(bytes).map(|items| Datagrams::Many(items.into_iter()))
    } else if is_bundle(bytes) {
        decode_bundle(bytes).map(|items| Datagrams::Many(items.into_iter()))
    } else {
        Datagram::decode(bytes).map(|d| Datagrams::One(Some(d)))
    }
}

/// Decodes a datagram sent alone, in JSON or as a one-message compact datagram (what a
/// member or sequencer core hands its driver to send); refuses bundles.
pub fn decode_single(bytes: &[u8]) -> Result<Datagram, Error> {
    if !crate::compact::is_compact(bytes) {
        return Datagram::decode(bytes);
    }
    let mut items = crate::compact::decode(bytes)?.into_iter();
    match (items.next(), items.next()) {
        (Some(d), None) => Ok(d),
        _ => Err(Error::Invalid {
            detail: "a compact datagram of several messages".into(),
        }),
    }
}

/// The addresses of the members that read bundles, and which of them also read the
/// [compact encoding](crate::compact), learned from the `Proto` of their Hello or HelloAck
/// (only a genuine one: its sender checked).
#[derive(Debug, Default)]
pub struct BundleReaders {
    readers: std::collections::HashMap<SocketAddr, u32, foldhash::fast::RandomState>,
    /// Changes with every note.
    version: u64,
}

impl BundleReaders {
    /// The member at `from` announced `proto` (or nothing, as the report's peers do).
    pub fn note(&mut self, from: SocketAddr, proto: Option<u32>) {
        self.version += 1;
        match proto {
            Some(v) if v >= BUNDLE_VERSION => {
                self.readers.insert(from, v);
            }
            _ => {
                self.readers.remove(&from);
            }
        }
    }

    /// Whether bundles may be sent to `to`.
    pub fn reads(&self, to: &SocketAddr) -> bool {
        self.readers.contains_key(to)
    }

    /// Changes whenever what is known may have changed.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether compact datagrams may be sent to `to`.
    pub fn reads_compact(&self, to: &SocketAddr) -> bool {
        self.readers
            .get(to)
            .is_some_and(|v| *v >= crate::compact::COMPACT_VERSION)
    }
}

/// Builds bundles out of encoded datagrams, up to a size limit.
#[derive(Debug, Default)]
pub struct BundleWriter {
    buf: Vec<u8>,
    items: usize,
}

impl BundleWriter {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `item` still fits in the bundle being built, at most `max` bytes.
    pub fn fits(&self, item: &[u8], max: usize) -> bool {
        let held = if self.items == 0 { 0 } else { self.buf.len() };
        // `[` or `,` before it and `]` after it.
        held + item.len() + 2 <= max && self.items < MAX_BUNDLE_ITEMS
    }

    /// Appends one encoded datagram (the first one starts a new bundle).
    pub fn push(&mut self, item: &[u8]) {
        if self.items == 0 {
            self.buf.clear();
        }
        self.buf.push(if self.items == 0 { b'[' } else { b',' });
        self.buf.extend_from_slice(item);
        self.items += 1;
    }

    /// Datagrams held.
    pub fn len(&self) -> usize {
        self.items
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.items == 0
    }

    /// The bundle of what was pushed since the last one (empty if nothing was); the next
    /// push starts a new one in the same buffer.
    pub fn finish(&mut self) -> &[u8] {
        if self.items == 0 {
            return &[];
        }
        self.buf.push(b']');
        self.items = 0;
        &self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DatagramType;

    fn app(counter: u64, text: &str) -> Vec<u8> {
        let d = Datagram::new(
            DatagramType::Application,
            "books",
            "ford",
            text,
            "127.0.0.1:5001".parse().expect("address"),
            counter,
            "ford",
        );
        d.encode(MAX_DATAGRAM_LEN).expect("fits")
    }

    #[test]
    fn a_bundle_holds_its_datagrams_in_order_and_within_its_limit() {
        let mut w = BundleWriter::new();
        let items: Vec<Vec<u8>> = (1..=5).map(|c| app(c, "say [hi], {there}")).collect();
        let max = items[0].len() * 3 + 4;
        let mut bundles = Vec::new();
        for item in &items {
            if !w.fits(item, max) {
                bundles.push(w.finish().to_vec());
            }
            w.push(item);
        }
        bundles.push(w.finish().to_vec());
        assert_eq!(bundles.len(), 2, "three, then two");
        let mut counters = Vec::new();
        for b in &bundles {
            assert!(b.len() <= max, "{} > {max}", b.len());
            assert!(is_bundle(b));
            for d in decode_bundle(b).expect("valid") {
                assert_eq!(d.content, "say [hi], {there}");
                counters.push(d.counter);
            }
        }
        assert_eq!(counters, [1, 2, 3, 4, 5]);
        assert!(!is_bundle(&items[0]), "a single datagram is not a bundle");
    }

    #[test]
    fn a_bundle_with_one_bad_item_is_refused_whole() {
        let good = String::from_utf8(app(1, "fine")).expect("utf8");
        for bad in [
            format!("[{good},{{\"Type\":2}}]"),
            format!("[{good},17]"),
            format!("[{good}"),
            "[]x".to_owned(),
        ] {
            assert!(decode_bundle(bad.as_bytes()).is_err(), "{bad}");
        }
        assert_eq!(decode_bundle(b"[]").expect("empty is valid").len(), 0);
        let too_many = format!("[{}]", vec!["{}"; MAX_BUNDLE_ITEMS + 1].join(","));
        assert!(decode_bundle(too_many.as_bytes()).is_err());
    }
}
