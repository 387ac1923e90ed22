//! The interactive peer, a client of [`Channel`]: what a person types is applied in the
//! order typed, each line once what it depends on is there (our registration; the tracker,
//! for a line that asks it something), and what happens in the groups is shown as it comes.
//!
//! The person's input and the channel's events arrive on one queue ([`Incoming`], see
//! [`Channel::open_into`]), so that one thread applies both in the order they came: a line
//! waits while the tracker is away, events keep being shown, and our own message is shown
//! before the next line is applied.

use std::collections::{BTreeSet, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::mpsc::Receiver;

use member::Mode;

use crate::channel::{Channel, ChannelError, ChannelEvent};
use crate::command::{self, Command, HELP};
use crate::console::{Input, Screen, describe, visible};

/// What the interactive peer handles, in the order it came.
#[derive(Debug)]
pub enum Incoming {
    /// Something the person typed (see [`read_lines`](crate::console::read_lines)).
    Input(Input),
    /// Something that happened (see [`Channel::recv`]).
    Event(ChannelEvent),
    /// The channel's loop ended: nothing more will come.
    Closed,
}

impl From<Input> for Incoming {
    fn from(input: Input) -> Self {
        Self::Input(input)
    }
}

impl From<ChannelEvent> for Incoming {
    fn from(event: ChannelEvent) -> Self {
        Self::Event(event)
    }
}

/// Who the interactive peer is, for what it tells the person.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Our name.
    pub username: String,
    /// The tracker's address.
    pub tracker: SocketAddr,
    /// Our delivery order.
    pub order: Mode,
    /// The sealed groups whose keys we hold.
    pub sealed: Vec<String>,
}

/// Runs the interactive peer over `chan` until the person quits (`!q`, end of input,
/// Ctrl-C) or the channel's loop ends. `incoming` receives what the person types and the
/// channel's events, ending with [`Incoming::Closed`]: open the channel with
/// [`Channel::open_into`] and hand the readers of the input the same sender. Lines for the
/// person go to `screen`. Returns how the channel ended ([`ChannelError::Refused`] if the
/// tracker refused our name).
pub fn run(
    chan: Channel,
    who: Identity,
    screen: Box<dyn Screen>,
    incoming: Receiver<Incoming>,
) -> Result<(), ChannelError> {
    let mut peer = Interactive {
        chan: &chan,
        who,
        screen,
        selected: None,
        joined: BTreeSet::new(),
        pending: VecDeque::new(),
        registered: false,
        in_session: false,
        unreachable: false,
        told_unreachable: false,
        quitting: false,
        closed: false,
    };
    let shown = peer.serve(&incoming);
    drop(peer);
    // Whatever stopped us, the loop leaves every group and tells the tracker.
    chan.close()?;
    shown.map_err(|e| ChannelError::Loop(format!("cannot write to the screen: {e}")))
}

struct Interactive<'a> {
    chan: &'a Channel,
    who: Identity,
    screen: Box<dyn Screen>,
    /// The group we write to.
    selected: Option<String>,
    joined: BTreeSet<String>,
    /// What the person typed, in order, not applied yet.
    pending: VecDeque<Input>,
    /// The tracker registered us (once is enough for what needs no tracker).
    registered: bool,
    /// We are registered on the tracker connection there is now: the tracker can be asked.
    in_session: bool,
    /// An attempt to reach the tracker failed since we last had it.
    unreachable: bool,
    /// We told the person so (told once per outage).
    told_unreachable: bool,
    quitting: bool,
    /// The channel's loop ended.
    closed: bool,
}

impl Interactive<'_> {
    /// Applies input and events until the loop ends.
    fn serve(&mut self, incoming: &Receiver<Incoming>) -> io::Result<()> {
        while !self.closed {
            self.apply_pending(incoming)?;
            self.show_prompt();
            match incoming.recv() {
                Ok(item) => self.take(item)?,
                Err(_) => self.closed = true,
            }
        }
        Ok(())
    }

    /// Shows an event, or queues what was typed (Ctrl-C quits at once).
    fn take(&mut self, item: Incoming) -> io::Result<()> {
        match item {
            Incoming::Input(Input::Interrupt) => self.quit(),
            Incoming::Input(input) => self.pending.push_back(input),
            Incoming::Event(event) => self.show_event(event)?,
            Incoming::Closed => self.closed = true,
        }
        Ok(())
    }

    /// Applies what was typed, in order, as far as what each line depends on allows:
    /// nothing before our first registration, and a line that needs the tracker only while
    /// we are registered with it (messages to joined groups go on without it). Quitting
    /// waits only for a registration on its way (then the tracker is told).
    fn apply_pending(&mut self, incoming: &Receiver<Incoming>) -> io::Result<()> {
        while !self.quitting && !self.closed {
            let Some(item) = self.pending.front() else {
                break;
            };
            let ready = match item {
                Input::End | Input::Interrupt => self.in_session || self.unreachable,
                Input::Line(line) | Input::Mangled(line) => match command::parse(line) {
                    Ok(Command::Quit) => self.in_session || self.unreachable,
                    Ok(c) if c.needs_tracker() => self.in_session,
                    _ => self.registered,
                },
            };
            if !ready {
                if self.unreachable && !self.told_unreachable {
                    self.told_unreachable = true;
                    let line = if self.registered {
                        format!(
                            "the tracker at {} cannot be reached; retrying, and what you typed waits for it ({} line(s) now)",
                            self.who.tracker,
                            self.pending.len()
                        )
                    } else {
                        format!(
                            "cannot reach the tracker at {} yet; retrying, and what you type waits for it",
                            self.who.tracker
                        )
                    };
                    self.say(&line)?;
                }
                break;
            }
            match self.pending.pop_front().expect("looked at above") {
                Input::Line(line) => self.handle_line(line)?,
                Input::Mangled(line) => {
                    self.say("warning: that line was not valid UTF-8; its invalid bytes were replaced with \u{fffd}")?;
                    self.handle_line(line)?;
                }
                Input::End | Input::Interrupt => self.quit(),
            }
            // What the line caused (our own message, say) is shown before the next line.
            while let Ok(item) = incoming.try_recv() {
                self.take(item)?;
            }
        }
        Ok(())
    }

    fn handle_line(&mut self, line: String) -> io::Result<()> {
        let command = match command::parse(&line) {
            Ok(command) => command,
            Err(usage) => return self.say(&visible(&usage)),
        };
        match command {
            Command::Nothing => {}
            Command::Help => {
                for l in HELP.lines() {
                    self.say(l)?;
                }
            }
            Command::Quit => self.quit(),
            Command::ListGroups => match self.chan.groups() {
                Ok(mut names) => {
                    names.sort_by(|a, b| natural_order(a, b));
                    let list = if names.is_empty() {
                        "(none)".to_owned()
                    } else {
                        names
                            .iter()
                            .map(|g| {
                                let mark = if self.joined.contains(g) {
                                    " (joined)"
                                } else {
                                    ""
                                };
                                format!("[{}]{mark}", visible(g))
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    self.say(&format!("groups: {list}"))?;
                }
                Err(e) => self.failed(line, e)?,
            },
            Command::ListMembers(group) => match self.chan.members(&group) {
                Ok(names) => {
                    let list = names
                        .iter()
                        .map(|m| format!("({})", visible(m)))
                        .collect::<Vec<_>>()
                        .join(", ");
                    self.say(&format!("members: {list}"))?;
                }
                Err(e) => self.failed(line, e)?,
            },
            Command::Join(group) if self.joined.contains(&group) => {
                let shown = visible(&group).into_owned();
                self.selected = Some(group);
                self.say(&format!("already in {shown}; writing to {shown}"))?;
            }
            Command::Join(group) => match self.chan.join(&group) {
                Ok(_) => {
                    self.joined.insert(group.clone());
                    let writing = self.selected.get_or_insert(group.clone()).clone();
                    let sealed = if self.who.sealed.contains(&group) {
                        " (sealed: only members holding its key are in it)"
                    } else {
                        ""
                    };
                    self.say(&format!(
                        "joined {}{sealed}; writing to {}",
                        visible(&group),
                        visible(&writing)
                    ))?;
                }
                Err(e) => self.failed(line, e)?,
            },
            Command::Write(group) if self.joined.contains(&group) => {
                self.say(&format!("writing to {}", visible(&group)))?;
                self.selected = Some(group);
            }
            Command::Write(group) => {
                let group = visible(&group);
                self.say(&format!(
                    "not a member of {group}: join it first (!j {group})"
                ))?;
            }
            Command::Exit(group) => match self.chan.leave(&group) {
                Ok(()) => {
                    self.joined.remove(&group);
                    let left = visible(&group).into_owned();
                    if self.selected.as_deref() == Some(group.as_str()) {
                        let mut rest: Vec<&String> = self.joined.iter().collect();
                        rest.sort_by(|a, b| natural_order(a, b));
                        self.selected = rest.first().map(|g| g.to_string());
                        let line = match &self.selected {
                            Some(next) => format!("left {left}; writing to {} now", visible(next)),
                            None => {
                                format!("left {left}; you are in no group now: !j GROUP joins one")
                            }
                        };
                        self.say(&line)?;
                    } else {
                        self.say(&format!("left {left}"))?;
                    }
                }
                Err(_) => self.say(&format!("not a member of {}", visible(&group)))?,
            },
            Command::Say(text) => match &self.selected {
                None => self
                    .say("no group selected: join one with !j GROUP, or pick one with !w GROUP")?,
                // Waits while the group's flow-control window is full.
                Some(group) => match self.chan.send(group, text.as_bytes()) {
                    Ok(_) | Err(ChannelError::Closed) => {}
                    Err(e) => self.say(&format!("error: {e}"))?,
                },
            },
        }
        Ok(())
    }

    /// A tracker request of `line` failed: without the tracker, the line waits for it (and
    /// the lines after it too); otherwise the person is told why.
    fn failed(&mut self, line: String, error: ChannelError) -> io::Result<()> {
        match error {
            ChannelError::Unreachable(_) => {
                self.in_session = false;
                self.pending.push_front(Input::Line(line));
                Ok(())
            }
            ChannelError::Closed => Ok(()),
            ChannelError::JoinRefused { group, reason } => {
                let line = format!(
                    "error: cannot join {}: {}",
                    visible(&group),
                    visible(&reason)
                );
                log::info!("{line}");
                self.say(&line)
            }
            ChannelError::NoSuchGroup(group) => {
                self.say(&format!("no such group: {}", visible(&group)))
            }
            e => self.say(&format!("error: {}", visible(&e.to_string()))),
        }
    }

    fn show_event(&mut self, event: ChannelEvent) -> io::Result<()> {
        match event {
            ChannelEvent::Message(m) => self.say(&format!(
                "in {} {} says:: {}",
                visible(&m.group),
                visible(&m.author),
                visible(&String::from_utf8_lossy(&m.payload))
            )),
            ChannelEvent::Registered => {
                self.back();
                self.say(&format!(
                    "registered as {} with the tracker at {} ({} order); !h lists the commands",
                    self.who.username,
                    self.who.tracker,
                    match self.who.order {
                        Mode::Fifo => "FIFO",
                        Mode::Total => "total",
                    }
                ))
            }
            ChannelEvent::Rejoined { evicted, tracker } => {
                self.back();
                if evicted {
                    self.say("registered again and rejoined our groups")
                } else if tracker == self.who.tracker {
                    self.say("the tracker is back; registered and rejoined our groups")
                } else {
                    self.who.tracker = tracker;
                    self.say(&format!(
                        "registered with the tracker at {tracker} and rejoined our groups"
                    ))
                }
            }
            ChannelEvent::TrackerUnreachable { .. } => {
                self.unreachable = true;
                Ok(())
            }
            ChannelEvent::TrackerLost { reason } => {
                self.in_session = false;
                self.unreachable = false;
                self.told_unreachable = false;
                self.say(&format!(
                    "lost the tracker ({}); messaging in joined groups goes on, reconnecting",
                    visible(&reason)
                ))
            }
            event => match describe(&event) {
                Some(line) => self.say(&visible(&line)),
                None => Ok(()),
            },
        }
    }

    /// We are registered with the tracker (again).
    fn back(&mut self) {
        self.registered = true;
        self.in_session = true;
        self.unreachable = false;
        self.told_unreachable = false;
    }

    /// Leaves every group and tells the tracker; what was typed after is not applied.
    fn quit(&mut self) {
        self.quitting = true;
        self.chan.stop();
    }

    /// Shows a line to the person; whatever in it came from the network must have been made
    /// [`visible`].
    fn say(&mut self, line: &str) -> io::Result<()> {
        self.screen.line(line)
    }

    /// The prompt: our name and the group we write to; the line editor shows it again once
    /// every line typed so far is applied.
    fn show_prompt(&mut self) {
        if self.quitting {
            return;
        }
        let prompt = match &self.selected {
            Some(group) => format!("[{}@{}]> ", self.who.username, visible(group)),
            None => format!("[{}]> ", self.who.username),
        };
        let idle = self.registered && self.pending.is_empty();
        self.screen.prompt(&prompt, idle);
    }
}

/// Orders names as a person expects: runs of digits by their value (`g2` before `g10`).
fn natural_order(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for ((da, x), (db, y)) in ca.iter().zip(&cb) {
        let order = if *da && *db {
            let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
            x.len().cmp(&y.len()).then_with(|| x.cmp(y))
        } else {
            x.cmp(y)
        };
        if order.is_ne() {
            return order;
        }
    }
    ca.len().cmp(&cb.len()).then_with(|| a.cmp(b))
}

#[cfg(test)]
mod tests {
    use super::natural_order;

    #[test]
    fn names_sort_by_the_value_of_their_numbers() {
        let mut names = vec!["g10", "g2", "g1", "books", "g02x", "a"];
        names.sort_by(|a, b| natural_order(a, b));
        assert_eq!(names, ["a", "books", "g1", "g2", "g02x", "g10"]);
    }
}
