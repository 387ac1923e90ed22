use std::process::ExitCode;

use clap::Parser;

/// A member of the group messenger: joins groups and multicasts messages to them.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// UDP address to receive group messages on (HOST:PORT).
    addr: String,
    /// This member's name.
    username: String,
    /// The tracker's address (HOST:PORT).
    tracker: String,
    /// Deliver in total order, through the sequencer.
    #[arg(short = 's', long = "total")]
    total: bool,
    /// Script mode: send each line of FILE and report measurements.
    #[arg(short = 't', long = "script", value_name = "FILE")]
    script: Option<std::path::PathBuf>,
    /// More detail on standard error (-v, -vv, -vvv); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> ExitCode {
    let args = Args::parse();
    cli::init_logging(args.verbose);
    let result = cli::parse_addr(&args.addr)
        .and_then(|_| cli::parse_addr(&args.tracker))
        .map_err(|e| e.to_string())
        .and_then(|_| Err("the peer daemon is not built yet (issue #4)".to_owned()));
    cli::report("peer", result)
}
