use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser;
use runner::experiments::{self, Order, Plan, Run};

/// Runs the messenger's experiments on a whole local system.
///
/// Starts a tracker, a sequencer and the peers as separate processes on 127.0.0.1, from the
/// binaries beside this one (build them with `cargo build --release`), and prints what every
/// peer measured:
///
/// Experiment 1: PEERS peers in one group, each sending MESSAGES messages at the same time.
///
/// Experiment 2: groups of each size in PEER_COUNTS, one member sending MESSAGES messages.
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

    /// Messages each sender sends.
    #[arg(long, default_value_t = 200)]
    messages: usize,

    /// Length of each message's text in bytes.
    #[arg(long, default_value_t = 64)]
    payload: usize,

    /// Messages per second per sender (default: as fast as it can).
    #[arg(long)]
    rate: Option<f64>,

    /// Only this order: fifo or total (default: both).
    #[arg(long, value_parser = ["fifo", "total"])]
    order: Option<String>,

    /// Where to write every figure, per peer, as JSON (default: figures.json in --out).
    #[arg(long, value_name = "FILE")]
    json: Option<std::path::PathBuf>,

    /// Directory for the JSON and Experiment 2's plots (SVG: throughput and latency
    /// against the group size).
    #[arg(long, value_name = "DIR", default_value = "target/experiments")]
    out: std::path::PathBuf,
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
    let mut all: Vec<Run> = Vec::new();
    let mut complete = true;
    if args.experiment != "2" {
        for &order in &orders {
            let plan = Plan {
                experiment: 1,
                order,
                peers: args.peers,
                senders: args.peers,
                messages: args.messages,
                payload: args.payload,
                rate: args.rate,
            };
            println!(
                "Experiment 1, {} order: {} peers each sending {} messages of {} bytes at once",
                order.name(),
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
    if args.experiment != "1" {
        println!(
            "Experiment 2: one sender, {} messages of {} bytes, groups of {:?} peers",
            args.messages, args.payload, args.peer_counts
        );
        let mut scaling = Vec::new();
        for &peers in &args.peer_counts {
            for &order in &orders {
                let plan = Plan {
                    experiment: 2,
                    order,
                    peers,
                    senders: 1,
                    messages: args.messages,
                    payload: args.payload,
                    rate: args.rate,
                };
                eprint!("  running {peers} peers, {} order ... ", order.name());
                let run = experiments::run(&bin, &plan, &stop)?;
                eprintln!("{:.0} ms", run.summary.wall_ms);
                complete &= run.summary.complete;
                scaling.push(run);
            }
        }
        print!("{}", experiments::scaling_table(&scaling));
        all.extend(scaling);
    }
    std::fs::create_dir_all(&args.out)
        .map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
    let json = args
        .json
        .clone()
        .unwrap_or_else(|| args.out.join("figures.json"));
    let text = serde_json::to_string_pretty(&all).map_err(|e| e.to_string())?;
    std::fs::write(&json, text).map_err(|e| format!("cannot write {}: {e}", json.display()))?;
    println!("every figure written to {}", json.display());
    for plot in runner::plot::experiment2(&all, &args.out)? {
        println!("plot written to {}", plot.display());
    }
    if complete {
        Ok(())
    } else {
        Err("some peer did not deliver every message (see INCOMPLETE above)".into())
    }
}
