//! Messages in and out: sending (with the checks for report peers), application datagrams
//! into the ordering cores, Digests and Unavailable notices, and the pump that turns the
//! ordering cores' outputs into deliveries and datagrams.

use super::*;

/// The JSON form of `d`, our message of `payload`, if the report's peers could read it (else
/// how long a text may be).
fn checked_json(d: &Datagram, payload: &[u8]) -> Result<Vec<u8>, Error> {
    d.encode(LEGACY_DATAGRAM_LEN).map_err(|e| {
        // What the datagram spends besides the payload is the same for any payload: the
        // rest of the limit is what a text of plain characters may take.
        let carried = d.data.as_ref().map_or_else(
            || serde_json::to_string(&d.content).map_or(d.content.len(), |t| t.len() - 2),
            String::len,
        );
        let overhead = match e {
            proto::Error::Oversized { len, .. } => len.saturating_sub(carried),
            _ => 0,
        };
        Error::TooLong {
            chars: String::from_utf8_lossy(payload).chars().count(),
            max_chars: LEGACY_DATAGRAM_LEN.saturating_sub(overhead),
        }
    })
}

impl PeerCore {
    /// Multicasts `payload` to `group`, stamped with `sent_at_us`; returns its counter.
    /// UTF-8 text reaches every member; other bytes only groups whose members all speak the
    /// newer protocol (the report's peers read text only), else [`Error::NotText`].
    pub fn send(
        &mut self,
        now: Instant,
        group: &str,
        payload: &[u8],
        sent_at_us: u64,
    ) -> Result<u64, Error> {
        let counter = self
            .tx
            .next_counter(group)
            .ok_or_else(|| Error::NotJoined {
                group: group.to_owned(),
            })?;
        let text = std::str::from_utf8(payload).is_ok();
        if !text && let Some(member) = self.reader_of_text_only(group) {
            return Err(Error::NotText {
                group: group.to_owned(),
                member,
            });
        }
        // Members that all read the compact encoding get it, made straight from the parts.
        // The JSON form is made only to check the length every member must be able to read
        // (a member that joins later gets the message in JSON), unless it could not be too
        // long whatever the text: each byte escaped as `\u00XX` at worst, names and the
        // address likewise, or the payload in base64.
        let json_at_most = 256
            + 6 * (group.len() + 2 * self.me.len() + 45)
            + if text { 6 } else { 2 } * payload.len();
        let compact = (json_at_most <= LEGACY_DATAGRAM_LEN && self.audience_reads_compact(group))
            .then(|| self.compact_message(group, counter, payload, sent_at_us))
            .flatten();
        let bytes = match compact {
            Some(compact) => compact,
            None => {
                let mut d = Datagram::new(
                    DatagramType::Application,
                    group,
                    &*self.me,
                    "",
                    self.addr,
                    counter,
                    &*self.me,
                );
                d.set_payload(payload);
                d.sent_at_us = Some(sent_at_us);
                let json = checked_json(&d, payload)?;
                self.audience_reads_compact(group)
                    .then(|| proto::compact::from_datagram(&d))
                    .flatten()
                    .unwrap_or(json)
            }
        };
        let sent = self
            .tx
            .send(now, group, Arc::from(bytes))
            .map_err(|_| Error::NotJoined {
                group: group.to_owned(),
            })?;
        debug_assert_eq!(sent, counter);
        self.sent_tail(now, group);
        if self.mode == Mode::Fifo {
            // B-multicast includes ourselves: our own stream is delivered here, in order.
            let me = self.me.clone();
            let _ = self.fifo.handle_message(
                now,
                group,
                &me,
                counter,
                Received {
                    origin: me.clone(),
                    origin_counter: Some(counter),
                    payload: payload.to_vec(),
                    sent_at_us: Some(sent_at_us),
                },
            );
        }
        self.pump(now);
        Ok(counter)
    }

    /// Our message `counter` of `group` in the compact encoding (`None` if a name is too
    /// long for its layout).
    pub(super) fn compact_message(
        &self,
        group: &str,
        counter: u64,
        payload: &[u8],
        sent_at_us: u64,
    ) -> Option<Vec<u8>> {
        let header = proto::compact::RunHeader {
            group,
            sender: &self.me,
            addr: self.addr,
        };
        let item = proto::compact::Item {
            counter,
            sent_at_us: Some(sent_at_us),
            origin_counter: None,
            epoch: None,
            origin: None,
            payload,
        };
        let mut out = Vec::with_capacity(64 + group.len() + self.me.len() + payload.len());
        proto::compact::encode_into(&mut out, &header, &item).ok()?;
        Some(out)
    }

    /// A member of `group` that could not read a binary payload: one of the report's peers,
    /// or one that has not announced its protocol yet (in total order, the sequencer,
    /// which forwards it to everyone).
    pub(super) fn reader_of_text_only(&self, group: &str) -> Option<String> {
        let state = self.groups.get(group)?;
        state
            .members
            .iter()
            .find(|(name, m)| {
                m.proto.is_none() && (name.as_str() != SEQUENCER || self.mode == Mode::Total)
            })
            .map(|(name, _)| name.clone())
    }

    pub(super) fn on_application(&mut self, now: Instant, mut d: Datagram) {
        let from_sequencer = d.username == SEQUENCER;
        let Ok(bytes) = d.take_payload() else {
            self.traffic.malformed += 1;
            log::debug!(
                "dropped a message from {:?}: its Data is not base64",
                d.username
            );
            return;
        };
        let payload = Received {
            origin: Arc::from(
                if from_sequencer {
                    &d.origin
                } else {
                    &d.username
                }
                .as_str(),
            ),
            origin_counter: d.origin_counter,
            payload: bytes,
            sent_at_us: d.sent_at_us,
        };
        self.order(now, &d.group, &d.username, d.counter, payload);
    }

    /// A message of `sender` (an author, or the sequencer with its copy) into the ordering
    /// core of our mode; one of the other mode is counted and dropped.
    pub(super) fn order(
        &mut self,
        now: Instant,
        group: &str,
        sender: &str,
        counter: u64,
        received: Received,
    ) {
        let accepted = match (self.mode, sender == SEQUENCER) {
            (Mode::Fifo, false) => self
                .fifo
                .handle_message(now, group, sender, counter, received)
                .is_ok(),
            (Mode::Total, true) => self
                .total
                .handle_sequenced(now, group, counter, received)
                .is_ok(),
            _ => false,
        };
        if !accepted {
            self.traffic.other_mode += 1;
        }
    }

    pub(super) fn on_digest(&mut self, now: Instant, d: Datagram) {
        if d.username != SEQUENCER && self.flow_window > 0 {
            // An author asking how far we are (its window is closed), or idle.
            self.send_ack(&d.group, &d.username);
        }
        match (self.mode, d.username == SEQUENCER) {
            (Mode::Fifo, false) => {
                let _ = self
                    .fifo
                    .handle_digest(now, &d.group, &d.username, d.counter);
            }
            (Mode::Total, true) => {
                let _ = self.total.handle_digest(now, &d.group, d.counter);
            }
            _ => {}
        }
    }

    pub(super) fn on_unavailable(&mut self, now: Instant, d: Datagram) {
        let ranges = ranges_of(&d.ranges);
        match (self.mode, d.username == SEQUENCER) {
            (Mode::Fifo, false) => {
                let _ = self
                    .fifo
                    .handle_unavailable(now, &d.group, &d.username, &ranges);
            }
            (Mode::Total, true) => {
                let _ = self.total.handle_unavailable(now, &d.group, &ranges);
            }
            _ => {}
        }
    }

    /// Total order: records that `m` is delivered in the group of `state`; false if it was
    /// delivered already, from a sequencer before a takeover.
    pub(super) fn first_delivery(state: &mut GroupState, m: &Received) -> bool {
        let Some(counter) = m.origin_counter else {
            return true;
        };
        if let Some(&through) = state.takeover.skip_through.get(&m.origin) {
            if counter <= through {
                return false;
            }
            state.takeover.skip_through.remove(&m.origin);
        }
        match state.takeover.delivered.get_mut(&m.origin) {
            Some(c) => *c = counter,
            None => {
                state.takeover.delivered.insert(m.origin.clone(), counter);
            }
        }
        true
    }

    /// Turns what the ordering cores want into datagrams and deliveries.
    pub(super) fn pump(&mut self, now: Instant) {
        while let Some(out) = self.tx.poll_output() {
            match out {
                Order::Multicast { group, payload, .. } => {
                    let seal = self.seals.sealer(&group);
                    for dest in self.destinations(&group).iter() {
                        self.transmit_to(*dest, payload.clone(), seal.clone(), true);
                    }
                }
                Order::Retransmit {
                    to, group, payload, ..
                } => {
                    if let Some(addr) = self.newer_member(&group, &to) {
                        self.transmit(&group, addr, payload, true);
                    }
                }
                Order::Digest { group, highest } => {
                    let digest = self.control(DatagramType::Digest, &group, highest, None);
                    for to in self.audience(&group, true) {
                        self.transmit(&group, to, digest.clone(), false);
                    }
                }
                Order::Unavailable { to, group, ranges } => {
                    if let Some(addr) = self.newer_member(&group, &to) {
                        let me = self.me.clone();
                        let d = self.control(
                            DatagramType::Unavailable,
                            &group,
                            0,
                            Some((&me, &ranges)),
                        );
                        self.transmit(&group, addr, d, false);
                    }
                }
                Order::Deliver(_) | Order::Nack { .. } => {}
            }
        }
        loop {
            let out = match self.mode {
                Mode::Fifo => self.fifo.poll_output(),
                Mode::Total => self.total.poll_output(),
            };
            let Some(out) = out else { break };
            match out {
                Order::Deliver(d) => {
                    // The group's state looked up once for all a delivery touches.
                    let mut ack_due = false;
                    if let Some(state) = self.groups.get_mut(&*d.group) {
                        if self.mode == Mode::Total {
                            state.takeover.keep(d.counter, &d.payload);
                            if !Self::first_delivery(state, &d.payload) {
                                self.traffic.already_delivered += 1;
                                continue;
                            }
                        }
                        let author_counter = match self.mode {
                            Mode::Fifo => Some(d.counter),
                            Mode::Total => d.payload.origin_counter,
                        };
                        if let Some(c) = author_counter {
                            ack_due = Self::owes_ack(
                                state,
                                now,
                                &d.payload.origin,
                                c,
                                self.flow_window,
                                &self.me,
                                self.mode,
                            );
                        }
                    }
                    if ack_due {
                        self.send_ack(&d.group, &d.payload.origin);
                    }
                    self.outputs.push_back(Output::Deliver(Message {
                        group: d.group,
                        author: d.payload.origin,
                        counter: d.counter,
                        payload: d.payload.payload,
                        sent_at_us: d.payload.sent_at_us,
                    }));
                }
                Order::Nack { to, group, ranges } => {
                    if let Some(addr) = self.newer_member(&group, &to) {
                        let first = ranges.first().map_or(0, |r| *r.start());
                        let nack =
                            self.control(DatagramType::Nack, &group, first, Some((&to, &ranges)));
                        self.transmit(&group, addr, nack, false);
                    }
                }
                _ => {}
            }
        }
    }
}
