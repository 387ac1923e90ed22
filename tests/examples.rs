//! The examples in `examples/`, run as a user runs them: the replicated key-value store
//! (whole system in one process, members as threads), also under real packet loss, and the
//! chat against a real tracker.

#![allow(clippy::unwrap_used)] // a test may stop at the first surprise

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use support::netns::{Namespace, can_run};
use support::{Process, tracker};

/// An example's binary, built by `cargo test` beside the test binaries.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: cargo test builds it",
        path.display()
    );
    path
}

#[test]
fn the_key_value_store_ends_with_identical_replicas_after_a_late_join_and_a_leave() {
    let out = Command::new(example("kv")).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("every replica holds the same"), "{stdout}");
    // dan joined while the others wrote: some of its state came in the snapshot, the rest
    // it applied itself.
    let dan = stdout.lines().find(|l| l.starts_with("dan:")).unwrap();
    assert!(!dan.contains(" 0 writes applied"), "{stdout}");
}

#[test]
fn the_key_value_store_agrees_under_ten_percent_loss() {
    if let Err(why) = can_run() {
        eprintln!("skipped: {why}");
        return;
    }
    let ns = Namespace::create("kv").unwrap();
    ns.lose(10, 5000).unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(example("kv"))
        .args(["127.0.0.1:5000", "127.0.0.1:5001"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("every replica holds the same"), "{stdout}");
    let dropped = ns.dropped().unwrap();
    assert!(
        dropped > 50,
        "the loss was real: {dropped} datagrams dropped"
    );
}

#[test]
fn the_chat_carries_lines_both_ways() {
    let tracker = tracker(&[]);
    let chat = |name: &str| {
        Process::spawn_program(
            example("chat"),
            &[name.into(), tracker.addr.to_string(), "books".into()],
        )
    };
    let mut ann = chat("ann");
    ann.expect_line("ann in books; type a line to send it, end of input to leave");
    let mut bob = chat("bob");
    bob.expect_line("bob in books; type a line to send it, end of input to leave");
    ann.expect_line("* bob joined");
    bob.send("hello ann");
    ann.expect_line("bob: hello ann");
    ann.send("hello bob");
    bob.expect_line("ann: hello bob");
    bob.close_stdin();
    assert!(bob.wait(Duration::from_secs(10)).success());
    ann.expect_line("* bob left");
}
