//! The checks every datagram passes before any part of the protocol sees it: it opens, if it
//! is sealed, with the key of the group it is for (and a plain one is not for a sealed
//! group); it decodes; it is for a group we are in (or left a moment ago); and it comes from
//! where its sender may send from (the source rule of [`Members`]). Then it goes to the
//! concern it is for.

use super::*;

impl PeerCore {
    /// One datagram that arrived from `from`: a single one, or a bundle of several (each
    /// checked and handled as if it had come alone).
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        self.traffic.datagrams_received += 1;
        if seal::is_sealed(bytes) {
            self.handle_sealed(now, from, bytes);
            return;
        }
        match proto::bundle::decode_datagrams(bytes) {
            Ok(items) => {
                for d in items {
                    // The tracker has no group keys: its eviction notices come plain.
                    if self.sealers.contains_key(&d.group)
                        && !(d.kind == DatagramType::Bye && from == self.tracker)
                    {
                        self.traffic.unsealed += 1;
                        log::debug!("dropped a plain datagram for sealed group {:?}", d.group);
                        continue;
                    }
                    self.handle_one(now, from, d);
                }
            }
            Err(e) => {
                self.traffic.malformed += 1;
                log::debug!("dropped a datagram from {from}: {e}");
            }
        }
    }

    /// A sealed datagram: opened with the key of the group it names, its items must all be
    /// of that group.
    fn handle_sealed(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        let mut plain = std::mem::take(&mut self.opened);
        let decoded = match self.opener.open(from, bytes, &mut plain) {
            Ok(group) => proto::bundle::decode_datagrams(&plain).map(|items| (group, items)),
            // Counted (and logged once per source) by the opener.
            Err(_) => {
                self.opened = plain;
                return;
            }
        };
        self.opened = plain;
        match decoded {
            Ok((group, items)) => {
                for d in items {
                    if *d.group == *group {
                        self.handle_one(now, from, d);
                    } else {
                        self.traffic.unsealed += 1;
                        log::debug!("dropped a datagram for {:?} sealed as {group:?}", d.group);
                    }
                }
            }
            Err(e) => {
                self.traffic.malformed += 1;
                log::debug!("dropped a sealed datagram from {from}: {e}");
            }
        }
    }

    pub(super) fn handle_one(&mut self, now: Instant, from: SocketAddr, d: Datagram) {
        let Some(state) = self.groups.get_mut(&d.group) else {
            if let Some(departed) = self.departed.get(&d.group)
                && d.kind == DatagramType::Nack
                && departed.members.admits(&d, from).is_some()
            {
                // A member of a group we left still recovers the tail of our stream.
                self.traffic.nacks_received += 1;
                let _ = self
                    .tx
                    .handle_nack(&d.group, &d.username, &ranges_of(&d.ranges));
                self.pump(now);
                return;
            }
            self.traffic.unknown += 1;
            log::debug!("dropped a datagram for group {:?}, not joined", d.group);
            return;
        };
        if d.kind == DatagramType::Bye && from == self.tracker && d.username == *self.me {
            self.on_self_evicted(now, &d.group);
            self.pump(now);
            return;
        }
        if d.kind == DatagramType::Bye && from == self.tracker && d.username != *self.me {
            if self.mode == Mode::Total && d.username == SEQUENCER {
                self.sequencer_lost(now, &d.group, "the tracker evicted it");
            } else {
                self.on_evicted(&d.group, &d.username);
            }
            self.pump(now);
            return;
        }
        // From here on `from` is the sender's registered address, which differs from the
        // datagram's source for the report's peers (see the source rule in `membership`).
        let source = if d.kind == DatagramType::Hello {
            state.members.admits_hello(&d, from)
        } else {
            state.members.admits(&d, from)
        };
        let Some(from) = source else {
            if d.kind == DatagramType::Hello || state.members.get(&d.username).is_some() {
                self.traffic.spoofed += 1;
                log::debug!(
                    "dropped a datagram claiming to be {:?} from {from}",
                    d.username
                );
            } else {
                self.traffic.unknown += 1;
                log::debug!("dropped a datagram from unknown member {:?}", d.username);
            }
            return;
        };
        if matches!(d.kind, DatagramType::Hello | DatagramType::HelloAck) {
            self.bundle_readers.note(from, d.proto);
        }
        if self.is_another_sequencers(now, &d) {
            return;
        }
        match d.kind {
            DatagramType::Hello if d.username == SEQUENCER => self.on_sequencer_hello(now, d),
            DatagramType::Hello => self.on_hello(now, from, d),
            DatagramType::HelloAck => self.on_hello_ack(now, d),
            DatagramType::Application => self.on_application(now, d),
            DatagramType::Bye => self.on_bye(now, d),
            DatagramType::Nack => {
                self.traffic.nacks_received += 1;
                let _ = self
                    .tx
                    .handle_nack(&d.group, &d.username, &ranges_of(&d.ranges));
            }
            DatagramType::Digest => self.on_digest(now, d),
            DatagramType::Unavailable => self.on_unavailable(now, d),
            DatagramType::Ack => self.on_ack(now, d),
            DatagramType::Recover => self.on_recover(&d),
            // Only a sequencer asks for them.
            DatagramType::Recovered => {}
        }
        self.pump(now);
    }
}
