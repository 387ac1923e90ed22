//! The report's two experiments on a local system: Experiment 1 (five peers, each sending
//! its own file at once) and Experiment 2 (one sender, groups of 2, 4, 8 and 16 peers), in
//! FIFO and in total order.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::baseline::Baseline;
use crate::system::System;

/// Delivery order of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// FIFO.
    Fifo,
    /// FIFO and total, through the sequencer.
    Total,
}

impl Order {
    /// The name used in tables.
    pub fn name(self) -> &'static str {
        match self {
            Order::Fifo => "FIFO",
            Order::Total => "total",
        }
    }
}

/// One group, its members running scripts.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// 1 or 2.
    pub experiment: u8,
    /// Delivery order.
    pub order: Order,
    /// Members of the group.
    pub peers: usize,
    /// How many of them send.
    pub senders: usize,
    /// Messages each sender sends.
    pub messages: usize,
    /// Length of each message's text, in bytes.
    pub payload: usize,
    /// Messages per second per sender (`None`: as fast as it can).
    pub rate: Option<f64>,
    /// The peers' flow-control window (`None`: their default).
    pub flow_window: Option<u64>,
    /// Largest bundle of the peers and the sequencer (`None`: their default; 0: off).
    pub bundle_bytes: Option<usize>,
    /// The group is sealed: the sequencer and every peer hold its key, and every datagram
    /// of the group is sealed.
    pub sealed: bool,
    /// Where the processes run.
    pub hosts: Hosts,
    /// The peers also listen on an IP multicast group (a fresh one per run, TTL 1, on their
    /// own interface: loopback, or the namespaces' bridge), so a sender whose members all
    /// listen there sends each bundle once; else unicast only.
    pub multicast: bool,
}

/// Where a run's processes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Hosts {
    /// All on this machine's 127.0.0.1.
    Loopback,
    /// Each on a host of its own: network namespaces on one bridge, MTU 1,500 (see
    /// [`crate::lan`]); needs root.
    Netns,
}

impl Plan {
    /// The order, and "sealed" for a sealed group: how tables name the run.
    pub fn label(&self) -> String {
        let mut label = self.order.name().to_owned();
        if self.sealed {
            label.push_str(" sealed");
        }
        if self.hosts == Hosts::Netns {
            label.push_str(" hosts");
        }
        if self.multicast {
            label.push_str(" multicast");
        }
        label
    }
}

/// The figures of one run, over all its peers.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Every peer delivered every message.
    pub complete: bool,
    /// Deliveries over all peers.
    pub delivered: u64,
    /// Deliveries expected over all peers.
    pub expected: u64,
    /// The lowest delivered-per-second of any peer (the slowest receiver sets the pace).
    pub slowest_throughput: f64,
    /// The median of the peers' median one-way latencies (µs).
    pub latency_p50_us: u64,
    /// The highest of the peers' 99th-percentile latencies (µs).
    pub latency_p99_us: u64,
    /// UDP datagrams sent by the peers per message sent (the sequencer's are not counted).
    pub datagrams_per_message: f64,
    /// Messages (application and control) per UDP datagram the peers sent: above 1 when
    /// bundled.
    pub messages_per_datagram: f64,
    /// Messages to the tracker, all peers together.
    pub tracker_messages: u64,
    /// Retransmission requests, all peers together.
    pub nacks: u64,
    /// Wall-clock time of the run, start of the system to the last peer's end (ms).
    pub wall_ms: f64,
    /// The slowest receiver's rate as a share of the raw-UDP baseline's lossless rate for
    /// the same group size, when it was measured.
    pub of_baseline: Option<f64>,
}

/// A run: its plan, every peer's measurements, and the summary.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// What was run.
    pub plan: Plan,
    /// Each peer's measurements, as it printed them.
    pub peers: Vec<Value>,
    /// The figures over all peers.
    pub summary: Summary,
    /// When the plan was run several rounds: every round's figures and their spread (this
    /// run is then the round of median throughput).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repeated: Option<Repeated>,
}

impl Run {
    /// The latency p50 (µs) to show for this run: the median over its rounds when it was
    /// repeated (the round of median throughput need not be the round of median latency),
    /// else its own.
    pub fn latency_p50_us(&self) -> f64 {
        self.repeated
            .as_ref()
            .map_or(self.summary.latency_p50_us as f64, |r| {
                r.latency_p50_us.median
            })
    }

    /// The latency p99 (µs) to show for this run, like [`latency_p50_us`](Self::latency_p50_us).
    pub fn latency_p99_us(&self) -> f64 {
        self.repeated
            .as_ref()
            .map_or(self.summary.latency_p99_us as f64, |r| {
                r.latency_p99_us.median
            })
    }
}

/// The median and the range of one figure over rounds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    /// The median.
    pub median: f64,
    /// The lowest.
    pub min: f64,
    /// The highest.
    pub max: f64,
}

impl Spread {
    /// The spread of `values` (not empty).
    pub fn of(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        Self {
            median: values[values.len() / 2],
            min: values[0],
            max: values[values.len() - 1],
        }
    }
}

/// A plan run several rounds after a warm-up that is not counted.
#[derive(Debug, Clone, Serialize)]
pub struct Repeated {
    /// Rounds counted.
    pub rounds: usize,
    /// Messages per sender in each counted round (long enough for a round of about a
    /// second, from the warm-up's rate).
    pub messages: usize,
    /// The slowest receiver's deliveries per second.
    pub throughput: Spread,
    /// Latency p50 (µs).
    pub latency_p50_us: Spread,
    /// Latency p99 (µs).
    pub latency_p99_us: Spread,
    /// The warm-up round's figures.
    pub warmup: Summary,
    /// Every counted round's figures, in order.
    pub every_round: Vec<Summary>,
}

/// Runs `plan` once to warm up, then `rounds` times with enough messages per sender that a
/// round lasts at least `min_round` at the warm-up's rate (and no fewer than the plan's);
/// returns the round of median throughput, carrying every round's figures.
pub fn repeat(
    bin: &Path,
    plan: &Plan,
    rounds: usize,
    min_round: Duration,
    stop: &Arc<AtomicBool>,
    mut progress: impl FnMut(usize, &Run),
) -> Result<Run, String> {
    let warmup = run(bin, plan, stop)?;
    progress(0, &warmup);
    let needed = (warmup.summary.slowest_throughput * min_round.as_secs_f64() * 1.1) as usize;
    let mut plan = plan.clone();
    plan.messages = plan.messages.max(needed.min(MAX_ROUND_MESSAGES));
    let mut runs = Vec::new();
    for round in 1..=rounds.max(1) {
        let r = run(bin, &plan, stop)?;
        progress(round, &r);
        runs.push(r);
    }
    let spread = |f: fn(&Summary) -> f64| Spread::of(runs.iter().map(|r| f(&r.summary)).collect());
    let throughput = spread(|s| s.slowest_throughput);
    let repeated = Repeated {
        rounds: runs.len(),
        messages: plan.messages,
        throughput,
        latency_p50_us: spread(|s| s.latency_p50_us as f64),
        latency_p99_us: spread(|s| s.latency_p99_us as f64),
        warmup: warmup.summary,
        every_round: runs.iter().map(|r| r.summary.clone()).collect(),
    };
    let median = runs
        .iter()
        .position(|r| r.summary.slowest_throughput == throughput.median)
        .unwrap_or(0);
    let mut chosen = runs.swap_remove(median);
    chosen.summary.complete = repeated.every_round.iter().all(|s| s.complete);
    chosen.repeated = Some(repeated);
    Ok(chosen)
}

/// Most messages per sender in one round, whatever the warm-up's rate.
const MAX_ROUND_MESSAGES: usize = 2_000_000;

fn number(v: &Value, path: &[&str]) -> f64 {
    let mut v = v;
    for p in path {
        v = &v[*p];
    }
    v.as_f64().unwrap_or(0.0)
}

/// The size of one application datagram of the messenger carrying a text of `payload`
/// bytes, as a peer of Experiment 2 sends it: what the raw baseline sends too.
pub fn datagram_bytes(payload: usize) -> usize {
    let mut d = proto::Datagram::new(
        proto::DatagramType::Application,
        "test",
        "p00",
        format!("p00 1234 {}", "x".repeat(payload.saturating_sub(9))),
        ([127, 0, 0, 1], 40000).into(),
        1234,
        "p00",
    );
    d.sent_at_us = Some(1_800_000_000_000_000);
    d.encode(proto::MAX_DATAGRAM_LEN)
        .map_or(payload, |b| b.len())
}

/// A new key for the group `test` in `dir`, readable by its owner only: the
/// `--group-key-file` argument that names it.
fn key_file(dir: &Path) -> Result<String, String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = dir.join("test.key");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    writeln!(file, "{}", seal::GroupKey::generate().to_hex()).map_err(|e| e.to_string())?;
    Ok(format!("test={}", path.display()))
}

/// Runs one plan on a fresh system.
pub fn run(bin: &Path, plan: &Plan, stop: &Arc<AtomicBool>) -> Result<Run, String> {
    let started = Instant::now();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut bundling: Vec<String> = plan
        .bundle_bytes
        .map(|b| vec!["--bundle-bytes".to_owned(), b.to_string()])
        .unwrap_or_default();
    if plan.sealed {
        // The same options for the sequencer and the peers: the group's key with them.
        bundling.extend(["--group-key-file".to_owned(), key_file(dir.path())?]);
    }
    let lan = match plan.hosts {
        Hosts::Loopback => None,
        Hosts::Netns => Some(crate::lan::Lan::create("runner", plan.peers + 2)?),
    };
    let mut sequencer_args = bundling.clone();
    if plan.multicast {
        sequencer_args.push("--multicast".to_owned());
    }
    let system = System::start(bin, &sequencer_args, lan)?;
    let multicast = plan.multicast.then(multicast_group).transpose()?;
    let expected = (plan.senders * plan.messages) as u64;
    let mut running = Vec::new();
    for i in 0..plan.peers {
        let name = format!("p{i:02}");
        let lines: Vec<String> = if i < plan.senders {
            (0..plan.messages)
                .map(|k| {
                    let head = format!("{name} {k} ");
                    let pad = plan.payload.saturating_sub(head.len());
                    head + &"x".repeat(pad)
                })
                .collect()
        } else {
            Vec::new()
        };
        let file = dir.path().join(format!("{name}.txt"));
        std::fs::write(&file, lines.join("\n")).map_err(|e| e.to_string())?;
        let mut args = vec![
            "-t".to_owned(),
            file.display().to_string(),
            "--members".into(),
            plan.peers.to_string(),
            "--expect".into(),
            expected.to_string(),
            "--timeout-ms".into(),
            "60000".into(),
        ];
        if let Some(rate) = plan.rate {
            args.extend(["--rate".into(), rate.to_string()]);
        }
        if plan.order == Order::Total {
            args.push("-s".into());
        }
        if let Some(w) = plan.flow_window {
            args.extend(["--flow-window".into(), w.to_string()]);
        }
        args.extend(bundling.iter().cloned());
        if let Some(group) = multicast {
            args.extend(["--multicast".into(), group.to_string()]);
        }
        running.push(system.script_peer(&name, &args)?);
    }
    let mut peers = Vec::new();
    for peer in running {
        peers.push(peer.finish(Duration::from_secs(120), stop)?);
    }
    drop(system);
    let mut p50s: Vec<u64> = peers
        .iter()
        .map(|p| number(p, &["latency", "p50_us"]) as u64)
        .collect();
    p50s.sort_unstable();
    let sent: f64 = peers.iter().map(|p| number(p, &["sent"])).sum();
    let datagrams: f64 = peers.iter().map(|p| number(p, &["datagrams_sent"])).sum();
    let summary = Summary {
        complete: peers.iter().all(|p| p["complete"] == true),
        delivered: peers.iter().map(|p| number(p, &["delivered"]) as u64).sum(),
        expected: expected * plan.peers as u64,
        slowest_throughput: peers
            .iter()
            .map(|p| number(p, &["delivered_per_second"]))
            .fold(f64::INFINITY, f64::min),
        latency_p50_us: p50s.get(p50s.len() / 2).copied().unwrap_or(0),
        latency_p99_us: peers
            .iter()
            .map(|p| number(p, &["latency", "p99_us"]) as u64)
            .max()
            .unwrap_or(0),
        datagrams_per_message: if sent > 0.0 { datagrams / sent } else { 0.0 },
        messages_per_datagram: if datagrams > 0.0 {
            peers
                .iter()
                .map(|p| {
                    number(p, &["app_datagrams_sent"]) + number(p, &["control_datagrams_sent"])
                })
                .sum::<f64>()
                / datagrams
        } else {
            0.0
        },
        tracker_messages: peers
            .iter()
            .map(|p| number(p, &["tracker_messages_sent"]) as u64)
            .sum(),
        nacks: peers
            .iter()
            .map(|p| number(p, &["recovery", "nacks_sent"]) as u64)
            .sum(),
        wall_ms: started.elapsed().as_secs_f64() * 1e3,
        of_baseline: None,
    };
    Ok(Run {
        plan: plan.clone(),
        peers,
        summary,
        repeated: None,
    })
}

/// The per-peer table of one run.
pub fn peer_table(run: &Run) -> String {
    let mut out = format!(
        "  {:<5} {:>5} {:>9} {:>10} {:>12} {:>10} {:>9} {:>9} {:>10} {:>8}\n",
        "peer",
        "sent",
        "delivered",
        "time ms",
        "delivered/s",
        "mean µs",
        "p50 µs",
        "p99 µs",
        "datagrams",
        "per msg"
    );
    for p in &run.peers {
        out += &format!(
            "  {:<5} {:>5} {:>9} {:>10.1} {:>12.0} {:>10.0} {:>9} {:>9} {:>10} {:>8.2}\n",
            p["username"].as_str().unwrap_or("?"),
            number(p, &["sent"]),
            number(p, &["delivered"]),
            number(p, &["duration_ms"]),
            number(p, &["delivered_per_second"]),
            number(p, &["latency", "mean_us"]),
            number(p, &["latency", "p50_us"]),
            number(p, &["latency", "p99_us"]),
            number(p, &["datagrams_sent"]),
            number(p, &["datagrams_per_message"]),
        );
    }
    let s = &run.summary;
    out += &format!(
        "  all: {} of {} deliveries{}; slowest receiver {:.0} delivered/s; latency p50 {} µs, p99 {} µs; \
         {:.2} datagrams per message; {} retransmission requests; {} tracker messages\n",
        s.delivered,
        s.expected,
        if s.complete { "" } else { " (INCOMPLETE)" },
        s.slowest_throughput,
        s.latency_p50_us,
        s.latency_p99_us,
        s.datagrams_per_message,
        s.nacks,
        s.tracker_messages
    );
    out
}

/// The table of Experiment 2: per group size, the raw-UDP baseline's row (if measured) and
/// one row per order, with its throughput as a share of the baseline.
pub fn scaling_table(runs: &[Run], baselines: &[Baseline]) -> String {
    let mut out = format!(
        "  {:>5} {:<17} {:>9} {:>14} {:>7} {:>9} {:>9} {:>11} {:>10} {:>9}\n",
        "peers",
        "order",
        "complete",
        "slowest rcv/s",
        "of raw",
        "p50 µs",
        "p99 µs",
        "dgrams/msg",
        "msgs/dgram",
        "nacks"
    );
    let mut sizes: Vec<usize> = runs.iter().map(|r| r.plan.peers).collect();
    sizes.dedup();
    for peers in sizes {
        if let Some(b) = baselines.iter().find(|b| b.peers == peers) {
            match &b.lossless {
                Some(t) => {
                    out += &format!(
                        "  {:>5} {:<17} {:>9} {:>14.0} {:>7} {:>9} {:>9} {:>11.2} {:>10.2} {:>9}\n",
                        peers,
                        "raw UDP",
                        "yes",
                        t.slowest_per_second,
                        "100%",
                        t.latency_p50_us,
                        t.latency_p99_us,
                        (peers.max(2) - 1) as f64,
                        1.0,
                        "-"
                    )
                }
                None => {
                    out += &format!("  {peers:>5} raw UDP: lost datagrams at every rate tried\n")
                }
            }
        }
        for r in runs.iter().filter(|r| r.plan.peers == peers) {
            let s = &r.summary;
            let range = r.repeated.as_ref().map_or(String::new(), |rep| {
                format!(
                    "  (median of {}: {:.0}-{:.0}/s, p50 {:.0}-{:.0} µs, p99 {:.0}-{:.0} µs)",
                    rep.rounds,
                    rep.throughput.min,
                    rep.throughput.max,
                    rep.latency_p50_us.min,
                    rep.latency_p50_us.max,
                    rep.latency_p99_us.min,
                    rep.latency_p99_us.max
                )
            });
            out += &format!(
                "  {:>5} {:<17} {:>9} {:>14.0} {:>7} {:>9.0} {:>9.0} {:>11.2} {:>10.2} {:>9}{range}\n",
                r.plan.peers,
                r.plan.label(),
                if s.complete { "yes" } else { "NO" },
                s.slowest_throughput,
                s.of_baseline
                    .map_or("-".to_owned(), |f| format!("{:.0}%", f * 100.0)),
                r.latency_p50_us(),
                r.latency_p99_us(),
                s.datagrams_per_message,
                s.messages_per_datagram,
                s.nacks
            );
        }
    }
    out
}

/// A fresh IP multicast group for one run's peers: a port free on this host (so no other run
/// or program on it shares the group), in the administratively scoped 239.255.0.0/16.
fn multicast_group() -> Result<std::net::SocketAddr, String> {
    let probe = std::net::UdpSocket::bind(("0.0.0.0", 0))
        .map_err(|e| format!("cannot find a free port for the multicast group: {e}"))?;
    let port = probe.local_addr().map_err(|e| e.to_string())?.port();
    Ok(std::net::SocketAddr::from(([239, 255, 0, 1], port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(throughput: f64, p50: u64, p99: u64) -> Summary {
        Summary {
            complete: true,
            delivered: 3,
            expected: 3,
            slowest_throughput: throughput,
            latency_p50_us: p50,
            latency_p99_us: p99,
            datagrams_per_message: 3.0,
            messages_per_datagram: 1.0,
            tracker_messages: 0,
            nacks: 0,
            wall_ms: 1.0,
            of_baseline: None,
        }
    }

    #[test]
    fn a_repeated_row_shows_the_median_latency_of_its_rounds_not_that_of_its_median_throughput_round()
     {
        let rounds = [
            summary(1_000.0, 90, 400),
            summary(999.0, 30, 100),
            summary(998.0, 40, 120),
        ];
        let spread = |f: fn(&Summary) -> f64| Spread::of(rounds.iter().map(f).collect());
        let run = Run {
            plan: Plan {
                experiment: 2,
                order: Order::Fifo,
                peers: 4,
                senders: 1,
                messages: 5_000,
                payload: 64,
                rate: Some(1_000.0),
                flow_window: None,
                bundle_bytes: None,
                sealed: false,
                hosts: Hosts::Loopback,
                multicast: false,
            },
            peers: Vec::new(),
            // The round of median throughput.
            summary: rounds[1].clone(),
            repeated: Some(Repeated {
                rounds: 3,
                messages: 5_000,
                throughput: spread(|s| s.slowest_throughput),
                latency_p50_us: spread(|s| s.latency_p50_us as f64),
                latency_p99_us: spread(|s| s.latency_p99_us as f64),
                warmup: rounds[0].clone(),
                every_round: rounds.to_vec(),
            }),
        };
        assert_eq!(run.latency_p50_us(), 40.0);
        assert_eq!(run.latency_p99_us(), 120.0);
        let table = scaling_table(&[run], &[]);
        let row = table.lines().nth(1).unwrap();
        let columns: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            &columns[..6],
            ["4", "FIFO", "yes", "999", "-", "40"],
            "{table}"
        );
        assert_eq!(columns[6], "120", "{table}");
        assert!(row.contains("p50 30-90 µs, p99 100-400 µs"), "{table}");
    }
}
