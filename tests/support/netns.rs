//! Private network namespaces for tests that need real packet loss: created, given a
//! packet filter, and removed by the test. Needs root and iptables; [`can_run`] says why not.

use std::process::Command;

use super::{Process, bin};

/// A private network namespace with `lo` up, removed when dropped if this value made it.
pub struct Namespace(pub String, bool);

impl Namespace {
    /// Creates one named after `tag` and this process.
    pub fn create(tag: &str) -> Result<Self, String> {
        // Unique in this process too: tests run in parallel.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("gc-{tag}-{}-{n}", std::process::id());
        let ok = |args: &[&str]| {
            Command::new("ip")
                .args(args)
                .status()
                .is_ok_and(|s| s.success())
        };
        if !ok(&["netns", "add", &name]) {
            return Err("cannot create a network namespace".into());
        }
        let ns = Self(name, true);
        if !ok(&["netns", "exec", &ns.0, "ip", "link", "set", "lo", "up"]) {
            return Err("cannot bring up lo in the namespace".into());
        }
        Ok(ns)
    }

    /// One made by someone else (a [`runner::lan::Lan`]'s host), left in place when dropped.
    pub fn adopt(name: String) -> Self {
        Self(name, false)
    }

    /// Drops `percent` % of UDP packets arriving in the namespace, except those to or from
    /// `spared` (the tracker's port). Two `-m udp` matches: with iptables 1.8 (nf_tables),
    /// `! --sport P ! --dport P` in one match does not spare P (measured: about 9 % of the
    /// datagrams to P were dropped). The rule is checked by its counters: a datagram to the
    /// spared port is sent and must not be counted as dropped.
    pub fn lose(&self, percent: u32, spared: u16) -> Result<(), String> {
        self.drop_rule(percent, Some(spared))?;
        self.check_spared(spared)
    }

    /// Drops `percent` % of every UDP packet arriving in the namespace, the tracker's too.
    pub fn lose_all(&self, percent: u32) -> Result<(), String> {
        self.drop_rule(percent, None)
    }

    /// The rule: a share of UDP dropped in INPUT (a DROP in OUTPUT would make `sendto`
    /// fail), sparing a port if asked.
    fn drop_rule(&self, percent: u32, spared: Option<u16>) -> Result<(), String> {
        let p = format!("{:.2}", f64::from(percent) / 100.0);
        let mut rule: Vec<String> = [
            "netns", "exec", &self.0, "iptables", "-A", "INPUT", "-p", "udp",
        ]
        .map(str::to_owned)
        .to_vec();
        if let Some(port) = spared {
            let port = port.to_string();
            for dir in ["--sport", "--dport"] {
                rule.extend(["-m", "udp", "!", dir, &port].map(str::to_owned));
            }
        }
        rule.extend(
            [
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &p,
                "-j",
                "DROP",
            ]
            .map(str::to_owned),
        );
        let status = Command::new("ip")
            .args(&rule)
            .status()
            .map_err(|e| format!("iptables: {e}"))?;
        status
            .success()
            .then_some(())
            .ok_or("iptables refused the rule".into())
    }

    /// Sends 200 datagrams to the spared port inside the namespace and checks, by the
    /// rule's counter, that none of them was dropped.
    fn check_spared(&self, spared: u16) -> Result<(), String> {
        let script = format!(
            "import socket\nr=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nr.bind(('127.0.0.1',{spared}))\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor _ in range(200): s.sendto(b'x',('127.0.0.1',{spared}))\n"
        );
        let sent = Command::new("ip")
            .args(["netns", "exec", &self.0, "python3", "-c", &script])
            .status()
            .is_ok_and(|s| s.success());
        if !sent {
            // No python3 to probe with: the rule stands as written.
            return Ok(());
        }
        let dropped = self.dropped()?;
        if dropped > 0 {
            return Err(format!(
                "the loss rule dropped {dropped} of 200 datagrams to the port it should spare"
            ));
        }
        Ok(())
    }

    /// Datagrams the loss rule has dropped so far (its counter).
    pub fn dropped(&self) -> Result<u64, String> {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &self.0, "iptables", "-L", "INPUT", "-v", "-x", "-n",
            ])
            .output()
            .map_err(|e| format!("iptables: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text
            .lines()
            .find(|l| l.contains("DROP"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0))
    }

    /// Runs one of our programs inside the namespace.
    pub fn spawn(&self, name: &str, args: &[String]) -> Process {
        Process::spawn_program("ip", &self.command(name, args))
    }

    /// As [`Self::spawn`], reading the program's standard error too.
    pub fn spawn_capturing_stderr(&self, name: &str, args: &[String]) -> Process {
        Process::spawn_program_capturing_stderr("ip", &self.command(name, args))
    }

    fn command(&self, name: &str, args: &[String]) -> Vec<String> {
        let mut all = vec![
            "netns".to_owned(),
            "exec".into(),
            self.0.clone(),
            bin(name).display().to_string(),
        ];
        all.extend(args.iter().cloned());
        all
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if !self.1 {
            return;
        }
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

/// Whether this machine can run namespace tests (root, iptables); the reason if not.
pub fn can_run() -> Result<(), String> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| e.to_string())?;
    if String::from_utf8_lossy(&root.stdout).trim() != "0" {
        return Err("not root".into());
    }
    let iptables = Command::new("sh")
        .args(["-c", "command -v iptables"])
        .output()
        .map_err(|e| e.to_string())?;
    if !iptables.status.success() {
        return Err("iptables is not installed (bash .ci/run installs it)".into());
    }
    Ok(())
}
