//! Total order across sequencers: which sequencer we follow (its epoch), noticing it is lost,
//! probing its address for a successor, and telling a successor what we delivered so that
//! nothing is delivered twice.

use super::*;

/// While the sequencer of a group is lost, how often to greet its address in case a new one
/// listens there. A new sequencer collects Hellos for `sequencer::TAKEOVER_WINDOW` (500 ms):
/// ten of ours fall in it, so at 20 % loss all of them are lost about once in ten million
/// (a member not heard in the window has its deliveries ignored by the successor).
pub(super) const SEQUENCER_PROBE: Duration = Duration::from_millis(50);

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
        if self.mode != Mode::Total
            || d.username != SEQUENCER
            || !matches!(
                d.kind,
                DatagramType::Application | DatagramType::Digest | DatagramType::Unavailable
            )
        {
            return false;
        }
        let ours = self
            .groups
            .get(&d.group)
            .and_then(|state| state.takeover.epoch);
        let (Some(ours), Some(theirs)) = (ours, d.epoch) else {
            return false;
        };
        if theirs == ours {
            return false;
        }
        self.traffic.other_epoch += 1;
        if theirs > ours {
            self.sequencer_lost(now, &d.group, "a new sequencer sends in its place");
            self.probe_sequencer(now, &d.group);
        }
        true
    }

    /// A Hello from a sequencer: one of another epoch than ours prompts us to greet it.
    pub(super) fn on_sequencer_hello(&mut self, now: Instant, d: Datagram) {
        let Some(state) = self.groups.get(&d.group) else {
            return;
        };
        if self.mode != Mode::Total
            || d.epoch.is_none()
            || state.takeover.epoch.is_none()
            || d.epoch == state.takeover.epoch
        {
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
        hello.epoch = state.takeover.epoch;
        hello.final_counter = self.tx.next_counter(group).map(|n| n.saturating_sub(1));
        hello.frontier = state
            .takeover
            .delivered
            .iter()
            .take(proto::MAX_FRONTIER)
            .map(|(author, c)| (author.to_string(), *c))
            .collect();
        let bytes = self.encode(&hello);
        self.transmit(to, bytes, false);
    }
}
