//! What a peer in script mode measured, as a table for people and JSON for programs.

use std::fmt;

use serde::Serialize;

/// One-way latency figures, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    /// How many deliveries carried a send time.
    pub samples: usize,
    /// Mean.
    pub mean_us: f64,
    /// Smallest (negative only if the clocks are out of step by more than the latency).
    pub min_us: i64,
    /// Median.
    pub p50_us: i64,
    /// 99th percentile.
    pub p99_us: i64,
    /// Largest.
    pub max_us: i64,
}

impl Latency {
    /// The figures of `samples` (µs); sorts them.
    pub fn of(samples: &mut [i64]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Self {
            samples: samples.len(),
            min_us: samples[0],
            mean_us: samples.iter().sum::<i64>() as f64 / samples.len() as f64,
            p50_us: at(0.50),
            p99_us: at(0.99),
            max_us: *samples.last().unwrap_or(&0),
        }
    }
}

/// How loss was repaired, from the ordering core's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Recovery {
    /// Retransmission requests sent.
    pub nacks_sent: u64,
    /// Messages sent again on request.
    pub retransmissions_sent: u64,
    /// Messages that arrived after being requested.
    pub gaps_recovered: u64,
    /// Counters given up on.
    pub gaps_skipped: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
}

/// Flow control: how often the sender waited for its slowest member, and what it cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Flow {
    /// Times the window closed: the slowest member had not delivered enough of ours.
    pub window_closed: u64,
    /// Digests sent to the members we waited for, asking how far they are.
    pub probes_sent: u64,
    /// Acknowledgements sent to authors.
    pub acks_sent: u64,
    /// Acknowledgements received from members.
    pub acks_received: u64,
}

/// What happened to the group's sequencer (total order).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Failover {
    /// Times the sequencer was lost (total order unavailable until one answered).
    pub sequencer_losses: u64,
    /// Times a new sequencer took the group over.
    pub takeovers: u64,
    /// Messages the new sequencer sent that had been delivered from the old one (not
    /// delivered twice).
    pub already_delivered: u64,
}

/// Datagrams a peer dropped, by reason (each is also logged with `-vv`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Dropped {
    /// Not a valid datagram (bad JSON, wrong types, oversized, unknown Type).
    pub malformed: u64,
    /// Claimed a member's name but came from another address.
    pub spoofed: u64,
    /// From an unknown member, or for a group not joined.
    pub unknown: u64,
    /// A stream this mode does not deliver.
    pub other_mode: u64,
    /// Counters beyond the holdback window.
    pub beyond_window: u64,
}

/// A sealed group's datagrams: how many opened, and what was dropped and why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Sealed {
    /// Sealed datagrams that opened (authentic, new).
    pub opened: u64,
    /// Dropped: sealed with another key, forged or damaged, or not in the sealed format.
    pub wrong_key: u64,
    /// Dropped: replayed.
    pub replayed: u64,
    /// Dropped: from an earlier incarnation of a member.
    pub stale: u64,
    /// Dropped: plain datagrams for the sealed group (or for another group, sealed as this
    /// one).
    pub unsealed: u64,
}

/// One peer's measurements of a script run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The peer.
    pub username: String,
    /// The group.
    pub group: String,
    /// `fifo` or `total`.
    pub mode: String,
    /// Messages this peer sent.
    pub sent: u64,
    /// Messages it delivered (from every sender, itself included).
    pub delivered: u64,
    /// Messages it expected to deliver.
    pub expected: u64,
    /// Whether it delivered all it expected before its time ran out.
    pub complete: bool,
    /// From its first send (or, if it sent nothing, the sending of the first message it
    /// delivered, on the synchronized clock) to its last delivery, in milliseconds.
    pub duration_ms: f64,
    /// Deliveries per second over that time.
    pub delivered_per_second: f64,
    /// One-way latency, from the send time carried in each message to its delivery.
    pub latency: Latency,
    /// UDP datagrams sent to members (a bundle counts once).
    pub datagrams_sent: u64,
    /// Of which bundles of several.
    pub bundles_sent: u64,
    /// Application messages sent to members, bundled or not (first sends and
    /// retransmissions).
    pub app_datagrams_sent: u64,
    /// Of those, sent once to an IP multicast group for every member (`--multicast`).
    pub multicast_sent: u64,
    /// Control messages sent to members (Hello, Bye, acknowledgements, retransmission
    /// requests, digests, ...).
    pub control_datagrams_sent: u64,
    /// Messages (application and control) per UDP datagram: above 1 when bundled.
    pub messages_per_datagram: f64,
    /// Messages to the tracker (requests and heartbeats).
    pub tracker_messages_sent: u64,
    /// UDP datagrams sent per message sent.
    pub datagrams_per_message: f64,
    /// Datagrams dropped, by reason.
    pub dropped: Dropped,
    /// For a sealed group: what its key opened and dropped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sealed: Option<Sealed>,
    /// Members the tracker evicted while this peer ran (it stopped sending to them).
    pub evicted: Vec<String>,
    /// Times the tracker evicted this peer itself (it registered and greeted again).
    pub times_evicted: u64,
    /// Whether the peer's clock was synchronized with the tracker's (NTP).
    pub clock_synced: bool,
    /// The tracker's clock minus ours, as estimated (µs).
    pub clock_offset_us: i64,
    /// The bound of that estimate (µs): latencies are exact within the sum of the bounds
    /// of sender and receiver.
    pub clock_bound_us: i64,
    /// Loss repair.
    pub recovery: Recovery,
    /// Sequencer losses and takeovers.
    pub failover: Failover,
    /// Flow control.
    pub flow: Flow,
    /// Whether this peer ran under SCHED_BATCH (`--low-latency`, or started by a program
    /// that was): woken by a datagram, it let the process that sent it finish its turn.
    pub wakeup_preemption_off: bool,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let row = |f: &mut fmt::Formatter<'_>, k: &str, v: String| writeln!(f, "  {k:<28} {v}");
        writeln!(
            f,
            "measurements of {} in group {} ({} order):",
            self.username, self.group, self.mode
        )?;
        row(f, "messages sent", self.sent.to_string())?;
        row(
            f,
            "messages delivered",
            format!(
                "{} of {} expected{}",
                self.delivered,
                self.expected,
                if self.complete { "" } else { " (INCOMPLETE)" }
            ),
        )?;
        row(
            f,
            "first send to last delivery",
            format!("{:.1} ms", self.duration_ms),
        )?;
        row(
            f,
            "throughput",
            format!("{:.0} delivered/s", self.delivered_per_second),
        )?;
        row(
            f,
            "one-way latency",
            format!(
                "mean {:.0} µs, p50 {} µs, p99 {} µs, max {} µs ({} samples)",
                self.latency.mean_us,
                self.latency.p50_us,
                self.latency.p99_us,
                self.latency.max_us,
                self.latency.samples
            ),
        )?;
        row(
            f,
            "datagrams sent",
            format!(
                "{} ({} bundles; {} application ({} to the multicast group) and {} control messages, {:.2} per datagram; {:.2} datagrams per message sent)",
                self.datagrams_sent,
                self.bundles_sent,
                self.app_datagrams_sent,
                self.multicast_sent,
                self.control_datagrams_sent,
                self.messages_per_datagram,
                self.datagrams_per_message
            ),
        )?;
        row(
            f,
            "tracker messages sent",
            self.tracker_messages_sent.to_string(),
        )?;
        row(
            f,
            "clock",
            if self.clock_synced {
                format!(
                    "synchronized with the tracker: offset {} µs ± {} µs",
                    self.clock_offset_us, self.clock_bound_us
                )
            } else {
                "not synchronized (latencies use this host's own clock)".to_owned()
            },
        )?;
        row(
            f,
            "loss recovery",
            format!(
                "{} requests, {} retransmitted, {} recovered, {} skipped, {} duplicates",
                self.recovery.nacks_sent,
                self.recovery.retransmissions_sent,
                self.recovery.gaps_recovered,
                self.recovery.gaps_skipped,
                self.recovery.duplicates
            ),
        )?;
        row(
            f,
            "flow control",
            format!(
                "window closed {} time(s), {} probes; {} acks sent, {} received",
                self.flow.window_closed,
                self.flow.probes_sent,
                self.flow.acks_sent,
                self.flow.acks_received
            ),
        )?;
        if let Some(s) = &self.sealed {
            row(
                f,
                "sealed group",
                format!(
                    "{} datagrams opened; dropped: {} with a wrong key or forged, {} replayed, {} stale, {} plain",
                    s.opened, s.wrong_key, s.replayed, s.stale, s.unsealed
                ),
            )?;
        }
        if self.failover.sequencer_losses > 0 || self.failover.takeovers > 0 {
            row(
                f,
                "sequencer failover",
                format!(
                    "lost {} time(s), {} takeover(s), {} already delivered",
                    self.failover.sequencer_losses,
                    self.failover.takeovers,
                    self.failover.already_delivered
                ),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_set() {
        let mut samples: Vec<i64> = (-1..=98).rev().collect();
        let l = Latency::of(&mut samples);
        assert_eq!(
            (l.samples, l.min_us, l.p50_us, l.p99_us, l.max_us),
            (100, -1, 49, 97, 98)
        );
        assert!((l.mean_us - 48.5).abs() < 1e-9);
        assert_eq!(Latency::of(&mut []), Latency::default());
    }
}
