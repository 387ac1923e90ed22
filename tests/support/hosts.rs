//! Hosts for multi-host tests: the runner's [`Lan`] (each host a network namespace with one
//! interface, MTU 1,500, on a private bridge), with each host usable as a test
//! [`Namespace`] (run programs there, drop a share of what arrives). Removed when dropped.
//! Needs root.

use std::net::IpAddr;

use runner::lan::Lan;

use super::netns::Namespace;

/// A few hosts on one LAN.
pub struct Hosts {
    /// Each host, in order; host `i` has the address [`Hosts::address`]`(i)`.
    pub hosts: Vec<Namespace>,
    lan: Lan,
}

impl Hosts {
    /// `count` hosts named after `tag`.
    pub fn create(tag: &str, count: usize) -> Result<Self, String> {
        let lan = Lan::create(tag, count)?;
        let hosts = (0..count)
            .map(|i| Namespace::adopt(lan.namespace(i).to_owned()))
            .collect();
        Ok(Self { hosts, lan })
    }

    /// Host `i`'s address.
    pub fn address(i: usize) -> IpAddr {
        Lan::address(i)
    }

    /// Host `i`.
    pub fn host(&self, i: usize) -> &Namespace {
        &self.hosts[i]
    }

    /// Host `i`'s interface MTU.
    pub fn mtu(&self, i: usize) -> Result<u32, String> {
        self.lan.mtu(i)
    }

    /// An IP counter of host `i` (see [`Lan::ip_counter`]).
    pub fn ip_counter(&self, i: usize, name: &str) -> Result<u64, String> {
        self.lan.ip_counter(i, name)
    }
}
