//! Real packet loss: the tracker, the sequencer and five peers run in a private network
//! namespace whose packet filter drops a share of the group's UDP traffic (the tracker's
//! port is spared, so no one is evicted for lost heartbeats). Every message must still be
//! delivered exactly once, in order, at every peer — and the recovery counters must show
//! the losses were real. Needs root (namespaces, iptables); says so and skips otherwise.

#![allow(clippy::unwrap_used)] // a test may stop at the first surprise

mod support;

use std::collections::{BTreeMap, HashSet};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Process, bin, deliveries, lines_file};

const PEERS: usize = 5;
const MESSAGES: usize = 1000;
const TRACKER: &str = "127.0.0.1:5000";
const SEQUENCER: &str = "127.0.0.1:5001";

struct Namespace(String);

impl Namespace {
    fn create(tag: &str) -> Result<Self, String> {
        let name = format!("gc-{tag}-{}", std::process::id());
        let ok = |args: &[&str]| {
            Command::new("ip")
                .args(args)
                .status()
                .is_ok_and(|s| s.success())
        };
        if !ok(&["netns", "add", &name]) {
            return Err("cannot create a network namespace".into());
        }
        let ns = Self(name);
        if !ok(&["netns", "exec", &ns.0, "ip", "link", "set", "lo", "up"]) {
            return Err("cannot bring up lo in the namespace".into());
        }
        Ok(ns)
    }

    /// Drops `percent` % of UDP packets arriving in the namespace, except the tracker's.
    fn lose(&self, percent: u32) -> Result<(), String> {
        let p = format!("{:.2}", f64::from(percent) / 100.0);
        let port = TRACKER.rsplit(':').next().unwrap();
        let status = Command::new("ip")
            .args([
                "netns", "exec", &self.0, "iptables", "-A", "INPUT", "-p", "udp",
            ])
            .args(["!", "--sport", port, "!", "--dport", port])
            .args([
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &p,
                "-j",
                "DROP",
            ])
            .status()
            .map_err(|e| format!("iptables: {e}"))?;
        status
            .success()
            .then_some(())
            .ok_or("iptables refused the rule".into())
    }

    fn spawn(&self, name: &str, args: &[String]) -> Process {
        let mut all = vec![
            "netns".to_owned(),
            "exec".into(),
            self.0.clone(),
            bin(name).display().to_string(),
        ];
        all.extend(args.iter().cloned());
        Process::spawn_program("ip", &all)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

fn can_run() -> Result<(), String> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| e.to_string())?;
    if String::from_utf8_lossy(&root.stdout).trim() != "0" {
        return Err("not root".into());
    }
    let iptables = Command::new("sh")
        .args(["-c", "command -v iptables"])
        .output()
        .map_err(|e| e.to_string())?;
    if !iptables.status.success() {
        return Err("iptables is not installed (bash .ci/run installs it)".into());
    }
    Ok(())
}

/// Runs one group under `percent` % loss; returns a line of figures for the record.
fn lossy_group(total: bool, percent: u32) -> String {
    let ns = Namespace::create(if total { "t" } else { "f" }).unwrap();
    ns.lose(percent).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _sequencer = total.then(|| ns.spawn("sequencer", &[SEQUENCER.into()]));
    let mut tracker_args = vec![TRACKER.to_owned()];
    if total {
        tracker_args.extend(["--seq-addr".into(), SEQUENCER.into()]);
    }
    let _tracker = ns.spawn("tracker", &tracker_args);
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let mut peers: Vec<Process> = (0..PEERS)
        .map(|p| {
            let name = format!("p{p}");
            let lines: Vec<String> = (0..MESSAGES).map(|i| format!("{name} {i}")).collect();
            let file = lines_file(dir.path(), &format!("{name}.txt"), &lines);
            let mut args = vec![
                "127.0.0.1:0".to_owned(),
                name.clone(),
                TRACKER.into(),
                "-t".into(),
                file.display().to_string(),
                "--members".into(),
                PEERS.to_string(),
                "--json".into(),
                "--timeout-ms".into(),
                "60000".into(),
                "--deliveries".into(),
                dir.path().join(format!("{name}.tsv")).display().to_string(),
            ];
            if total {
                args.push("-s".into());
            }
            ns.spawn("peer", &args)
        })
        .collect();
    let mut reports = Vec::new();
    for (p, peer) in peers.iter_mut().enumerate() {
        let status = peer.wait(Duration::from_secs(120));
        assert!(
            status.success(),
            "peer {p} at {percent} % loss: {:#?}",
            peer.seen
        );
        let report: Value = serde_json::from_str(peer.seen.last().unwrap()).unwrap();
        reports.push(report);
    }
    let elapsed = started.elapsed();
    let mut first = None;
    for p in 0..PEERS {
        let got = deliveries(&dir.path().join(format!("p{p}.tsv")));
        assert_eq!(got.len(), PEERS * MESSAGES, "peer {p} at {percent} %");
        let mut seen = HashSet::new();
        let mut per_author: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for d in &got {
            assert!(
                seen.insert(&d.text),
                "peer {p} delivered {:?} twice",
                d.text
            );
            per_author.entry(&d.author).or_default().push(&d.text);
        }
        for (author, texts) in per_author {
            let expected: Vec<String> = (0..MESSAGES).map(|i| format!("{author} {i}")).collect();
            assert_eq!(
                texts, expected,
                "peer {p}: {author}'s messages out of order at {percent} %"
            );
        }
        if total {
            match &first {
                None => first = Some(got),
                Some(f) => assert!(*f == got, "peer {p} delivered another order at {percent} %"),
            }
        }
    }
    let sum = |path: &[&str]| -> u64 {
        reports
            .iter()
            .map(|r| path.iter().fold(r, |v, k| &v[*k]).as_u64().unwrap_or(0))
            .sum()
    };
    let (nacks, recovered, retransmitted) = (
        sum(&["recovery", "nacks_sent"]),
        sum(&["recovery", "gaps_recovered"]),
        sum(&["recovery", "retransmissions_sent"]),
    );
    assert!(
        nacks > 0 && recovered > 0,
        "no recovery at {percent} % loss: the losses were not real"
    );
    format!(
        "{} order, {percent} % loss: {} messages sent, {} delivered; {nacks} retransmission requests, \
         {retransmitted} messages retransmitted by the peers, {recovered} recovered; done in {:.1} s",
        if total { "total" } else { "FIFO" },
        sum(&["sent"]),
        sum(&["delivered"]),
        elapsed.as_secs_f64()
    )
}

#[test]
fn every_message_arrives_once_and_in_order_under_real_loss() {
    if let Err(why) = can_run() {
        eprintln!("skipped: real-loss test needs namespaces and iptables: {why}");
        return;
    }
    for total in [false, true] {
        for percent in [10, 30] {
            eprintln!("{}", lossy_group(total, percent));
        }
    }
}
