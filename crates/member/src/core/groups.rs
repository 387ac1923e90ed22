//! Joining and leaving groups: the tracker's list becomes our members, and after we leave,
//! our Bye is repeated and the tail of our stream stays available for a while. Members that
//! leave or are evicted are forgotten here too.

use super::*;

/// After leaving a group, how long we still answer requests for the tail of our stream
/// there: the members wait `bye_grace` (1 s) for it after our Bye.
pub(super) const LINGER: Duration = Duration::from_secs(2);

/// When our Bye is said again after leaving (a lost Bye would leave the members waiting
/// for our stream, and a lost last message with it unnoticed).
pub(super) const BYE_REPEATS: [Duration; 2] =
    [Duration::from_millis(50), Duration::from_millis(250)];

/// A group we left a moment ago.
#[derive(Debug)]
pub(super) struct Departed {
    pub(super) members: Members,
    pub(super) bye: Arc<[u8]>,
    pub(super) left_at: Instant,
    pub(super) byes_repeated: usize,
}

impl Departed {
    /// When something is next due: a repeated Bye, or the end of the linger.
    pub(super) fn due(&self) -> Instant {
        BYE_REPEATS
            .get(self.byes_repeated)
            .map_or(self.left_at + LINGER, |d| self.left_at + *d)
    }
}

impl PeerCore {
    /// We joined `group`; `members` is the tracker's list after the join. Sends a Hello to
    /// every other member and prepares their streams. Joining a group already joined (after
    /// the tracker came back) only greets members not known yet.
    pub fn join(&mut self, now: Instant, group: &str, members: &[proto::Member]) {
        // Joining again ends what was left of an earlier stay (its stream starts afresh).
        self.departed.remove(group);
        let start = self.tx.open(group);
        let fresh = !self.groups.contains_key(group);
        let state = self.groups.entry(group.to_owned()).or_default();
        let mut greet = Vec::new();
        for m in members {
            if *m.username == *self.me || state.members.get(&m.username).is_some() {
                continue;
            }
            let Ok(ip) = m.ip.parse::<IpAddr>() else {
                continue;
            };
            let addr = SocketAddr::new(ip, m.port);
            state.members.insert(
                &m.username,
                MemberInfo {
                    our_start: Some(start),
                    ..MemberInfo::listed(addr)
                },
            );
            if m.username == SEQUENCER {
                if self.mode == Mode::Total {
                    greet.push(addr);
                }
                continue;
            }
            match self.mode {
                Mode::Fifo => {
                    self.fifo
                        .add_sender(now, group, &m.username, Start::Handshake);
                    greet.push(addr);
                }
                // Greeted once the sequencer has answered (see `peers_greeted`).
                Mode::Total if state.handshake.peers_greeted => greet.push(addr),
                Mode::Total => {}
            }
        }
        if fresh {
            match self.mode {
                Mode::Fifo => {
                    self.fifo.add_sender(now, group, &self.me, Start::At(start));
                    state.handshake.peers_greeted = true;
                }
                Mode::Total => self.total.join(now, group, Start::Handshake),
            }
            state.handshake.attempts = 1;
            state.timers[Timer::HelloRetry] = Some(now + HELLO_RETRY);
        }
        let hello = self.control(DatagramType::Hello, group, start, None);
        for to in greet {
            self.transmit(group, to, hello.clone(), false);
        }
    }

    /// We leave `group`: every member gets a Bye with our final counter (again a little
    /// later, in case it is lost), and for a while we still answer their requests for the
    /// tail of our stream. Returns false if the group was not joined.
    pub fn leave(&mut self, now: Instant, group: &str) -> bool {
        let Some(state) = self.groups.remove(group) else {
            return false;
        };
        let final_counter = self.tx.close(group).unwrap_or(0);
        let mut bye = Datagram::new(
            DatagramType::Bye,
            group,
            &*self.me,
            "",
            self.addr,
            final_counter,
            &*self.me,
        );
        bye.final_counter = Some(final_counter);
        let bytes = self.encode(&bye);
        for (_, m) in state.members.iter() {
            self.transmit(group, m.addr, bytes.clone(), false);
        }
        self.fifo.remove_group(group);
        self.total.leave(group);
        self.departed.insert(
            group.to_owned(),
            Departed {
                members: state.members,
                bye: bytes,
                left_at: now,
                byes_repeated: 0,
            },
        );
        true
    }

    /// Groups we left: our Bye again when due, and the end of the linger (our stream there
    /// is forgotten).
    pub(super) fn linger(&mut self, now: Instant) {
        let mut again = Vec::new();
        self.departed.retain(|group, d| {
            while d.due() <= now && d.byes_repeated < BYE_REPEATS.len() {
                d.byes_repeated += 1;
                again.extend(
                    d.members
                        .iter()
                        .map(|(_, m)| (group.clone(), m.addr, d.bye.clone())),
                );
            }
            let keep = d.due() > now;
            if !keep {
                log::debug!("forgot our stream in {group}: nobody asked for its tail");
            }
            keep
        });
        for (group, to, bye) in again {
            self.transmit(&group, to, bye, false);
        }
        let gone: Vec<String> = self
            .tx
            .closed_groups()
            .filter(|g| !self.departed.contains_key(*g))
            .map(str::to_owned)
            .collect();
        for group in gone {
            self.tx.forget(&group);
        }
    }

    pub(super) fn on_bye(&mut self, now: Instant, d: Datagram) {
        if self.mode == Mode::Total && d.username == SEQUENCER {
            self.sequencer_lost(now, &d.group, "it said Bye");
            return;
        }
        // It stays reachable for the tail of its stream (up to its final counter).
        let was_member = self.groups.get_mut(&d.group).is_some_and(|state| {
            state.forget_streams(&d.username);
            state.members.depart(&d.username).is_some()
        });
        if !was_member {
            // A repeated Bye (they are sent more than once, in case one is lost).
            return;
        }
        if self.mode == Mode::Fifo {
            let _ = self
                .fifo
                .handle_bye(now, &d.group, &d.username, d.final_counter);
        }
        self.outputs.push_back(Output::Event(Event::Left {
            group: d.group,
            member: d.username,
        }));
    }

    pub(super) fn on_evicted(&mut self, group: &str, member: &str) {
        let Some(state) = self.groups.get_mut(group) else {
            return;
        };
        let removed = state.members.remove(member);
        if removed.is_none() {
            return;
        }
        state.forget_streams(member);
        if let (Some(stream), Some(info)) = (self.fifo.stream(group, member), removed.as_ref())
            && stream.started
        {
            state
                .members
                .remember_eviction(member, info.addr, stream.next);
        }
        let _ = self.fifo.handle_evicted(group, member);
        self.outputs.push_back(Output::Event(Event::Evicted {
            group: group.to_owned(),
            member: member.to_owned(),
        }));
    }
}
