use std::io::{self, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use std::sync::mpsc;

use clap::Parser;
use nix::sys::termios;
use peer::console::{self, PlainScreen, visible};
use peer::interactive::{self, Identity, Incoming};
use peer::script::{Script, ScriptError, ScriptPeer};
use peer::{Channel, ChannelConfig, ChannelError, Mode};

mod terminal;

/// A member of the group messenger.
///
/// Interactive (the default): type `!h` for the commands; anything that is not a command is
/// a message to the group you write to. Messages arrive as `in GROUP USERNAME says:: TEXT`.
/// End of input, `!q` and Ctrl-C leave every group and tell the tracker.
///
/// Script mode (`-t FILE`): join a group, wait for the other members, send one message per
/// line of FILE, wait for the deliveries, and print this peer's measurements.
///
/// Example: peer 127.0.0.1:6001 ford 127.0.0.1:5000
#[derive(Parser)]
#[command(version, after_help = peer::command::HELP)]
struct Args {
    /// UDP address to receive group messages on (port 0 picks a free one). Bound to
    /// 0.0.0.0, the peer registers the address of its interface towards the tracker.
    #[arg(value_name = "HOST:PORT")]
    addr: String,

    /// This member's name: unique among live members, at most 64 characters, no spaces or
    /// control characters; "sequencer" is reserved.
    username: String,

    /// The tracker's address; several, comma-separated, for trackers sharing one registry
    /// (their --registry): the peer moves to the next when its tracker dies.
    #[arg(value_name = "TRACKER_HOST:PORT[,...]")]
    tracker: String,

    /// The address the other members reach us at, when it is not the one bound (behind a
    /// NAT, say); it is what the tracker hands out.
    #[arg(long, value_name = "HOST:PORT")]
    advertise: Option<String>,

    /// Total order: deliver every group's messages in the sequencer's order (the tracker
    /// must know a sequencer: its --seq-addr).
    #[arg(short = 's', long = "total")]
    total: bool,

    /// Script mode: send each line of FILE as a message and report measurements.
    #[arg(short = 't', long = "script", value_name = "FILE")]
    script: Option<PathBuf>,

    /// Script mode: the group to join.
    #[arg(long, value_name = "GROUP", default_value = "test")]
    group: String,

    /// Script mode: start sending once the group has this many members (us included).
    #[arg(long, value_name = "N", default_value_t = 1)]
    members: usize,

    /// Script mode: how many deliveries to wait for (default: every member sends as many
    /// lines as we do, so lines x members).
    #[arg(long, value_name = "N")]
    expect: Option<u64>,

    /// Script mode: messages per second (default: as fast as possible).
    #[arg(long, value_name = "PER_SECOND")]
    rate: Option<f64>,

    /// Script mode: give up waiting for the tracker, the members or the deliveries after
    /// this long.
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    timeout_ms: u64,

    /// Script mode: print the measurements as one JSON object instead of a table.
    #[arg(long)]
    json: bool,

    /// Script mode: write every delivery to FILE as GROUP<TAB>AUTHOR<TAB>COUNTER<TAB>TEXT.
    #[arg(long, value_name = "FILE")]
    deliveries: Option<PathBuf>,

    /// Flow control: most of our messages in flight beyond what the slowest member
    /// acknowledged delivering (0: none; at most 4096). A larger window keeps more in
    /// flight; a smaller one keeps queues, and so latency flat out, short.
    #[arg(long, value_name = "MESSAGES", default_value_t = ordering::Config::default().flow_window,
          value_parser = clap::value_parser!(u64).range(0..=4096))]
    flow_window: u64,

    /// Largest bundle of messages to one member, in bytes (0: one datagram per message;
    /// default 16 KiB on loopback, 1472 bytes elsewhere, so never fragmented). Messages
    /// are bundled only when several wait for the same member; old peers never get bundles.
    #[arg(long, value_name = "BYTES")]
    bundle_bytes: Option<usize>,

    /// Also listen on this IPv4 multicast group (e.g. 239.255.0.1:7400), on the interface
    /// of our address, and send there with TTL 1: a message of an unsealed group whose
    /// other members all listen on the same group (they say so in their Hellos) is sent
    /// once instead of once per member; losses are asked for again as ever. For one LAN or
    /// one host (127.0.0.1: loopback); default: unicast only.
    #[arg(long, value_name = "GROUP:PORT", value_parser = multicast_group)]
    multicast: Option<SocketAddr>,

    /// Pretend this host's clock is this many milliseconds ahead (negative: behind), to see
    /// clock synchronization with the tracker at work on one machine.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 0.0,
        allow_negative_numbers = true
    )]
    clock_offset_ms: f64,

    /// Pretend this host's clock gains this many microseconds per second.
    #[arg(
        long,
        value_name = "PPM",
        default_value_t = 0.0,
        allow_negative_numbers = true
    )]
    clock_drift_ppm: f64,

    #[command(flatten)]
    low_latency: cli::LowLatencyArg,

    #[command(flatten)]
    seal: cli::SealArgs,

    /// More detail on standard error (-v: membership and tracker events; -vv: every dropped
    /// datagram); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn run(args: Args) -> Result<bool, String> {
    proto::check_name("username", &args.username)?;
    if args.username == peer::SEQUENCER {
        return Err(format!(
            "the username {:?} is reserved for the sequencer",
            peer::SEQUENCER
        ));
    }
    let addr = cli::parse_addr(&args.addr).map_err(|e| e.to_string())?;
    let trackers = cli::parse_addrs(&args.tracker).map_err(|e| format!("tracker: {e}"))?;
    let script = match &args.script {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            Some(Script {
                lines: text.lines().map(str::to_owned).collect(),
                group: args.group.clone(),
                members: args.members.max(1),
                expect: args.expect,
                rate: args.rate.filter(|r| *r > 0.0),
                timeout: Duration::from_millis(args.timeout_ms),
                deliveries: args.deliveries.clone(),
            })
        }
    };
    let advertise = args
        .advertise
        .as_deref()
        .map(cli::parse_addr)
        .transpose()
        .map_err(|e| format!("--advertise: {e}"))?;
    let order = if args.total { Mode::Total } else { Mode::Fifo };
    // Held until we return.
    let _awake = args.low_latency.hold()?;
    let config = ChannelConfig {
        bind: addr,
        advertise,
        order,
        ordering: ordering::Config {
            flow_window: args.flow_window,
            ..ordering::Config::default()
        },
        // A script starts only once registered; a person may start typing at once.
        connect_timeout: Duration::from_millis(args.timeout_ms),
        bundle_bytes: args.bundle_bytes,
        clock_offset_ms: args.clock_offset_ms,
        clock_drift_ppm: args.clock_drift_ppm,
        seals: args.seal.keys()?,
        multicast: args.multicast,
        other_trackers: trackers[1..].to_vec(),
        ..ChannelConfig::new(&args.username, trackers[0])
    };
    match script {
        Some(script) => run_script(config, script, args.json),
        None => run_interactive(config).map(|()| true),
    }
}

/// Script mode: the report on standard output, `Ok(false)` when deliveries are missing.
fn run_script(config: ChannelConfig, script: Script, json: bool) -> Result<bool, String> {
    let shown = |e: &dyn std::fmt::Display| visible(&e.to_string()).into_owned();
    let peer = ScriptPeer::open(config, script).map_err(|e| shown(&e))?;
    let stop = peer.shutdown_handle();
    ctrlc::set_handler(move || stop.shutdown())
        .map_err(|e| format!("cannot handle Ctrl-C: {e}"))?;
    let report = match peer.run() {
        Ok(report) => report,
        // Stopped (Ctrl-C) before the end: nothing to report.
        Err(ScriptError::Channel(ChannelError::Closed)) => {
            return Err("the script did not run to its end".into());
        }
        Err(e) => return Err(shown(&e)),
    };
    let text = if json {
        serde_json::to_string(&report).map_err(|e| e.to_string())?
    } else {
        report.to_string()
    };
    writeln!(io::stdout().lock(), "{}", text.trim_end()).map_err(|e| e.to_string())?;
    Ok(report.complete)
}

/// Interactive mode: a line editor at a terminal, plain lines from a pipe or a file.
fn run_interactive(config: ChannelConfig) -> Result<(), String> {
    let who = Identity {
        username: config.name.clone(),
        tracker: config.tracker,
        order: config.order,
        sealed: config.seals.iter().map(|(g, _)| g.clone()).collect(),
    };
    let (to, incoming) = mpsc::channel();
    let chan =
        Channel::open_into(config, to.clone(), Incoming::Closed).map_err(|e| e.to_string())?;
    let stop = chan.shutdown_handle();
    ctrlc::set_handler(move || stop.shutdown())
        .map_err(|e| format!("cannot handle Ctrl-C: {e}"))?;
    let at_terminal = io::stdin().is_terminal() && io::stdout().is_terminal();
    // The line editor puts the terminal in raw mode while it reads; whatever state it is in
    // when we stop, the terminal gets back the mode it had.
    let saved_mode = at_terminal
        .then(|| termios::tcgetattr(io::stdin()).ok())
        .flatten();
    let prompt = format!("[{}]> ", who.username);
    let screen =
        match at_terminal.then(|| terminal::start(chan.shutdown_handle(), prompt, to.clone())) {
            Some(Ok(screen)) => screen,
            other => {
                if let Some(Err(e)) = other {
                    log::info!("no line editor ({e}): reading plain lines");
                }
                console::read_lines(io::BufReader::new(io::stdin()), to.clone());
                Box::new(PlainScreen(io::stdout()))
            }
        };
    drop(to);
    let result = interactive::run(chan, who, screen, incoming);
    if let Some(mode) = saved_mode {
        let _ = termios::tcsetattr(io::stdin(), termios::SetArg::TCSANOW, &mode);
        // The shell's prompt starts on a line of its own.
        println!();
    }
    result.map_err(|e| visible(&e.to_string()).into_owned())
}

/// Many small allocations per message (decoded strings, queued datagrams): mimalloc's
/// thread-local free lists serve them faster than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    cli::init_logging(args.verbose);
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("peer: error: not every expected message was delivered");
            ExitCode::FAILURE
        }
        Err(e) => cli::report("peer", Err(e)),
    }
}

/// An IPv4 multicast group and port, for `--multicast`.
fn multicast_group(s: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = s
        .parse()
        .map_err(|_| format!("{s:?} is not GROUP:PORT (e.g. 239.255.0.1:7400)"))?;
    match addr {
        SocketAddr::V4(a) if a.ip().is_multicast() && a.port() != 0 => Ok(addr),
        _ => Err(format!(
            "{addr} is not an IPv4 multicast group (224.0.0.0 to 239.255.255.255) with a port"
        )),
    }
}
