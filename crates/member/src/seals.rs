//! The sealed groups an endpoint holds keys for — a peer's core or the sequencer — and the
//! one rule every arriving datagram passes before anything else sees it: a sealed datagram
//! opens with the key of one group and may hold datagrams of that group only; a plain one
//! may hold none of a sealed group, but for the tracker's eviction notices (the tracker has
//! no group keys: its Byes come plain).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use proto::bundle::Datagrams;
use proto::{Datagram, DatagramType, Secret};
use seal::{GroupKey, Opener, Sealer, SharedKey};

/// Keys of sealed groups: what seals our datagrams, what opens theirs, and what shows the
/// tracker we hold a key.
#[derive(Debug)]
pub struct GroupSeals {
    sealers: HashMap<String, Arc<Sealer>>,
    tokens: HashMap<String, Secret>,
    opener: Opener,
    /// The plain datagram opened last (kept for its buffer).
    opened: Vec<u8>,
}

/// What one arriving UDP datagram held, once opened and decoded.
#[derive(Debug)]
// A short-lived value on the stack; boxing the items would cost an allocation per datagram.
#[allow(clippy::large_enum_variant)]
pub enum Opened {
    /// Its datagrams, each still to pass [`GroupSeals::admits`]; `sealed_as` is the group
    /// whose key opened it (`None`: it came plain).
    Items {
        /// The datagrams, in order.
        items: Datagrams,
        /// The group whose key opened it.
        sealed_as: Option<Arc<str>>,
    },
    /// Sealed, and not with a key we hold, or forged, or replayed: counted (and logged
    /// once per source) in [`GroupSeals::stats`].
    Refused,
    /// Not a datagram of ours.
    Malformed(proto::Error),
}

impl GroupSeals {
    /// No sealed group yet, for an endpoint receiving at `me` (the address sealed
    /// datagrams are bound to).
    pub fn new(me: SocketAddr) -> Self {
        Self {
            sealers: HashMap::new(),
            tokens: HashMap::new(),
            opener: Opener::new(me),
            opened: Vec::new(),
        }
    }

    /// Holds `group`'s key from now on: its datagrams are sealed as they leave, and only
    /// datagrams sealed with it are believed. Refused if another group has the same key
    /// (each group needs its own).
    pub fn add(&mut self, group: &str, key: &GroupKey) -> Result<(), SharedKey> {
        self.opener.add(group, key)?;
        self.sealers
            .insert(group.to_owned(), Arc::new(Sealer::new(key)));
        self.tokens
            .insert(group.to_owned(), Secret::new(key.tracker_token(group)));
        Ok(())
    }

    /// What seals `group`'s datagrams, if it is sealed.
    pub fn sealer(&self, group: &str) -> Option<Arc<Sealer>> {
        self.sealers.get(group).cloned()
    }

    /// What shows the tracker we hold `group`'s key, if it is sealed (to join it or list
    /// its members).
    pub fn token(&self, group: &str) -> Option<&Secret> {
        self.tokens.get(group)
    }

    /// Whether `group` is a sealed group whose key we hold.
    pub fn is_sealed(&self, group: &str) -> bool {
        self.sealers.contains_key(group)
    }

    /// What the keys opened and dropped.
    pub fn stats(&self) -> seal::OpenStats {
        self.opener.stats()
    }

    /// The plain form of `bytes`, which came from `from`: itself, or opened into `buf` if
    /// sealed, with the group whose key opened it. `None`: sealed, and refused (counted,
    /// and logged once per source, by the opener).
    pub fn unseal<'a>(
        &mut self,
        from: SocketAddr,
        bytes: &'a [u8],
        buf: &'a mut Vec<u8>,
    ) -> Option<(&'a [u8], Option<Arc<str>>)> {
        if !seal::is_sealed(bytes) {
            return Some((bytes, None));
        }
        let group = self.opener.open(from, bytes, buf).ok()?;
        Some((buf.as_slice(), Some(group)))
    }

    /// Opens (if sealed) and decodes `bytes`, which came from `from`.
    pub fn open(&mut self, from: SocketAddr, bytes: &[u8]) -> Opened {
        let mut buf = std::mem::take(&mut self.opened);
        let opened = match self.unseal(from, bytes, &mut buf) {
            None => Opened::Refused,
            Some((plain, sealed_as)) => match proto::bundle::decode_datagrams(plain) {
                Ok(items) => Opened::Items { items, sealed_as },
                Err(e) => Opened::Malformed(e),
            },
        };
        self.opened = buf;
        opened
    }

    /// Whether a run of messages of `group`, which came sealed with the key of `sealed_as`
    /// (`None`: plain), may be believed: [`admits`](Self::admits) for messages.
    pub fn admits_messages(&self, group: &str, sealed_as: Option<&str>) -> bool {
        match sealed_as {
            Some(sealed) => group == sealed,
            None => !self.sealers.contains_key(group),
        }
    }

    /// Whether `d`, one of the datagrams [`open`](Self::open) found, may be believed:
    /// sealed, only if it is of the group whose key opened it; plain, only if its group is
    /// not sealed, or it is an eviction notice from `tracker`.
    pub fn admits(
        &self,
        d: &Datagram,
        sealed_as: Option<&str>,
        from: SocketAddr,
        tracker: Option<SocketAddr>,
    ) -> bool {
        match sealed_as {
            Some(group) => *d.group == *group,
            None => {
                !self.sealers.contains_key(&*d.group)
                    || (d.kind == DatagramType::Bye && Some(from) == tracker)
            }
        }
    }
}
