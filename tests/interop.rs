//! Our programs against stand-ins for the report's own client and sequencer that behave on
//! the wire as those Python programs do: every datagram from a fresh, unbound socket, the
//! eight keys only, one `recv(4096)` (see `support::report`).

#![allow(clippy::unwrap_used)] // a test may stop at the first surprise

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use support::report::{self, ReportClient, ReportSequencer};
use support::{
    Process, check_deliveries, deliveries, free_port, interactive, lines_file, tracker, tracker_at,
    tracker_for, tracker_with_sequencer,
};

const MESSAGES: usize = 100;

/// Our peer in script mode: sends `MESSAGES` lines `NAME i`, waits for `members` members,
/// logs its deliveries to `NAME.tsv`.
fn script_peer(
    dir: &Path,
    name: &str,
    tracker: std::net::SocketAddr,
    members: usize,
    expect: usize,
    total: bool,
) -> Process {
    let lines: Vec<String> = (0..MESSAGES).map(|i| format!("{name} {i}")).collect();
    let file = lines_file(dir, &format!("{name}.txt"), &lines);
    let mut args = vec![
        "127.0.0.1:0".to_owned(),
        name.to_owned(),
        tracker.to_string(),
        "-t".into(),
        file.display().to_string(),
        "--members".into(),
        members.to_string(),
        "--expect".into(),
        expect.to_string(),
        "--deliveries".into(),
        dir.join(format!("{name}.tsv")).display().to_string(),
    ];
    if total {
        args.push("-s".into());
    }
    Process::spawn("peer", &args)
}

/// Waits until `name` is a member of `group` at the tracker (asked the report's way).
fn wait_for_member(tracker: std::net::SocketAddr, group: &str, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = report::request(tracker, json!({"Type": 4, "Content": {"Group": group}}));
        if reply["Content"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["Username"] == name))
        {
            return;
        }
        assert!(Instant::now() < deadline, "{name} never joined {group}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Our peer `new` and the report's client `old` in one group, 100 messages each way.
fn report_client_and_our_peer(total: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (tracker, _sequencer) = tracker_for(total);
    let mut ours = script_peer(dir.path(), "new", tracker.addr, 2, 2 * MESSAGES, total);
    wait_for_member(tracker.addr, "test", "new");
    let mut old = ReportClient::register(tracker.addr, "old");
    let listed = old.join("test");
    assert!(listed.contains(&"new".to_owned()), "{listed:?}");
    for i in 0..MESSAGES {
        old.multicast("test", &format!("old {i}"));
    }
    // The report's client also sends to itself (it is on the tracker's list); in total
    // order it delivers only the sequencer's copies.
    let got = old.collect(2 * MESSAGES, total, Duration::from_secs(20));
    assert!(
        ours.wait(Duration::from_secs(30)).success(),
        "{:#?}",
        ours.seen
    );

    let of = |author: &str| -> Vec<String> {
        got.iter()
            .filter(|d| d.origin == author)
            .map(|d| d.text.clone())
            .collect()
    };
    let expected =
        |author: &str| -> Vec<String> { (0..MESSAGES).map(|i| format!("{author} {i}")).collect() };
    assert_eq!(
        of("new"),
        expected("new"),
        "our peer's messages reach the report's client, in order"
    );
    assert_eq!(of("old"), expected("old"));
    let counters: Vec<u64> = got
        .iter()
        .filter(|d| d.origin == "new")
        .map(|d| d.counter)
        .collect();
    assert!(
        counters.windows(2).all(|w| w[0] < w[1]),
        "counters increase: {counters:?}"
    );
    let ours_got: Vec<(String, String)> = deliveries(&dir.path().join("new.tsv"))
        .into_iter()
        .map(|d| (d.author, d.text))
        .collect();
    let old_at_ours: Vec<String> = ours_got
        .iter()
        .filter(|(a, _)| a == "old")
        .map(|(_, t)| t.clone())
        .collect();
    assert_eq!(
        old_at_ours,
        expected("old"),
        "the report's client's messages, sent from fresh sockets, are delivered in order"
    );
    if total {
        let theirs: Vec<(String, String)> = got
            .iter()
            .map(|d| (d.origin.clone(), d.text.clone()))
            .collect();
        assert_eq!(
            theirs, ours_got,
            "the report's client and our peer deliver one sequence"
        );
    }
}

#[test]
fn the_reports_client_sending_from_fresh_sockets_chats_with_our_peer_in_fifo_order() {
    report_client_and_our_peer(false);
}

#[test]
fn the_reports_client_sending_from_fresh_sockets_chats_with_our_peer_in_total_order() {
    report_client_and_our_peer(true);
}

#[test]
fn our_peers_deliver_one_sequence_from_the_reports_sequencer() {
    let dir = tempfile::tempdir().unwrap();
    let seq = ReportSequencer::start();
    let tracker = tracker(&["--seq-addr", &seq.addr.to_string()]);
    let names = ["ann".to_owned(), "bob".to_owned()];
    let mut peers: Vec<Process> = names
        .iter()
        .map(|n| script_peer(dir.path(), n, tracker.addr, 2, 2 * MESSAGES, true))
        .collect();
    for (peer, name) in peers.iter_mut().zip(&names) {
        assert!(
            peer.wait(Duration::from_secs(30)).success(),
            "{name}: {:#?}",
            peer.seen
        );
    }
    check_deliveries(dir.path(), &names, &names, MESSAGES, true);
}

#[test]
fn a_peer_of_the_other_order_is_told_at_join_and_changes_nothing() {
    let (tracker, _sequencer) = tracker_with_sequencer();
    let mut ford = interactive("ford", tracker.addr, true);
    let mut kat = interactive("kat", tracker.addr, false);
    ford.expect(|l| l.starts_with("registered as ford"), "registered");
    kat.expect(|l| l.starts_with("registered as kat"), "registered");
    ford.send("!j books");
    ford.expect_line("joined books; writing to books");
    kat.send("!j books");
    let refused = kat.expect(|l| l.contains("cannot join books"), "a refused join");
    assert!(
        refused.contains("uses total order") && refused.contains("-s"),
        "{refused}"
    );
    kat.send("!lm books");
    kat.expect_line("members: (ford), (sequencer)");
    // The other way round: a FIFO group refuses a total-order peer.
    kat.send("!j films");
    kat.expect_line("joined films; writing to films");
    ford.send("!j films");
    let refused = ford.expect(|l| l.contains("cannot join films"), "a refused join");
    assert!(refused.contains("uses FIFO order"), "{refused}");
}

#[test]
fn total_order_without_a_sequencer_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = tracker(&[]);
    let mut ann = interactive("ann", tracker.addr, true);
    ann.expect(|l| l.starts_with("registered as ann"), "registered");
    ann.send("!j books");
    let refused = ann.expect(|l| l.contains("cannot join books"), "a refused join");
    assert!(refused.contains("needs a sequencer"), "{refused}");
    ann.send("hello?");
    ann.expect(
        |l| l.starts_with("no group selected"),
        "no group to write to",
    );
    // A script cannot do its work: it ends at once with an error.
    let mut script = script_peer(dir.path(), "bob", tracker.addr, 1, 1, true);
    let status = script.wait(Duration::from_secs(10));
    assert!(!status.success(), "{:#?}", script.seen);
}

#[test]
fn the_name_sequencer_is_reserved_whatever_the_trackers_options() {
    let plain = tracker(&[]);
    let (with_sequencer, _sequencer) = tracker_with_sequencer();
    for tracker in [plain.addr, with_sequencer.addr] {
        let mut impostor = Process::spawn(
            "peer",
            &[
                "127.0.0.1:0".into(),
                "sequencer".into(),
                tracker.to_string(),
            ],
        );
        let status = impostor.wait(Duration::from_secs(10));
        assert!(!status.success(), "{:#?}", impostor.seen);
        // The report's client is refused too.
        let reply = report::request(
            tracker,
            json!({"Type": 3, "Content": {"Ip": "127.0.0.1", "Port": 5999, "Username": "sequencer"}}),
        );
        assert_eq!(reply["Success"], false, "{reply}");
        assert!(
            reply["Content"].as_str().unwrap().contains("reserved"),
            "{reply}"
        );
    }
}

#[test]
fn the_sequencer_reports_its_registration_truthfully_and_keeps_its_connection() {
    let port = free_port();
    let tracker_addr = format!("127.0.0.1:{port}");
    let mut seq = Process::spawn_capturing_stderr(
        "sequencer",
        &[
            "127.0.0.1:0".into(),
            "--tracker".into(),
            tracker_addr.clone(),
        ],
    );
    let banner = seq.next_line(Duration::from_secs(10)).unwrap();
    assert!(banner.contains("registering with the tracker"), "{banner}");
    seq.expect(
        |l| l.starts_with("stderr: cannot reach the tracker"),
        "the unreachable tracker reported",
    );
    assert!(
        !seq.seen.iter().any(|l| l.starts_with("registered")),
        "no registration claimed without a tracker: {:#?}",
        seq.seen
    );
    let seq_addr = banner
        .split_whitespace()
        .nth(3)
        .unwrap()
        .trim_end_matches(';');
    // The tracker closes connections idle for 1.5 s; heartbeats every 100 ms.
    let _tracker = tracker_at(
        &tracker_addr,
        &[
            "--seq-addr",
            seq_addr,
            "--heartbeat-ms",
            "100",
            "--idle-timeout-ms",
            "1500",
        ],
    );
    seq.expect_line(&format!("registered with the tracker at {tracker_addr}"));
    std::thread::sleep(Duration::from_secs(5));
    while seq.next_line(Duration::from_millis(100)).is_some() {}
    assert!(
        !seq.seen.iter().any(|l| l.contains("lost the tracker")),
        "the idle timeout closed the sequencer's connection: {:#?}",
        seq.seen
    );
}

#[test]
fn a_peer_bound_to_every_interface_registers_an_address_the_others_reach() {
    let tracker = tracker(&[]);
    let mut anywhere = Process::spawn(
        "peer",
        &["0.0.0.0:0".into(), "ann".into(), tracker.addr.to_string()],
    );
    anywhere.expect(|l| l.starts_with("registered as ann"), "registered");
    let listed = report::request(
        tracker.addr,
        json!({"Type": 3, "Content": {"Ip": "0.0.0.0", "Port": 5011, "Username": "nowhere"}}),
    );
    assert_eq!(listed["Success"], false, "{listed}");
    anywhere.send("!j books");
    anywhere.expect_line("joined books; writing to books");
    let reply = report::request(
        tracker.addr,
        json!({"Type": 4, "Content": {"Group": "books"}}),
    );
    assert_eq!(reply["Content"][0]["Ip"], "127.0.0.1", "{reply}");
    let mut bob = interactive("bob", tracker.addr, false);
    bob.expect(|l| l.starts_with("registered as bob"), "registered");
    bob.send("!j books");
    bob.expect_line("joined books; writing to books");
    bob.send("hello, ann");
    anywhere.expect_line("in books bob says:: hello, ann");
    anywhere.send("hello, bob");
    bob.expect_line("in books ann says:: hello, bob");
}
