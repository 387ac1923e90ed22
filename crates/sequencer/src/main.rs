use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use sequencer::{News, SequencerServer};

/// The sequencer of the group messenger: orders every group's messages for total order.
///
/// Start it before the peers, and give its address to the tracker (--seq-addr) so that it
/// becomes the member `sequencer` of every group. Peers in total-order mode (-s) send their
/// messages to it and deliver its sequence.
///
/// Example: sequencer 127.0.0.1:5001 --tracker 127.0.0.1:5000
///
/// A standby on the same host: a second `sequencer 127.0.0.1:5001 --standby -T ...` waits
/// while another process holds the address and takes over the moment it is free (the
/// active one died): the members find a new sequencer at the address they know, and it
/// recovers what the dead one had sent to some of them only. Restart the old one with
/// --standby and it is the next standby.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// UDP address to listen on (the tracker's --seq-addr).
    #[arg(value_name = "HOST:PORT")]
    addr: String,

    /// The tracker: the sequencer registers there and heartbeats like any member, and
    /// believes eviction notices only from that address. Several, comma-separated, for
    /// trackers sharing one registry (their --registry): it moves to the next when its
    /// tracker dies.
    #[arg(short = 'T', long, value_name = "HOST:PORT[,...]")]
    tracker: Option<String>,

    /// Stand by: if another sequencer holds the address, wait (trying every 20 ms) and take
    /// over when it is free.
    #[arg(long)]
    standby: bool,

    /// Largest bundle of ordered messages to one member, in bytes (0: one datagram per
    /// message; default 16 KiB on loopback, 1472 bytes elsewhere, so never fragmented).
    #[arg(long, value_name = "BYTES")]
    bundle_bytes: Option<usize>,

    /// Send an ordered message once to the members' IPv4 multicast group when every member
    /// of its group listens on the same one (their `--multicast`), instead of once per
    /// member: out of the interface of our address, TTL 1. Sealed groups stay unicast.
    #[arg(long)]
    multicast: bool,

    #[command(flatten)]
    low_latency: cli::LowLatencyArg,

    #[command(flatten)]
    seal: cli::SealArgs,

    /// More detail on standard error (-v: joins and evictions; -vv: dropped datagrams);
    /// RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

/// How often a standby tries the address.
const STANDBY_RETRY: Duration = Duration::from_millis(20);

/// Binds `addr`; a standby waits while another process holds it. `None` if interrupted.
fn bind(
    addr: SocketAddr,
    tracker: Option<SocketAddr>,
    standby: bool,
    interrupted: &AtomicBool,
) -> Result<Option<SequencerServer>, String> {
    let since = Instant::now();
    let mut told = false;
    loop {
        match SequencerServer::bind(addr, tracker, ordering::Config::default()) {
            Ok(server) => {
                if told {
                    println!(
                        "standby: {addr} is free after {:.3} s: the sequencer there is gone, taking over",
                        since.elapsed().as_secs_f64()
                    );
                }
                return Ok(Some(server));
            }
            Err(e) if standby && e.kind() == std::io::ErrorKind::AddrInUse => {
                if !told {
                    println!(
                        "standby: another sequencer holds {addr}; taking over the moment it is free"
                    );
                    told = true;
                }
                if interrupted.load(Ordering::SeqCst) {
                    return Ok(None);
                }
                std::thread::sleep(STANDBY_RETRY);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(format!(
                    "cannot listen on {addr}: {e} (another sequencer? --standby waits for it)"
                ));
            }
            Err(e) => return Err(format!("cannot listen on {addr}: {e}")),
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let addr = cli::parse_addr(&args.addr).map_err(|e| e.to_string())?;
    let trackers = args
        .tracker
        .as_deref()
        .map(cli::parse_addrs)
        .transpose()
        .map_err(|e| format!("--tracker: {e}"))?
        .unwrap_or_default();
    let (tracker, other_trackers) = match trackers.split_first() {
        Some((first, rest)) => (Some(*first), rest.to_vec()),
        None => (None, Vec::new()),
    };
    let seals = args.seal.keys()?;
    // Held until we return.
    let _awake = args.low_latency.hold()?;
    // Ctrl-C before the server exists (a standby waiting) ends the wait; after, it stops the
    // server.
    let interrupted = Arc::new(AtomicBool::new(false));
    let server_stop: Arc<Mutex<Option<sequencer::Shutdown>>> = Arc::new(Mutex::new(None));
    {
        let (interrupted, server_stop) = (interrupted.clone(), server_stop.clone());
        ctrlc::set_handler(move || {
            interrupted.store(true, Ordering::SeqCst);
            if let Some(stop) = server_stop.lock().ok().and_then(|s| s.clone()) {
                stop.shutdown();
            }
        })
        .map_err(|e| format!("cannot handle Ctrl-C: {e}"))?;
    }
    let Some(server) = bind(addr, tracker, args.standby, &interrupted)? else {
        println!("standby ended before taking over");
        return Ok(());
    };
    let mut server = server
        .with_other_trackers(&other_trackers)
        .with_max_bundle(args.bundle_bytes)
        .with_seals(&seals)
        .map_err(|e| e.to_string())?;
    if args.multicast {
        server = server
            .with_multicast()
            .map_err(|e| format!("--multicast: {e}"))?;
    }
    if let Ok(mut slot) = server_stop.lock() {
        *slot = Some(server.shutdown_handle());
    }
    if interrupted.load(Ordering::SeqCst) {
        server.shutdown_handle().shutdown();
    }
    println!(
        "sequencer listening on {}{}",
        server.local_addr(),
        tracker.map_or(String::new(), |t| {
            let others: Vec<String> = other_trackers.iter().map(|a| a.to_string()).collect();
            let fallback = match others.is_empty() {
                true => String::new(),
                false => format!(" (or, when it is gone, {})", others.join(", ")),
            };
            format!("; registering with the tracker at {t}{fallback}")
        })
    );
    server
        .run(&mut |news| match news {
            News::TookOver {
                group,
                members,
                recovered,
            } => println!(
                "took {group} over from an earlier sequencer: {members} member(s), {recovered} message(s) it had given some members only ordered again"
            ),
            News::Registered { tracker, again } => println!(
                "registered with the tracker at {tracker}{}",
                if again { " again" } else { "" }
            ),
            News::Refused { tracker, reason } => {
                eprintln!("the tracker at {tracker} refused to register the sequencer: {reason}")
            }
            News::Unreachable { tracker } => eprintln!(
                "cannot reach the tracker at {tracker} yet; sequencing goes on, and it keeps trying"
            ),
            News::Lost { tracker, reason } => eprintln!(
                "lost the tracker at {tracker} ({reason}); sequencing goes on, reconnecting"
            ),
        })
        .map_err(|e| format!("event loop failed: {e}"))?;
    let c = server.node().counters();
    let t = server.node().traffic();
    let wire = server.outbox_stats();
    println!(
        "sequencer stopped: {} messages sequenced, {} retransmitted, {} datagrams in, {} out ({} to the members' multicast group) in {} UDP datagrams ({} bundles), {} dropped",
        c.sent,
        c.retransmissions_sent,
        t.datagrams_received,
        t.datagrams_sent,
        t.multicast_sent,
        wire.datagrams,
        wire.bundles,
        t.malformed + t.spoofed + t.unknown + t.unsealed + server.node().seal_stats().dropped()
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
