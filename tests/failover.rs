//! A registry that outlives its tracker: two trackers share one registry kept in a real
//! three-member etcd cluster (started here, on loopback ports the OS picks, and stopped
//! afterwards). Either tracker answers any request with the same view; when the tracker the
//! peers use is SIGKILLed while they chat, they move to the other keeping their identity,
//! every message still arrives once and in order, no registration is lost, and a member
//! killed meanwhile is still evicted and announced; stopping one etcd member changes nothing
//! visible. Needs the `etcd` program; says so and skips otherwise.

#![allow(clippy::unwrap_used)] // a test may stop at the first surprise

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::etcd::Cluster;
use support::report::{self, ReportClient};
use support::{Process, check_deliveries, free_port, lines_file, script};

fn cluster() -> Option<Cluster> {
    match Cluster::start(3) {
        Ok(c) => Some(c),
        Err(why) => {
            eprintln!("skipped: the shared-registry tests need a real etcd: {why}");
            None
        }
    }
}

/// A tracker on a free port sharing the cluster's registry, its standard error read too.
fn tracker(cluster: &Cluster, extra: &[&str]) -> (Process, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut args = vec![
        addr.to_string(),
        "--registry".into(),
        cluster.url(),
        "-v".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut process = Process::spawn_capturing_stderr("tracker", &args);
    process.expect(|l| l.contains("tracker listening"), "the tracker's banner");
    (process, addr)
}

fn members(tracker: SocketAddr, group: &str) -> Vec<String> {
    let reply = report::request(tracker, json!({"Type": 4, "Content": {"Group": group}}));
    let mut names: Vec<String> = reply["Content"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m["Username"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn two_trackers_on_one_etcd_cluster_answer_with_one_view() {
    let Some(cluster) = cluster() else { return };
    let fast = ["--heartbeat-ms", "200"];
    let (_t1, a) = tracker(&cluster, &fast);
    let (_t2, b) = tracker(&cluster, &fast);
    // The report's clients, each talking to one tracker.
    let mut alice = ReportClient::register(a, "alice");
    let mut bob = ReportClient::register(b, "bob");
    alice.join("room");
    let listed = bob.join("room");
    assert!(
        listed.contains(&"alice".to_owned()),
        "bob joined at the other tracker and was not told of alice: {listed:?}"
    );
    for t in [a, b] {
        assert_eq!(members(t, "room"), ["alice", "bob"], "at {t}");
        let groups = report::request(t, json!({"Type": 1, "Content": {}}));
        assert_eq!(groups["Content"], json!(["room"]), "at {t}");
    }
    // A name is one member's across the trackers.
    let taken = report::request(
        b,
        json!({"Type": 3, "Content": {"Ip": "127.0.0.1", "Port": 1, "Username": "alice"}}),
    );
    assert_eq!(taken["Success"], false, "{taken}");
    // Leaving at one tracker is seen at the other; the group goes with its last member.
    let left = report::request(
        a,
        json!({"Type": 5, "Content": {"Username": "alice", "Group": "room"}}),
    );
    assert_eq!(left["Success"], true, "{left}");
    assert_eq!(members(b, "room"), ["bob"]);
    let quit = report::request(b, json!({"Type": 6, "Content": {"Username": "bob"}}));
    assert_eq!(quit["Success"], true, "{quit}");
    for t in [a, b] {
        let groups = report::request(t, json!({"Type": 1, "Content": {}}));
        assert_eq!(groups["Content"], json!([]), "at {t}");
    }
    // A member evicted by one tracker is gone at both, and the members the other tracker
    // holds are told (by it: a member believes such a Bye from its own tracker only).
    let mut dan = support::interactive("dan", b, false);
    dan.expect(|l| l.contains("registered as dan"), "dan registered at b");
    dan.send("!j hall");
    dan.expect(|l| l.contains("joined hall"), "dan joined hall");
    let mut cid = support::interactive("cid", a, false);
    cid.expect(|l| l.contains("registered as cid"), "cid registered at a");
    cid.send("!j hall");
    dan.expect(|l| l.contains("cid joined hall"), "dan hears cid join");
    cid.child.kill().unwrap();
    cid.child.wait().unwrap();
    dan.expect(
        |l| l.contains("cid was evicted from hall"),
        "dan told, by its tracker, of the other tracker's eviction",
    );
    for t in [a, b] {
        assert_eq!(members(t, "hall"), ["dan"], "at {t}");
    }
}

/// What one failover run shows.
struct Failover {
    /// From the SIGKILL until the surviving tracker held every peer.
    moved_in: Duration,
}

/// Four peers chat through tracker A (B given as the fallback); once all are in, A is SIGKILLed
/// together with a member (`ghost`), which therefore never moves: its record goes with A's
/// lease and B must announce its eviction. Another member (`victim`) is SIGKILLed after it
/// moved: B must evict it by its silence. Everything must arrive, and every peer must hear
/// of both evictions. With `etcd_member_down`, one etcd member is killed first.
fn failover(total: bool, etcd_member_down: bool) -> Failover {
    const PEERS: usize = 4;
    // Six seconds at 500 a second: the run outlasts A's lease (3 s) after the kill.
    const MESSAGES: usize = 3000;
    let mut cluster = cluster().unwrap();
    let fast = ["--heartbeat-ms", "200"];
    let sequencer_port = free_port();
    let sequencer_addr = format!("127.0.0.1:{sequencer_port}");
    let mut extra = fast.to_vec();
    if total {
        extra.extend(["--seq-addr", &sequencer_addr]);
    }
    let (mut t1, a) = tracker(&cluster, &extra);
    let (mut t2, b) = tracker(&cluster, &extra);
    let trackers = format!("{a},{b}");
    let _sequencer = total.then(|| {
        Process::spawn(
            "sequencer",
            &[sequencer_addr.clone(), "--tracker".into(), trackers.clone()],
        )
    });
    if etcd_member_down {
        cluster.kill(0);
    }
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..PEERS).map(|p| format!("p{p}")).collect();
    let script_args = |name: &str, file: &std::path::Path, expect: u64, timeout: u64| {
        script(file)
            .members(PEERS + 2)
            .expect(expect)
            .timeout_ms(timeout)
            .rate(500)
            .deliveries(dir.path(), name)
            .total(total)
            .line("127.0.0.1:0", name, &trackers)
    };
    let victim_file = lines_file(dir.path(), "victim.txt", &[]);
    let mut victim = Process::spawn(
        "peer",
        &script_args("victim", &victim_file, u64::MAX, 3_600_000),
    );
    let mut ghost = Process::spawn(
        "peer",
        &script_args("ghost", &victim_file, u64::MAX, 3_600_000),
    );
    let mut peers: Vec<Process> = names
        .iter()
        .map(|name| {
            let lines: Vec<String> = (0..MESSAGES).map(|i| format!("{name} {i}")).collect();
            let file = lines_file(dir.path(), &format!("{name}.txt"), &lines);
            Process::spawn(
                "peer",
                &script_args(name, &file, (PEERS * MESSAGES) as u64, 120_000),
            )
        })
        .collect();
    // Once everyone is in and chatting (500 messages a second each), kill the tracker
    // they all use.
    let started = Instant::now();
    let everyone = PEERS + 2 + usize::from(total);
    while members(b, "test").len() < everyone {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "not every peer joined in time (at the other tracker: {:?})",
            members(b, "test")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    ghost.child.kill().unwrap();
    t1.child.kill().unwrap();
    ghost.child.wait().unwrap();
    t1.child.wait().unwrap();
    let killed = Instant::now();
    // Members come and go meanwhile: a newer peer given both trackers (the first dead)
    // joins another group, sends, hears itself and leaves; one of the report's clients
    // joins and leaves at the survivor (once the others moved: it would slow the reading of
    // the survivor's log, which times the move).
    let late_file = lines_file(dir.path(), "late.txt", &["late 0".to_owned()]);
    let late_args = script(&late_file)
        .group("side")
        .timeout_ms(20_000)
        .total(total)
        .line("127.0.0.1:0", "late", &trackers);
    let mut late = Process::spawn("peer", &late_args);
    // The survivor takes each member over at its first request.
    let mut held = std::collections::BTreeSet::new();
    let mut lines = Vec::new();
    let expected_moves = PEERS + 1 + usize::from(total);
    while held.len() < expected_moves && killed.elapsed() < Duration::from_secs(10) {
        if let Some(line) = t2.next_line(Duration::from_millis(50)) {
            if let Some((who, _)) = line.split_once(" now talks to this tracker") {
                held.insert(who.rsplit(' ').next().unwrap_or_default().to_owned());
            }
            lines.push(line);
        }
    }
    let moved_in = killed.elapsed();
    let mut carol = ReportClient::register(b, "carol");
    carol.join("side");
    assert!(members(b, "side").contains(&"carol".to_owned()));
    let left = report::request(
        b,
        json!({"Type": 5, "Content": {"Username": "carol", "Group": "side"}}),
    );
    assert_eq!(left["Success"], true, "{left}");
    assert_eq!(
        held.len(),
        expected_moves,
        "not every member moved to the surviving tracker in 10 s: {held:?}\n{lines:#?}"
    );
    // No registration was lost: the survivor lists every member.
    let mut expected: Vec<String> = names.clone();
    expected.push("victim".into());
    if total {
        expected.push("sequencer".into());
    }
    expected.sort();
    let listed = members(b, "test");
    let ghost_listed = listed.iter().any(|n| n == "ghost");
    assert_eq!(
        listed
            .into_iter()
            .filter(|n| n != "ghost")
            .collect::<Vec<_>>(),
        expected
    );
    assert!(
        ghost_listed || moved_in > Duration::from_secs(3),
        "the ghost went before A's lease"
    );
    assert!(
        late.wait(Duration::from_secs(30)).success(),
        "a peer joining through the fallback tracker: {:#?}",
        late.seen
    );
    let late_report: Value = serde_json::from_str(late.seen.last().unwrap()).unwrap();
    assert_eq!(late_report["delivered"], 1, "{late_report}");
    // A member that dies now is still evicted, and the others are told.
    victim.child.kill().unwrap();
    victim.child.wait().unwrap();
    let mut reports = Vec::new();
    for (p, peer) in peers.iter_mut().enumerate() {
        assert!(
            peer.wait(Duration::from_secs(120)).success(),
            "peer {p}: {:#?}",
            peer.seen
        );
        reports.push(serde_json::from_str::<Value>(peer.seen.last().unwrap()).unwrap());
    }
    check_deliveries(dir.path(), &names, &names, MESSAGES, total);
    for (p, r) in reports.iter().enumerate() {
        assert_eq!(r["times_evicted"], 0, "p{p} was evicted while alive: {r}");
        let mut evicted: Vec<&str> = r["evicted"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        evicted.sort();
        assert_eq!(
            evicted,
            ["ghost", "victim"],
            "p{p} was not told of both evictions: {r}"
        );
    }
    while let Some(line) = t2.next_line(Duration::from_millis(100)) {
        lines.push(line);
    }
    assert!(
        lines.iter().any(|l| l.contains("evicted \"victim\"")),
        "the surviving tracker never evicted the dead member: {lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"ghost\" went with its tracker's lease")),
        "the member that died with its tracker was never evicted: {lines:#?}"
    );
    eprintln!(
        "{} order{}: every member moved {:.0} ms after the tracker was killed; {} messages delivered in {:.1} s",
        if total { "total" } else { "FIFO" },
        if etcd_member_down {
            ", one etcd member down"
        } else {
            ""
        },
        moved_in.as_secs_f64() * 1e3,
        reports
            .iter()
            .map(|r| r["delivered"].as_u64().unwrap_or(0))
            .sum::<u64>(),
        started.elapsed().as_secs_f64()
    );
    Failover { moved_in }
}

#[test]
fn peers_move_to_the_other_tracker_when_theirs_is_killed_and_lose_nothing() {
    if cluster().is_none() {
        return;
    }
    for total in [false, true] {
        let run = failover(total, false);
        assert!(run.moved_in < Duration::from_secs(10));
    }
}

#[test]
fn one_etcd_member_down_changes_nothing_visible() {
    if cluster().is_none() {
        return;
    }
    failover(false, true);
}
