//! Checkers: properties the cluster must have, judged from outside.
//!
//! A [`Checker`] reads a [`CheckInput`] — a [`ClusterSnapshot`] (the simulator's ground truth
//! about every machine plus each running node's own view) and the [`History`] of client
//! operations — and reports every [`Violation`] it finds: what is wrong, where (which node saw
//! it, about which node) and when (simulated time). Checkers depend on the snapshot types
//! ([`crate::snapshot`]) and the node's own types, never on the harness that runs the cluster,
//! so they are tested on hand-made snapshots with planted violations.
//!
//! - [`membership`]: end-of-run properties of a settled cluster (agreement, liveness, ring
//!   status, restarts, placement, operation outcomes).
//! - [`register`]: what clients of registers saw, and what replicas hold (no lost or
//!   resurrected writes, no phantoms, only truly concurrent siblings, hints drained, no dot
//!   minted twice).
//! - [`crdt`]: what clients of counters and sets saw (bounds on counters, permanent 2P-Set
//!   removals, OR-Set adds that survive), and that replicas of CRDT keys converge.
//! - [`safety`]: invariants checked after every simulated step.
//! - [`datapath`]: the acknowledgement contract (nothing acknowledged before it is durable)
//!   checked at every message a node sends, and the hint contract (no hint deleted before a
//!   node acknowledged storing it) checked at every hint deletion, and the coordinator's
//!   side (a success names `w` distinct nodes, each holding the write durably) checked at
//!   every successful client reply.
//! - [`dots`]: no dot minted twice, checked at every data write.
//!
//! Further checkers (CRDT bounds, convergence) plug in beside them by implementing the same
//! trait and, when they need more state, by adding fields to [`NodeSnapshot`].

pub mod crdt;
pub mod datapath;
pub mod dots;
pub mod membership;
pub mod merkle;
pub mod register;
pub mod safety;

use std::fmt;
use std::time::Duration;

use crate::history::History;
pub use crate::snapshot::{ClusterSnapshot, NodeSnapshot};

/// What a checker reads.
#[derive(Debug, Clone, Copy)]
pub struct CheckInput<'a> {
    /// The cluster at the moment of the check.
    pub snapshot: &'a ClusterSnapshot,
    /// Every client operation of the run so far.
    pub history: &'a History,
    /// When the faults were healed (`None` while they still run).
    pub healed_at: Option<Duration>,
}

impl CheckInput<'_> {
    /// When an operator's removal last lost something of `key` that no remaining machine held
    /// (see [`ClusterSnapshot::lost`]).
    pub fn lost_at(&self, key: &str) -> Option<Duration> {
        self.snapshot.lost.get(key.as_bytes()).copied()
    }

    /// Whether an operation on `key` that completed at `end` may have been lost with a
    /// machine an operator removed later.
    pub fn lost_after(&self, key: &str, end: Option<Duration>) -> bool {
        self.lost_at(key)
            .is_some_and(|at| end.is_none_or(|end| end <= at))
    }
}

/// A property that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The checker that found it.
    pub checker: &'static str,
    /// Simulated time of the observation.
    pub at: Duration,
    /// The node whose state or view shows the problem (`None` for cluster-wide problems).
    pub observer: Option<usize>,
    /// The node the problem is about, if any.
    pub subject: Option<usize>,
    /// What is wrong, in one sentence.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[t={:.3}s] {}: ", self.at.as_secs_f64(), self.checker)?;
        if let Some(o) = self.observer {
            write!(f, "at n{o}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// A property of a settled cluster.
pub trait Checker {
    /// Short name, used in reports.
    fn name(&self) -> &'static str;

    /// Appends every violation found in `input` to `out`.
    fn check(&self, input: &CheckInput<'_>, out: &mut Vec<Violation>);
}

/// The checkers every run applies; operations must complete within `bound` of the heal.
pub fn default_checkers(bound: Duration) -> Vec<Box<dyn Checker>> {
    let mut all = membership::all(bound);
    all.extend(register::all());
    all.extend(crdt::all());
    all.extend(merkle::all());
    all
}

/// Runs every checker over `input`.
pub fn run_all(checkers: &[Box<dyn Checker>], input: &CheckInput<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    for c in checkers {
        c.check(input, &mut out);
    }
    out
}
