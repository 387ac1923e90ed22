//! What the cores ask their caller to do.

use std::ops::RangeInclusive;
use std::sync::Arc;

/// A message handed to the application, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery<T> {
    /// The group it was multicast to.
    pub group: Arc<str>,
    /// The stream it came from: its author in FIFO mode, the sequencer in total order.
    pub sender: Arc<str>,
    /// Its counter in that stream.
    pub counter: u64,
    /// The message itself.
    pub payload: T,
}

/// One action for the caller, drained with `poll_output()` after every input.
///
/// Destinations are names (groups, members); the caller maps them to addresses and encodes
/// the datagrams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output<T> {
    /// Hand this message to the application.
    Deliver(Delivery<T>),
    /// Send this message to every member of `group` (in total order: to the sequencer).
    Multicast {
        /// The group.
        group: Arc<str>,
        /// The message's counter in the sender's stream for the group.
        counter: u64,
        /// The message.
        payload: T,
    },
    /// Send this message again, to one member that asked for it.
    Retransmit {
        /// The member that asked.
        to: Arc<str>,
        /// The group.
        group: Arc<str>,
        /// The message's counter.
        counter: u64,
        /// The message.
        payload: T,
    },
    /// Ask the owner of a stream to retransmit the listed counters.
    Nack {
        /// The stream's owner (the author, or the sequencer).
        to: Arc<str>,
        /// The group.
        group: Arc<str>,
        /// The missing counters, ascending.
        ranges: Vec<RangeInclusive<u64>>,
    },
    /// Announce to every member of `group` (in total order: to the sequencer) the highest
    /// counter sent, so a receiver that lost the last message notices.
    Digest {
        /// The group.
        group: Arc<str>,
        /// The highest counter sent in it.
        highest: u64,
    },
    /// Tell a member that asked for these counters that they are no longer buffered, so it
    /// skips them instead of asking again.
    Unavailable {
        /// The member that asked.
        to: Arc<str>,
        /// The group.
        group: Arc<str>,
        /// The counters that cannot be sent again.
        ranges: Vec<RangeInclusive<u64>>,
    },
}

impl<T> Output<T> {
    /// The same action with its payload (if any) transformed; lets one core's outputs pass
    /// through another that wraps payloads (the sequencer).
    pub fn map_payload<U>(self, f: impl FnOnce(T) -> U) -> Output<U> {
        match self {
            Output::Deliver(d) => Output::Deliver(Delivery {
                group: d.group,
                sender: d.sender,
                counter: d.counter,
                payload: f(d.payload),
            }),
            Output::Multicast {
                group,
                counter,
                payload,
            } => Output::Multicast {
                group,
                counter,
                payload: f(payload),
            },
            Output::Retransmit {
                to,
                group,
                counter,
                payload,
            } => Output::Retransmit {
                to,
                group,
                counter,
                payload: f(payload),
            },
            Output::Nack { to, group, ranges } => Output::Nack { to, group, ranges },
            Output::Digest { group, highest } => Output::Digest { group, highest },
            Output::Unavailable { to, group, ranges } => Output::Unavailable { to, group, ranges },
        }
    }
}
