//! Past one machine: the tracker, the sequencer and five peers each on a host of its own —
//! a network namespace with one interface (MTU 1,500) on a shared bridge — so every datagram
//! crosses real interfaces between distinct addresses, as on a LAN. The peers bind the
//! unspecified address or their own; every message must arrive once and in order, with and
//! without 10 % loss on every host's interface (and over an IP multicast group on the
//! bridge, at 10 % loss), and each peer must be registered (and so be reached) at the
//! address others can send to. Needs root; says so and skips otherwise.

#![allow(clippy::unwrap_used)] // a test may stop at the first surprise

mod support;

use std::time::Duration;

use serde_json::Value;
use support::hosts::Hosts;
use support::netns::can_run;
use support::{Process, check_deliveries, lines_file, script};

const PEERS: usize = 5;
const TRACKER_PORT: u16 = 5000;
const SEQUENCER_PORT: u16 = 5001;

/// How peer `p` binds, and the address it must be registered at. Three ways: the
/// unspecified address and a port of its choosing (it registers the address of its route to
/// the tracker), the unspecified address and `--advertise` (registered as told), and its
/// own address.
fn binding(p: usize, host: usize) -> (Vec<String>, Option<String>) {
    let own = Hosts::address(host);
    match p % 3 {
        0 => (vec!["0.0.0.0:0".into()], None),
        1 => {
            let port = 6000 + p;
            let advertised = format!("{own}:{port}");
            (
                vec![
                    format!("0.0.0.0:{port}"),
                    "--advertise".into(),
                    advertised.clone(),
                ],
                Some(advertised),
            )
        }
        _ => (vec![format!("{own}:0")], None),
    }
}

/// The IP multicast group of the runs over one (`--multicast`), on the hosts' bridge.
const MULTICAST_GROUP: &str = "239.255.4.1:7400";

/// Five peers on five hosts, `messages` each, in one group; `percent` % of the datagrams
/// entering every host dropped (the tracker's port spared); `multicast`: the peers listen
/// on [`MULTICAST_GROUP`] and the sequencer sends there. Returns a line of figures.
fn chat_across_hosts(total: bool, percent: u32, messages: usize, multicast: bool) -> String {
    // Host 0: the tracker; host 1: the sequencer; hosts 2..: the peers.
    let hosts = Hosts::create(if total { "ht" } else { "hf" }, 2 + PEERS).unwrap();
    for i in 0..2 + PEERS {
        assert_eq!(hosts.mtu(i).unwrap(), 1500);
    }
    if percent > 0 {
        for host in &hosts.hosts {
            host.lose(percent, TRACKER_PORT).unwrap();
        }
    }
    let tracker = format!("{}:{TRACKER_PORT}", Hosts::address(0));
    let sequencer = format!("{}:{SEQUENCER_PORT}", Hosts::address(1));
    let _sequencer = total.then(|| {
        let mut args = vec![sequencer.clone()];
        if multicast {
            args.push("--multicast".into());
        }
        hosts.host(1).spawn("sequencer", &args)
    });
    let mut tracker_args = vec![tracker.clone(), "-v".into()];
    if total {
        tracker_args.extend(["--seq-addr".into(), sequencer.clone()]);
    }
    let mut tracker_process = hosts
        .host(0)
        .spawn_capturing_stderr("tracker", &tracker_args);
    tracker_process.expect(|l| l.contains("tracker listening"), "the tracker's banner");
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..PEERS).map(|p| format!("p{p}")).collect();
    let mut expected_addr = Vec::new();
    let mut peers: Vec<Process> = names
        .iter()
        .enumerate()
        .map(|(p, name)| {
            let host = 2 + p;
            let lines: Vec<String> = (0..messages).map(|i| format!("{name} {i}")).collect();
            let file = lines_file(dir.path(), &format!("{name}.txt"), &lines);
            let (bind, advertised) = binding(p, host);
            expected_addr.push(advertised.unwrap_or_else(|| Hosts::address(host).to_string()));
            let mut args = script(&file)
                .members(PEERS)
                .expect((PEERS * messages) as u64)
                .timeout_ms(120_000)
                .deliveries(dir.path(), name)
                .total(total)
                .line(&bind[0], name, &tracker);
            args.extend(bind[1..].iter().cloned());
            if multicast {
                args.extend(["--multicast".into(), MULTICAST_GROUP.into()]);
            }
            hosts.host(host).spawn("peer", &args)
        })
        .collect();
    let mut reports = Vec::new();
    for (p, peer) in peers.iter_mut().enumerate() {
        assert!(
            peer.wait(Duration::from_secs(150)).success(),
            "peer {p} across hosts at {percent} % loss: {:#?}",
            peer.seen
        );
        let report: Value = serde_json::from_str(peer.seen.last().unwrap()).unwrap();
        reports.push(report);
    }
    check_deliveries(dir.path(), &names, &names, messages, total);
    // Each was registered at an address of its host that the others could send to (they
    // did: everything arrived), never at 0.0.0.0.
    let mut registered = Vec::new();
    while let Some(line) = tracker_process.next_line(Duration::from_millis(200)) {
        registered.extend(line.split_once(" registered at ").map(|(who, at)| {
            let who = who.rsplit(' ').next().unwrap_or_default().to_owned();
            (who, at.trim().to_owned())
        }));
    }
    for (p, name) in names.iter().enumerate() {
        let at = registered
            .iter()
            .find(|(who, _)| who == name)
            .map(|(_, at)| at.clone())
            .unwrap_or_else(|| panic!("the tracker never logged {name}'s registration"));
        let expected = &expected_addr[p];
        let matches = if expected.contains(':') {
            &at == expected
        } else {
            at.rsplit_once(':').map(|(ip, _)| ip) == Some(expected.as_str())
        };
        assert!(matches, "{name} registered at {at}, not at {expected}");
    }
    let sum = |key: &[&str]| -> u64 {
        reports
            .iter()
            .map(|r| key.iter().fold(r, |v, k| &v[*k]).as_u64().unwrap_or(0))
            .sum()
    };
    // Bundles fit the interfaces' MTU: no host split a datagram or reassembled one.
    for i in 0..2 + PEERS {
        for counter in ["FragCreates", "ReasmReqds"] {
            assert_eq!(
                hosts.ip_counter(i, counter).unwrap(),
                0,
                "host {i}: {counter}"
            );
        }
    }
    assert!(
        hosts.ip_counter(2, "InReceives").unwrap() > 100,
        "the peers' traffic did not cross the hosts' interfaces"
    );
    if percent > 0 {
        let dropped: u64 = hosts.hosts.iter().map(|h| h.dropped().unwrap()).sum();
        assert!(dropped > 0, "the loss rules dropped nothing");
        assert!(
            sum(&["recovery", "gaps_recovered"]) > 0,
            "no recovery at {percent} % loss: the losses were not real"
        );
    }
    for r in &reports {
        assert_eq!(r["times_evicted"], 0, "a peer was evicted while alive: {r}");
        if multicast && !total {
            // Every message crossed the bridge once, to the group.
            assert_eq!(r["multicast_sent"], r["sent"], "{r}");
        }
    }
    format!(
        "{} order across {} hosts{} at {percent} % loss: {} delivered, {} retransmission requests",
        if total { "total" } else { "FIFO" },
        2 + PEERS,
        if multicast { " over IP multicast" } else { "" },
        sum(&["delivered"]),
        sum(&["recovery", "nacks_sent"])
    )
}

fn skip() -> bool {
    match can_run() {
        Ok(()) => false,
        Err(why) => {
            eprintln!("skipped: the multi-host tests need network namespaces and iptables: {why}");
            true
        }
    }
}

#[test]
fn five_peers_on_five_hosts_deliver_every_message_once_and_in_order() {
    if skip() {
        return;
    }
    for total in [false, true] {
        eprintln!("{}", chat_across_hosts(total, 0, 1000, false));
    }
}

#[test]
fn five_peers_on_five_hosts_deliver_every_message_under_ten_percent_loss() {
    if skip() {
        return;
    }
    for total in [false, true] {
        eprintln!("{}", chat_across_hosts(total, 10, 1000, false));
    }
}

#[test]
fn five_peers_on_five_hosts_over_ip_multicast_deliver_every_message_under_ten_percent_loss() {
    if skip() {
        return;
    }
    for total in [false, true] {
        eprintln!("{}", chat_across_hosts(total, 10, 1000, true));
    }
}
