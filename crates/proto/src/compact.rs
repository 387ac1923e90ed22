//! The compact encoding: application messages between peers that announced
//! [`COMPACT_VERSION`], in a binary layout that states the group, the sender and its address
//! once per run of messages and each message as little more than its counter, its send time
//! and its payload bytes.
//!
//! JSON stays the encoding of every control datagram and of everything the report's peers
//! can see; a sender uses this one only towards members that announced the version, and
//! turns it back into JSON ([`to_json`]) for any other destination.
//!
//! # Layout
//!
//! All integers are unsigned. `u8` is one byte, `u16` two bytes in network order (big
//! endian), `varint` an LEB128 number (seven bits a byte, least significant group first, the
//! high bit set on every byte but the last; at most ten bytes, no value above `2^64 - 1`, no
//! needless trailing zero groups). `str8` is a `u8` length followed by that many bytes of
//! UTF-8.
//!
//! ```text
//! datagram := MAGIC run+                                 MAGIC = 0xC4
//! run      := kind:u8 group:str8 sender:str8 address count:u16 size:u16 item{count}
//! address  := 4:u8 ipv4:4 bytes port:u16 | 6:u8 ipv6:16 bytes port:u16
//! item     := flags:u8 counter:varint
//!             [sent_at:varint]         flags & 0x01
//!             [origin_counter:varint]  flags & 0x02
//!             [epoch:varint]           flags & 0x04
//!             [origin:str8]            flags & 0x08   (else the origin is the sender)
//!             length:varint payload:length bytes
//! ```
//!
//! - `kind` is the JSON `Type` code; only Application (2) is sent this way.
//! - `group`, `sender` and `address` are the JSON `Group`, `Username` and
//!   `SrcIp`/`SrcPort`; `counter`, `sent_at`, `origin_counter`, `epoch`, `origin` are
//!   `Counter`, `SentAt`, `OriginCounter`, `Epoch` and `Origin`.
//! - The payload is the message's bytes as the author gave them, text or not (JSON carries
//!   text in `Content` and anything else in `Data`, base64).
//! - `size` is the length in bytes of the run's items, which must fill it exactly: a reader
//!   steps from run to run without reading every item again.
//! - `count` is at least 1. A datagram holds at most [`MAX_BUNDLE_ITEMS`] items in all and
//!   at most [`MAX_DATAGRAM_LEN`] bytes; flag bits other than the four above, a kind other
//!   than 2, bytes after the last run, or any field running past the end refuse the whole
//!   datagram, as one bad item of a JSON bundle does.
//!
//! A datagram with one item is a message on its own; consecutive ones of one run header
//! (group, sender, address) are packed by [`CompactWriter`] into a single run.
//!
//! Decoding ([`CompactDatagram::parse`]) checks the whole datagram in one pass and then
//! lends its fields out of the receive buffer: it allocates nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::bundle::MAX_BUNDLE_ITEMS;
use crate::datagram::{Datagram, DatagramType, MAX_DATAGRAM_LEN};
use crate::error::{Error, check_len};

/// The first protocol version (the `Proto` of Hello and HelloAck) that reads this encoding.
pub const COMPACT_VERSION: u32 = 4;

/// The first byte of a compact datagram: neither JSON (`{`, `[`, whitespace) nor sealed.
pub const MAGIC: u8 = 0xC4;

const SENT_AT: u8 = 0x01;
const ORIGIN_COUNTER: u8 = 0x02;
const EPOCH: u8 = 0x04;
const ORIGIN: u8 = 0x08;
const KNOWN_FLAGS: u8 = SENT_AT | ORIGIN_COUNTER | EPOCH | ORIGIN;

/// Whether `bytes` is in the compact encoding.
pub fn is_compact(bytes: &[u8]) -> bool {
    bytes.first() == Some(&MAGIC)
}

/// What a run's messages share: the group, the sender and the sender's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunHeader<'a> {
    /// `Group`.
    pub group: &'a str,
    /// `Username`: who sent the datagram (the sequencer when it forwards).
    pub sender: &'a str,
    /// `SrcIp`/`SrcPort`.
    pub addr: SocketAddr,
}

/// One application message of a run, borrowed from the datagram it came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item<'a> {
    /// `Counter`.
    pub counter: u64,
    /// `SentAt`.
    pub sent_at_us: Option<u64>,
    /// `OriginCounter`.
    pub origin_counter: Option<u64>,
    /// `Epoch`.
    pub epoch: Option<u64>,
    /// `Origin`, when it is not the sender.
    pub origin: Option<&'a str>,
    /// The message's bytes.
    pub payload: &'a [u8],
}

/// A compact datagram checked whole, whose runs and items can then be read without
/// allocating.
#[derive(Debug, Clone, Copy)]
pub struct CompactDatagram<'a> {
    runs: &'a [u8],
}

impl<'a> CompactDatagram<'a> {
    /// Checks `bytes` (see the module's layout); refuses the whole datagram if any part is
    /// wrong.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, Error> {
        check_len(bytes, MAX_DATAGRAM_LEN)?;
        let Some((&MAGIC, runs)) = bytes.split_first() else {
            return Err(syntax("not a compact datagram"));
        };
        if runs.is_empty() {
            return Err(syntax("no run"));
        }
        let mut cursor = Cursor(runs);
        let mut items = 0usize;
        while !cursor.0.is_empty() {
            let (_, count, size) = cursor.run_header()?;
            items += usize::from(count);
            if items > MAX_BUNDLE_ITEMS {
                return Err(Error::Invalid {
                    detail: format!("more than {MAX_BUNDLE_ITEMS} messages in one datagram"),
                });
            }
            let mut run = Cursor(cursor.take(usize::from(size), "the run")?);
            for _ in 0..count {
                run.item()?;
            }
            if !run.0.is_empty() {
                return Err(Error::Invalid {
                    detail: "a run's items do not fill its size".into(),
                });
            }
        }
        Ok(Self { runs })
    }

    /// The runs, in order, each with its items.
    pub fn runs(&self) -> Runs<'a> {
        Runs(Cursor(self.runs))
    }

    /// How many messages the datagram holds.
    pub fn len(&self) -> usize {
        self.runs().map(|r| r.len()).sum()
    }

    /// Whether it holds no message (never true of a parsed one).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The runs of a [`CompactDatagram`].
#[derive(Debug, Clone)]
pub struct Runs<'a>(Cursor<'a>);

impl<'a> Iterator for Runs<'a> {
    type Item = Run<'a>;

    fn next(&mut self) -> Option<Run<'a>> {
        if self.0.0.is_empty() {
            return None;
        }
        // Checked by `parse`: an error here cannot happen, and would end the iteration.
        let (header, count, size) = self.0.run_header().ok()?;
        let items = Cursor(self.0.take(usize::from(size), "the run").ok()?);
        Some(Run {
            header,
            count,
            items,
        })
    }
}

/// One run: a header and its messages.
#[derive(Debug, Clone)]
pub struct Run<'a> {
    /// What the messages share.
    pub header: RunHeader<'a>,
    count: u16,
    items: Cursor<'a>,
}

impl<'a> Run<'a> {
    /// How many messages the run holds.
    pub fn len(&self) -> usize {
        usize::from(self.count)
    }

    /// Whether the run holds no message (never true of a parsed one).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The messages, in order.
    pub fn items(&self) -> Items<'a> {
        Items {
            left: self.count,
            cursor: self.items,
        }
    }
}

/// The messages of a [`Run`].
#[derive(Debug, Clone)]
pub struct Items<'a> {
    left: u16,
    cursor: Cursor<'a>,
}

impl<'a> Iterator for Items<'a> {
    type Item = Item<'a>;

    fn next(&mut self) -> Option<Item<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        self.cursor.item().ok()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (usize::from(self.left), Some(usize::from(self.left)))
    }
}

/// Reads the layout's fields off the front of a slice.
#[derive(Debug, Clone, Copy)]
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    #[inline]
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Error> {
        match self.0.split_at_checked(n) {
            Some((head, rest)) => {
                self.0 = rest;
                Ok(head)
            }
            None => Err(past_the_end(what)),
        }
    }

    #[inline]
    fn u8(&mut self, what: &'static str) -> Result<u8, Error> {
        Ok(self.take(1, what)?[0])
    }

    #[inline]
    fn u16(&mut self, what: &'static str) -> Result<u16, Error> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    #[inline]
    fn varint(&mut self, what: &'static str) -> Result<u64, Error> {
        let mut value = 0u64;
        for (i, &b) in self.0.iter().enumerate().take(10) {
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                if (b == 0 && i > 0) || (i == 9 && b > 1) {
                    return Err(bad_varint(what));
                }
                self.0 = &self.0[i + 1..];
                return Ok(value);
            }
        }
        Err(if self.0.len() < 10 {
            past_the_end(what)
        } else {
            bad_varint(what)
        })
    }

    #[inline]
    fn str8(&mut self, what: &'static str) -> Result<&'a str, Error> {
        let len = self.u8(what)?;
        let bytes = self.take(usize::from(len), what)?;
        std::str::from_utf8(bytes).map_err(|_| not_utf8(what))
    }

    fn run_header(&mut self) -> Result<(RunHeader<'a>, u16, u16), Error> {
        let kind = self.u8("the kind")?;
        if kind != DatagramType::Application.code() {
            return Err(Error::Invalid {
                detail: format!("a compact run of Type {kind}: only Application (2) is"),
            });
        }
        let group = self.str8("the group")?;
        let sender = self.str8("the sender")?;
        let ip = match self.u8("the address family")? {
            4 => {
                let b = self.take(4, "the address")?;
                IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
            }
            6 => {
                let b: [u8; 16] = self
                    .take(16, "the address")?
                    .try_into()
                    .map_err(|_| syntax("the address"))?;
                IpAddr::V6(Ipv6Addr::from(b))
            }
            family => {
                return Err(Error::Invalid {
                    detail: format!("address family {family}: 4 or 6"),
                });
            }
        };
        let port = self.u16("the port")?;
        let count = self.u16("the count")?;
        let size = self.u16("the size")?;
        if count == 0 {
            return Err(Error::Invalid {
                detail: "a run of no message".into(),
            });
        }
        let header = RunHeader {
            group,
            sender,
            addr: SocketAddr::new(ip, port),
        };
        Ok((header, count, size))
    }

    #[inline]
    fn item(&mut self) -> Result<Item<'a>, Error> {
        let flags = self.u8("the flags")?;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(Error::Invalid {
                detail: format!("unknown flags {flags:#04x}"),
            });
        }
        let counter = self.varint("the counter")?;
        let mut optional = |flag: u8, what: &'static str| -> Result<Option<u64>, Error> {
            (flags & flag != 0).then(|| self.varint(what)).transpose()
        };
        let sent_at_us = optional(SENT_AT, "the send time")?;
        let origin_counter = optional(ORIGIN_COUNTER, "the origin's counter")?;
        let epoch = optional(EPOCH, "the epoch")?;
        let origin = (flags & ORIGIN != 0)
            .then(|| self.str8("the origin"))
            .transpose()?;
        let len = self.varint("the payload's length")?;
        let len = usize::try_from(len).map_err(|_| syntax("the payload runs past the end"))?;
        let payload = self.take(len, "the payload")?;
        Ok(Item {
            counter,
            sent_at_us,
            origin_counter,
            epoch,
            origin,
            payload,
        })
    }
}

#[cold]
fn past_the_end(what: &str) -> Error {
    syntax(&format!("{what} runs past the end"))
}

#[cold]
fn bad_varint(what: &str) -> Error {
    syntax(&format!(
        "{what} is not a varint (a needless zero byte, or above 2^64 - 1)"
    ))
}

#[cold]
fn not_utf8(what: &str) -> Error {
    syntax(&format!("{what} is not UTF-8"))
}

#[cold]
fn syntax(detail: &str) -> Error {
    Error::Syntax {
        detail: format!("compact datagram: {detail}"),
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_str8(out: &mut Vec<u8>, s: &str) -> Result<(), Error> {
    let len = u8::try_from(s.len()).map_err(|_| Error::Invalid {
        detail: format!(
            "{} bytes of name, at most 255 in a compact datagram",
            s.len()
        ),
    })?;
    out.push(len);
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// Appends one run header with a count of 1 and a size of 0; returns where the count is
/// (the size follows it).
fn put_run_header(out: &mut Vec<u8>, header: &RunHeader<'_>) -> Result<usize, Error> {
    out.push(DatagramType::Application.code());
    put_str8(out, header.group)?;
    put_str8(out, header.sender)?;
    match header.addr.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&header.addr.port().to_be_bytes());
    let count_at = out.len();
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    Ok(count_at)
}

fn put_item(out: &mut Vec<u8>, item: &Item<'_>) -> Result<(), Error> {
    let mut flags = 0;
    for (flag, set) in [
        (SENT_AT, item.sent_at_us.is_some()),
        (ORIGIN_COUNTER, item.origin_counter.is_some()),
        (EPOCH, item.epoch.is_some()),
        (ORIGIN, item.origin.is_some()),
    ] {
        if set {
            flags |= flag;
        }
    }
    out.push(flags);
    put_varint(out, item.counter);
    for v in [item.sent_at_us, item.origin_counter, item.epoch]
        .into_iter()
        .flatten()
    {
        put_varint(out, v);
    }
    if let Some(origin) = item.origin {
        put_str8(out, origin)?;
    }
    put_varint(out, item.payload.len() as u64);
    out.extend_from_slice(item.payload);
    Ok(())
}

/// Appends the compact datagram of one message to `out` (which it clears first).
pub fn encode_into(
    out: &mut Vec<u8>,
    header: &RunHeader<'_>,
    item: &Item<'_>,
) -> Result<(), Error> {
    out.clear();
    out.push(MAGIC);
    let size_at = put_run_header(out, header)? + 2;
    put_item(out, item)?;
    check_len(out, MAX_DATAGRAM_LEN)?;
    // Below MAX_DATAGRAM_LEN, so within a u16.
    let size = (out.len() - size_at - 2) as u16;
    out[size_at..size_at + 2].copy_from_slice(&size.to_be_bytes());
    Ok(())
}

/// The compact form of an Application datagram, or `None` for any other kind (and for
/// names too long for the layout, or a `Data` that is not base64: JSON serves those).
pub fn from_datagram(d: &Datagram) -> Option<Vec<u8>> {
    if d.kind != DatagramType::Application {
        return None;
    }
    let addr = SocketAddr::new(d.src_ip.parse().ok()?, d.src_port);
    let decoded;
    let payload = match &d.data {
        Some(data) => {
            use base64::Engine as _;
            decoded = base64::engine::general_purpose::STANDARD
                .decode(data)
                .ok()?;
            decoded.as_slice()
        }
        None => d.content.as_bytes(),
    };
    let header = RunHeader {
        group: &d.group,
        sender: &d.username,
        addr,
    };
    let item = Item {
        counter: d.counter,
        sent_at_us: d.sent_at_us,
        origin_counter: d.origin_counter,
        epoch: d.epoch,
        origin: (d.origin != d.username).then_some(d.origin.as_str()),
        payload,
    };
    let mut out = Vec::with_capacity(64 + payload.len());
    encode_into(&mut out, &header, &item).ok()?;
    Some(out)
}

/// The datagram a message of a run stands for (for code that works on [`Datagram`]s).
pub fn to_datagram(header: &RunHeader<'_>, item: &Item<'_>) -> Datagram {
    let mut d = Datagram::new(
        DatagramType::Application,
        header.group,
        header.sender,
        "",
        header.addr,
        item.counter,
        item.origin.unwrap_or(header.sender),
    );
    d.set_payload(item.payload);
    d.sent_at_us = item.sent_at_us;
    d.origin_counter = item.origin_counter;
    d.epoch = item.epoch;
    d
}

/// Every message of a compact datagram as a [`Datagram`], in order.
pub fn decode(bytes: &[u8]) -> Result<Vec<Datagram>, Error> {
    let compact = CompactDatagram::parse(bytes)?;
    Ok(compact
        .runs()
        .flat_map(|run| {
            let header = run.header;
            run.items().map(move |item| to_datagram(&header, &item))
        })
        .collect())
}

/// The JSON form of a one-message compact datagram, for a destination that does not read
/// this encoding (`None` if `bytes` is not one valid message).
pub fn to_json(bytes: &[u8]) -> Option<Vec<u8>> {
    let compact = CompactDatagram::parse(bytes).ok()?;
    let run = compact.runs().next()?;
    let mut items = run.items();
    let item = items.next()?;
    if items.next().is_some() || compact.runs().nth(1).is_some() {
        return None;
    }
    to_datagram(&run.header, &item)
        .encode(MAX_DATAGRAM_LEN)
        .ok()
}

/// Packs one-message compact datagrams into one, merging consecutive messages of one run
/// header into a single run, up to a size limit.
#[derive(Debug, Default)]
pub struct CompactWriter {
    buf: Vec<u8>,
    /// The current run's header bytes (kind to port) in `buf`, and where its count is.
    run: Option<(std::ops::Range<usize>, usize)>,
    items: usize,
}

/// The length of the run header at the start of `run` (kind to port), if well formed.
fn header_len(run: &[u8]) -> Option<usize> {
    let group = usize::from(*run.get(1)?);
    let sender = usize::from(*run.get(2 + group)?);
    let family_at = 3 + group + sender;
    let ip = match run.get(family_at)? {
        4 => 4,
        6 => 16,
        _ => return None,
    };
    let len = family_at + 1 + ip + 2;
    (run.len() >= len + 4).then_some(len)
}

impl CompactWriter {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the one-message datagram `item` still fits in the datagram being built, at
    /// most `max` bytes.
    pub fn fits(&self, item: &[u8], max: usize) -> bool {
        let held = if self.items == 0 { 1 } else { self.buf.len() };
        // Without its MAGIC; a message that joins the run also saves its header.
        held + item.len() - 1 <= max && self.items < MAX_BUNDLE_ITEMS
    }

    /// Appends `item`, a one-message compact datagram (as [`encode_into`] makes); returns
    /// false, appending nothing, if it is not one.
    pub fn push(&mut self, item: &[u8]) -> bool {
        let Some(run) = item.strip_prefix(&[MAGIC]) else {
            return false;
        };
        let Some(header) = header_len(run) else {
            return false;
        };
        let items = &run[header + 4..];
        if run[header..header + 2] != 1u16.to_be_bytes()
            || run[header + 2..header + 4] != (items.len() as u16).to_be_bytes()
        {
            return false;
        }
        if self.items == 0 {
            self.buf.clear();
            self.buf.push(MAGIC);
            self.run = None;
        }
        let same_run = self.run.as_ref().is_some_and(|(h, count_at)| {
            self.buf[h.clone()] == run[..header]
                && self.u16_at(*count_at) < u16::MAX
                && usize::from(self.u16_at(*count_at + 2)) + items.len() <= usize::from(u16::MAX)
        });
        match &self.run {
            Some((_, count_at)) if same_run => {
                let count_at = *count_at;
                let count = self.u16_at(count_at) + 1;
                let size = self.u16_at(count_at + 2) + items.len() as u16;
                self.buf[count_at..count_at + 2].copy_from_slice(&count.to_be_bytes());
                self.buf[count_at + 2..count_at + 4].copy_from_slice(&size.to_be_bytes());
                self.buf.extend_from_slice(items);
            }
            _ => {
                let start = self.buf.len();
                self.buf.extend_from_slice(run);
                self.run = Some((start..start + header, start + header));
            }
        }
        self.items += 1;
        true
    }

    fn u16_at(&self, at: usize) -> u16 {
        u16::from_be_bytes([self.buf[at], self.buf[at + 1]])
    }

    /// Messages held.
    pub fn len(&self) -> usize {
        self.items
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.items == 0
    }

    /// The datagram of what was pushed since the last one (empty if nothing was); the next
    /// push starts a new one in the same buffer.
    pub fn finish(&mut self) -> &[u8] {
        if self.items == 0 {
            return &[];
        }
        self.items = 0;
        self.run = None;
        &self.buf
    }
}

#[cfg(test)]
mod tests;
