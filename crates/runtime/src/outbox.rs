//! Datagrams on their way out of a non-blocking UDP socket, bundled and burst-ordered.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use mio::net::UdpSocket;
use proto::bundle::{BundleWriter, LAN_BUNDLE_LEN, LOOPBACK_BUNDLE_LEN};
use proto::compact::{self, CompactWriter};
use seal::Sealer;

/// The datagrams waiting for one destination.
#[derive(Debug)]
struct Lane {
    to: SocketAddr,
    queue: VecDeque<Pending>,
}

/// A datagram waiting in its destination's lane.
#[derive(Debug)]
struct Pending {
    bytes: Arc<[u8]>,
    /// The destination reads bundles.
    bundle: bool,
    /// Seal it (and the bundle it goes in) with this.
    seal: Option<Arc<Sealer>>,
}

impl Pending {
    /// Whether `other`, of the same lane, may go in the same bundle: same encoding (JSON or
    /// compact), and sealed alike.
    fn bundles_with(&self, other: &Pending) -> bool {
        other.bundle
            && compact::is_compact(&other.bytes) == compact::is_compact(&self.bytes)
            && match (&self.seal, &other.seal) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}

/// What an outbox sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxStats {
    /// UDP datagrams sent (a bundle counts once).
    pub datagrams: u64,
    /// Of those, bundles of more than one datagram.
    pub bundles: u64,
    /// Datagrams that travelled inside bundles.
    pub bundled: u64,
    /// Of the bundles, those packed for the member before and sent again as they were (a
    /// multicast's).
    pub repeated: u64,
}

/// Datagrams waiting for a non-blocking socket.
///
/// The event loop queues what a turn produces and [`flush`](Self::flush)es at the end of the
/// turn, so a lone message goes out at once, while what piled up meanwhile (a backlog, a
/// batch of received datagrams answered together) goes out *per destination, back to back*:
/// each receiver is woken once for its share. Consecutive datagrams for a destination that
/// reads bundles are packed into one, up to the bundle limit; datagrams of a sealed group are
/// bundled only with others of that group, and the whole UDP datagram is sealed (the limit
/// holds for it sealed). What the socket refuses with
/// "would block" stays queued, in order, for the next flush (when the socket is writable);
/// one multicast shares one buffer among its destinations.
#[derive(Debug, Default)]
pub struct Outbox {
    /// What waits, per destination in the order first queued to; each in the order queued.
    lanes: Vec<Lane>,
    /// The lane queued to last (a multicast queues to every lane in turn, a backlog to one).
    last: usize,
    /// Datagrams waiting in all lanes.
    waiting: usize,
    writer: BundleWriter,
    compact: CompactWriter,
    /// The bundle packed last, to send again as it is to the next member of a multicast.
    last_bundle: LastBundle,
    /// The sealed form of the datagram being sent.
    sealed: Vec<u8>,
    /// Largest bundle; `None`: by destination (16 KiB on loopback, 1472 bytes elsewhere);
    /// `Some(0)`: no bundling.
    max_bundle: Option<usize>,
    /// Largest bundle to an IP multicast group (whose address does not tell its path), if
    /// not [`LAN_BUNDLE_LEN`].
    multicast_limit: Option<usize>,
    stats: OutboxStats,
}

impl Outbox {
    /// An empty outbox that bundles with the default limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the largest bundle in bytes for every destination (0: never bundle).
    pub fn with_max_bundle(mut self, max: Option<usize>) -> Self {
        self.max_bundle = max.map(|m| m.min(proto::MAX_DATAGRAM_LEN));
        self
    }

    /// Sets the largest bundle by default to IP multicast groups, whose address does not
    /// tell their path: [`LOOPBACK_BUNDLE_LEN`] when they go out on the loopback interface.
    pub fn with_multicast_limit(mut self, max: usize) -> Self {
        self.multicast_limit = Some(max.min(proto::MAX_DATAGRAM_LEN));
        self
    }

    /// Queues `bytes` for `to`; `bundle` says whether `to` reads bundles, `seal` what seals
    /// it (a datagram of a sealed group). Nothing is sent before [`flush`](Self::flush).
    pub fn queue(
        &mut self,
        to: SocketAddr,
        bytes: Arc<[u8]>,
        bundle: bool,
        seal: Option<Arc<Sealer>>,
    ) {
        let lane = match self.lanes.get(self.last) {
            Some(lane) if lane.to == to => self.last,
            _ => match self.lanes.iter().position(|l| l.to == to) {
                Some(i) => i,
                None => {
                    self.lanes.push(Lane {
                        to,
                        queue: VecDeque::new(),
                    });
                    self.lanes.len() - 1
                }
            },
        };
        self.last = lane;
        self.lanes[lane].queue.push_back(Pending {
            bytes,
            bundle,
            seal,
        });
        self.waiting += 1;
    }

    /// Sends `bytes` to `to` now if nothing waits, else queues it behind what waits. Never
    /// bundled (for the tracker and other single datagrams).
    pub fn send(&mut self, udp: &UdpSocket, to: SocketAddr, bytes: Arc<[u8]>) {
        self.queue(to, bytes, false, None);
        if self.waiting == 1 {
            self.flush(udp);
        }
    }

    fn limit(&self, to: SocketAddr) -> usize {
        self.max_bundle.unwrap_or_else(|| {
            if to.ip().is_loopback() {
                LOOPBACK_BUNDLE_LEN
            } else if to.ip().is_multicast() {
                self.multicast_limit.unwrap_or(LAN_BUNDLE_LEN)
            } else {
                LAN_BUNDLE_LEN
            }
        })
    }

    /// Sends what waits, grouped by destination, until the socket would block. A datagram
    /// the socket refuses for another reason (a destination that is gone) is dropped and
    /// logged.
    pub fn flush(&mut self, udp: &UdpSocket) {
        let mut lanes = std::mem::take(&mut self.lanes);
        for lane in &mut lanes {
            if !self.flush_lane(udp, lane) {
                break;
            }
        }
        lanes.retain(|l| !l.queue.is_empty());
        self.lanes = lanes;
        self.last = 0;
    }

    /// Sends what waits in `lane`; false if the socket would block.
    fn flush_lane(&mut self, udp: &UdpSocket, lane: &mut Lane) -> bool {
        let to = lane.to;
        while let Some(first) = lane.queue.front() {
            let max = match (self.limit(to), &first.seal) {
                (0, _) => 0,
                (max, Some(_)) => max.saturating_sub(seal::OVERHEAD).max(1),
                (max, None) => max,
            };
            // How many of the datagrams at the front go in one bundle.
            let mut take = 1;
            let is_compact = compact::is_compact(&first.bytes);
            let repeated = match first.bundle {
                true => self.last_bundle.repeats(&lane.queue, max),
                false => None,
            };
            if let Some(n) = repeated {
                // What a multicast queued for the previous member, in the same order: its
                // bundle, already packed.
                take = n;
            } else if first.bundle {
                take = match is_compact {
                    true => pack(&mut self.compact, &lane.queue, max),
                    false => pack(&mut self.writer, &lane.queue, max),
                };
            }
            if take > 1 && repeated.is_none() {
                let packed = match is_compact {
                    true => self.compact.finish(),
                    false => self.writer.finish(),
                };
                self.last_bundle.remember(&lane.queue, take, max, packed);
            }
            let plain: &[u8] = if take > 1 {
                &self.last_bundle.bytes
            } else {
                let _ = self.writer.finish();
                let _ = self.compact.finish();
                &first.bytes
            };
            let result = match &first.seal {
                Some(sealer) => {
                    sealer.seal_into(plain, to, &mut self.sealed);
                    udp.send_to(&self.sealed, to)
                }
                None => udp.send_to(plain, to),
            };
            match result {
                Ok(_) => {
                    self.stats.datagrams += 1;
                    if take > 1 {
                        self.stats.bundles += 1;
                        self.stats.bundled += take as u64;
                    }
                    if repeated.is_some() {
                        self.stats.repeated += 1;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => log::debug!("cannot send to {to}: {e}"),
            }
            lane.queue.drain(..take);
            self.waiting -= take;
        }
        true
    }

    /// Datagrams waiting.
    pub fn len(&self) -> usize {
        self.waiting
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.waiting == 0
    }

    /// What was sent so far.
    pub fn stats(&self) -> OutboxStats {
        self.stats
    }
}

/// The bundle packed last: which datagrams (each a buffer a multicast shares among its
/// destinations; held, so that no other datagram can take its place in memory) in which
/// order, sealed with what, within which limit, and its bytes (before sealing).
#[derive(Debug, Default)]
struct LastBundle {
    items: Vec<Arc<[u8]>>,
    seal: Option<Arc<Sealer>>,
    max: usize,
    bytes: Vec<u8>,
}

impl LastBundle {
    /// How many datagrams at the front of `queue` are the last bundle's, if all of them are,
    /// in its order, sealed alike and under the same limit.
    fn repeats(&self, queue: &VecDeque<Pending>, max: usize) -> Option<usize> {
        let n = self.items.len();
        let first = queue.front()?;
        let same_seal = match (&self.seal, &first.seal) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        (n > 1
            && self.max == max
            && same_seal
            && queue.len() >= n
            && queue
                .iter()
                .zip(&self.items)
                .all(|(p, item)| p.bundle && Arc::ptr_eq(&p.bytes, item)))
        .then_some(n)
    }

    fn remember(&mut self, queue: &VecDeque<Pending>, take: usize, max: usize, bytes: &[u8]) {
        self.items.clear();
        self.items
            .extend(queue.iter().take(take).map(|p| p.bytes.clone()));
        self.seal = queue.front().and_then(|p| p.seal.clone());
        self.max = max;
        self.bytes.clear();
        self.bytes.extend_from_slice(bytes);
    }
}

/// A bundle being built, JSON or compact.
trait Packer {
    /// Whether `item` still fits within `max` bytes.
    fn fits(&self, item: &[u8], max: usize) -> bool;
    /// Appends `item`; false if it cannot go in this kind of bundle.
    fn push(&mut self, item: &[u8]) -> bool;
}

impl Packer for BundleWriter {
    fn fits(&self, item: &[u8], max: usize) -> bool {
        BundleWriter::fits(self, item, max)
    }

    fn push(&mut self, item: &[u8]) -> bool {
        BundleWriter::push(self, item);
        true
    }
}

impl Packer for CompactWriter {
    fn fits(&self, item: &[u8], max: usize) -> bool {
        CompactWriter::fits(self, item, max)
    }

    fn push(&mut self, item: &[u8]) -> bool {
        CompactWriter::push(self, item)
    }
}

/// Pushes the datagrams at the front of `queue` that may share a bundle with the first, at
/// most `max` bytes, into `writer`; returns how many it took.
fn pack(writer: &mut impl Packer, queue: &VecDeque<Pending>, max: usize) -> usize {
    let Some(first) = queue.front() else {
        return 0;
    };
    if first.bytes.len() >= max || !writer.push(&first.bytes) {
        return 1;
    }
    let mut take = 1;
    for p in queue.iter().skip(1) {
        if !first.bundles_with(p) || !writer.fits(&p.bytes, max) || !writer.push(&p.bytes) {
            break;
        }
        take += 1;
    }
    take
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket() -> UdpSocket {
        UdpSocket::bind("127.0.0.1:0".parse().expect("addr")).expect("bind")
    }

    fn receive_all(udp: &std::net::UdpSocket) -> Vec<Vec<u8>> {
        udp.set_read_timeout(Some(std::time::Duration::from_millis(200)))
            .expect("timeout");
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = udp.recv(&mut buf) {
            got.push(buf[..n].to_vec());
        }
        got
    }

    #[test]
    fn queued_datagrams_go_out_per_destination_bundled_where_read_and_in_order() {
        let udp = socket();
        let a = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let b = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let (to_a, to_b) = (a.local_addr().expect("a"), b.local_addr().expect("b"));
        let item = |n: u32| -> Arc<[u8]> { Arc::from(format!("{{\"n\":{n}}}").into_bytes()) };
        let mut out = Outbox::new().with_max_bundle(Some(30));
        for n in 0..5 {
            // A reads bundles, B does not: interleaved as a multicast would queue them.
            out.queue(to_a, item(n), true, None);
            out.queue(to_b, item(n), false, None);
        }
        out.flush(&udp);
        assert!(out.is_empty());
        let text = |d: &Vec<u8>| String::from_utf8(d.clone()).expect("utf8");
        let got_a: Vec<String> = receive_all(&a).iter().map(text).collect();
        let got_b: Vec<String> = receive_all(&b).iter().map(text).collect();
        // Each `{"n":N}` is 7 bytes: three fit in 30 with the brackets and commas.
        assert_eq!(
            got_a,
            ["[{\"n\":0},{\"n\":1},{\"n\":2}]", "[{\"n\":3},{\"n\":4}]"]
        );
        assert_eq!(
            got_b,
            (0..5).map(|n| format!("{{\"n\":{n}}}")).collect::<Vec<_>>()
        );
        let stats = out.stats();
        assert_eq!((stats.datagrams, stats.bundles, stats.bundled), (7, 2, 5));
    }

    #[test]
    fn compact_messages_are_packed_into_runs_and_never_with_json() {
        use proto::compact::{CompactDatagram, Item, RunHeader, encode_into};
        let udp = socket();
        let a = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = a.local_addr().expect("a");
        let message = |sender: &str, counter: u64| -> Arc<[u8]> {
            let header = RunHeader {
                group: "g",
                sender,
                addr: to,
            };
            let item = Item {
                counter,
                sent_at_us: None,
                origin_counter: None,
                epoch: None,
                origin: None,
                payload: b"hi",
            };
            let mut out = Vec::new();
            encode_into(&mut out, &header, &item).expect("encodes");
            Arc::from(out)
        };
        let mut out = Outbox::new();
        out.queue(to, message("ford", 1), true, None);
        out.queue(to, message("ford", 2), true, None);
        out.queue(to, message("zaphod", 1), true, None);
        out.queue(to, Arc::from(&b"{\"json\":1}"[..]), true, None);
        out.queue(to, message("ford", 3), true, None);
        out.flush(&udp);
        let got = receive_all(&a);
        assert_eq!(got.len(), 3, "compact, JSON, compact");
        let first = CompactDatagram::parse(&got[0]).expect("compact");
        let runs: Vec<(&str, usize)> = first.runs().map(|r| (r.header.sender, r.len())).collect();
        assert_eq!(runs, [("ford", 2), ("zaphod", 1)]);
        assert_eq!(got[1], b"{\"json\":1}");
        assert_eq!(CompactDatagram::parse(&got[2]).map(|d| d.len()), Ok(1));
    }

    #[test]
    fn a_multicast_bundle_packed_once_goes_to_every_member_that_queued_the_same() {
        let udp = socket();
        let members: Vec<std::net::UdpSocket> = (0..3)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("bind"))
            .collect();
        let to: Vec<SocketAddr> = members
            .iter()
            .map(|m| m.local_addr().expect("addr"))
            .collect();
        let items: Vec<Arc<[u8]>> = (0..5)
            .map(|n| Arc::from(format!("{{\"n\":{n}}}").into_bytes()))
            .collect();
        let mut out = Outbox::new();
        for item in &items {
            for (i, addr) in to.iter().enumerate() {
                // The last member misses the third datagram: its bundle differs.
                if i == 2 && item[5] == b'2' {
                    continue;
                }
                out.queue(*addr, item.clone(), true, None);
            }
        }
        out.flush(&udp);
        let got: Vec<Vec<Vec<u8>>> = members.iter().map(receive_all).collect();
        let all = b"[{\"n\":0},{\"n\":1},{\"n\":2},{\"n\":3},{\"n\":4}]".to_vec();
        let without = b"[{\"n\":0},{\"n\":1},{\"n\":3},{\"n\":4}]".to_vec();
        assert_eq!(got, [vec![all.clone()], vec![all], vec![without]]);
        assert_eq!(
            out.stats().repeated,
            1,
            "the second member's bundle was the first's"
        );
        // A later multicast of other datagrams is packed afresh.
        let later: Arc<[u8]> = Arc::from(&b"{\"n\":5}"[..]);
        for addr in &to {
            out.queue(*addr, later.clone(), true, None);
            out.queue(*addr, items[0].clone(), true, None);
        }
        out.flush(&udp);
        for m in &members {
            assert_eq!(receive_all(m), [b"[{\"n\":5},{\"n\":0}]".to_vec()]);
        }
    }

    #[test]
    fn a_lone_datagram_is_never_wrapped_and_bundling_can_be_off() {
        let udp = socket();
        let a = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = a.local_addr().expect("a");
        let mut out = Outbox::new();
        out.queue(to, Arc::from(&b"{\"alone\":1}"[..]), true, None);
        out.flush(&udp);
        let mut off = Outbox::new().with_max_bundle(Some(0));
        for _ in 0..3 {
            off.queue(to, Arc::from(&b"{\"x\":1}"[..]), true, None);
        }
        off.flush(&udp);
        let got = receive_all(&a);
        assert_eq!(got[0], b"{\"alone\":1}");
        assert_eq!(got.len(), 4);
        assert!(got[1..].iter().all(|d| d == b"{\"x\":1}"));
    }
}
