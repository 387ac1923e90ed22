//! The real `timesync` binary: help that teaches, one clear line for bad input, and a
//! server and client that talk.

#![allow(clippy::unwrap_used)] // a test may stop at the first surprise

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use chrono::{Local, NaiveDateTime};

/// Kills the child when dropped, so a failing test leaves no process behind.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `timesync ARGS`, its standard output's lines sent to the returned channel.
fn spawn(args: &[&str]) -> (Running, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_timesync"))
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (Running(child), rx)
}

/// The next line within 10 s that satisfies `pred`.
fn line_where(rx: &mpsc::Receiver<String>, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) if pred(&line) => return line,
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    panic!("no such line; saw {seen:#?}");
}

/// The lab's time string parser as its master uses it on every read: one string, or the
/// master's thread for that slave dies.
fn lab_parse(read: &str) -> Result<NaiveDateTime, String> {
    NaiveDateTime::parse_from_str(read.trim(), "%Y-%m-%d %H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(read.trim(), "%Y-%m-%d %H:%M:%S"))
        .map_err(|_| format!("the lab's master dies on {read:?}"))
}

#[test]
fn help_names_every_program_and_bad_addresses_get_one_line() {
    let help = Command::new(env!("CARGO_BIN_EXE_timesync"))
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8(help.stdout).unwrap();
    for word in ["server", "cristian", "ntp", "master", "slave"] {
        assert!(text.contains(word), "--help names {word}:\n{text}");
    }
    let bad = Command::new(env!("CARGO_BIN_EXE_timesync"))
        .args(["cristian", "nowhere"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8(bad.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("is not HOST:PORT"), "{stderr}");
}

#[test]
fn the_client_reports_offset_bound_and_true_error_against_the_server() {
    let mut server = Command::new(env!("CARGO_BIN_EXE_timesync"))
        .args(["server", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut banner = String::new();
    BufReader::new(server.stdout.as_mut().unwrap())
        .read_line(&mut banner)
        .unwrap();
    let addr = banner
        .split_whitespace()
        .nth(3)
        .unwrap()
        .trim_end_matches(':')
        .to_owned();
    for program in ["cristian", "ntp"] {
        let out = Command::new(env!("CARGO_BIN_EXE_timesync"))
            .args([
                program,
                &addr,
                "--clock-offset-ms",
                "-250",
                "--samples",
                "4",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(out.status.success(), "{text}");
        assert!(text.contains("the server is +2"), "{program}: {text}");
        assert!(text.contains("inside the bound"), "{program}: {text}");
        assert!(
            text.lines().any(|l| l.starts_with("synchronized time: 20")),
            "{program} prints the synchronized time, as the lab's client does: {text}"
        );
    }
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn our_slave_serves_the_labs_master_with_nothing_but_time_strings() {
    // The lab's master: never speaks first; parses each recv(1024) as one time string (its
    // thread for the slave dies on anything else); every cycle sends the slave
    // str(now + average(master − slave)), which it never compensates for transit.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (sent_tx, sent_rx) = mpsc::channel();
    let master = std::thread::spawn(move || -> Result<usize, String> {
        let (mut conn, _) = listener.accept().map_err(|e| e.to_string())?;
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 1024];
        let mut pushes = 0;
        while pushes < 3 {
            let n = conn.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("the slave hung up".into());
            }
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let theirs = lab_parse(&text)?;
            pushes += 1;
            let now = Local::now().naive_local();
            let told = now + (now - theirs);
            let text = told.format("%Y-%m-%d %H:%M:%S%.6f").to_string();
            conn.write_all(text.as_bytes()).map_err(|e| e.to_string())?;
            sent_tx.send((told - now).num_milliseconds()).unwrap();
        }
        Ok(pushes)
    });
    let (_slave, lines) = spawn(&[
        "slave",
        &addr,
        "--clock-offset-ms",
        "400",
        "--push-interval-ms",
        "200",
    ]);
    line_where(&lines, |l| l.contains("taken for the lab's"));
    for _ in 0..3 {
        let told_ms = sent_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let line = line_where(&lines, |l| l.starts_with("synchronized time: 20"));
        // "… my clock is now +X ms from true time": the slave took the time it was told.
        let error_ms = line
            .split("my clock is now ")
            .nth(1)
            .and_then(|t| t.split(" from").next())
            .and_then(human_ms)
            .unwrap_or_else(|| panic!("no error in {line:?}"));
        assert!(
            (error_ms - told_ms as f64).abs() < 100.0,
            "told a time {told_ms} ms off, its clock ends {error_ms} ms off: {line}"
        );
    }
    assert_eq!(
        master.join().unwrap(),
        Ok(3),
        "only time strings reached the lab's master"
    );
}

/// A duration as `clock::human` prints it (`+1.500 ms`, `-20.0 µs`, `+1.2 s`), in ms.
fn human_ms(text: &str) -> Option<f64> {
    let (value, unit) = text.trim().split_once(' ')?;
    let value: f64 = value.trim_start_matches('+').parse().ok()?;
    let scale = match unit {
        "ns" => 1e-6,
        "µs" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        _ => return None,
    };
    Some(value * scale)
}

#[test]
fn our_slave_and_our_master_recognise_each_other() {
    let (_master, master_lines) = spawn(&[
        "master",
        "127.0.0.1:0",
        "--interval-ms",
        "300",
        "--clock-offset-ms",
        "0",
    ]);
    let banner = line_where(&master_lines, |l| l.starts_with("Berkeley master on"));
    let addr = banner
        .split_whitespace()
        .nth(3)
        .unwrap()
        .trim_end_matches(':')
        .to_owned();
    let (_slave, lines) = spawn(&["slave", &addr, "--clock-offset-ms", "-700"]);
    line_where(&lines, |l| l.contains("the master is ours"));
    let line = line_where(&lines, |l| l.starts_with("synchronized time: 20"));
    assert!(line.contains("correction +"), "{line}");
    // Its offset was measured with a round trip: the master reports a bound, not "unknown".
    let slave = line_where(&master_lines, |l| l.trim_start().starts_with("127.0.0.1:"));
    assert!(slave.contains("(± "), "{slave}");
}

#[test]
fn a_silent_server_is_reported_after_one_timeout_not_after_every_sample() {
    // Accepts connections (the kernel does, from the backlog) and datagrams, never answers.
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = tcp.local_addr().unwrap();
    let _udp = std::net::UdpSocket::bind(addr).unwrap();
    for program in ["cristian", "ntp"] {
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_timesync"))
            .args([program, &addr.to_string()])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(
            stderr.contains("no answer within 2000 ms"),
            "{program}: {stderr}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "{program} waited {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn a_slave_waits_for_a_master_that_is_not_up_yet() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let (_slave, lines) = spawn(&["slave", &addr]);
    line_where(&lines, |l| l.starts_with("waiting for the master"));
    let (_master, _master_lines) = spawn(&["master", &addr, "--interval-ms", "300"]);
    line_where(&lines, |l| l.contains("the master is ours"));
    line_where(&lines, |l| l.starts_with("synchronized time: 20"));
}

#[test]
fn a_client_measures_its_clocks_drift_over_rounds() {
    let (_server, lines) = spawn(&["server", "127.0.0.1:0"]);
    let banner = line_where(&lines, |l| l.starts_with("time server on"));
    let addr = banner
        .split_whitespace()
        .nth(3)
        .unwrap()
        .trim_end_matches(':')
        .to_owned();
    let out = Command::new(env!("CARGO_BIN_EXE_timesync"))
        .args([
            "ntp",
            &addr,
            "--clock-drift-ppm",
            "150",
            "--rounds",
            "2",
            "--interval-ms",
            "2100",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("our clock drifts"))
        .unwrap_or_else(|| panic!("no drift measured: {text}"));
    let ppm: f64 = line
        .split_whitespace()
        .nth(3)
        .and_then(|p| p.trim_start_matches('+').parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!((ppm - 150.0).abs() < 10.0, "{line}");
}
