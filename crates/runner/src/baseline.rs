//! The raw-UDP baseline: the same group pattern as Experiment 2 — one sender, one datagram
//! of the messenger's size to each other member per message — sent by bare processes
//! (`rawudp`) with no ordering, no JSON and no recovery. Its highest rate with nothing lost
//! is this machine's ceiling, against which the messenger's throughput is reported.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::system::Proc;

/// Most trials of the search for the lossless rate, after the flat-out one.
const MAX_TRIALS: usize = 6;

/// The search stops once the lossless and lossy rates are this close (ratio).
const CLOSE_ENOUGH: f64 = 1.1;

/// One run of the raw sender and its receivers.
#[derive(Debug, Clone, Serialize)]
pub struct Trial {
    /// The rate asked of the sender (messages/s; `None`: flat out).
    pub rate: Option<f64>,
    /// The rate the sender reached (messages/s).
    pub sent_per_second: f64,
    /// Datagrams lost, all receivers together.
    pub lost: u64,
    /// The lowest received-per-second of any receiver.
    pub slowest_per_second: f64,
    /// The median of the receivers' median one-way latencies (µs).
    pub latency_p50_us: i64,
    /// The highest of the receivers' 99th-percentile latencies (µs).
    pub latency_p99_us: i64,
}

/// The baseline of one group size.
#[derive(Debug, Clone, Serialize)]
pub struct Baseline {
    /// Members of the group, the sender included (it sends to the others).
    pub peers: usize,
    /// Messages per trial.
    pub messages: usize,
    /// Bytes per datagram.
    pub datagram_bytes: usize,
    /// Every trial, flat out first.
    pub trials: Vec<Trial>,
    /// The fastest trial in which nothing was lost, if any: its slowest receiver's rate is
    /// the ceiling.
    pub lossless: Option<Trial>,
}

impl Baseline {
    /// The ceiling: the slowest receiver's rate in the fastest lossless trial (0 if none).
    pub fn lossless_rate(&self) -> f64 {
        self.lossless.as_ref().map_or(0.0, |t| t.slowest_per_second)
    }
}

fn number(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(0.0)
}

/// Runs the raw sender once at `rate` (flat out if `None`) to `peers - 1` receivers.
pub fn trial(
    bin: &Path,
    peers: usize,
    messages: usize,
    datagram_bytes: usize,
    rate: Option<f64>,
    stop: &Arc<AtomicBool>,
) -> Result<Trial, String> {
    let program = bin.join("rawudp");
    let mut receivers = Vec::new();
    let mut addrs = Vec::new();
    for i in 1..peers.max(2) {
        let mut receiver = Proc::spawn(
            &program,
            &format!("raw receiver {i}"),
            &["receive".into(), "--expect".into(), messages.to_string()],
        )?;
        addrs.push(receiver.banner_addr()?.to_string());
        receivers.push(receiver);
    }
    let mut args = vec![
        "send".to_owned(),
        "--to".into(),
        addrs.join(","),
        "--messages".into(),
        messages.to_string(),
        "--size".into(),
        datagram_bytes.to_string(),
    ];
    if let Some(rate) = rate {
        args.extend(["--rate".into(), rate.to_string()]);
    }
    let sender = Proc::spawn(&program, "raw sender", &args)?;
    let timeout = Duration::from_secs(120);
    let sent = sender.finish(timeout, stop)?;
    let mut got = Vec::new();
    for receiver in receivers {
        got.push(receiver.finish(timeout, stop)?);
    }
    let mut p50s: Vec<i64> = got.iter().map(|r| number(r, "p50_us") as i64).collect();
    p50s.sort_unstable();
    Ok(Trial {
        rate,
        sent_per_second: number(&sent, "per_second"),
        lost: got.iter().map(|r| number(r, "lost") as u64).sum(),
        slowest_per_second: got
            .iter()
            .map(|r| number(r, "per_second"))
            .fold(f64::INFINITY, f64::min),
        latency_p50_us: p50s.get(p50s.len() / 2).copied().unwrap_or(0),
        latency_p99_us: got
            .iter()
            .map(|r| number(r, "p99_us") as i64)
            .max()
            .unwrap_or(0),
    })
}

/// The raw pattern at one given `rate`, once: at a steady rate the figure of interest is
/// bare UDP's latency there, beside the messenger's at the same rate.
pub fn at_rate(
    bin: &Path,
    peers: usize,
    messages: usize,
    datagram_bytes: usize,
    rate: f64,
    stop: &Arc<AtomicBool>,
) -> Result<Baseline, String> {
    let t = trial(bin, peers, messages, datagram_bytes, Some(rate), stop)?;
    Ok(Baseline {
        peers,
        messages,
        datagram_bytes,
        lossless: (t.lost == 0).then(|| t.clone()),
        trials: vec![t],
    })
}

/// Finds the highest rate at which nothing is lost: flat out first; if that loses, a
/// search between the highest lossless and the lowest lossy rate tried. `progress` is told
/// each trial as it ends.
pub fn search(
    bin: &Path,
    peers: usize,
    messages: usize,
    datagram_bytes: usize,
    stop: &Arc<AtomicBool>,
    mut progress: impl FnMut(&Trial),
) -> Result<Baseline, String> {
    let flat = trial(bin, peers, messages, datagram_bytes, None, stop)?;
    progress(&flat);
    let mut trials = vec![flat.clone()];
    let mut lossless = (flat.lost == 0).then(|| flat.clone());
    if lossless.is_none() {
        // The receivers kept up with about their own rate while losing: start a little below.
        let mut lossy = flat.sent_per_second;
        let mut highest_lossless: Option<f64> = None;
        let mut rate = (flat.slowest_per_second * 0.9).min(lossy * 0.9);
        for _ in 0..MAX_TRIALS {
            let t = trial(bin, peers, messages, datagram_bytes, Some(rate), stop)?;
            progress(&t);
            if t.lost == 0 {
                highest_lossless = Some(rate);
                if lossless
                    .as_ref()
                    .is_none_or(|b| t.slowest_per_second > b.slowest_per_second)
                {
                    lossless = Some(t.clone());
                }
            } else {
                lossy = rate;
            }
            trials.push(t);
            rate = match highest_lossless {
                Some(low) if lossy / low < CLOSE_ENOUGH => break,
                Some(low) => (low * lossy).sqrt(),
                None => rate / 2.0,
            };
        }
    }
    Ok(Baseline {
        peers,
        messages,
        datagram_bytes,
        trials,
        lossless,
    })
}
