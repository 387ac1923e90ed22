//! A replicated key-value store on total order: every member applies the same sequence of
//! writes, so every member holds the same map. A member that joins late asks for the
//! state, gets a snapshot from a member, then follows the stream.
//!
//! ```sh
//! cargo run --example kv            # 3 writers, one joining late, one leaving; checks the replicas
//! cargo run --example kv -- 127.0.0.1:5000 127.0.0.1:5001   # the tracker and sequencer there
//! ```
//!
//! It starts a tracker and a sequencer in this process (as the programs `tracker` and
//! `sequencer` would), then the members, each a [`Channel`] on a thread of its own.
//!
//! The protocol, all in messages of one group, all delivered in one order everywhere:
//! - `SET key value`: a write.
//! - `SYNC? name`: a member that joins an existing group asks for the state. Its own
//!   request comes back to it at some place `p` of the sequence; from there on it keeps
//!   every write.
//! - `SNAP name p json`: members in sync answer with their state as of place `p` (they
//!   deliver the request at that same place, so every answer is the same). The joiner takes
//!   the first, applies the writes it kept after `p`, and follows the stream: its map is
//!   now what everyone's is.
//! - `OK name`: a member is in sync (a writer says it again with its `DONE`, for members
//!   whose sequence began after its first); `DONE name`: a writer wrote its last. They are
//!   state too (in the snapshot), so that everyone knows when the demo is over: when every
//!   writer is done and every member that stays is in sync.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use peer::{Channel, ChannelConfig, ChannelEvent};

const GROUP: &str = "kv";

/// The members that stay to the end (cat leaves early).
const STAYING: [&str; 3] = ["ann", "bob", "dan"];

/// One replica of the store.
#[derive(Debug, Default)]
pub struct Replica {
    name: String,
    /// The map.
    pub data: BTreeMap<String, String>,
    /// Writers that wrote their last.
    pub done: BTreeSet<String>,
    /// Members in sync.
    pub ok: BTreeSet<String>,
    /// Whether the map follows the sequence (false for a joiner until its snapshot).
    pub synced: bool,
    /// A joiner: the place of its own `SYNC?` in the sequence, and what came after it.
    sync_at: Option<u64>,
    kept: Vec<(u64, String)>,
    /// Writes applied.
    pub applied: u64,
}

/// The replicated state in a snapshot: the map, who is done, who is in sync.
type Snapshot = (BTreeMap<String, String>, BTreeSet<String>, BTreeSet<String>);

impl Replica {
    /// A replica of the member that starts the group (`synced`) or of one that joins it.
    pub fn new(name: &str, synced: bool) -> Self {
        let mut replica = Self {
            name: name.to_owned(),
            synced,
            ..Self::default()
        };
        if synced {
            replica.ok.insert(name.to_owned());
        }
        replica
    }

    /// Applies one delivered message, at place `seq` of the sequence; returns a message
    /// to send, if any (a snapshot, or our `OK`).
    pub fn apply(&mut self, seq: u64, text: &str) -> Option<String> {
        let mut words = text.splitn(3, ' ');
        let (kind, who, rest) = (words.next()?, words.next()?, words.next());
        if !self.synced && kind != "SNAP" {
            if who == self.name && kind == "SYNC?" {
                self.sync_at = Some(seq);
            } else if self.sync_at.is_some() {
                self.kept.push((seq, text.to_owned()));
            }
            return None;
        }
        match (kind, rest) {
            ("SET", Some(value)) => {
                self.data.insert(who.to_owned(), value.to_owned());
                self.applied += 1;
            }
            ("SYNC?", None) if who != self.name => {
                let state: Snapshot = (self.data.clone(), self.done.clone(), self.ok.clone());
                let json = serde_json::to_string(&state).ok()?;
                return Some(format!("SNAP {who} {seq} {json}"));
            }
            ("SNAP", Some(rest)) if who == self.name && !self.synced => {
                let (at, json) = rest.split_once(' ')?;
                if at.parse::<u64>().ok() != self.sync_at {
                    return None;
                }
                let (data, done, ok): Snapshot = serde_json::from_str(json).ok()?;
                (self.data, self.done, self.ok) = (data, done, ok);
                self.synced = true;
                for (s, kept) in std::mem::take(&mut self.kept) {
                    let _ = self.apply(s, &kept);
                }
                return Some(format!("OK {}", self.name));
            }
            ("OK", None) => {
                self.ok.insert(who.to_owned());
            }
            ("DONE", None) => {
                self.done.insert(who.to_owned());
            }
            _ => {}
        }
        None
    }
}

/// Runs one member: joins, writes `writes` keys (if any), and follows the stream until
/// every writer in `writers` said `DONE` (or `leave_after` writes, then leaves).
fn member(
    tracker: std::net::SocketAddr,
    name: &str,
    late: bool,
    writes: usize,
    writers: &[&str],
    leave_after: Option<usize>,
) -> Result<Replica, String> {
    let chan = Channel::connect(ChannelConfig::new(name, tracker).total())
        .map_err(|e| format!("{name}: {e}"))?;
    chan.join(GROUP).map_err(|e| format!("{name}: {e}"))?;
    let mut replica = Replica::new(name, !late);
    if !late {
        chan.send(GROUP, format!("OK {name}").as_bytes())
            .map_err(|e| e.to_string())?;
    } else {
        chan.send(GROUP, format!("SYNC? {name}").as_bytes())
            .map_err(|e| e.to_string())?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut written = 0;
    loop {
        if written < writes {
            let key = format!("k{}", (written * 7 + name.len()) % 50);
            chan.send(GROUP, format!("SET {key} {name}-{written}").as_bytes())
                .map_err(|e| e.to_string())?;
            written += 1;
            if Some(written) == leave_after {
                // Its writes so far reach everyone (the Bye carries its last counter).
                chan.send(GROUP, format!("DONE {name}").as_bytes())
                    .map_err(|e| e.to_string())?;
                chan.leave(GROUP).map_err(|e| e.to_string())?;
                return Ok(replica);
            }
            if written == writes {
                // Said again: a member that joined after our first `OK` (its handshake
                // delayed by loss, say) started its sequence after it, and would wait for
                // it forever. It hears this one, just before our `DONE`.
                if replica.synced {
                    chan.send(GROUP, format!("OK {name}").as_bytes())
                        .map_err(|e| e.to_string())?;
                }
                chan.send(GROUP, format!("DONE {name}").as_bytes())
                    .map_err(|e| e.to_string())?;
            }
        }
        // Writers write about one key a millisecond, so that joining and leaving happen
        // while they write; everything delivered meanwhile is applied.
        let wait = if written < writes {
            std::thread::sleep(Duration::from_millis(1));
            Duration::ZERO
        } else {
            Duration::from_millis(50)
        };
        while let Some(event) = chan.recv_timeout(wait).map_err(|e| e.to_string())? {
            if let ChannelEvent::Message(m) = event {
                let text = String::from_utf8_lossy(&m.payload);
                if let Some(answer) = replica.apply(m.seq, &text) {
                    chan.send(GROUP, answer.as_bytes())
                        .map_err(|e| e.to_string())?;
                }
            }
        }
        if written == writes
            && replica.synced
            && writers.iter().all(|w| replica.done.contains(*w))
            && STAYING.iter().all(|m| replica.ok.contains(*m))
        {
            return Ok(replica);
        }
        if Instant::now() > deadline {
            return Err(format!("{name}: timed out with {replica:?}"));
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let at = match args.as_slice() {
        [] => None,
        [t, s] => match (t.parse(), s.parse()) {
            (Ok(t), Ok(s)) => Some((t, s)),
            _ => {
                eprintln!("kv: error: usage: kv [TRACKER_HOST:PORT SEQUENCER_HOST:PORT]");
                std::process::exit(2);
            }
        },
        _ => {
            eprintln!("kv: error: usage: kv [TRACKER_HOST:PORT SEQUENCER_HOST:PORT]");
            std::process::exit(2);
        }
    };
    let system = match support::LocalSystem::start(at) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kv: error: cannot start the tracker and the sequencer: {e}");
            std::process::exit(1);
        }
    };
    let tracker = system.tracker;
    let writers: &'static [&str] = &["ann", "bob", "cat"];
    let mut threads = Vec::new();
    for (i, name) in writers.iter().enumerate() {
        // ann starts the group; bob and cat join it and sync; cat leaves after 100 writes.
        let leave = (i == 2).then_some(100);
        threads.push((
            *name,
            std::thread::spawn(move || member(tracker, name, i > 0, 300, writers, leave)),
        ));
        if i == 0 {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // dan joins while the others write, and catches up by a snapshot.
    std::thread::sleep(Duration::from_millis(150));
    threads.push((
        "dan",
        std::thread::spawn(move || member(tracker, "dan", true, 0, writers, None)),
    ));
    let mut replicas = BTreeMap::new();
    for (name, t) in threads {
        match t.join().expect("a member thread") {
            Ok(r) => {
                replicas.insert(name, r);
            }
            Err(e) => {
                eprintln!("kv: error: {e}");
                std::process::exit(1);
            }
        }
    }
    let staying: Vec<&Replica> = STAYING.iter().map(|n| &replicas[n]).collect();
    for r in &staying {
        println!(
            "{}: {} keys, {} writes applied{}",
            r.name,
            r.data.len(),
            r.applied,
            if r.name == "ann" {
                ""
            } else {
                " (the rest came in its snapshot)"
            }
        );
    }
    println!("cat left after 100 writes");
    if staying.windows(2).all(|w| w[0].data == w[1].data) {
        println!(
            "every replica holds the same {} keys",
            staying[0].data.len()
        );
    } else {
        eprintln!("kv: error: the replicas differ");
        std::process::exit(1);
    }
}
