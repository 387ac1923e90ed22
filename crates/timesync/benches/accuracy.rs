//! Accuracy of the three algorithms on loopback, with simulated clocks up to ±1 s off and
//! drifting up to ±200 ppm: the median and 99th percentile of the true residual error
//! (known, since every process shares the machine's clock) and of the bound each reports.
//! `ntp+10s` is the disciplined clock a peer keeps between syncs: two NTP syncs 10 s apart
//! (which give the drift), read 10 s after the second, at the end of a sync interval.
//!
//! Run: `cargo bench -p timesync --bench accuracy`; `-- --test` runs a short pass (CI).

#![allow(clippy::unwrap_used)] // a measuring tool stops at the first surprise

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::time::Duration;

use timesync::berkeley::{Master, SEED_PUSH_INTERVAL, SlaveEvent, run_slave};
use timesync::server::TimeServer;
use timesync::{LocalClock, client};

fn skew(i: u64) -> (f64, f64) {
    let x = (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11) as f64 / (1u64 << 53) as f64;
    let y = (i.wrapping_mul(0xc2b2_ae3d_27d4_eb4f) >> 11) as f64 / (1u64 << 53) as f64;
    ((x * 2.0 - 1.0) * 1000.0, (y * 2.0 - 1.0) * 200.0)
}

fn quantiles(mut v: Vec<i64>) -> (i64, i64) {
    v.sort_unstable();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

fn line(name: &str, residuals: Vec<i64>, bounds: Vec<i64>, outside: usize) {
    let n = residuals.len();
    let (r50, r99) = quantiles(residuals);
    let (b50, b99) = quantiles(bounds);
    println!(
        "clock/{name:<9} residual |error| p50 {:>6.1} µs  p99 {:>6.1} µs   bound p50 {:>6.1} µs  p99 {:>6.1} µs   ({n} runs, {outside} outside the bound)",
        r50 as f64 / 1e3,
        r99 as f64 / 1e3,
        b50 as f64 / 1e3,
        b99 as f64 / 1e3
    );
}

fn main() {
    let runs: u64 = if std::env::args().any(|a| a == "--test") {
        10
    } else {
        300
    };
    let server =
        TimeServer::start("127.0.0.1:0".parse().unwrap(), LocalClock::new(0.0, 0.0), 1).unwrap();
    for ntp in [false, true] {
        let (mut residuals, mut bounds, mut outside) = (Vec::new(), Vec::new(), 0);
        for i in 0..runs {
            let (offset, drift) = skew(i);
            let clock = LocalClock::new(offset, drift);
            let e = if ntp {
                client::ntp_query(server.addr(), &clock, 8, Duration::from_secs(2))
            } else {
                client::cristian(server.addr(), &clock, 8, Duration::from_secs(2))
            }
            .unwrap();
            let residual = (e.offset_ns + clock.true_error_ns()).abs();
            outside += usize::from(residual > e.bound_ns);
            residuals.push(residual);
            bounds.push(e.bound_ns);
        }
        line(
            if ntp { "ntp" } else { "cristian" },
            residuals,
            bounds,
            outside,
        );
    }

    disciplined(server.addr(), runs);

    // Berkeley: a master and three slaves; the residual is how far each slave's corrected
    // clock ends from the master's corrected clock.
    let (mut residuals, mut bounds, mut outside) = (Vec::new(), Vec::new(), 0);
    for round in 0..runs.div_ceil(3) {
        let (mo, md) = skew(10_000 + round);
        let mut master = Master::bind(
            "127.0.0.1:0".parse().unwrap(),
            LocalClock::new(mo, md),
            i64::MAX / 4,
        )
        .unwrap();
        let addr = master.addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let mut threads = Vec::new();
        for s in 0..3 {
            let (o, d) = skew(20_000 + round * 3 + s);
            let (tx, stop) = (tx.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let mut clock = LocalClock::new(o, d);
                let _ = run_slave(addr, &mut clock, &stop, SEED_PUSH_INTERVAL, |e| {
                    if let SlaveEvent::Adjusted { true_error_ns, .. } = e {
                        tx.send(true_error_ns).unwrap();
                    }
                });
            }));
        }
        while master.slaves() < 3 {
            master.accept();
            std::thread::sleep(Duration::from_millis(2));
        }
        let report = master.round();
        let master_error = master.clock.true_error_ns();
        let bound = report
            .slaves
            .iter()
            .map(|s| s.estimate.bound_ns)
            .max()
            .unwrap();
        for _ in 0..3 {
            let e = rx.recv_timeout(Duration::from_secs(5)).unwrap();
            let residual = (e - master_error).abs();
            outside += usize::from(residual > bound);
            residuals.push(residual);
            bounds.push(bound);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        drop(master);
        for t in threads {
            t.join().unwrap();
        }
    }
    line("berkeley", residuals, bounds, outside);
}

/// Clocks drifting up to ±200 ppm, disciplined as a peer's is: NTP syncs 10 s apart (the
/// peers' period), the clock read 10 s after the second, at the end of a sync interval. The
/// runs wait in parallel batches (a batch takes 20 s of real time); their queries and
/// readings take turns, so that none measures another's load.
fn disciplined(server: std::net::SocketAddr, runs: u64) {
    const BATCH: u64 = 50;
    const INTERVAL: Duration = Duration::from_secs(10);
    let turn = Arc::new(std::sync::Mutex::new(()));
    let (mut residuals, mut bounds, mut outside) = (Vec::new(), Vec::new(), 0);
    let mut first = 0;
    while first < runs {
        let batch: Vec<_> = (first..runs.min(first + BATCH))
            .map(|i| {
                let turn = turn.clone();
                std::thread::spawn(move || {
                    let (offset, drift) = skew(30_000 + i);
                    let clock = LocalClock::new(offset, drift);
                    let mut discipline = clock::Discipline::new();
                    for _ in 0..2 {
                        {
                            let _turn = turn.lock().unwrap();
                            let e = client::ntp_query(server, &clock, 8, Duration::from_secs(2))
                                .unwrap();
                            discipline.update(clock.now(), e);
                        }
                        std::thread::sleep(INTERVAL);
                    }
                    let _turn = turn.lock().unwrap();
                    let e = discipline.estimate_at(clock.now()).unwrap();
                    ((e.offset_ns + clock.true_error_ns()).abs(), e.bound_ns)
                })
            })
            .collect();
        for t in batch {
            let (residual, bound) = t.join().unwrap();
            outside += usize::from(residual > bound);
            residuals.push(residual);
            bounds.push(bound);
        }
        first += BATCH;
    }
    line("ntp+10s", residuals, bounds, outside);
}
