//! Criterion benchmarks of a whole member core (`member::PeerCore`) receiving: compact
//! bundles of 100 messages from another member (FIFO) or from the sequencer (total order),
//! each admitted, ordered, delivered and acknowledged as in a group. Messages per second on
//! one core: a receiving member's share of a group's cost, without the event loop, the
//! sockets, the other processes or the machine's noise.
//!
//! Run: `cargo bench --bench member`.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use member::{CoreConfig, Mode, Output, PeerCore, SEQUENCER};
use proto::compact::{self, CompactWriter};
use sequencer::{NodeOutput, SequencerNode};

/// Messages in one bundle, as a sender flat out packs them.
const PER_BUNDLE: usize = 100;
const SEQUENCER_PORT: u16 = 5001;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn core(name: &str, port: u16, mode: Mode) -> PeerCore {
    PeerCore::new(CoreConfig {
        username: name.into(),
        addr: addr(port),
        tracker: addr(6000),
        mode,
        ordering: ordering::Config::default(),
        seals: Vec::new(),
        multicast: None,
    })
}

fn listed(name: &str, port: u16) -> proto::Member {
    proto::Member {
        ip: "127.0.0.1".into(),
        port,
        username: name.into(),
        uid: name.into(),
    }
}

/// Ford sends, arthur receives; in total order through the sequencer.
struct Group {
    ford: PeerCore,
    arthur: PeerCore,
    sequencer: Option<SequencerNode>,
    t: Instant,
    /// Datagrams on their way: (from, to, bytes).
    wire: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
}

impl Group {
    fn new(mode: Mode) -> Self {
        let t = Instant::now();
        let mut ford = core("ford", 6001, mode);
        let mut arthur = core("arthur", 6002, mode);
        let mut members = vec![listed("ford", 6001), listed("arthur", 6002)];
        let sequencer = (mode == Mode::Total).then(|| {
            members.push(listed(SEQUENCER, SEQUENCER_PORT));
            SequencerNode::new(addr(SEQUENCER_PORT), None, ordering::Config::default(), 1)
        });
        ford.join(t, "g", &members);
        arthur.join(t, "g", &members);
        let mut group = Self {
            ford,
            arthur,
            sequencer,
            t,
            wire: Vec::new(),
        };
        group.settle();
        assert_eq!(group.ford.members_heard("g"), 1, "the handshake is done");
        group
    }

    /// Takes what each party sent onto the wire.
    fn collect(&mut self) {
        for (core, from) in [(&mut self.ford, addr(6001)), (&mut self.arthur, addr(6002))] {
            while let Some(out) = core.poll_output() {
                if let Output::Transmit(tx) = out {
                    self.wire.push((from, tx.to, tx.bytes.to_vec()));
                }
            }
        }
        if let Some(seq) = &mut self.sequencer {
            while let Some(out) = seq.poll_output() {
                if let NodeOutput::Transmit(tx) = out {
                    self.wire
                        .push((addr(SEQUENCER_PORT), tx.to, tx.bytes.to_vec()));
                }
            }
        }
    }

    /// Hands every datagram on the wire to its destination until none is left.
    fn settle(&mut self) {
        loop {
            self.collect();
            if self.wire.is_empty() {
                return;
            }
            for (from, to, bytes) in std::mem::take(&mut self.wire) {
                self.deliver(from, to, &bytes);
            }
        }
    }

    fn deliver(&mut self, from: SocketAddr, to: SocketAddr, bytes: &[u8]) {
        let t = self.t;
        match to.port() {
            6001 => self.ford.handle_datagram(t, from, bytes),
            6002 => self.arthur.handle_datagram(t, from, bytes),
            SEQUENCER_PORT => {
                if let Some(seq) = &mut self.sequencer {
                    seq.handle_datagram(t, from, bytes);
                }
            }
            _ => {}
        }
    }

    /// Ford's next [`PER_BUNDLE`] messages as they reach arthur: one compact bundle (from
    /// ford, or from the sequencer), everything else of the exchange handed on.
    fn next_bundle(&mut self, n: usize) -> (SocketAddr, Vec<u8>) {
        for i in 0..PER_BUNDLE {
            let text =
                format!("message {n:06}/{i:03} of a bundle, 64 bytes or so, like the runner's");
            self.ford
                .send(self.t, "g", text.as_bytes(), 1_700_000_000_000_000)
                .expect("joined");
        }
        let mut writer = CompactWriter::new();
        let mut source = addr(6001);
        for _ in 0..3 {
            self.collect();
            for (from, to, bytes) in std::mem::take(&mut self.wire) {
                if to == addr(6002) && compact::is_compact(&bytes) {
                    assert!(writer.push(&bytes), "a bundle holds {PER_BUNDLE} messages");
                    source = from;
                } else {
                    self.deliver(from, to, &bytes);
                }
            }
        }
        (source, writer.finish().to_vec())
    }

    /// Arthur receives `bundle`; returns its deliveries. Its acknowledgements go on the wire
    /// for the next bundle's exchange.
    fn receive(&mut self, from: SocketAddr, bundle: &[u8]) -> usize {
        self.arthur.handle_datagram(self.t, from, bundle);
        let mut delivered = 0;
        while let Some(out) = self.arthur.poll_output() {
            match out {
                Output::Deliver(m) => {
                    delivered += 1;
                    black_box(m);
                }
                Output::Transmit(tx) => self.wire.push((addr(6002), tx.to, tx.bytes.to_vec())),
                _ => {}
            }
        }
        delivered
    }
}

fn receiving(c: &mut Criterion) {
    let mut group = c.benchmark_group("member_core_receives");
    group.throughput(Throughput::Elements(PER_BUNDLE as u64));
    for (name, mode) in [("fifo", Mode::Fifo), ("total", Mode::Total)] {
        let mut g = Group::new(mode);
        let mut n = 0;
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    n += 1;
                    let (from, bundle) = g.next_bundle(n);
                    let start = Instant::now();
                    let delivered = g.receive(from, &bundle);
                    spent += start.elapsed();
                    assert_eq!(
                        delivered, PER_BUNDLE,
                        "every message of bundle {n} delivered"
                    );
                }
                spent
            })
        });
    }
    group.finish();
}

criterion_group!(benches, receiving);
criterion_main!(benches);
