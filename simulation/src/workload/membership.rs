//! The membership workload: an operator who builds the cluster, then crashes, restarts, adds
//! and removes nodes, recording each action as an operation.
//!
//! - **Bootstrap**: machine `n0` founds the cluster (no seeds, like a first `chorus node` run);
//!   the other initial machines start within the first seconds, each joining through the first
//!   three machines. Each start is a `join` operation.
//! - **Faults** (from the end of the warm-up to the end of the fault phase, one every
//!   exponentially distributed interval), among the enabled kinds:
//!   - `crash` a running node (at least two stay up); most crashed nodes are `restart`ed after
//!     a random delay, the others stay down for good. Now and then the turn is used instead to
//!     `restart` a node that has left — an operator's mistake the core must refuse.
//!   - `join` a new machine, seeded with up to three running nodes (what an operator would
//!     pass to `--join`), while the cluster has fewer than `nodes + size_slack` machines.
//!   - `leave`: ask a running node to leave (at least two stay up), while the cluster has more
//!     than `nodes - size_slack` machines.
//!
//! A `join` completes `ok` when the node reports itself a ring `member`, `indeterminate` if it
//! has not within the join timeout. A `leave` completes `ok` when the node reports that it has
//! left ([`chorus::node::Output::Left`]), `indeterminate` if it has not within the leave timeout.
//! `crash` and `restart` complete at once. Restarts due after the fault phase are cancelled:
//! those nodes stay crashed.

use std::time::Duration;

use chorus::membership::RingStatus;

use super::{pick, shuffle, Ctx, Wakeups, Workload};
use crate::args::{FaultKind, FaultSet};
use crate::cluster::ProcessState;
use crate::history::{OpId, OpKind, Outcome};
use crate::rng;

/// Parameters of the membership workload.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// Machines in the initial cluster.
    pub nodes: usize,
    /// Which of `crash`, `join`, `leave` to perform after bootstrap.
    pub faults: FaultSet,
    /// Seeds each joining machine is given.
    pub seeds_per_node: usize,
    /// Initial machines start within this long of time zero.
    pub bootstrap_spread: Duration,
    /// No fault before this time.
    pub warmup: Duration,
    /// Mean time between two faults.
    pub fault_interval_mean: Duration,
    /// Probability that a crashed node is restarted.
    pub restart_probability: f64,
    /// A restart comes this long after its crash (uniform).
    pub restart_delay: (Duration, Duration),
    /// Probability that a `crash` turn instead tries to restart a node that left (which the
    /// core must refuse).
    pub restart_departed: f64,
    /// The cluster (machines started and not departed) grows by joins to at most `nodes` plus
    /// this, and shrinks by leaves to no fewer than `nodes` minus this (and never below 2).
    pub size_slack: usize,
    /// A join that has not made the node a member by then is indeterminate.
    pub join_timeout: Duration,
    /// A leave the node has not reported complete by then is indeterminate.
    pub leave_timeout: Duration,
    /// How often a pending join is polled.
    pub poll_interval: Duration,
}

impl MembershipConfig {
    /// Defaults for an initial cluster of `nodes` machines with the given faults.
    pub fn new(nodes: usize, faults: FaultSet) -> Self {
        MembershipConfig {
            nodes,
            faults,
            seeds_per_node: 3,
            bootstrap_spread: Duration::from_secs(3),
            warmup: Duration::from_secs(10),
            fault_interval_mean: Duration::from_secs(25),
            restart_probability: 0.75,
            restart_delay: (Duration::from_secs(1), Duration::from_secs(60)),
            restart_departed: 0.15,
            size_slack: 2,
            join_timeout: Duration::from_secs(60),
            leave_timeout: Duration::from_secs(60),
            poll_interval: Duration::from_millis(250),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Pending {
    Bootstrap(usize),
    NextFault,
    Restart(usize),
    PollJoin {
        op: OpId,
        node: usize,
        deadline: Duration,
    },
    PollLeave {
        op: OpId,
        node: usize,
        deadline: Duration,
    },
}

/// See the module documentation.
#[derive(Debug)]
pub struct Membership {
    config: MembershipConfig,
    wakeups: Wakeups<Pending>,
    quiesced: bool,
}

impl Membership {
    /// A workload with `config`.
    pub fn new(config: MembershipConfig) -> Self {
        Membership {
            config,
            wakeups: Wakeups::default(),
            quiesced: false,
        }
    }

    fn schedule(&mut self, cx: &mut Ctx<'_>, at: Duration, what: Pending) {
        self.wakeups.schedule(cx, at, what);
    }

    fn up_nodes(cx: &Ctx<'_>) -> Vec<usize> {
        (0..cx.cluster().len())
            .filter(|&i| cx.cluster().state(i) == ProcessState::Up)
            .collect()
    }

    /// Starts machine `node` as a `join` operation and polls until it is a member.
    fn join(&mut self, cx: &mut Ctx<'_>, node: usize) {
        let op = cx.invoke(OpKind::Join { node });
        match cx.cluster_mut().start(node) {
            Ok(_) => {
                let deadline = cx.now() + self.config.join_timeout;
                self.poll_join(cx, op, node, deadline);
            }
            Err(e) => cx.complete(op, Outcome::Failed(e.to_string())),
        }
    }

    fn poll_join(&mut self, cx: &mut Ctx<'_>, op: OpId, node: usize, deadline: Duration) {
        let state = cx.cluster().state(node);
        if cx.cluster().own_status(node) == Some(RingStatus::Member) && state == ProcessState::Up {
            cx.complete(op, Outcome::Ok);
        } else if matches!(state, ProcessState::Leaving | ProcessState::Left) {
            cx.complete(
                op,
                Outcome::Indeterminate("left before it became a member".into()),
            );
        } else if cx.now() >= deadline {
            cx.complete(
                op,
                Outcome::Indeterminate(format!(
                    "not a member after {:?} (node is {state})",
                    self.config.join_timeout
                )),
            );
        } else {
            let at = cx.now() + self.config.poll_interval;
            self.schedule(cx, at, Pending::PollJoin { op, node, deadline });
        }
    }

    fn poll_leave(&mut self, cx: &mut Ctx<'_>, op: OpId, node: usize, deadline: Duration) {
        if cx.cluster().left_reported(node) {
            cx.complete(op, Outcome::Ok);
        } else if cx.now() >= deadline {
            cx.complete(
                op,
                Outcome::Indeterminate(format!(
                    "the node has not reported leaving after {:?}",
                    self.config.leave_timeout
                )),
            );
        } else {
            let at = cx.now() + self.config.poll_interval;
            self.schedule(cx, at, Pending::PollLeave { op, node, deadline });
        }
    }

    fn next_fault(&mut self, cx: &mut Ctx<'_>) {
        let up = Self::up_nodes(cx);
        // Machines that are part of the cluster: started, and not departed.
        let size = (0..cx.cluster().len())
            .filter(|&i| {
                matches!(
                    cx.cluster().state(i),
                    ProcessState::Up | ProcessState::Crashed
                )
            })
            .count();
        let (n, slack) = (self.config.nodes, self.config.size_slack);
        let mut kinds = Vec::new();
        let f = &self.config.faults;
        if f.contains(FaultKind::Crash) && up.len() >= 3 {
            kinds.push(FaultKind::Crash);
        }
        if f.contains(FaultKind::Leave) && up.len() >= 3 && size > n.saturating_sub(slack).max(2) {
            kinds.push(FaultKind::Leave);
        }
        // Join to grow back to N running nodes too: machines that crashed for good still count
        // in `size`, and without replacements a long run would shrink to a couple of nodes.
        if f.contains(FaultKind::Join) && (size < n + slack || up.len() < n) && !up.is_empty() {
            kinds.push(FaultKind::Join);
        }
        let departed: Vec<usize> = (0..cx.cluster().len())
            .filter(|&i| cx.cluster().state(i) == ProcessState::Left)
            .collect();
        match pick(cx.rng(), &kinds) {
            // Now and then, an operator tries to restart a node that left: it must be refused.
            Some(FaultKind::Crash)
                if !departed.is_empty() && rng::chance(cx.rng(), self.config.restart_departed) =>
            {
                if let Some(node) = pick(cx.rng(), &departed) {
                    self.restart(cx, node);
                }
            }
            Some(FaultKind::Crash) => self.crash(cx, &up),
            Some(FaultKind::Leave) => {
                if let Some(node) = pick(cx.rng(), &up) {
                    let op = cx.invoke(OpKind::Leave { node });
                    match cx.cluster_mut().leave(node) {
                        Ok(()) => {
                            let deadline = cx.now() + self.config.leave_timeout;
                            self.poll_leave(cx, op, node, deadline);
                        }
                        Err(e) => cx.complete(op, Outcome::Failed(e.to_string())),
                    }
                }
            }
            Some(FaultKind::Join) => {
                let mut seeds = up;
                shuffle(cx.rng(), &mut seeds);
                seeds.truncate(self.config.seeds_per_node);
                seeds.sort_unstable();
                if let Ok(node) = cx.cluster_mut().add_node(&seeds) {
                    self.join(cx, node);
                }
            }
            _ => {}
        }
        let gap = rng::exponential(cx.rng(), self.config.fault_interval_mean, 4.0)
            .max(Duration::from_secs(1));
        let at = cx.now() + gap;
        self.schedule(cx, at, Pending::NextFault);
    }

    fn crash(&mut self, cx: &mut Ctx<'_>, up: &[usize]) {
        let Some(node) = pick(cx.rng(), up) else {
            return;
        };
        let op = cx.invoke(OpKind::Crash { node });
        match cx.cluster_mut().crash(node) {
            Ok(()) => {
                cx.complete(op, Outcome::Ok);
                if rng::chance(cx.rng(), self.config.restart_probability) {
                    let (lo, hi) = self.config.restart_delay;
                    let at = cx.now() + rng::uniform(cx.rng(), lo, hi);
                    self.schedule(cx, at, Pending::Restart(node));
                }
            }
            Err(e) => cx.complete(op, Outcome::Failed(e.to_string())),
        }
    }

    fn restart(&mut self, cx: &mut Ctx<'_>, node: usize) {
        if !matches!(
            cx.cluster().state(node),
            ProcessState::Crashed | ProcessState::Left
        ) {
            return;
        }
        let op = cx.invoke(OpKind::Restart { node });
        let outcome = match cx.cluster_mut().start(node) {
            Ok(_) => Outcome::Ok,
            Err(e) => Outcome::Failed(e.to_string()),
        };
        cx.complete(op, outcome);
    }
}

impl Workload for Membership {
    fn name(&self) -> &'static str {
        "membership"
    }

    fn start(&mut self, cx: &mut Ctx<'_>) {
        let n = self.config.nodes;
        let seeds: Vec<usize> = (0..n.min(self.config.seeds_per_node)).collect();
        for i in 0..n {
            // The founder starts alone; everyone else joins through the first machines.
            let mine: &[usize] = if i == 0 { &[] } else { &seeds };
            if cx.cluster_mut().add_node(mine).is_err() {
                break;
            }
            let at = if i == 0 {
                Duration::ZERO
            } else {
                rng::uniform(cx.rng(), Duration::ZERO, self.config.bootstrap_spread)
            };
            self.schedule(cx, at, Pending::Bootstrap(i));
        }
        let at = self.config.warmup;
        self.schedule(cx, at, Pending::NextFault);
    }

    fn wake(&mut self, token: u64, cx: &mut Ctx<'_>) {
        let Some(what) = self.wakeups.take(token) else {
            return;
        };
        match what {
            Pending::Bootstrap(node) => self.join(cx, node),
            Pending::PollJoin { op, node, deadline } => self.poll_join(cx, op, node, deadline),
            Pending::PollLeave { op, node, deadline } => self.poll_leave(cx, op, node, deadline),
            Pending::NextFault if !self.quiesced => self.next_fault(cx),
            Pending::Restart(node) if !self.quiesced => self.restart(cx, node),
            Pending::NextFault | Pending::Restart(_) => {}
        }
    }

    fn quiesce(&mut self, _cx: &mut Ctx<'_>) {
        self.quiesced = true;
    }
}
