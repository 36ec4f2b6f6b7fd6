//! A simulator sweep as a test, for mutation testing (`.dev/mutants` runs it against every
//! mutant of the node core): ignored by default, since CI sweeps through the `chorus-sim`
//! binary. `CHORUS_SWEEP_SEEDS` sets the number of seeds (default 100).

use std::time::Duration;

use chorus_sim::args::SeedRange;
use chorus_sim::sim::{self, RunConfig, SweepConfig};

#[test]
#[ignore = "a long sweep; run by .dev/mutants"]
fn a_sweep_finds_no_violation() {
    let seeds: u64 = std::env::var("CHORUS_SWEEP_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let report = sim::sweep(
        &SweepConfig {
            seeds: SeedRange {
                start: 0,
                end: seeds,
            },
            jobs,
            base: RunConfig::new(0),
        },
        Duration::from_secs(3600),
        |_| {},
    );
    assert_eq!(report.runs, seeds);
    if let Some(f) = report.failures.first() {
        panic!(
            "{} of {seeds} seeds failed; first: seed {}: {}\n  replay: {}",
            report.failures.len(),
            f.seed,
            f.reason,
            f.replay
        );
    }
}
