//! `chorus bench`: a YCSB-style load generator for a running cluster, over the QUIC client API
//! or the HTTP API.
//!
//! It drives the cluster through the Rust client library ([`crate::client`]), exactly as an
//! application would: the client learns the cluster from any node (`GET /v1/cluster`) and
//! sends each request to one of the key's replicas. It optionally loads `records` keys first, then runs one of the YCSB core workloads
//! (A: 50 % reads, 50 % updates; B: 95 % / 5 %; C: reads only) or a write-only one, with keys
//! drawn uniformly or from YCSB's scrambled Zipfian distribution (θ = 0.99).
//!
//! - **Closed loop** (default): each of `connections` concurrent requesters sends its next
//!   request when the previous answer arrived (over HTTP each holds a keep-alive connection;
//!   over QUIC they share one connection per node, multiplexed on its lanes).
//! - **Open loop** (`--rate R`): requests are due at fixed intended times (R per second over all
//!   connections) and latency is measured from the *intended* send time, so a stalled server is
//!   charged for the requests that queued behind it (no coordinated omission).
//!
//! Updates carry the newest context the benchmark has seen for their key (shared by all
//! connections), so siblings only arise from truly concurrent updates, as with a real
//! read-modify-write client. Latencies go into HDR histograms per operation; the summary gives
//! throughput, p50/p90/p99/p99.9/max and errors by kind, as text or JSON. [`run_many`] runs
//! several workloads and protocols against one loaded data set, so they compare in one run.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use rand::{RngExt, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::Serialize;
use tokio::time::Instant;

pub use crate::client::Protocol;
use crate::client::{Client, Config, Context, CrdtOp, Error as ClientError, Options};

/// Which operations a run mixes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Workload {
    /// YCSB A: 50 % reads, 50 % updates.
    A,
    /// YCSB B: 95 % reads, 5 % updates.
    B,
    /// YCSB C: reads only.
    C,
    /// Updates only.
    W,
    /// G-Counter increments only (`POST /v1/crdt/ctr…`), each with its own operation id; no
    /// load phase (a counter starts at zero).
    Counter,
}

impl Workload {
    fn read_fraction(self) -> f64 {
        match self {
            Workload::A => 0.5,
            Workload::B => 0.95,
            Workload::C => 1.0,
            Workload::W | Workload::Counter => 0.0,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Workload::A => "A (50% read, 50% update)",
            Workload::B => "B (95% read, 5% update)",
            Workload::C => "C (100% read)",
            Workload::W => "write-only (100% update)",
            Workload::Counter => "counter (100% gcounter increment)",
        }
    }
}

impl std::str::FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "a" => Ok(Workload::A),
            "b" => Ok(Workload::B),
            "c" => Ok(Workload::C),
            "w" | "write" | "write-only" => Ok(Workload::W),
            "counter" | "incr" => Ok(Workload::Counter),
            other => Err(format!("unknown workload {other:?} (a, b, c, w, counter)")),
        }
    }
}

/// How keys are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Distribution {
    /// Every record equally likely.
    Uniform,
    /// YCSB's scrambled Zipfian (θ = 0.99): a few keys are hot, spread over the key space.
    Zipfian,
}

impl std::str::FromStr for Distribution {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "uniform" => Ok(Distribution::Uniform),
            "zipfian" => Ok(Distribution::Zipfian),
            other => Err(format!("unknown distribution {other:?} (uniform, zipfian)")),
        }
    }
}

/// Settings of a benchmark run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Any node's HTTP address.
    pub http: SocketAddr,
    /// The nodes serve HTTPS (then `ca_pem` holds the CA their certificates chain to).
    pub https: bool,
    /// QUIC or HTTP.
    pub protocol: Protocol,
    /// The cluster CA certificate (PEM), for QUIC and HTTPS.
    pub ca_pem: Option<String>,
    /// The client token, if the nodes require one.
    pub token: Option<String>,
    /// The operation mix.
    pub workload: Workload,
    /// Keys in the data set.
    pub records: u64,
    /// Bytes per value.
    pub value_size: usize,
    /// Key distribution.
    pub distribution: Distribution,
    /// Concurrent connections.
    pub connections: usize,
    /// Length of the run phase.
    pub duration: Duration,
    /// Open loop at this many operations per second (over all connections).
    pub rate: Option<f64>,
    /// Load the records before the run.
    pub load: bool,
    /// Request options for every request, as a query string (e.g. `w=3&r=1`).
    pub query: String,
    /// Show a progress bar.
    pub progress: bool,
    /// Seed of the key and operation choices.
    pub seed: u64,
}

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Bad options.
    #[error("{0}")]
    Options(String),
    /// The cluster could not be reached or described.
    #[error("cannot use the cluster at {addr}: {message}")]
    Cluster {
        /// The node asked.
        addr: SocketAddr,
        /// What went wrong.
        message: String,
    },
    /// The async runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// Latency figures of one operation, in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct OpStats {
    /// Operations completed (successfully or not).
    pub count: u64,
    /// Per second over the phase.
    pub throughput: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Maximum.
    pub max_ms: f64,
}

/// One phase (load or run).
#[derive(Clone, Debug, Serialize)]
pub struct PhaseReport {
    /// `load` or `run`.
    pub phase: String,
    /// Wall time of the phase, in seconds.
    pub seconds: f64,
    /// Operations per second over every operation.
    pub throughput: f64,
    /// Per operation (`read`, `update`, `insert`).
    pub ops: BTreeMap<String, OpStats>,
    /// Failed operations by kind (HTTP status and error code, or transport error).
    pub errors: BTreeMap<String, u64>,
}

/// What a benchmark measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The operation mix.
    pub workload: Workload,
    /// The protocol the requests went over.
    pub protocol: Protocol,
    /// Records.
    pub records: u64,
    /// Bytes per value.
    pub value_size: usize,
    /// Key distribution.
    pub distribution: Distribution,
    /// Connections.
    pub connections: usize,
    /// Open-loop target rate, if any.
    pub rate: Option<f64>,
    /// The nodes the connections were spread over.
    pub nodes: Vec<SocketAddr>,
    /// The load phase, if it ran.
    pub load: Option<PhaseReport>,
    /// The run phase.
    pub run: PhaseReport,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.rate {
            Some(r) => format!("open loop at {r:.0} ops/s"),
            None => "closed loop".into(),
        };
        writeln!(
            f,
            "chorus bench over {}: workload {}, {} records of {} B, {:?}, {} connections ({mode}), {} nodes",
            self.protocol,
            self.workload.describe(),
            self.records,
            self.value_size,
            self.distribution,
            self.connections,
            self.nodes.len()
        )?;
        for phase in self.load.iter().chain(std::iter::once(&self.run)) {
            writeln!(
                f,
                "{}: {:.1} s, {:.0} ops/s",
                phase.phase, phase.seconds, phase.throughput
            )?;
            for (name, s) in &phase.ops {
                writeln!(
                    f,
                    "  {name:<7} {:>9} ops {:>9.0}/s  p50 {:>7.2} ms  p90 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms  max {:>8.2} ms",
                    s.count, s.throughput, s.p50_ms, s.p90_ms, s.p99_ms, s.p999_ms, s.max_ms
                )?;
            }
            if phase.errors.is_empty() {
                writeln!(f, "  errors: none")?;
            } else {
                for (kind, n) in &phase.errors {
                    writeln!(f, "  errors: {n} x {kind}")?;
                }
            }
        }
        Ok(())
    }
}

/// Parses `500ms`, `30s`, `2m`, `1h30m`, `1m 30s` (`humantime`'s syntax); a bare number
/// (`5`, `1.5`) means seconds. Never panics: text humantime could overflow on (over 40
/// characters, or a number of more than 11 digits) is refused first.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let bad = |why: &str| format!("bad duration {s:?}: {why} (e.g. 30s, 500ms, 2m)");
    let longest_number = s
        .split(|c: char| !c.is_ascii_digit())
        .map(str::len)
        .max()
        .unwrap_or(0);
    if s.len() > 40 || longest_number > 11 {
        return Err(bad("too long"));
    }
    let d = if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let secs: f64 = s.parse().map_err(|_| bad("not a number"))?;
        Duration::try_from_secs_f64(secs).map_err(|e| bad(&e.to_string()))?
    } else {
        humantime::parse_duration(s).map_err(|e| bad(&e.to_string()))?
    };
    if d.is_zero() {
        return Err(format!("duration {s:?} must be positive"));
    }
    Ok(d)
}

/// YCSB's Zipfian generator (Gray et al., "Quickly generating billion-record synthetic
/// databases"), over `0..n`.
#[derive(Clone)]
struct Zipf {
    n: u64,
    theta: f64,
    alpha: f64,
    zeta_n: f64,
    eta: f64,
}

impl Zipf {
    fn new(n: u64, theta: f64) -> Zipf {
        let zeta = |k: u64| (1..=k).map(|i| 1.0 / (i as f64).powf(theta)).sum::<f64>();
        let zeta_n = zeta(n);
        let zeta2 = zeta(2.min(n));
        Zipf {
            n,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zeta_n,
            eta: (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zeta_n),
        }
    }

    fn next(&self, u: f64) -> u64 {
        let uz = u * self.zeta_n;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1.min(self.n - 1);
        }
        let v = (self.n as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        v.min(self.n - 1)
    }
}

/// FNV-1a, as YCSB scrambles Zipfian draws over the key space.
fn fnv(x: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in x.to_le_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn key_of(i: u64) -> String {
    format!("user{i:012}")
}

/// Contexts seen per key, shared by every connection (sharded locks).
struct Contexts {
    shards: Vec<Mutex<HashMap<u64, Context>>>,
}

impl Contexts {
    fn new() -> Self {
        Contexts {
            shards: (0..64).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, k: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Context>> {
        self.shards[(k % 64) as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, k: u64) -> Option<Context> {
        self.shard(k).get(&k).cloned()
    }

    fn set(&self, k: u64, ctx: Context) {
        self.shard(k).insert(k, ctx);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    Update,
    Insert,
    Increment,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Update => "update",
            Op::Insert => "insert",
            Op::Increment => "increment",
        }
    }
}

/// What every connection of a phase shares.
struct Shared {
    options: BenchOptions,
    workload: Workload,
    value: Bytes,
    contexts: Arc<Contexts>,
    zipf: Option<Zipf>,
    done: AtomicU64,
    stop: AtomicBool,
    /// Load phase: the next record to insert.
    next_insert: AtomicU64,
}

/// One connection's results.
struct Tally {
    hist: BTreeMap<&'static str, Histogram<u64>>,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn new() -> Self {
        Tally {
            hist: BTreeMap::new(),
            errors: BTreeMap::new(),
        }
    }

    fn record(&mut self, op: Op, micros: u64) {
        let h = self.hist.entry(op.name()).or_insert_with(|| {
            Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
        });
        h.saturating_record(micros.max(1));
    }

    fn merge(&mut self, other: Tally) {
        for (k, h) in other.hist {
            match self.hist.get_mut(k) {
                Some(mine) => {
                    let _ = mine.add(&h);
                }
                None => {
                    self.hist.insert(k, h);
                }
            }
        }
        for (k, n) in other.errors {
            *self.errors.entry(k).or_default() += n;
        }
    }
}

/// Parses `--query`-style options (`r=1&w=3&strict=true&timeout_ms=500`).
pub fn parse_query(q: &str) -> Result<Options, String> {
    let mut o = Options::default();
    for part in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let number = || {
            v.parse::<u64>()
                .map_err(|_| format!("{k}={v:?} is not a non-negative integer"))
        };
        match k {
            "r" => o.r = Some(number()? as usize),
            "w" => o.w = Some(number()? as usize),
            "timeout_ms" => o.timeout_ms = Some(number()?),
            "strict" => o.strict = matches!(v, "" | "true" | "1"),
            other => {
                return Err(format!(
                    "unknown request option {other:?} (r, w, strict, timeout_ms)"
                ))
            }
        }
    }
    Ok(o)
}

/// A request not answered within this long counts as an error (the client's own timeouts
/// normally end it sooner).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An open loop this far behind its schedule after the deadline stops sending.
const OPEN_LOOP_GRACE: Duration = Duration::from_secs(10);

/// Sends one operation; `Ok` on success (a read of an absent key included).
async fn call(client: &Client, op: Op, k: u64, shared: &Shared) -> Result<(), String> {
    let kind = |e: ClientError| e.code;
    match op {
        Op::Read => {
            let r = client.get(key_of(k)).await.map_err(kind)?;
            if let Some(c) = r.context {
                shared.contexts.set(k, c);
            }
        }
        Op::Update | Op::Insert => {
            let context = if op == Op::Update {
                shared.contexts.get(k)
            } else {
                None
            };
            let w = client
                .put(key_of(k), shared.value.to_vec(), context.as_ref())
                .await
                .map_err(kind)?;
            shared.contexts.set(k, w.context);
        }
        Op::Increment => {
            client
                .update(format!("ctr{k:06}"), CrdtOp::GCounter { increment: 1 })
                .await
                .map_err(kind)?;
        }
    }
    Ok(())
}

/// One connection's loop for a phase.
async fn worker(
    shared: Arc<Shared>,
    client: Client,
    index: usize,
    load: bool,
    deadline: Instant,
) -> Tally {
    let mut tally = Tally::new();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(
        shared.options.seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    let per_conn = shared
        .options
        .rate
        .filter(|_| !load)
        .map(|r| Duration::from_secs_f64(shared.options.connections as f64 / r));
    let start = Instant::now();
    // Open loop: connections take turns, so requests are spread evenly, not sent in bursts.
    let offset = per_conn.map_or(Duration::ZERO, |gap| {
        gap.mul_f64(index as f64 / shared.options.connections as f64)
    });
    let mut sent = 0u64;
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        // A closed loop stops at the deadline. An open loop sends every request due before it,
        // late or not (dropping late ones would hide the latency of an overloaded server),
        // unless it is hopelessly behind.
        let now = Instant::now();
        if per_conn.is_none() && now >= deadline {
            break;
        }
        if let Some(gap) = per_conn.filter(|_| now >= deadline + OPEN_LOOP_GRACE) {
            let window = deadline.saturating_duration_since(start + offset);
            let due_total = (window.as_secs_f64() / gap.as_secs_f64()).ceil() as u64;
            let unsent = due_total.saturating_sub(sent);
            if unsent > 0 {
                *tally
                    .errors
                    .entry("not sent: more than 10 s behind schedule".into())
                    .or_default() += unsent;
            }
            break;
        }
        let (op, k) = if load {
            let k = shared.next_insert.fetch_add(1, Ordering::Relaxed);
            if k >= shared.options.records {
                break;
            }
            (Op::Insert, k)
        } else {
            let draw: f64 = rng.random();
            let k = match &shared.zipf {
                Some(z) => fnv(z.next(rng.random())) % shared.options.records,
                None => rng.random_range(0..shared.options.records),
            };
            let op = if shared.workload == Workload::Counter {
                Op::Increment
            } else if draw < shared.workload.read_fraction() {
                Op::Read
            } else {
                Op::Update
            };
            (op, k)
        };
        // Open loop: the request is due at its intended time, and latency counts from it.
        let intended = match per_conn {
            Some(gap) => {
                let due = start + offset + gap.mul_f64(sent as f64);
                if due > deadline {
                    break;
                }
                tokio::time::sleep_until(due).await;
                due
            }
            None => Instant::now(),
        };
        sent += 1;
        let mut result = tokio::time::timeout(REQUEST_TIMEOUT, call(&client, op, k, &shared))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {} s", REQUEST_TIMEOUT.as_secs())));
        // A record of the load phase is retried until it is inserted or the phase ends, so
        // the run phase finds every key loaded.
        while load
            && result.is_err()
            && Instant::now() < deadline
            && !shared.stop.load(Ordering::Relaxed)
        {
            if let Err(kind) = &result {
                *tally.errors.entry(kind.clone()).or_default() += 1;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            result = call(&client, op, k, &shared).await;
        }
        tally.record(op, intended.elapsed().as_micros() as u64);
        if let Err(kind) = result {
            *tally.errors.entry(kind).or_default() += 1;
        }
        shared.done.fetch_add(1, Ordering::Relaxed);
    }
    tally
}

async fn phase(shared: &Arc<Shared>, client: &Client, load: bool) -> PhaseReport {
    shared.done.store(0, Ordering::Relaxed);
    shared.stop.store(false, Ordering::Relaxed);
    let total = if load {
        Some(shared.options.records)
    } else {
        None
    };
    let duration = if load {
        Duration::from_secs(3600)
    } else {
        shared.options.duration
    };
    let started = Instant::now();
    let deadline = started + duration;
    let bar = shared.options.progress.then(|| {
        let bar = match total {
            Some(n) => indicatif::ProgressBar::new(n),
            None => indicatif::ProgressBar::new(duration.as_secs().max(1)),
        };
        let template = if load {
            "load {bar:40} {pos}/{len} {per_sec}"
        } else {
            "run  {bar:40} {pos}/{len} s  {msg}"
        };
        if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        bar
    });
    let ticker = bar.clone().map(|bar| {
        let shared = shared.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let done = shared.done.load(Ordering::Relaxed);
                if load {
                    bar.set_position(done);
                } else {
                    let secs = started.elapsed().as_secs_f64();
                    bar.set_position(secs as u64);
                    bar.set_message(format!("{:.0} ops/s", done as f64 / secs.max(1e-3)));
                }
            }
        })
    });
    let tasks: Vec<_> = (0..shared.options.connections)
        .map(|i| tokio::spawn(worker(shared.clone(), client.clone(), i, load, deadline)))
        .collect();
    let mut tally = Tally::new();
    for t in tasks {
        if let Ok(t) = t.await {
            tally.merge(t);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    if let Some(t) = ticker {
        t.abort();
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let mut ops = BTreeMap::new();
    let mut count = 0;
    for (name, h) in &tally.hist {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        count += h.len();
        ops.insert(
            name.to_string(),
            OpStats {
                count: h.len(),
                throughput: h.len() as f64 / seconds,
                p50_ms: ms(0.5),
                p90_ms: ms(0.9),
                p99_ms: ms(0.99),
                p999_ms: ms(0.999),
                max_ms: h.max() as f64 / 1000.0,
            },
        );
    }
    PhaseReport {
        phase: if load { "load" } else { "run" }.into(),
        seconds,
        throughput: count as f64 / seconds,
        ops,
        errors: tally.errors,
    }
}

/// Runs a benchmark. Blocks the calling thread.
pub fn run_blocking(options: BenchOptions) -> Result<Report, BenchError> {
    let runs = [(options.workload, options.protocol)];
    let mut reports = run_many(options, &runs)?;
    reports
        .pop()
        .ok_or_else(|| BenchError::Options("nothing to run".into()))
}

/// Runs one benchmark per (workload, protocol), in order, against the same data set (loaded
/// once, before the first, unless `options.load` is off). Blocks the calling thread.
pub fn run_many(
    options: BenchOptions,
    runs: &[(Workload, Protocol)],
) -> Result<Vec<Report>, BenchError> {
    if options.records == 0 || options.connections == 0 {
        return Err(BenchError::Options(
            "--records and --connections must be positive".into(),
        ));
    }
    if options
        .rate
        .is_some_and(|r| !(r.is_finite() && (0.01..=1e8).contains(&r)))
    {
        return Err(BenchError::Options(
            "--rate must be between 0.01 and 100000000 requests per second".into(),
        ));
    }
    if options.duration > Duration::from_secs(7 * 24 * 3600) {
        return Err(BenchError::Options(
            "--duration must be at most 7 days".into(),
        ));
    }
    let request_options = parse_query(&options.query).map_err(BenchError::Options)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(BenchError::Runtime)?;
    rt.block_on(async {
        let mut value = vec![0u8; options.value_size];
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(options.seed);
        rng.fill(&mut value[..]);
        let zipf = (options.distribution == Distribution::Zipfian)
            .then(|| Zipf::new(options.records, 0.99));
        let contexts = Arc::new(Contexts::new());
        let mut reports = Vec::new();
        let mut loaded = !options.load;
        for &(workload, protocol) in runs {
            let scheme = if options.https { "https" } else { "http" };
            let mut config = Config::new([format!("{scheme}://{}", options.http)]);
            config.protocol = protocol;
            config.ca_pem = options.ca_pem.clone();
            config.token = options.token.clone();
            config.options = request_options;
            let client = Client::connect(config)
                .await
                .map_err(|e| BenchError::Cluster {
                    addr: options.http,
                    message: e.to_string(),
                })?;
            let shared = Arc::new(Shared {
                options: options.clone(),
                workload,
                value: Bytes::from(value.clone()),
                contexts: contexts.clone(),
                zipf: zipf.clone(),
                done: AtomicU64::new(0),
                stop: AtomicBool::new(false),
                next_insert: AtomicU64::new(0),
            });
            let load = if !loaded && workload != Workload::Counter {
                loaded = true;
                Some(phase(&shared, &client, true).await)
            } else {
                None
            };
            let run = phase(&shared, &client, false).await;
            reports.push(Report {
                workload,
                protocol,
                records: options.records,
                value_size: options.value_size,
                distribution: options.distribution,
                connections: options.connections,
                rate: options.rate,
                nodes: client.nodes().iter().map(|n| n.http_addr).collect(),
                load,
                run,
            });
        }
        Ok(reports)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipfian_draws_stay_in_range_and_favour_few_keys() {
        let z = Zipf::new(10_000, 0.99);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        let mut counts = vec![0u32; 10_000];
        for _ in 0..200_000 {
            let k = z.next(rng.random());
            assert!(k < 10_000);
            counts[k as usize] += 1;
        }
        // The most popular key gets far more than its uniform share (20 draws).
        assert!(counts[0] > 5_000, "{}", counts[0]);
        let tail: u32 = counts[5_000..].iter().sum();
        assert!(tail < 40_000, "the upper half is cold: {tail}");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert!(parse_duration("0s").is_err());
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        // humantime's units beyond hours parse; `chorus bench` then caps the run at 7 days.
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert!(parse_duration("1q").is_err());
        assert!(parse_duration("+5").is_err());
        // What humantime would overflow on (and panic) is refused before it sees it.
        assert!(parse_duration("18446744073709551615s500ms500ms").is_err());
        assert!(parse_duration(&"9".repeat(41)).is_err());
        assert!(parse_duration("fast").is_err());
    }
}
