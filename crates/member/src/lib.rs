//! What every member of a group shares — the peers and the sequencer — without I/O.
//!
//! - [`Members`]: who is in a group, where they listen and what they speak, and the
//!   *source rule* that decides which datagrams may be believed to come from them.
//! - [`PeerCore`]: the member protocol of a peer — membership, the Hello/HelloAck handshake
//!   (newer peers announce `Proto` and the start of their stream; old peers get the report's
//!   behaviour), the checks every datagram passes, flow control, sequencer takeover, and the
//!   translation between datagrams and the `ordering` cores. Datagrams and time come in;
//!   [`Transmit`]s, deliveries and events come out.
//! - [`Member`]: a whole peer — a `PeerCore` plus the dialog with the tracker (register,
//!   join, leave, heartbeats, answering its probes, rejoining after it restarts, registering
//!   again after it evicted us, quitting) and clock synchronization with it
//!   ([`clock_sync`]). What a driver adds is only I/O: a UDP socket, the tracker connection,
//!   a clock.
//! - [`Transmit`]: one datagram to send, the one output type of every member core.
//!
//! # Driving a `Member`
//!
//! As a `PeerCore` (below), plus the tracker connection, which the driver owns: when it is
//! up, call `tracker_connected(now)`; when it breaks, `tracker_disconnected(now)`. Send
//! every [`Output::Tracker`] request over it, keeping its [`Ask`]; hand the answer back
//! with `handle_tracker_reply(now, ask, &reply)`, or `tracker_unanswered(now, ask)` if the
//! connection went first. Requests of the application (`join`, `ask`) return a [`Ticket`]
//! that the event answering them carries ([`Event::GroupJoined`], [`Event::JoinFailed`],
//! [`Event::Answered`]). The same rule holds: after any input, drain `poll_output()`.
//!
//! ```
//! use std::time::Instant;
//! use member::{Ask, CoreConfig, Event, Member, MemberConfig, Mode, Output, Registration};
//!
//! let now = Instant::now();
//! let mut ford = Member::new(
//!     MemberConfig {
//!         core: CoreConfig {
//!             username: "ford".into(),
//!             addr: ([127, 0, 0, 1], 6001).into(),
//!             tracker: ([127, 0, 0, 1], 5000).into(),
//!             mode: Mode::Fifo,
//!             ordering: ordering::Config::default(),
//!             seals: Vec::new(),
//!             multicast: None,
//!         },
//!         clock: None,
//!     },
//!     now,
//! );
//! // The driver connected to the tracker: the member registers.
//! ford.tracker_connected(now);
//! let Some(Output::Tracker(register)) = ford.poll_output() else { panic!() };
//! assert_eq!(register.ask, Ask::Register);
//! // The tracker's answer (here made up; a driver reads it from the connection).
//! ford.handle_tracker_reply(now, register.ask, &proto::Reply::ok("welcome"));
//! assert_eq!(
//!     ford.poll_output(),
//!     Some(Output::Event(Event::Registered(Registration::First)))
//! );
//! // A join: the request goes out, the tracker's list comes back, the event names the ticket.
//! let ticket = ford.join(now, "books").unwrap();
//! let Some(Output::Tracker(join)) = ford.poll_output() else { panic!() };
//! let listed = serde_json::json!([
//!     {"ip": "127.0.0.1", "port": 6001, "username": "ford", "uid": "1"}
//! ]);
//! ford.handle_tracker_reply(now, join.ask, &proto::Reply::ok(listed));
//! let joined = std::iter::from_fn(|| ford.poll_output())
//!     .any(|o| matches!(o, Output::Event(Event::GroupJoined { ticket: t, .. }) if t == ticket));
//! assert!(joined && ford.core().is_joined("books"));
//! // Heartbeats are timers: `poll_timeout` says when.
//! assert!(ford.poll_timeout().is_some());
//! ```
//!
//! # Driving a `PeerCore`
//!
//! Its methods come in four kinds. *Getters* (`username`, `groups`, `is_joined`,
//! `members_heard`, `stream`, `traffic`, ...) change nothing. *Inputs* feed what happened:
//! `handle_datagram(now, from, bytes)` for every datagram the socket received,
//! `handle_timeout(now)` when `poll_timeout()` has passed. *Requests* of the application:
//! `join(now, group, members)` with the tracker's list after a JoinGroup, `leave(now, group)`,
//! `send(now, group, payload, sent_at_us)` (ask `window_open(now, group)` first when sending
//! flat out). *Outputs*: `poll_output()` hands out [`Output::Transmit`] (send these bytes to
//! this address), [`Output::Deliver`] and [`Output::Event`]; `poll_timeout()` says when to
//! call `handle_timeout` next.
//!
//! The rule that makes it impossible to misuse: after any input or request, drain
//! `poll_output()` until it returns `None`; then wait for the next datagram or for
//! `poll_timeout()`, whichever comes first. Time is always an argument; nothing inside reads
//! a clock or touches a socket, so two cores can talk in memory:
//!
//! ```
//! use std::time::Instant;
//! use member::{CoreConfig, Mode, Output, PeerCore};
//!
//! let core = |name: &str, port: u16| {
//!     PeerCore::new(CoreConfig {
//!         username: name.into(),
//!         addr: ([127, 0, 0, 1], port).into(),
//!         tracker: ([127, 0, 0, 1], 5000).into(),
//!         mode: Mode::Fifo,
//!         ordering: ordering::Config::default(),
//!         seals: Vec::new(),
//!         multicast: None,
//!     })
//! };
//! let listed = |name: &str, port: u16| proto::Member {
//!     ip: "127.0.0.1".into(),
//!     port,
//!     username: name.into(),
//!     uid: name.into(),
//! };
//! // A network that loses nothing: drain each core, hand its datagrams on, until quiet.
//! fn settle(cores: &mut [PeerCore], now: Instant, said: &mut Vec<(String, String)>) {
//!     let mut busy = true;
//!     while busy {
//!         busy = false;
//!         for i in 0..cores.len() {
//!             let source = cores[i].addr();
//!             while let Some(out) = cores[i].poll_output() {
//!                 busy = true;
//!                 match out {
//!                     Output::Transmit(t) => {
//!                         if let Some(to) = cores.iter_mut().find(|c| c.addr() == t.to) {
//!                             to.handle_datagram(now, source, &t.bytes);
//!                         }
//!                     }
//!                     Output::Deliver(m) => {
//!                         said.push((cores[i].username().to_owned(), m.text().into_owned()))
//!                     }
//!                     Output::Event(_) | Output::Tracker(_) => {}
//!                 }
//!             }
//!         }
//!     }
//! }
//!
//! let mut cores = [core("ford", 6001), core("kat", 6002)];
//! let (now, mut said) = (Instant::now(), Vec::new());
//! // The tracker's lists after each JoinGroup: ford first, then both. kat greets ford (a
//! // Hello), ford answers where its stream starts for kat (a HelloAck).
//! cores[0].join(now, "books", &[listed("ford", 6001)]);
//! cores[1].join(now, "books", &[listed("ford", 6001), listed("kat", 6002)]);
//! settle(&mut cores, now, &mut said);
//! cores[0].send(now, "books", b"hello, books", 1).unwrap();
//! settle(&mut cores, now, &mut said);
//! // A multicast reaches its sender too.
//! assert!(said.contains(&("ford".into(), "hello, books".into())));
//! assert!(said.contains(&("kat".into(), "hello, books".into())));
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod clock_sync;
mod core;
mod member;
mod membership;
pub mod seals;

/// The maps looked up for every message: keyed by names and addresses of members, so a
/// fast hasher (seeded per process) serves them.
type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
mod transmit;

pub use crate::core::{CoreConfig, Error, Event, Message, Mode, Output, PeerCore, Traffic};
pub use crate::member::{
    Answer, Ask, JoinFailure, LocalClock, Member, MemberConfig, Query, Registration, Ticket,
    TrackerRequest, is_probe,
};
pub use membership::{MemberInfo, Members, claimed_addr, hello_source};
pub use proto::SEQUENCER;
pub use transmit::Transmit;
