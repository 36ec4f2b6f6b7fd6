//! `chorus-sim`: a deterministic, discrete-event simulation of a whole Chorus cluster.
//!
//! The simulator drives N instances of the production [`chorus::node::Node`] — the same sans-IO
//! core the tokio runtime drives — against a simulated clock, network and disks. It implements
//! no protocol of its own: everything it knows about membership it learns by asking the nodes.
//! A run is a pure function of its seed and arguments: the same inputs give the same event
//! trace, summarised by a BLAKE3 `trace-hash`, in any process on the same build.
//!
//! # Layout
//!
//! - [`rng`]: independent, seed-derived random streams (xoshiro256++) and the few samplers the
//!   simulation needs. The only source of randomness.
//! - [`scheduler`]: the event queue, a `BTreeMap` keyed by (simulated time, sequence number).
//! - [`network`]: the network model — per-link latency, loss, duplication, reordering,
//!   partitions (symmetric, isolated node, one-way, bridge) and degraded periods.
//! - [`disk`]: one node's simulated disk (a [`chorus::storage::MemoryStore`] with crash
//!   semantics) and the metadata a driver keeps on it (id, generation, ring state).
//! - [`trace`]: the event trace: a running BLAKE3 hash and optional printing.
//! - [`snapshot`]: what checkers see — process states, cluster snapshots, per-step
//!   observations. A leaf: checkers depend on it, never on the harness.
//! - [`cluster`]: the nodes, their processes and disks, and the step loop that delivers events
//!   to them and performs their outputs in order (persists are barriers; a crash may fall
//!   between any two outputs); the control surface workloads use (start, crash, leave, remove,
//!   join, move a machine to a new address).
//! - [`history`]: client operations with start, end and outcome (ok, failed, indeterminate).
//! - [`workload`]: the [`workload::Workload`] trait for simulated clients, the membership
//!   workload, and the network nemesis (a client that injects faults, as in Jepsen).
//! - [`check`]: the [`check::Checker`] trait, the membership checkers, and the safety
//!   invariants checked after every step.
//! - [`profile`]: per-seed profiles (a tiny operation-id log with a hot counter, large
//!   values), picked from the seed so that a sweep covers each.
//! - [`sim`]: one run — phases (faults, heal, quiet), settling, the report — and sweeps over
//!   many seeds.
//! - [`log`]: optional printing of the core's own log lines, stamped with simulated time.
//! - [`args`]: parsing of durations, seed ranges and fault lists for the command line.
//! - [`fuzz_seeds`]: the fuzz targets' seed corpus, captured from a small simulated cluster
//!   (`chorus-sim fuzz-seeds`).
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod args;
pub mod check;
pub mod cluster;
pub mod disk;
pub mod fuzz_seeds;
pub mod history;
pub mod log;
pub mod network;
pub mod profile;
pub mod rng;
pub mod scheduler;
pub mod sim;
pub mod snapshot;
pub mod trace;
pub mod workload;
