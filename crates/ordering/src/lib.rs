//! The ordering core of the group messenger: FIFO and total-order multicast over an
//! unreliable network, as plain state machines with no I/O.
//!
//! No sockets, threads or clock reads: time comes in as an argument, and what the core wants
//! done comes out as [`Output`] values (messages to deliver, datagrams to send). The caller —
//! a daemon's event loop, a test, a simulation — owns the sockets and the clock.
//!
//! # The pieces
//!
//! - [`FifoSender`]: numbers this member's messages per group (counters from 1), keeps the
//!   latest in a bounded buffer, answers retransmission requests, and while idle announces
//!   its highest counter so that a lost last message is noticed.
//! - [`FifoReceiver`]: per group and sender, the next expected counter and a holdback queue.
//! - [`Sequencer`]: FIFO-orders each author's messages and numbers them in one sequence per
//!   group.
//! - [`TotalOrderReceiver`]: FIFO over the sequencer's stream.
//!
//! A peer in FIFO mode combines a sender and a receiver of every member; in total order, a
//! sender (whose multicasts go to the sequencer) and a total-order receiver.
//!
//! # Guarantees
//!
//! - **FIFO**: a receiver delivers each sender's messages in counter order; in
//!   [`TotalOrderReceiver`] that sender is the sequencer, so every member of a group delivers
//!   the same sequence.
//! - **At most once**: a counter is delivered once at most, however often the network
//!   duplicates it ([`Counters::duplicates`]).
//! - **Nothing invented**: only payloads that were handed in are delivered, under the
//!   counter they came with.
//! - **Recovery**: a receiver notices gaps — between messages, or at the end through the
//!   sender's digest — waits [`Config::nack_delay`] in case the datagram was only reordered,
//!   then asks the sender ([`Output::Nack`]) every [`Config::nack_interval`]. With senders
//!   that cannot retransmit (the report's peers, [`Start::Legacy`]) a gap is held only
//!   [`Config::legacy_holdback`], then skipped and counted; a stream never waits for ever
//!   ([`Config::nack_attempts`]).
//! - **Bounded memory**: a stream holds at most [`Config::window`] messages; a counter beyond
//!   the window is dropped and counted, never buffered. A sender keeps at most
//!   [`Config::retransmit_buffer`] messages per group.
//! - **Membership changes**: a Bye with a final counter lets receivers recover up to it
//!   (for [`Config::bye_grace`]); an eviction drops what can no longer be completed, counts
//!   it, and never blocks another stream.
//!
//! # Driving a core
//!
//! Every core follows one rule: after any input (`handle_*`, `send`), drain `poll_output()`
//! until it returns `None`; then wait for the next datagram or until `poll_timeout()`,
//! whichever comes first, and on waking at the deadline call `handle_timeout(now)`. The loop
//! thus sleeps exactly until the next deadline, never on a fixed tick, and no output is
//! ever left behind.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use ordering::{Config, FifoReceiver, FifoSender, Output, Start};
//!
//! type Text = &'static str;
//!
//! /// The caller's loop, in miniature: drain bob's outputs, answering his requests from alice.
//! fn drain(bob: &mut FifoReceiver<Text>, alice: &mut FifoSender<Text>, delivered: &mut Vec<Text>) {
//!     while let Some(out) = bob.poll_output() {
//!         match out {
//!             Output::Deliver(d) => delivered.push(d.payload),
//!             Output::Nack { ranges, .. } => alice.handle_nack("books", "bob", &ranges).unwrap(),
//!             _ => {}
//!         }
//!     }
//! }
//!
//! let t0 = Instant::now();
//! let mut alice = FifoSender::new(Config::default());
//! let mut bob = FifoReceiver::new(Config::default());
//! let start = alice.open("books");
//! bob.add_sender(t0, "books", "alice", Start::At(start));
//!
//! for text in ["one", "two", "three"] {
//!     alice.send(t0, "books", text).unwrap();
//! }
//! // The network: "two" is lost, "three" arrives before "one".
//! let mut sent = Vec::new();
//! while let Some(Output::Multicast { counter, payload, .. }) = alice.poll_output() {
//!     sent.push((counter, payload));
//! }
//! for (counter, payload) in [sent[2], sent[0]] {
//!     bob.handle_message(t0, "books", "alice", counter, payload).unwrap();
//! }
//! let mut delivered = Vec::new();
//! drain(&mut bob, &mut alice, &mut delivered);
//! assert_eq!(delivered, ["one"]); // "three" waits behind the gap
//!
//! // At the deadline bob asks alice for counter 2; her answer fills the gap.
//! let later = bob.poll_timeout().unwrap();
//! assert!(later > t0 && later <= t0 + Duration::from_millis(10));
//! bob.handle_timeout(later);
//! drain(&mut bob, &mut alice, &mut delivered);
//! while let Some(Output::Retransmit { counter, payload, .. }) = alice.poll_output() {
//!     bob.handle_message(later, "books", "alice", counter, payload).unwrap();
//! }
//! drain(&mut bob, &mut alice, &mut delivered);
//! assert_eq!(delivered, ["one", "two", "three"]);
//! assert_eq!(bob.counters().gaps_recovered, 1);
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod config;
mod counters;
mod error;
mod holdback;
mod output;
mod receiver;
mod sender;
mod sequencer;
mod timers;
mod total;

/// The maps looked up for every message: keyed by group and member names already admitted,
/// so a fast hasher (seeded per process) serves them.
type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

pub use config::Config;
pub use counters::Counters;
pub use error::Error;
pub use output::{Delivery, Output};
pub use receiver::{FifoReceiver, Start, StreamStatus};
pub use sender::FifoSender;
pub use sequencer::{Sequenced, Sequencer};
pub use total::TotalOrderReceiver;
