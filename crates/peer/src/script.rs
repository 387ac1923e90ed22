//! Script mode, a client of [`Channel`]: join a group, wait until every member is there
//! (greeted, ordered by a sequencer in total order, clocks synchronized), send one message per
//! line at a rate or flat out, wait for the deliveries, linger while others still recover
//! ours, and report what was measured.
//!
//! Deliveries are counted by a handler on the channel's own loop
//! ([`Channel::open_with`]): measuring costs the member no thread switch per message, so
//! the figures are the member's, not the hand-over's.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use member::Mode;
use runtime::Shutdown;
use thiserror::Error;

use crate::channel::{
    Channel, ChannelConfig, ChannelError, ChannelEvent, ChannelStats, Delivery, Pending,
};
use crate::console::{describe, visible};
use crate::report::{Dropped, Failover, Flow, Latency, Recovery, Report, Sealed};

/// Lines handed to the channel at once when sending flat out: the loop sends them as the
/// flow-control window opens, and between two chunks it waits for the next (so a chunk is
/// many windows long).
const SEND_CHUNK: usize = 16_384;

/// Sends at a rate handed to the loop and not yet answered, at most: past that the script
/// waits for the oldest (the flow-control window is full; the loop holds the rest).
const PACED_AHEAD: usize = 64;

/// How long the script waits after its last delivery, at least, and until retransmission
/// requests from the others stop.
const LINGER: Duration = Duration::from_millis(300);

/// Most latency samples a script keeps (see `Measure::latencies`).
const MAX_LATENCY_SAMPLES: usize = 20_000;

/// How long a script waits for a first synchronization before it sends unsynchronized.
const SYNC_PATIENCE: Duration = Duration::from_secs(2);

/// How often the script looks again while it waits (for members, deliveries, quiet).
const TICK: Duration = Duration::from_millis(20);

/// What a script-mode peer does.
#[derive(Debug, Clone)]
pub struct Script {
    /// One message per line.
    pub lines: Vec<String>,
    /// The group to join.
    pub group: String,
    /// Start sending once this many members (ourselves included) are in the group.
    pub members: usize,
    /// Deliveries to wait for; by default every member sends as many lines as we do.
    pub expect: Option<u64>,
    /// Messages per second; `None` sends flat out.
    pub rate: Option<f64>,
    /// Give up waiting (for members, or for deliveries) after this long.
    pub timeout: Duration,
    /// Where to write each delivery as `GROUP<TAB>AUTHOR<TAB>COUNTER<TAB>TEXT`, if anywhere.
    pub deliveries: Option<PathBuf>,
}

/// Why a script stopped before its report.
#[derive(Debug, Error)]
pub enum ScriptError {
    /// The channel refused a call, or closed.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The deliveries file could not be written.
    #[error("deliveries file: {0}")]
    Io(#[from] io::Error),
}

#[derive(Debug, Default)]
struct Measure {
    sent: u64,
    delivered: u64,
    first_send: Option<Instant>,
    first_delivery: Option<Instant>,
    last_delivery: Option<Instant>,
    /// The latency of the first delivery that carried a send time (µs).
    first_latency: Option<i64>,
    /// Latencies (µs, signed: clocks badly out of step show as negative). Every
    /// `stride`-th delivery is kept, and the stride doubles whenever
    /// [`MAX_LATENCY_SAMPLES`] are held: memory stays bounded however long a script runs,
    /// and the percentiles stay those of an even sample.
    latencies: Vec<i64>,
    stride: u64,
    timed: u64,
    /// Members the tracker evicted while we ran.
    evicted: Vec<String>,
}

/// What the handler on the loop records, and the script reads.
struct Shared {
    username: String,
    registered: bool,
    measure: Measure,
    /// Deliveries not yet written to the deliveries file (`None`: no file). The loop only
    /// appends here; the file is written by its own thread, so that a slow disk never
    /// delays the loop (and its heartbeats).
    pending: Option<Vec<u8>>,
}

/// The thread that writes the deliveries file from [`Shared::pending`].
struct DeliveriesWriter {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<io::Result<()>>,
}

impl DeliveriesWriter {
    fn start(file: std::fs::File, shared: Arc<Mutex<Shared>>) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut out = io::BufWriter::new(file);
            loop {
                let last = stopped.load(std::sync::atomic::Ordering::SeqCst);
                let batch = lock(&shared).pending.as_mut().map(std::mem::take);
                if let Some(batch) = batch {
                    out.write_all(&batch)?;
                }
                if last {
                    return out.flush();
                }
                std::thread::sleep(TICK);
            }
        });
        Self { stop, thread }
    }

    /// Writes what is left and closes the file.
    fn finish(self) -> io::Result<()> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the deliveries writer panicked")))
    }
}

/// A script-mode peer: its channel, and what the handler on the channel's loop records.
pub struct ScriptPeer {
    chan: Channel,
    shared: Arc<Mutex<Shared>>,
    writer: Option<DeliveriesWriter>,
    script: Script,
    order: Mode,
    tracker: std::net::SocketAddr,
    connect_timeout: Duration,
}

impl ScriptPeer {
    /// Creates the deliveries file, if asked for, and opens the channel (the tracker is
    /// contacted at once; [`run`](Self::run) waits for it, at most `connect_timeout`).
    pub fn open(config: ChannelConfig, script: Script) -> Result<Self, ScriptError> {
        let file = match &script.deliveries {
            Some(path) => Some(std::fs::File::create(path)?),
            None => None,
        };
        let shared = Arc::new(Mutex::new(Shared {
            username: config.name.clone(),
            registered: false,
            measure: Measure::default(),
            pending: file.as_ref().map(|_| Vec::new()),
        }));
        let writer = file.map(|f| DeliveriesWriter::start(f, shared.clone()));
        let (order, tracker) = (config.order, config.tracker);
        let connect_timeout = config.connect_timeout;
        let recorder = shared.clone();
        let chan = Channel::open_with(config, move |event| lock(&recorder).handle(event))?;
        Ok(Self {
            chan,
            shared,
            writer,
            script,
            order,
            tracker,
            connect_timeout,
        })
    }

    /// A handle that stops the script (a Ctrl-C handler's).
    pub fn shutdown_handle(&self) -> Shutdown {
        self.chan.shutdown_handle()
    }

    /// Runs the script and closes the channel; returns what was measured. Stopped before
    /// the end, it fails with [`ChannelError::Closed`], or with why the channel's loop ended
    /// (the tracker refused our name, say).
    pub fn run(mut self) -> Result<Report, ScriptError> {
        // The messages are made before the clock starts: sending moves them, copies nothing.
        let payloads = self
            .script
            .lines
            .iter()
            .map(|l| l.as_bytes().to_vec())
            .collect();
        let result = self.run_script(payloads);
        let written = self.writer.take().map_or(Ok(()), DeliveriesWriter::finish);
        let closed = self.chan.close();
        match (result, closed, written) {
            (Err(ScriptError::Channel(ChannelError::Closed)), Err(why), _) => Err(why.into()),
            (Ok(_), _, Err(e)) => Err(e.into()),
            (result, _, _) => result,
        }
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// On the channel's loop: records an event.
    fn handle(&mut self, event: ChannelEvent) {
        match &event {
            ChannelEvent::Message(m) => self.deliver(m),
            ChannelEvent::Registered => self.registered = true,
            ChannelEvent::MemberEvicted { member, .. } => {
                self.measure.evicted.push(member.clone());
            }
            // A script's output is its report: news that explains a slow or incomplete run
            // goes to standard error.
            ChannelEvent::SequencerLost { .. }
            | ChannelEvent::SequencerBack { .. }
            | ChannelEvent::WeWereEvicted { .. } => {
                if let Some(line) = describe(&event) {
                    let text = format!("{}: {}\n", self.username, visible(&line));
                    let _ = io::stderr().write_all(text.as_bytes());
                }
            }
            _ => {}
        }
    }

    fn deliver(&mut self, m: &Delivery) {
        let measure = &mut self.measure;
        measure.delivered += 1;
        measure.first_delivery.get_or_insert(m.delivered_at);
        measure.last_delivery = Some(m.delivered_at);
        if let Some(sent) = m.sent_at_us {
            let latency = m.received_at_us as i64 - sent as i64;
            measure.first_latency.get_or_insert(latency);
            measure.timed += 1;
            if measure.timed % measure.stride.max(1) == 0 {
                measure.latencies.push(latency);
                if measure.latencies.len() >= MAX_LATENCY_SAMPLES {
                    let kept: Vec<_> = measure.latencies.iter().copied().step_by(2).collect();
                    measure.latencies = kept;
                    measure.stride = measure.stride.max(1) * 2;
                }
            }
        }
        if let Some(pending) = self.pending.as_mut() {
            // Into memory: cannot fail.
            let _ = writeln!(
                pending,
                "{}\t{}\t{}\t{}",
                m.group,
                m.author,
                m.seq,
                String::from_utf8_lossy(&m.payload)
            );
        }
    }
}

/// The steps of a run.
impl ScriptPeer {
    fn run_script(&self, payloads: Vec<Vec<u8>>) -> Result<Report, ScriptError> {
        let script = &self.script;
        let expected = script
            .expect
            .unwrap_or(script.lines.len() as u64 * script.members as u64);
        self.wait_registered()?;
        let joined_at = self.join()?;
        if self.wait_for_members(joined_at)? {
            self.send_lines(payloads)?;
            let since = Instant::now();
            while lock(&self.shared).measure.delivered < expected
                && since.elapsed() <= script.timeout
            {
                std::thread::sleep(TICK);
            }
        }
        let stats = self.linger()?;
        let mut shared = lock(&self.shared);
        Ok(self.report(&mut shared, expected, &stats))
    }

    /// Waits until the tracker registered us ([`ChannelError::Unreachable`] after the
    /// connect timeout; the loop's end, when the tracker refused us).
    fn wait_registered(&self) -> Result<(), ScriptError> {
        let since = Instant::now();
        while !lock(&self.shared).registered {
            if since.elapsed() > self.connect_timeout {
                return Err(ChannelError::Unreachable(self.tracker).into());
            }
            // Fails once the loop has ended.
            self.chan.stats()?;
            std::thread::sleep(TICK);
        }
        Ok(())
    }

    /// Joins the script's group, again after each loss of the tracker while the timeout
    /// allows.
    fn join(&self) -> Result<Instant, ScriptError> {
        let since = Instant::now();
        loop {
            match self.chan.join(&self.script.group) {
                Ok(_) => return Ok(Instant::now()),
                Err(ChannelError::Unreachable(_)) if since.elapsed() < self.script.timeout => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Waits until every member is there (`false` if they were not, in time).
    fn wait_for_members(&self, joined_at: Instant) -> Result<bool, ScriptError> {
        let script = &self.script;
        let since = Instant::now();
        loop {
            let stats = self.chan.stats()?;
            let group = stats.groups.iter().find(|g| g.name == script.group);
            let heard = group.is_some_and(|g| g.members_heard + 1 >= script.members);
            let ordered = group.is_some_and(|g| g.sequencer_ready);
            let synced = stats.clock_settled || joined_at.elapsed() > SYNC_PATIENCE;
            if heard && ordered && synced {
                log::debug!("all {} members are here: sending", script.members);
                return Ok(true);
            }
            if since.elapsed() > script.timeout {
                log::warn!(
                    "gave up waiting for {} members in {}",
                    script.members,
                    script.group
                );
                return Ok(false);
            }
            std::thread::sleep(TICK);
        }
    }

    /// Sends every line (`payloads`, made from them beforehand): flat out, or at the
    /// script's rate.
    fn send_lines(&self, payloads: Vec<Vec<u8>>) -> Result<(), ScriptError> {
        let start = Instant::now();
        lock(&self.shared).measure.first_send = Some(start);
        let step = self
            .script
            .rate
            .map_or(Duration::ZERO, |r| Duration::from_secs_f64(1.0 / r));
        if step.is_zero() {
            self.send_flat_out(payloads)
        } else {
            self.send_paced(payloads, start, step)
        }
    }

    fn count_sent(&self, sent: usize) {
        lock(&self.shared).measure.sent += sent as u64;
    }

    /// [`SEND_CHUNK`] lines at a time, which the loop sends as fast as the flow-control
    /// window allows.
    fn send_flat_out(&self, payloads: Vec<Vec<u8>>) -> Result<(), ScriptError> {
        let mut payloads = payloads.into_iter();
        loop {
            let chunk: Vec<Vec<u8>> = payloads.by_ref().take(SEND_CHUNK).collect();
            if chunk.is_empty() {
                return Ok(());
            }
            self.count_sent(self.chan.send_all(&self.script.group, chunk)?);
        }
    }

    /// One line every `step` from `start`: the lines due, handed to the loop without
    /// waiting for them to go (at most [`PACED_AHEAD`] hand-overs unanswered), so that no
    /// answer wakes us while the receivers of what just went need the CPUs.
    fn send_paced(
        &self,
        payloads: Vec<Vec<u8>>,
        start: Instant,
        step: Duration,
    ) -> Result<(), ScriptError> {
        let total = payloads.len();
        let mut payloads = payloads.into_iter();
        let mut unanswered: VecDeque<Pending<usize>> = VecDeque::new();
        let mut handed = 0;
        while handed < total {
            let now = Instant::now();
            let elapsed = now.saturating_duration_since(start).as_secs_f64();
            let due = ((elapsed / step.as_secs_f64()) as usize + 1).saturating_sub(handed);
            if due == 0 {
                let next_at = start + step.mul_f64(handed as f64);
                std::thread::sleep(next_at.saturating_duration_since(now));
                continue;
            }
            let chunk: Vec<Vec<u8>> = payloads.by_ref().take(due).collect();
            handed += chunk.len();
            unanswered.push_back(self.chan.begin_send_all(&self.script.group, chunk)?);
            while let Some(answer) = unanswered.front().and_then(Pending::try_wait) {
                unanswered.pop_front();
                self.count_sent(answer?);
            }
            if unanswered.len() > PACED_AHEAD
                && let Some(oldest) = unanswered.pop_front()
            {
                self.count_sent(oldest.wait()?);
            }
        }
        for pending in unanswered {
            self.count_sent(pending.wait()?);
        }
        Ok(())
    }

    /// Waits at least [`LINGER`], and until retransmission requests stopped coming for as
    /// long; returns the counters at the end.
    fn linger(&self) -> Result<ChannelStats, ScriptError> {
        let since = Instant::now();
        let mut nacks = (u64::MAX, since);
        loop {
            std::thread::sleep(TICK);
            let stats = self.chan.stats()?;
            let now = Instant::now();
            if stats.traffic.nacks_received != nacks.0 {
                nacks = (stats.traffic.nacks_received, now);
            }
            if now - since >= LINGER && now - nacks.1 >= LINGER {
                return Ok(stats);
            }
        }
    }

    fn report(&self, shared: &mut Shared, expected: u64, stats: &ChannelStats) -> Report {
        let measure = &mut shared.measure;
        // From the first send, or for a member that only receives, the first delivery.
        let start = [measure.first_send, measure.first_delivery]
            .into_iter()
            .flatten()
            .min();
        let mut duration = match (start, measure.last_delivery) {
            (Some(a), Some(b)) if b > a => b - a,
            _ => Duration::ZERO,
        };
        if measure.first_send.is_none()
            && let Some(first) = measure.first_latency
        {
            // A member that only receives measures from when the first message it delivered
            // was sent (its one-way latency earlier than its delivery), not from that
            // delivery: a burst delivered at once is not infinitely fast.
            duration += Duration::from_micros(first.max(0) as u64);
        }
        let (traffic, order_counters, wire) = (stats.traffic, stats.ordering, stats.wire);
        let datagrams = wire.datagrams.saturating_sub(stats.tracker_datagrams);
        let messages = traffic.app_datagrams_sent + traffic.control_datagrams_sent;
        Report {
            username: shared.username.clone(),
            group: self.script.group.clone(),
            mode: match self.order {
                Mode::Fifo => "fifo".into(),
                Mode::Total => "total".into(),
            },
            sent: measure.sent,
            delivered: measure.delivered,
            expected,
            complete: measure.delivered >= expected,
            duration_ms: duration.as_secs_f64() * 1e3,
            delivered_per_second: if duration.is_zero() {
                0.0
            } else {
                measure.delivered as f64 / duration.as_secs_f64()
            },
            latency: Latency::of(&mut measure.latencies),
            datagrams_sent: datagrams,
            bundles_sent: wire.bundles,
            app_datagrams_sent: traffic.app_datagrams_sent,
            multicast_sent: traffic.multicast_sent,
            control_datagrams_sent: traffic.control_datagrams_sent,
            messages_per_datagram: if datagrams == 0 {
                0.0
            } else {
                messages as f64 / datagrams as f64
            },
            tracker_messages_sent: stats.tracker_messages,
            datagrams_per_message: if measure.sent == 0 {
                0.0
            } else {
                datagrams as f64 / measure.sent as f64
            },
            dropped: Dropped {
                malformed: traffic.malformed,
                spoofed: traffic.spoofed,
                unknown: traffic.unknown,
                other_mode: traffic.other_mode,
                beyond_window: order_counters.beyond_window,
            },
            sealed: stats
                .groups
                .iter()
                .any(|g| g.name == self.script.group && g.sealed)
                .then(|| {
                    let s = stats.sealed;
                    Sealed {
                        opened: s.opened,
                        wrong_key: s.unknown_key + s.forged + s.malformed,
                        replayed: s.replayed,
                        stale: s.stale,
                        unsealed: traffic.unsealed,
                    }
                }),
            evicted: measure.evicted.clone(),
            times_evicted: traffic.times_evicted,
            wakeup_preemption_off: runtime::wakeup_preemption_off().unwrap_or(false),
            clock_synced: stats.clock.is_some(),
            clock_offset_us: stats.clock.map_or(0, |e| e.offset_ns / 1000),
            clock_bound_us: stats.clock.map_or(0, |e| (e.bound_ns + 999) / 1000),
            recovery: Recovery {
                nacks_sent: order_counters.nacks_sent,
                retransmissions_sent: order_counters.retransmissions_sent,
                gaps_recovered: order_counters.gaps_recovered,
                gaps_skipped: order_counters.gaps_skipped,
                duplicates: order_counters.duplicates,
            },
            failover: Failover {
                sequencer_losses: traffic.sequencer_losses,
                takeovers: traffic.sequencer_takeovers,
                already_delivered: traffic.already_delivered,
            },
            flow: Flow {
                window_closed: traffic.window_closed,
                probes_sent: traffic.flow_probes,
                acks_sent: traffic.acks_sent,
                acks_received: traffic.acks_received,
            },
        }
    }
}
