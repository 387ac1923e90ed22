//! Hosts for multi-host tests: each a network namespace of its own with one interface,
//! `eth0` (MTU 1,500), on a bridge that lives in a further namespace, so that every datagram
//! between two hosts leaves one kernel interface and enters another, as between machines.
//! Everything is created by [`Hosts::create`] and removed when the value is dropped; the
//! machine's own interfaces and routes are never touched. Needs root.

use std::net::IpAddr;
use std::process::Command;

use super::netns::Namespace;

/// The hosts' subnet: private to each fixture (its bridge is in a namespace of its own), so
/// fixtures running at once never see each other.
const SUBNET: [u8; 3] = [10, 77, 0];

/// A few hosts on one LAN.
pub struct Hosts {
    /// Each host, in order; host `i` has the address `10.77.0.(i+1)`.
    pub hosts: Vec<Namespace>,
    /// Holds the bridge; dropped last.
    _switch: Namespace,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let status = Command::new("ip")
        .args(args)
        .status()
        .map_err(|e| format!("ip: {e}"))?;
    status
        .success()
        .then_some(())
        .ok_or_else(|| format!("`ip {}` failed", args.join(" ")))
}

impl Hosts {
    /// `count` hosts named after `tag`, each with `lo` and `eth0` up.
    pub fn create(tag: &str, count: usize) -> Result<Self, String> {
        assert!(count < 250, "one /24 subnet");
        let switch = Namespace::create(&format!("{tag}-sw"))?;
        let sw = switch.0.as_str();
        ip(&[
            "netns", "exec", sw, "ip", "link", "add", "br0", "type", "bridge",
        ])?;
        ip(&["netns", "exec", sw, "ip", "link", "set", "br0", "up"])?;
        let mut hosts = Vec::new();
        for i in 0..count {
            let host = Namespace::create(&format!("{tag}-h{i}"))?;
            let port = format!("v{i}");
            let h = host.0.as_str();
            ip(&[
                "netns", "exec", sw, "ip", "link", "add", &port, "mtu", "1500", "type", "veth",
                "peer", "name", "eth0", "mtu", "1500", "netns", h,
            ])?;
            ip(&[
                "netns", "exec", sw, "ip", "link", "set", &port, "master", "br0",
            ])?;
            ip(&["netns", "exec", sw, "ip", "link", "set", &port, "up"])?;
            let addr = format!("{}/24", Self::address(i));
            ip(&[
                "netns", "exec", h, "ip", "addr", "add", &addr, "dev", "eth0",
            ])?;
            ip(&["netns", "exec", h, "ip", "link", "set", "eth0", "up"])?;
            hosts.push(host);
        }
        let hosts = Self {
            hosts,
            _switch: switch,
        };
        hosts.wait_until_connected()?;
        Ok(hosts)
    }

    /// Host `i`'s address.
    pub fn address(i: usize) -> IpAddr {
        IpAddr::from([SUBNET[0], SUBNET[1], SUBNET[2], i as u8 + 1])
    }

    /// Host `i`.
    pub fn host(&self, i: usize) -> &Namespace {
        &self.hosts[i]
    }

    /// The interface MTU host `i` sees (1,500 unless something is wrong).
    pub fn mtu(&self, i: usize) -> Result<u32, String> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.hosts[i].0,
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

    /// An IP counter of host `i` (`/proc/net/snmp`, line `Ip:`), such as `FragCreates`
    /// (datagrams it split because they exceeded the MTU) or `ReasmReqds` (fragments it
    /// had to reassemble).
    pub fn ip_counter(&self, i: usize, name: &str) -> Result<u64, String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.hosts[i].0, "cat", "/proc/net/snmp"])
            .output()
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut ip = text.lines().filter(|l| l.starts_with("Ip:"));
        let (names, values) = (ip.next().unwrap_or(""), ip.next().unwrap_or(""));
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.parse().ok())
            .ok_or_else(|| format!("no IP counter {name}"))
    }

    /// Every bridge port forwards (a fresh port may take a moment to leave `disabled`).
    fn wait_until_connected(&self) -> Result<(), String> {
        for _ in 0..50 {
            let out = Command::new("ip")
                .args(["netns", "exec", &self._switch.0, "bridge", "link", "show"])
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

impl Drop for Hosts {
    fn drop(&mut self) {
        // The hosts go first (their veth ends go with them), then the switch.
        self.hosts.clear();
    }
}
