use std::process::ExitCode;

use clap::Parser;
use sequencer::{SequencerServer, TrackerNews};

/// The sequencer of the group messenger: orders every group's messages for total order.
///
/// Start it before the peers, and give its address to the tracker (--seq-addr) so that it
/// becomes the member `sequencer` of every group. Peers in total-order mode (-s) send their
/// messages to it and deliver its sequence.
///
/// Example: sequencer 127.0.0.1:5001 --tracker 127.0.0.1:5000
#[derive(Parser)]
#[command(version)]
struct Args {
    /// UDP address to listen on (the tracker's --seq-addr).
    #[arg(value_name = "HOST:PORT")]
    addr: String,

    /// The tracker: the sequencer registers there and heartbeats like any member, and
    /// believes eviction notices only from that address.
    #[arg(short = 'T', long, value_name = "HOST:PORT")]
    tracker: Option<String>,

    /// Largest bundle of ordered messages to one member, in bytes (0: one datagram per
    /// message; default 16 KiB on loopback, 1472 bytes elsewhere, so never fragmented).
    #[arg(long, value_name = "BYTES")]
    bundle_bytes: Option<usize>,

    /// More detail on standard error (-v: joins and evictions; -vv: dropped datagrams);
    /// RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn run(args: Args) -> Result<(), String> {
    let addr = cli::parse_addr(&args.addr).map_err(|e| e.to_string())?;
    let tracker = args
        .tracker
        .as_deref()
        .map(cli::parse_addr)
        .transpose()
        .map_err(|e| format!("--tracker: {e}"))?;
    let mut server = SequencerServer::bind(addr, tracker, ordering::Config::default())
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?
        .with_max_bundle(args.bundle_bytes);
    let stop = server.shutdown_handle();
    ctrlc::set_handler(move || stop.shutdown())
        .map_err(|e| format!("cannot handle Ctrl-C: {e}"))?;
    println!(
        "sequencer listening on {}{}",
        server.local_addr(),
        tracker.map_or(String::new(), |t| format!(
            "; registering with the tracker at {t}"
        ))
    );
    server
        .run(&mut |news| match news {
            TrackerNews::Registered { tracker, again } => println!(
                "registered with the tracker at {tracker}{}",
                if again { " again" } else { "" }
            ),
            TrackerNews::Refused { tracker, reason } => {
                eprintln!("the tracker at {tracker} refused to register the sequencer: {reason}")
            }
            TrackerNews::Unreachable { tracker } => eprintln!(
                "cannot reach the tracker at {tracker} yet; sequencing goes on, and it keeps trying"
            ),
            TrackerNews::Lost { tracker, reason } => eprintln!(
                "lost the tracker at {tracker} ({reason}); sequencing goes on, reconnecting"
            ),
        })
        .map_err(|e| format!("event loop failed: {e}"))?;
    let c = server.node().counters();
    let t = server.node().traffic();
    let wire = server.outbox_stats();
    println!(
        "sequencer stopped: {} messages sequenced, {} retransmitted, {} datagrams in, {} out in {} UDP datagrams ({} bundles), {} dropped",
        c.sent,
        c.retransmissions_sent,
        t.datagrams_received,
        t.datagrams_sent,
        wire.datagrams,
        wire.bundles,
        t.malformed + t.spoofed + t.unknown
    );
    Ok(())
}

/// Many small allocations per message (decoded strings, queued datagrams): mimalloc's
/// thread-local free lists serve them faster than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    cli::init_logging(args.verbose);
    cli::report("sequencer", run(args))
}
