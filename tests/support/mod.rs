//! Running the real binaries in end-to-end tests: each process is killed when its handle
//! is dropped, so a failing test leaves nothing behind.

#![allow(dead_code, clippy::unwrap_used)]

pub mod etcd;
pub mod hosts;
pub mod netns;
pub mod report;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// A daemon's binary, built by `cargo test --workspace` beside this test's executable (the
/// tracker, peer and sequencer packages have integration tests, so Cargo builds their
/// binaries before any test runs).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the end-to-end tests with `cargo test --workspace`, which builds it",
        path.display()
    );
    path
}

/// A child process whose standard output is read line by line on a helper thread.
pub struct Process {
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    pub seen: Vec<String>,
    prompt: Option<String>,
}

impl Process {
    pub fn spawn(name: &str, args: &[String]) -> Self {
        Self::spawn_program(bin(name), args)
    }

    /// Any program (by path or name on PATH), with its output read as for the daemons.
    pub fn spawn_program(program: impl AsRef<std::ffi::OsStr>, args: &[String]) -> Self {
        Self::start(Command::new(program).args(args), false)
    }

    /// A daemon whose standard error is read too: its lines come among the others,
    /// prefixed with `stderr: `.
    pub fn spawn_capturing_stderr(name: &str, args: &[String]) -> Self {
        Self::spawn_program_capturing_stderr(bin(name), args)
    }

    /// Any program, its standard error read too (as [`Self::spawn_capturing_stderr`]).
    pub fn spawn_program_capturing_stderr(
        program: impl AsRef<std::ffi::OsStr>,
        args: &[String],
    ) -> Self {
        Self::start(Command::new(program).args(args), true)
    }

    fn start(command: &mut Command, stderr: bool) -> Self {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(if stderr {
                Stdio::piped()
            } else {
                Stdio::inherit()
            })
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        if let Some(err) = child.stderr.take() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    if tx.send(format!("stderr: {line}")).is_err() {
                        break;
                    }
                }
            });
        }
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Self {
            child,
            stdin,
            lines: rx,
            seen: Vec::new(),
            prompt: None,
        }
    }

    /// Strips the interactive prompt `[name]> ` wherever it starts a line.
    pub fn with_prompt(mut self, username: &str) -> Self {
        self.prompt = Some(format!("[{username}]> "));
        self
    }

    fn clean(&self, mut line: String) -> String {
        if let Some(p) = &self.prompt {
            while let Some(rest) = line.strip_prefix(p.as_str()) {
                line = rest.to_owned();
            }
        }
        line
    }

    /// The next line of output within `timeout`.
    pub fn next_line(&mut self, timeout: Duration) -> Option<String> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => {
                let line = self.clean(line);
                self.seen.push(line.clone());
                Some(line)
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => None,
        }
    }

    /// Waits for a line equal to `expected` (other lines may come first); fails with
    /// everything seen if it does not come within 10 s.
    pub fn expect_line(&mut self, expected: &str) {
        self.expect(|l| l == expected, expected);
    }

    /// Waits for a line satisfying `pred`.
    pub fn expect(&mut self, pred: impl Fn(&str) -> bool, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.next_line(left) {
                Some(line) if pred(&line) => return line,
                Some(_) => {}
                None => break,
            }
        }
        panic!("expected {what:?}; saw {:#?}", self.seen);
    }

    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Writes raw bytes to standard input (for input that is not UTF-8).
    pub fn send_bytes(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }

    /// Closes standard input (end of input).
    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }

    /// Waits for the process to exit, at most `timeout`; reads the rest of its output.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                while self.next_line(Duration::from_millis(200)).is_some() {}
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit within {timeout:?}; its output: {:#?}",
                self.seen
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGINT.
    pub fn interrupt(&self) {
        Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A daemon that prints `... listening on ADDR ...` first.
pub struct Daemon {
    pub process: Process,
    pub addr: SocketAddr,
}

fn daemon(name: &str, args: Vec<String>) -> Daemon {
    let mut process = Process::spawn(name, &args);
    let banner = process
        .next_line(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("{name} printed nothing"));
    let addr = banner
        .split_whitespace()
        .nth(3)
        .and_then(|a| a.trim_end_matches([';', ',']).parse().ok())
        .unwrap_or_else(|| panic!("no address in {banner:?}"));
    Daemon { process, addr }
}

pub fn tracker(extra: &[&str]) -> Daemon {
    tracker_at("127.0.0.1:0", extra)
}

/// A tracker on a given address (to restart one where the peers expect it).
pub fn tracker_at(addr: &str, extra: &[&str]) -> Daemon {
    let mut args = vec![addr.to_owned()];
    args.extend(extra.iter().map(|s| s.to_string()));
    daemon("tracker", args)
}

pub fn sequencer() -> Daemon {
    sequencer_with(&[])
}

/// A sequencer on 127.0.0.1 with these options.
pub fn sequencer_with(extra: &[&str]) -> Daemon {
    let mut args = vec!["127.0.0.1:0".to_owned()];
    args.extend(extra.iter().map(|s| s.to_string()));
    daemon("sequencer", args)
}

/// A tracker with a sequencer, for total order.
pub fn tracker_with_sequencer() -> (Daemon, Daemon) {
    let seq = sequencer();
    let tracker = tracker(&["--seq-addr", &seq.addr.to_string()]);
    (tracker, seq)
}

/// A tracker, with a sequencer when `total`.
pub fn tracker_for(total: bool) -> (Daemon, Option<Daemon>) {
    if total {
        let (t, s) = tracker_with_sequencer();
        (t, Some(s))
    } else {
        (tracker(&[]), None)
    }
}

/// An interactive peer.
pub fn interactive(username: &str, tracker: SocketAddr, total: bool) -> Process {
    let mut args = vec![
        "127.0.0.1:0".to_owned(),
        username.to_owned(),
        tracker.to_string(),
    ];
    if total {
        args.push("-s".into());
    }
    Process::spawn("peer", &args).with_prompt(username)
}

/// Writes `lines` to a file in `dir`.
pub fn lines_file(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
    let path = dir.join(name);
    let text = if lines.is_empty() {
        String::new()
    } else {
        lines.join("\n") + "\n"
    };
    std::fs::write(&path, text).unwrap();
    path
}

/// A new random group key in `dir/NAME.key`, readable by its owner only (as the programs
/// want key files); returns the key and the `--group-key-file GROUP=FILE` arguments.
pub fn key_file(dir: &Path, group: &str) -> (seal::GroupKey, [String; 2]) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let key = seal::GroupKey::generate();
    let path = dir.join(format!("{group}.key"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .unwrap();
    writeln!(file, "{}", key.to_hex()).unwrap();
    (
        key,
        [
            "--group-key-file".into(),
            format!("{group}={}", path.display()),
        ],
    )
}

/// One delivery as a script peer logged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub group: String,
    pub author: String,
    pub counter: u64,
    pub text: String,
}

pub fn deliveries(path: &Path) -> Vec<Delivery> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let mut f = l.splitn(4, '\t');
            Delivery {
                group: f.next().unwrap().to_owned(),
                author: f.next().unwrap().to_owned(),
                counter: f.next().unwrap().parse().unwrap(),
                text: f.next().unwrap_or_default().to_owned(),
            }
        })
        .collect()
}

/// A script peer's options, after its address, name and tracker: `-t FILE --json`, and
/// what the test adds.
pub struct ScriptArgs(pub Vec<String>);

/// Script mode on `file`, printing its report as JSON.
pub fn script(file: &Path) -> ScriptArgs {
    ScriptArgs(vec![
        "-t".into(),
        file.display().to_string(),
        "--json".into(),
    ])
}

impl ScriptArgs {
    fn with(mut self, option: &str, value: impl ToString) -> Self {
        self.0.extend([option.to_owned(), value.to_string()]);
        self
    }

    /// Start sending once the group has `n` members.
    pub fn members(self, n: usize) -> Self {
        self.with("--members", n)
    }

    /// Wait for `n` deliveries.
    pub fn expect(self, n: u64) -> Self {
        self.with("--expect", n)
    }

    /// Give up after `ms`.
    pub fn timeout_ms(self, ms: u64) -> Self {
        self.with("--timeout-ms", ms)
    }

    /// Log every delivery to `DIR/NAME.tsv` (see [`deliveries`]).
    pub fn deliveries(self, dir: &Path, name: &str) -> Self {
        self.with("--deliveries", dir.join(format!("{name}.tsv")).display())
    }

    /// Send at most `per_second` messages a second.
    pub fn rate(self, per_second: impl ToString) -> Self {
        self.with("--rate", per_second)
    }

    /// Join `group` instead of `test`.
    pub fn group(self, group: &str) -> Self {
        self.with("--group", group)
    }

    /// Total order if `total`.
    pub fn total(mut self, total: bool) -> Self {
        if total {
            self.0.push("-s".into());
        }
        self
    }

    /// The peer's whole command line: `bind name tracker`, then these options.
    pub fn line(self, bind: &str, name: &str, tracker: &str) -> Vec<String> {
        let mut all = vec![bind.to_owned(), name.to_owned(), tracker.to_owned()];
        all.extend(self.0);
        all
    }
}

/// A port free for both TCP and UDP on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Checks what each of `peers` delivered (their `--deliveries` logs `NAME.tsv` in `dir`):
/// every message of every author in `authors` — texts `AUTHOR 0` to `AUTHOR messages-1` —
/// exactly once and in its author's order; in total order also one identical sequence.
pub fn check_deliveries(
    dir: &Path,
    peers: &[String],
    authors: &[String],
    messages: usize,
    total: bool,
) {
    let mut first: Option<Vec<Delivery>> = None;
    for peer in peers {
        let got = deliveries(&dir.join(format!("{peer}.tsv")));
        assert_eq!(
            got.len(),
            authors.len() * messages,
            "{peer} delivered {}",
            got.len()
        );
        let mut seen = std::collections::HashSet::new();
        let mut per_author: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
        for d in &got {
            assert!(seen.insert(&d.text), "{peer} delivered {:?} twice", d.text);
            per_author.entry(&d.author).or_default().push(&d.text);
        }
        for author in authors {
            let expected: Vec<String> = (0..messages).map(|i| format!("{author} {i}")).collect();
            let texts = per_author.remove(author.as_str()).unwrap_or_default();
            assert_eq!(
                texts, expected,
                "{peer}: {author}'s messages missing or out of order"
            );
        }
        assert!(
            per_author.is_empty(),
            "{peer} delivered from unknown authors"
        );
        if total {
            match &first {
                None => first = Some(got),
                Some(f) => {
                    // The same messages in the same order; not the same numbers: after a
                    // sequencer crash, what one member delivered from the old sequencer
                    // another delivers as recovered by the new one, under its numbers.
                    let same = |a: &Delivery, b: &Delivery| {
                        (&a.group, &a.author, &a.text) == (&b.group, &b.author, &b.text)
                    };
                    if let Some(i) = (0..f.len()).find(|&i| !same(&f[i], &got[i])) {
                        let show = |d: &[Delivery]| -> Vec<String> {
                            d[i.saturating_sub(3)..(i + 4).min(d.len())]
                                .iter()
                                .map(|d| format!("{} (#{})", d.text, d.counter))
                                .collect()
                        };
                        panic!(
                            "{peer} delivered another order than {}: first difference at delivery {i}: {:?} against {:?}",
                            peers[0],
                            show(&got),
                            show(f)
                        );
                    }
                }
            }
        }
    }
}
