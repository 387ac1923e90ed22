use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tracker::{Liveness, Tracker, TrackerConfig};

/// The tracker of the group messenger.
///
/// Keeps the registry of members and groups, answers control requests over TCP (the
/// report's JSON protocol), accepts heartbeats over UDP on the same port, and evicts members
/// that stay silent for more than MULTIPLIER heartbeat intervals, telling the rest of their
/// groups with a Bye on their behalf. Members that never announced the newer protocol (the
/// report's clients) are held to a 60 s interval.
///
/// Several trackers can share one registry kept in an etcd cluster (--registry): any of them
/// answers any request with the same view, and newer peers given all their addresses move
/// to another when theirs dies.
///
/// Example: tracker 127.0.0.1:5000 --seq-addr 127.0.0.1:5001
///
/// Example: tracker 10.0.0.1:5000 --registry etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to listen on: TCP for control requests, UDP (same port) for heartbeats.
    #[arg(value_name = "HOST:PORT")]
    addr: String,

    /// The sequencer's address, for total order; it becomes the member `sequencer` of every
    /// group. The report's spelling --seq_addr is accepted too.
    #[arg(long = "seq-addr", alias = "seq_addr", value_name = "HOST:PORT")]
    seq_addr: Option<String>,

    /// Heartbeat interval that newer members are told to keep, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..))]
    heartbeat_ms: u64,

    /// A member silent for more than this many intervals is suspect: a newer member is
    /// probed (--probe-ms) and evicted if it does not answer; one of the report's clients is
    /// evicted at once.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    multiplier: u32,

    /// How long a suspect member is probed before it is evicted, in milliseconds (a lost
    /// heartbeat or a busy host is not a crash); 0 evicts at once.
    #[arg(long, value_name = "MS", default_value_t = 500)]
    probe_ms: u64,

    /// Most TCP connections open at once; more are answered "busy" and closed.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    max_connections: usize,

    /// Longest control request accepted, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = proto::MAX_REQUEST_LEN)]
    max_request_bytes: usize,

    /// Close a TCP connection that has been idle this long, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    idle_timeout_ms: u64,

    /// Keep the registry in an etcd cluster shared with other trackers, instead of in this
    /// process: etcd://HOST:PORT[,HOST:PORT...][/PREFIX] (the cluster's client endpoints;
    /// trackers with the same PREFIX, default /groupcast, share a registry).
    #[arg(long, value_name = "etcd://HOST:PORT,...")]
    registry: Option<String>,

    /// With --registry: this tracker's etcd lease, in seconds. When the tracker dies, the
    /// members it held that did not move to another tracker within it are evicted.
    #[arg(long, value_name = "SECONDS", default_value_t = 3, value_parser = clap::value_parser!(u64).range(2..=3600))]
    registry_lease: u64,

    /// More detail on standard error (-v: joins, evictions; -vv: every connection and
    /// dropped datagram); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn run(args: Args) -> Result<(), String> {
    let addr = cli::parse_addr(&args.addr).map_err(|e| e.to_string())?;
    let sequencer = args
        .seq_addr
        .as_deref()
        .map(cli::parse_addr)
        .transpose()
        .map_err(|e| format!("--seq-addr: {e}"))?;
    let shared = args
        .registry
        .as_deref()
        .map(tracker::SharedRegistry::parse)
        .transpose()
        .map_err(|e| format!("--registry: {e}"))?
        .map(|r| tracker::SharedRegistry {
            lease: Duration::from_secs(args.registry_lease),
            ..r
        });
    let registry_text = shared.as_ref().map_or(String::new(), |r| {
        format!(
            "; registry shared in etcd at {} ({})",
            r.endpoints.join(","),
            r.prefix
        )
    });
    let config = TrackerConfig {
        shared,
        sequencer,
        liveness: Liveness {
            heartbeat: Duration::from_millis(args.heartbeat_ms),
            multiplier: args.multiplier,
            probe: Duration::from_millis(args.probe_ms),
        },
        max_connections: args.max_connections,
        max_request_len: args.max_request_bytes,
        idle_timeout: Duration::from_millis(args.idle_timeout_ms),
        ..TrackerConfig::new(addr)
    };
    let mut tracker = Tracker::bind(config).map_err(|e| format!("cannot start on {addr}: {e}"))?;
    let stop = tracker.shutdown_handle();
    ctrlc::set_handler(move || stop.shutdown())
        .map_err(|e| format!("cannot handle Ctrl-C: {e}"))?;
    println!(
        "tracker listening on {} (TCP control, UDP heartbeats); heartbeat {} ms, eviction after {} silent intervals{}{registry_text}",
        tracker.local_addr(),
        args.heartbeat_ms,
        args.multiplier,
        sequencer.map_or(String::new(), |s| format!("; sequencer at {s}"))
    );
    tracker
        .run()
        .map_err(|e| format!("event loop failed: {e}"))?;
    let s = tracker.stats().snapshot();
    let etcd = match tracker.etcd_calls() {
        0 => String::new(),
        n => format!(", {n} etcd calls"),
    };
    println!(
        "tracker stopped: {} requests ({} malformed, {} refused), {} UDP heartbeats, {} evictions{etcd}",
        s.requests, s.bad_requests, s.failed_requests, s.heartbeats_udp, s.evictions
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    cli::init_logging(args.verbose);
    cli::report("tracker", run(args))
}
