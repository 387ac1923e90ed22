//! The real runner, on a small plan: it starts a whole system, runs both experiments in
//! both orders, prints the tables and the JSON, and leaves no process behind.

#![allow(clippy::unwrap_used)] // a test may stop at the first surprise

use std::process::Command;

#[test]
fn runs_both_experiments_on_a_local_system_and_reports_every_peer() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("figures.json");
    let out = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["--peers", "3", "--peer-counts", "2,3", "--messages", "30"])
        .arg("--json")
        .arg(&json)
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("Experiment 1, FIFO order: 3 peers each sending 30 messages"));
    assert!(stdout.contains("all: 270 of 270 deliveries;"), "{stdout}");
    assert!(!stdout.contains("INCOMPLETE"), "{stdout}");
    let runs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let runs = runs.as_array().unwrap();
    assert_eq!(
        runs.len(),
        2 + 2 * 2,
        "experiment 1 twice, experiment 2 for two sizes twice"
    );
    for name in ["experiment2-throughput.svg", "experiment2-latency.svg"] {
        let svg = std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert!(svg.starts_with("<svg"), "{name}");
        for label in ["FIFO", "total", "peers in the group"] {
            assert!(svg.contains(label), "{name} shows {label}");
        }
        assert!(
            svg.matches("<circle").count() >= 4,
            "{name}: a point per group size and order"
        );
    }
    for run in runs {
        assert_eq!(run["summary"]["complete"], true, "{run}");
        let peers = run["plan"]["peers"].as_u64().unwrap();
        assert_eq!(run["peers"].as_array().unwrap().len() as u64, peers);
    }
}
