//! Tunables of the ordering core: window sizes and the timers of loss recovery.

use std::time::Duration;

/// Limits and timers shared by the senders, receivers and the sequencer.
///
/// The defaults suit a LAN or loopback (round trips well under a millisecond) and bound the
/// memory of every stream; a WAN wants longer timers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// How far ahead of the next expected counter a receiver buffers a message, per stream.
    /// A counter at or beyond `next + window` is dropped and counted, never buffered, so one
    /// stream holds at most `window` messages.
    pub window: u64,
    /// How many of its latest messages a sender keeps per group to answer retransmission
    /// requests; older ones are answered with "unavailable".
    pub retransmit_buffer: usize,
    /// How long a receiver waits after noticing a gap before it asks for retransmission, so a
    /// merely reordered datagram is not taken for a lost one.
    pub nack_delay: Duration,
    /// Interval between repeated retransmission requests for a gap that is still open.
    pub nack_interval: Duration,
    /// Requests sent `nack_interval` apart for a gap that does not close; after them the
    /// gap is asked for every `slow_nack_interval` until `gap_patience` is over.
    pub nack_attempts: u32,
    /// Interval between requests once the first `nack_attempts` went unanswered: the sender
    /// may be cut off for a while (a partition), not gone.
    pub slow_nack_interval: Duration,
    /// How long a gap in the stream of a sender that can retransmit is asked for before it
    /// is skipped and counted, so a stream whose sender stopped answering never blocks for
    /// ever. A failed sender is normally evicted well before (its held messages are then
    /// dropped); a live one cut off for less than this loses nothing.
    pub gap_patience: Duration,
    /// How long a gap in the stream of an old sender (which cannot retransmit) is held before
    /// it is skipped: only long enough for a reordered datagram to arrive.
    pub legacy_holdback: Duration,
    /// How long a stream waits for its sender's start point (the handshake); after that it
    /// falls back to the report's rule: the first message received sets the counter.
    pub handshake_timeout: Duration,
    /// How long a sender must be idle before it announces its highest counter (so a lost last
    /// message is noticed); repeated `digest_repeats` times at doubling intervals, up to
    /// `digest_max_interval`.
    pub digest_interval: Duration,
    /// Longest interval between two announcements of the same highest counter.
    pub digest_max_interval: Duration,
    /// How many times an idle sender announces the same highest counter. Each announcement
    /// can be lost: the last message of a burst is lost for good only if the message and all
    /// of these are (at 30% loss and 10 repeats, about 6 in a million).
    pub digest_repeats: u32,
    /// How long a receiver keeps recovering the gaps of a member that said Bye with its final
    /// counter before it gives up on them.
    pub bye_grace: Duration,
    /// Most ranges one retransmission request lists.
    pub max_nack_ranges: usize,
    /// Most messages a sender retransmits for one request, so a request cannot make it
    /// flood the network.
    pub max_retransmit_per_nack: u64,
    /// Flow control: most messages an author may have sent beyond what its slowest member
    /// acknowledged delivering, so a sender flat out never overruns its receivers' socket
    /// buffers (0: no flow control). Members acknowledge every quarter of it. It bounds the
    /// queues, and so the latency, of a flat-out sender; at most `window` and
    /// `retransmit_buffer`.
    pub flow_window: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            window: 4096,
            retransmit_buffer: 8192,
            nack_delay: Duration::from_millis(3),
            nack_interval: Duration::from_millis(15),
            nack_attempts: 60,
            slow_nack_interval: Duration::from_millis(250),
            gap_patience: Duration::from_secs(10),
            legacy_holdback: Duration::from_millis(5),
            handshake_timeout: Duration::from_millis(1200),
            digest_interval: Duration::from_millis(10),
            digest_max_interval: Duration::from_millis(500),
            digest_repeats: 10,
            bye_grace: Duration::from_secs(1),
            max_nack_ranges: 64,
            max_retransmit_per_nack: 1024,
            flow_window: 1024,
        }
    }
}
