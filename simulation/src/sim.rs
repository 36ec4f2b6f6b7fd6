//! One simulation run, start to verdict, and sweeps over many seeds.
//!
//! A run has three phases:
//!
//! 1. **Faults** (`duration`): the workloads bootstrap the cluster and inject faults.
//! 2. **Heal**: every workload is told to quiesce; the nemesis heals the network, pending
//!    restarts are cancelled (those nodes stay crashed).
//! 3. **Quiet**: no new fault. Every second of simulated time the checkers look at the cluster;
//!    the cluster has *settled* once they all pass — which includes every membership operation
//!    having completed. It must settle within `settle_max` (SWIM needs a few probe periods, its
//!    suspicion timeout, and up to one period of its announce to down members to reunite the
//!    halves of a healed partition; restarted nodes must rejoin and pending leaves and removals
//!    finish), and must still pass `stability` later. Otherwise the run fails with the
//!    checkers' last violations.
//!
//! Throughout all three phases, the safety invariants of [`crate::check::safety`] are checked
//! after every step; any breach fails the run.
//!
//! The run is single-threaded and a pure function of its [`RunConfig`]; the wall clock is read
//! only to report speed. A sweep runs seeds on worker threads, each run on its own.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::args::{format_duration, FaultSet, SeedRange};
use crate::check::safety::SafetyMonitor;
use crate::check::{self, CheckInput, Checker, ClusterSnapshot, Violation};
use crate::cluster::{Cluster, ClusterConfig, Stats, Step};
use crate::history::{CrdtResult, History, OpKind};
use crate::profile::Profile;
use crate::rng::{self, SimRng};
use crate::trace::Trace;
use crate::workload::crdt::{Crdt, CrdtConfig, HotCounter};
use crate::workload::membership::{Membership, MembershipConfig};
use crate::workload::nemesis::{Nemesis, NemesisConfig};
use crate::workload::pause::{PauseConfig, PauseNemesis};
use crate::workload::register::{LargeValues, Register, RegisterConfig};
use crate::workload::{Ctx, Workload};

/// Most machines in an initial cluster.
pub const NODES_MAX: usize = 64;

/// Everything that determines a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunConfig {
    /// The seed of every random choice.
    pub seed: u64,
    /// Machines in the initial cluster.
    pub nodes: usize,
    /// Length of the fault phase.
    pub duration: Duration,
    /// Enabled fault kinds.
    pub faults: FaultSet,
    /// Longest the quiet phase may take to settle.
    pub settle_max: Duration,
    /// Print every trace record as it happens.
    pub trace: bool,
    /// Run the register workload (clients reading, writing and deleting keys) besides the
    /// membership workload and the nemesis.
    pub data: bool,
    /// Turn read repair and hinted handoff off, so replicas converge by anti-entropy alone.
    pub anti_entropy_only: bool,
    /// The profile (see [`crate::profile`]); `None`: the one the seed picks.
    pub profile: Option<Profile>,
}

impl RunConfig {
    /// Defaults: 5 nodes, 5 minutes of every fault kind, [`SETTLE_MAX`] to settle.
    pub fn new(seed: u64) -> Self {
        RunConfig {
            seed,
            nodes: 5,
            duration: Duration::from_secs(300),
            faults: FaultSet::all(),
            settle_max: SETTLE_MAX,
            trace: false,
            data: true,
            anti_entropy_only: false,
            profile: None,
        }
    }

    /// The profile the run has: the one forced, or the one its seed picks.
    pub fn profile(&self) -> Profile {
        self.profile.unwrap_or_else(|| Profile::for_seed(self.seed))
    }

    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        format!(
            "cargo run --release -p chorus-sim -- run --seed {} --nodes {} --duration {} --faults {} --settle {}{}{}{}",
            self.seed,
            self.nodes,
            format_duration(self.duration),
            self.faults,
            format_duration(self.settle_max),
            if self.data { "" } else { " --no-data" },
            if self.anti_entropy_only {
                " --anti-entropy-only"
            } else {
                ""
            },
            self.profile
                .map(|p| format!(" --profile {p}"))
                .unwrap_or_default()
        )
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), SimError> {
        if !(1..=NODES_MAX).contains(&self.nodes) {
            return Err(SimError::Config(format!(
                "--nodes must be between 1 and {NODES_MAX}, got {}",
                self.nodes
            )));
        }
        if self.settle_max < STABILITY {
            return Err(SimError::Config(format!(
                "--settle must be at least {}",
                format_duration(STABILITY)
            )));
        }
        Ok(())
    }
}

/// Default limit on the time to settle after the heal: what the protocols need (rejoining after
/// a restart, SWIM's suspicion timeout, a period of re-announcing to down members, pending leaves
/// and removals, and a few anti-entropy rounds, every 15 s per node, to carry each CRDT
/// replica's record of the operation ids it holds, under the replica set as it settled, to the
/// others), with margin, and short enough that slow recovery fails the run.
pub const SETTLE_MAX: Duration = Duration::from_secs(90);

/// How often the quiet phase checks whether the cluster has settled.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// How long after settling the checkers must still pass.
pub const STABILITY: Duration = Duration::from_secs(10);

/// Why a run could not be carried out (as opposed to a run that found a violation).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// Bad parameters.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The event queue overflowed; the cluster generated events without bound.
    #[error("the event queue overflowed at t={0:?}: a node or the simulator produces events without bound")]
    QueueOverflow(Duration),
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The run's parameters.
    pub config: RunConfig,
    /// BLAKE3 of the whole trace, in hex.
    pub trace_hash: String,
    /// Records in the trace.
    pub trace_records: u64,
    /// Every violation (empty: the run passed).
    pub violations: Vec<Violation>,
    /// When the heal happened.
    pub healed_at: Duration,
    /// How long after the heal the cluster settled, if it did.
    pub settled_after: Option<Duration>,
    /// Simulated time at the end.
    pub end: Duration,
    /// Network and event counters.
    pub stats: Stats,
    /// Every operation.
    pub history: History,
    /// The cluster at the end.
    pub snapshot: ClusterSnapshot,
    /// Acknowledgements of replica writes and hints checked against the sender's disk as
    /// they left it ([`crate::check::datapath`]).
    pub acks_checked: u64,
    /// Hint deletions checked against the acknowledgements their holder received
    /// ([`crate::check::datapath`]).
    pub hint_deletes_checked: u64,
    /// Successful write and update replies whose acknowledgers were checked against their
    /// disks ([`crate::check::datapath`]).
    pub replies_checked: u64,
    /// Dotted register values written to disks and checked for a dot minted twice
    /// ([`crate::check::dots`]).
    pub dots_checked: u64,
    /// Wall-clock time the run took (not part of the deterministic result).
    pub wall: Duration,
}

impl RunReport {
    /// Whether the run found no violation.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// Simulated seconds per wall-clock second.
    pub fn speedup(&self) -> f64 {
        self.end.as_secs_f64() / self.wall.as_secs_f64().max(1e-9)
    }
}

struct Simulation {
    cluster: Cluster,
    history: History,
    workloads: Vec<(Box<dyn Workload>, SimRng)>,
    safety: SafetyMonitor,
    healed_at: Option<Duration>,
}

impl Simulation {
    fn with_ctx(&mut self, actor: usize, f: impl FnOnce(&mut dyn Workload, &mut Ctx<'_>)) {
        let (w, rng) = &mut self.workloads[actor];
        let mut cx = Ctx::new(actor, w.name(), &mut self.cluster, &mut self.history, rng);
        f(w.as_mut(), &mut cx);
    }

    fn run_until(&mut self, until: Duration) -> Result<(), SimError> {
        loop {
            match self.cluster.step(until) {
                Step::Idle => break,
                Step::Handled => {}
                Step::Wake { actor, token } => self.with_ctx(actor, |w, cx| w.wake(token, cx)),
                Step::Reply {
                    actor,
                    token,
                    reply,
                } => self.with_ctx(actor, |w, cx| w.reply(token, *reply, cx)),
            }
            let at = self.cluster.now();
            for obs in self.cluster.take_observations() {
                self.safety.observe(at, &obs);
            }
        }
        if self.cluster.overflowed() {
            return Err(SimError::QueueOverflow(self.cluster.now()));
        }
        Ok(())
    }

    fn check(&mut self, checkers: &[Box<dyn Checker>]) -> (ClusterSnapshot, Vec<Violation>) {
        let snapshot = self.cluster.snapshot();
        let input = CheckInput {
            snapshot: &snapshot,
            history: &self.history,
            healed_at: self.healed_at,
        };
        let violations = check::run_all(checkers, &input);
        (snapshot, violations)
    }
}

/// Carries out one run.
pub fn run(config: &RunConfig) -> Result<RunReport, SimError> {
    config.validate()?;
    let wall = Instant::now();
    let trace = Trace::new(config.trace);
    let profile = config.profile();
    let cluster_config = ClusterConfig {
        repairs_off: config.anti_entropy_only,
        op_log: profile.op_log(),
        ..ClusterConfig::default()
    };
    let cluster = Cluster::new(cluster_config, config.seed, trace);
    let mut workloads: Vec<Box<dyn Workload>> = vec![
        Box::new(Membership::new(MembershipConfig::new(
            config.nodes,
            config.faults.clone(),
        ))),
        Box::new(Nemesis::new(NemesisConfig::new(config.faults.clone()))),
    ];
    if config.data {
        workloads.push(Box::new(Register::new(RegisterConfig {
            large: (profile == Profile::LargeValues).then(LargeValues::default),
            ..RegisterConfig::default()
        })));
        workloads.push(Box::new(Crdt::new(CrdtConfig {
            hot: (profile == Profile::TinyOpLog).then(HotCounter::default),
            ..CrdtConfig::default()
        })));
    }
    workloads.push(Box::new(PauseNemesis::new(PauseConfig::new(
        config.faults.clone(),
    ))));
    let mut sim = Simulation {
        cluster,
        history: History::new(),
        workloads: workloads
            .into_iter()
            .map(|w| {
                let r = rng::stream(config.seed, w.name());
                (w, r)
            })
            .collect(),
        safety: SafetyMonitor::new(),
        healed_at: None,
    };
    let checkers = check::default_checkers(config.settle_max);

    for actor in 0..sim.workloads.len() {
        sim.with_ctx(actor, |w, cx| w.start(cx));
    }
    sim.run_until(config.duration)?;
    let healed_at = sim.cluster.now();
    sim.healed_at = Some(healed_at);
    for actor in 0..sim.workloads.len() {
        sim.with_ctx(actor, |w, cx| w.quiesce(cx));
    }

    let deadline = healed_at + config.settle_max;
    let mut t = healed_at;
    let (mut snapshot, mut violations);
    let settled_after = loop {
        t += CHECK_EVERY;
        sim.run_until(t)?;
        (snapshot, violations) = sim.check(&checkers);
        if violations.is_empty() {
            break Some(t - healed_at);
        }
        if t >= deadline {
            violations.insert(
                0,
                Violation {
                    checker: "settle",
                    at: t,
                    observer: None,
                    subject: None,
                    message: format!(
                        "the cluster did not settle within {} after the heal at t={:.3}s; the checkers still report:",
                        format_duration(config.settle_max),
                        healed_at.as_secs_f64()
                    ),
                },
            );
            break None;
        }
    };
    if settled_after.is_some() {
        sim.run_until(t + STABILITY)?;
        (snapshot, violations) = sim.check(&checkers);
        if !violations.is_empty() {
            violations.insert(
                0,
                Violation {
                    checker: "stability",
                    at: sim.cluster.now(),
                    observer: None,
                    subject: None,
                    message: format!(
                        "the cluster settled at t={:.3}s but no longer passes {} later:",
                        t.as_secs_f64(),
                        format_duration(STABILITY)
                    ),
                },
            );
        }
    }
    let end = sim.cluster.now();
    for obs in sim.cluster.take_observations() {
        sim.safety.observe(end, &obs);
    }
    let dots = sim.cluster.dots();
    if !dots.violations().is_empty() {
        let mut found = dots.violations().to_vec();
        if dots.dropped() > 0 {
            found.push(Violation {
                checker: "dot-minted-twice",
                at: end,
                observer: None,
                subject: None,
                message: format!("... and {} more dots minted twice", dots.dropped()),
            });
        }
        found.append(&mut violations);
        violations = found;
    }
    let datapath = sim.cluster.datapath();
    if !datapath.violations().is_empty() {
        let mut found = datapath.violations().to_vec();
        if datapath.dropped() > 0 {
            found.push(Violation {
                checker: "data-path",
                at: end,
                observer: None,
                subject: None,
                message: format!("... and {} more data-path violations", datapath.dropped()),
            });
        }
        found.append(&mut violations);
        violations = found;
    }
    if !sim.safety.violations().is_empty() {
        let mut safety = sim.safety.violations().to_vec();
        if sim.safety.dropped() > 0 {
            safety.push(Violation {
                checker: "safety",
                at: end,
                observer: None,
                subject: None,
                message: format!("... and {} more safety violations", sim.safety.dropped()),
            });
        }
        safety.append(&mut violations);
        violations = safety;
    }
    sim.history.close(end);
    Ok(RunReport {
        config: config.clone(),
        trace_hash: sim.cluster.trace().hash_hex(),
        trace_records: sim.cluster.trace().records(),
        violations,
        healed_at,
        settled_after,
        end,
        stats: sim.cluster.stats().clone(),
        acks_checked: sim.cluster.datapath().checked(),
        hint_deletes_checked: sim.cluster.datapath().hint_deletes_checked(),
        replies_checked: sim.cluster.datapath().replies_checked(),
        dots_checked: sim.cluster.dots().checked(),
        history: sim.history,
        snapshot,
        wall: wall.elapsed(),
    })
}

/// The human-readable summary of a run, ending with the `trace-hash:` line.
pub fn summary(r: &RunReport) -> String {
    let mut s = String::new();
    let c = &r.config;
    let _ = writeln!(
        s,
        "chorus-sim run: seed {}, {} nodes, {} of faults ({}), settle limit {}, profile {}",
        c.seed,
        c.nodes,
        format_duration(c.duration),
        c.faults,
        format_duration(c.settle_max),
        c.profile()
    );
    let counts = r.history.counts();
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for op in r.history.ops() {
        let k = match op.kind {
            OpKind::Join { .. } => "join",
            OpKind::Crash { .. } => "crash",
            OpKind::Restart { .. } => "restart",
            OpKind::Leave { .. } => "leave",
            OpKind::CancelLeave { .. } => "cancel-leave",
            OpKind::Remove { .. } => "remove",
            OpKind::Pause { .. } => "pause",
            OpKind::Resume { .. } => "resume",
            OpKind::Read { .. } => "read",
            OpKind::Write { .. } => "write",
            OpKind::Delete { .. } => "delete",
            OpKind::Update { .. } => "update",
            OpKind::Partition(_) => "partition",
            OpKind::Heal => "heal",
            OpKind::Degrade(_) => "degrade",
            OpKind::Restore => "restore",
        };
        *kinds.entry(k).or_default() += 1;
    }
    let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let _ = writeln!(
        s,
        "operations: {} ({}): {} ok, {} failed, {} indeterminate",
        r.history.ops().len(),
        kinds.join(", "),
        counts.ok,
        counts.failed,
        counts.indeterminate
    );
    for op in r.history.ops() {
        if let Some(o) = op.outcome.as_ref().filter(|o| o.label() != "ok") {
            let _ = writeln!(
                s,
                "  [t={:.3}s] {} {}: {o}",
                op.start.as_secs_f64(),
                op.client,
                op.kind
            );
        }
    }
    // DESIGN.md §3: writes of several types that raced leave a key contested, every part kept.
    let stats: Vec<&chorus::node::DataStats> = r
        .snapshot
        .nodes
        .iter()
        .filter_map(|n| n.data.as_ref())
        .collect();
    let sum = |f: fn(&chorus::node::DataStats) -> u64| -> u64 { stats.iter().map(|d| f(d)).sum() };
    let conflicts = sum(|d| d.type_conflicts);
    let contested: std::collections::BTreeSet<String> = r
        .snapshot
        .nodes
        .iter()
        .filter(|n| n.process.is_running())
        .flat_map(|n| n.objects.iter())
        .filter(|(_, o)| o.is_contested())
        .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
        .collect();
    let refused_for_type = r
        .history
        .ops()
        .iter()
        .filter(|o| {
            o.outcome
                .as_ref()
                .is_some_and(|x| x.failure_code() == Some("type_conflict"))
        })
        .count();
    let forgot_notes = r
        .history
        .crdt()
        .iter()
        .filter(|c| {
            matches!(&c.result, Some(CrdtResult::Updated { notes, .. })
                if notes.iter().any(|n| n.contains("forgot")))
        })
        .count();
    let (held, dropped, purged): (u64, u64, u64) = r
        .snapshot
        .nodes
        .iter()
        .filter_map(|n| n.data.as_ref())
        .fold((0, 0, 0), |(h, d, p), x| {
            (h + x.keys_held, d + x.keys_dropped, p + x.tombstones_purged)
        });
    let _ = writeln!(
        s,
        "copies: {held} held by running nodes; {dropped} dropped by them since their last start (partitions they no longer own); {purged} tombstones purged by them since their last start; {} keys lost something with machines removed for good",
        r.snapshot.lost.len()
    );
    let _ = writeln!(
        s,
        "types: {} keys contested at the end {:?}; {conflicts} times a running replica's copy became contested; {refused_for_type} writes refused for their type",
        contested.len(),
        contested
    );
    let _ = writeln!(
        s,
        "op ids: {} forgotten early and {} before every replica held them by running nodes; {forgot_notes} update replies said they forgot ids",
        sum(|d| d.op_ids_forgotten_early),
        sum(|d| d.op_ids_forgotten_unstable)
    );
    let _ = writeln!(
        s,
        "merges refused for size: {} by running replicas; {} sends refused to running senders",
        sum(|d| d.merges_refused),
        sum(|d| d.sends_refused)
    );
    let _ = writeln!(
        s,
        "data path: {} acknowledgements of replica writes and hints checked against the disk as they left; {} hint deletions checked against their holder's acknowledgements; {} successful write replies checked against their acknowledgers' disks; {} dotted values written checked for a dot minted twice",
        r.acks_checked,
        r.hint_deletes_checked,
        r.replies_checked,
        r.dots_checked
    );
    let st = &r.stats;
    let dropped: u64 = st.dropped.values().sum();
    let reasons: Vec<String> = st.dropped.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let _ = writeln!(
        s,
        "network: {} datagrams and {} messages delivered, {} dropped ({})",
        st.gossip_delivered,
        st.messages_delivered,
        dropped,
        reasons.join(", ")
    );
    let _ = writeln!(
        s,
        "events: {} ({} timer firings, {} disk syncs, {} outputs lost in crashes), {} trace records",
        st.events, st.timers, st.syncs, st.outputs_lost, r.trace_records
    );
    match r.settled_after {
        Some(d) => {
            let _ = writeln!(
                s,
                "settled: {} after the heal at t={:.0}s",
                format_duration(d),
                r.healed_at.as_secs_f64()
            );
        }
        None => {
            let _ = writeln!(s, "settled: no");
        }
    }
    let _ = writeln!(s, "final cluster (t={:.3}s):", r.snapshot.at.as_secs_f64());
    for n in &r.snapshot.nodes {
        let status = n.view.as_ref().and_then(|v| {
            let me = v.members.iter().find(|m| m.id == v.node_id)?;
            Some(format!(
                ", {} ring members known, own status {}",
                v.members.len(),
                me.status.as_str()
            ))
        });
        let _ = writeln!(
            s,
            "  n{} id {} generation {}: {}{}",
            n.slot,
            n.id,
            n.generation,
            n.process,
            status.unwrap_or_default()
        );
    }
    let _ = writeln!(
        s,
        "speed: {:.0} s simulated in {:.2} s wall ({:.0}x)",
        r.end.as_secs_f64(),
        r.wall.as_secs_f64(),
        r.speedup()
    );
    if r.passed() {
        let _ = writeln!(s, "result: ok");
    } else {
        let _ = writeln!(s, "result: FAILED ({} violations)", r.violations.len());
        for v in &r.violations {
            let _ = writeln!(s, "  {v}");
        }
        let _ = writeln!(s, "replay: {}", c.replay_command());
    }
    let _ = write!(s, "trace-hash: {}", r.trace_hash);
    s
}

/// Parameters of a sweep.
#[derive(Debug, Clone)]
pub struct SweepConfig {
    /// The seeds.
    pub seeds: SeedRange,
    /// Worker threads.
    pub jobs: usize,
    /// Everything else of each run (its seed is replaced).
    pub base: RunConfig,
}

/// One failing seed of a sweep.
#[derive(Debug, Clone)]
pub struct SweepFailure {
    /// The seed.
    pub seed: u64,
    /// The first violation, or the error that stopped the run.
    pub reason: String,
    /// The command that replays it.
    pub replay: String,
}

/// What a sweep found.
#[derive(Debug, Clone)]
pub struct SweepReport {
    /// Seeds run.
    pub runs: u64,
    /// Time to settle after the heal of every run that settled, in seed order.
    pub settle_times: Vec<Duration>,
    /// Failing seeds, in seed order.
    pub failures: Vec<SweepFailure>,
    /// BLAKE3 over every run's trace hash in seed order: equal sweeps, equal hash, whatever
    /// the number of jobs.
    pub sweep_hash: String,
    /// Simulated time over all runs.
    pub simulated: Duration,
    /// Wall-clock time of the sweep.
    pub wall: Duration,
}

/// Progress of a sweep, reported periodically.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Runs finished.
    pub done: u64,
    /// Runs in total.
    pub total: u64,
    /// Runs that failed so far.
    pub failed: u64,
    /// Wall-clock time so far.
    pub elapsed: Duration,
}

/// One seed's result in a sweep: its trace hash, its simulated end time, how long it took to
/// settle, and the reason it failed (if it did).
type SeedOutcome = (String, Duration, Option<Duration>, Option<String>);

/// Runs every seed of the sweep on `jobs` threads, calling `progress` every `every` of wall
/// time while it runs.
pub fn sweep(config: &SweepConfig, every: Duration, progress: impl Fn(Progress)) -> SweepReport {
    let wall = Instant::now();
    let total = config.seeds.len();
    let next = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let failed = AtomicUsize::new(0);
    let results: Mutex<BTreeMap<u64, SeedOutcome>> = Mutex::new(BTreeMap::new());
    let jobs = config.jobs.clamp(1, 256).min(total.max(1) as usize);
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return;
                }
                let seed = config.seeds.start + i;
                let mut rc = config.base.clone();
                rc.seed = seed;
                rc.trace = false;
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&rc)));
                let outcome = match result {
                    Ok(Ok(r)) => {
                        let reason = r.violations.first().map(|v| {
                            let more = r
                                .violations
                                .get(1)
                                .map(|v| format!("; {v}"))
                                .unwrap_or_default();
                            format!("{v}{more}")
                        });
                        (r.trace_hash, r.end, r.settled_after, reason)
                    }
                    Ok(Err(e)) => (String::new(), Duration::ZERO, None, Some(e.to_string())),
                    Err(panic) => {
                        let what = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default();
                        (
                            String::new(),
                            Duration::ZERO,
                            None,
                            Some(format!("panicked: {what}")),
                        )
                    }
                };
                if outcome.3.is_some() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                results
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(seed, outcome);
                done.fetch_add(1, Ordering::Relaxed);
            });
        }
        let mut last = Instant::now();
        while done.load(Ordering::Relaxed) < total {
            std::thread::sleep(Duration::from_millis(50));
            if last.elapsed() >= every {
                last = Instant::now();
                progress(Progress {
                    done: done.load(Ordering::Relaxed),
                    total,
                    failed: failed.load(Ordering::Relaxed) as u64,
                    elapsed: wall.elapsed(),
                });
            }
        }
    });
    let results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    let mut hasher = blake3::Hasher::new();
    let mut failures = Vec::new();
    let mut simulated = Duration::ZERO;
    let mut settle_times = Vec::new();
    for (&seed, (hash, end, settled, reason)) in &results {
        hasher.update(&seed.to_le_bytes());
        hasher.update(hash.as_bytes());
        simulated += *end;
        settle_times.extend(*settled);
        if let Some(reason) = reason {
            let mut rc = config.base.clone();
            rc.seed = seed;
            failures.push(SweepFailure {
                seed,
                reason: reason.clone(),
                replay: rc.replay_command(),
            });
        }
    }
    SweepReport {
        runs: results.len() as u64,
        settle_times,
        failures,
        sweep_hash: hasher.finalize().to_hex().to_string(),
        simulated,
        wall: wall.elapsed(),
    }
}

/// A one-line distribution of settle times: `p50 2s, p90 5s, p99 9s, max 12s (n runs)`.
pub fn settle_distribution(times: &[Duration]) -> String {
    if times.is_empty() {
        return "no run settled".to_owned();
    }
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    let at = |q: f64| {
        let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
        format_duration(sorted[i.min(sorted.len() - 1)])
    };
    format!(
        "p50 {}, p90 {}, p99 {}, max {} ({} runs)",
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0),
        sorted.len()
    )
}
