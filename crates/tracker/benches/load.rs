//! Load generator for the tracker: starts the real `tracker` binary as its own process and
//! measures control requests per second with one connection per request (the report's
//! client) and over persistent connections, then the tracker's CPU while 10,000 members
//! heartbeat once a second over UDP.
//!
//! The same requests again against two trackers sharing a registry in etcd, when
//! `GROUPCAST_ETCD` names a cluster (`scripts/etcd-cluster.sh` starts one): the request
//! rate with the etcd registry against the in-memory one. Writes (a join and a leave, each
//! committed to etcd before it is answered) are measured for both.
//!
//! Run: `cargo bench -p tracker --bench load` (about 30 s). `-- --test` runs a short pass
//! that only checks everything works (CI does this).

#![allow(clippy::unwrap_used)] // a measuring tool stops at the first surprise

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use proto::{Envelope, JsonFramer, Reply, Request};

struct Plan {
    seconds: f64,
    members: usize,
    heartbeat_seconds: u64,
}

struct TrackerProcess {
    child: Child,
    addr: SocketAddr,
    stdout: BufReader<std::process::ChildStdout>,
}

impl TrackerProcess {
    fn start(extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tracker"))
            .arg("127.0.0.1:0")
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut banner = String::new();
        stdout.read_line(&mut banner).unwrap();
        let addr = banner.split_whitespace().nth(3).unwrap().parse().unwrap();
        Self {
            child,
            addr,
            stdout,
        }
    }

    /// CPU time (user + system) the process has used so far.
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // Fields after the parenthesised command name; utime and stime are 14th and 15th.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
    }

    /// Stops the tracker with SIGINT and returns its closing summary line.
    fn stop(mut self) -> String {
        Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        self.child.wait().unwrap();
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).unwrap();
        rest.trim().to_owned()
    }
}

/// Runs `work` on `threads` threads for `seconds`; returns operations per second.
fn measure(
    threads: usize,
    seconds: f64,
    work: impl Fn(&AtomicBool) -> u64 + Send + Sync + 'static,
) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let work = Arc::new(work);
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (stop, total, work) = (stop.clone(), total.clone(), work.clone());
            thread::spawn(move || total.fetch_add(work(&stop), Ordering::Relaxed))
        })
        .collect();
    thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    total.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn one_shot(addr: SocketAddr, plan: &Plan) -> f64 {
    let request =
        serde_json::to_vec_pretty(&serde_json::json!({"Type": 1, "Content": {}})).unwrap();
    measure(2, plan.seconds, move |stop| {
        let mut done = 0;
        let mut buf = [0u8; 4096];
        while !stop.load(Ordering::Relaxed) {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(&request).unwrap();
            let n = s.read(&mut buf).unwrap();
            assert!(Reply::decode(&buf[..n]).unwrap().success);
            done += 1;
        }
        done
    })
}

/// Registers `name` (a newer member) over `s`; the tracker's reply, its secret in it.
fn register(s: &mut TcpStream, name: &str) -> Reply {
    let register = Envelope {
        request: Request::Register {
            ip: "127.0.0.1".into(),
            port: 9,
            username: name.into(),
        },
        proto: Some(2),
        secret: None,
        seal: None,
    };
    s.write_all(&register.encode()).unwrap();
    let mut reply = [0u8; 4096];
    let n = s.read(&mut reply).unwrap();
    let reply = Reply::decode(&reply[..n]).unwrap();
    assert!(reply.success, "{reply:?}");
    reply
}

fn persistent(addr: SocketAddr, plan: &Plan) -> f64 {
    const BATCH: usize = 64;
    // One registered member heartbeating over TCP: a request that finds its member and
    // succeeds, the commonest request of a running system.
    let mut s = TcpStream::connect(addr).unwrap();
    let reply = register(&mut s, "load");
    let mut batch = Vec::new();
    for _ in 0..BATCH {
        Envelope {
            request: Request::Heartbeat {
                username: "load".into(),
            },
            proto: Some(2),
            secret: reply.secret.clone(),
            seal: None,
        }
        .encode_into(&mut batch);
    }
    measure(2, plan.seconds, move |stop| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        let mut framer = JsonFramer::new(1 << 20);
        let mut buf = vec![0u8; 64 * 1024];
        let mut done = 0;
        while !stop.load(Ordering::Relaxed) {
            s.write_all(&batch).unwrap();
            let mut replies = 0;
            while replies < BATCH {
                while let Some(frame) = framer.next_frame().unwrap() {
                    assert!(Reply::decode(frame).unwrap().success);
                    replies += 1;
                }
                if replies < BATCH {
                    let n = s.read(&mut buf).unwrap();
                    framer.push(&buf[..n]);
                }
            }
            done += BATCH as u64;
        }
        done
    })
}

/// One member joining and leaving a group over a persistent connection, 32 requests in
/// flight: every request changes the registry. Returns requests per second.
fn writes(addr: SocketAddr, plan: &Plan, name: &str) -> f64 {
    const BATCH: usize = 32;
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    let secret = register(&mut s, name).secret;
    let mut batch = Vec::new();
    for i in 0..BATCH {
        let request = if i % 2 == 0 {
            Request::JoinGroup {
                username: name.into(),
                group: "load".into(),
                order: None,
            }
        } else {
            Request::ExitGroup {
                username: name.into(),
                group: "load".into(),
            }
        };
        Envelope {
            request,
            proto: Some(2),
            secret: secret.clone(),
            seal: None,
        }
        .encode_into(&mut batch);
    }
    let start = Instant::now();
    let mut framer = JsonFramer::new(1 << 20);
    let mut buf = vec![0u8; 64 * 1024];
    let mut done = 0u64;
    while start.elapsed().as_secs_f64() < plan.seconds {
        s.write_all(&batch).unwrap();
        let mut replies = 0;
        while replies < BATCH {
            while let Some(frame) = framer.next_frame().unwrap() {
                let reply = Reply::decode(frame).unwrap();
                assert!(reply.success, "{reply:?}");
                replies += 1;
            }
            if replies < BATCH {
                let n = s.read(&mut buf).unwrap();
                framer.push(&buf[..n]);
            }
        }
        done += BATCH as u64;
    }
    done as f64 / start.elapsed().as_secs_f64()
}

/// The request rates with the registry in etcd, at `url`: reads, heartbeats and writes at
/// one tracker while another shares the registry.
fn shared(url: &str, plan: &Plan) {
    let a = TrackerProcess::start(&["--max-connections", "4096", "--registry", url]);
    let b = TrackerProcess::start(&["--registry", url]);
    let one = one_shot(a.addr, plan);
    println!(
        "tracker/etcd/one_shot_requests {one:>10.0} requests/s  (ListGroups, each read at etcd's current revision)"
    );
    let many = persistent(a.addr, plan);
    println!("tracker/etcd/persistent_requests {many:>8.0} requests/s  (heartbeats: no etcd call)");
    let w = writes(a.addr, plan, "writer-etcd");
    println!(
        "tracker/etcd/writes            {w:>10.0} requests/s  (join, leave: one compare-and-set each)"
    );
    println!("  {}", a.stop());
    println!("  {}", b.stop());
}

/// Registers `members` members (each with its own UDP socket), then has each send one UDP
/// heartbeat per second for `heartbeat_seconds`; returns the tracker's CPU share of one core
/// over that time, and the members actually created.
fn heartbeats(t: &TrackerProcess, plan: &Plan) -> (f64, usize) {
    let mut sockets = Vec::with_capacity(plan.members);
    for _ in 0..plan.members {
        match UdpSocket::bind("127.0.0.1:0") {
            Ok(s) => sockets.push(s),
            Err(e) => {
                eprintln!(
                    "stopping at {} members: {e} (raise `ulimit -n`)",
                    sockets.len()
                );
                break;
            }
        }
    }
    let mut conn = TcpStream::connect(t.addr).unwrap();
    let mut framer = JsonFramer::new(1 << 20);
    let mut buf = vec![0u8; 64 * 1024];
    let mut names = Vec::new();
    let mut secrets = Vec::new();
    for chunk in sockets.chunks(256).enumerate() {
        let (c, socks) = chunk;
        let mut batch = Vec::new();
        for (i, s) in socks.iter().enumerate() {
            let name = format!("m{}", c * 256 + i);
            Envelope {
                request: Request::Register {
                    ip: "127.0.0.1".into(),
                    port: s.local_addr().unwrap().port(),
                    username: name.clone(),
                },
                proto: Some(2),
                secret: None,
                seal: None,
            }
            .encode_into(&mut batch);
            names.push(name);
        }
        conn.write_all(&batch).unwrap();
        let mut replies = 0;
        while replies < socks.len() {
            while let Some(frame) = framer.next_frame().unwrap() {
                let reply = Reply::decode(frame).unwrap();
                assert!(reply.success);
                secrets.push(reply.secret);
                replies += 1;
            }
            if replies < socks.len() {
                let n = conn.read(&mut buf).unwrap();
                framer.push(&buf[..n]);
            }
        }
    }
    let beats: Vec<Vec<u8>> = names
        .iter()
        .zip(secrets)
        .map(|(n, secret)| {
            Envelope {
                request: Request::Heartbeat {
                    username: n.clone(),
                },
                proto: Some(2),
                secret,
                seal: None,
            }
            .encode()
        })
        .collect();
    let cpu_before = t.cpu();
    let start = Instant::now();
    let spacing = Duration::from_secs(1) / sockets.len().max(1) as u32;
    for round in 0..plan.heartbeat_seconds {
        let round_start = start + Duration::from_secs(round);
        for (i, (s, beat)) in sockets.iter().zip(&beats).enumerate() {
            let due = round_start + spacing * i as u32;
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
            s.send_to(beat, t.addr).unwrap();
        }
    }
    let end = start + Duration::from_secs(plan.heartbeat_seconds);
    if let Some(rest) = end.checked_duration_since(Instant::now()) {
        thread::sleep(rest);
    }
    let share = (t.cpu() - cpu_before).as_secs_f64() / start.elapsed().as_secs_f64();
    (share, sockets.len())
}

fn main() {
    let quick = std::env::args().any(|a| a == "--test");
    let plan = if quick {
        Plan {
            seconds: 0.2,
            members: 200,
            heartbeat_seconds: 1,
        }
    } else {
        Plan {
            seconds: 3.0,
            members: 10_000,
            heartbeat_seconds: 10,
        }
    };
    let t = TrackerProcess::start(&["--max-connections", "4096"]);
    let one = one_shot(t.addr, &plan);
    println!(
        "tracker/one_shot_requests      {one:>10.0} requests/s  (new connection per request, 2 clients)"
    );
    let many = persistent(t.addr, &plan);
    println!(
        "tracker/persistent_requests    {many:>10.0} requests/s  (2 connections, 64 pipelined heartbeats)"
    );
    let w = writes(t.addr, &plan, "writer");
    println!("tracker/writes                 {w:>10.0} requests/s  (join, leave, in memory)");
    let summary = t.stop();
    println!("  {summary}");

    let t = TrackerProcess::start(&["--heartbeat-ms", "1000"]);
    let (share, members) = heartbeats(&t, &plan);
    println!(
        "tracker/heartbeat_cpu          {:>9.2} %  of one core ({members} members, one UDP heartbeat/s each, {} s)",
        share * 100.0,
        plan.heartbeat_seconds
    );
    let summary = t.stop();
    println!("  {summary}");
    assert!(
        summary.contains(" 0 evictions"),
        "no heartbeating member may be evicted: {summary}"
    );
    match std::env::var("GROUPCAST_ETCD") {
        Ok(url) => shared(&url, &plan),
        Err(_) => println!(
            "tracker/etcd: skipped (set GROUPCAST_ETCD=etcd://HOST:PORT,... to measure the shared registry; scripts/etcd-cluster.sh starts one)"
        ),
    }
}
