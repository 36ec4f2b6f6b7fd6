//! The command line rejects bad input with a clear message and exit status 2, never a panic,
//! and prints the replay command of a run.

use std::process::{Command, Output};

fn sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chorus-sim"))
        .args(args)
        .output()
        .expect("run chorus-sim")
}

#[test]
fn bad_arguments_are_clear_errors() {
    let cases: &[(&[&str], &str)] = &[
        (&["run", "--seed", "x"], "invalid value 'x'"),
        (&["run"], "--seed"),
        (
            &["run", "--seed", "1", "--duration", "10x"],
            "unknown time unit",
        ),
        (
            &["run", "--seed", "1", "--duration", "1.5ms"],
            "finer than a millisecond",
        ),
        (
            &["run", "--seed", "1", "--faults", "partition,meteor"],
            "unknown fault kind \"meteor\"",
        ),
        (
            &["run", "--seed", "1", "--nodes", "0"],
            "--nodes must be between 1 and 64",
        ),
        (
            &["run", "--seed", "1", "--nodes", "65"],
            "--nodes must be between 1 and 64",
        ),
        (
            &["run", "--seed", "1", "--settle", "1s"],
            "--settle must be at least",
        ),
        (&["sweep", "--seeds", "5..5"], "the range is empty"),
        (&["sweep", "--seeds", "9"], "expected A..B"),
        (&["sweep", "--seeds", "0..2", "--jobs", "0"], "--jobs"),
        (&["frobnicate"], "unrecognized subcommand"),
    ];
    for (args, needle) in cases {
        let out = sim(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: {stderr:?} lacks {needle:?}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn a_run_prints_a_summary_ending_with_the_trace_hash() {
    let out = sim(&[
        "run",
        "--seed",
        "3",
        "--duration",
        "30s",
        "--faults",
        "none",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("result: ok"), "{stdout}");
    assert!(stdout.contains("settled: "), "{stdout}");
    let last = stdout.lines().last().unwrap();
    assert!(
        last.starts_with("trace-hash: ") && last.len() == "trace-hash: ".len() + 64,
        "{last}"
    );
}

#[test]
fn trace_prints_events_as_they_happen() {
    let out = sim(&[
        "run",
        "--seed",
        "3",
        "--duration",
        "5s",
        "--faults",
        "none",
        "--trace",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(" gossip "), "{stdout}");
    assert!(stdout.contains(" timer "), "{stdout}");
    assert!(stdout.contains("membership ok join n0"), "{stdout}");
}
