//! A run is a pure function of its seed and arguments: same inputs, same trace hash — within
//! one process, across processes, and across sweeps with different numbers of threads.

use std::process::Command;
use std::time::Duration;

use chorus_sim::args::{FaultSet, SeedRange};
use chorus_sim::sim::{self, RunConfig, SweepConfig};

fn config(seed: u64) -> RunConfig {
    RunConfig {
        duration: Duration::from_secs(120),
        ..RunConfig::new(seed)
    }
}

#[test]
fn same_seed_same_trace_in_one_process() {
    let a = sim::run(&config(7)).unwrap();
    let b = sim::run(&config(7)).unwrap();
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a.trace_records, b.trace_records);
    assert_eq!(a.stats, b.stats);
    assert_eq!(a.history.ops(), b.history.ops());
    assert_eq!(a.violations, b.violations);
    assert!(
        a.trace_records > 1000,
        "the run did something: {}",
        a.trace_records
    );

    let c = sim::run(&config(8)).unwrap();
    assert_ne!(a.trace_hash, c.trace_hash, "another seed, another run");
    let mut d = config(7);
    d.faults = "crash".parse::<FaultSet>().unwrap();
    assert_ne!(
        a.trace_hash,
        sim::run(&d).unwrap().trace_hash,
        "other faults, another run"
    );
}

fn trace_hash_of(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_chorus-sim"))
        .args(args)
        .output()
        .expect("run chorus-sim");
    let stdout = String::from_utf8(out.stdout).expect("utf-8 output");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("trace-hash: "),
        "last line is not the trace hash: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    last["trace-hash: ".len()..].to_owned()
}

#[test]
fn same_seed_same_trace_across_processes() {
    let args = ["run", "--seed", "7", "--duration", "2m"];
    let first = trace_hash_of(&args);
    let second = trace_hash_of(&args);
    assert_eq!(first.len(), 64);
    assert_eq!(first, second);
    // The binary computes what the library computes.
    assert_eq!(first, sim::run(&config(7)).unwrap().trace_hash);
    let other = trace_hash_of(&["run", "--seed", "8", "--duration", "2m"]);
    assert_ne!(first, other);
}

#[test]
fn sweeps_do_not_depend_on_the_number_of_threads() {
    let sweep = |jobs| {
        let c = SweepConfig {
            seeds: SeedRange { start: 3, end: 7 },
            jobs,
            base: RunConfig {
                duration: Duration::from_secs(60),
                ..RunConfig::new(0)
            },
        };
        sim::sweep(&c, Duration::from_secs(3600), |_| {})
    };
    let one = sweep(1);
    let three = sweep(3);
    assert_eq!(one.runs, 4);
    assert_eq!(one.sweep_hash, three.sweep_hash);
    let seeds = |r: &sim::SweepReport| r.failures.iter().map(|f| f.seed).collect::<Vec<_>>();
    assert_eq!(seeds(&one), seeds(&three));
}
