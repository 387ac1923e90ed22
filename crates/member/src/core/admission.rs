//! The checks every datagram passes before any part of the protocol sees it: it opens, if it
//! is sealed, with the key of the group it is for (and a plain one is not for a sealed
//! group); it decodes; it is for a group we are in (or left a moment ago); and it comes from
//! where its sender may send from (the source rule of [`Members`]). Then it goes to the
//! concern it is for.

use super::*;

impl PeerCore {
    /// One datagram that arrived from `from`: a single one, a bundle of several (each
    /// checked and handled as if it had come alone), or a compact datagram of runs of
    /// messages (each run checked once), opened first if sealed (see [`GroupSeals`]).
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        self.traffic.datagrams_received += 1;
        let mut buf = std::mem::take(&mut self.opened);
        match self.seals.unseal(from, bytes, &mut buf) {
            Some((plain, sealed_as)) if proto::compact::is_compact(plain) => {
                self.handle_compact(now, from, plain, sealed_as.as_deref());
            }
            Some((plain, sealed_as)) => match proto::bundle::decode_datagrams(plain) {
                Ok(items) => {
                    for d in items {
                        if self
                            .seals
                            .admits(&d, sealed_as.as_deref(), from, Some(self.tracker))
                        {
                            self.handle_one(now, from, d);
                        } else {
                            self.traffic.unsealed += 1;
                            log::debug!(
                                "dropped a datagram for {:?}: not sealed with its key",
                                d.group
                            );
                        }
                    }
                }
                Err(e) => {
                    self.traffic.malformed += 1;
                    log::debug!("dropped a datagram from {from}: {e}");
                }
            },
            // Counted (and logged once per source) by the opener.
            None => {}
        }
        self.opened = buf;
    }

    /// A compact datagram (see [`proto::compact`]): the checks of [`handle_one`] made once
    /// per run, then each message straight into the ordering core, borrowed from `plain`
    /// until its payload is copied out.
    ///
    /// [`handle_one`]: Self::handle_one
    fn handle_compact(
        &mut self,
        now: Instant,
        from: SocketAddr,
        plain: &[u8],
        sealed_as: Option<&str>,
    ) {
        match proto::compact::CompactDatagram::parse(plain) {
            Ok(compact) => {
                for run in compact.runs() {
                    self.handle_run(now, from, &run, sealed_as);
                }
            }
            Err(e) => {
                self.traffic.malformed += 1;
                log::debug!("dropped a datagram from {from}: {e}");
            }
        }
    }

    fn handle_run(
        &mut self,
        now: Instant,
        from: SocketAddr,
        run: &proto::compact::Run<'_>,
        sealed_as: Option<&str>,
    ) {
        let proto::compact::RunHeader {
            group,
            sender,
            addr,
        } = run.header;
        let n = run.len() as u64;
        if !self.seals.admits_messages(group, sealed_as) {
            self.traffic.unsealed += n;
            log::debug!("dropped messages for {group:?}: not sealed with its key");
            return;
        }
        let Some(state) = self.groups.get(group) else {
            self.traffic.unknown += n;
            log::debug!("dropped messages for group {group:?}, not joined");
            return;
        };
        if state
            .members
            .admits_sender(sender, Some(addr), from)
            .is_none()
        {
            if state.members.get(sender).is_some() {
                self.traffic.spoofed += n;
                log::debug!("dropped messages claiming to be {sender:?} from {from}");
            } else {
                self.traffic.unknown += n;
                log::debug!("dropped messages from unknown member {sender:?}");
            }
            return;
        }
        let from_sequencer = sender == SEQUENCER;
        // One name for consecutive messages of one author.
        let mut author: Option<Arc<str>> = None;
        // The epoch found to be our sequencer's already (it stays so for the run).
        let mut ours: Option<Option<u64>> = None;
        for item in run.items() {
            if ours != Some(item.epoch) {
                if self.is_another_sequencers_stream(now, group, sender, item.epoch) {
                    continue;
                }
                ours = Some(item.epoch);
            }
            let name = match item.origin {
                Some(origin) if from_sequencer => origin,
                _ => sender,
            };
            let origin = match &author {
                Some(a) if **a == *name => a.clone(),
                _ => author.insert(Arc::from(name)).clone(),
            };
            let received = Received {
                origin,
                origin_counter: item.origin_counter,
                payload: item.payload.to_vec(),
                sent_at_us: item.sent_at_us,
            };
            self.order(now, group, sender, item.counter, received);
        }
        self.pump(now);
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
