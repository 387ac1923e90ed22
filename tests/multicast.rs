//! IP multicast as a transport (`--multicast`), as separate processes on 127.0.0.1: the
//! group lives on the loopback interface, with TTL 1, on a port the OS found free.

#![allow(clippy::unwrap_used)] // a test may stop at the first surprise

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{Process, check_deliveries, free_port, lines_file, script, sequencer_with, tracker};

const PEERS: usize = 4;
const MESSAGES: usize = 300;

/// A multicast group of its own for one test.
fn fresh_group() -> String {
    format!("239.255.1.1:{}", free_port())
}

/// Four peers listening on one multicast group, each sending [`MESSAGES`] at once; returns
/// their reports. Every peer delivers every message once, in each sender's order (in total
/// order, all in one sequence).
fn four_peers_on(group: &str, tracker: &str, total: bool) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..PEERS).map(|p| format!("p{p}")).collect();
    let mut peers: Vec<Process> = names
        .iter()
        .map(|name| {
            let lines: Vec<String> = (0..MESSAGES).map(|i| format!("{name} {i}")).collect();
            let file = lines_file(dir.path(), &format!("{name}.txt"), &lines);
            let mut args = script(&file)
                .members(PEERS)
                .deliveries(dir.path(), name)
                .total(total)
                .line("127.0.0.1:0", name, tracker);
            args.extend(["--multicast".to_owned(), group.to_owned()]);
            Process::spawn("peer", &args)
        })
        .collect();
    let mut reports = Vec::new();
    for (p, peer) in peers.iter_mut().enumerate() {
        let status = peer.wait(Duration::from_secs(60));
        assert!(status.success(), "peer {p} failed: {:#?}", peer.seen);
        let report: Value = serde_json::from_str(peer.seen.last().unwrap()).unwrap();
        assert_eq!(report["delivered"], (PEERS * MESSAGES) as u64, "{report}");
        reports.push(report);
    }
    check_deliveries(dir.path(), &names, &names, MESSAGES, total);
    reports
}

#[test]
fn fifo_peers_on_one_multicast_group_send_each_message_once_and_deliver_everything() {
    let tracker = tracker(&[]);
    let reports = four_peers_on(&fresh_group(), &tracker.addr.to_string(), false);
    for report in reports {
        // Every member had greeted every other before the first send: each message went
        // once, to the group; only retransmissions (if any) went to one member.
        assert_eq!(report["multicast_sent"], MESSAGES as u64, "{report}");
        assert_eq!(
            report["app_datagrams_sent"].as_u64().unwrap(),
            MESSAGES as u64 + report["recovery"]["retransmissions_sent"].as_u64().unwrap(),
            "{report}"
        );
    }
}

#[test]
fn the_sequencer_sends_each_ordered_message_once_to_the_members_multicast_group() {
    let mut sequencer = sequencer_with(&["--multicast"]);
    let seq = sequencer.addr.to_string();
    let tracker = tracker(&["--seq-addr", &seq]);
    four_peers_on(&fresh_group(), &tracker.addr.to_string(), true);
    sequencer.process.interrupt();
    let stopped = sequencer.process.expect(
        |l| l.starts_with("sequencer stopped"),
        "the sequencer's figures",
    );
    // "... N out (M to the members' multicast group) ...": every message sequenced went to
    // the group once (each member's Hello had reached it before that member sent).
    let figure = |before: &str| -> u64 {
        let head = stopped.split(before).next().unwrap();
        head.split_whitespace()
            .last()
            .unwrap()
            .trim_start_matches('(')
            .parse()
            .unwrap()
    };
    let sequenced = figure(" messages sequenced");
    let to_group = figure(" to the members' multicast group");
    assert_eq!(sequenced, (PEERS * MESSAGES) as u64, "{stopped}");
    assert_eq!(to_group, sequenced, "{stopped}");
}
