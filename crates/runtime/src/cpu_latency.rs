//! Keeping the machine's CPUs out of deep idle while a latency-sensitive program runs.
//!
//! A message's one-way latency includes waking its receiver. When the receiver's CPU is
//! idle, that wake-up is the CPU leaving its idle state, which on a virtual machine that
//! halts idle virtual CPUs costs tens of microseconds (this project's machine: bare UDP
//! between processes p99 ≈ 120–145 µs with the CPUs idling as they please, ≈ 45–65 µs
//! with idle CPUs polling). Linux lets a process ask for a bound on that exit latency (PM QoS):
//! write the bound, in microseconds, as a 32-bit integer to `/dev/cpu_dma_latency` and keep
//! the file open; the request holds until it is closed. A bound of 0 keeps idle CPUs
//! polling instead of halting: lower latency, more power, and for the whole machine, not
//! just this process — hence opt-in.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::time::Duration;

/// The PM QoS device of the CPUs' wake-up latency.
const DEVICE: &str = "/dev/cpu_dma_latency";

/// A held request that idle CPUs wake within a bound; dropped, it is withdrawn.
#[derive(Debug)]
pub struct CpuWakeLatency {
    _file: File,
}

impl CpuWakeLatency {
    /// Asks that idle CPUs wake within `bound` (rounded down to microseconds; zero keeps
    /// them polling) for as long as the value lives. Fails where the kernel offers no such
    /// request or we may not make it (it needs root, or write access to the device).
    pub fn hold(bound: Duration) -> io::Result<Self> {
        let micros = i32::try_from(bound.as_micros()).unwrap_or(i32::MAX);
        let mut file = OpenOptions::new().write(true).open(DEVICE).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot hold {DEVICE} (needs root): {e}"))
        })?;
        file.write_all(&micros.to_ne_bytes())?;
        Ok(Self { _file: file })
    }

    /// The bound in force for the whole machine now: the lowest of every request held,
    /// or the kernel's default when none is.
    pub fn current() -> io::Result<Duration> {
        let mut bytes = [0u8; 4];
        File::open(DEVICE)?.read_exact(&mut bytes)?;
        let micros = i32::from_ne_bytes(bytes);
        Ok(Duration::from_micros(micros.max(0) as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_bound_is_in_force_until_dropped() {
        let Ok(before) = CpuWakeLatency::current() else {
            eprintln!("SKIPPED: no readable {DEVICE} here");
            return;
        };
        let Ok(held) = CpuWakeLatency::hold(Duration::ZERO) else {
            eprintln!("SKIPPED: cannot hold {DEVICE} (needs root)");
            return;
        };
        assert_eq!(CpuWakeLatency::current().unwrap(), Duration::ZERO);
        drop(held);
        // Another program may hold a request of its own meanwhile; ours is gone at least
        // when nobody else held one before.
        if before > Duration::ZERO {
            assert_eq!(CpuWakeLatency::current().unwrap(), before);
        }
    }
}
