//! The deterministic simulation of a sequencer and several peers under seeded loss,
//! duplication, reordering, delay and a crash. Every seed must keep every guarantee.
//!
//! A failure prints the seed and its scenario; replay one seed with
//! `SIM_SEED=<seed> SIM_MODE=<fifo|total> cargo test -p ordering --test simulation replay -- --nocapture`.

#![allow(clippy::unwrap_used)] // a test may stop at the first surprise

mod sim;

use sim::{Mode, Scenario, Sim};

/// Seeds per mode and per test; two tests per mode let the test runner use both cores.
const SEEDS: u64 = 1000;

fn run_seeds(mode: Mode, seeds: std::ops::Range<u64>) {
    let mut recovered = 0;
    for seed in seeds {
        let scenario = Scenario::from_seed(seed, mode);
        let outcome =
            std::panic::catch_unwind(|| Sim::new(scenario.clone()).run()).unwrap_or_else(|_| {
                panic!(
                    "seed {seed} panicked\n{scenario:#?}\nreplay: SIM_SEED={seed} SIM_MODE={} \
                     cargo test -p ordering --test simulation replay -- --nocapture",
                    mode_name(mode)
                )
            });
        if let Err(broken) = outcome.check() {
            panic!(
                "seed {seed} broke a guarantee: {broken}\n{scenario:#?}\nreplay: SIM_SEED={seed} \
                 SIM_MODE={} cargo test -p ordering --test simulation replay -- --nocapture",
                mode_name(mode)
            );
        }
        recovered += outcome
            .counters
            .iter()
            .map(|c| c.gaps_recovered)
            .sum::<u64>();
    }
    // The faults were real: losses happened and were repaired.
    assert!(recovered > 0, "no seed recovered a single gap");
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Fifo => "fifo",
        Mode::Total => "total",
    }
}

#[test]
fn fifo_keeps_its_guarantees_for_every_seed_a() {
    run_seeds(Mode::Fifo, 0..SEEDS);
}

#[test]
fn fifo_keeps_its_guarantees_for_every_seed_b() {
    run_seeds(Mode::Fifo, SEEDS..2 * SEEDS);
}

#[test]
fn total_order_keeps_its_guarantees_for_every_seed_a() {
    run_seeds(Mode::Total, 0..SEEDS);
}

#[test]
fn total_order_keeps_its_guarantees_for_every_seed_b() {
    run_seeds(Mode::Total, SEEDS..2 * SEEDS);
}

/// Replays one seed (from `SIM_SEED`, mode from `SIM_MODE`) and prints what happened.
#[test]
fn replay() {
    let Some(seed) = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) else {
        return;
    };
    let mode = match std::env::var("SIM_MODE").as_deref() {
        Ok("total") => Mode::Total,
        _ => Mode::Fifo,
    };
    let scenario = Scenario::from_seed(seed, mode);
    println!("{scenario:#?}");
    let outcome = Sim::new(scenario).run();
    for (peer, seen) in outcome.delivered.iter().enumerate() {
        println!("peer {peer} delivered {} messages", seen.len());
    }
    for (node, c) in outcome.counters.iter().enumerate() {
        println!("node {node}: {c:?}");
    }
    println!("finished at {} µs", outcome.finished_at_us);
    outcome.check().expect("guarantees hold");
}

/// Heavy loss on a larger group, in both modes: the extreme the seeds do not reach.
#[test]
fn heavy_loss_is_recovered_completely() {
    for mode in [Mode::Fifo, Mode::Total] {
        let mut scenario = Scenario::from_seed(7, mode);
        scenario.peers = 6;
        scenario.messages_per_peer = 100;
        scenario.faults.loss = 0.3;
        scenario.faults.duplication = 0.05;
        scenario.faults.crash = None;
        let outcome = Sim::new(scenario.clone()).run();
        outcome.check().unwrap_or_else(|e| {
            panic!(
                "{e}\n{scenario:#?}\ncounters per node: {:#?}",
                outcome.counters
            )
        });
        let recovered: u64 = outcome.counters.iter().map(|c| c.gaps_recovered).sum();
        assert!(recovered > 100, "30% loss must have needed recovery");
    }
}
