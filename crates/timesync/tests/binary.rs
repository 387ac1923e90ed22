//! The real `timesync` binary: help that teaches, one clear line for bad input, and a
//! server and client that talk.

#![allow(clippy::unwrap_used)] // a test may stop at the first surprise

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

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
    }
    let _ = server.kill();
    let _ = server.wait();
}
