//! The real runner, on a small plan: it starts a whole system, runs both experiments in
//! both orders, prints the tables and the JSON, and leaves no process behind.

#![allow(clippy::unwrap_used)] // a test may stop at the first surprise

use std::process::Command;

/// Runs the runner with `args`, its output in a fresh folder; returns what it printed, the
/// figures it wrote, and the folder (kept until dropped).
fn run_runner(args: &[&str]) -> (String, serde_json::Value, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("figures.json");
    let out = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(args)
        .arg("--json")
        .arg(&json)
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let figures = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    (stdout, figures, dir)
}

#[test]
fn runs_both_experiments_on_a_local_system_and_reports_every_peer() {
    let (stdout, figures, dir) = run_runner(&[
        "--peers",
        "3",
        "--peer-counts",
        "2,3",
        "--messages",
        "30",
        // More than the flow-control window (1,024), so the stream is not one burst that a
        // receiver delivers in one instant (no rate to measure).
        "--stream",
        "3000",
        "--rounds",
        "2",
        "--min-round-ms",
        "0",
    ]);
    assert!(stdout.contains("Experiment 1, FIFO order: 3 peers each sending 30 messages"));
    assert!(stdout.contains("all: 270 of 270 deliveries;"), "{stdout}");
    assert!(!stdout.contains("INCOMPLETE"), "{stdout}");
    let runs = figures["runs"].as_array().unwrap();
    assert_eq!(
        runs.len(),
        2 + 2 * 2,
        "experiment 1 twice, experiment 2 for two sizes twice"
    );
    // The raw-UDP baseline ran for each group size, found a rate with nothing lost, and
    // every Experiment 2 run is shown as a share of it.
    let baselines = figures["baselines"].as_array().unwrap();
    assert_eq!(baselines.len(), 2, "{figures}");
    for b in baselines {
        assert!(
            b["lossless"]["slowest_per_second"].as_f64().unwrap() > 0.0,
            "{b}"
        );
        assert_eq!(b["lossless"]["lost"], 0, "{b}");
    }
    assert_eq!(stdout.matches(" raw UDP ").count(), 2, "{stdout}");
    for run in runs.iter().filter(|r| r["plan"]["experiment"] == 2) {
        assert!(
            run["summary"]["of_baseline"].as_f64().unwrap() > 0.0,
            "{run}"
        );
        // Two rounds after a warm-up: every round kept, the median between the extremes.
        let repeated = &run["repeated"];
        assert_eq!(repeated["rounds"], 2, "{run}");
        assert_eq!(repeated["every_round"].as_array().unwrap().len(), 2);
        let t = &repeated["throughput"];
        let (lo, mid, hi) = (
            t["min"].as_f64().unwrap(),
            t["median"].as_f64().unwrap(),
            t["max"].as_f64().unwrap(),
        );
        assert!(lo <= mid && mid <= hi && lo > 0.0, "{t}");
        assert_eq!(run["summary"]["slowest_throughput"].as_f64().unwrap(), mid);
    }
    assert!(stdout.contains("(median of 2: "), "{stdout}");
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

/// Flat out into a group whose sequencer is the bottleneck: without flow control the author
/// runs thousands of messages ahead, the sequencer's socket overflows, and messages are lost
/// for good once they leave the author's retransmission buffer (seen: 4 peers, 20,000
/// messages, `--flow-window 0`, incomplete). With it, every member delivers everything.
#[test]
fn a_flat_out_sender_is_held_to_its_slowest_member_and_nothing_is_lost() {
    let (_, figures, _dir) = run_runner(&[
        "--experiment",
        "2",
        "--peer-counts",
        "4",
        "--order",
        "total",
        "--stream",
        "20000",
        "--no-baseline",
        "--rounds",
        "1",
        "--min-round-ms",
        "0",
    ]);
    let run = &figures["runs"][0];
    assert_eq!(run["summary"]["complete"], true, "{run}");
    assert_eq!(run["summary"]["delivered"], 4 * 20_000);
    let sender = &run["peers"][0];
    assert_eq!(sender["sent"], 20_000);
    // Without --low-latency the scheduling is the machine's (unless the test itself runs
    // under SCHED_BATCH).
    if !runtime::wakeup_preemption_off().unwrap_or(false) {
        assert_eq!(sender["wakeup_preemption_off"], false, "{sender}");
    }
    assert!(
        sender["flow"]["window_closed"].as_u64().unwrap() > 0,
        "the sender had to wait: {sender}"
    );
    for receiver in run["peers"].as_array().unwrap()[1..].iter() {
        assert!(
            receiver["flow"]["acks_sent"].as_u64().unwrap() > 0,
            "{receiver}"
        );
    }
}

/// `--hosts both`: each experiment on loopback and then with the tracker, the sequencer and
/// every peer on a host of its own (network namespaces on a bridge), side by side; every
/// run complete, and the namespaces gone afterwards. Needs root; says so and skips
/// otherwise.
#[test]
fn experiments_run_on_hosts_beside_loopback() {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        eprintln!("skipped: running on network-namespace hosts needs root");
        return;
    }
    let (stdout, figures, _dir) = run_runner(&[
        "--hosts",
        "both",
        "--peers",
        "3",
        "--peer-counts",
        "3",
        "--messages",
        "30",
        "--stream",
        "300",
        "--rounds",
        "1",
        "--min-round-ms",
        "0",
        "--no-baseline",
    ]);
    assert!(
        stdout.contains("Experiment 1, FIFO order, each on a host of its own: 3 peers"),
        "{stdout}"
    );
    assert!(stdout.contains("FIFO hosts"), "{stdout}");
    let runs = figures["runs"].as_array().unwrap();
    assert_eq!(
        runs.len(),
        2 * 2 + 2 * 2,
        "each run on loopback and on hosts"
    );
    for hosts in ["loopback", "netns"] {
        assert_eq!(
            runs.iter().filter(|r| r["plan"]["hosts"] == hosts).count(),
            4,
            "{hosts}"
        );
    }
    for run in runs {
        assert_eq!(run["summary"]["complete"], true, "{run}");
    }
    let left = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(
        !left.contains("gc-runner-") && !left.contains("gc-check-"),
        "the runner left namespaces behind: {left}"
    );
}

/// At a steady `--rate`, the raw baseline is sent once at that rate (bare UDP's latency
/// beside the messenger's), and `--low-latency` holds the CPUs' wake-up bound for the whole
/// run and says so in the JSON. Holding it needs root: elsewhere the runner must refuse with
/// a clear error rather than measure something else.
#[test]
fn at_a_steady_rate_bare_udp_is_measured_at_that_rate_and_low_latency_is_held_by_all() {
    let may_hold = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/cpu_dma_latency")
        .is_ok();
    let plan = [
        "--experiment",
        "2",
        "--peer-counts",
        "3",
        "--order",
        "fifo",
        "--rate",
        "2000",
        "--stream",
        "1000",
        "--rounds",
        "1",
        "--min-round-ms",
        "0",
        "--low-latency",
    ];
    if !may_hold {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_runner"))
            .args(plan)
            .arg("--out")
            .arg(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains("--low-latency"), "{stderr}");
        eprintln!("skipped the measured part: holding /dev/cpu_dma_latency needs root");
        return;
    }
    let (stdout, figures, _dir) = run_runner(&plan);
    assert_eq!(figures["low_latency"], true, "{figures}");
    let baseline = &figures["baselines"][0];
    let trials = baseline["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 1, "one trial, at the rate asked: {baseline}");
    assert_eq!(trials[0]["rate"], 2000.0, "{baseline}");
    assert!(
        trials[0]["latency_p50_us"].as_i64().unwrap() > 0,
        "{baseline}"
    );
    let run = &figures["runs"][0];
    assert_eq!(run["summary"]["complete"], true, "{run}");
    for peer in run["peers"].as_array().unwrap() {
        assert_eq!(
            peer["wakeup_preemption_off"], true,
            "every peer the runner started ran under SCHED_BATCH: {peer}"
        );
    }
    let p50 = run["repeated"]["latency_p50_us"]["median"]
        .as_f64()
        .unwrap();
    let row = stdout
        .lines()
        .find(|l| l.split_whitespace().take(2).eq(["3", "FIFO"]))
        .unwrap_or_else(|| panic!("no FIFO row: {stdout}"));
    assert_eq!(
        row.split_whitespace().nth(5),
        Some(format!("{p50:.0}").as_str()),
        "the table shows the median p50 of the rounds: {row}"
    );
}
