//! The Hello/HelloAck handshake: each member learns where the other's stream starts and which
//! protocol it speaks; Hellos are repeated until answered, and after our own eviction the
//! group is greeted afresh.

use super::*;

/// How long to wait for a member's answer to our Hello before asking again, and how many
/// times to ask (about a second: even at 30 % loss each way, twenty tries all fail about
/// once in a million); after that the ordering core's handshake timeout treats it as an old
/// peer, which never answers.
pub(super) const HELLO_RETRY: Duration = Duration::from_millis(50);

pub(super) const HELLO_ATTEMPTS: u32 = 20;

/// In total order, the sequencer is greeted until it answers, every this long once the
/// first [`HELLO_ATTEMPTS`] went unanswered: it always speaks the newer protocol, so its
/// silence means it cannot be reached (a partition, a restart), not that it is an old peer.
/// Until it answers it drops our messages as a stranger's.
pub(super) const SEQUENCER_HELLO_RETRY: Duration = Duration::from_millis(250);

/// One eviction of ours is told twice (the tracker's Bye, its refusal of our heartbeat):
/// within this long, the second is the same eviction.
pub(super) const SELF_EVICTION_DEBOUNCE: Duration = Duration::from_secs(2);

/// The Hello/HelloAck handshake with the group's members (its retry is
/// [`Timer::HelloRetry`]).
#[derive(Debug, Default)]
pub(super) struct Handshake {
    /// Hellos sent to the members that did not answer yet.
    pub(super) attempts: u32,
    /// In total order the other members are greeted only once the sequencer has welcomed
    /// us, so that a member who hears our Hello knows the sequencer includes us: otherwise it
    /// could start sending before our place in the sequence is fixed.
    pub(super) peers_greeted: bool,
    /// When we last greeted the group afresh after our own eviction: the tracker's notice
    /// and its refusal of our heartbeat both tell us, and greeting twice would make the
    /// others skip what we sent between the two.
    pub(super) greeted_after_eviction: Option<Instant>,
}

impl PeerCore {
    pub(super) fn on_hello(&mut self, now: Instant, from: SocketAddr, d: Datagram) {
        let group = d.group.as_str();
        let name = d.username.as_str();
        let Some(state) = self.groups.get_mut(group) else {
            return;
        };
        let known = state.members.get(name).cloned();
        let rejoined = match &known {
            None => true,
            Some(k) => k.addr != from || (k.start.is_some() && k.start != d.start),
        };
        // What we tell it of our stream: the same as before, unless it is new here.
        let our_start = known
            .as_ref()
            .filter(|_| !rejoined)
            .and_then(|k| k.our_start)
            .or_else(|| self.tx.next_counter(group))
            .unwrap_or(1);
        state.members.insert(
            name,
            MemberInfo {
                addr: from,
                proto: d.proto,
                start: d.start,
                heard: true,
                our_start: Some(our_start),
                multicast: d.multicast_group(),
            },
        );
        if self.mode == Mode::Fifo && name != SEQUENCER {
            // A member greeting again from the same place with a later start is its stream
            // going on (it was evicted while alive, and the tracker's word of it may have
            // been lost): it resumes where we stopped, and what it sent meanwhile is asked
            // for again.
            let going_on = known
                .as_ref()
                .filter(|k| k.addr == from)
                .and_then(|_| self.fifo.stream(group, name))
                .filter(|stream| stream.started)
                .map_or(u64::MAX, |stream| stream.next);
            let start = match (d.proto, d.start) {
                (Some(_), Some(s)) => Start::At(
                    self.groups
                        .get_mut(group)
                        .map_or(s, |g| g.members.resume_point(name, from, s))
                        .min(going_on),
                ),
                _ => Start::Legacy,
            };
            if rejoined || !self.fifo.has_sender(group, name) {
                self.fifo.add_sender(now, group, name, start);
            } else if let Start::At(s) = start {
                let _ = self.fifo.set_start(now, group, name, s);
            }
        }
        if rejoined {
            if let Some(state) = self.groups.get_mut(group) {
                // Its counters start again: what we skipped of its old stream is moot, and
                // so are the acknowledgements either way.
                state.forget_streams(name);
            }
            self.outputs.push_back(Output::Event(Event::Joined {
                group: group.to_owned(),
                member: name.to_owned(),
            }));
        }
        // In total order we answer only once the sequencer has welcomed us: an answer makes
        // the other member count us in, and it must not start sending before our place in
        // the sequence is fixed. `greet_peers` greets it then.
        let welcomed = self
            .groups
            .get(group)
            .is_some_and(|s| s.handshake.peers_greeted || self.mode == Mode::Fifo);
        if d.proto.is_some() && welcomed {
            let ack = self.control(DatagramType::HelloAck, group, our_start, None);
            self.transmit(group, from, ack, false);
        }
    }

    pub(super) fn on_hello_ack(&mut self, now: Instant, d: Datagram) {
        let group = d.group.as_str();
        let name = d.username.as_str();
        if let Some(m) = self
            .groups
            .get_mut(group)
            .and_then(|s| s.members.get_mut(name))
        {
            m.proto = d.proto.or(m.proto);
            if d.proto.is_some() {
                m.multicast = d.multicast_group();
            }
            if !m.heard {
                log::debug!("handshake with {name} in {group} done (its HelloAck)");
            }
            m.heard = true;
        }
        let Some(start) = d.start else { return };
        match (self.mode, name == SEQUENCER) {
            (Mode::Total, true) => {
                self.on_sequencer_ack(now, group, start, &d);
                self.greet_peers(group);
            }
            (Mode::Fifo, false) => {
                let _ = self.fifo.set_start(now, group, name, start);
            }
            _ => {}
        }
    }

    /// Sends our Hello to the members other than the sequencer, once.
    pub(super) fn greet_peers(&mut self, group: &str) {
        let Some(state) = self.groups.get_mut(group) else {
            return;
        };
        if state.handshake.peers_greeted {
            return;
        }
        state.handshake.peers_greeted = true;
        let targets: Vec<(SocketAddr, Option<u64>)> = state
            .members
            .iter()
            // Members whose Hello came before our welcome were not answered: greet them too.
            .filter(|(name, _)| name.as_str() != SEQUENCER)
            .map(|(_, m)| (m.addr, m.our_start))
            .collect();
        for (to, our_start) in targets {
            let start = our_start
                .or_else(|| self.tx.next_counter(group))
                .unwrap_or(1);
            let hello = self.control(DatagramType::Hello, group, start, None);
            self.transmit(group, to, hello, false);
        }
    }

    /// Greets the members of `group` that did not answer our Hello yet, again: at most
    /// [`HELLO_ATTEMPTS`] times (the report's peers never answer, and a repeated Hello
    /// would reset their count of our stream); the sequencer, which always answers when it
    /// can be reached, until it does. In total order, once the sequencer gave no answer to
    /// the first attempts, the other members are greeted all the same.
    pub(super) fn greet_again(&mut self, now: Instant, group: &str) {
        let Some(state) = self.groups.get_mut(group) else {
            return;
        };
        state.handshake.attempts += 1;
        let patient = state.handshake.attempts < HELLO_ATTEMPTS;
        let sequencer_silent =
            self.mode == Mode::Total && state.members.get(SEQUENCER).is_some_and(|m| !m.heard);
        state.timers[Timer::HelloRetry] = if patient {
            Some(now + HELLO_RETRY)
        } else {
            sequencer_silent.then(|| now + SEQUENCER_HELLO_RETRY)
        };
        let give_up_on_sequencer = !patient && !state.handshake.peers_greeted;
        // A lost sequencer is greeted by `probe_sequencer`, with what a successor needs.
        let sequencer_lost = state.timers[Timer::SequencerProbe].is_some();
        let mut resend = Vec::new();
        for (name, m) in state.members.iter() {
            let is_sequencer = name == SEQUENCER;
            if is_sequencer && sequencer_lost {
                continue;
            }
            let wanted = !m.heard
                && match self.mode {
                    Mode::Fifo => !is_sequencer,
                    // Past the first attempts, only the sequencer is greeted again.
                    Mode::Total => is_sequencer || (patient && state.handshake.peers_greeted),
                };
            if wanted {
                resend.push((m.addr, m.our_start));
            }
        }
        if give_up_on_sequencer {
            self.greet_peers(group);
        }
        for (to, our_start) in resend {
            // The same start as the first Hello: the member may have recorded it already.
            let start = our_start
                .or_else(|| self.tx.next_counter(group))
                .unwrap_or(1);
            let hello = self.control(DatagramType::Hello, group, start, None);
            self.transmit(group, to, hello, false);
        }
    }

    /// The tracker evicted us from `group` and told its members, who forgot us: greet them
    /// again with our stream starting at our next message (what they did not deliver of the
    /// old one they dropped; nothing is delivered twice). Called on the tracker's Bye naming
    /// us, or by the caller when the tracker no longer knows us.
    pub fn on_self_evicted(&mut self, now: Instant, group: &str) {
        let (Some(next), Some(state)) = (self.tx.next_counter(group), self.groups.get_mut(group))
        else {
            return;
        };
        if state
            .handshake
            .greeted_after_eviction
            .is_some_and(|at| now.saturating_duration_since(at) < SELF_EVICTION_DEBOUNCE)
        {
            return;
        }
        state.handshake.greeted_after_eviction = Some(now);
        let mut greet = Vec::new();
        for (name, m) in state.members.iter_mut() {
            m.heard = false;
            m.our_start = Some(next);
            let wanted = match self.mode {
                Mode::Fifo => name != SEQUENCER,
                Mode::Total => name == SEQUENCER || state.handshake.peers_greeted,
            };
            if wanted {
                greet.push(m.addr);
            }
        }
        state.handshake.attempts = 1;
        state.timers[Timer::HelloRetry] = Some(now + HELLO_RETRY);
        self.traffic.times_evicted += 1;
        let hello = self.control(DatagramType::Hello, group, next, None);
        for to in greet {
            self.transmit(group, to, hello.clone(), false);
        }
        self.outputs.push_back(Output::Event(Event::WeWereEvicted {
            group: group.to_owned(),
        }));
    }
}
