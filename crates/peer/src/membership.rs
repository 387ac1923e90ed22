//! Who is in each group this process takes part in, where they are, and what they speak.

use std::collections::HashMap;
use std::net::SocketAddr;

/// What this process knows of one member of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// The member's UDP address, as registered with the tracker.
    pub addr: SocketAddr,
    /// The newer protocol version it announced in Hello or HelloAck; `None` while unknown
    /// or for the report's peers. Newer datagram types are sent only when this is set.
    pub proto: Option<u32>,
    /// The start point it announced in its last Hello (to tell a repeated Hello from a
    /// rejoin).
    pub start: Option<u64>,
    /// Whether its Hello or HelloAck has arrived: the handshake is done, we know where its
    /// stream starts. (Any other datagram does not count: a member whose answer to our Hello
    /// was lost is asked again until it answers.)
    pub heard: bool,
    /// The start of our stream we told it (in our Hello or HelloAck). A repeated Hello gets
    /// the same answer: a later one would make it skip messages we already sent it.
    pub our_start: Option<u64>,
}

impl MemberInfo {
    /// A member learned from the tracker's list: address only.
    pub fn listed(addr: SocketAddr) -> Self {
        Self {
            addr,
            proto: None,
            start: None,
            heard: false,
            our_start: None,
        }
    }
}

/// The members of one group, by username.
#[derive(Debug, Clone, Default)]
pub struct Members {
    by_name: HashMap<String, MemberInfo>,
    /// Members the tracker evicted: their address and the first counter of theirs not yet
    /// delivered (see [`resume_point`](Self::resume_point)).
    evicted: HashMap<String, (SocketAddr, u64)>,
}

/// Evicted members remembered per group, in case they come back alive.
const EVICTIONS_REMEMBERED: usize = 1024;

impl Members {
    /// The member called `name`, if known.
    pub fn get(&self, name: &str) -> Option<&MemberInfo> {
        self.by_name.get(name)
    }

    /// The member called `name`, mutably.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut MemberInfo> {
        self.by_name.get_mut(name)
    }

    /// Adds or replaces a member.
    pub fn insert(&mut self, name: &str, info: MemberInfo) {
        self.by_name.insert(name.to_owned(), info);
    }

    /// Forgets a member; returns what was known.
    pub fn remove(&mut self, name: &str) -> Option<MemberInfo> {
        self.by_name.remove(name)
    }

    /// Every member, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &MemberInfo)> {
        self.by_name.iter()
    }

    /// Remembers that the tracker evicted `name`, at `addr`, when the first counter of its
    /// stream not delivered was `next` (bounded; the oldest memories are not displaced).
    pub fn remember_eviction(&mut self, name: &str, addr: SocketAddr, next: u64) {
        if self.evicted.len() < EVICTIONS_REMEMBERED {
            self.evicted.insert(name.to_owned(), (addr, next));
        }
    }

    /// Where the stream of `name`, greeting us from `from` with start `start`, resumes. A
    /// member we evicted that greets again from the same address with a later start is the
    /// same stream going on (it was alive after all): it resumes where we stopped, and what
    /// it sent meanwhile is asked for again. A restarted or rejoined member starts lower
    /// (from 1) and keeps its start. Forgets the eviction either way.
    pub fn resume_point(&mut self, name: &str, from: SocketAddr, start: u64) -> u64 {
        match self.evicted.remove(name) {
            Some((addr, next)) if addr == from => start.min(next),
            _ => start,
        }
    }

    /// Every member, by name, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&String, &mut MemberInfo)> {
        self.by_name.iter_mut()
    }

    /// How many members are known.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether no member is known.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Whether `name` is known at exactly `addr`: the check every datagram passes before it
    /// is believed.
    pub fn is_at(&self, name: &str, addr: SocketAddr) -> bool {
        self.by_name.get(name).is_some_and(|m| m.addr == addr)
    }
}
