//! NTP on the wire (RFC 5905): the 48-byte packet, a server's answer to a client request,
//! and the client's four-timestamp estimate of offset and delay.

use crate::time::{Estimate, Nanos};

/// Seconds from 1900-01-01 (NTP's era 0) to 1970-01-01 (the Unix epoch).
const NTP_UNIX_DELTA: i64 = 2_208_988_800;

/// Length of an NTP packet without extension fields.
pub const PACKET_LEN: usize = 48;

/// Mode of a client request.
pub const MODE_CLIENT: u8 = 3;
/// Mode of a server response.
pub const MODE_SERVER: u8 = 4;

/// Why a packet was refused; nothing was answered or concluded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NtpError {
    /// Shorter than 48 bytes.
    #[error("an NTP packet has 48 bytes, this one {0}")]
    Short(usize),
    /// Not the mode expected (a server answers only client requests).
    #[error("NTP mode {0} where {1} was expected")]
    Mode(u8, u8),
    /// A version this implementation does not speak.
    #[error("NTP version {0} is not supported")]
    Version(u8),
    /// The answer does not echo our request's transmit time: not an answer to us.
    #[error("the answer's origin timestamp does not match our request")]
    Bogus,
    /// The server is not synchronized (leap indicator 3, or stratum 0: a kiss-o'-death).
    #[error("the server is not synchronized (stratum {stratum}, leap {leap})")]
    Unsynchronized {
        /// Its stratum.
        stratum: u8,
        /// Its leap indicator.
        leap: u8,
    },
}

/// A timestamp in NTP's 64-bit format: seconds since 1900 and a 32-bit binary fraction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NtpTime(pub u64);

impl NtpTime {
    /// The NTP timestamp of a Unix time.
    pub fn from_nanos(t: Nanos) -> Self {
        let secs = t.0.div_euclid(1_000_000_000) + NTP_UNIX_DELTA;
        let frac = ((t.0.rem_euclid(1_000_000_000) as u128) << 32) / 1_000_000_000;
        Self(((secs as u64) << 32) | frac as u64)
    }

    /// The Unix time of this timestamp (era 0, that is until 2036).
    pub fn to_nanos(self) -> Nanos {
        let secs = (self.0 >> 32) as i64 - NTP_UNIX_DELTA;
        let frac = ((self.0 & 0xffff_ffff) as u128 * 1_000_000_000 + (1 << 31)) >> 32;
        Nanos(secs * 1_000_000_000 + frac as i64)
    }
}

/// The fixed part of an NTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Packet {
    /// Leap indicator (3: clock not synchronized).
    pub leap: u8,
    /// Protocol version (1–4).
    pub version: u8,
    /// Association mode (3 client, 4 server).
    pub mode: u8,
    /// Distance from a reference clock (1 primary; 16 unsynchronized; 0 kiss-o'-death).
    pub stratum: u8,
    /// Poll interval, log2 seconds.
    pub poll: i8,
    /// Clock precision, log2 seconds.
    pub precision: i8,
    /// Round trip to the reference, NTP short format.
    pub root_delay: u32,
    /// Dispersion to the reference, NTP short format.
    pub root_dispersion: u32,
    /// Reference identifier (for stratum 1, four ASCII letters).
    pub reference_id: [u8; 4],
    /// When the server's clock was last set.
    pub reference: NtpTime,
    /// The client's transmit time, echoed (T1).
    pub origin: NtpTime,
    /// When the server received the request (T2).
    pub receive: NtpTime,
    /// When the packet left its sender (T3 in an answer, T1 in a request).
    pub transmit: NtpTime,
}

impl Packet {
    /// Decodes the first 48 bytes (extension fields, if any, are ignored).
    pub fn decode(b: &[u8]) -> Result<Self, NtpError> {
        if b.len() < PACKET_LEN {
            return Err(NtpError::Short(b.len()));
        }
        let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| (u64::from(u32_at(i)) << 32) | u64::from(u32_at(i + 4));
        Ok(Self {
            leap: b[0] >> 6,
            version: (b[0] >> 3) & 7,
            mode: b[0] & 7,
            stratum: b[1],
            poll: b[2] as i8,
            precision: b[3] as i8,
            root_delay: u32_at(4),
            root_dispersion: u32_at(8),
            reference_id: [b[12], b[13], b[14], b[15]],
            reference: NtpTime(u64_at(16)),
            origin: NtpTime(u64_at(24)),
            receive: NtpTime(u64_at(32)),
            transmit: NtpTime(u64_at(40)),
        })
    }

    /// The 48 bytes on the wire.
    pub fn encode(&self) -> [u8; PACKET_LEN] {
        let mut b = [0u8; PACKET_LEN];
        b[0] = (self.leap << 6) | ((self.version & 7) << 3) | (self.mode & 7);
        b[1] = self.stratum;
        b[2] = self.poll as u8;
        b[3] = self.precision as u8;
        b[4..8].copy_from_slice(&self.root_delay.to_be_bytes());
        b[8..12].copy_from_slice(&self.root_dispersion.to_be_bytes());
        b[12..16].copy_from_slice(&self.reference_id);
        for (i, t) in [self.reference, self.origin, self.receive, self.transmit]
            .into_iter()
            .enumerate()
        {
            b[16 + 8 * i..24 + 8 * i].copy_from_slice(&t.0.to_be_bytes());
        }
        b
    }
}

/// Whether `bytes` look like an NTP client request (so one UDP port can carry both NTP and
/// the messenger's JSON, whose first byte is `{`).
pub fn is_request(bytes: &[u8]) -> bool {
    bytes.len() >= PACKET_LEN
        && bytes[0] & 7 == MODE_CLIENT
        && (1..=4).contains(&((bytes[0] >> 3) & 7))
}

/// A server's answer to `request`, received at `received` and sent at `transmit` on the
/// server's clock. The server claims `stratum` (1: it is the reference, `LOCL`).
pub fn answer(
    request: &[u8],
    received: Nanos,
    transmit: Nanos,
    stratum: u8,
) -> Result<[u8; PACKET_LEN], NtpError> {
    let req = Packet::decode(request)?;
    if req.mode != MODE_CLIENT {
        return Err(NtpError::Mode(req.mode, MODE_CLIENT));
    }
    if !(1..=4).contains(&req.version) {
        return Err(NtpError::Version(req.version));
    }
    Ok(Packet {
        leap: 0,
        version: req.version,
        mode: MODE_SERVER,
        stratum,
        poll: req.poll.clamp(4, 17),
        // 2^-20 s, about a microsecond: the resolution the server timestamps with.
        precision: -20,
        root_delay: 0,
        // 2^-16 s: a conservative dispersion for a local clock.
        root_dispersion: 1,
        reference_id: *b"LOCL",
        reference: NtpTime::from_nanos(received),
        origin: req.transmit,
        receive: NtpTime::from_nanos(received),
        transmit: NtpTime::from_nanos(transmit),
    }
    .encode())
}

/// A client request whose transmit timestamp is `sent` (our clock); the answer must echo it.
pub fn request(sent: Nanos) -> [u8; PACKET_LEN] {
    Packet {
        version: 4,
        mode: MODE_CLIENT,
        poll: 6,
        precision: -20,
        transmit: NtpTime::from_nanos(sent),
        ..Packet::default()
    }
    .encode()
}

/// The four-timestamp estimate from an answer: offset = ((T2 − T1) + (T3 − T4)) / 2 and
/// delay = (T4 − T1) − (T3 − T2); the true offset lies within ± delay / 2.
pub fn estimate(answer: &[u8], sent: Nanos, received: Nanos) -> Result<Estimate, NtpError> {
    let p = Packet::decode(answer)?;
    if p.mode != MODE_SERVER {
        return Err(NtpError::Mode(p.mode, MODE_SERVER));
    }
    if p.origin != NtpTime::from_nanos(sent) {
        return Err(NtpError::Bogus);
    }
    if p.leap == 3 || p.stratum == 0 || p.stratum > 15 {
        return Err(NtpError::Unsynchronized {
            stratum: p.stratum,
            leap: p.leap,
        });
    }
    let (t1, t2, t3, t4) = (sent, p.receive.to_nanos(), p.transmit.to_nanos(), received);
    let offset = (t2.since(t1) + t3.since(t4)) / 2;
    let delay = (t4.since(t1) - t3.since(t2)).max(0);
    Ok(Estimate {
        offset_ns: offset,
        // The timestamps are rounded to a nanosecond on each side.
        bound_ns: delay - delay / 2 + 2,
        rtt_ns: delay,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn timestamps_round_trip_to_the_nanosecond() {
        for ns in [0i64, 1, 999_999_999, 1_700_000_000_123_456_789, -1_000] {
            let back = NtpTime::from_nanos(Nanos(ns)).to_nanos();
            assert!((back.0 - ns).abs() <= 1, "{ns} came back as {}", back.0);
        }
        // The Unix epoch is 2,208,988,800 s after NTP's.
        assert_eq!(NtpTime::from_nanos(Nanos(0)).0 >> 32, 2_208_988_800);
    }

    #[test]
    fn a_server_answers_a_client_and_the_client_estimates() {
        let t1 = Nanos(1_700_000_000_000_000_000);
        let req = request(t1);
        assert!(is_request(&req));
        assert!(!is_request(
            b"{\"Type\": 7, \"Content\": {}} padding padding padding"
        ));
        // The server's clock is 5 ms ahead; 100 µs each way.
        let t2 = t1.plus(100_000 + 5_000_000);
        let t3 = t2.plus(20_000);
        let ans = answer(&req, t2, t3, 1).expect("a client request");
        let p = Packet::decode(&ans).expect("valid");
        assert_eq!(
            (p.mode, p.version, p.stratum, p.leap),
            (MODE_SERVER, 4, 1, 0)
        );
        assert_eq!(&p.reference_id, b"LOCL");
        let t4 = t3.plus(100_000 - 5_000_000);
        let e = estimate(&ans, t1, t4).expect("our answer");
        assert!((e.offset_ns - 5_000_000).abs() <= 2, "{e:?}");
        assert!((e.rtt_ns - 200_000).abs() <= 2);
        // An answer to someone else's request is refused.
        assert_eq!(estimate(&ans, t1.plus(1), t4), Err(NtpError::Bogus));
    }

    #[test]
    fn refuses_what_is_not_a_client_request() {
        assert_eq!(
            answer(&[0u8; 10], Nanos(0), Nanos(0), 1),
            Err(NtpError::Short(10))
        );
        let mut server = request(Nanos(0));
        server[0] = (4 << 3) | MODE_SERVER;
        assert_eq!(
            answer(&server, Nanos(0), Nanos(0), 1),
            Err(NtpError::Mode(4, 3))
        );
    }

    proptest! {
        /// With any offset and any asymmetry inside the round trip, the true offset lies
        /// within the bound.
        #[test]
        fn the_true_offset_is_within_half_the_delay(
            offset in -2_000_000_000i64..2_000_000_000,
            out in 0i64..20_000_000,
            back in 0i64..20_000_000,
            hold in 0i64..1_000_000,
        ) {
            let t1 = Nanos(1_700_000_000_000_000_000);
            let t2 = t1.plus(out + offset);
            let t3 = t2.plus(hold);
            let t4 = t3.plus(back - offset);
            let ans = answer(&request(t1), t2, t3, 1).unwrap();
            let e = estimate(&ans, t1, t4).unwrap();
            prop_assert!((e.offset_ns - offset).abs() <= e.bound_ns, "{e:?} vs {offset}");
        }
    }
}
