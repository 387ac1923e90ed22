//! The interactive peer as a person uses it: pasted and piped input applied in the order
//! typed, bytes that are not UTF-8, other people's control characters, a refused duplicate
//! name, input that ends at once, and the line editor at a (pseudo-)terminal.

#![allow(clippy::unwrap_used)] // a test may stop at the first surprise

mod support;

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use support::report::{self, ReportClient};
use support::{Process, bin, free_port, interactive, tracker, tracker_at};

fn registered(p: &mut Process, name: &str) {
    p.expect(
        |l| l.starts_with(&format!("registered as {name}")),
        "registered",
    );
}

fn members(tracker: std::net::SocketAddr, group: &str) -> Vec<String> {
    let reply = report::request(tracker, json!({"Type": 4, "Content": {"Group": group}}));
    reply["Content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["Username"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn pasted_commands_are_applied_in_the_order_typed_from_the_first_instant() {
    let tracker = tracker(&[]);
    let mut kat = interactive("kat", tracker.addr, false);
    registered(&mut kat, "kat");
    kat.send("!j books");
    kat.expect_line("joined books; writing to books");
    kat.send("!j movies");
    kat.expect_line("joined movies; writing to books");
    // All at once, before yann has even registered.
    let mut yann = interactive("yann", tracker.addr, false);
    for line in [
        "!j books",
        "!w books",
        "hello",
        "!j movies",
        "!w movies",
        "in movies",
        "!e movies",
    ] {
        yann.send(line);
    }
    yann.expect_line("left movies; writing to books now");
    for expected in [
        "joined books; writing to books",
        "writing to books",
        "in books yann says:: hello",
        "joined movies; writing to books",
        "writing to movies",
        "in movies yann says:: in movies",
    ] {
        assert!(
            yann.seen.iter().any(|l| l == expected),
            "{expected:?} missing: {:#?}",
            yann.seen
        );
    }
    assert!(
        !yann
            .seen
            .iter()
            .any(|l| l.contains("not a member") || l.contains("no group selected")),
        "{:#?}",
        yann.seen
    );
    kat.expect_line("in books yann says:: hello");
    kat.expect_line("in movies yann says:: in movies");
    kat.expect_line("* yann left movies");
    assert_eq!(members(tracker.addr, "movies"), ["kat"]);
    assert_eq!(members(tracker.addr, "books"), ["kat", "yann"]);
}

#[test]
fn commands_typed_before_the_tracker_is_up_wait_for_it_in_order() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut yann = Process::spawn("peer", &["127.0.0.1:0".into(), "yann".into(), addr.clone()]);
    yann.send("!j books");
    yann.send("hello, anyone?");
    yann.expect(
        |l| l.starts_with(&format!("cannot reach the tracker at {addr} yet")),
        "the unreachable tracker told at once",
    );
    let _tracker = tracker_at(&addr, &[]);
    registered(&mut yann, "yann");
    yann.expect_line("joined books; writing to books");
    yann.expect_line("in books yann says:: hello, anyone?");
}

#[test]
fn a_line_that_is_not_utf8_is_replaced_with_a_warning_and_the_rest_goes_on() {
    let tracker = tracker(&[]);
    let mut yann = interactive("yann", tracker.addr, false);
    yann.send_bytes(b"!j books\n\xff\xfeabc\nstill here\n");
    yann.expect(
        |l| l.starts_with("warning: that line was not valid UTF-8"),
        "a warning",
    );
    yann.expect_line("in books yann says:: \u{fffd}\u{fffd}abc");
    yann.expect_line("in books yann says:: still here");
    yann.close_stdin();
    assert!(yann.wait(Duration::from_secs(10)).success());
}

#[test]
fn other_peoples_control_characters_reach_the_screen_harmless() {
    let tracker = tracker(&[]);
    let mut yann = interactive("yann", tracker.addr, false);
    registered(&mut yann, "yann");
    yann.send("!j books");
    yann.expect_line("joined books; writing to books");
    let mut old = ReportClient::register(tracker.addr, "old");
    old.join("books");
    yann.expect_line("* old joined books");
    old.multicast(
        "books",
        "\x1b]0;pwned title\x07 and\rin books yann says:: fake",
    );
    let line = yann.expect(|l| l.starts_with("in books old says:: "), "the message");
    assert_eq!(
        line,
        "in books old says:: \\x1b]0;pwned title\\x07 and\\rin books yann says:: fake"
    );
    // A name the tracker would refuse, announced straight to the group.
    let hello = report::datagram(1, "books", "\x1b[2Jevil", "", old.addr, 0, "\x1b[2Jevil");
    report::send_from_fresh_socket(&hello, yann_addr(tracker.addr));
    yann.expect_line("* \\x1b[2Jevil joined books");
    // A group name with control characters is refused by the tracker, and its reason too
    // is shown harmless.
    yann.send("!j \x1b[31mred");
    let refused = yann.expect(|l| l.contains("cannot join"), "a refused join");
    assert!(
        refused.contains("\\u{1b}[31mred") || refused.contains("\\x1b[31mred"),
        "{refused}"
    );
    for line in &yann.seen {
        assert!(
            !line.contains(['\x1b', '\x07', '\r']),
            "a control character reached the screen: {line:?}"
        );
    }
}

/// Where the tracker says yann listens.
fn yann_addr(tracker: std::net::SocketAddr) -> std::net::SocketAddr {
    let reply = report::request(tracker, json!({"Type": 4, "Content": {"Group": "books"}}));
    let m = reply["Content"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["Username"] == "yann")
        .unwrap()
        .clone();
    format!("{}:{}", m["Ip"].as_str().unwrap(), m["Port"])
        .parse()
        .unwrap()
}

#[test]
fn a_refused_duplicate_name_leaves_the_real_member_untouched() {
    let tracker = tracker(&[]);
    let mut yann = interactive("yann", tracker.addr, false);
    registered(&mut yann, "yann");
    yann.send("!j books");
    yann.expect_line("joined books; writing to books");
    // A second yann whose input ends at once: refused, and it must not say Quit for yann.
    let mut twin = interactive("yann", tracker.addr, false);
    twin.close_stdin();
    assert!(!twin.wait(Duration::from_secs(10)).success());
    assert_eq!(members(tracker.addr, "books"), ["yann"]);
    let mut kat = interactive("kat", tracker.addr, false);
    registered(&mut kat, "kat");
    kat.send("!j books");
    kat.expect_line("joined books; writing to books");
    kat.send("still there, yann?");
    yann.expect_line("in books kat says:: still there, yann?");
}

#[test]
fn a_peer_whose_input_ends_at_once_still_tells_the_tracker_it_leaves() {
    let tracker = tracker(&[]);
    let mut ann = interactive("ann", tracker.addr, false);
    ann.close_stdin();
    let started = Instant::now();
    assert!(
        ann.wait(Duration::from_secs(10)).success(),
        "{:#?}",
        ann.seen
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // Had it not said Quit, the name would be held by a live member for two seconds more.
    let reply = report::request(
        tracker.addr,
        json!({"Type": 3, "Content": {"Ip": "127.0.0.1", "Port": 5998, "Username": "ann"}}),
    );
    assert_eq!(reply["Success"], true, "{reply}");
}

/// A peer on a pseudo-terminal: what it writes is collected; keys are typed into it.
struct Terminal {
    child: std::process::Child,
    keys: std::fs::File,
    screen: Arc<Mutex<Vec<u8>>>,
}

impl Terminal {
    fn spawn(args: &[String]) -> Self {
        let size = nix::pty::Winsize {
            ws_row: 24,
            ws_col: 100,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(&size, None).unwrap();
        let slave = |fd: &OwnedFd| Stdio::from(fd.try_clone().unwrap());
        let child = Command::new(bin("peer"))
            .args(args)
            .stdin(slave(&pty.slave))
            .stdout(slave(&pty.slave))
            .stderr(slave(&pty.slave))
            .spawn()
            .unwrap();
        drop(pty.slave);
        let keys = std::fs::File::from(pty.master.try_clone().unwrap());
        let mut reader = std::fs::File::from(pty.master);
        let screen = Arc::new(Mutex::new(Vec::new()));
        let sink = screen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Self {
            child,
            keys,
            screen,
        }
    }

    fn type_keys(&mut self, keys: &str) {
        self.keys.write_all(keys.as_bytes()).unwrap();
        self.keys.flush().unwrap();
    }

    fn wait_for(&self, text: &str) {
        self.wait_for_more(text, 0);
    }

    /// How often `text` appears on the terminal so far.
    fn count(&self, text: &str) -> usize {
        String::from_utf8_lossy(&self.screen.lock().unwrap())
            .matches(text)
            .count()
    }

    /// Waits until `text` appears more than `than` times.
    fn wait_for_more(&self, text: &str, than: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.count(text) > than {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "{text:?} never appeared; the terminal shows {:?}",
            String::from_utf8_lossy(&self.screen.lock().unwrap())
        );
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn at_a_terminal_an_incoming_message_leaves_the_half_typed_line_intact() {
    let tracker = tracker(&[]);
    let mut yann = Terminal::spawn(&[
        "127.0.0.1:0".into(),
        "yann".into(),
        tracker.addr.to_string(),
    ]);
    yann.wait_for("[yann]> ");
    yann.type_keys("!j books\r");
    yann.wait_for("[yann@books]> ");
    let mut kat = interactive("kat", tracker.addr, false);
    registered(&mut kat, "kat");
    kat.send("!j books");
    kat.expect_line("joined books; writing to books");
    yann.type_keys("half typ");
    yann.wait_for("half typ");
    kat.send("incoming");
    yann.wait_for("in books kat says:: incoming");
    yann.type_keys("ed line\r");
    kat.expect_line("in books yann says:: half typed line");
    // History: the up arrow brings the line back.
    // (Each key redraws the prompt and the line.)
    let prompts = yann.count("[yann@books]> ");
    yann.type_keys("\x1b[A");
    yann.wait_for_more("[yann@books]> ", prompts);
    let prompts = yann.count("[yann@books]> ");
    yann.type_keys("\r");
    kat.expect_line("in books yann says:: half typed line");
    // Ctrl-D leaves cleanly. Typed once the editor reads again (its new prompt is out):
    // between two lines the terminal is not in raw mode, and its line discipline would
    // swallow the Ctrl-D.
    yann.wait_for_more("[yann@books]> ", prompts);
    yann.type_keys("\x04");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = yann.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "Ctrl-D did not end the peer; the terminal shows {:?}",
            String::from_utf8_lossy(&yann.screen.lock().unwrap())
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    kat.expect_line("* yann left books");
}

/// kat (piped) in books, and yann at a terminal, registered, in no group yet.
fn kat_in_books_and_yann_at_a_terminal(tracker: std::net::SocketAddr) -> (Process, Terminal) {
    let mut kat = interactive("kat", tracker, false);
    registered(&mut kat, "kat");
    kat.send("!j books");
    kat.expect_line("joined books; writing to books");
    let yann = Terminal::spawn(&["127.0.0.1:0".into(), "yann".into(), tracker.to_string()]);
    yann.wait_for("[yann]> ");
    (kat, yann)
}

#[test]
fn at_a_terminal_a_pasted_block_of_lines_is_applied_line_by_line() {
    let tracker = tracker(&[]);
    let (mut kat, mut yann) = kat_in_books_and_yann_at_a_terminal(tracker.addr);
    // A bracketed paste (as terminals send one, with \r line breaks): the editor holds it
    // until Enter, then each line counts as typed.
    yann.type_keys("\x1b[200~!j books\rfrom a paste\rand its second line\r\x1b[201~");
    yann.type_keys("\r");
    kat.expect_line("in books yann says:: from a paste");
    kat.expect_line("in books yann says:: and its second line");
    yann.wait_for("[yann@books]> ");
}

#[test]
fn at_a_terminal_keys_that_arrive_in_one_burst_are_all_applied() {
    let tracker = tracker(&[]);
    let (mut kat, mut yann) = kat_in_books_and_yann_at_a_terminal(tracker.addr);
    // Typed faster than the editor reads (as over a slow link, or by a program): the keys
    // after the first Enter are already waiting when the editor starts its next line.
    yann.type_keys("!j books\rfirst of a burst\rsecond of a burst\r");
    kat.expect_line("in books yann says:: first of a burst");
    kat.expect_line("in books yann says:: second of a burst");
}
