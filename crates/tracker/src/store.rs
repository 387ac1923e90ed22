//! Where the registry lives: in this process only (the default), or shared by several
//! trackers through an etcd cluster.
//!
//! Shared, each tracker keeps a full copy of the registry (a [`Registry`] in
//! [`Registry::share`] mode), fed by one etcd watch, and answers every request from it; a
//! request that changes a member's record is answered only once etcd has committed the
//! change (a compare-and-set on the record's revision, so two trackers never overwrite each
//! other's news). The keys, under a prefix (`/groupcast` by default):
//!
//! - `PREFIX/trackers/ID`: each live tracker, under its own lease (a few seconds, kept
//!   alive by the tracker's sweeps);
//! - `PREFIX/members/NAME`: each member's [`SharedMember`] record, under the lease of the
//!   tracker that holds it (the one it talks to).
//!
//! Liveness: a member's heartbeats go to its tracker only, which evicts it as a lone
//! tracker would and writes the eviction (a record marked `evicted`, then its deletion), so
//! that every tracker tells the members it holds. Heartbeats cost etcd nothing: etcd sees
//! one lease refresh per tracker every TTL/3, and a write per join, leave, registration,
//! eviction or move — with 10,000 members, one keep-alive a second per tracker instead of
//! 10,000 lease refreshes a second with a lease per member. A tracker that dies takes its
//! lease with it: when it expires, etcd deletes the tracker's key and the records of its
//! members in one revision; a member that moved to another tracker meanwhile was written
//! under that tracker's lease and stays; one that did not (it died too, or it is one of the
//! report's clients, which know one tracker) is announced as evicted by every survivor to
//! the members it holds.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use proto::{Envelope, Reply, Request};

use crate::etcd::{Etcd, EtcdError, WatchEvent, watch};
use crate::registry::{Registry, Via};
use crate::shared::{Change, SharedMember};

/// How a registry is shared: the etcd cluster, the key prefix, and the lease of each
/// tracker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedRegistry {
    /// The cluster's client endpoints (`host:port`), tried in turn.
    pub endpoints: Vec<String>,
    /// The prefix of every key (trackers sharing a registry use the same one).
    pub prefix: String,
    /// The lease of each tracker: how long after a tracker dies the members it held and
    /// that did not move are evicted.
    pub lease: Duration,
}

impl SharedRegistry {
    /// Reads `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("etcd://").ok_or_else(|| {
            format!("{url:?}: a shared registry is named etcd://HOST:PORT[,HOST:PORT...][/PREFIX]")
        })?;
        let (hosts, prefix) = match rest.split_once('/') {
            Some((hosts, prefix)) if !prefix.is_empty() => (hosts, format!("/{prefix}")),
            Some((hosts, _)) => (hosts, "/groupcast".to_owned()),
            None => (rest, "/groupcast".to_owned()),
        };
        let endpoints: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
            .collect();
        if endpoints.is_empty() {
            return Err(format!("{url:?} names no etcd endpoint"));
        }
        for e in &endpoints {
            if !e.contains(':') {
                return Err(format!("etcd endpoint {e:?}: expected HOST:PORT"));
            }
        }
        Ok(Self {
            endpoints,
            prefix: prefix.trim_end_matches('/').to_owned(),
            lease: Duration::from_secs(3),
        })
    }
}

/// The registry and, when shared, its link to etcd.
#[derive(Debug)]
pub(crate) struct Store {
    pub(crate) registry: Registry,
    shared: Option<Shared>,
}

impl Store {
    /// A registry of this process only.
    pub(crate) fn local(registry: Registry) -> Self {
        Self {
            registry,
            shared: None,
        }
    }

    /// A registry shared through etcd: registers this tracker, reads the registry, and
    /// starts watching it; `wake` is called when the watch has news.
    pub(crate) fn shared(
        mut registry: Registry,
        config: &SharedRegistry,
        addr: SocketAddr,
        wake: impl Fn() + Send + 'static,
        now: Instant,
    ) -> Result<Self, EtcdError> {
        registry.share();
        let shared = Shared::connect(&mut registry, config, addr, wake, now)?;
        Ok(Self {
            registry,
            shared: Some(shared),
        })
    }

    /// Answers one request; in a shared registry, after catching up with the other
    /// trackers' changes, and (when it changed a record) only once etcd has it.
    pub(crate) fn handle_envelope(&mut self, now: Instant, envelope: Envelope, via: Via) -> Reply {
        let Some(shared) = self.shared.as_mut() else {
            return self.registry.handle_envelope(now, envelope, via);
        };
        // Requests answered with a view of the registry (a list, or a group's members
        // on joining it): the same view at every tracker, what etcd has now rather than
        // what reached us so far.
        let shows = matches!(
            envelope.request,
            Request::ListGroups | Request::ListMembers { .. } | Request::JoinGroup { .. }
        );
        if shows {
            if let Err(e) = shared.sync(&mut self.registry, now) {
                log::warn!("cannot read the shared registry: {e}");
            }
        } else {
            shared.catch_up(&mut self.registry, now);
        }
        let reply = self.registry.handle_envelope(now, envelope, via);
        match shared.commit(&mut self.registry, now) {
            Ok(()) => reply,
            Err(e) => Reply::failure(format!("the registry could not be updated: {e}")),
        }
    }

    /// Liveness, the lease, and the other trackers' news.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if let Some(shared) = self.shared.as_mut() {
            shared.tick(&mut self.registry, now);
            shared.catch_up(&mut self.registry, now);
        }
        self.registry.handle_timeout(now);
        if let Some(shared) = self.shared.as_mut()
            && let Err(e) = shared.commit(&mut self.registry, now)
        {
            log::warn!("cannot write evictions to the shared registry: {e}");
        }
    }

    /// Applies what the watch brought (the loop was woken for it).
    pub(crate) fn catch_up(&mut self, now: Instant) {
        if let Some(shared) = self.shared.as_mut() {
            shared.catch_up(&mut self.registry, now);
        }
    }

    /// Calls made to etcd so far (0 when not shared).
    pub(crate) fn etcd_calls(&self) -> u64 {
        self.shared.as_ref().map_or(0, |s| s.etcd.calls)
    }
}

type Batch = (Vec<WatchEvent>, i64);

#[derive(Debug)]
struct Shared {
    etcd: Etcd,
    prefix: String,
    id: String,
    addr: SocketAddr,
    lease: i64,
    ttl: Duration,
    next_keep_alive: Instant,
    /// Each member record's revision as last seen: the compare of the next write.
    revisions: HashMap<String, i64>,
    /// The revision the copy reflects.
    applied: i64,
    news: mpsc::Receiver<Batch>,
    /// A write failed: read everything again at the next tick.
    stale: bool,
}

impl Shared {
    fn connect(
        registry: &mut Registry,
        config: &SharedRegistry,
        addr: SocketAddr,
        wake: impl Fn() + Send + 'static,
        now: Instant,
    ) -> Result<Self, EtcdError> {
        let mut etcd = Etcd::new(&config.endpoints, Duration::from_secs(2));
        let lease = etcd.grant(config.lease)?;
        let id = format!("{:016x}", rand::random::<u64>());
        let mut shared = Self {
            etcd,
            prefix: config.prefix.clone(),
            id,
            addr,
            lease,
            ttl: config.lease,
            next_keep_alive: now + config.lease / 3,
            revisions: HashMap::new(),
            applied: 0,
            news: mpsc::channel().1,
            stale: false,
        };
        shared.announce_self()?;
        shared.reload(registry, now)?;
        let (tx, rx) = mpsc::channel();
        watch(
            shared.etcd.endpoints().to_vec(),
            format!("{}/", shared.prefix),
            shared.applied + 1,
            move |events, revision| {
                let open = tx.send((events, revision)).is_ok();
                wake();
                open
            },
        );
        shared.news = rx;
        log::info!(
            "sharing the registry at {} (prefix {}) as tracker {}; {} members read",
            shared.etcd.endpoints().join(","),
            shared.prefix,
            shared.id,
            registry.member_count()
        );
        Ok(shared)
    }

    fn tracker_key(&self) -> String {
        format!("{}/trackers/{}", self.prefix, self.id)
    }

    fn member_key(&self, name: &str) -> String {
        format!("{}/members/{name}", self.prefix)
    }

    fn announce_self(&mut self) -> Result<(), EtcdError> {
        let key = self.tracker_key();
        let value = self.addr.to_string();
        self.etcd.put(&key, value.as_bytes(), self.lease)?;
        Ok(())
    }

    /// Reads the whole registry and makes the copy match it.
    fn reload(&mut self, registry: &mut Registry, now: Instant) -> Result<(), EtcdError> {
        let (revision, kvs) = self.etcd.range_prefix(&format!("{}/", self.prefix))?;
        let members = format!("{}/members/", self.prefix);
        let mut present = BTreeSet::new();
        self.revisions.clear();
        for kv in kvs {
            if let Some(name) = kv.key.strip_prefix(&members) {
                let Ok(record) = serde_json::from_slice::<SharedMember>(&kv.value) else {
                    log::warn!("ignored an unreadable record at {}", kv.key);
                    continue;
                };
                if record.evicted {
                    continue;
                }
                let ours = record.tracker == self.id;
                registry.import(now, name, Some(record), ours);
                self.revisions.insert(name.to_owned(), kv.mod_revision);
                present.insert(name.to_owned());
            }
        }
        registry.retain_members(&present);
        self.applied = self.applied.max(revision);
        self.stale = false;
        Ok(())
    }

    /// Applies every batch the watch has delivered.
    fn catch_up(&mut self, registry: &mut Registry, now: Instant) {
        while let Ok((events, revision)) = self.news.try_recv() {
            self.apply(registry, now, events, revision);
        }
    }

    /// Waits until the copy reflects what etcd holds now (one read for the current
    /// revision, then the watch up to it).
    fn sync(&mut self, registry: &mut Registry, now: Instant) -> Result<(), EtcdError> {
        let (revision, _) = self.etcd.range_prefix(&self.tracker_key())?;
        let deadline = Instant::now() + Duration::from_secs(1);
        self.catch_up(registry, now);
        while self.applied < revision {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.news.recv_timeout(left) {
                Ok((events, r)) => self.apply(registry, now, events, r),
                Err(_) => {
                    return Err(EtcdError::Unreachable(format!(
                        "the watch did not reach revision {revision} in time"
                    )));
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, registry: &mut Registry, now: Instant, events: Vec<WatchEvent>, at: i64) {
        if at <= self.applied {
            // Read already (the watch began before the full read ended).
            return;
        }
        let trackers = format!("{}/trackers/", self.prefix);
        let members = format!("{}/members/", self.prefix);
        // Trackers first: a tracker's lease expiring deletes its key and its members' in
        // one revision, and the members' deletions are read by which lease they had.
        let mut dead = HashSet::new();
        for event in &events {
            if let WatchEvent::Delete { key, prev, .. } = event
                && let Some(id) = key.strip_prefix(&trackers)
            {
                if id == self.id {
                    log::warn!("the shared registry lost this tracker's lease");
                } else {
                    log::warn!("tracker {id} is gone (its lease expired or was revoked)");
                }
                dead.extend(prev.as_ref().map(|p| p.lease));
            }
        }
        for event in events {
            match event {
                WatchEvent::Put(kv) => {
                    let Some(name) = kv.key.strip_prefix(&members) else {
                        continue;
                    };
                    self.revisions.insert(name.to_owned(), kv.mod_revision);
                    match serde_json::from_slice::<SharedMember>(&kv.value) {
                        // Our own write: the copy has it already.
                        Ok(record) if record.tracker == self.id => {}
                        Ok(record) => registry.import(now, name, Some(record), false),
                        Err(e) => log::warn!("ignored an unreadable record at {}: {e}", kv.key),
                    }
                }
                WatchEvent::Delete { key, prev, .. } => {
                    let Some(name) = key.strip_prefix(&members) else {
                        continue;
                    };
                    self.revisions.remove(name);
                    let lease = prev.as_ref().map_or(0, |p| p.lease);
                    if lease == self.lease && registry.holds(name) {
                        // Lost with our lease while we hold it: written again at the next
                        // tick, with the new lease.
                        self.stale = true;
                    } else if lease != 0 && dead.contains(&lease) && registry.is_member(name) {
                        log::warn!("{name:?} went with its tracker's lease: evicted");
                        registry.expire(now, name);
                    } else {
                        registry.import(now, name, None, false);
                    }
                }
            }
        }
        self.applied = at;
    }

    /// Writes this tracker's changes, each only if the record is as we last saw it.
    fn commit(&mut self, registry: &mut Registry, now: Instant) -> Result<(), EtcdError> {
        let changes = registry.take_changes();
        let mut conflict = None;
        for change in changes {
            let (name, outcome) = match change {
                Change::Put(name, mut record) => {
                    record.tracker = self.id.clone();
                    let outcome = self.write(&name, Some(&record));
                    (name, outcome)
                }
                Change::Delete(name) => {
                    let outcome = self.write(&name, None);
                    (name, outcome)
                }
                Change::Evicted(name, mut tombstone) => {
                    tombstone.tracker = self.id.clone();
                    let outcome = match self.write(&name, Some(&tombstone)) {
                        Ok(true) => self.write(&name, None),
                        other => other,
                    };
                    (name, outcome)
                }
            };
            match outcome {
                Ok(true) => {}
                Ok(false) => conflict = Some(name),
                Err(e) => {
                    self.stale = true;
                    return Err(e);
                }
            }
        }
        if let Some(name) = conflict {
            // Another tracker changed it first: take its version, and say so.
            let key = self.member_key(&name);
            match self.etcd.get(&key)? {
                Some(kv) => {
                    self.revisions.insert(name.clone(), kv.mod_revision);
                    if let Ok(record) = serde_json::from_slice::<SharedMember>(&kv.value) {
                        let ours = record.tracker == self.id;
                        registry.import(now, &name, Some(record), ours);
                    }
                }
                None => {
                    self.revisions.remove(&name);
                    registry.import(now, &name, None, false);
                }
            }
            return Err(EtcdError::Protocol(format!(
                "{name:?} was changed at another tracker at the same time: try again"
            )));
        }
        Ok(())
    }

    /// One compare-and-set of a member's record (`None`: its deletion); false if the
    /// record had changed since we saw it.
    fn write(&mut self, name: &str, record: Option<&SharedMember>) -> Result<bool, EtcdError> {
        let key = self.member_key(name);
        let expected = self.revisions.get(name).copied().unwrap_or(0);
        let written = match record {
            Some(record) => {
                let value = serde_json::to_vec(record).expect("a record serializes");
                self.etcd.put_if(&key, &value, self.lease, expected)?
            }
            None if expected == 0 => return Ok(true),
            None => self.etcd.delete_if(&key, expected)?,
        };
        match (written, record) {
            (Some(revision), Some(_)) => {
                self.revisions.insert(name.to_owned(), revision);
                Ok(true)
            }
            (Some(_), None) => {
                self.revisions.remove(name);
                Ok(true)
            }
            (None, _) => Ok(false),
        }
    }

    /// Keeps the lease alive; after an outage, takes a new one and writes again what
    /// this tracker holds, or reads everything again.
    fn tick(&mut self, registry: &mut Registry, now: Instant) {
        if now >= self.next_keep_alive {
            self.next_keep_alive = now + self.ttl / 3;
            match self.etcd.keep_alive(self.lease) {
                Ok(true) => {}
                Ok(false) => {
                    log::warn!("this tracker's etcd lease expired: taking a new one");
                    if let Err(e) = self.renew(registry, now) {
                        log::warn!("cannot renew the lease: {e}");
                    }
                }
                Err(e) => log::warn!("cannot keep the etcd lease alive: {e}"),
            }
        }
        if self.stale {
            if let Err(e) = self.republish(registry, now) {
                log::warn!("cannot bring the shared registry up to date: {e}");
            }
        }
    }

    fn renew(&mut self, registry: &mut Registry, now: Instant) -> Result<(), EtcdError> {
        self.lease = self.etcd.grant(self.ttl)?;
        self.announce_self()?;
        self.stale = true;
        self.republish(registry, now)
    }

    /// Writes every record this tracker holds (under its current lease), then reads the
    /// whole registry again.
    fn republish(&mut self, registry: &mut Registry, now: Instant) -> Result<(), EtcdError> {
        for (name, mut record) in registry.held_records() {
            record.tracker = self.id.clone();
            let value = serde_json::to_vec(&record).expect("a record serializes");
            let revision = self.etcd.put(&self.member_key(&name), &value, self.lease)?;
            self.revisions.insert(name, revision);
        }
        self.reload(registry, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_registry_is_named_by_its_endpoints_and_prefix() {
        let r = SharedRegistry::parse("etcd://127.0.0.1:2379,10.0.0.2:2379").unwrap();
        assert_eq!(r.endpoints, ["127.0.0.1:2379", "10.0.0.2:2379"]);
        assert_eq!(r.prefix, "/groupcast");
        let r = SharedRegistry::parse("etcd://h:1/lab/one").unwrap();
        assert_eq!(r.prefix, "/lab/one");
        assert!(SharedRegistry::parse("http://h:1").is_err());
        assert!(SharedRegistry::parse("etcd://").is_err());
        assert!(SharedRegistry::parse("etcd://host").is_err());
    }
}
