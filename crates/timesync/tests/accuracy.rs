//! Accuracy with simulated clocks up to ±1 s off and drifting up to ±200 ppm: the true
//! residual error — known, since every process shares the machine's clock — is inside the
//! bound the algorithm reports, every time.

#![allow(clippy::unwrap_used)] // a test may stop at the first surprise

use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::time::Duration;

use timesync::berkeley::{Master, SEED_PUSH_INTERVAL, SlaveEvent, run_slave};
use timesync::server::TimeServer;
use timesync::{LocalClock, client};

/// A deterministic spread of skews: offsets in ±1 s, drifts in ±200 ppm.
fn skew(i: u64) -> (f64, f64) {
    let x = (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11) as f64 / (1u64 << 53) as f64;
    let y = (i.wrapping_mul(0xc2b2_ae3d_27d4_eb4f) >> 11) as f64 / (1u64 << 53) as f64;
    ((x * 2.0 - 1.0) * 1000.0, (y * 2.0 - 1.0) * 200.0)
}

#[test]
fn cristian_and_ntp_residuals_stay_inside_their_bounds() {
    let server =
        TimeServer::start("127.0.0.1:0".parse().unwrap(), LocalClock::new(0.0, 0.0), 1).unwrap();
    for i in 0..40 {
        let (offset_ms, drift) = skew(i);
        let clock = LocalClock::new(offset_ms, drift);
        for ntp in [false, true] {
            let e = if ntp {
                client::ntp_query(server.addr(), &clock, 4, Duration::from_secs(2))
            } else {
                client::cristian(server.addr(), &clock, 4, Duration::from_secs(2))
            }
            .unwrap();
            let truth = -clock.true_error_ns();
            let residual = e.offset_ns - truth;
            assert!(
                residual.abs() <= e.bound_ns,
                "{} with a clock {offset_ms:.1} ms off, {drift:.0} ppm: residual {residual} ns, bound {} ns",
                if ntp { "NTP" } else { "Cristian" },
                e.bound_ns
            );
        }
    }
}

#[test]
fn berkeley_brings_every_clock_within_its_bound_of_the_masters() {
    for round in 0..5u64 {
        let (master_offset, master_drift) = skew(100 + round);
        let mut master = Master::bind(
            "127.0.0.1:0".parse().unwrap(),
            LocalClock::new(master_offset, master_drift),
            10_000_000_000,
        )
        .unwrap();
        let addr = master.addr().unwrap();
        let (tx, rx) = mpsc::channel();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let mut drifts = vec![master_drift.abs()];
        let mut threads = Vec::new();
        for s in 0..3 {
            let (offset_ms, drift) = skew(200 + round * 10 + s);
            drifts.push(drift.abs());
            let (tx, stop) = (tx.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let mut clock = LocalClock::new(offset_ms, drift);
                let _ = run_slave(addr, &mut clock, &stop, SEED_PUSH_INTERVAL, |event| {
                    if let SlaveEvent::Adjusted { .. } = event {
                        tx.send(clock_error_after(&event)).unwrap();
                    }
                });
            }));
        }
        while master.slaves() < 3 {
            master.accept();
            std::thread::sleep(Duration::from_millis(5));
        }
        let report = master.round();
        let master_error = master.clock.true_error_ns();
        let mut errors: Vec<i64> = (0..3)
            .map(|_| rx.recv_timeout(Duration::from_secs(5)).unwrap())
            .collect();
        errors.sort_unstable();
        let max_bound = report
            .slaves
            .iter()
            .map(|s| s.estimate.bound_ns)
            .max()
            .unwrap();
        // Drift between the polls and this comparison (well under 50 ms) adds a little.
        let drift_slack = (drifts.iter().sum::<f64>() * 1e-6 * 50e6) as i64;
        for e in errors {
            assert!(
                (e - master_error).abs() <= max_bound + drift_slack,
                "round {round}: a slave ends {} ns from the master, bound {max_bound} (+{drift_slack}) ns",
                e - master_error
            );
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        drop(master);
        for t in threads {
            t.join().unwrap();
        }
    }
}

fn clock_error_after(event: &SlaveEvent) -> i64 {
    match event {
        SlaveEvent::Adjusted { true_error_ns, .. } => *true_error_ns,
        _ => 0,
    }
}
