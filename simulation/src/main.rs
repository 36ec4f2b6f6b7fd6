//! The `chorus-sim` command line: `run` one seed, or `sweep` a range of seeds.
//!
//! Exit status: 0 when every run passed, 1 when a run found a violation (the replay command is
//! printed), 2 on invalid arguments or when a run could not be carried out.

use std::io::Write;
use std::num::NonZeroUsize;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::ExitCode;
use std::time::Duration;

use chorus_sim::args::{format_duration, parse_duration, FaultSet, SeedRange};
use chorus_sim::profile::Profile;
use chorus_sim::sim::{self, Progress, RunConfig, SweepConfig};
use clap::{Args, Parser, Subcommand};

/// Deterministic whole-cluster simulator for Chorus.
#[derive(Debug, Parser)]
#[command(name = "chorus-sim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one seed and print a summary ending with `trace-hash: <hex>`.
    Run {
        /// The seed of every random choice.
        #[arg(long)]
        seed: u64,
        #[command(flatten)]
        common: Common,
        /// Print every event (deliveries, drops, timers, faults) as it happens.
        #[arg(long)]
        trace: bool,
        /// Print the node core's own log lines at this level or above (error, warn, info,
        /// debug, trace), stamped with simulated time and node.
        #[arg(long)]
        log: Option<tracing::Level>,
    },
    /// Run many seeds in parallel; list each failing seed with its replay command.
    Sweep {
        /// Seeds to run: `A..B` (B excluded) or `A..=B`.
        #[arg(long)]
        seeds: SeedRange,
        /// Worker threads (default: the number of CPUs).
        #[arg(long)]
        jobs: Option<NonZeroUsize>,
        #[command(flatten)]
        common: Common,
    },
    /// Write seed inputs for the fuzz targets (see `.dev/fuzz`), captured from a small
    /// simulated cluster, under `<dir>/<target>/`. Seeds are named by their content's hash, so
    /// a second run adds nothing new.
    FuzzSeeds {
        /// The corpus directory.
        #[arg(long, default_value = "fuzz/corpus")]
        dir: std::path::PathBuf,
        /// Also list every kind of captured message and state.
        #[arg(long)]
        verbose: bool,
    },
}

#[derive(Debug, Args)]
struct Common {
    /// Machines in the initial cluster (1 to 64).
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Length of the fault phase (e.g. 90s, 10m, 1h).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    duration: Duration,
    /// Fault kinds to inject: a comma-separated list of partition, loss, crash, join, leave, pause
    /// (or all, none).
    #[arg(long, default_value = "all")]
    faults: FaultSet,
    /// Longest the quiet phase after the heal may take to settle (every check passing and
    /// every membership operation complete).
    #[arg(long, default_value = "90s", value_parser = parse_duration)]
    settle: Duration,
    /// Run membership and faults only, without the register workload's clients.
    #[arg(long)]
    no_data: bool,
    /// Turn read repair and hinted handoff off: replicas converge by anti-entropy alone.
    #[arg(long)]
    anti_entropy_only: bool,
    /// Force a profile for every seed (standard, tiny-op-log, large-values); by default each
    /// seed picks its own.
    #[arg(long)]
    profile: Option<Profile>,
}

impl Common {
    fn config(&self, seed: u64) -> RunConfig {
        RunConfig {
            seed,
            nodes: self.nodes,
            duration: self.duration,
            faults: self.faults.clone(),
            settle_max: self.settle,
            trace: false,
            data: !self.no_data,
            anti_entropy_only: self.anti_entropy_only,
            profile: self.profile,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            seed,
            common,
            trace,
            log,
        } => {
            if let Some(level) = log {
                chorus_sim::log::install(level);
            }
            let mut config = common.config(seed);
            config.trace = trace;
            run_one(&config)
        }
        Command::FuzzSeeds { dir, verbose } => {
            match chorus_sim::fuzz_seeds::write_corpus(&dir, verbose) {
                Ok(summary) => {
                    emit(&summary);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("chorus-sim: cannot write the fuzz seeds: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Sweep {
            seeds,
            jobs,
            common,
        } => {
            let jobs = jobs
                .or_else(|| std::thread::available_parallelism().ok())
                .map_or(1, NonZeroUsize::get);
            run_sweep(&SweepConfig {
                seeds,
                jobs,
                base: common.config(seeds.start),
            })
        }
    }
}

fn run_one(config: &RunConfig) -> ExitCode {
    if let Err(e) = config.validate() {
        eprintln!("chorus-sim: {e}");
        return ExitCode::from(2);
    }
    match catch_unwind(AssertUnwindSafe(|| sim::run(config))) {
        Ok(Ok(report)) => {
            emit(&sim::summary(&report));
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Ok(Err(e)) => {
            eprintln!("chorus-sim: {e}");
            eprintln!("replay: {}", config.replay_command());
            ExitCode::from(2)
        }
        Err(_) => {
            eprintln!("chorus-sim: the run panicked (see above)");
            eprintln!("replay: {}", config.replay_command());
            ExitCode::from(1)
        }
    }
}

fn run_sweep(config: &SweepConfig) -> ExitCode {
    if let Err(e) = config.base.validate() {
        eprintln!("chorus-sim: {e}");
        return ExitCode::from(2);
    }
    eprintln!(
        "sweep: seeds {}..{} on {} threads, {} nodes, {} of faults ({})",
        config.seeds.start,
        config.seeds.end,
        config.jobs,
        config.base.nodes,
        format_duration(config.base.duration),
        config.base.faults
    );
    let report = sim::sweep(config, Duration::from_secs(5), |p: Progress| {
        eprintln!(
            "sweep: {}/{} seeds done, {} failed, {:.0} s elapsed",
            p.done,
            p.total,
            p.failed,
            p.elapsed.as_secs_f64()
        );
    });
    let mut text = String::new();
    for f in &report.failures {
        text.push_str(&format!("FAILED seed {}: {}\n", f.seed, f.reason));
        text.push_str(&format!("  replay: {}\n", f.replay));
    }
    text.push_str(&format!(
        "sweep: {} seeds, {} failed; {:.0} s simulated in {:.1} s wall ({:.0}x)\n",
        report.runs,
        report.failures.len(),
        report.simulated.as_secs_f64(),
        report.wall.as_secs_f64(),
        report.simulated.as_secs_f64() / report.wall.as_secs_f64().max(1e-9)
    ));
    text.push_str(&format!(
        "settle times after the heal: {}\n",
        sim::settle_distribution(&report.settle_times)
    ));
    text.push_str(&format!("sweep-hash: {}", report.sweep_hash));
    emit(&text);
    if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Prints `text` and a newline to stdout. A closed pipe (`chorus-sim run ... | head`) ends the
/// output quietly instead of panicking; the exit status still reports the result.
fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}").and_then(|()| out.flush());
}
