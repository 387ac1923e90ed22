//! The tracker over real sockets on 127.0.0.1: the report's client, persistent clients,
//! split writes, every operation, eviction and its Bye notices, bounds and bad input.

#![allow(clippy::unwrap_used)] // a test may stop at the first surprise

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use proto::{Datagram, DatagramType, Envelope, JsonFramer, Reply, Request, Secret};
use serde_json::{Value, json};
use tracker::{Liveness, Shutdown, Stats, Tracker, TrackerConfig};

/// A tracker running on its own thread, stopped when dropped.
struct Running {
    addr: SocketAddr,
    stop: Shutdown,
    stats: Arc<Stats>,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    fn start(configure: impl FnOnce(&mut TrackerConfig)) -> Self {
        let mut config = TrackerConfig::new("127.0.0.1:0".parse().unwrap());
        configure(&mut config);
        let mut tracker = Tracker::bind(config).unwrap();
        let addr = tracker.local_addr();
        let stop = tracker.shutdown_handle();
        let stats = tracker.stats();
        let thread = thread::spawn(move || tracker.run().unwrap());
        Self {
            addr,
            stop,
            stats,
            thread: Some(thread),
        }
    }

    fn default() -> Self {
        Self::start(|_| {})
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.shutdown();
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

/// The report's client: a new connection, one indented JSON value without newline, one
/// `recv(4096)`, and the tracker closes the connection.
fn report_client(addr: SocketAddr, request: Value) -> Value {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(serde_json::to_string_pretty(&request).unwrap().as_bytes())
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).unwrap();
    let reply: Value = serde_json::from_slice(&buf[..n]).unwrap();
    assert_eq!(
        stream.read(&mut buf).unwrap(),
        0,
        "the tracker closes the connection after its reply"
    );
    reply
}

/// A newer client: one connection, many requests, replies framed from the stream.
/// A newer client on one connection, for any number of members: it keeps each member's
/// secret from its Register reply and shows it in the requests about that member.
struct Persistent {
    stream: TcpStream,
    framer: JsonFramer,
    secrets: std::collections::HashMap<String, Secret>,
    /// Members registered by requests whose replies have not been read yet.
    registering: std::collections::VecDeque<Option<String>>,
}

impl Persistent {
    fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Self {
            stream,
            framer: JsonFramer::new(1 << 20),
            secrets: Default::default(),
            registering: Default::default(),
        }
    }

    fn send(&mut self, request: Request) {
        let (name, registers) = match &request {
            Request::Register { username, .. } => (Some(username.clone()), true),
            Request::JoinGroup { username, .. }
            | Request::ExitGroup { username, .. }
            | Request::Quit { username }
            | Request::Heartbeat { username } => (Some(username.clone()), false),
            _ => (None, false),
        };
        let secret = name.as_ref().and_then(|n| self.secrets.get(n)).cloned();
        self.registering.push_back(name.filter(|_| registers));
        let bytes = Envelope {
            request,
            proto: Some(2),
            secret,
            seal: None,
        }
        .encode();
        self.stream.write_all(&bytes).unwrap();
    }

    fn secret_of(&self, name: &str) -> Option<Secret> {
        self.secrets.get(name).cloned()
    }

    fn reply(&mut self) -> Reply {
        loop {
            if let Some(frame) = self.framer.next_frame().unwrap() {
                let reply = Reply::decode(frame).unwrap();
                if let Some(Some(name)) = self.registering.pop_front()
                    && let Some(secret) = &reply.secret
                {
                    self.secrets.insert(name, secret.clone());
                }
                return reply;
            }
            let mut buf = [0u8; 4096];
            let n = self.stream.read(&mut buf).unwrap();
            assert!(n > 0, "the tracker closed a persistent connection");
            self.framer.push(&buf[..n]);
        }
    }

    fn call(&mut self, request: Request) -> Reply {
        self.send(request);
        self.reply()
    }
}

fn register(name: &str, port: u16) -> Request {
    Request::Register {
        ip: "127.0.0.1".into(),
        port,
        username: name.into(),
    }
}

fn join(name: &str, group: &str) -> Request {
    Request::JoinGroup {
        username: name.into(),
        group: group.into(),
        order: None,
    }
}

fn names(reply: &Reply) -> Vec<String> {
    reply
        .members()
        .unwrap()
        .into_iter()
        .map(|m| m.username)
        .collect()
}

#[test]
fn the_report_client_gets_every_reply_on_its_own_connection() {
    let t = Running::default();
    let uid = report_client(
        t.addr,
        json!({"Type": 3, "Content": {"Ip": "127.0.0.1", "Port": 7001, "Username": "ford"}}),
    );
    assert_eq!(uid["Success"], true);
    assert!(uid["Content"].is_string());
    assert!(
        uid.get("HeartbeatMs").is_none(),
        "an old client is not told the newer interval"
    );
    report_client(
        t.addr,
        json!({"Type": 3, "Content": {"Ip": "127.0.0.1", "Port": 7002, "Username": "katerina"}}),
    );
    let joined = report_client(
        t.addr,
        json!({"Type": 2, "Content": {"Username": "ford", "Group": "books"}}),
    );
    assert_eq!(
        joined,
        json!({"Success": true, "Content": [
            {"Ip": "127.0.0.1", "Port": 7001, "Username": "ford", "Uid": uid["Content"]}
        ]})
    );
    report_client(
        t.addr,
        json!({"Type": 2, "Content": {"Username": "katerina", "Group": "distrib"}}),
    );
    assert_eq!(
        report_client(t.addr, json!({"Type": 1, "Content": {}})),
        json!({"Success": true, "Content": ["books", "distrib"]})
    );
    let members = report_client(t.addr, json!({"Type": 4, "Content": {"Group": "books"}}));
    assert_eq!(members["Content"][0]["Username"], "ford");
    assert_eq!(
        report_client(t.addr, json!({"Type": 4, "Content": {"Group": "chess"}})),
        json!({"Success": false, "Content": []})
    );
    assert_eq!(
        report_client(t.addr, json!({"Type": 7, "Content": {"Username": "ford"}})),
        json!({"Success": true, "Content": ""})
    );
    assert_eq!(
        report_client(
            t.addr,
            json!({"Type": 5, "Content": {"Username": "katerina", "Group": "distrib"}})
        ),
        json!({"Success": true, "Content": ""})
    );
    assert_eq!(
        report_client(t.addr, json!({"Type": 1, "Content": {}})),
        json!({"Success": true, "Content": ["books"]}),
        "a group with no members left disappears"
    );
    assert_eq!(
        report_client(t.addr, json!({"Type": 6, "Content": {"Username": "ford"}})),
        json!({"Success": true, "Content": ""})
    );
    assert_eq!(
        report_client(t.addr, json!({"Type": 1, "Content": {}})),
        json!({"Success": true, "Content": []})
    );
}

#[test]
fn a_persistent_client_sends_many_requests_on_one_connection() {
    let t = Running::default();
    let mut c = Persistent::connect(t.addr);
    let registered = c.call(register("ford", 7001));
    assert!(registered.success);
    assert_eq!(
        registered.heartbeat_ms,
        Some(1000),
        "newer members learn the interval"
    );
    // Pipelined: many requests written before any reply is read.
    for i in 0..200 {
        c.send(join("ford", &format!("g{i:03}")));
    }
    for i in 0..200 {
        let reply = c.reply();
        assert!(reply.success, "join {i}: {reply:?}");
        assert_eq!(names(&reply), ["ford"]);
    }
    assert_eq!(c.call(Request::ListGroups).names().unwrap().len(), 200);
    assert_eq!(t.stats.snapshot().connections_accepted, 1);
}

#[test]
fn a_request_split_over_many_segments_is_answered() {
    let t = Running::default();
    let mut stream = TcpStream::connect(t.addr).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let text = serde_json::to_string_pretty(
        &json!({"Type": 3, "Content": {"Ip": "127.0.0.1", "Port": 7001, "Username": "split\"}{\"user"}}),
    )
    .unwrap();
    for chunk in text.as_bytes().chunks(3) {
        stream.write_all(chunk).unwrap();
        thread::sleep(Duration::from_millis(2));
    }
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).unwrap();
    let reply = Reply::decode(&reply).unwrap();
    assert!(reply.success, "{reply:?}");
}

#[test]
fn the_sequencer_is_a_member_of_every_group() {
    let t = Running::start(|c| c.sequencer = Some("127.0.0.1:9999".parse().unwrap()));
    let mut c = Persistent::connect(t.addr);
    c.call(register("ford", 7001));
    let joined = c.call(join("ford", "books"));
    let members = joined.members().unwrap();
    assert_eq!(names(&joined), ["ford", "sequencer"]);
    assert_eq!(
        (members[1].ip.as_str(), members[1].port),
        ("127.0.0.1", 9999)
    );
    let taken = c.call(register("sequencer", 7002));
    assert!(
        !taken.success,
        "only the sequencer's address may use its name"
    );
}

/// A member that registered with the newer protocol and listens for Byes.
struct Member {
    name: String,
    udp: UdpSocket,
    secret: Option<Secret>,
}

impl Member {
    fn new(t: &Running, conn: &mut Persistent, name: &str, group: &str) -> Self {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let port = udp.local_addr().unwrap().port();
        assert!(conn.call(register(name, port)).success);
        assert!(conn.call(join(name, group)).success);
        let _ = t;
        Self {
            name: name.into(),
            udp,
            secret: conn.secret_of(name),
        }
    }

    fn heartbeat(&self, tracker: SocketAddr) {
        let bytes = Envelope {
            request: Request::Heartbeat {
                username: self.name.clone(),
            },
            proto: Some(2),
            secret: self.secret.clone(),
            seal: None,
        }
        .encode();
        self.udp.send_to(&bytes, tracker).unwrap();
    }

    fn bye(&self) -> Option<Datagram> {
        let mut buf = [0u8; 4096];
        let (n, _) = self.udp.recv_from(&mut buf).ok()?;
        Some(Datagram::decode(&buf[..n]).unwrap())
    }
}

#[test]
fn a_silent_member_is_evicted_between_two_and_three_intervals_and_the_others_are_told() {
    let interval = Duration::from_millis(400);
    // Without probing (the report's rule): evicted as soon as it is suspect.
    let t = Running::start(|c| {
        c.liveness = Liveness {
            heartbeat: interval,
            multiplier: 2,
            probe: Duration::ZERO,
        }
    });
    let mut conn = Persistent::connect(t.addr);
    let alive = Member::new(&t, &mut conn, "alive", "books");
    let also = Member::new(&t, &mut conn, "also", "distrib");
    let silent = Member::new(&t, &mut conn, "silent", "books");
    // The silent member's last sign of life: the tracker heard it between these instants.
    let sent = Instant::now();
    assert!(conn.call(join("silent", "distrib")).success);
    let answered = Instant::now();
    drop(silent.udp);

    let mut byes: Vec<(String, Instant)> = Vec::new();
    let deadline = answered + 5 * interval;
    while Instant::now() < deadline && byes.len() < 2 {
        alive.heartbeat(t.addr);
        also.heartbeat(t.addr);
        for m in [&alive, &also] {
            if let Some(bye) = m.bye() {
                assert_eq!(bye.kind, DatagramType::Bye);
                assert_eq!(
                    (bye.username.as_str(), bye.origin.as_str()),
                    ("silent", "silent")
                );
                // Each notice comes three times (a datagram can be lost): the first counts.
                if !byes.iter().any(|(g, _)| *g == bye.group) {
                    byes.push((bye.group.clone(), Instant::now()));
                }
            }
        }
    }
    byes.sort();
    let groups: Vec<&str> = byes.iter().map(|(g, _)| g.as_str()).collect();
    assert_eq!(
        groups,
        ["books", "distrib"],
        "each group of the evicted member is told"
    );
    for (group, at) in &byes {
        assert!(
            *at - sent >= 2 * interval,
            "{group}: told {:?} after the last sign of life, before twice the interval",
            *at - sent
        );
        assert!(
            *at - answered <= 3 * interval,
            "{group}: told {:?} after the last sign of life, later than three intervals",
            *at - answered
        );
    }
    let books = conn.call(Request::ListMembers {
        group: "books".into(),
    });
    assert_eq!(names(&books), ["alive"], "the heartbeating member stays");
    assert_eq!(t.stats.snapshot().evictions, 1);
    // One per group to the remaining member, and one per group to the evicted member
    // itself, in case it is alive after all; each three times.
    assert_eq!(t.stats.snapshot().byes_sent, 4 * 3);
}

#[test]
fn members_that_keep_heartbeating_are_never_evicted() {
    let interval = Duration::from_millis(100);
    let t = Running::start(|c| {
        c.liveness = Liveness {
            heartbeat: interval,
            multiplier: 2,
            ..Liveness::default()
        }
    });
    let mut conn = Persistent::connect(t.addr);
    let by_udp = Member::new(&t, &mut conn, "by-udp", "g");
    Member::new(&t, &mut conn, "by-tcp", "g");
    let until = Instant::now() + 10 * interval;
    while Instant::now() < until {
        by_udp.heartbeat(t.addr);
        assert!(
            conn.call(Request::Heartbeat {
                username: "by-tcp".into()
            })
            .success
        );
        thread::sleep(interval / 2);
    }
    let members = conn.call(Request::ListMembers { group: "g".into() });
    assert_eq!(names(&members), ["by-udp", "by-tcp"]);
    assert_eq!(t.stats.snapshot().evictions, 0);
}

#[test]
fn bad_requests_get_a_clear_reply_and_change_nothing() {
    let t = Running::start(|c| c.max_request_len = 1024);
    let mut c = Persistent::connect(t.addr);
    c.call(register("ford", 7001));
    c.call(join("ford", "books"));
    let before = (
        c.call(Request::ListGroups),
        c.call(Request::ListMembers {
            group: "books".into(),
        }),
    );
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "malformed JSON",
            b"{\"Type\": 2, \"Content\": {\"Username\": }}".to_vec(),
            "malformed",
        ),
        (
            "wrong type",
            br#"{"Type": "2", "Content": {}}"#.to_vec(),
            "wrong type",
        ),
        (
            "missing field",
            br#"{"Type": 2, "Content": {"Username": "ford"}}"#.to_vec(),
            "missing field `Group`",
        ),
        (
            "unknown code",
            br#"{"Type": 99, "Content": {}}"#.to_vec(),
            "unknown Type code 99",
        ),
        ("array", br#"[3, {"Ip": "1.2.3.4"}]"#.to_vec(), "array"),
        (
            "unknown member",
            br#"{"Type": 2, "Content": {"Username": "ghost", "Group": "books"}}"#.to_vec(),
            "unknown member",
        ),
        (
            "another member's exit",
            br#"{"Type": 5, "Content": {"Username": "ford", "Group": "chess"}}"#.to_vec(),
            "must come from \"ford\" itself",
        ),
        (
            "name taken",
            br#"{"Type": 3, "Content": {"Ip": "127.0.0.1", "Port": 9, "Username": "ford"}}"#
                .to_vec(),
            "taken",
        ),
    ];
    for (what, bytes, expected) in cases {
        let mut stream = TcpStream::connect(t.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.write_all(&bytes).unwrap();
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).unwrap();
        let reply = Reply::decode(&reply).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(!reply.success, "{what}");
        let reason = reply.text().unwrap();
        assert!(reason.contains(expected), "{what}: {reason:?}");
    }
    // Oversized and endless requests: a reply, then the connection is closed.
    for (what, bytes) in [
        (
            "oversized",
            format!("{{\"Type\": 1, \"Content\": \"{}\"}}", "x".repeat(2000)).into_bytes(),
        ),
        (
            "endless",
            format!("{{\"Type\": 1, \"Content\": \"{}", "x".repeat(5000)).into_bytes(),
        ),
        ("not JSON", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
    ] {
        let mut stream = TcpStream::connect(t.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let _ = stream.write_all(&bytes);
        let mut reply = Vec::new();
        let _ = stream.read_to_end(&mut reply);
        let reply = Reply::decode(&reply).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(!reply.success, "{what}");
    }
    // Bad datagrams: dropped and counted, never answered.
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let datagrams: Vec<Vec<u8>> = vec![
        b"not json".to_vec(),
        Request::Heartbeat {
            username: "ghost".into(),
        }
        .encode(),
        Request::Heartbeat {
            username: "ford".into(),
        }
        .encode(), // from the wrong address
        join("ford", "udp-join").encode(),
        vec![b'{'; 5000],
    ];
    let sent = datagrams.len() as u64;
    for d in &datagrams {
        udp.send_to(d, t.addr).unwrap();
    }
    let until = Instant::now() + Duration::from_secs(5);
    while t.stats.snapshot().datagrams_dropped < sent && Instant::now() < until {
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(t.stats.snapshot().datagrams_dropped, sent);
    assert_eq!(t.stats.snapshot().heartbeats_udp, 0);

    let after = (
        c.call(Request::ListGroups),
        c.call(Request::ListMembers {
            group: "books".into(),
        }),
    );
    assert_eq!(before, after, "the registry is unchanged");
}

#[test]
fn a_silent_connection_neither_blocks_others_nor_stays_open() {
    let t = Running::start(|c| c.idle_timeout = Duration::from_millis(300));
    let mut stalled = TcpStream::connect(t.addr).unwrap();
    stalled
        .write_all(b"{\"Type\": 3, \"Content\": {\"Ip\"")
        .unwrap();
    // Others are served while it stalls mid-request.
    for i in 0..20 {
        let reply = report_client(t.addr, json!({"Type": 1, "Content": {}}));
        assert_eq!(reply["Success"], true, "request {i}");
    }
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 64];
    let closed = matches!(stalled.read(&mut buf), Ok(0) | Err(_));
    assert!(closed, "the idle connection is closed");
    assert!(t.stats.snapshot().connections_timed_out >= 1);
}

#[test]
fn connections_beyond_the_limit_are_refused_with_a_reason() {
    let t = Running::start(|c| c.max_connections = 2);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = Persistent::connect(t.addr);
        assert!(c.call(Request::ListGroups).success);
        held.push(c);
    }
    let mut extra = TcpStream::connect(t.addr).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reply = Vec::new();
    let _ = extra.read_to_end(&mut reply);
    let reply = Reply::decode(&reply).unwrap();
    assert!(reply.text().unwrap().contains("busy"));
    assert_eq!(t.stats.snapshot().connections_refused, 1);
    drop(held);
}

#[test]
fn the_tracker_serves_time_by_ntp_on_its_udp_port() {
    let t = Running::default();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let sent = clock::Nanos::from_system(std::time::SystemTime::now());
    udp.send_to(&clock::ntp::request(sent), t.addr).unwrap();
    let mut buf = [0u8; 128];
    let (n, from) = udp.recv_from(&mut buf).unwrap();
    let received = clock::Nanos::from_system(std::time::SystemTime::now());
    assert_eq!(from, t.addr);
    let estimate = clock::ntp::estimate(&buf[..n], sent, received).unwrap();
    // Same machine, same clock: the offset is within the bound of zero.
    assert!(
        estimate.offset_ns.abs() <= estimate.bound_ns + 1_000,
        "{estimate:?}"
    );
    assert_eq!(t.stats.snapshot().ntp_answers, 1);
    assert_eq!(t.stats.snapshot().datagrams_dropped, 0);
}

/// One request from a client bound to `from` (another host as far as the tracker can
/// tell: any 127.x.y.z address is this machine's loopback), the report's way.
fn request_from(from: &str, tracker: SocketAddr, request: Value) -> Reply {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    socket.bind(&local.into()).unwrap();
    socket.connect(&tracker.into()).unwrap();
    let mut stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(serde_json::to_string_pretty(&request).unwrap().as_bytes())
        .unwrap();
    // One read, as the report's client does (a request marked `Proto` keeps the
    // connection open).
    let mut reply = [0u8; 4096];
    let n = stream.read(&mut reply).unwrap();
    Reply::decode(&reply[..n]).unwrap()
}

#[test]
fn only_a_member_itself_may_join_leave_quit_or_heartbeat_as_itself() {
    let t = Running::default();
    // A newer member: it holds a secret.
    let mut alice = Persistent::connect(t.addr);
    let registered = alice.call(register("alice", 7101));
    assert!(registered.success);
    let secret = registered
        .secret
        .clone()
        .expect("a newer member gets a secret");
    assert!(secret.as_str().len() >= 32, "at least 128 bits");
    let uid = registered.text().unwrap();
    assert!(uid.len() >= 32, "the id cannot be guessed: {uid}");
    assert!(alice.call(join("alice", "books")).success);
    // A stranger on another connection, from the same host, without the secret.
    for (what, request) in [
        ("quit", json!({"Type": 6, "Content": {"Username": "alice"}})),
        (
            "quit by id",
            json!({"Type": 6, "Content": {"Username": uid}}),
        ),
        (
            "join",
            json!({"Type": 2, "Content": {"Username": "alice", "Group": "films"}}),
        ),
        (
            "exit",
            json!({"Type": 5, "Content": {"Username": "alice", "Group": "books"}}),
        ),
        (
            "heartbeat",
            json!({"Type": 7, "Content": {"Username": "alice"}}),
        ),
        (
            "register again",
            json!({"Type": 3, "Content": {"Ip": "127.0.0.1", "Port": 7101, "Username": "alice"}, "Proto": 3}),
        ),
    ] {
        let reply = request_from("127.0.0.2", t.addr, request);
        assert!(!reply.success, "{what}: {reply:?}");
        assert!(reply.secret.is_none(), "{what}: no secret handed out");
    }
    let mut stranger = Persistent::connect(t.addr);
    let wrong = stranger.call(Request::Quit {
        username: "alice".into(),
    });
    assert!(!wrong.success, "{wrong:?}");
    assert_eq!(
        names(&alice.call(Request::ListMembers {
            group: "books".into()
        })),
        ["alice"]
    );
    // Alice herself, showing her secret, may.
    assert!(
        alice
            .call(Request::Heartbeat {
                username: "alice".into()
            })
            .success
    );

    // A client of the report's protocol has no secret: it is believed from its own IP only.
    let reply = request_from(
        "127.0.0.3",
        t.addr,
        json!({"Type": 3, "Content": {"Ip": "127.0.0.3", "Port": 7102, "Username": "old"}}),
    );
    assert!(reply.success && reply.secret.is_none(), "{reply:?}");
    let join_old = json!({"Type": 2, "Content": {"Username": "old", "Group": "books"}});
    assert!(!request_from("127.0.0.4", t.addr, join_old.clone()).success);
    assert!(request_from("127.0.0.3", t.addr, join_old).success);
    let quit_old = json!({"Type": 6, "Content": {"Username": "old"}});
    assert!(!request_from("127.0.0.4", t.addr, quit_old.clone()).success);
    assert!(request_from("127.0.0.3", t.addr, quit_old).success);
}

#[test]
fn a_suspect_that_answers_the_probe_stays_and_a_silent_one_is_evicted_after_it() {
    let interval = Duration::from_millis(200);
    let probe = Duration::from_millis(400);
    let t = Running::start(|c| {
        c.liveness = Liveness {
            heartbeat: interval,
            multiplier: 2,
            probe,
        }
    });
    let mut conn = Persistent::connect(t.addr);
    let answers = Member::new(&t, &mut conn, "answers", "books");
    let silent = Member::new(&t, &mut conn, "silent", "books");
    let witness = Member::new(&t, &mut conn, "witness", "books");
    let started = Instant::now();
    answers
        .udp
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let mut probes = 0;
    let mut bye = None;
    // Only the witness heartbeats; `answers` answers each probe with a heartbeat.
    while started.elapsed() < Duration::from_secs(3) && bye.is_none() {
        witness.heartbeat(t.addr);
        let mut buf = [0u8; 4096];
        if let Ok((n, from)) = answers.udp.recv_from(&mut buf) {
            assert_eq!(from, t.addr);
            // A probe (the Bye for `silent` may come too: it is in the group).
            if let Ok(probe) = Envelope::decode(&buf[..n]) {
                assert_eq!(
                    probe.request,
                    Request::Heartbeat {
                        username: "answers".into()
                    }
                );
                probes += 1;
                answers.heartbeat(t.addr);
            }
        }
        witness
            .udp
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        bye = witness.bye();
    }
    let evicted_after = started.elapsed();
    let bye = bye.expect("the silent member was evicted and the witness told");
    assert_eq!(bye.username, "silent");
    assert!(probes >= 1, "the suspect was probed");
    assert!(
        evicted_after >= interval * 2 + probe - Duration::from_millis(50),
        "evicted only after the probe time: {evicted_after:?}"
    );
    assert!(
        evicted_after < interval * 2 + probe + Duration::from_millis(600),
        "{evicted_after:?}"
    );
    let listed = names(&conn.call(Request::ListMembers {
        group: "books".into(),
    }));
    assert_eq!(listed, ["answers", "witness"]);
    drop(silent);
}
