//! Stand-ins for the report's Python programs, doing on the wire what those programs really
//! do (SPEC §3): one TCP connection per tracker request with indented JSON and one read;
//! every datagram from a new, unbound UDP socket (so its source port is ephemeral and only
//! `SrcIp`/`SrcPort` name the sender); receiving on the bound socket with a 4096-byte read;
//! exactly the eight keys of the report's datagrams; one counter across all groups.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// One request as the report's client makes it: a connection of its own, indented JSON
/// without a newline, one `recv(4096)`.
pub fn request(tracker: SocketAddr, request: Value) -> Value {
    let mut s = TcpStream::connect(tracker).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(serde_json::to_string_pretty(&request).unwrap().as_bytes())
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    serde_json::from_slice(&buf[..n]).unwrap()
}

/// A datagram with exactly the report's eight keys.
pub fn datagram(
    kind: u8,
    group: &str,
    username: &str,
    content: &str,
    src: SocketAddr,
    counter: u64,
    origin: &str,
) -> Vec<u8> {
    serde_json::to_vec_pretty(&json!({
        "Type": kind, "Group": group, "Username": username, "Content": content,
        "SrcIp": src.ip().to_string(), "SrcPort": src.port(), "Counter": counter,
        "Origin": origin,
    }))
    .unwrap()
}

/// Sends `bytes` to `to` the report's way: from a new socket, closed at once.
pub fn send_from_fresh_socket(bytes: &[u8], to: SocketAddr) {
    let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
    sock.send_to(bytes, to).unwrap();
}

/// The report's client (`client.py`), reduced to what the tests need.
pub struct ReportClient {
    pub name: String,
    pub addr: SocketAddr,
    tracker: SocketAddr,
    sock: UdpSocket,
    /// One counter across every group, incremented before each application message.
    counter: u64,
    /// Each group's members as it knows them: the tracker's list at its join, plus any
    /// sender it hears from (the report's client adds unknown senders).
    members: HashMap<String, Vec<(String, SocketAddr)>>,
}

impl ReportClient {
    /// Binds a socket on 127.0.0.1 and registers `name`.
    pub fn register(tracker: SocketAddr, name: &str) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let reply = request(
            tracker,
            json!({"Type": 3, "Content": {"Ip": "127.0.0.1", "Port": addr.port(), "Username": name}}),
        );
        assert_eq!(reply["Success"], true, "register {name}: {reply}");
        Self {
            name: name.to_owned(),
            addr,
            tracker,
            sock,
            counter: 0,
            members: HashMap::new(),
        }
    }

    /// Joins `group` and says Hello to every member of the tracker's list (itself
    /// included, as the report's client does); returns the member names.
    pub fn join(&mut self, group: &str) -> Vec<String> {
        let reply = request(
            self.tracker,
            json!({"Type": 2, "Content": {"Username": self.name, "Group": group}}),
        );
        assert_eq!(reply["Success"], true, "join {group}: {reply}");
        let members: Vec<(String, SocketAddr)> = reply["Content"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let addr = format!("{}:{}", m["Ip"].as_str().unwrap(), m["Port"])
                    .parse()
                    .unwrap();
                (m["Username"].as_str().unwrap().to_owned(), addr)
            })
            .collect();
        let hello = datagram(1, group, &self.name, "", self.addr, 0, &self.name);
        for (_, to) in &members {
            send_from_fresh_socket(&hello, *to);
        }
        let names = members.iter().map(|(n, _)| n.clone()).collect();
        self.members.insert(group.to_owned(), members);
        names
    }

    /// Multicasts `text` in `group`: one datagram to each member it knows, each from a
    /// fresh socket.
    pub fn multicast(&mut self, group: &str, text: &str) {
        self.counter += 1;
        let bytes = datagram(
            2,
            group,
            &self.name,
            text,
            self.addr,
            self.counter,
            &self.name,
        );
        for (_, to) in &self.members[group] {
            send_from_fresh_socket(&bytes, *to);
        }
    }

    /// The next datagram within `timeout`, parsed, after checking that it holds the eight
    /// keys, a Type the report knows and fits the report's read. A sender it did not know
    /// is added to the group, as the report's client does.
    pub fn receive(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            let Ok((n, _)) = self.sock.recv_from(&mut buf) else {
                continue;
            };
            assert!(n < buf.len(), "a datagram too long for the report's read");
            let d: Value = serde_json::from_slice(&buf[..n]).unwrap();
            for key in [
                "Type", "Group", "Username", "Content", "SrcIp", "SrcPort", "Counter", "Origin",
            ] {
                assert!(d.get(key).is_some(), "datagram without {key}: {d}");
            }
            let kind = d["Type"].as_u64().unwrap();
            assert!(
                (1..=3).contains(&kind),
                "the report's client got Type {kind}"
            );
            let group = d["Group"].as_str().unwrap();
            let sender = d["Username"].as_str().unwrap();
            if let Some(members) = self.members.get_mut(group)
                && !members.iter().any(|(n, _)| n == sender)
            {
                let addr = format!("{}:{}", d["SrcIp"].as_str().unwrap(), d["SrcPort"])
                    .parse()
                    .unwrap();
                members.push((sender.to_owned(), addr));
            }
            return Some(d);
        }
        None
    }

    /// Receives until `count` application messages (from the sequencer only, with
    /// `total`) arrived or `timeout` passed; returns them as (origin, counter, content).
    pub fn collect(&mut self, count: usize, total: bool, timeout: Duration) -> Vec<Delivered> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        while got.len() < count {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            let Some(d) = self.receive(left) else { break };
            if d["Type"] != 2 || (total && d["Username"] != "sequencer") {
                continue;
            }
            got.push(Delivered {
                origin: d["Origin"].as_str().unwrap().to_owned(),
                counter: d["Counter"].as_u64().unwrap(),
                text: d["Content"].as_str().unwrap().to_owned(),
            });
        }
        got
    }
}

/// An application message as the report's client received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub origin: String,
    pub counter: u64,
    pub text: String,
}

/// The report's sequencer (`sequencer.py`) on its own thread: it learns members from the
/// datagrams it receives (their `SrcIp`/`SrcPort`), forwards every application message at
/// once (its FIFO check compares with a group counter that its code never increments, so
/// the "first message" branch is taken every time), numbers what it forwards with one
/// counter across every group, and sends each copy from a fresh socket. It never answers
/// a Hello.
pub struct ReportSequencer {
    pub addr: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ReportSequencer {
    pub fn start() -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let halt = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut groups: HashMap<String, Vec<SocketAddr>> = HashMap::new();
            let mut counter = 0u64;
            let mut buf = [0u8; 4096];
            while !halt.load(Ordering::Relaxed) {
                let Ok((n, _)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(d) = serde_json::from_slice::<Value>(&buf[..n]) else {
                    continue;
                };
                let group = d["Group"].as_str().unwrap_or_default().to_owned();
                let author = d["Username"].as_str().unwrap_or_default().to_owned();
                let src: SocketAddr = format!("{}:{}", d["SrcIp"].as_str().unwrap(), d["SrcPort"])
                    .parse()
                    .unwrap();
                let members = groups.entry(group.clone()).or_default();
                if !members.contains(&src) {
                    members.push(src);
                }
                match d["Type"].as_u64() {
                    Some(3) => members.retain(|m| *m != src),
                    Some(2) => {
                        counter += 1;
                        let copy = datagram(
                            2,
                            &group,
                            "sequencer",
                            d["Content"].as_str().unwrap_or_default(),
                            addr,
                            counter,
                            &author,
                        );
                        for to in members.iter() {
                            send_from_fresh_socket(&copy, *to);
                        }
                    }
                    _ => {}
                }
            }
        });
        Self {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for ReportSequencer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
