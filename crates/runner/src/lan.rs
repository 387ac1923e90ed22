//! Hosts on one LAN, made of network namespaces: each host a namespace with one interface,
//! `eth0` (MTU 1,500, address `10.77.0.N/24`), plugged into a bridge that lives in a
//! namespace of its own. Every datagram between two hosts leaves one kernel interface and
//! enters another, as between machines, and the fixture touches nothing outside the
//! namespaces it creates (each LAN's bridge is private, so LANs made at once never meet).
//! Everything is removed when the [`Lan`] is dropped. Needs root and `ip` (iproute2).

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

/// The hosts' subnet (a /24).
const SUBNET: [u8; 3] = [10, 77, 0];

/// A LAN of hosts; host `i` has the address [`Lan::address`]`(i)`.
#[derive(Debug)]
pub struct Lan {
    /// Each host's namespace name, in order.
    hosts: Vec<String>,
    /// The namespace holding the bridge.
    switch: String,
}

/// Runs `ip ARGS`, failing with the command line if it fails.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip (iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Lan {
    /// `count` hosts (at most 250), named after `tag` and this process, each with `lo` and
    /// `eth0` up and every bridge port forwarding.
    pub fn create(tag: &str, count: usize) -> Result<Self, String> {
        if count > 250 {
            return Err(format!("{count} hosts do not fit one /24"));
        }
        // Unique in this process too: tests make LANs in parallel.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stem = format!("gc-{tag}-{}-{n}", std::process::id());
        let switch = format!("{stem}-sw");
        ip(&["netns", "add", &switch])?;
        let mut lan = Self {
            hosts: Vec::new(),
            switch,
        };
        let sw = lan.switch.clone();
        ip(&[
            "netns", "exec", &sw, "ip", "link", "add", "br0", "type", "bridge",
        ])?;
        ip(&["netns", "exec", &sw, "ip", "link", "set", "br0", "up"])?;
        for i in 0..count {
            let host = format!("{stem}-h{i}");
            ip(&["netns", "add", &host])?;
            lan.hosts.push(host.clone());
            let port = format!("v{i}");
            ip(&[
                "netns", "exec", &sw, "ip", "link", "add", &port, "mtu", "1500", "type", "veth",
                "peer", "name", "eth0", "mtu", "1500", "netns", &host,
            ])?;
            ip(&[
                "netns", "exec", &sw, "ip", "link", "set", &port, "master", "br0",
            ])?;
            ip(&["netns", "exec", &sw, "ip", "link", "set", &port, "up"])?;
            let addr = format!("{}/24", Self::address(i));
            ip(&[
                "netns", "exec", &host, "ip", "addr", "add", &addr, "dev", "eth0",
            ])?;
            ip(&["netns", "exec", &host, "ip", "link", "set", "eth0", "up"])?;
            ip(&["netns", "exec", &host, "ip", "link", "set", "lo", "up"])?;
        }
        lan.wait_until_forwarding()?;
        Ok(lan)
    }

    /// Host `i`'s address.
    pub fn address(i: usize) -> IpAddr {
        IpAddr::from([SUBNET[0], SUBNET[1], SUBNET[2], i as u8 + 1])
    }

    /// How many hosts.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Host `i`'s namespace name.
    pub fn namespace(&self, i: usize) -> &str {
        &self.hosts[i]
    }

    /// The command line that runs `program` with `args` on host `i`: give it to
    /// [`Command::new`]`("ip")`. `ip netns exec` executes the program in place, so the
    /// child is the program itself (signals reach it).
    pub fn command(&self, i: usize, program: &Path, args: &[String]) -> Vec<String> {
        let mut all: Vec<String> = ["netns", "exec", &self.hosts[i]]
            .map(str::to_owned)
            .to_vec();
        all.push(program.display().to_string());
        all.extend(args.iter().cloned());
        all
    }

    /// An IP counter of host `i` (`/proc/net/snmp`, line `Ip:`), such as `FragCreates`
    /// (datagrams it split for the MTU) or `ReasmReqds` (fragments it reassembled).
    pub fn ip_counter(&self, i: usize, name: &str) -> Result<u64, String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.hosts[i], "cat", "/proc/net/snmp"])
            .output()
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines().filter(|l| l.starts_with("Ip:"));
        let (names, values) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.parse().ok())
            .ok_or_else(|| format!("no IP counter {name}"))
    }

    /// Host `i`'s interface MTU.
    pub fn mtu(&self, i: usize) -> Result<u32, String> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.hosts[i],
                "cat",
                "/sys/class/net/eth0/mtu",
            ])
            .output()
            .map_err(|e| e.to_string())?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|e| format!("mtu: {e}"))
    }

    /// Every bridge port forwards (a fresh port may take a moment to leave `disabled`).
    fn wait_until_forwarding(&self) -> Result<(), String> {
        for _ in 0..50 {
            let out = Command::new("ip")
                .args(["netns", "exec", &self.switch, "bridge", "link", "show"])
                .output()
                .map_err(|e| format!("bridge: {e}"))?;
            let text = String::from_utf8_lossy(&out.stdout);
            if text.matches("state forwarding").count() == self.hosts.len() {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Err("the bridge's ports never went forwarding".into())
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        // The hosts first (their veth ends go with them), then the switch.
        for ns in self.hosts.iter().chain(std::iter::once(&self.switch)) {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
    }
}
