//! Checkers: properties the cluster must have once it has settled, judged from outside.
//!
//! A [`Checker`] reads a [`CheckInput`] — a [`ClusterSnapshot`] (the simulator's ground truth
//! about every machine plus each running node's own view) and the [`History`] of client
//! operations — and reports every [`Violation`] it finds: what is wrong, where (which node saw
//! it, about which node) and when (simulated time). Checkers never touch the running cluster, so
//! they can be tested on hand-made snapshots with planted violations.
//!
//! The membership checkers live in [`membership`]; replicated-data checkers (convergence, lost
//! writes, CRDT bounds) plug in beside them by implementing the same trait and, when they need
//! more state than views (stores, Merkle roots), by adding fields to [`NodeSnapshot`].

pub mod membership;

use std::fmt;
use std::time::Duration;

use chorus::node::ClusterView;
use chorus::NodeId;

use crate::cluster::ProcessState;
use crate::history::History;

/// One machine at the moment of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSnapshot {
    /// Its slot (shown as `n<slot>`).
    pub slot: usize,
    /// Its node id.
    pub id: NodeId,
    /// What its process is doing (ground truth).
    pub process: ProcessState,
    /// Generation of its current (or last) process; 0 if never started.
    pub generation: u64,
    /// The cluster as the node sees it, if it is running.
    pub view: Option<ClusterView>,
}

/// Every machine of the cluster at one simulated instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSnapshot {
    /// When the snapshot was taken.
    pub at: Duration,
    /// Every slot, in slot order.
    pub nodes: Vec<NodeSnapshot>,
}

impl ClusterSnapshot {
    /// The machine with node id `id` (as shown in views: 16 hex digits).
    pub fn by_id(&self, id: &str) -> Option<&NodeSnapshot> {
        self.nodes.iter().find(|n| n.id.to_string() == id)
    }

    /// Running machines that are not leaving, with their views: the nodes whose opinion counts.
    pub fn observers(&self) -> impl Iterator<Item = (&NodeSnapshot, &ClusterView)> + '_ {
        self.nodes
            .iter()
            .filter(|n| n.process == ProcessState::Up)
            .filter_map(|n| n.view.as_ref().map(|v| (n, v)))
    }
}

/// What a checker reads.
#[derive(Debug, Clone, Copy)]
pub struct CheckInput<'a> {
    /// The cluster at the end of the run.
    pub snapshot: &'a ClusterSnapshot,
    /// Every client operation of the run.
    pub history: &'a History,
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

/// The checkers every run applies.
pub fn default_checkers() -> Vec<Box<dyn Checker>> {
    membership::all()
}

/// Runs every checker over `input`.
pub fn run_all(checkers: &[Box<dyn Checker>], input: &CheckInput<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    for c in checkers {
        c.check(input, &mut out);
    }
    out
}
