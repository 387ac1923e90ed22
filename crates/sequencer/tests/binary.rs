//! The real `sequencer` binary: it starts, and stops cleanly on SIGINT.

#![allow(clippy::unwrap_used)] // a test may stop at the first surprise

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

#[test]
fn starts_and_stops_cleanly_on_sigint() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sequencer"))
        .arg("127.0.0.1:0")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut banner = String::new();
    stdout.read_line(&mut banner).unwrap();
    assert!(
        banner.starts_with("sequencer listening on 127.0.0.1:"),
        "{banner}"
    );
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert!(
        rest.contains("sequencer stopped: 0 messages sequenced"),
        "{rest}"
    );
}

#[test]
fn bad_arguments_get_one_clear_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_sequencer"))
        .args(["127.0.0.1:0", "--tracker", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("--tracker: \"x\" is not HOST:PORT"),
        "{stderr}"
    );
}
