//! A whole local system of separate processes — tracker, sequencer, peers — started from
//! the binaries of the same build, and stopped when dropped, whatever happened.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::lan::Lan;

/// Where the daemons' binaries are: beside the running executable (one build, one
/// `target/<profile>` folder).
pub fn binaries() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = exe
        .parent()
        .ok_or("no folder for the executable")?
        .to_path_buf();
    for name in ["tracker", "sequencer", "peer"] {
        if !dir.join(name).exists() {
            return Err(format!(
                "{} is missing beside {}: build the whole workspace first (cargo build --release)",
                name,
                exe.display()
            ));
        }
    }
    Ok(dir)
}

/// A child process, killed when dropped.
pub struct Proc {
    child: Child,
    name: String,
    /// After the banner was read: the thread that keeps reading standard output (so the
    /// process never blocks on a full pipe) and returns the rest of it.
    rest: Option<std::thread::JoinHandle<String>>,
}

impl Proc {
    /// Starts `bin` with `args`, its output captured.
    pub(crate) fn spawn(bin: &Path, name: &str, args: &[String]) -> Result<Self, String> {
        let child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        Ok(Self {
            child,
            name: name.to_owned(),
            rest: None,
        })
    }

    /// Reads the first line of standard output and takes its fourth word as the address
    /// the daemon listens on (`tracker listening on ADDR ...`).
    pub(crate) fn banner_addr(&mut self) -> Result<SocketAddr, String> {
        let stdout = self.child.stdout.take().ok_or("no output")?;
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .map_err(|e| format!("{}: {e}", self.name))?;
        self.rest = Some(std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = reader.read_to_string(&mut rest);
            rest
        }));
        line.split_whitespace()
            .nth(3)
            .and_then(|a| a.trim_end_matches([';', ',']).parse().ok())
            .ok_or_else(|| format!("{} did not start: {line:?}", self.name))
    }

    /// Asks the process to stop (SIGINT) as a user's Ctrl-C would.
    fn interrupt(&self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.interrupt();
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A tracker and a sequencer, ready for peers: on 127.0.0.1, or each on a host of its own
/// (a [`Lan`]: the tracker on host 0, the sequencer on host 1, the peers on the others).
pub struct System {
    bin: PathBuf,
    /// The tracker's address.
    pub tracker: SocketAddr,
    _tracker: Proc,
    _sequencer: Proc,
    peers_started: std::cell::Cell<usize>,
    /// Dropped after the processes: the hosts they ran on.
    lan: Option<Lan>,
}

impl System {
    /// Starts a sequencer (with `sequencer_args` after its address) and a tracker that
    /// knows it, on free ports of 127.0.0.1, or of their hosts on `lan`.
    pub fn start(bin: &Path, sequencer_args: &[String], lan: Option<Lan>) -> Result<Self, String> {
        let host_addr = |i: usize| match &lan {
            Some(_) => format!("{}:0", Lan::address(i)),
            None => "127.0.0.1:0".to_owned(),
        };
        let mut args = vec![host_addr(1)];
        args.extend(sequencer_args.iter().cloned());
        let mut sequencer = spawn_on(lan.as_ref(), 1, &bin.join("sequencer"), "sequencer", &args)?;
        let seq_addr = sequencer.banner_addr()?;
        let args = [host_addr(0), "--seq-addr".into(), seq_addr.to_string()];
        let mut tracker = spawn_on(lan.as_ref(), 0, &bin.join("tracker"), "tracker", &args)?;
        let tracker_addr = tracker.banner_addr()?;
        Ok(Self {
            bin: bin.to_path_buf(),
            tracker: tracker_addr,
            _tracker: tracker,
            _sequencer: sequencer,
            peers_started: std::cell::Cell::new(0),
            lan,
        })
    }

    /// Starts a peer in script mode (on the next peer host, round robin, on a LAN); its
    /// measurements come back from [`ScriptPeer::finish`].
    pub fn script_peer(&self, name: &str, args: &[String]) -> Result<ScriptPeer, String> {
        let n = self.peers_started.replace(self.peers_started.get() + 1);
        let host = self
            .lan
            .as_ref()
            .map_or(0, |lan| 2 + n % lan.len().saturating_sub(2).max(1));
        let bind = match &self.lan {
            Some(_) => format!("{}:0", Lan::address(host)),
            None => "127.0.0.1:0".to_owned(),
        };
        let mut all = vec![bind, name.to_owned(), self.tracker.to_string()];
        all.extend(args.iter().cloned());
        all.push("--json".into());
        Ok(ScriptPeer {
            proc: spawn_on(self.lan.as_ref(), host, &self.bin.join("peer"), name, &all)?,
        })
    }
}

/// Starts `bin` on host `host` of `lan`, or here without one.
fn spawn_on(
    lan: Option<&Lan>,
    host: usize,
    bin: &Path,
    name: &str,
    args: &[String],
) -> Result<Proc, String> {
    match lan {
        None => Proc::spawn(bin, name, args),
        Some(lan) => Proc::spawn(Path::new("ip"), name, &lan.command(host, bin, args)),
    }
}

/// A peer running a script.
pub struct ScriptPeer {
    proc: Proc,
}

impl ScriptPeer {
    /// Waits for the peer to end (at most `timeout`, or until `stop` is set) and returns its
    /// measurements (the JSON object it prints last).
    pub fn finish(
        self,
        timeout: Duration,
        stop: &Arc<AtomicBool>,
    ) -> Result<serde_json::Value, String> {
        self.proc.finish(timeout, stop)
    }
}

impl Proc {
    /// Waits for the process to end (at most `timeout`, or until `stop` is set) and returns
    /// the JSON object it printed last.
    pub(crate) fn finish(
        mut self,
        timeout: Duration,
        stop: &Arc<AtomicBool>,
    ) -> Result<serde_json::Value, String> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                break status;
            }
            if stop.load(Ordering::SeqCst) {
                return Err("interrupted".into());
            }
            if Instant::now() > deadline {
                return Err(format!("{} did not finish within {timeout:?}", self.name));
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let mut out = String::new();
        if let Some(mut stdout) = self.child.stdout.take() {
            let _ = stdout.read_to_string(&mut out);
        } else if let Some(rest) = self.rest.take() {
            out = rest.join().unwrap_or_default();
        }
        let mut err = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            let _ = stderr.read_to_string(&mut err);
        }
        let last = out.lines().last().unwrap_or_default();
        serde_json::from_str(last).map_err(|_| {
            format!(
                "{} ended ({status}) without measurements: {}",
                self.name,
                err.trim()
            )
        })
    }
}
