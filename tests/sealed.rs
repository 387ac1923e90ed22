//! Sealed groups with real processes: only members holding the key get in, see the members
//! or read a message; what a stranger injects, forges or replays is dropped and counted.

#![allow(clippy::unwrap_used)] // a test may stop at the first surprise

mod support;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::report::{self, ReportClient};
use support::{Process, bin, check_deliveries, key_file, lines_file, tracker};

const MESSAGES: usize = 300;

/// A script peer of group `books` holding the key in `key_args`, sending `MESSAGES` lines
/// at 100 a second (so that it runs for three seconds, while the test replays and forges).
fn sealed_peer(dir: &Path, name: &str, tracker: SocketAddr, key_args: &[String]) -> Process {
    let lines: Vec<String> = (0..MESSAGES).map(|i| format!("{name} {i}")).collect();
    let file = lines_file(dir, &format!("{name}.txt"), &lines);
    let mut args = vec![
        "127.0.0.1:0".to_owned(),
        name.to_owned(),
        tracker.to_string(),
        "-t".into(),
        file.display().to_string(),
        "--group".into(),
        "books".into(),
        "--members".into(),
        "2".into(),
        "--expect".into(),
        (2 * MESSAGES).to_string(),
        "--rate".into(),
        "100".into(),
        "--json".into(),
        "--deliveries".into(),
        dir.join(format!("{name}.tsv")).display().to_string(),
    ];
    args.extend(key_args.iter().cloned());
    Process::spawn("peer", &args)
}

/// The addresses the tracker lists for `group`, asked with `seal` shown.
fn listed(tracker: SocketAddr, group: &str, seal: Option<&str>) -> Value {
    let mut request = json!({"Type": 4, "Content": {"Group": group}});
    if let Some(s) = seal {
        request["Seal"] = json!(s);
    }
    report::request(tracker, request)
}

#[test]
fn a_sealed_group_keeps_strangers_out_and_drops_what_they_forge_or_replay() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = tracker(&[]);
    let (key, key_args) = key_file(dir.path(), "books");
    let token = key.tracker_token("books");

    // The test's own member, `tap`, holds the key's token (not the key): it joins first,
    // sealing the group, and records what the members send it.
    let tap = UdpSocket::bind("127.0.0.1:0").unwrap();
    tap.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let tap_addr = tap.local_addr().unwrap();
    let registered = report::request(
        tracker.addr,
        json!({"Type": 3, "Content": {"Ip": "127.0.0.1", "Port": tap_addr.port(), "Username": "tap"}}),
    );
    assert_eq!(registered["Success"], true, "{registered}");
    let joined = report::request(
        tracker.addr,
        json!({"Type": 2, "Content": {"Username": "tap", "Group": "books"}, "Seal": token}),
    );
    assert_eq!(joined["Success"], true, "{joined}");

    // The report's client shows no key: refused at join, and the group is as it was.
    let mut old = ReportClient::register(tracker.addr, "old");
    let refused = report::request(
        tracker.addr,
        json!({"Type": 2, "Content": {"Username": "old", "Group": "books"}}),
    );
    assert_eq!(refused["Success"], false, "{refused}");
    let reason = refused["Content"].as_str().unwrap();
    assert!(reason.contains("sealed"), "{reason}");
    // A stranger learns neither who is in it nor where they listen.
    for seal in [None, Some("00".repeat(32))] {
        let hidden = listed(tracker.addr, "books", seal.as_deref());
        assert_eq!(hidden["Success"], false, "{hidden}");
        let text = hidden.to_string();
        assert!(
            !text.contains("tap") && !text.contains(&tap_addr.port().to_string()),
            "{text}"
        );
    }
    let shown = listed(tracker.addr, "books", Some(&token));
    assert_eq!(shown["Content"][0]["Username"], "tap", "{shown}");
    // The report's client still works, in an open group.
    assert_eq!(old.join("films"), ["old"]);

    // A peer with the wrong key is told at join, and gives up.
    let (_, wrong_args) = key_file(dir.path(), "wrong");
    let wrong_args = [
        wrong_args[0].clone(),
        wrong_args[1].replacen("wrong=", "books=", 1),
    ];
    let eve = Command::new(bin("peer"))
        .args(["127.0.0.1:0", "eve", &tracker.addr.to_string(), "-t"])
        .arg(lines_file(dir.path(), "eve.txt", &["let me in".into()]))
        .args(["--group", "books", "--timeout-ms", "5000"])
        .args(&wrong_args)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&eve.stderr);
    assert!(!eve.status.success(), "{said}");
    assert!(said.contains("sealed with another key"), "{said}");

    // Whatever crosses the loopback interface, as root (a packet socket): for what ann
    // sends bob.
    let wire = Capture::start();
    // Two members with the key chat, at 100 messages a second each.
    let mut peers: Vec<Process> = ["ann", "bob"]
        .iter()
        .map(|name| sealed_peer(dir.path(), name, tracker.addr, &key_args))
        .collect();
    let bob_addr = member_addr(tracker.addr, &token, "bob");
    let ann_addr = member_addr(tracker.addr, &token, "ann");

    // What ann sends the tap in the first second: sealed, and unreadable.
    let mut captured: Vec<Vec<u8>> = Vec::new();
    let mut buf = [0u8; 65536];
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        if let Ok((n, from)) = tap.recv_from(&mut buf)
            && from == ann_addr
        {
            captured.push(buf[..n].to_vec());
        }
    }
    assert!(captured.len() > 10, "ann sent the tap {}", captured.len());
    assert!(captured.iter().all(|d| seal::is_sealed(d)));
    assert!(
        !captured.iter().any(|d| d.windows(4).any(|w| w == b"ann ")),
        "a message in clear"
    );
    // Sent on to bob (from the tap's address: whoever can send to bob can do it): they were
    // sealed for the tap and do not open at bob.
    for d in &captured {
        tap.send_to(d, bob_addr).unwrap();
    }
    // Replayed to bob: what ann sent him, captured on the wire.
    let replayed = match wire {
        Ok(wire) => {
            let to_bob = wire.stop(ann_addr, bob_addr);
            assert!(to_bob.len() > 10, "ann sent bob {}", to_bob.len());
            for d in &to_bob {
                tap.send_to(d, bob_addr).unwrap();
            }
            to_bob.len()
        }
        Err(why) => {
            eprintln!("skipped the replay of captured datagrams: {why}");
            0
        }
    };
    // Forged: one byte changed; sealed with another key; plain, claiming to be ann.
    let mut changed = captured[0].clone();
    let last = changed.len() - 1;
    changed[last] ^= 1;
    tap.send_to(&changed, bob_addr).unwrap();
    let stranger = seal::Sealer::new(&seal::GroupKey::generate());
    let fake = report::datagram(2, "books", "ann", "ann 9999", ann_addr, 9999, "ann");
    tap.send_to(&stranger.seal(&fake, bob_addr), bob_addr)
        .unwrap();
    tap.send_to(&fake, bob_addr).unwrap();

    let mut reports: HashMap<&str, Value> = HashMap::new();
    for (name, p) in ["ann", "bob"].into_iter().zip(peers.iter_mut()) {
        assert!(p.wait(Duration::from_secs(60)).success(), "{:#?}", p.seen);
        reports.insert(name, serde_json::from_str(p.seen.last().unwrap()).unwrap());
    }
    let names = ["ann".to_owned(), "bob".to_owned()];
    // Exactly once, in order: nothing replayed or forged was delivered.
    check_deliveries(dir.path(), &names, &names, MESSAGES, false);
    let sealed = &reports["bob"]["sealed"];
    assert_eq!(
        sealed["replayed"].as_u64(),
        Some(replayed as u64),
        "every replay dropped as such: {sealed}"
    );
    assert_eq!(
        sealed["wrong_key"].as_u64(),
        Some(captured.len() as u64 + 2),
        "what was sealed for the tap, changed, or sealed with another key: {sealed}"
    );
    assert_eq!(sealed["unsealed"], 1, "{sealed}");
    assert_eq!(reports["ann"]["sealed"]["wrong_key"], 0);
    eprintln!("bob's sealed datagrams: {sealed}");
}

/// The address the tracker lists for `name` in `books` (once it joined).
fn member_addr(tracker: SocketAddr, token: &str, name: &str) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = listed(tracker, "books", Some(token));
        if let Some(m) = reply["Content"]
            .as_array()
            .and_then(|list| list.iter().find(|m| m["Username"] == name))
        {
            let ip = m["Ip"].as_str().unwrap();
            let port = m["Port"].as_u64().unwrap();
            return format!("{ip}:{port}").parse().unwrap();
        }
        assert!(Instant::now() < deadline, "{name} never joined");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The UDP datagrams crossing the loopback interface, captured by a packet socket (root only)
/// on a thread of their own.
struct Capture {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(SocketAddr, SocketAddr, Vec<u8>)>>,
}

impl Capture {
    fn start() -> Result<Self, String> {
        use socket2::{Domain, Protocol, Socket, Type};
        // Every protocol (ETH_P_ALL, in network byte order), without the link-layer header.
        let socket = Socket::new(Domain::PACKET, Type::DGRAM, Some(Protocol::from(0x0300)))
            .map_err(|e| format!("no packet socket (root only): {e}"))?;
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            use std::io::Read as _;
            let mut got = Vec::new();
            let mut buf = vec![0u8; 70_000];
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(n) = (&socket).read(&mut buf) else {
                    continue;
                };
                if let Some(udp) = udp_of(&buf[..n]) {
                    got.push(udp);
                }
            }
            got
        });
        Ok(Self { stop, thread })
    }

    /// Stops; the payloads sent from `from` to `to`, each once (loopback shows a datagram
    /// as it leaves and as it arrives).
    fn stop(self, from: SocketAddr, to: SocketAddr) -> Vec<Vec<u8>> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let all = self.thread.join().unwrap();
        let mut seen = std::collections::HashSet::new();
        all.into_iter()
            .filter(|(f, t, _)| *f == from && *t == to)
            .map(|(_, _, payload)| payload)
            .filter(|p| seen.insert(p.clone()))
            .collect()
    }
}

/// An IPv4 packet's UDP datagram: source, destination, payload.
fn udp_of(packet: &[u8]) -> Option<(SocketAddr, SocketAddr, Vec<u8>)> {
    let version_ihl = *packet.first()?;
    if version_ihl >> 4 != 4 || packet.get(9) != Some(&17) {
        return None;
    }
    let ihl = usize::from(version_ihl & 0x0f) * 4;
    let ip = |at: usize| -> Option<std::net::Ipv4Addr> {
        let b: [u8; 4] = packet.get(at..at + 4)?.try_into().ok()?;
        Some(b.into())
    };
    let (src_ip, dst_ip) = (ip(12)?, ip(16)?);
    let udp = packet.get(ihl..)?;
    let port = |at: usize| -> Option<u16> {
        Some(u16::from_be_bytes(udp.get(at..at + 2)?.try_into().ok()?))
    };
    let (src_port, dst_port) = (port(0)?, port(2)?);
    let len = usize::from(port(4)?);
    let payload = udp.get(8..len)?.to_vec();
    Some((
        SocketAddr::from((src_ip, src_port)),
        SocketAddr::from((dst_ip, dst_port)),
        payload,
    ))
}
