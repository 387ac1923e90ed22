//! Standard NTP tools against our programs: `chronyd -Q` queries our server on any port;
//! our client queries `chronyd` serving on a high port (it never touches the clock: `-x`);
//! `sntp`, which has no port option, queries our server on port 123 inside a private
//! network namespace (root only). Each test says plainly when it skips and why;
//! `bash .ci/run` installs the tools.

#![allow(clippy::unwrap_used)] // a test may stop at the first surprise

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use timesync::server::TimeServer;
use timesync::{LocalClock, client};

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn find(tool: &str, env: &str, places: &[&str]) -> Option<PathBuf> {
    if let Ok(p) = std::env::var(env) {
        return Some(PathBuf::from(p));
    }
    places
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .or_else(|| {
            let out = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .ok()?;
            let path = String::from_utf8(out.stdout).ok()?;
            (!path.trim().is_empty()).then(|| PathBuf::from(path.trim()))
        })
}

fn chronyd() -> Option<PathBuf> {
    if !is_root() {
        eprintln!("skipped: chronyd needs root here (it is run with -u root, clock control off)");
        return None;
    }
    let found = find("chronyd", "CHRONYD", &["/usr/sbin/chronyd"]);
    if found.is_none() {
        eprintln!(
            "skipped: chronyd not found (set CHRONYD, or run bash .ci/run, which unpacks it)"
        );
    }
    found
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The number after `label` in `text`, in seconds.
fn seconds_after(text: &str, label: &str) -> Option<f64> {
    let rest = &text[text.find(label)? + label.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

#[test]
fn chronyd_reads_our_servers_time() {
    let Some(chronyd) = chronyd() else { return };
    let server = TimeServer::start(
        "127.0.0.1:0".parse().unwrap(),
        LocalClock::new(250.0, 0.0),
        1,
    )
    .unwrap();
    let out = Command::new(&chronyd)
        .args(["-Q", "-f", "/dev/null", "-u", "root", "-t", "10"])
        .arg(format!(
            "server 127.0.0.1 port {} iburst maxsamples 1",
            server.addr().port()
        ))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let wrong = seconds_after(&text, "System clock wrong by")
        .unwrap_or_else(|| panic!("chronyd did not read our time:\n{text}"));
    // Our server runs 250 ms ahead: the system clock is that much behind it.
    assert!(
        (wrong - 0.250).abs() < 0.005,
        "chronyd says {wrong} s:\n{text}"
    );
}

#[test]
fn our_client_reads_chronyds_time() {
    let Some(chronyd) = chronyd() else { return };
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    let conf = dir.path().join("chrony.conf");
    std::fs::write(
        &conf,
        format!(
            "port {port}\nbindaddress 127.0.0.1\nallow 127.0.0.1\nlocal stratum 8\ncmdport 0\n\
             pidfile {0}/chronyd.pid\ndriftfile {0}/drift\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let _chronyd = Kill(
        Command::new(&chronyd)
            .args(["-x", "-d", "-u", "root", "-f"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Our clock 300 ms behind: chronyd (on the real clock) is 300 ms ahead of us.
    let clock = LocalClock::new(-300.0, 0.0);
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let estimate = loop {
        match client::ntp_query(addr, &clock, 4, Duration::from_millis(300)) {
            Ok(e) => break e,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("chronyd never answered: {e}"),
        }
    };
    let residual = estimate.offset_ns - 300_000_000;
    assert!(residual.abs() <= estimate.bound_ns + 1_000, "{estimate:?}");
}

#[test]
fn sntp_reads_our_servers_time_on_port_123_in_a_namespace() {
    if !is_root() {
        eprintln!("skipped: network namespaces need root");
        return;
    }
    let Some(sntp) = find("sntp", "SNTP", &["/usr/bin/sntp"]) else {
        eprintln!("skipped: sntp not found (Debian package sntp; bash .ci/run installs it)");
        return;
    };
    let ns = format!("timesync-{}", std::process::id());
    let ip = |args: &[&str]| {
        Command::new("ip")
            .args(args)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ip(&["netns", "add", &ns]) {
        eprintln!("skipped: cannot create a network namespace here");
        return;
    }
    struct Namespace(String);
    impl Drop for Namespace {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["netns", "delete", &self.0])
                .status();
        }
    }
    let _ns = Namespace(ns.clone());
    assert!(ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"]));
    let mut server = Kill(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                env!("CARGO_BIN_EXE_timesync"),
                "server",
                "127.0.0.1:123",
            ])
            .args(["--clock-offset-ms", "250"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    {
        use std::io::BufRead;
        let mut banner = String::new();
        std::io::BufReader::new(server.0.stdout.as_mut().unwrap())
            .read_line(&mut banner)
            .unwrap();
        assert!(banner.contains("127.0.0.1:123"), "{banner}");
    }
    let out = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(&sntp)
        .args(["-t", "5", "127.0.0.1"])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    // sntp prints a line like "2026-11-21 06:58:44.1 (+0000) +0.250011 +/- 0.000123 127.0.0.1 s1 no-leap".
    let offset: f64 = text
        .lines()
        .find(|l| l.contains("127.0.0.1") && l.contains("+/-"))
        .and_then(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with('+') || w.starts_with('-'))
                .and_then(|w| w.parse().ok())
                .filter(|v: &f64| v.abs() < 100.0)
        })
        .unwrap_or_else(|| panic!("sntp did not read our time:\n{text}"));
    assert!(
        (offset - 0.250).abs() < 0.005,
        "sntp says {offset} s:\n{text}"
    );
    assert!(text.contains(" s1 "), "stratum 1 expected:\n{text}");
}
