//! Our programs against clients and slaves that behave exactly like the lab's Python ones
//! (written here from the lab's facts): `str(datetime.now())` in local time, one string per
//! Cristian connection, slaves that push their time on a kept connection.

#![allow(clippy::unwrap_used)] // a test may stop at the first surprise

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use chrono::{Local, NaiveDateTime, TimeDelta};
use timesync::berkeley::Master;
use timesync::server::TimeServer;
use timesync::{LocalClock, client};

/// Python's `str(datetime.now())`, `skew_ms` off.
fn python_now(skew_ms: i64) -> String {
    let now = Local::now().naive_local() + TimeDelta::milliseconds(skew_ms);
    let text = now.format("%Y-%m-%d %H:%M:%S%.6f").to_string();
    text.strip_suffix(".000000")
        .map(str::to_owned)
        .unwrap_or(text)
}

fn python_parse(s: &str) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(s.trim(), "%Y-%m-%d %H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(s.trim(), "%Y-%m-%d %H:%M:%S"))
        .unwrap_or_else(|_| panic!("not a Python time string: {s:?}"))
}

#[test]
fn the_seed_client_reads_one_local_time_string_and_the_connection_closes() {
    let server =
        TimeServer::start("127.0.0.1:0".parse().unwrap(), LocalClock::new(0.0, 0.0), 1).unwrap();
    let mut s = TcpStream::connect(server.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap(); // ends only because the server closes
    let theirs = python_parse(&text);
    let ours = Local::now().naive_local();
    assert!(
        (ours - theirs).num_milliseconds().abs() < 1000,
        "{text} is local time"
    );
    assert!(text.len() == 26 || text.len() == 19, "{text:?}");
}

#[test]
fn our_cristian_client_uses_a_seed_server() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // The seed's server: the time of a clock 250 ms ahead, then close.
    std::thread::spawn(move || {
        for conn in listener.incoming().take(8) {
            let mut conn = conn.unwrap();
            conn.write_all(python_now(250).as_bytes()).unwrap();
        }
    });
    let e = client::cristian(addr, &LocalClock::new(0.0, 0.0), 8, Duration::from_secs(2)).unwrap();
    let error = e.offset_ns - 250_000_000;
    assert!(
        error.abs() <= e.bound_ns,
        "estimate {e:?} for a server 250 ms ahead"
    );
}

#[test]
fn our_berkeley_master_serves_seed_slaves_that_push_their_time() {
    let mut master = Master::bind(
        "127.0.0.1:0".parse().unwrap(),
        LocalClock::new(0.0, 0.0),
        10_000_000_000,
    )
    .unwrap();
    let addr = master.addr().unwrap();
    let slave = |skew_ms: i64, twice: bool| {
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let first = python_now(skew_ms);
            // Two pushes back to back arrive as one read: the seed's master broke on this.
            let pushed = if twice {
                first.clone() + &python_now(skew_ms)
            } else {
                first
            };
            s.write_all(pushed.as_bytes()).unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap();
            let told = python_parse(std::str::from_utf8(&buf[..n]).unwrap());
            (told - Local::now().naive_local()).num_milliseconds()
        })
    };
    let ahead = slave(600, true);
    let behind = slave(-300, false);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while master.slaves() < 2 && std::time::Instant::now() < deadline {
        master.accept();
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    let report = master.round();
    assert_eq!(report.slaves.len(), 2, "{report:?}");
    assert!(report.slaves.iter().all(|s| s.seed));
    // The agreed time is the average of 0, +600 and -300 ms: +100 ms.
    assert!(
        (report.average_ns - 100_000_000).abs() < 20_000_000,
        "{report:?}"
    );
    for slave in [ahead, behind] {
        let told_ms = slave.join().unwrap();
        assert!(
            (told_ms - 100).abs() < 20,
            "a seed slave was told a time {told_ms} ms ahead"
        );
    }
}
