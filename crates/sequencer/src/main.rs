use std::process::ExitCode;

use clap::Parser;

/// The sequencer of the group messenger: orders every group's messages for total order.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// UDP address to listen on (HOST:PORT).
    addr: String,
    /// More detail on standard error (-v, -vv, -vvv); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> ExitCode {
    let args = Args::parse();
    cli::init_logging(args.verbose);
    let result = cli::parse_addr(&args.addr)
        .map_err(|e| e.to_string())
        .and_then(|_| Err("the sequencer daemon is not built yet (issue #4)".to_owned()));
    cli::report("sequencer", result)
}
