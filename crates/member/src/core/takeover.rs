//! Total order across sequencers: which sequencer we follow (its epoch), noticing it is lost,
//! probing its address for a successor, and telling a successor what we delivered so that
//! nothing is delivered twice.

use super::*;

/// While the sequencer of a group is lost, how often to greet its address in case a new one
/// listens there. A new sequencer collects Hellos for `sequencer::TAKEOVER_WINDOW` (500 ms):
/// ten of ours fall in it, so at 20 % loss all of them are lost about once in ten million
/// (a member not heard in the window has its deliveries ignored by the successor).
pub(super) const SEQUENCER_PROBE: Duration = Duration::from_millis(50);

/// How many of the last messages delivered from the sequencer we keep, and how many bytes
/// of their payloads at most: a successor asks the member that delivered furthest for what
/// others lack (see the sequencer's `recovery`), which is what the dying sequencer had sent
/// to some members only, or what a member had not recovered yet.
pub(super) const TAIL_MESSAGES: usize = 4096;
pub(super) const TAIL_BYTES: usize = 4 << 20;

/// Most messages sent in answer to one `Recover`: bounds what one datagram can make us send
/// (the successor asks again for the rest).
const RECOVERED_PER_REQUEST: usize = 1024;

/// A message delivered from the sequencer we follow (or passed over, delivered before a
/// takeover), with its number in that sequencer's sequence; its author's name and its
/// payload are the next `origin_len + payload_len` bytes of [`Tail::bytes`].
#[derive(Debug, Clone, Copy)]
struct Kept {
    seq: u64,
    origin_counter: u64,
    sent_at_us: Option<u64>,
    origin_len: u32,
    payload_len: u32,
}

/// The last messages delivered, oldest first: what each is, and their names and payloads
/// back to back in one ring of bytes, so that keeping one (every delivery in total order)
/// neither allocates nor counts references.
#[derive(Debug, Default)]
struct Tail {
    kept: VecDeque<Kept>,
    bytes: VecDeque<u8>,
    /// Payload bytes in `bytes` (the names are not counted against [`TAIL_BYTES`]).
    payload_bytes: usize,
}

impl Tail {
    fn push(&mut self, seq: u64, m: &Received, origin_counter: u64) {
        let (Ok(origin_len), Ok(payload_len)) = (
            u32::try_from(m.origin.len()),
            u32::try_from(m.payload.len()),
        ) else {
            return;
        };
        self.kept.push_back(Kept {
            seq,
            origin_counter,
            sent_at_us: m.sent_at_us,
            origin_len,
            payload_len,
        });
        self.bytes.extend(m.origin.as_bytes());
        self.bytes.extend(&m.payload);
        self.payload_bytes += m.payload.len();
        while self.kept.len() > TAIL_MESSAGES || self.payload_bytes > TAIL_BYTES {
            let Some(old) = self.kept.pop_front() else {
                break;
            };
            self.payload_bytes -= old.payload_len as usize;
            self.bytes
                .drain(..(old.origin_len as usize + old.payload_len as usize));
        }
    }

    fn clear(&mut self) {
        self.kept.clear();
        self.bytes.clear();
        self.payload_bytes = 0;
    }

    /// Each message kept whose number `wanted` says, oldest first, with its author's name
    /// and its payload.
    fn find<'a>(
        &'a self,
        mut wanted: impl FnMut(u64) -> bool + 'a,
    ) -> impl Iterator<Item = (Kept, String, Vec<u8>)> + 'a {
        let mut at = 0;
        self.kept.iter().filter_map(move |k| {
            let origin_at = at;
            let payload_at = at + k.origin_len as usize;
            at = payload_at + k.payload_len as usize;
            if !wanted(k.seq) {
                return None;
            }
            let origin = self.bytes.range(origin_at..payload_at).copied().collect();
            let payload = self.bytes.range(payload_at..at).copied().collect();
            Some((*k, String::from_utf8(origin).ok()?, payload))
        })
    }
}

/// Total order: which sequencer we follow and what a successor must not deliver again
/// (probing a lost one is [`Timer::SequencerProbe`]).
#[derive(Debug, Default)]
pub(super) struct Takeover {
    /// The epoch of the sequencer we deliver from (its HelloAck's).
    pub(super) epoch: Option<u64>,
    /// Each author's highest counter delivered, told to a new sequencer.
    pub(super) delivered: HashMap<Arc<str>, u64>,
    /// After a takeover: per author, the counter up to which what the new sequencer sends
    /// was delivered already (from the old one). An entry goes at the first message beyond
    /// it.
    pub(super) skip_through: HashMap<Arc<str>, u64>,
    /// The last messages delivered from the sequencer of [`epoch`](Self::epoch), oldest
    /// first, for a successor that asks (`Recover`).
    tail: Tail,
}

impl Takeover {
    /// Keeps a message delivered (or passed over) with number `seq`, forgetting the oldest
    /// beyond [`TAIL_MESSAGES`] and [`TAIL_BYTES`].
    pub(super) fn keep(&mut self, seq: u64, m: &Received) {
        let Some(origin_counter) = m.origin_counter else {
            return;
        };
        if self.epoch.is_none() {
            // The report's sequencer: no successor of it asks.
            return;
        }
        self.tail.push(seq, m, origin_counter);
    }
}

impl PeerCore {
    /// The sequencer's HelloAck: where its sequence starts for us. From a sequencer of
    /// another epoch than the one we delivered from, it took the group over: its sequence
    /// replaces the old one, and our messages it lacks go to it again.
    pub(super) fn on_sequencer_ack(&mut self, now: Instant, group: &str, start: u64, d: &Datagram) {
        let Some(state) = self.groups.get_mut(group) else {
            return;
        };
        let was_lost = state.timers[Timer::SequencerProbe].take().is_some();
        let new = match (state.takeover.epoch, d.epoch) {
            (Some(old), Some(epoch)) => old != epoch,
            _ => false,
        };
        if d.epoch.is_some() {
            state.takeover.epoch = d.epoch;
        }
        if !new {
            let _ = self.total.set_start(now, group, start);
            if was_lost {
                log::info!("the sequencer of {group} answers again: total order resumes");
                self.outputs.push_back(Output::Event(Event::SequencerBack {
                    group: group.to_owned(),
                    new: false,
                }));
            }
            return;
        }
        // Nothing held from the old sequence can be delivered any more: the new one
        // sequences again whatever no member delivered.
        state.takeover.skip_through = state.takeover.delivered.clone();
        state.takeover.tail.clear();
        self.total.leave(group);
        self.total.join(now, group, Start::At(start));
        self.traffic.sequencer_takeovers += 1;
        if let Some(resume) = d.resume {
            let _ = self.tx.resend_from(now, group, SEQUENCER, resume);
        }
        log::info!(
            "a new sequencer took {group} over: its sequence starts at {start} for us, our messages resume from {:?}",
            d.resume
        );
        self.outputs.push_back(Output::Event(Event::SequencerBack {
            group: group.to_owned(),
            new: true,
        }));
    }

    /// Whether `d`, from the sequencer's address, belongs to another sequencer's sequence
    /// than the one we follow (its epoch differs): then it is dropped, for its numbers are
    /// not ours. A later epoch means a new sequencer took over: we greet it. Only in total
    /// order, and only once we know our sequencer's epoch (the report's has none).
    pub(super) fn is_another_sequencers(&mut self, now: Instant, d: &Datagram) -> bool {
        matches!(
            d.kind,
            DatagramType::Application | DatagramType::Digest | DatagramType::Unavailable
        ) && self.is_another_sequencers_stream(now, &d.group, &d.username, d.epoch)
    }

    /// [`is_another_sequencers`](Self::is_another_sequencers) for a datagram of the
    /// sequence (a message, Digest or Unavailable) of `group` sent by `sender`, naming
    /// `epoch`.
    pub(super) fn is_another_sequencers_stream(
        &mut self,
        now: Instant,
        group: &str,
        sender: &str,
        epoch: Option<u64>,
    ) -> bool {
        if self.mode != Mode::Total || sender != SEQUENCER {
            return false;
        }
        let started = self.total.stream(group).is_some_and(|s| s.started);
        let Some(state) = self.groups.get_mut(group) else {
            return false;
        };
        if state.takeover.epoch.is_none() && !started && epoch.is_some() {
            // Its HelloAck to us is late or lost, but only a sequencer that admitted us
            // names its epoch to us: that is the sequencer we follow (not the report's),
            // and its HelloAck will come.
            state.takeover.epoch = epoch;
            let _ = self.total.expect_start(group);
        }
        let (Some(ours), Some(theirs)) = (state.takeover.epoch, epoch) else {
            return false;
        };
        if theirs == ours {
            return false;
        }
        self.traffic.other_epoch += 1;
        if theirs > ours {
            self.sequencer_lost(now, group, "a new sequencer sends in its place");
            self.probe_sequencer(now, group);
        }
        true
    }

    /// A Hello from a sequencer: one of another epoch than ours prompts us to greet it.
    pub(super) fn on_sequencer_hello(&mut self, now: Instant, d: Datagram) {
        let Some(state) = self.groups.get(&d.group) else {
            return;
        };
        if self.mode != Mode::Total || d.epoch.is_none() {
            return;
        }
        // A sequencer that names its epoch is ours, not the report's: it will tell us our
        // place in its sequence (it is still collecting its members' Hellos, say), so we
        // wait for that rather than take the first message that comes for the start.
        let _ = self.total.expect_start(&d.group);
        if state.takeover.epoch.is_none() || d.epoch == state.takeover.epoch {
            return;
        }
        self.sequencer_lost(now, &d.group, "a new sequencer listens in its place");
        self.probe_sequencer(now, &d.group);
    }

    /// Total order in `group` is unavailable until a sequencer answers.
    pub(super) fn sequencer_lost(&mut self, now: Instant, group: &str, reason: &str) {
        let Some(state) = self.groups.get_mut(group) else {
            return;
        };
        if state.timers[Timer::SequencerProbe].is_some() {
            return;
        }
        state.timers[Timer::SequencerProbe] = Some(now + SEQUENCER_PROBE);
        self.traffic.sequencer_losses += 1;
        if !self.total.stream(group).is_some_and(|s| s.started) {
            // It never told us where our place in its sequence was: nothing it sent us may
            // be delivered (not even as the report's sequencer's, after the handshake's
            // time). We wait for our place in a successor's — for as long as it takes
            // when the sequencer named its epoch (ours, not the report's).
            let ours = state.takeover.epoch.is_some();
            self.total.leave(group);
            self.total.join(now, group, Start::Handshake);
            if ours {
                let _ = self.total.expect_start(group);
            }
        }
        log::info!(
            "total order unavailable in {group}: lost the sequencer ({reason}); nothing is delivered out of order, messages wait for a sequencer"
        );
        self.outputs.push_back(Output::Event(Event::SequencerLost {
            group: group.to_owned(),
            reason: reason.to_owned(),
        }));
    }

    /// Greets the sequencer's address while it is lost: our old epoch, what we delivered of
    /// each author, and where our own stream must resume.
    pub(super) fn probe_sequencer(&mut self, now: Instant, group: &str) {
        let through = self
            .total
            .stream(group)
            .filter(|s| s.started)
            .map(|s| s.next.saturating_sub(1));
        let Some(state) = self.groups.get_mut(group) else {
            return;
        };
        let Some(seq) = state.members.get(SEQUENCER) else {
            return;
        };
        state.timers[Timer::SequencerProbe] = Some(now + SEQUENCER_PROBE);
        let to = seq.addr;
        let start = state
            .takeover
            .delivered
            .get(&*self.me)
            .map(|c| c + 1)
            .or(seq.our_start)
            .unwrap_or(1);
        let mut hello = Datagram::new(
            DatagramType::Hello,
            group,
            &*self.me,
            "",
            self.addr,
            start,
            &*self.me,
        );
        hello.proto = Some(PROTOCOL_VERSION);
        hello.start = Some(start);
        hello.multicast = self.multicast;
        hello.epoch = state.takeover.epoch;
        hello.through = through;
        hello.final_counter = self.tx.next_counter(group).map(|n| n.saturating_sub(1));
        hello.frontier = state
            .takeover
            .delivered
            .iter()
            .take(proto::MAX_FRONTIER)
            .map(|(author, c)| (author.to_string(), *c))
            .collect();
        let bytes = self.encode(&hello);
        self.transmit(group, to, bytes, false);
    }

    /// A new sequencer's request for what we delivered of our sequencer's sequence: the
    /// messages of the numbers asked that our tail still holds, each in a `Recovered`.
    pub(super) fn on_recover(&mut self, d: &Datagram) {
        if self.mode != Mode::Total || d.username != SEQUENCER {
            return;
        }
        let Some(state) = self.groups.get(&d.group) else {
            return;
        };
        let (Some(epoch), Some(sequencer)) = (d.epoch, state.members.get(SEQUENCER)) else {
            return;
        };
        if state.takeover.epoch != Some(epoch) {
            return;
        }
        let to = sequencer.addr;
        let ranges = ranges_of(&d.ranges);
        let answers: Vec<Arc<[u8]>> = state
            .takeover
            .tail
            .find(|seq| ranges.iter().any(|r| r.contains(&seq)))
            .take(RECOVERED_PER_REQUEST)
            .map(|(k, origin, payload)| {
                let mut m = Datagram::new(
                    DatagramType::Recovered,
                    &d.group,
                    &*self.me,
                    "",
                    self.addr,
                    k.seq,
                    origin,
                );
                m.set_payload(&payload);
                m.sent_at_us = k.sent_at_us;
                m.origin_counter = Some(k.origin_counter);
                m.epoch = Some(epoch);
                self.encode(&m)
            })
            .collect();
        log::info!(
            "the new sequencer of {} asks for {} message(s) we delivered: sending {}",
            d.group,
            ranges.iter().fold(0u64, |n, r| n
                .saturating_add(r.end().saturating_sub(*r.start()))
                .saturating_add(1)),
            answers.len()
        );
        for bytes in answers {
            self.transmit(&d.group, to, bytes, true);
        }
    }
}

#[cfg(test)]
mod tail_tests {
    use super::*;

    fn received(origin: &str, payload: &[u8], counter: u64) -> Received {
        Received {
            origin: Arc::from(origin),
            origin_counter: Some(counter),
            payload: payload.to_vec(),
            sent_at_us: Some(counter * 10),
        }
    }

    #[test]
    fn the_tail_gives_back_each_kept_message_whole_and_forgets_the_oldest_beyond_its_bounds() {
        let mut tail = Tail::default();
        let total = TAIL_MESSAGES as u64 + 10;
        for seq in 1..=total {
            let author = if seq % 2 == 0 { "ann" } else { "bartholomew" };
            let payload = format!("message {seq}");
            tail.push(
                seq,
                &received(author, payload.as_bytes(), seq + 100),
                seq + 100,
            );
        }
        assert_eq!(tail.kept.len(), TAIL_MESSAGES);
        // The first ten went; the rest come back as they were, names and payloads in place.
        assert_eq!(tail.find(|seq| seq <= 10).count(), 0);
        let found: Vec<_> = tail
            .find(|seq| seq == 11 || seq == 12 || seq == total)
            .collect();
        let seen: Vec<_> = found
            .iter()
            .map(|(k, origin, payload)| {
                (
                    k.seq,
                    k.origin_counter,
                    k.sent_at_us,
                    origin.as_str(),
                    payload.clone(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                (11, 111, Some(1110), "bartholomew", b"message 11".to_vec()),
                (12, 112, Some(1120), "ann", b"message 12".to_vec()),
                (
                    total,
                    total + 100,
                    Some((total + 100) * 10),
                    "ann",
                    format!("message {total}").into_bytes()
                ),
            ]
        );
        // Big payloads: the byte bound holds.
        let big = vec![7u8; TAIL_BYTES / 4];
        for seq in total + 1..=total + 8 {
            tail.push(seq, &received("ann", &big, seq), seq);
        }
        assert!(tail.payload_bytes <= TAIL_BYTES);
        assert_eq!(tail.find(|_| true).count(), 4);
        assert!(tail.find(|_| true).all(|(_, o, p)| o == "ann" && p == big));
        tail.clear();
        assert_eq!(tail.find(|_| true).count(), 0);
        assert!(tail.bytes.is_empty());
    }
}
