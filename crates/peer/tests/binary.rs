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
        "<HOST:PORT> <USERNAME> <TRACKER_HOST:PORT>",
        "--total",
        "--script",
        "--group",
        "--members",
        "--expect",
        "--rate",
        "--json",
        "--deliveries",
        "says::",
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
