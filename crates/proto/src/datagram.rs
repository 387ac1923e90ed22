//! Group datagrams (UDP): Hello, Application, Bye of the report's protocol, and the newer
//! Types used only between peers that announced support for them.

use std::collections::BTreeMap;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

use crate::error::{Error, UNKNOWN_TYPE_PREFIX, check_len, classify, reject_array};

/// Largest datagram we accept or send: the largest UDP payload over IPv4.
pub const MAX_DATAGRAM_LEN: usize = 65_507;

/// Largest datagram the report's peers can read (they call `recvfrom(4096)`); a datagram for a
/// group with old peers must fit in it.
pub const LEGACY_DATAGRAM_LEN: usize = 4096;

/// Most counter ranges one [`DatagramType::Nack`] or [`DatagramType::Unavailable`] may carry;
/// bounds the work one datagram can ask of its receiver.
pub const MAX_RANGES: usize = 64;

/// Most authors one `Frontier` may name; bounds the state one Hello can make a sequencer keep.
pub const MAX_FRONTIER: usize = 1024;

/// Version of the newer protocol announced in the `Proto` key of Hello and HelloAck.
/// A peer that never announced it speaks only the report's protocol. Version 2: handshakes,
/// loss recovery, sequencer failover, flow control; version 3 also reads bundles
/// ([`crate::bundle`]); version 4 also reads the compact encoding ([`crate::compact`]).
pub const PROTOCOL_VERSION: u32 = 4;

/// The `Type` code of a group datagram.
///
/// Codes 1–3 are the report's; old peers ignore any other code, so the newer ones are sent only
/// to peers that announced [`PROTOCOL_VERSION`] in their Hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DatagramType {
    /// Sent to every member on joining a group.
    Hello = 1,
    /// An application message, or the sequencer's ordered copy of one.
    Application = 2,
    /// Sent to every member on leaving a group (or by the tracker for an evicted member).
    Bye = 3,
    /// Answer to a Hello from a newer peer: announces support and the sender's `Start`.
    HelloAck = 4,
    /// Retransmission request: `Ranges` of counters of `Origin`'s stream that are missing.
    Nack = 5,
    /// An idle sender's highest counter, so that a lost last message is noticed.
    Digest = 6,
    /// Answer to a Nack for counters no longer buffered: the receiver skips them.
    Unavailable = 7,
    /// Flow control: the sender (`Username`) has delivered `Origin`'s stream up to `Counter`
    /// (the author's own counter, also in total order), so the author may send further.
    Ack = 8,
    /// Uniform agreement after a sequencer crash: a new sequencer asks a member for what it
    /// delivered of the earlier sequencer's sequence (`Epoch`), by sequence numbers
    /// (`Ranges`), to multicast it again in the same order before anything new.
    Recover = 9,
    /// A member's answer to [`Recover`](Self::Recover), one per message: `Counter` is its
    /// number in the earlier sequence (`Epoch`), `Origin` and `OriginCounter` its author and
    /// the author's counter, the payload and `SentAt` as delivered.
    Recovered = 10,
}

impl DatagramType {
    /// The numeric code on the wire.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The type for a wire code, if this version knows it.
    pub fn from_code(code: i64) -> Option<Self> {
        Some(match code {
            1 => Self::Hello,
            2 => Self::Application,
            3 => Self::Bye,
            4 => Self::HelloAck,
            5 => Self::Nack,
            6 => Self::Digest,
            7 => Self::Unavailable,
            8 => Self::Ack,
            9 => Self::Recover,
            10 => Self::Recovered,
            _ => return None,
        })
    }

    /// True for the report's codes, which old peers understand.
    pub fn is_legacy(self) -> bool {
        matches!(self, Self::Hello | Self::Application | Self::Bye)
    }
}

impl Serialize for DatagramType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.code())
    }
}

impl<'de> Deserialize<'de> for DatagramType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let code = i64::deserialize(d)?;
        Self::from_code(code)
            .ok_or_else(|| de::Error::custom(format_args!("{UNKNOWN_TYPE_PREFIX}{code}")))
    }
}

/// An inclusive range of counters, `[first, last]` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "[u64; 2]", into = "[u64; 2]")]
pub struct CounterRange {
    /// First counter of the range.
    pub first: u64,
    /// Last counter of the range (inclusive).
    pub last: u64,
}

impl CounterRange {
    /// The range `first..=last`.
    pub fn new(first: u64, last: u64) -> Self {
        Self { first, last }
    }

    /// How many counters the range holds (0 if it is inverted).
    pub fn len(&self) -> u64 {
        if self.last < self.first {
            0
        } else {
            self.last - self.first + 1
        }
    }

    /// True when the range holds no counter.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<[u64; 2]> for CounterRange {
    fn from([first, last]: [u64; 2]) -> Self {
        Self { first, last }
    }
}

impl From<CounterRange> for [u64; 2] {
    fn from(r: CounterRange) -> Self {
        [r.first, r.last]
    }
}

/// One group datagram.
///
/// The eight keys of the report are always present, because old peers parse exactly those; the
/// newer keys are optional and omitted when unset, and unknown keys are ignored on input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Datagram {
    /// `Type`: what the datagram is.
    #[serde(rename = "Type")]
    pub kind: DatagramType,
    /// `Group`: the group it belongs to.
    #[serde(rename = "Group")]
    pub group: String,
    /// `Username`: who sent this datagram (the sequencer when it forwards).
    #[serde(rename = "Username")]
    pub username: String,
    /// `Content`: the application text (empty for control datagrams).
    #[serde(rename = "Content")]
    pub content: String,
    /// `SrcIp`: the sender's IP address as it registered it.
    #[serde(rename = "SrcIp")]
    pub src_ip: String,
    /// `SrcPort`: the sender's UDP port.
    #[serde(rename = "SrcPort")]
    pub src_port: u16,
    /// `Counter`: the sender's per-group message counter (the sequence number when the
    /// sequencer forwards; the highest counter in a Digest).
    #[serde(rename = "Counter")]
    pub counter: u64,
    /// `Origin`: the original author (differs from `username` when the sequencer forwards;
    /// in a Nack, the owner of the stream that has gaps).
    #[serde(rename = "Origin")]
    pub origin: String,
    /// `Proto`: in Hello and HelloAck, the newer protocol version the sender speaks.
    #[serde(rename = "Proto", default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<u32>,
    /// `Start`: in Hello and HelloAck, the first counter of the sender's stream the receiver
    /// should deliver (the explicit start point of the handshake).
    #[serde(rename = "Start", default, skip_serializing_if = "Option::is_none")]
    pub start: Option<u64>,
    /// `Final`: in Bye, the last counter the leaving member sent in the group.
    #[serde(rename = "Final", default, skip_serializing_if = "Option::is_none")]
    pub final_counter: Option<u64>,
    /// `Ranges`: in Nack and Unavailable, the counters concerned.
    #[serde(rename = "Ranges", default, skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<CounterRange>,
    /// `Data`: a payload that is not UTF-8 text, in standard base64, between newer peers
    /// only (`Content` is then empty). The report's peers never get it: a binary payload
    /// is refused for a group that has any.
    #[serde(rename = "Data", default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// `SentAt`: microseconds since the Unix epoch on the author's synchronized clock when the
    /// message was first sent, for one-way latency.
    #[serde(rename = "SentAt", default, skip_serializing_if = "Option::is_none")]
    pub sent_at_us: Option<u64>,
    /// `OriginCounter`: in the sequencer's copy of a message, the author's own counter for
    /// it, so members know how far each author's stream has been delivered (what a new
    /// sequencer must resume from after a crash).
    #[serde(
        rename = "OriginCounter",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub origin_counter: Option<u64>,
    /// `Epoch`: which incarnation of the sequencer a Hello or HelloAck concerns. From the
    /// sequencer, its own (new at every start); from a member greeting a sequencer, the one
    /// it delivered from before, which marks the Hello as a request to resume.
    #[serde(rename = "Epoch", default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// `Resume`: in a sequencer's HelloAck, the first counter of the member's own stream the
    /// sequencer still needs; the member sends it again from there.
    #[serde(rename = "Resume", default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<u64>,
    /// `Frontier`: in a member's Hello to a new sequencer, each author's highest counter the
    /// member has delivered in total order.
    #[serde(
        rename = "Frontier",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub frontier: BTreeMap<String, u64>,
    /// `Through`: in a member's Hello to a new sequencer, the last sequence number of the
    /// earlier sequencer's sequence (`Epoch`) it delivered or passed: what it lacks of what
    /// others delivered lies beyond it.
    #[serde(rename = "Through", default, skip_serializing_if = "Option::is_none")]
    pub through: Option<u64>,
    /// `Multicast`: in Hello and HelloAck, the IP multicast group (address and port) the
    /// sender also listens on, so that a sender whose every destination listens on the same
    /// one may send a message once to it instead of once to each. Absent: unicast only.
    #[serde(rename = "Multicast", default, skip_serializing_if = "Option::is_none")]
    pub multicast: Option<std::net::SocketAddr>,
}

impl Datagram {
    /// A datagram of the report's eight keys, with no newer key set.
    pub fn new(
        kind: DatagramType,
        group: impl Into<String>,
        username: impl Into<String>,
        content: impl Into<String>,
        src: std::net::SocketAddr,
        counter: u64,
        origin: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            group: group.into(),
            username: username.into(),
            content: content.into(),
            src_ip: src.ip().to_string(),
            src_port: src.port(),
            counter,
            origin: origin.into(),
            proto: None,
            start: None,
            final_counter: None,
            ranges: Vec::new(),
            data: None,
            sent_at_us: None,
            origin_counter: None,
            epoch: None,
            resume: None,
            frontier: BTreeMap::new(),
            through: None,
            multicast: None,
        }
    }

    /// The IP multicast group of a Hello or HelloAck (`Multicast`), if it is one: any other
    /// address is ignored, so that no member can turn others' traffic on a third party.
    pub fn multicast_group(&self) -> Option<std::net::SocketAddr> {
        self.multicast
            .filter(|a| a.ip().is_multicast() && a.port() != 0)
    }

    /// Sets the application payload: UTF-8 text goes in `Content`, where the report's peers
    /// read it; anything else in `Data` (base64), which only newer peers read. Returns
    /// whether the payload is text.
    pub fn set_payload(&mut self, payload: &[u8]) -> bool {
        use base64::Engine as _;
        match std::str::from_utf8(payload) {
            Ok(text) => {
                self.content = text.to_owned();
                self.data = None;
                true
            }
            Err(_) => {
                self.content.clear();
                self.data = Some(base64::engine::general_purpose::STANDARD.encode(payload));
                false
            }
        }
    }

    /// Takes the application payload out: `Data` decoded when present, else `Content`'s
    /// bytes (no copy). A `Data` that is not base64 is an error.
    pub fn take_payload(&mut self) -> Result<Vec<u8>, Error> {
        use base64::Engine as _;
        match self.data.take() {
            Some(data) => base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|e| Error::Invalid {
                    detail: format!("Data is not base64: {e}"),
                }),
            None => Ok(std::mem::take(&mut self.content).into_bytes()),
        }
    }

    /// Decodes one datagram, rejecting input over [`MAX_DATAGRAM_LEN`] before parsing.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        Self::decode_limited(bytes, MAX_DATAGRAM_LEN)
    }

    /// Decodes one datagram, rejecting input over `max` bytes before parsing.
    pub fn decode_limited(bytes: &[u8], max: usize) -> Result<Self, Error> {
        check_len(bytes, max)?;
        reject_array(bytes)?;
        let datagram: Self = serde_json::from_slice(bytes).map_err(classify)?;
        datagram.validate()?;
        Ok(datagram)
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.ranges.len() > MAX_RANGES {
            return Err(Error::Invalid {
                detail: format!(
                    "{} counter ranges, at most {MAX_RANGES} allowed",
                    self.ranges.len()
                ),
            });
        }
        if self.frontier.len() > MAX_FRONTIER {
            return Err(Error::Invalid {
                detail: format!(
                    "a frontier of {} authors, at most {MAX_FRONTIER} allowed",
                    self.frontier.len()
                ),
            });
        }
        if let Some(r) = self.ranges.iter().find(|r| r.first > r.last) {
            return Err(Error::Invalid {
                detail: format!("inverted counter range [{}, {}]", r.first, r.last),
            });
        }
        Ok(())
    }

    /// Appends the JSON encoding to `out` (so a caller can reuse one buffer).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        // Writing derived Serialize types into a Vec cannot fail.
        serde_json::to_writer(out, self).expect("serializing a datagram into memory");
    }

    /// The JSON encoding, or [`Error::Oversized`] if it exceeds `max` bytes (use
    /// [`LEGACY_DATAGRAM_LEN`] for groups with old peers).
    pub fn encode(&self, max: usize) -> Result<Vec<u8>, Error> {
        let mut out = Vec::with_capacity(256);
        self.encode_into(&mut out);
        check_len(&out, max)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_payloads_stay_in_content_and_others_go_in_data() {
        let mut d = app(1);
        assert!(d.set_payload("héllo".as_bytes()));
        let wire: serde_json::Value =
            serde_json::from_slice(&d.encode(4096).expect("fits")).expect("json");
        assert_eq!(wire["Content"], "héllo");
        assert!(wire.get("Data").is_none(), "the report's form");
        let binary = [0u8, 0xff, 0xfe, b'x'];
        assert!(!d.set_payload(&binary));
        let mut back = Datagram::decode(&d.encode(4096).expect("fits")).expect("decodes");
        assert_eq!(back.content, "");
        assert_eq!(back.take_payload().expect("base64"), binary);
        let mut bad = app(2);
        bad.data = Some("not base64!".into());
        assert!(bad.take_payload().is_err());
    }

    fn app(counter: u64) -> Datagram {
        Datagram::new(
            DatagramType::Application,
            "books",
            "ford",
            "hello there",
            "127.0.0.1:5001".parse().expect("address"),
            counter,
            "ford",
        )
    }

    #[test]
    fn encodes_exactly_the_eight_report_keys_when_no_newer_key_is_set() {
        let bytes = app(7).encode(LEGACY_DATAGRAM_LEN).expect("fits");
        let value: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        let mut keys: Vec<_> = value.as_object().expect("object").keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "Content", "Counter", "Group", "Origin", "SrcIp", "SrcPort", "Type", "Username"
            ]
        );
        assert_eq!(value["Type"], 2);
        assert_eq!(value["Counter"], 7);
        assert_eq!(value["SrcPort"], 5001);
    }

    #[test]
    fn round_trips_with_newer_keys() {
        let mut d = app(3);
        d.kind = DatagramType::Nack;
        d.ranges = vec![CounterRange::new(1, 2), CounterRange::new(5, 5)];
        d.proto = Some(PROTOCOL_VERSION);
        d.sent_at_us = Some(1_700_000_000_000_000);
        let bytes = d.encode(MAX_DATAGRAM_LEN).expect("fits");
        assert_eq!(Datagram::decode(&bytes), Ok(d));
    }

    #[test]
    fn round_trips_the_keys_of_sequencer_recovery_and_bounds_the_frontier() {
        let mut d = app(3);
        d.kind = DatagramType::Hello;
        d.epoch = Some(42);
        d.resume = Some(7);
        d.origin_counter = Some(9);
        d.frontier = [("ford".to_owned(), 5), ("zaphod".to_owned(), 2)].into();
        let bytes = d.encode(MAX_DATAGRAM_LEN).expect("fits");
        let text = String::from_utf8(bytes.clone()).expect("utf-8");
        assert!(
            text.contains(r#""Frontier":{"ford":5,"zaphod":2}"#),
            "{text}"
        );
        assert_eq!(Datagram::decode(&bytes), Ok(d.clone()));
        d.frontier = (0..=MAX_FRONTIER).map(|i| (format!("m{i}"), 1)).collect();
        let bytes = d.encode(MAX_DATAGRAM_LEN).expect("fits");
        assert!(matches!(
            Datagram::decode(&bytes),
            Err(Error::Invalid { .. })
        ));
    }

    #[test]
    fn accepts_pretty_printed_json_with_extra_keys_as_python_sends_it() {
        let text = r#"{
            "Type": 1,
            "Group": "distrib",
            "Username": "katerina",
            "Content": "",
            "SrcIp": "10.0.0.2",
            "SrcPort": 6000,
            "Counter": 0,
            "Origin": "katerina",
            "Colour": "blue"
        }"#;
        let d = Datagram::decode(text.as_bytes()).expect("valid");
        assert_eq!(d.kind, DatagramType::Hello);
        assert_eq!(d.username, "katerina");
        assert_eq!(d.proto, None);
    }

    #[test]
    fn says_which_field_is_missing() {
        let text = r#"{"Type":2,"Group":"g","Username":"u","Content":"c","SrcIp":"1.2.3.4","SrcPort":1,"Origin":"u"}"#;
        assert_eq!(
            Datagram::decode(text.as_bytes()),
            Err(Error::MissingField {
                field: "Counter".into()
            })
        );
    }

    #[test]
    fn says_when_a_field_has_the_wrong_type() {
        let text = r#"{"Type":2,"Group":"g","Username":"u","Content":"c","SrcIp":"1.2.3.4","SrcPort":1,"Counter":"7","Origin":"u"}"#;
        assert!(matches!(
            Datagram::decode(text.as_bytes()),
            Err(Error::WrongType { .. })
        ));
    }

    #[test]
    fn reports_unknown_type_codes_by_number() {
        let text = r#"{"Type":42,"Group":"g","Username":"u","Content":"c","SrcIp":"1.2.3.4","SrcPort":1,"Counter":7,"Origin":"u"}"#;
        assert_eq!(
            Datagram::decode(text.as_bytes()),
            Err(Error::UnknownType { code: 42 })
        );
    }

    #[test]
    fn rejects_out_of_range_ports_and_inverted_ranges() {
        let port = r#"{"Type":2,"Group":"g","Username":"u","Content":"c","SrcIp":"1.2.3.4","SrcPort":70000,"Counter":7,"Origin":"u"}"#;
        assert!(matches!(
            Datagram::decode(port.as_bytes()),
            Err(Error::Invalid { .. })
        ));
        let mut d = app(1);
        d.kind = DatagramType::Nack;
        d.ranges = vec![CounterRange::new(9, 3)];
        let bytes = d.encode(MAX_DATAGRAM_LEN).expect("fits");
        assert!(matches!(
            Datagram::decode(&bytes),
            Err(Error::Invalid { .. })
        ));
    }

    #[test]
    fn rejects_oversized_input_before_parsing() {
        // Not even JSON: the size check must come first.
        let junk = vec![b'x'; LEGACY_DATAGRAM_LEN + 1];
        assert_eq!(
            Datagram::decode_limited(&junk, LEGACY_DATAGRAM_LEN),
            Err(Error::Oversized {
                len: LEGACY_DATAGRAM_LEN + 1,
                max: LEGACY_DATAGRAM_LEN
            })
        );
    }

    #[test]
    fn refuses_to_encode_a_message_too_long_for_old_peers() {
        let mut d = app(1);
        d.content = "x".repeat(LEGACY_DATAGRAM_LEN);
        assert!(matches!(
            d.encode(LEGACY_DATAGRAM_LEN),
            Err(Error::Oversized { .. })
        ));
    }

    #[test]
    fn reports_malformed_json_as_syntax() {
        assert!(matches!(
            Datagram::decode(b"{\"Type\": 2,"),
            Err(Error::Syntax { .. })
        ));
        assert!(matches!(
            Datagram::decode(b"not json"),
            Err(Error::Syntax { .. })
        ));
    }
}
