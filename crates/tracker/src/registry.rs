//! The membership state machine: members, groups and liveness. No sockets, no clock reads:
//! requests and time come in as arguments, replies and evictions come out as values.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::shared::{Change, SharedGroup, SharedMember};
use proto::{
    Datagram, DatagramType, Envelope, GroupOrder, LEGACY_DATAGRAM_LEN, Member, Reply, Request,
    SEQUENCER, Secret,
};

/// Longest username or group name accepted, in characters.
pub use proto::MAX_NAME_LEN;

/// Heartbeat interval of members that never announced the newer protocol: the report's
/// client sends a TCP heartbeat every 60 s.
pub const LEGACY_HEARTBEAT: Duration = Duration::from_secs(60);

/// How many probes a suspect gets over the probe time, evenly spaced from the moment it
/// turns suspect: with 10 % of datagrams lost each way, all four round trips fail about
/// once in 800 suspicions (two, as before, once in 28).
const PROBES: u32 = 4;

/// Liveness rules of the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Liveness {
    /// The interval at which newer members heartbeat (they learn it on Register).
    pub heartbeat: Duration,
    /// Silence of more than `multiplier` intervals makes a member suspect (2 in the
    /// report, which evicted it then).
    pub multiplier: u32,
    /// A suspect newer member is probed this long (four times, a quarter of it apart, from the start: a probe or its answer can be lost too) before it
    /// is evicted; any sign of life in between clears it. Zero evicts at once, as the
    /// report did. The report's members cannot answer probes and are evicted at once.
    pub probe: Duration,
}

impl Default for Liveness {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(1),
            multiplier: 2,
            probe: Duration::from_millis(500),
        }
    }
}

/// A suspect member to ask whether it is alive: a datagram to its address, which a newer
/// member answers with a heartbeat at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The member.
    pub username: String,
    /// Where it receives.
    pub addr: SocketAddr,
}

/// A member removed because it fell silent: what the tracker logs, and the groups whose
/// remaining members must be told (a Bye on its behalf).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eviction {
    /// The evicted member.
    pub member: Member,
    /// How long it had been silent.
    pub silent_for: Duration,
    /// The heartbeat interval it was held to.
    pub interval: Duration,
    /// Whether it speaks the newer protocol (registered with `Proto`): only such a member is
    /// told of its own eviction, which the report's peers would not understand.
    pub newer: bool,
    /// Each group it was in, with the members that remain there (the sequencer included).
    pub groups: Vec<(String, Vec<Member>)>,
}

impl Eviction {
    /// What the tracker sends about this eviction: to each remaining member of each group,
    /// a Bye on the evicted member's behalf (the report's peers understand it too); to the
    /// evicted member itself too when it speaks the newer protocol, so that, alive after
    /// all (its heartbeats were lost or late), it learns it must register and greet its
    /// groups again. One encoded datagram per group, shared by its destinations.
    pub fn notices(&self) -> Vec<(SocketAddr, Arc<[u8]>)> {
        let addr = |m: &Member| format!("{}:{}", m.ip, m.port).parse::<SocketAddr>().ok();
        let m = &self.member;
        let Some(src) = addr(m) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (group, remaining) in &self.groups {
            let bye = Datagram::new(
                DatagramType::Bye,
                group.as_str(),
                m.username.as_str(),
                "",
                src,
                0,
                m.username.as_str(),
            );
            let Ok(bytes) = bye.encode(LEGACY_DATAGRAM_LEN) else {
                continue;
            };
            let bytes: Arc<[u8]> = bytes.into();
            let evicted = self.newer.then_some(src);
            for to in evicted.into_iter().chain(remaining.iter().filter_map(addr)) {
                out.push((to, bytes.clone()));
            }
        }
        out
    }
}

/// How a request reached the tracker; decides what a request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A TCP connection from this IP address (the client's port is ephemeral).
    Tcp(IpAddr),
    /// A UDP datagram from this address: only heartbeats, and only from the member's own
    /// registered address.
    Udp(SocketAddr),
}

#[derive(Debug, Clone)]
struct Record {
    member: Member,
    addr: SocketAddr,
    interval: Duration,
    newer: bool,
    last_heard: Instant,
    /// Its groups, each with the stamp of its joining (orders a group's members alike at
    /// every tracker sharing a registry).
    groups: BTreeMap<String, u64>,
    /// Whether this tracker watches its liveness: always, unless the registry is shared
    /// and the member talks to another tracker (see [`Registry::share`]).
    held: bool,
    /// A newer member's secret: requests about it must show it. `None` for the report's
    /// clients, which are believed only from the IP address they registered from.
    secret: Option<Secret>,
    /// Since when it is suspect (silent too long) and being probed, and probes sent.
    suspected: Option<(Instant, u32)>,
}

/// A member turns suspect once silent for *more* than its limit: the first timeout after
/// it is this much later.
const TICK: Duration = Duration::from_millis(1);

/// What the registry asks its driver to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryOutput {
    /// Ask a suspect member whether it is alive.
    Probe(Probe),
    /// Announce an eviction (see [`Eviction::notices`]).
    Eviction(Eviction),
}

/// The registry of members and groups, with the liveness of each member.
///
/// Sans-IO, in the shape of the member cores: feed it requests with
/// [`handle`](Self::handle) (or [`handle_envelope`](Self::handle_envelope)) and time with
/// [`handle_timeout`](Self::handle_timeout) when [`poll_timeout`](Self::poll_timeout) has
/// passed; drain [`poll_output`](Self::poll_output) after either. A rejected request
/// changes nothing.
#[derive(Debug)]
pub struct Registry {
    liveness: Liveness,
    members: HashMap<String, Record>,
    /// uid → username, so that Quit accepts either.
    uids: HashMap<String, String>,
    /// group → its members' usernames in join order (the sequencer is implicit).
    groups: BTreeMap<String, Vec<String>>,
    /// group → the delivery order its first newer member declared (the report's clients
    /// declare none); forgotten with the group.
    orders: HashMap<String, GroupOrder>,
    /// group → the token of its key, for sealed groups: the first member to join showed it
    /// (see [`Envelope::seal`]); forgotten with the group.
    seals: HashMap<String, Secret>,
    sequencer: Option<Member>,
    outputs: VecDeque<RegistryOutput>,
    /// The logical clock that stamps joins (see [`SharedGroup::joined`]).
    stamp: u64,
    /// Shared with other trackers (see [`Registry::share`]): what changed, to be written.
    shared: Option<SharedState>,
}

/// What a shared registry keeps besides the records.
#[derive(Debug, Default)]
struct SharedState {
    /// Members whose record changed here since [`Registry::take_changes`].
    changed: BTreeSet<String>,
    /// Members evicted here since then, as they were.
    evicted: HashMap<String, SharedMember>,
}

impl Registry {
    /// An empty registry; `sequencer` is the sequencer's address, if total order is
    /// offered. Ids and secrets are random (128 bits), so they can be neither guessed nor
    /// repeated by a restarted tracker.
    pub fn new(liveness: Liveness, sequencer: Option<SocketAddr>) -> Self {
        Self {
            liveness,
            members: HashMap::new(),
            uids: HashMap::new(),
            groups: BTreeMap::new(),
            orders: HashMap::new(),
            seals: HashMap::new(),
            shared: None,
            stamp: 0,
            sequencer: sequencer.map(|addr| Member {
                ip: addr.ip().to_string(),
                port: addr.port(),
                username: SEQUENCER.into(),
                uid: SEQUENCER.into(),
            }),
            outputs: VecDeque::new(),
        }
    }

    /// The liveness rules in force.
    pub fn liveness(&self) -> &Liveness {
        &self.liveness
    }

    /// Registered members (the sequencer not counted unless it registered).
    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// Whether `username` is registered.
    pub fn is_member(&self, username: &str) -> bool {
        self.members.contains_key(username)
    }

    /// The group names, sorted.
    pub fn group_names(&self) -> Vec<String> {
        self.groups.keys().cloned().collect()
    }

    /// The members of `group` in join order, the sequencer last; `None` if no such group.
    pub fn members_of(&self, group: &str) -> Option<Vec<Member>> {
        let names = self.groups.get(group)?;
        let mut list: Vec<Member> = names
            .iter()
            .filter_map(|n| self.members.get(n))
            .map(|r| r.member.clone())
            .filter(|m| m.username != SEQUENCER)
            .collect();
        list.extend(self.sequencer.clone());
        Some(list)
    }

    /// Answers one request at `now`. `proto` is the protocol version the client announced
    /// (decides the heartbeat interval on Register). Any request naming a registered member
    /// counts as a sign of its life.
    pub fn handle(
        &mut self,
        now: Instant,
        request: Request,
        proto: Option<u32>,
        via: Via,
    ) -> Reply {
        self.handle_envelope(
            now,
            Envelope {
                request,
                proto,
                secret: None,
                seal: None,
            },
            via,
        )
    }

    /// Answers one request as it travelled, with the secret it showed. A request that
    /// changes a member's state (join, exit, quit, heartbeat, registering its name again)
    /// is carried out only for that member: it must show the member's secret, or, for the
    /// report's clients (which have none), come from the IP address the member registered
    /// from. A refused request changes nothing and says why; secrets are never logged.
    pub fn handle_envelope(&mut self, now: Instant, envelope: Envelope, via: Via) -> Reply {
        let Envelope {
            request,
            proto,
            secret,
            seal,
        } = envelope;
        if let Err(refusal) = self.authorize(now, &request, secret.as_ref(), via) {
            return refusal;
        }
        let subject = self.subject(&request);
        let reply = self.answer(now, request, proto, secret, seal, via);
        if self.shared.is_some()
            && reply.success
            && let Some((name, changes)) = subject
        {
            self.note_change(now, &name, changes);
        }
        reply
    }

    /// The member a request is about, and whether a successful one changes its record (or
    /// only proves it alive).
    fn subject(&self, request: &Request) -> Option<(String, bool)> {
        match request {
            Request::Register { username, .. }
            | Request::JoinGroup { username, .. }
            | Request::ExitGroup { username, .. } => Some((username.clone(), true)),
            Request::Heartbeat { username } => Some((username.clone(), false)),
            Request::Quit { username } => {
                Some((self.uids.get(username).unwrap_or(username).clone(), true))
            }
            Request::ListGroups | Request::ListMembers { .. } => None,
        }
    }

    /// After a successful request about `name` in a shared registry: its record is to be
    /// written if the request changed it, or if another tracker held it (it talks to us
    /// now: we hold it, and watch its heartbeats).
    fn note_change(&mut self, now: Instant, name: &str, changes: bool) {
        let taken_over = match self.members.get_mut(name) {
            Some(record) if !record.held => {
                record.held = true;
                record.last_heard = now;
                log::info!("{name} now talks to this tracker: holding it");
                true
            }
            _ => false,
        };
        if (changes || taken_over)
            && let Some(shared) = self.shared.as_mut()
        {
            shared.changed.insert(name.to_owned());
        }
    }

    fn answer(
        &mut self,
        now: Instant,
        request: Request,
        proto: Option<u32>,
        secret: Option<Secret>,
        seal: Option<Secret>,
        via: Via,
    ) -> Reply {
        if let Via::Udp(from) = via {
            return match request {
                Request::Heartbeat { username } => self.udp_heartbeat(now, &username, from),
                other => Reply::failure(format!(
                    "only heartbeats are accepted over UDP, not Type {}",
                    other.code()
                )),
            };
        }
        match request {
            Request::ListGroups => Reply::ok(self.group_names()),
            Request::JoinGroup {
                username,
                group,
                order,
            } => self.join(now, &username, &group, order, seal.as_ref()),
            Request::Register { ip, port, username } => {
                self.register(now, &ip, port, &username, proto, secret)
            }
            Request::ListMembers { group } => match self.members_of(&group) {
                Some(_) if !self.may_see(&group, seal.as_ref()) => Reply::failure(format!(
                    "group {group:?} is sealed: only a client showing its key sees its members"
                )),
                Some(list) => Reply::ok(members_value(list)),
                // The report answers an unknown group with an empty list.
                None => Reply {
                    success: false,
                    content: serde_json::Value::Array(Vec::new()),
                    heartbeat_ms: None,
                    secret: None,
                },
            },
            Request::ExitGroup { username, group } => self.exit(now, &username, &group),
            Request::Quit { username } => self.quit(&username),
            Request::Heartbeat { username } => match self.touch(now, &username) {
                true => Reply::ok(""),
                false => unknown_member(&username),
            },
        }
    }

    /// Whether `request` may act on the member it names (see
    /// [`handle_envelope`](Self::handle_envelope)); requests about nobody registered, and
    /// those that change no member, pass.
    fn authorize(
        &self,
        now: Instant,
        request: &Request,
        shown: Option<&Secret>,
        via: Via,
    ) -> Result<(), Reply> {
        let (name, registering) = match request {
            Request::JoinGroup { username, .. }
            | Request::ExitGroup { username, .. }
            | Request::Heartbeat { username } => (username.as_str(), None),
            Request::Quit { username } => (
                self.uids
                    .get(username)
                    .map_or(username.as_str(), String::as_str),
                None,
            ),
            Request::Register {
                username, ip, port, ..
            } => (username.as_str(), Some((ip.as_str(), *port))),
            Request::ListGroups | Request::ListMembers { .. } => return Ok(()),
        };
        let Some(record) = self.members.get(name) else {
            return Ok(());
        };
        let from = match via {
            Via::Tcp(ip) => ip,
            Via::Udp(addr) => addr.ip(),
        };
        if let Some((ip, port)) = registering {
            // Registering again: a live member at the same address (a lost reply, a
            // reconnection, a restarted process on its host); anything else is decided by
            // `register`.
            let same_addr =
                ip.parse::<IpAddr>().ok() == Some(record.addr.ip()) && port == record.addr.port();
            if !same_addr || !self.is_live(record, now) {
                return Ok(());
            }
            let proven = matches!((&record.secret, shown), (Some(s), Some(x)) if s.matches(x));
            return if proven || from == record.addr.ip() {
                Ok(())
            } else {
                Err(Reply::failure(format!(
                    "{name:?} is registered and alive at {}; only it may register again",
                    record.addr
                )))
            };
        }
        match &record.secret {
            Some(secret) if shown.is_some_and(|s| secret.matches(s)) => Ok(()),
            Some(_) => Err(Reply::failure(format!(
                "a request about {name:?} must come from {name:?} itself (it did not show {name:?}'s secret)"
            ))),
            None if from == record.addr.ip() => Ok(()),
            None => Err(Reply::failure(format!(
                "{name:?} registered from {}; a request about it from {from} is refused",
                record.addr.ip()
            ))),
        }
    }

    fn touch(&mut self, now: Instant, username: &str) -> bool {
        match self.members.get_mut(username) {
            Some(record) => {
                record.last_heard = now;
                true
            }
            None => false,
        }
    }

    fn udp_heartbeat(&mut self, now: Instant, username: &str, from: SocketAddr) -> Reply {
        match self.members.get_mut(username) {
            Some(record) if record.addr == from => {
                record.last_heard = now;
                Reply::ok("")
            }
            Some(record) => Reply::failure(format!(
                "heartbeat for {username:?} came from {from}, but it is registered at {}",
                record.addr
            )),
            None => unknown_member(username),
        }
    }

    /// Whether a member counts as alive: by its heartbeats if this tracker holds it, else
    /// as long as the tracker holding it keeps its record.
    fn is_live(&self, record: &Record, now: Instant) -> bool {
        !record.held
            || now.saturating_duration_since(record.last_heard)
                <= record.interval * self.liveness.multiplier
    }

    fn register(
        &mut self,
        now: Instant,
        ip: &str,
        port: u16,
        username: &str,
        proto: Option<u32>,
        shown: Option<Secret>,
    ) -> Reply {
        if let Err(reason) = proto::check_name("username", username) {
            return Reply::failure(reason);
        }
        let Ok(ip_addr) = ip.parse::<IpAddr>() else {
            return Reply::failure(format!("{ip:?} is not an IP address"));
        };
        if ip_addr.is_unspecified() {
            return Reply::failure(format!(
                "{ip} is not an address others can send to: register the address of an interface"
            ));
        }
        if port == 0 {
            return Reply::failure("port 0 cannot receive datagrams");
        }
        let addr = SocketAddr::new(ip_addr, port);
        if username == SEQUENCER {
            match &self.sequencer {
                Some(seq) if (seq.ip.parse::<IpAddr>().ok(), seq.port) == (Some(ip_addr), port) => {
                }
                Some(seq) => {
                    return Reply::failure(format!(
                        "username {SEQUENCER:?} is reserved for the sequencer at {}:{}",
                        seq.ip, seq.port
                    ));
                }
                None => {
                    return Reply::failure(format!(
                        "username {SEQUENCER:?} is reserved for the sequencer, and this tracker has none (its --seq-addr)"
                    ));
                }
            }
        }
        let interval = match proto {
            Some(_) => self.liveness.heartbeat,
            None => LEGACY_HEARTBEAT,
        };
        if let Some(record) = self.members.get(username) {
            if record.addr != addr && self.is_live(record, now) {
                return Reply::failure(format!(
                    "username {username:?} is taken by a live member at {}",
                    record.addr
                ));
            }
            if record.addr == addr {
                // The same member again (its reply was lost, it reconnected, or it restarted
                // on its host; `authorize` checked which): same id. It keeps its secret if
                // it showed it, else (a restart) gets a new one.
                let record = self.members.get_mut(username).expect("just found");
                record.last_heard = now;
                record.interval = interval;
                record.newer = proto.is_some();
                let kept = match (&record.secret, &shown) {
                    (Some(s), Some(x)) if s.matches(x) => Some(s.clone()),
                    _ => None,
                };
                record.secret = proto.map(|_| kept.unwrap_or_else(random_secret));
                let (uid, secret) = (record.member.uid.clone(), record.secret.clone());
                return self.registered(uid, proto, secret);
            }
            // Held by a member that fell silent and was not swept yet: evict it now.
            self.evict(username, now, true);
        }
        let uid = random_hex();
        let secret = proto.map(|_| random_secret());
        let member = Member {
            ip: ip_addr.to_string(),
            port,
            username: username.to_owned(),
            uid: uid.clone(),
        };
        log::info!("{username} registered at {addr}");
        self.uids.insert(uid.clone(), username.to_owned());
        self.members.insert(
            username.to_owned(),
            Record {
                member,
                addr,
                interval,
                newer: proto.is_some(),
                last_heard: now,
                groups: BTreeMap::new(),
                held: true,
                secret: secret.clone(),
                suspected: None,
            },
        );
        self.registered(uid, proto, secret)
    }

    fn registered(&self, uid: String, proto: Option<u32>, secret: Option<Secret>) -> Reply {
        let mut reply = Reply::ok(uid);
        if proto.is_some() {
            reply.heartbeat_ms = Some(self.liveness.heartbeat.as_millis() as u64);
            reply.secret = secret;
        }
        reply
    }

    fn join(
        &mut self,
        now: Instant,
        username: &str,
        group: &str,
        order: Option<GroupOrder>,
        seal: Option<&Secret>,
    ) -> Reply {
        if let Err(reason) = proto::check_name("group name", group) {
            return Reply::failure(reason);
        }
        if !self.members.contains_key(username) {
            return unknown_member(username);
        }
        if let Err(reason) = self.check_seal(group, seal) {
            log::info!("refused {username} in {group}: {reason}");
            return Reply::failure(reason);
        }
        let Some(record) = self.members.get_mut(username) else {
            return unknown_member(username);
        };
        record.last_heard = now;
        if order == Some(GroupOrder::Total) && self.sequencer.is_none() {
            return Reply::failure(
                "total order needs a sequencer, and this tracker has none (start it with --seq-addr, or the peer without -s)",
            );
        }
        match (order, self.orders.get(group)) {
            (Some(ours), Some(&theirs)) if ours != theirs => {
                let hint = match theirs {
                    GroupOrder::Total => "start the peer with -s to join it",
                    GroupOrder::Fifo => "start the peer without -s to join it",
                };
                return Reply::failure(format!(
                    "group {group:?} uses {theirs}, not {ours}: {hint}"
                ));
            }
            (Some(ours), None) => {
                self.orders.insert(group.to_owned(), ours);
            }
            _ => {}
        }
        if let Some(token) = seal
            && !self.groups.contains_key(group)
        {
            log::info!("{group} is sealed: only members showing its key join it");
            self.seals.insert(group.to_owned(), token.clone());
        }
        if !record.groups.contains_key(group) {
            let stamp = self.next_stamp();
            let record = self.members.get_mut(username).expect("checked above");
            record.groups.insert(group.to_owned(), stamp);
            self.groups
                .entry(group.to_owned())
                .or_default()
                .push(username.to_owned());
            log::info!("{username} joined {group}");
        }
        Reply::ok(members_value(self.members_of(group).unwrap_or_default()))
    }

    /// Whether a join of `group` showing `shown` may go on: an open group takes members
    /// that show no key, a sealed one only those that show its key's token, and a new group
    /// takes either (and is sealed if a token was shown).
    fn check_seal(&self, group: &str, shown: Option<&Secret>) -> Result<(), String> {
        let exists = self.groups.contains_key(group);
        match (self.seals.get(group), shown) {
            (Some(token), Some(shown)) if token.matches(shown) => Ok(()),
            (Some(_), Some(_)) => Err(format!(
                "group {group:?} is sealed with another key: check the group's key file or passphrase"
            )),
            (Some(_), None) => Err(format!(
                "group {group:?} is sealed: only members holding its key can join (the report's peers cannot)"
            )),
            (None, Some(_)) if exists => Err(format!(
                "group {group:?} is open (its members hold no key), so it cannot be joined as a sealed group: choose another name"
            )),
            (None, _) => Ok(()),
        }
    }

    /// Whether a client showing `shown` may see `group`'s members.
    fn may_see(&self, group: &str, shown: Option<&Secret>) -> bool {
        match self.seals.get(group) {
            Some(token) => shown.is_some_and(|s| token.matches(s)),
            None => true,
        }
    }

    /// Whether `group` is sealed.
    pub fn is_sealed(&self, group: &str) -> bool {
        self.seals.contains_key(group)
    }

    fn exit(&mut self, now: Instant, username: &str, group: &str) -> Reply {
        let Some(record) = self.members.get_mut(username) else {
            return unknown_member(username);
        };
        record.last_heard = now;
        if !self.groups.contains_key(group) {
            return Reply::failure(format!("no such group {group:?}"));
        }
        if record.groups.remove(group).is_none() {
            return Reply::failure(format!("{username:?} is not a member of {group:?}"));
        }
        self.leave_group(username, group);
        log::info!("{username} left {group}");
        Reply::ok("")
    }

    fn quit(&mut self, who: &str) -> Reply {
        let username = match (self.members.contains_key(who), self.uids.get(who)) {
            (true, _) => who.to_owned(),
            (false, Some(name)) => name.clone(),
            (false, None) => return unknown_member(who),
        };
        self.remove(&username);
        Reply::ok("")
    }

    /// Removes `username` from `group`'s list; a group left with no member disappears.
    fn leave_group(&mut self, username: &str, group: &str) {
        if let Some(names) = self.groups.get_mut(group) {
            names.retain(|n| n != username);
            if names.is_empty() {
                self.groups.remove(group);
                self.orders.remove(group);
                self.seals.remove(group);
            }
        }
    }

    fn remove(&mut self, username: &str) -> Option<Record> {
        let record = self.members.remove(username)?;
        self.uids.remove(&record.member.uid);
        for group in record.groups.keys() {
            self.leave_group(username, group);
        }
        Some(record)
    }

    /// Removes `username` and announces it. `here`: this tracker found it silent (in a
    /// shared registry the eviction is then written for the other trackers); otherwise
    /// another tracker did, or the member's tracker died without it.
    fn evict(&mut self, username: &str, now: Instant, here: bool) {
        let exported = self.members.get(username).map(|r| self.export_record(r));
        let Some(record) = self.remove(username) else {
            return;
        };
        if here && let (Some(shared), Some(mut tombstone)) = (self.shared.as_mut(), exported) {
            tombstone.evicted = true;
            shared.changed.insert(username.to_owned());
            shared.evicted.insert(username.to_owned(), tombstone);
        }
        // The sequencer is in every group without joining any: all of them are told.
        let groups_of_record: Vec<String> = if username == SEQUENCER && self.sequencer.is_some() {
            self.groups.keys().cloned().collect()
        } else {
            record.groups.keys().cloned().collect()
        };
        // A group the eviction emptied is gone, but the sequencer still holds its state.
        let groups = groups_of_record
            .iter()
            .map(|g| {
                let mut remaining = self
                    .members_of(g)
                    .unwrap_or_else(|| self.sequencer.iter().cloned().collect());
                remaining.retain(|m| m.username != username && self.tells(m));
                (g.clone(), remaining)
            })
            .collect();
        self.outputs.push_back(RegistryOutput::Eviction(Eviction {
            silent_for: now.saturating_duration_since(record.last_heard),
            interval: record.interval,
            newer: record.newer,
            member: record.member,
            groups,
        }));
    }

    /// Checks every member's liveness. One silent for more than `multiplier` times its
    /// interval becomes suspect: a newer member is probed (see [`RegistryOutput::Probe`])
    /// and evicted only if it stays silent for the probe time too; the report's members are
    /// evicted at once. A lost heartbeat or two, or a member descheduled for a moment, is
    /// not a crash: the suspicion and its outcome are logged.
    pub fn handle_timeout(&mut self, now: Instant) {
        let probe = self.liveness.probe;
        let mut evict = Vec::new();
        for (name, r) in self.members.iter_mut().filter(|(_, r)| r.held) {
            let silent = now.saturating_duration_since(r.last_heard);
            let live = silent <= r.interval * self.liveness.multiplier;
            match (&mut r.suspected, live) {
                (Some((since, _)), true) => {
                    log::info!(
                        "{name:?} was suspected {:.2?} ago and answered: not evicted",
                        now.saturating_duration_since(*since)
                    );
                    r.suspected = None;
                }
                (None, true) => {}
                (None, false) if r.newer && !probe.is_zero() => {
                    log::info!(
                        "{name:?} is suspect: silent for {silent:.2?} (more than {} x {:?}); probing it for {probe:?}",
                        self.liveness.multiplier,
                        r.interval
                    );
                    r.suspected = Some((now, 1));
                    self.outputs.push_back(RegistryOutput::Probe(Probe {
                        username: name.clone(),
                        addr: r.addr,
                    }));
                }
                (Some((since, sent)), false) => {
                    let waited = now.saturating_duration_since(*since);
                    if waited >= probe {
                        evict.push(name.clone());
                    } else if *sent < PROBES && waited >= probe * *sent / PROBES {
                        *sent += 1;
                        self.outputs.push_back(RegistryOutput::Probe(Probe {
                            username: name.clone(),
                            addr: r.addr,
                        }));
                    }
                }
                (None, false) => evict.push(name.clone()),
            }
        }
        for username in evict {
            self.evict(&username, now, true);
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) has something to do next: the first
    /// moment a member may turn suspect, or a suspect be probed again or evicted.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let probe = self.liveness.probe;
        self.members
            .values()
            .filter(|r| r.held)
            .map(|r| match r.suspected {
                None => r.last_heard + r.interval * self.liveness.multiplier + TICK,
                // Heard from since it was suspected: clear the suspicion now.
                Some((since, _)) if r.last_heard > since => r.last_heard,
                Some((since, sent)) if sent < PROBES => since + probe * sent / PROBES,
                Some((since, _)) => since + probe,
            })
            .min()
    }

    /// The next probe or eviction to send, if any.
    pub fn poll_output(&mut self) -> Option<RegistryOutput> {
        self.outputs.pop_front()
    }
}

/// Sharing the registry with other trackers (see [`SharedMember`] and [`crate::SharedRegistry`]).
impl Registry {
    /// From now on this registry is one copy of a registry shared by several trackers:
    /// every change this tracker makes to a member's record is kept for
    /// [`take_changes`](Self::take_changes); liveness is watched only for the members this
    /// tracker holds; and an eviction is announced only to the members it holds (each
    /// tracker tells its own: a member believes a Bye on another's behalf only from its
    /// tracker).
    pub fn share(&mut self) {
        self.shared.get_or_insert_with(SharedState::default);
    }

    /// Whether an eviction notice goes to `member` from this tracker: to every member
    /// unless the registry is shared, then to those it holds (and to the sequencer unless
    /// another tracker holds it).
    fn tells(&self, member: &Member) -> bool {
        self.shared.is_none()
            || self
                .members
                .get(&member.username)
                .map_or(member.username == SEQUENCER, |r| r.held)
    }

    /// Whether this tracker holds `username` (watches its heartbeats).
    pub fn holds(&self, username: &str) -> bool {
        self.members.get(username).is_some_and(|r| r.held)
    }

    /// The members this tracker holds, as records to write (after the shared store lost
    /// them with this tracker's lease, say).
    pub fn held_records(&self) -> Vec<(String, SharedMember)> {
        self.members
            .iter()
            .filter(|(_, r)| r.held)
            .map(|(name, r)| (name.clone(), self.export_record(r)))
            .collect()
    }

    /// The changes made here since the last call, one or two per member changed (an
    /// eviction, then the record of a member that took the name).
    pub fn take_changes(&mut self) -> Vec<Change> {
        let Some(shared) = self.shared.as_mut() else {
            return Vec::new();
        };
        let changed = std::mem::take(&mut shared.changed);
        let mut evicted = std::mem::take(&mut shared.evicted);
        let mut changes = Vec::new();
        for name in changed {
            if let Some(tombstone) = evicted.remove(&name) {
                changes.push(Change::Evicted(name.clone(), tombstone));
            }
            match self.members.get(&name) {
                Some(record) => changes.push(Change::Put(name, self.export_record(record))),
                None if changes
                    .last()
                    .is_some_and(|c| matches!(c, Change::Evicted(n, _) if *n == name)) => {}
                None => changes.push(Change::Delete(name)),
            }
        }
        changes
    }

    fn export_record(&self, r: &Record) -> SharedMember {
        SharedMember {
            member: r.member.clone(),
            interval_ms: r.interval.as_millis() as u64,
            newer: r.newer,
            secret: r.secret.clone(),
            groups: r
                .groups
                .iter()
                .map(|(name, &joined)| SharedGroup {
                    name: name.clone(),
                    joined,
                    order: self.orders.get(name).copied(),
                    seal: self.seals.get(name).cloned(),
                })
                .collect(),
            tracker: String::new(),
            evicted: false,
        }
    }

    /// Applies what another tracker wrote about `username`: its record (held by this
    /// tracker only if `held`: its own record read back), or `None` when it is gone (it
    /// quit, or was evicted and already announced). A record written for an eviction is
    /// announced to the members this tracker holds, then removed. Changes nothing to write.
    pub fn import(
        &mut self,
        now: Instant,
        username: &str,
        record: Option<SharedMember>,
        held: bool,
    ) {
        let Some(m) = record else {
            self.remove(username);
            return;
        };
        if m.evicted {
            return self.evict(username, now, false);
        }
        let Ok(ip) = m.member.ip.parse::<IpAddr>() else {
            log::warn!(
                "ignored the shared record of {username:?}: bad address {:?}",
                m.member.ip
            );
            return;
        };
        if m.member.username != username {
            log::warn!(
                "ignored the shared record at {username:?}: it names {:?}",
                m.member.username
            );
            return;
        }
        self.remove(username);
        let mut groups = BTreeMap::new();
        for g in &m.groups {
            self.stamp = self.stamp.max(g.joined);
            groups.insert(g.name.clone(), g.joined);
            if let Some(order) = g.order {
                self.orders.entry(g.name.clone()).or_insert(order);
            }
            if let Some(seal) = &g.seal {
                self.seals
                    .entry(g.name.clone())
                    .or_insert_with(|| seal.clone());
            }
            // In join order: by stamp, then name, at every tracker alike.
            let key = (g.joined, username);
            let names = self.groups.entry(g.name.clone()).or_default();
            let at = names
                .iter()
                .position(|n| {
                    let joined = self
                        .members
                        .get(n)
                        .and_then(|r| r.groups.get(&g.name).copied())
                        .unwrap_or(0);
                    (joined, n.as_str()) > key
                })
                .unwrap_or(names.len());
            names.insert(at, username.to_owned());
        }
        self.uids.insert(m.member.uid.clone(), username.to_owned());
        self.members.insert(
            username.to_owned(),
            Record {
                addr: SocketAddr::new(ip, m.member.port),
                member: m.member,
                interval: Duration::from_millis(m.interval_ms),
                newer: m.newer,
                last_heard: now,
                groups,
                held,
                secret: m.secret,
                suspected: None,
            },
        );
    }

    /// Removes `username`, whose tracker died without it (its record went with that
    /// tracker's lease), announcing it as an eviction to the members this tracker holds.
    pub fn expire(&mut self, now: Instant, username: &str) {
        self.evict(username, now, false);
    }

    /// Forgets every member not in `keep` (a full read of the shared store found them
    /// gone), announcing nothing.
    pub fn retain_members(&mut self, keep: &BTreeSet<String>) {
        let gone: Vec<String> = self
            .members
            .keys()
            .filter(|n| !keep.contains(*n))
            .cloned()
            .collect();
        for name in gone {
            self.remove(&name);
        }
    }

    fn next_stamp(&mut self) -> u64 {
        self.stamp += 1;
        self.stamp
    }
}

fn members_value(list: Vec<Member>) -> serde_json::Value {
    serde_json::to_value(list).unwrap_or_default()
}

fn unknown_member(username: &str) -> Reply {
    Reply::failure(format!("unknown member {username:?}: register first"))
}

/// 128 random bits in hex, from the thread's cryptographically secure generator.
fn random_hex() -> String {
    let bits: u128 = rand::random();
    format!("{bits:032x}")
}

/// A new member secret.
fn random_secret() -> Secret {
    Secret::new(random_hex())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The next eviction, skipping probes.
    fn next_eviction(r: &mut Registry) -> Option<Eviction> {
        std::iter::from_fn(|| r.poll_output()).find_map(|o| match o {
            RegistryOutput::Eviction(e) => Some(e),
            RegistryOutput::Probe(_) => None,
        })
    }

    /// Every output: the names evicted and the names probed.
    fn drain(r: &mut Registry) -> (Vec<String>, Vec<String>) {
        let (mut evicted, mut probed) = (Vec::new(), Vec::new());
        while let Some(o) = r.poll_output() {
            match o {
                RegistryOutput::Eviction(e) => evicted.push(e.member.username),
                RegistryOutput::Probe(p) => probed.push(p.username),
            }
        }
        (evicted, probed)
    }

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    thread_local! {
        /// The secrets the registry gave, by member: the tests act as each member itself.
        static SECRETS: std::cell::RefCell<HashMap<String, Secret>> = Default::default();
    }

    /// `Registry::handle`, as the member the request names: its secret shown, if it has one.
    fn ask(
        r: &mut Registry,
        now: Instant,
        request: Request,
        proto: Option<u32>,
        via: Via,
    ) -> Reply {
        let name = match &request {
            Request::Register { username, .. }
            | Request::JoinGroup { username, .. }
            | Request::ExitGroup { username, .. }
            | Request::Quit { username }
            | Request::Heartbeat { username } => Some(username.clone()),
            _ => None,
        };
        // Quit may name the member by its id.
        let name = name.map(|n| r.uids.get(&n).cloned().unwrap_or(n));
        let secret = name
            .as_ref()
            .and_then(|n| SECRETS.with(|s| s.borrow().get(n).cloned()));
        let registers = matches!(request, Request::Register { .. });
        let reply = r.handle_envelope(
            now,
            Envelope {
                request,
                proto,
                secret,
                seal: None,
            },
            via,
        );
        if registers && let (Some(name), Some(secret)) = (name, reply.secret.clone()) {
            SECRETS.with(|s| s.borrow_mut().insert(name, secret));
        }
        reply
    }

    /// The report's rule: evicted at once after two silent intervals (no probing).
    const LIVE: Liveness = Liveness {
        heartbeat: Duration::from_secs(1),
        multiplier: 2,
        probe: Duration::ZERO,
    };

    fn registry() -> (Registry, Instant) {
        (
            Registry::new(LIVE, Some("127.0.0.1:9000".parse().expect("addr"))),
            Instant::now(),
        )
    }

    fn register(
        r: &mut Registry,
        now: Instant,
        name: &str,
        port: u16,
        proto: Option<u32>,
    ) -> Reply {
        ask(
            r,
            now,
            Request::Register {
                ip: "127.0.0.1".into(),
                port,
                username: name.into(),
            },
            proto,
            Via::Tcp(LOCAL),
        )
    }

    fn join(r: &mut Registry, now: Instant, name: &str, group: &str) -> Reply {
        ask(
            r,
            now,
            Request::JoinGroup {
                username: name.into(),
                group: group.into(),
                order: None,
            },
            None,
            Via::Tcp(LOCAL),
        )
    }

    fn names(reply: &Reply) -> Vec<String> {
        reply
            .members()
            .expect("a member list")
            .into_iter()
            .map(|m| m.username)
            .collect()
    }

    #[test]
    fn register_join_list_exit_quit() {
        let (mut r, t) = registry();
        let uid = register(&mut r, t, "ford", 5001, Some(2));
        assert!(uid.success);
        assert_eq!(uid.heartbeat_ms, Some(1000));
        assert!(register(&mut r, t, "katerina", 5002, None).success);
        assert_eq!(
            names(&join(&mut r, t, "ford", "books")),
            ["ford", "sequencer"]
        );
        assert_eq!(
            names(&join(&mut r, t, "katerina", "books")),
            ["ford", "katerina", "sequencer"]
        );
        assert!(join(&mut r, t, "katerina", "distrib").success);
        let groups = ask(&mut r, t, Request::ListGroups, None, Via::Tcp(LOCAL));
        assert_eq!(groups.names(), Ok(vec!["books".into(), "distrib".into()]));

        let exit = ask(
            &mut r,
            t,
            Request::ExitGroup {
                username: "katerina".into(),
                group: "distrib".into(),
            },
            None,
            Via::Tcp(LOCAL),
        );
        assert_eq!(exit, Reply::ok(""));
        assert_eq!(r.group_names(), ["books"], "an empty group disappears");

        let quit = ask(
            &mut r,
            t,
            Request::Quit {
                username: uid.text().expect("uid"),
            },
            None,
            Via::Tcp(LOCAL),
        );
        assert_eq!(quit, Reply::ok(""), "Quit accepts the member's id");
        assert_eq!(
            names(&ask(
                &mut r,
                t,
                Request::ListMembers {
                    group: "books".into()
                },
                None,
                Via::Tcp(LOCAL)
            )),
            ["katerina", "sequencer"]
        );
    }

    fn join_in(
        r: &mut Registry,
        now: Instant,
        name: &str,
        group: &str,
        order: GroupOrder,
    ) -> Reply {
        ask(
            r,
            now,
            Request::JoinGroup {
                username: name.into(),
                group: group.into(),
                order: Some(order),
            },
            Some(3),
            Via::Tcp(LOCAL),
        )
    }

    #[test]
    fn a_group_keeps_the_order_of_its_first_member_and_refuses_the_other() {
        let (mut r, t) = registry();
        for (name, port) in [("ford", 5001), ("kat", 5002), ("old", 5003)] {
            register(&mut r, t, name, port, Some(3));
        }
        assert!(join_in(&mut r, t, "ford", "books", GroupOrder::Total).success);
        let refused = join_in(&mut r, t, "kat", "books", GroupOrder::Fifo);
        assert!(!refused.success);
        let reason = refused.text().expect("a reason");
        assert!(
            reason.contains("uses total order") && reason.contains("-s"),
            "{reason}"
        );
        assert_eq!(
            names(&ask(
                &mut r,
                t,
                Request::ListMembers {
                    group: "books".into()
                },
                None,
                Via::Tcp(LOCAL)
            )),
            ["ford", "sequencer"],
            "nothing changed"
        );
        // The report's clients declare no order and are let in.
        assert!(join(&mut r, t, "old", "books").success);
        // Once the group is gone, its order is forgotten.
        for name in ["ford", "old"] {
            let exit = Request::ExitGroup {
                username: name.into(),
                group: "books".into(),
            };
            assert!(ask(&mut r, t, exit, None, Via::Tcp(LOCAL)).success);
        }
        assert!(join_in(&mut r, t, "kat", "books", GroupOrder::Fifo).success);
    }

    #[test]
    fn total_order_and_the_name_sequencer_need_a_sequencer() {
        let t = Instant::now();
        let mut r = Registry::new(LIVE, None);
        register(&mut r, t, "ford", 5001, Some(3));
        let refused = join_in(&mut r, t, "ford", "books", GroupOrder::Total);
        assert!(!refused.success);
        assert!(refused.text().expect("a reason").contains("--seq-addr"));
        assert!(r.group_names().is_empty(), "nothing changed");
        let anywhere = ask(
            &mut r,
            t,
            Request::Register {
                ip: "0.0.0.0".into(),
                port: 5010,
                username: "ann".into(),
            },
            None,
            Via::Tcp(LOCAL),
        );
        assert!(!anywhere.success);
        assert!(anywhere.text().expect("a reason").contains("interface"));
        let reserved = register(&mut r, t, "sequencer", 5009, None);
        assert!(!reserved.success);
        assert!(reserved.text().expect("a reason").contains("reserved"));
        assert!(!r.is_member("sequencer"));
    }

    #[test]
    fn a_live_username_at_another_address_is_refused() {
        let (mut r, t) = registry();
        let first = register(&mut r, t, "ford", 5001, Some(2));
        let again = register(&mut r, t, "ford", 5001, Some(2));
        assert_eq!(first.content, again.content, "same member, same id");
        let other = register(&mut r, t, "ford", 6000, Some(2));
        assert!(!other.success);
        assert!(other.text().expect("reason").contains("taken"));
        // Once the holder is silent past the limit, the name is free again.
        let later = t + Duration::from_millis(2001);
        assert!(register(&mut r, later, "ford", 6000, Some(2)).success);
        assert_eq!(next_eviction(&mut r).map(|e| e.member.port), Some(5001));
    }

    #[test]
    fn unknown_members_and_groups_fail_with_a_reason_and_change_nothing() {
        let (mut r, t) = registry();
        register(&mut r, t, "ford", 5001, None);
        join(&mut r, t, "ford", "books");
        let before = format!("{r:?}");
        for request in [
            Request::JoinGroup {
                username: "ghost".into(),
                group: "books".into(),
                order: None,
            },
            Request::ExitGroup {
                username: "ford".into(),
                group: "chess".into(),
            },
            Request::ExitGroup {
                username: "ghost".into(),
                group: "books".into(),
            },
            Request::Quit {
                username: "ghost".into(),
            },
            Request::Heartbeat {
                username: "ghost".into(),
            },
            Request::JoinGroup {
                username: "ford".into(),
                group: "".into(),
                order: None,
            },
            Request::Register {
                ip: "not-an-ip".into(),
                port: 1,
                username: "x".into(),
            },
            Request::Register {
                ip: "127.0.0.1".into(),
                port: 7,
                username: "bad\nname".into(),
            },
            Request::Register {
                ip: "127.0.0.1".into(),
                port: 7,
                username: "sequencer".into(),
            },
        ] {
            let reply = ask(&mut r, t, request.clone(), None, Via::Tcp(LOCAL));
            assert!(!reply.success, "{request:?} must fail");
            assert!(
                !reply.text().expect("a reason").is_empty(),
                "{request:?} gives a reason"
            );
        }
        let unknown = ask(
            &mut r,
            t,
            Request::ListMembers {
                group: "chess".into(),
            },
            None,
            Via::Tcp(LOCAL),
        );
        assert_eq!(
            (unknown.success, unknown.content),
            (false, serde_json::json!([]))
        );
        assert_eq!(format!("{r:?}"), before, "state unchanged");
    }

    #[test]
    fn silent_members_are_evicted_with_the_groups_to_tell() {
        let (mut r, t) = registry();
        register(&mut r, t, "ford", 5001, Some(2));
        register(&mut r, t, "katerina", 5002, Some(2));
        join(&mut r, t, "ford", "books");
        join(&mut r, t, "katerina", "books");
        r.handle_timeout(t + Duration::from_millis(1500));
        assert!(next_eviction(&mut r).is_none());
        // katerina keeps heartbeating, by UDP from her own address.
        let hb = ask(
            &mut r,
            t + Duration::from_millis(1500),
            Request::Heartbeat {
                username: "katerina".into(),
            },
            None,
            Via::Udp("127.0.0.1:5002".parse().expect("addr")),
        );
        assert!(hb.success);
        r.handle_timeout(t + Duration::from_millis(2001));
        let eviction = next_eviction(&mut r).expect("ford is evicted");
        assert_eq!(eviction.member.username, "ford");
        assert_eq!(eviction.interval, Duration::from_secs(1));
        assert_eq!(eviction.groups.len(), 1);
        let (group, remaining) = &eviction.groups[0];
        assert_eq!(group, "books");
        let remaining: Vec<_> = remaining.iter().map(|m| m.username.as_str()).collect();
        assert_eq!(remaining, ["katerina", "sequencer"]);
        assert!(next_eviction(&mut r).is_none());
        assert!(!r.is_member("ford"));
    }

    #[test]
    fn an_evicted_sequencer_is_announced_to_every_group_but_itself() {
        let (mut r, t) = registry();
        register(&mut r, t, "ford", 5001, Some(2));
        register(&mut r, t, "katerina", 5002, Some(2));
        join(&mut r, t, "ford", "books");
        join(&mut r, t, "katerina", "films");
        let port = r.sequencer.as_ref().expect("configured").port;
        assert!(register(&mut r, t, "sequencer", port, Some(2)).success);
        for name in ["ford", "katerina"] {
            let hb = ask(
                &mut r,
                t + Duration::from_millis(1500),
                Request::Heartbeat {
                    username: name.into(),
                },
                None,
                Via::Tcp(LOCAL),
            );
            assert!(hb.success);
        }
        r.handle_timeout(t + Duration::from_millis(2001));
        let eviction = next_eviction(&mut r).expect("the silent sequencer is evicted");
        assert_eq!(eviction.member.username, "sequencer");
        let told: Vec<(String, Vec<String>)> = eviction
            .groups
            .iter()
            .map(|(g, ms)| (g.clone(), ms.iter().map(|m| m.username.clone()).collect()))
            .collect();
        assert_eq!(
            told,
            [
                ("books".to_owned(), vec!["ford".to_owned()]),
                ("films".to_owned(), vec!["katerina".to_owned()])
            ],
            "every group, though the sequencer joined none; not the sequencer itself"
        );
    }

    /// A registry that probes a suspect for 500 ms before evicting it, no sequencer.
    fn probing_registry() -> (Registry, Instant) {
        let liveness = Liveness {
            probe: Duration::from_millis(500),
            ..LIVE
        };
        (Registry::new(liveness, None), Instant::now())
    }

    #[test]
    fn a_suspect_is_probed_and_evicted_only_if_it_stays_silent() {
        let (mut r, t) = probing_registry();
        for (name, port) in [("ford", 5001), ("kat", 5002)] {
            assert!(register(&mut r, t, name, port, Some(3)).success);
            assert!(join(&mut r, t, name, "books").success);
        }
        // Both silent past two intervals: suspect, probed, not evicted.
        let t1 = t + Duration::from_millis(2100);
        r.handle_timeout(t1);
        let (evicted, probed) = drain(&mut r);
        assert!(evicted.is_empty());
        assert_eq!(probed.len(), 2, "{probed:?}");
        // ford answers the probe (a heartbeat); kat does not.
        let beat = Request::Heartbeat {
            username: "ford".into(),
        };
        assert!(
            ask(
                &mut r,
                t1 + Duration::from_millis(10),
                beat,
                Some(3),
                Via::Udp(([127, 0, 0, 1], 5001).into())
            )
            .success
        );
        // Halfway: a second probe to kat only.
        r.handle_timeout(t1 + Duration::from_millis(260));
        let (evicted, again) = drain(&mut r);
        assert_eq!((evicted, again), (vec![], vec!["kat".to_owned()]));
        r.handle_timeout(t1 + Duration::from_millis(510));
        let (evicted, _) = drain(&mut r);
        assert_eq!(evicted, ["kat"]);
        assert!(r.is_member("ford"));
    }

    #[test]
    fn poll_timeout_names_the_moment_a_silent_member_is_due() {
        let (mut r, t) = registry();
        assert_eq!(r.poll_timeout(), None, "nobody to watch");
        register(&mut r, t, "ford", 5001, Some(2));
        let due = r.poll_timeout().expect("ford is watched");
        assert_eq!(due, t + Duration::from_secs(2) + TICK);
        r.handle_timeout(due - TICK);
        assert!(next_eviction(&mut r).is_none(), "at the limit, still alive");
        r.handle_timeout(due);
        assert_eq!(
            next_eviction(&mut r).map(|e| e.member.username),
            Some("ford".into())
        );
        assert_eq!(r.poll_timeout(), None);
    }

    #[test]
    fn a_suspect_heard_from_is_cleared_at_the_next_timeout_not_when_its_probe_runs_out() {
        let (mut r, t) = probing_registry();
        assert!(register(&mut r, t, "ford", 5001, Some(3)).success);
        let suspect_at = r.poll_timeout().expect("watched");
        r.handle_timeout(suspect_at);
        assert_eq!(drain(&mut r).1, ["ford"], "probed");
        // Its answer arrives; the registry wants to run at once, and clears the suspicion.
        let answered = suspect_at + Duration::from_millis(100);
        let beat = Request::Heartbeat {
            username: "ford".into(),
        };
        assert!(
            ask(
                &mut r,
                answered,
                beat,
                Some(3),
                Via::Udp(([127, 0, 0, 1], 5001).into())
            )
            .success
        );
        let due = r.poll_timeout().expect("watched");
        assert!(due <= answered, "{:?} after the answer", due - answered);
        r.handle_timeout(answered);
        // Silent again, but only since its answer: not evicted when the old probe would
        // have run out.
        r.handle_timeout(suspect_at + Duration::from_millis(500));
        assert_eq!(drain(&mut r), (vec![], vec![]));
        assert!(r.is_member("ford"));
    }

    #[test]
    fn old_clients_are_held_to_sixty_seconds() {
        let (mut r, t) = registry();
        register(&mut r, t, "old", 5001, None);
        r.handle_timeout(t + Duration::from_secs(119));
        assert!(next_eviction(&mut r).is_none());
        r.handle_timeout(t + Duration::from_secs(121));
        assert_eq!(
            next_eviction(&mut r).map(|e| e.interval),
            Some(LEGACY_HEARTBEAT)
        );
    }

    #[test]
    fn udp_heartbeats_must_come_from_the_members_address() {
        let (mut r, t) = registry();
        register(&mut r, t, "ford", 5001, Some(2));
        let spoofed = ask(
            &mut r,
            t + Duration::from_millis(1900),
            Request::Heartbeat {
                username: "ford".into(),
            },
            None,
            Via::Udp("127.0.0.1:6666".parse().expect("addr")),
        );
        assert!(!spoofed.success);
        let join_by_udp = ask(
            &mut r,
            t,
            Request::JoinGroup {
                username: "ford".into(),
                group: "g".into(),
                order: None,
            },
            None,
            Via::Udp("127.0.0.1:5001".parse().expect("addr")),
        );
        assert!(!join_by_udp.success, "only heartbeats over UDP");
        r.handle_timeout(t + Duration::from_millis(2001));
        assert!(
            next_eviction(&mut r).is_some(),
            "a spoofed heartbeat keeps no one alive"
        );
    }

    /// `ask` with a seal token shown (JoinGroup, ListMembers of a sealed group).
    fn ask_sealed(r: &mut Registry, now: Instant, request: Request, seal: Option<&str>) -> Reply {
        let name = match &request {
            Request::JoinGroup { username, .. } => Some(username.clone()),
            _ => None,
        };
        let secret = name.and_then(|n| SECRETS.with(|s| s.borrow().get(&n).cloned()));
        r.handle_envelope(
            now,
            Envelope {
                request,
                proto: Some(proto::PROTOCOL_VERSION),
                secret,
                seal: seal.map(|s| Secret::new(s.into())),
            },
            Via::Tcp(LOCAL),
        )
    }

    fn join_sealed(
        r: &mut Registry,
        now: Instant,
        name: &str,
        group: &str,
        seal: Option<&str>,
    ) -> Reply {
        let request = Request::JoinGroup {
            username: name.into(),
            group: group.into(),
            order: None,
        };
        ask_sealed(r, now, request, seal)
    }

    fn list_sealed(r: &mut Registry, now: Instant, group: &str, seal: Option<&str>) -> Reply {
        let request = Request::ListMembers {
            group: group.into(),
        };
        ask_sealed(r, now, request, seal)
    }

    #[test]
    fn a_sealed_group_takes_and_shows_its_members_only_to_those_showing_its_key() {
        let (mut r, t) = registry();
        for (i, name) in ["ford", "kat", "eve", "old"].iter().enumerate() {
            register(
                &mut r,
                t,
                name,
                5001 + i as u16,
                Some(proto::PROTOCOL_VERSION),
            );
        }
        let token = "a".repeat(64);
        assert!(join_sealed(&mut r, t, "ford", "books", Some(&token)).success);
        assert!(r.is_sealed("books"));
        assert_eq!(
            names(&join_sealed(&mut r, t, "kat", "books", Some(&token))),
            ["ford", "kat", "sequencer"]
        );
        // Another key, or none (the report's peers show none): refused, nothing changes.
        let wrong = join_sealed(&mut r, t, "eve", "books", Some(&"b".repeat(64)));
        assert!(!wrong.success);
        assert!(
            wrong
                .content
                .as_str()
                .is_some_and(|c| c.contains("another key")),
            "{wrong:?}"
        );
        let plain = join_sealed(&mut r, t, "old", "books", None);
        assert!(!plain.success);
        assert!(
            plain
                .content
                .as_str()
                .is_some_and(|c| c.contains("sealed") && c.contains("report")),
            "{plain:?}"
        );
        // Listing: only with the key; the refusal names nobody.
        let shown = list_sealed(&mut r, t, "books", Some(&token));
        assert_eq!(names(&shown), ["ford", "kat", "sequencer"]);
        for seal in [None, Some("b".repeat(64))] {
            let hidden = list_sealed(&mut r, t, "books", seal.as_deref());
            assert!(!hidden.success);
            let text = hidden.content.to_string();
            assert!(!text.contains("ford") && !text.contains("5001"), "{text}");
        }
        // An open group cannot be taken over as a sealed one, nor joined with a key.
        assert!(join(&mut r, t, "old", "films").success);
        let takeover = join_sealed(&mut r, t, "eve", "films", Some(&token));
        assert!(!takeover.success && !r.is_sealed("films"));
        assert_eq!(
            names(&list_sealed(&mut r, t, "films", None)),
            ["old", "sequencer"]
        );
        // Emptied, the sealed group is forgotten with its key's token.
        for name in ["ford", "kat"] {
            let exit = Request::ExitGroup {
                username: name.into(),
                group: "books".into(),
            };
            assert!(
                ask(
                    &mut r,
                    t,
                    exit,
                    Some(proto::PROTOCOL_VERSION),
                    Via::Tcp(LOCAL)
                )
                .success
            );
        }
        assert!(!r.is_sealed("books"));
        assert!(join(&mut r, t, "old", "books").success);
    }

    /// Hands every change of `from` to `to`, as the shared store would.
    fn replicate(from: &mut Registry, to: &mut Registry, now: Instant) -> Vec<Change> {
        let changes = from.take_changes();
        for change in &changes {
            match change.clone() {
                Change::Put(name, record) | Change::Evicted(name, record) => {
                    to.import(now, &name, Some(record), false)
                }
                Change::Delete(name) => to.import(now, &name, None, false),
            }
        }
        changes
    }

    fn shared_pair() -> (Registry, Registry, Instant) {
        let (mut a, t) = registry();
        let (mut b, _) = registry();
        a.share();
        b.share();
        (a, b, t)
    }

    #[test]
    fn trackers_sharing_a_registry_list_the_same_groups_in_the_same_order() {
        let (mut a, mut b, t) = shared_pair();
        for (i, name) in ["ann", "cid", "bea"].into_iter().enumerate() {
            assert!(register(&mut a, t, name, 7000 + i as u16, Some(1)).success);
            assert!(join(&mut a, t, name, "room").success);
        }
        let changes = replicate(&mut a, &mut b, t);
        assert_eq!(changes.len(), 3, "one record per member: {changes:?}");
        assert_eq!(b.members_of("room"), a.members_of("room"));
        assert_eq!(b.group_names(), ["room"]);
        // Only the tracker a member talks to watches it.
        assert!(a.holds("ann") && !b.holds("ann"));
        assert_eq!(b.poll_timeout(), None);
        // A member joining at the other tracker comes after them at both.
        assert!(register(&mut b, t, "dan", 7010, Some(1)).success);
        assert!(join(&mut b, t, "dan", "room").success);
        replicate(&mut b, &mut a, t);
        let order: Vec<String> = a
            .members_of("room")
            .unwrap()
            .into_iter()
            .map(|m| m.username)
            .collect();
        assert_eq!(order, ["ann", "cid", "bea", "dan", SEQUENCER]);
        assert_eq!(b.members_of("room"), a.members_of("room"));
        // Reading changes nothing to write.
        assert!(b.take_changes().is_empty() && a.take_changes().is_empty());
    }

    #[test]
    fn a_name_held_at_another_tracker_is_taken_and_its_owner_moves_keeping_its_identity() {
        let (mut a, mut b, t) = shared_pair();
        let first = register(&mut a, t, "ann", 7000, Some(1));
        replicate(&mut a, &mut b, t);
        // Long after: the other tracker never heard ann's heartbeats, and still believes
        // her tracker, which holds her.
        let later = t + Duration::from_secs(60);
        b.handle_timeout(later);
        assert_eq!(drain(&mut b), (vec![], vec![]));
        let taken = register(&mut b, later, "ann", 7999, Some(1));
        assert!(!taken.success, "{taken:?}");
        // Ann herself moves to b (her tracker died): same id, same secret, held by b now.
        let again = register(&mut b, later, "ann", 7000, Some(1));
        assert!(again.success, "{again:?}");
        assert_eq!(again.content, first.content, "a new identity");
        assert!(b.holds("ann"));
        assert!(matches!(&b.take_changes()[..], [Change::Put(n, _)] if n == "ann"));
    }

    #[test]
    fn a_heartbeat_at_another_tracker_moves_the_member_there() {
        let (mut a, mut b, t) = shared_pair();
        register(&mut a, t, "ann", 7000, Some(1));
        replicate(&mut a, &mut b, t);
        let from: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let beat = ask(
            &mut b,
            t,
            Request::Heartbeat {
                username: "ann".into(),
            },
            Some(1),
            Via::Udp(from),
        );
        assert!(beat.success, "{beat:?}");
        assert!(b.holds("ann"));
        replicate(&mut b, &mut a, t);
        assert!(!a.holds("ann"), "a still watches a member that moved");
        // A second heartbeat writes nothing.
        ask(
            &mut b,
            t,
            Request::Heartbeat {
                username: "ann".into(),
            },
            Some(1),
            Via::Udp(from),
        );
        assert!(b.take_changes().is_empty());
    }

    #[test]
    fn an_eviction_is_announced_by_each_tracker_to_the_members_it_holds() {
        let (mut a, mut b, t) = shared_pair();
        register(&mut a, t, "ann", 7000, None);
        join(&mut a, t, "ann", "room");
        register(&mut a, t, "cid", 7002, Some(1));
        join(&mut a, t, "cid", "room");
        replicate(&mut a, &mut b, t);
        register(&mut b, t, "bea", 7001, Some(1));
        join(&mut b, t, "bea", "room");
        replicate(&mut b, &mut a, t);
        // Ann (the report's client, 60 s interval) falls silent at a; cid keeps beating.
        let later = t + LEGACY_HEARTBEAT * 3;
        ask(
            &mut a,
            later,
            Request::Heartbeat {
                username: "cid".into(),
            },
            Some(1),
            Via::Tcp(LOCAL),
        );
        a.handle_timeout(later);
        let at_a = next_eviction(&mut a).expect("a evicts ann");
        let told_by_a: Vec<u16> = at_a.notices().iter().map(|(to, _)| to.port()).collect();
        assert!(
            told_by_a.contains(&7002) && !told_by_a.contains(&7001),
            "{told_by_a:?}"
        );
        assert!(
            told_by_a.contains(&9000),
            "the sequencer, held by nobody, is told"
        );
        let changes = replicate(&mut a, &mut b, later);
        assert!(
            matches!(&changes[..], [Change::Evicted(n, m)] if n == "ann" && m.evicted),
            "{changes:?}"
        );
        let at_b = next_eviction(&mut b).expect("b announces it too");
        let told_by_b: Vec<u16> = at_b.notices().iter().map(|(to, _)| to.port()).collect();
        assert!(
            told_by_b.contains(&7001) && !told_by_b.contains(&7002),
            "{told_by_b:?}"
        );
        assert!(!b.is_member("ann"));
        // A member whose tracker died with it goes the same way.
        b.expire(later, "cid");
        assert_eq!(
            next_eviction(&mut b).map(|e| e.member.username),
            Some("cid".into())
        );
        assert!(
            b.take_changes().is_empty(),
            "an expiry is etcd's doing, not ours to write"
        );
    }
}
