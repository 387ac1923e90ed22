//! Who is in each group this process takes part in, where they are, and what they speak,
//! and which datagrams may be believed to come from them.
//!
//! **The source rule.** Newer peers send every datagram from the socket bound to the
//! address they registered, so a datagram naming one of them is believed only when it
//! arrives from exactly that address. The report's peers (and the report's sequencer) send
//! each datagram from a fresh, unbound socket: its source port is an ephemeral one, never the
//! registered port, and only the `SrcIp`/`SrcPort` keys name their address. A datagram naming
//! a member that never announced the newer protocol is therefore believed when it comes from
//! that member's IP address and its `SrcIp`/`SrcPort` are the member's registered address.
//! The trade-off: any process on the same host as a report peer can speak in its name (from
//! other hosts, a spoofer needs to forge the IP source address itself). Newer peers keep the
//! exact check: once a member announced the newer protocol, only its bound socket speaks
//! for it.

use crate::FastMap as HashMap;
use std::net::{IpAddr, SocketAddr};

use proto::Datagram;

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
    /// The IP multicast group it also listens on, as its Hello or HelloAck said (see
    /// [`proto::Datagram::multicast_group`]).
    pub multicast: Option<SocketAddr>,
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
            multicast: None,
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
    /// Members that said Bye: no longer members, but the tail of their stream (up to the
    /// final counter of their Bye) may still be on its way or need asking for, so their
    /// datagrams are still believed and they can still be asked (bounded).
    left: HashMap<String, MemberInfo>,
    /// Changes with every change to the members (or a chance of one: a mutable borrow), so
    /// what is worked out from them can be kept until then.
    version: u64,
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
        self.version += 1;
        self.by_name.get_mut(name)
    }

    /// Adds or replaces a member.
    pub fn insert(&mut self, name: &str, info: MemberInfo) {
        self.version += 1;
        self.left.remove(name);
        self.by_name.insert(name.to_owned(), info);
    }

    /// Forgets a member; returns what was known.
    pub fn remove(&mut self, name: &str) -> Option<MemberInfo> {
        self.version += 1;
        self.by_name.remove(name)
    }

    /// A member said Bye: it is no longer a member, but its last messages are still
    /// believed from it and it can still be asked for them ([`reachable`](Self::reachable)),
    /// until it joins again or is displaced from this bounded memory. Returns what was
    /// known, `None` if it was not a member.
    pub fn depart(&mut self, name: &str) -> Option<MemberInfo> {
        self.version += 1;
        let info = self.by_name.remove(name)?;
        if self.left.len() >= EVICTIONS_REMEMBERED {
            self.left.clear();
        }
        self.left.insert(name.to_owned(), info.clone());
        Some(info)
    }

    /// The member called `name`, or one that said Bye (to ask it for the tail of its
    /// stream, or to answer it).
    pub fn reachable(&self, name: &str) -> Option<&MemberInfo> {
        self.by_name.get(name).or_else(|| self.left.get(name))
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
        self.version += 1;
        self.by_name.iter_mut()
    }

    /// Changes whenever the members may have changed (see [`iter`](Self::iter)).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// How many members are known.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether no member is known.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The IP multicast group that every member `included` (by name) announced, if there
    /// are two or more of them, they all announced the same one, and each `reads_compact`
    /// (by address): then one datagram to the group reaches them all, in the encoding they
    /// read. A group is what a sender may send to instead of to each member.
    pub fn shared_multicast(
        &self,
        included: impl Fn(&str) -> bool,
        reads_compact: impl Fn(&SocketAddr) -> bool,
    ) -> Option<SocketAddr> {
        let mut shared = None;
        let mut count = 0;
        for (_, m) in self.by_name.iter().filter(|(name, _)| included(name)) {
            let group = m
                .multicast
                .filter(|_| m.proto.is_some() && reads_compact(&m.addr))?;
            if *shared.get_or_insert(group) != group {
                return None;
            }
            count += 1;
        }
        shared.filter(|_| count >= 2)
    }

    /// Whether `name` is known at exactly `addr`.
    pub fn is_at(&self, name: &str, addr: SocketAddr) -> bool {
        self.by_name.get(name).is_some_and(|m| m.addr == addr)
    }

    /// The registered address of the member `d` names, if `d`, which arrived from `from`,
    /// may be believed to come from it (the source rule of this module): from exactly that
    /// address, or, for a member that never announced the newer protocol, from its IP with
    /// its address in `SrcIp`/`SrcPort`. The check every datagram but a Hello passes; a
    /// member that said Bye still passes it, for the tail of its stream.
    pub fn admits(&self, d: &Datagram, from: SocketAddr) -> Option<SocketAddr> {
        self.admits_sender(&d.username, claimed_addr(d), from)
    }

    /// [`admits`](Self::admits) for a datagram of `sender` that says it listens at
    /// `claimed`.
    pub fn admits_sender(
        &self,
        sender: &str,
        claimed: Option<SocketAddr>,
        from: SocketAddr,
    ) -> Option<SocketAddr> {
        let m = self.reachable(sender)?;
        let fresh_socket = m.proto.is_none() && from.ip() == m.addr.ip() && claimed == Some(m.addr);
        (m.addr == from || fresh_socket).then_some(m.addr)
    }

    /// The address a Hello that arrived from `from` introduces its sender at, if it may be
    /// believed: [`hello_source`], except that a member known to speak the newer protocol
    /// is believed only from its bound socket.
    pub fn admits_hello(&self, d: &Datagram, from: SocketAddr) -> Option<SocketAddr> {
        let addr = hello_source(d, from)?;
        let newer = self
            .by_name
            .get(&d.username)
            .is_some_and(|m| m.proto.is_some());
        (addr == from || !newer).then_some(addr)
    }
}

/// The address `d` says its sender listens at (`SrcIp`/`SrcPort`).
pub fn claimed_addr(d: &Datagram) -> Option<SocketAddr> {
    Some(SocketAddr::new(
        d.src_ip.parse::<IpAddr>().ok()?,
        d.src_port,
    ))
}

/// The address a Hello that arrived from `from` introduces its sender at, if it may be
/// believed: its `SrcIp`/`SrcPort` when the datagram came from there, or, for a Hello
/// without the newer protocol's `Proto` (the report's peers send from a fresh socket), when
/// it came from that IP address.
pub fn hello_source(d: &Datagram, from: SocketAddr) -> Option<SocketAddr> {
    let claimed = claimed_addr(d)?;
    (claimed == from || (d.proto.is_none() && claimed.ip() == from.ip())).then_some(claimed)
}
