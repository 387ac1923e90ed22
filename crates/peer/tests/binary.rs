//! The real `peer` binary's command line: help that teaches, one clear line for bad input.

#![allow(clippy::unwrap_used)] // a test may stop at the first surprise

use std::process::Command;

#[test]
fn help_explains_every_option_and_bad_arguments_get_one_line() {
    let help = Command::new(env!("CARGO_BIN_EXE_peer"))
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8(help.stdout).unwrap();
    for needle in [
        "<HOST:PORT> <USERNAME> <TRACKER_HOST:PORT[,...]>",
        "--total",
        "--script",
        "--group",
        "--members",
        "--expect",
        "--rate",
        "--json",
        "--deliveries",
        "says::",
        "at most 64 characters",
        "!lm GROUP",
        "!e GROUP",
    ] {
        assert!(text.contains(needle), "--help mentions {needle}:\n{text}");
    }
    let bad = Command::new(env!("CARGO_BIN_EXE_peer"))
        .args(["127.0.0.1:0", "ford", "no-port"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8(bad.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("tracker: \"no-port\" is not HOST:PORT"),
        "{stderr}"
    );

    let missing = Command::new(env!("CARGO_BIN_EXE_peer"))
        .args([
            "127.0.0.1:0",
            "ford",
            "127.0.0.1:9",
            "-t",
            "/nonexistent/lines",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8(missing.stderr).unwrap();
    assert!(
        stderr.contains("cannot read /nonexistent/lines"),
        "{stderr}"
    );
}

/// Runs the peer with `args`; it must fail at once with one line on standard error.
fn refused(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_peer"))
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    stderr
}

#[test]
fn bad_names_and_ports_are_refused_before_anything_starts() {
    let long = "n".repeat(5000);
    let stderr = refused(&["127.0.0.1:0", &long, "127.0.0.1:9"]);
    assert!(
        stderr.contains("5000 characters long; at most 64"),
        "{stderr}"
    );
    assert!(
        stderr.len() < 200,
        "the name is not echoed in full: {stderr}"
    );
    let stderr = refused(&["127.0.0.1:0", "john smith", "127.0.0.1:9"]);
    assert!(stderr.contains("white space"), "{stderr}");
    let stderr = refused(&["127.0.0.1:0", "sequencer", "127.0.0.1:9"]);
    assert!(stderr.contains("reserved"), "{stderr}");
    let stderr = refused(&["127.0.0.1:99999", "ford", "127.0.0.1:9"]);
    assert!(stderr.contains("port 99999 is out of range"), "{stderr}");
}
