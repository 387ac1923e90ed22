//! The real `tracker` binary: it starts, serves, and stops cleanly on SIGINT; bad
//! arguments get one clear line and a failure code.

#![allow(clippy::unwrap_used)] // a test may stop at the first surprise

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Kills the child if the test fails before it stops it.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn starts_serves_and_stops_cleanly_on_sigint() {
    let child = Command::new(env!("CARGO_BIN_EXE_tracker"))
        .args(["127.0.0.1:0", "--heartbeat-ms", "500"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = Guard(child);
    let mut stdout = BufReader::new(guard.0.stdout.take().unwrap());
    let mut banner = String::new();
    stdout.read_line(&mut banner).unwrap();
    let addr = banner
        .split_whitespace()
        .nth(3)
        .unwrap_or_else(|| panic!("no address in {banner:?}"));
    assert!(banner.contains("heartbeat 500 ms"), "{banner}");

    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(b"{\n  \"Type\": 1,\n  \"Content\": {}\n}")
        .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    assert_eq!(reply.trim(), r#"{"Success":true,"Content":[]}"#);

    let status = Command::new("kill")
        .args(["-INT", &guard.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = guard.0.wait().unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("tracker stopped: 1 requests"), "{rest}");
}

#[test]
fn bad_arguments_get_one_clear_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_tracker"))
        .args(["nowhere"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("is not HOST:PORT"), "{stderr}");

    // The report's spelling of the sequencer option is accepted; a bad address is named.
    let out = Command::new(env!("CARGO_BIN_EXE_tracker"))
        .args(["127.0.0.1:0", "--seq_addr", "nowhere"])
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("--seq-addr: \"nowhere\" is not HOST:PORT"),
        "{stderr}"
    );

    let help = Command::new(env!("CARGO_BIN_EXE_tracker"))
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8(help.stdout).unwrap();
    for option in [
        "--seq-addr",
        "--heartbeat-ms",
        "--multiplier",
        "--max-connections",
        "--idle-timeout-ms",
    ] {
        assert!(text.contains(option), "--help mentions {option}");
    }
}
