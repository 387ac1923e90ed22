use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser;
use runner::baseline::{self, Baseline};
use runner::experiments::{self, Hosts, Order, Plan, Run};

/// Runs the messenger's experiments on a whole local system.
///
/// Starts a tracker, a sequencer and the peers as separate processes on 127.0.0.1, from the
/// binaries beside this one (build them with `cargo build --release`), and prints what every
/// peer measured:
///
/// Experiment 1: PEERS peers in one group, each sending MESSAGES messages at the same time.
///
/// Experiment 2: groups of each size in PEER_COUNTS, one member sending STREAM messages;
/// before each size, the raw-UDP baseline (the same datagrams from bare processes, no
/// ordering) finds this machine's highest rate with nothing lost, and the messenger's
/// throughput is shown as a share of it; with --rate, it is sent at that rate instead, for
/// bare UDP's latency beside the messenger's.
///
/// Each Experiment 2 row is run --rounds times after a warm-up, each round long enough to
/// last --min-round-ms; the tables show the median and the range, the JSON every round.
///
/// Both in FIFO and in total order. Everything it starts is stopped at the end, on failure
/// and on Ctrl-C.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Which experiment: 1, 2 or all.
    #[arg(long, default_value = "all", value_parser = ["1", "2", "all"])]
    experiment: String,

    /// Experiment 1: peers in the group.
    #[arg(long, default_value_t = 5)]
    peers: usize,

    /// Experiment 2: the group sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "2,4,8,16")]
    peer_counts: Vec<usize>,

    /// Experiment 1: messages each peer sends.
    #[arg(long, default_value_t = 200)]
    messages: usize,

    /// Experiment 2: messages the one sender sends (enough for a sustained rate).
    #[arg(long, default_value_t = 20_000)]
    stream: usize,

    /// Experiment 2: rounds counted per group size and order, after one warm-up round that
    /// is not; the tables show the median and the range.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=100))]
    rounds: u64,

    /// Experiment 2: each counted round sends at least enough messages to last this long at
    /// the warm-up's rate (more than --stream when the messenger is fast).
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    min_round_ms: u64,

    /// Experiment 2 without the raw-UDP baseline.
    #[arg(long)]
    no_baseline: bool,

    /// Length of each message's text in bytes.
    #[arg(long, default_value_t = 64)]
    payload: usize,

    /// Messages per second per sender (default: as fast as it can).
    #[arg(long)]
    rate: Option<f64>,

    /// The peers' flow-control window in messages (default: theirs; 0 turns flow control
    /// off, to see what it prevents).
    #[arg(long, value_name = "MESSAGES")]
    flow_window: Option<u64>,

    /// Send one datagram per message (no bundling), for comparison.
    #[arg(long)]
    no_bundling: bool,

    /// Largest bundle in bytes, for the peers and the sequencer (default: theirs, 16 KiB
    /// on loopback).
    #[arg(long, value_name = "BYTES", conflicts_with = "no_bundling")]
    bundle_bytes: Option<usize>,

    /// Seal the group (every datagram authenticated and encrypted with its key): `yes`
    /// seals every run; `both` runs each Experiment 2 row plain and then sealed, to compare
    /// them (the plots show the plain runs). `--sealed` alone means `yes`.
    #[arg(long, value_name = "WHICH", default_value = "no", num_args = 0..=1,
          default_missing_value = "yes", value_parser = ["no", "yes", "both"])]
    sealed: String,

    /// Where the processes run: `loopback` (all on 127.0.0.1), `netns` (the tracker, the
    /// sequencer and each peer on a host of its own: network namespaces on one bridge, MTU
    /// 1,500; needs root), or `both`, each run on loopback and then on hosts, side by side.
    #[arg(long, value_name = "WHERE", default_value = "loopback",
          value_parser = ["loopback", "netns", "both"])]
    hosts: String,

    /// How the peers reach each other: `unicast` (a datagram per member), `multicast` (the
    /// peers also listen on an IP multicast group, TTL 1, on loopback or the namespaces'
    /// bridge, and a bundle for all of them is sent once, by a sender in FIFO order, by the
    /// sequencer in total order), or `both`, each Experiment 2 row under each.
    #[arg(long, value_name = "HOW", default_value = "unicast",
          value_parser = ["unicast", "multicast", "both"])]
    transport: String,

    /// Only this order: fifo or total (default: both).
    #[arg(long, value_parser = ["fifo", "total"])]
    order: Option<String>,

    #[command(flatten)]
    low_latency: cli::LowLatencyArg,

    /// Where to write every figure, per peer, as JSON (default: figures.json in --out).
    #[arg(long, value_name = "FILE")]
    json: Option<std::path::PathBuf>,

    /// Directory for the JSON and Experiment 2's plots (SVG: throughput and latency
    /// against the group size).
    #[arg(long, value_name = "DIR", default_value = "target/experiments")]
    out: std::path::PathBuf,
}

impl Args {
    /// One group of `peers`, `senders` of them sending `messages` each, with the options
    /// every run shares.
    fn plan(
        &self,
        experiment: u8,
        order: Order,
        peers: usize,
        senders: usize,
        messages: usize,
    ) -> Plan {
        Plan {
            sealed: self.sealed == "yes",
            hosts: Hosts::Loopback,
            multicast: self.transport == "multicast",
            experiment,
            order,
            peers,
            senders,
            messages,
            payload: self.payload,
            rate: self.rate,
            flow_window: self.flow_window,
            bundle_bytes: if self.no_bundling {
                Some(0)
            } else {
                self.bundle_bytes
            },
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    cli::init_logging(0);
    cli::report("runner", run(args))
}

fn run(args: Args) -> Result<(), String> {
    let bin = runner::system::binaries()?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .map_err(|e| format!("cannot handle Ctrl-C: {e}"))?;
    let orders: Vec<Order> = match args.order.as_deref() {
        Some("fifo") => vec![Order::Fifo],
        Some("total") => vec![Order::Total],
        _ => vec![Order::Fifo, Order::Total],
    };
    // Held for the whole run, baselines included, so that both see the same machine.
    let _awake = args.low_latency.hold()?;
    let mut all: Vec<Run> = Vec::new();
    let mut complete = true;
    let placements: &[Hosts] = match args.hosts.as_str() {
        "netns" => &[Hosts::Netns],
        "both" => &[Hosts::Loopback, Hosts::Netns],
        _ => &[Hosts::Loopback],
    };
    if placements.contains(&Hosts::Netns) {
        runner::lan::Lan::create("check", 1).map_err(|e| {
            format!("--hosts {}: cannot make hosts of network namespaces (root and iproute2 needed): {e}", args.hosts)
        })?;
    }
    if args.experiment != "2" {
        let plans = orders
            .iter()
            .flat_map(|&order| placements.iter().map(move |&hosts| (order, hosts)));
        for (order, hosts) in plans {
            let plan = Plan {
                hosts,
                ..args.plan(1, order, args.peers, args.peers, args.messages)
            };
            println!(
                "Experiment 1, {} order{}{}: {} peers each sending {} messages of {} bytes at once",
                order.name(),
                if plan.sealed { ", sealed group" } else { "" },
                if hosts == Hosts::Netns {
                    ", each on a host of its own"
                } else {
                    ""
                },
                plan.peers,
                plan.messages,
                plan.payload
            );
            let run = experiments::run(&bin, &plan, &stop)?;
            print!("{}", experiments::peer_table(&run));
            println!();
            complete &= run.summary.complete;
            all.push(run);
        }
    }
    let mut baselines: Vec<Baseline> = Vec::new();
    if args.experiment != "1" {
        let bytes = experiments::datagram_bytes(args.payload);
        println!(
            "Experiment 2: one sender, at least {} messages of {} bytes ({bytes}-byte datagrams), groups of {:?} peers, {} rounds after a warm-up, each of at least {} ms",
            args.stream, args.payload, args.peer_counts, args.rounds, args.min_round_ms
        );
        let mut scaling = Vec::new();
        for &peers in &args.peer_counts {
            if !args.no_baseline {
                let show = |t: &baseline::Trial| {
                    eprintln!(
                        "  raw UDP, {peers} peers, {}: sent {:.0}/s, slowest receiver {:.0}/s, {} lost, p50 {} µs, p99 {} µs",
                        t.rate
                            .map_or("flat out".to_owned(), |r| format!("at {r:.0}/s")),
                        t.sent_per_second,
                        t.slowest_per_second,
                        t.lost,
                        t.latency_p50_us,
                        t.latency_p99_us
                    );
                };
                let found = match args.rate {
                    // At a steady rate: bare UDP at that rate, for its latency.
                    Some(rate) => {
                        let b = baseline::at_rate(&bin, peers, args.stream, bytes, rate, &stop)?;
                        b.trials.iter().for_each(show);
                        b
                    }
                    None => baseline::search(&bin, peers, args.stream, bytes, &stop, show)?,
                };
                baselines.push(found);
            }
            let sealing: &[bool] = match args.sealed.as_str() {
                "both" => &[false, true],
                "yes" => &[true],
                _ => &[false],
            };
            let transports: &[bool] = match args.transport.as_str() {
                "both" => &[false, true],
                "multicast" => &[true],
                _ => &[false],
            };
            let args = &args;
            let plans = orders.iter().flat_map(|&order| {
                sealing.iter().flat_map(move |&sealed| {
                    placements.iter().flat_map(move |&hosts| {
                        transports.iter().map(move |&multicast| Plan {
                            sealed,
                            hosts,
                            multicast,
                            ..args.plan(2, order, peers, 1, args.stream)
                        })
                    })
                })
            });
            for plan in plans {
                eprint!("  {peers} peers, {}:", plan.label());
                let mut run = experiments::repeat(
                    &bin,
                    &plan,
                    args.rounds as usize,
                    std::time::Duration::from_millis(args.min_round_ms),
                    &stop,
                    |round, r| {
                        eprint!(
                            " {}{:.0}/s",
                            if round == 0 { "warm-up " } else { "" },
                            r.summary.slowest_throughput
                        )
                    },
                )?;
                if let Some(b) = baselines.iter().find(|b| b.peers == peers) {
                    run.summary.of_baseline = (b.lossless_rate() > 0.0)
                        .then(|| run.summary.slowest_throughput / b.lossless_rate());
                }
                eprintln!(
                    "; median slowest receiver {:.0}/s, p50 {:.0} µs{}",
                    run.summary.slowest_throughput,
                    run.latency_p50_us(),
                    if run.summary.complete {
                        ""
                    } else {
                        " (INCOMPLETE)"
                    }
                );
                complete &= run.summary.complete;
                scaling.push(run);
            }
        }
        print!("{}", experiments::scaling_table(&scaling, &baselines));
        all.extend(scaling);
    }
    std::fs::create_dir_all(&args.out)
        .map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
    let json = args
        .json
        .clone()
        .unwrap_or_else(|| args.out.join("figures.json"));
    let figures = serde_json::json!({
        "runs": all,
        "baselines": baselines,
        "low_latency": args.low_latency.low_latency,
    });
    let text = serde_json::to_string_pretty(&figures).map_err(|e| e.to_string())?;
    std::fs::write(&json, text).map_err(|e| format!("cannot write {}: {e}", json.display()))?;
    println!("every figure written to {}", json.display());
    for plot in runner::plot::experiment2(&all, &baselines, &args.out)? {
        println!("plot written to {}", plot.display());
    }
    if complete {
        Ok(())
    } else {
        Err("some peer did not deliver every message (see INCOMPLETE above)".into())
    }
}
