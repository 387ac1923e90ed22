use std::process::ExitCode;

use clap::Parser;

/// The tracker of the group messenger: keeps the registry of members and groups, answers
/// control requests over TCP, and evicts members that stop sending heartbeats.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to listen on, TCP for control requests and UDP for heartbeats (HOST:PORT).
    addr: String,
    /// The sequencer's address, for total order (HOST:PORT).
    #[arg(long = "seq-addr", alias = "seq_addr")]
    seq_addr: Option<String>,
    /// More detail on standard error (-v, -vv, -vvv); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> ExitCode {
    let args = Args::parse();
    cli::init_logging(args.verbose);
    let result = cli::parse_addr(&args.addr)
        .map_err(|e| e.to_string())
        .and_then(|_| Err("the tracker daemon is not built yet (issue #3)".to_owned()));
    cli::report("tracker", result)
}
