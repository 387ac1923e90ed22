//! What the messenger's programs share on their command lines: parsing `HOST:PORT`
//! arguments, setting up logging (quiet by default, `-v` or `RUST_LOG` for detail), and
//! turning an error into one clear line and an exit code. What their event loops share at
//! run time is in `runtime`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::fmt::Display;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;

use thiserror::Error;

/// Why an address argument was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    /// Not of the form `HOST:PORT`.
    #[error("{input:?} is not HOST:PORT (for example 127.0.0.1:5000 or localhost:5000)")]
    Malformed {
        /// The argument as given.
        input: String,
    },
    /// The port is not a number from 0 to 65535.
    #[error("{input:?}: port {port} is out of range (0 to 65535; 0 picks a free port)")]
    PortOutOfRange {
        /// The argument as given.
        input: String,
        /// The port as given.
        port: String,
    },
    /// The host name did not resolve to an IPv4 or IPv6 address.
    #[error("cannot resolve {input:?}: {reason}")]
    Unresolved {
        /// The argument as given.
        input: String,
        /// What the resolver said.
        reason: String,
    },
}

/// Reads a comma-separated list of addresses (`HOST:PORT,HOST:PORT`), each as
/// [`parse_addr`] does: the trackers sharing one registry, say. At least one.
pub fn parse_addrs(input: &str) -> Result<Vec<SocketAddr>, Error> {
    input
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(parse_addr)
        .collect::<Result<Vec<_>, _>>()
        .and_then(|list| {
            if list.is_empty() {
                Err(Error::Malformed {
                    input: input.to_owned(),
                })
            } else {
                Ok(list)
            }
        })
}

/// Parses `HOST:PORT`, where HOST is an IP address or a name to resolve; an IPv4 address is
/// preferred when a name has several, since the report's peers speak IPv4.
pub fn parse_addr(input: &str) -> Result<SocketAddr, Error> {
    if let Ok(addr) = input.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let malformed = || Error::Malformed {
        input: input.to_owned(),
    };
    let (host, port) = input.rsplit_once(':').ok_or_else(malformed)?;
    if host.is_empty() || port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed());
    }
    if port.parse::<u16>().is_err() {
        return Err(Error::PortOutOfRange {
            input: input.to_owned(),
            port: port.to_owned(),
        });
    }
    let addrs: Vec<SocketAddr> = input
        .to_socket_addrs()
        .map_err(|e| Error::Unresolved {
            input: input.to_owned(),
            reason: e.to_string(),
        })?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| Error::Unresolved {
            input: input.to_owned(),
            reason: "no address".into(),
        })
}

/// Sets up logging to standard error: warnings only by default, `info` with one `-v`,
/// `debug` with two, `trace` with three; `RUST_LOG`, when set, overrides all of these.
/// By default a warning is one plain line (`warning: ...`) a person reads once; timestamps,
/// levels and modules come with `-v` or `RUST_LOG`, for someone reading a log.
pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let detailed = verbose > 0 || std::env::var_os("RUST_LOG").is_some();
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default));
    if detailed {
        builder.format_timestamp_micros();
    } else {
        builder.format(|buf, record| {
            use std::io::Write;
            let level = record.level().as_str().to_ascii_lowercase();
            let level = if level == "warn" { "warning" } else { &level };
            writeln!(buf, "{level}: {}", record.args())
        });
    }
    let _ = builder.try_init();
}

/// Runs a program's body and reports its error, if any, as one line on standard error
/// (`PROGRAM: error: ...`), returning the exit code: 0 on success, 1 on error.
pub fn report<E: Display>(program: &str, result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--low-latency`, as the peer, the sequencer and the runner take it (flattened into their
/// arguments).
#[derive(clap::Args, Debug, Default, Clone, Copy)]
pub struct LowLatencyArg {
    /// Keep this machine's idle CPUs polling instead of halting while this program runs, so
    /// a datagram's receiver wakes in microseconds (Linux PM QoS, `/dev/cpu_dma_latency`:
    /// it needs root, holds for the whole machine, and costs power), and run this program
    /// (and what it starts) under SCHED_BATCH: woken by a datagram, it lets the process
    /// that sent it finish its turn instead of preempting it, so a fan-out to members on
    /// this machine ends before they run rather than with a process switch per datagram
    /// (woken while a busy program holds its CPU, it waits for that program's time slice).
    /// Lowers the latency of a quiet group, most on virtual machines; flat-out throughput
    /// gains nothing.
    #[arg(long)]
    pub low_latency: bool,
}

impl LowLatencyArg {
    /// When asked for: schedules the calling thread, and the threads and programs it starts
    /// from then on, so that woken it does not preempt its waker (call it before starting
    /// any), and returns the request held while the value returned lives; a clear error
    /// when either cannot be had.
    pub fn hold(self) -> Result<Option<runtime::CpuWakeLatency>, String> {
        if !self.low_latency {
            return Ok(None);
        }
        runtime::no_wakeup_preemption().map_err(|e| format!("--low-latency: {e}"))?;
        runtime::CpuWakeLatency::hold(std::time::Duration::ZERO)
            .map(Some)
            .map_err(|e| format!("--low-latency: {e}"))
    }
}

/// The keys of sealed groups, as the peer and the sequencer take them (flattened into their
/// arguments).
#[derive(clap::Args, Debug, Default, Clone)]
pub struct SealArgs {
    /// Seal GROUP with the key in FILE: 64 hexadecimal digits (make one with `openssl rand
    /// -hex 32 > FILE; chmod 600 FILE`). Every member of the group and the sequencer need
    /// the same key; the report's peers cannot join a sealed group. Repeat for more groups.
    #[arg(long = "group-key-file", value_name = "GROUP=FILE")]
    pub key_files: Vec<String>,

    /// Seal GROUP with a key derived from the passphrase on FILE's first line (Argon2id,
    /// salted with the group's name): the same passphrase gives every member the same key.
    /// Repeat for more groups.
    #[arg(long = "group-passphrase-file", value_name = "GROUP=FILE")]
    pub passphrase_files: Vec<String>,
}

impl SealArgs {
    /// Reads every key given: one per group, and no key shared by two groups.
    pub fn keys(&self) -> Result<Vec<(String, seal::GroupKey)>, String> {
        let mut keys: Vec<(String, seal::GroupKey)> = Vec::new();
        let given = self
            .key_files
            .iter()
            .map(|a| (a, "--group-key-file", false))
            .chain(
                self.passphrase_files
                    .iter()
                    .map(|a| (a, "--group-passphrase-file", true)),
            );
        for (arg, flag, passphrase) in given {
            let Some((group, path)) = arg.split_once('=') else {
                return Err(format!("{flag} {arg:?}: expected GROUP=FILE"));
            };
            if group.is_empty() || path.is_empty() {
                return Err(format!("{flag} {arg:?}: expected GROUP=FILE"));
            }
            if keys.iter().any(|(g, _)| g == group) {
                return Err(format!("{flag}: group {group:?} is given a key twice"));
            }
            let path = std::path::Path::new(path);
            let key = if passphrase {
                seal::GroupKey::read_passphrase_file(group, path)
            } else {
                seal::GroupKey::read_key_file(path)
            }
            .map_err(|e| format!("{flag} {group}: {e}"))?;
            keys.push((group.to_owned(), key));
        }
        seal::check_distinct(&keys).map_err(|e| e.to_string())?;
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_addresses_and_names() {
        assert_eq!(
            parse_addr("127.0.0.1:5000"),
            Ok("127.0.0.1:5000".parse().expect("valid"))
        );
        assert_eq!(parse_addr("[::1]:7").map(|a| a.port()), Ok(7));
        let local = parse_addr("localhost:6000").expect("localhost resolves");
        assert!(local.ip().is_loopback() && local.port() == 6000);
    }

    #[test]
    fn refuses_what_is_not_host_and_port() {
        assert!(matches!(
            parse_addr("127.0.0.1:99999"),
            Err(Error::PortOutOfRange { .. })
        ));
        for bad in ["5000", "host:", ":5000", "a:b", ""] {
            assert!(
                matches!(parse_addr(bad), Err(Error::Malformed { .. })),
                "{bad:?} must be refused as malformed"
            );
        }
    }
}
