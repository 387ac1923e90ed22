//! The raw-UDP baseline: what this machine's loopback carries with no messenger at all.
//!
//! `rawudp receive` binds a socket like a peer's and counts what arrives; `rawudp send`
//! sends each message as one datagram to every receiver, message after message, like a FIFO
//! peer multicasting. No ordering, no JSON, no recovery: the datagrams only carry a number
//! and the time they were sent (padded to the messenger's datagram size), so the receivers
//! can count losses and measure one-way latency. The experiment runner starts these
//! processes; they print their figures as one JSON line.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use serde_json::json;

/// Header of every datagram: its number and its send time (µs since the epoch), little-endian.
const HEADER: usize = 16;

/// Raw-UDP baseline for the experiment runner.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand)]
enum Role {
    /// Binds 127.0.0.1 (a free port, printed as `rawudp listening on ADDR`) and counts
    /// datagrams until EXPECT have arrived or none came for IDLE_MS.
    Receive {
        /// Datagrams the sender will send to this receiver.
        #[arg(long)]
        expect: u64,
        /// Give up this long after the last datagram (or after start, if none came).
        #[arg(long, default_value_t = 1000)]
        idle_ms: u64,
    },
    /// Sends MESSAGES messages, each one datagram of SIZE bytes to every receiver.
    Send {
        /// The receivers' addresses, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        to: Vec<SocketAddr>,
        /// How many messages.
        #[arg(long)]
        messages: u64,
        /// Size of each datagram in bytes (at least 16).
        #[arg(long, default_value_t = 200)]
        size: usize,
        /// Messages per second (default: as fast as the socket takes them).
        #[arg(long)]
        rate: Option<f64>,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.role {
        Role::Receive { expect, idle_ms } => receive(expect, Duration::from_millis(idle_ms)),
        Role::Send {
            to,
            messages,
            size,
            rate,
        } => send(&to, messages, size, rate),
    };
    cli::report("rawudp", result)
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn bind() -> Result<std::net::UdpSocket, String> {
    let addr: SocketAddr = ([127, 0, 0, 1], 0).into();
    // The same buffer sizes a peer asks for.
    let udp = runtime::bind_udp(addr, 8 << 20, 4 << 20).map_err(|e| format!("cannot bind: {e}"))?;
    udp.set_nonblocking(false).map_err(|e| e.to_string())?;
    Ok(udp)
}

fn receive(expect: u64, idle: Duration) -> Result<(), String> {
    let udp = bind()?;
    let addr = udp.local_addr().map_err(|e| e.to_string())?;
    println!("rawudp listening on {addr}");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    udp.set_read_timeout(Some(idle))
        .map_err(|e| e.to_string())?;
    let mut seen = vec![false; expect as usize];
    let (mut unique, mut duplicates, mut strays) = (0u64, 0u64, 0u64);
    let mut latencies: Vec<i64> = Vec::with_capacity(expect as usize);
    let mut first_sent: Option<u64> = None;
    let mut last_arrival = 0u64;
    let mut buf = vec![0u8; 65536];
    while unique < expect {
        let n = match udp.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("receive: {e}")),
        };
        let arrival = now_us();
        let (Some(number), Some(sent)) = (word(&buf[..n], 0), word(&buf[..n], 8)) else {
            strays += 1;
            continue;
        };
        match seen.get_mut(number as usize) {
            Some(s) if !*s => {
                *s = true;
                unique += 1;
                latencies.push(arrival as i64 - sent as i64);
                first_sent = Some(first_sent.map_or(sent, |f| f.min(sent)));
                last_arrival = arrival;
            }
            Some(_) => duplicates += 1,
            None => strays += 1,
        }
    }
    latencies.sort_unstable();
    let percentile = |p: f64| -> i64 {
        if latencies.is_empty() {
            return 0;
        }
        let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies[i.min(latencies.len() - 1)]
    };
    let span_us = first_sent.map_or(0, |f| last_arrival.saturating_sub(f));
    println!(
        "{}",
        json!({
            "received": unique,
            "expected": expect,
            "lost": expect - unique,
            "duplicates": duplicates,
            "strays": strays,
            "duration_ms": span_us as f64 / 1e3,
            "per_second": if span_us > 0 { unique as f64 * 1e6 / span_us as f64 } else { 0.0 },
            "p50_us": percentile(0.5),
            "p99_us": percentile(0.99),
        })
    );
    Ok(())
}

fn word(bytes: &[u8], at: usize) -> Option<u64> {
    let b: [u8; 8] = bytes.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_le_bytes(b))
}

fn send(to: &[SocketAddr], messages: u64, size: usize, rate: Option<f64>) -> Result<(), String> {
    let udp = bind()?;
    let mut datagram = vec![b'x'; size.max(HEADER)];
    let step = rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(1.0 / r));
    let started = Instant::now();
    let mut failures = 0u64;
    for number in 0..messages {
        if let Some(step) = step {
            pace(started + step.mul_f64(number as f64));
        }
        datagram[..8].copy_from_slice(&number.to_le_bytes());
        datagram[8..16].copy_from_slice(&now_us().to_le_bytes());
        for addr in to {
            // A blocking socket: a full send buffer waits, as a peer's would.
            if udp.send_to(&datagram, addr).is_err() {
                failures += 1;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({
            "sent": messages,
            "datagrams": messages * to.len() as u64,
            "send_failures": failures,
            "duration_ms": elapsed * 1e3,
            "per_second": if elapsed > 0.0 { messages as f64 / elapsed } else { 0.0 },
        })
    );
    Ok(())
}

/// Waits until `at`: sleeps while it is far, spins the last stretch (a sleep overshoots by
/// tens of microseconds, too coarse for rates of tens of thousands per second).
fn pace(at: Instant) {
    loop {
        let now = Instant::now();
        if now >= at {
            return;
        }
        let left = at - now;
        if left > Duration::from_micros(200) {
            std::thread::sleep(left - Duration::from_micros(100));
        } else {
            std::hint::spin_loop();
        }
    }
}
