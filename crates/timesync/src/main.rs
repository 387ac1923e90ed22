use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use clock::{Estimate, human, seed};
use timesync::berkeley::{Master, SlaveEvent, run_slave};
use timesync::server::TimeServer;
use timesync::{LocalClock, client, utc_offset_s};

/// Clock synchronization: Cristian's algorithm (and NTP) against a time server, and
/// Berkeley's algorithm among a master and its slaves.
///
/// Every program can pretend its clock is wrong (--clock-offset-ms, --clock-drift-ppm), so
/// that synchronization shows on one machine; it then also prints the true error, which only
/// a simulated clock can know. The machine's clock is never changed.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// More detail on standard error; RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Args, Clone, Copy)]
struct Skew {
    /// Pretend this process's clock is this many milliseconds ahead (negative: behind).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    clock_offset_ms: f64,
    /// Pretend this process's clock gains this many microseconds per second.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    clock_drift_ppm: f64,
}

impl Skew {
    fn clock(self) -> LocalClock {
        LocalClock::new(self.clock_offset_ms, self.clock_drift_ppm)
    }
}

#[derive(Subcommand)]
enum Command {
    /// A time server: one time string per TCP connection (the seed's Cristian server), and
    /// NTP on UDP at the same port (sntp, ntpdate, chronyd, `timesync ntp`).
    Server {
        /// Address to serve on.
        #[arg(value_name = "HOST:PORT", default_value = "127.0.0.1:8080")]
        addr: String,
        /// The NTP stratum to claim (1: this clock is the reference).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=15))]
        stratum: u8,
        #[command(flatten)]
        skew: Skew,
    },
    /// Cristian's algorithm against a time server (ours or the seed's): offset = server time
    /// + RTT/2 − receive time, within ± RTT/2, best of several samples.
    Cristian {
        /// The time server.
        #[arg(value_name = "HOST:PORT")]
        server: String,
        #[command(flatten)]
        query: Query,
    },
    /// Query an NTP server (ours, or chronyd): the four-timestamp estimate.
    Ntp {
        /// The NTP server.
        #[arg(value_name = "HOST:PORT")]
        server: String,
        #[command(flatten)]
        query: Query,
    },
    /// Berkeley's master: polls its slaves, averages the offsets that are not outliers (its
    /// own included), and tells each process its correction.
    Master {
        /// Address to listen on for slaves.
        #[arg(value_name = "HOST:PORT", default_value = "127.0.0.1:8080")]
        addr: String,
        /// Time between rounds.
        #[arg(long, value_name = "MS", default_value_t = 5000)]
        interval_ms: u64,
        /// Offsets farther than this from the median are left out of the average.
        #[arg(long, value_name = "MS", default_value_t = 1000.0)]
        threshold_ms: f64,
        /// Stop after this many rounds (default: run until Ctrl-C).
        #[arg(long)]
        rounds: Option<u64>,
        #[command(flatten)]
        skew: Skew,
    },
    /// Berkeley's slave: answers the master's polls and applies its corrections. With the
    /// lab's Python master (which never greets a slave) it behaves as the lab's slaves do:
    /// it pushes its time string and applies the synchronized time it is sent.
    Slave {
        /// The master.
        #[arg(value_name = "HOST:PORT", default_value = "127.0.0.1:8080")]
        master: String,
        /// With the lab's master: how often to push our time (the lab's slaves: 5000).
        #[arg(long, value_name = "MS", default_value_t = 5000)]
        push_interval_ms: u64,
        #[command(flatten)]
        skew: Skew,
    },
}

#[derive(Args, Clone, Copy)]
struct Query {
    /// Exchanges per estimate; the one with the smallest round trip is kept.
    #[arg(long, default_value_t = 8)]
    samples: usize,
    /// Estimates to make, this far apart.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    interval_ms: u64,
    /// How many estimates (default 1).
    #[arg(long, default_value_t = 1)]
    rounds: u64,
    #[command(flatten)]
    skew: Skew,
}

fn addr(s: &str) -> Result<SocketAddr, String> {
    cli::parse_addr(s).map_err(|e| e.to_string())
}

fn describe(kind: &str, e: &Estimate, clock: &LocalClock, simulated: bool) -> String {
    let mut line = format!(
        "{kind}: the server is {} ahead of us (± {}, round trip {})",
        human(e.offset_ns),
        human(e.bound_ns).trim_start_matches('+'),
        human(e.rtt_ns).trim_start_matches('+')
    );
    if simulated {
        // Our clock is `error` ahead of the real one, so the server (on the real clock) is
        // `-error` ahead of us.
        let truth = -clock.true_error_ns();
        let residual = e.offset_ns - truth;
        line += &format!(
            "; truly {}: residual error {}, {} the bound",
            human(truth),
            human(residual),
            if residual.abs() <= e.bound_ns {
                "inside"
            } else {
                "OUTSIDE"
            }
        );
    }
    line
}

fn run(cli: Cli, stop: Arc<AtomicBool>) -> Result<(), String> {
    let ntp = cli.command_name() == "ntp";
    match cli.command {
        Command::Server {
            addr: a,
            stratum,
            skew,
        } => {
            let server = TimeServer::start(addr(&a)?, skew.clock(), stratum)
                .map_err(|e| format!("cannot serve on {a}: {e}"))?;
            println!(
                "time server on {}: one time string per TCP connection (Cristian), NTP on UDP (stratum {stratum})",
                server.addr()
            );
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
            }
            println!(
                "time server stopped: {} time strings, {} NTP answers",
                server.served[0].load(Ordering::Relaxed),
                server.served[1].load(Ordering::Relaxed)
            );
            Ok(())
        }
        Command::Cristian { server, query } | Command::Ntp { server, query } => {
            let target = addr(&server)?;
            let clock = query.skew.clock();
            let simulated = query.skew.clock_offset_ms != 0.0 || query.skew.clock_drift_ppm != 0.0;
            // Between rounds the offset is carried at the measured rate (NTP's frequency
            // discipline); every round refines it.
            let mut discipline = clock::Discipline::new();
            for round in 0..query.rounds {
                if round > 0 {
                    std::thread::sleep(Duration::from_millis(query.interval_ms));
                }
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let timeout = Duration::from_secs(2);
                let e = if ntp {
                    client::ntp_query(target, &clock, query.samples, timeout)
                } else {
                    client::cristian(target, &clock, query.samples, timeout)
                }
                .map_err(|e| format!("{target}: {e}"))?;
                let kind = format!(
                    "{} best of {}",
                    if ntp { "NTP" } else { "Cristian" },
                    query.samples
                );
                println!("{}", describe(&kind, &e, &clock, simulated));
                discipline.update(clock.now(), e);
                if let Some(rate) = discipline.rate_ppm() {
                    // The server's rate against ours: ours drifts the other way.
                    println!(
                        "our clock drifts {:+.1} ppm against the server's, measured over the rounds{}",
                        -rate,
                        if simulated {
                            format!(" (truly {:+.1})", query.skew.clock_drift_ppm)
                        } else {
                            String::new()
                        }
                    );
                }
                println!(
                    "synchronized time: {}",
                    seed::format(clock.now().plus(e.offset_ns), utc_offset_s())
                );
            }
            Ok(())
        }
        Command::Master {
            addr: a,
            interval_ms,
            threshold_ms,
            rounds,
            skew,
        } => {
            let mut master = Master::bind(addr(&a)?, skew.clock(), (threshold_ms * 1e6) as i64)
                .map_err(|e| format!("cannot listen on {a}: {e}"))?;
            println!(
                "Berkeley master on {}: a round every {interval_ms} ms, outliers beyond {threshold_ms} ms left out",
                master.addr().map_err(|e| e.to_string())?
            );
            let mut done = 0;
            while !stop.load(Ordering::Relaxed) && rounds.is_none_or(|r| done < r) {
                let mut waited = 0;
                while waited < interval_ms && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(10));
                    waited += 10;
                }
                let r = master.round();
                done += 1;
                println!(
                    "round {done}: {} slave(s); agreed time is {} from the master's clock; master corrects by {}",
                    r.slaves.len(),
                    human(r.average_ns),
                    human(r.master_correction_ns)
                );
                for s in &r.slaves {
                    let bound = if s.seed {
                        "bound unknown: a seed slave measures no round trip".to_owned()
                    } else {
                        format!("± {}", human(s.estimate.bound_ns).trim_start_matches('+'))
                    };
                    println!(
                        "  {}: offset {} ({bound}){}; correction {}",
                        s.addr,
                        human(s.estimate.offset_ns),
                        if s.counted {
                            ""
                        } else {
                            ", an outlier, not averaged"
                        },
                        human(s.correction_ns)
                    );
                }
                for d in &r.dropped {
                    println!("  {d}: gone, dropped");
                }
            }
            Ok(())
        }
        Command::Slave {
            master,
            push_interval_ms,
            skew,
        } => {
            let target = addr(&master)?;
            let mut clock = skew.clock();
            println!(
                "Berkeley slave of {target}; my clock is {} from true time",
                human(clock.true_error_ns())
            );
            let push = Duration::from_millis(push_interval_ms.max(10));
            let mut on_event = |event| match event {
                SlaveEvent::OurMaster => {
                    println!("the master is ours: offsets measured with round trips")
                }
                SlaveEvent::SeedMaster => println!(
                    "the master did not greet us: taken for the lab's; pushing my time every {push_interval_ms} ms"
                ),
                SlaveEvent::Polled => {}
                SlaveEvent::Adjusted {
                    correction_ns,
                    synchronized,
                    true_error_ns,
                } => println!(
                    "synchronized time: {}; correction {} applied; my clock is now {} from true time",
                    seed::format(synchronized, utc_offset_s()),
                    human(correction_ns),
                    human(true_error_ns)
                ),
            };
            // A master not up yet is waited for, as the lab's slaves cannot.
            let mut told = false;
            loop {
                match run_slave(target, &mut clock, &stop, push, &mut on_event) {
                    Err(e)
                        if e.kind() == std::io::ErrorKind::ConnectionRefused
                            && !stop.load(Ordering::Relaxed) =>
                    {
                        if !told {
                            println!("waiting for the master at {target} (Ctrl-C stops)");
                            told = true;
                        }
                        std::thread::sleep(Duration::from_millis(500));
                    }
                    result => break result,
                }
            }
            .map_err(|e| format!("master {target}: {e}"))
        }
    }
}

impl Cli {
    fn command_name(&self) -> &'static str {
        match self.command {
            Command::Server { .. } => "server",
            Command::Cristian { .. } => "cristian",
            Command::Ntp { .. } => "ntp",
            Command::Master { .. } => "master",
            Command::Slave { .. } => "slave",
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::init_logging(cli.verbose);
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    if let Err(e) = ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed)) {
        return cli::report("timesync", Err(format!("cannot handle Ctrl-C: {e}")));
    }
    cli::report("timesync", run(cli, stop))
}
