//! The membership workload: an operator who builds the cluster, then crashes, restarts, adds,
//! removes and retires nodes, recording each action as an operation.
//!
//! - **Bootstrap**: machine `n0` founds the cluster (no seeds, like a first `chorus node` run);
//!   the other initial machines start within the first seconds, each joining through the first
//!   three machines. Each start is a `join` operation.
//! - **Faults** (from the end of the warm-up to the end of the fault phase, one every
//!   exponentially distributed interval), among the enabled kinds:
//!   - `crash` a running node (at least two stay up), either at once or between two of its
//!     outputs (armed with [`Cluster::crash_after_outputs`]). Most crashed nodes are
//!     `restart`ed after a random delay, some on a new address; the others are lost for good and
//!     the operator `remove`s them from the ring a little later, through a running node. Now and
//!     then the turn is used instead to `restart` a node that has left — an operator's mistake
//!     the core must refuse.
//!   - `join` a new machine, seeded with up to three running nodes (what an operator would
//!     pass to `--join`), while the cluster has fewer than `nodes + size_slack` machines.
//!   - `leave`: ask a running node to leave (at least two stay up), while the cluster has more
//!     than `nodes - size_slack` machines. Some leaves are followed, a random while later, by
//!     a `cancel-leave` (the operator changed their mind): it succeeds while the node still
//!     hands its partitions over, and is refused once it recorded `left`.
//!
//! A `join` completes `ok` when the node reports itself a ring `member`; a `leave` when the node
//! reports that its leave completed (`failed` when it was cancelled); a `remove` when the node asked reports the removal
//! confirmed by a majority. There is no timeout: the [`crate::check::membership::Operations`]
//! checker demands that every one completes within a bound after the heal. An operation whose
//! node crashes first completes `indeterminate`; a node that restarts in the middle of a leave
//! resumes it, which is recorded as a new `leave`; a removal whose node stops first is retried
//! through another. `crash` and `restart` complete at once. At the heal, restarts still due
//! happen at once and removals still due are requested at once: the operator brings back what
//! should come back and writes off what is lost.
//!
//! [`Cluster::crash_after_outputs`]: crate::cluster::Cluster::crash_after_outputs

use std::collections::BTreeSet;
use std::time::Duration;

use chorus::membership::RingStatus;

use rand::RngExt;

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
    /// How often a pending join, leave or removal is polled.
    pub poll_interval: Duration,
    /// Probability that a crash falls between two outputs of the node rather than between
    /// two events.
    pub crash_between_outputs: f64,
    /// A crash between outputs falls before one of the next this-many outputs (uniform).
    pub crash_outputs_max: u32,
    /// A crash armed between outputs happens at the latest this long after it was armed.
    pub crash_deadline: Duration,
    /// Probability that a restarted machine comes back on a new address.
    pub new_address_probability: f64,
    /// A machine lost for good is removed this long after its crash (uniform).
    pub remove_delay: (Duration, Duration),
    /// Probability that a leave is followed by an attempt to cancel it.
    pub cancel_leave_probability: f64,
    /// The attempt comes this long after the leave (uniform).
    pub cancel_leave_delay: (Duration, Duration),
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
            poll_interval: Duration::from_millis(250),
            crash_between_outputs: 0.5,
            crash_outputs_max: 8,
            crash_deadline: Duration::from_millis(500),
            new_address_probability: 0.2,
            remove_delay: (Duration::from_secs(5), Duration::from_secs(40)),
            cancel_leave_probability: 0.25,
            cancel_leave_delay: (Duration::from_millis(200), Duration::from_secs(20)),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Pending {
    Bootstrap(usize),
    NextFault,
    Restart(usize),
    Remove(usize),
    PollJoin { op: OpId, node: usize },
    PollLeave { op: OpId, node: usize },
    CancelLeave(usize),
    PollRemove { op: OpId, node: usize, via: usize },
}

/// See the module documentation.
#[derive(Debug)]
pub struct Membership {
    config: MembershipConfig,
    wakeups: Wakeups<Pending>,
    quiesced: bool,
    /// Crashed machines with a restart planned.
    restarts_due: BTreeSet<usize>,
    /// Machines lost for good whose removal is planned but not requested.
    removals_due: BTreeSet<usize>,
    /// Machines whose removal was requested and is not yet confirmed.
    removing: BTreeSet<usize>,
}

impl Membership {
    /// A workload with `config`.
    pub fn new(config: MembershipConfig) -> Self {
        Membership {
            config,
            wakeups: Wakeups::default(),
            quiesced: false,
            restarts_due: BTreeSet::new(),
            removals_due: BTreeSet::new(),
            removing: BTreeSet::new(),
        }
    }

    fn schedule(&mut self, cx: &mut Ctx<'_>, at: Duration, what: Pending) {
        self.wakeups.schedule(cx, at, what);
    }

    /// Running nodes the operator counts on: a machine written off while paused and resumed
    /// since ([`crate::workload::pause`]) runs, but the operator no longer manages it.
    fn up_nodes(cx: &Ctx<'_>) -> Vec<usize> {
        (0..cx.cluster().len())
            .filter(|&i| cx.cluster().state(i) == ProcessState::Up && !cx.cluster().removed(i))
            .collect()
    }

    /// Starts machine `node` as a `join` operation and polls until it is a member.
    fn join(&mut self, cx: &mut Ctx<'_>, node: usize) {
        let op = cx.invoke(OpKind::Join { node });
        match cx.cluster_mut().start(node) {
            Ok(_) => self.poll_join(cx, op, node),
            Err(e) => cx.complete(op, Outcome::Failed(e.to_string())),
        }
    }

    fn poll_join(&mut self, cx: &mut Ctx<'_>, op: OpId, node: usize) {
        let state = cx.cluster().state(node);
        if cx.cluster().own_status(node) == Some(RingStatus::Member) && state == ProcessState::Up {
            cx.complete(op, Outcome::Ok);
        } else if matches!(state, ProcessState::Leaving | ProcessState::Left) {
            cx.complete(
                op,
                Outcome::Indeterminate("left before it became a member".into()),
            );
        } else if !state.is_running() {
            cx.complete(
                op,
                Outcome::Indeterminate(format!("{state} before it became a member")),
            );
        } else {
            let at = cx.now() + self.config.poll_interval;
            self.schedule(cx, at, Pending::PollJoin { op, node });
        }
    }

    fn poll_leave(&mut self, cx: &mut Ctx<'_>, op: OpId, node: usize) {
        let state = cx.cluster().state(node);
        if cx.cluster().left_reported(node) {
            cx.complete(op, Outcome::Ok);
        } else if state == ProcessState::Up {
            cx.complete(op, Outcome::Failed("the leave was cancelled".into()));
        } else if !state.is_running() {
            cx.complete(
                op,
                Outcome::Indeterminate(format!("{state} before the leave completed")),
            );
        } else {
            let at = cx.now() + self.config.poll_interval;
            self.schedule(cx, at, Pending::PollLeave { op, node });
        }
    }

    /// Asks a running node to remove the lost machine `node`, and polls until a majority
    /// confirmed it. Tried again through another node if this one stops first.
    fn remove(&mut self, cx: &mut Ctx<'_>, node: usize) {
        if !self.removals_due.remove(&node) {
            return;
        }
        self.removing.insert(node);
        // Ask a node that knows the machine: one that never made it into anyone's ring state
        // has nothing to remove (and one only a stopped node knows may reappear later).
        let id = cx.cluster().id(node);
        let up: Vec<usize> = Self::up_nodes(cx)
            .into_iter()
            .filter(|&v| {
                cx.cluster().view(v).is_some_and(|view| {
                    id.is_some_and(|id| view.members.iter().any(|m| m.id == id.to_string()))
                })
            })
            .collect();
        let Some(via) = pick(cx.rng(), &up) else {
            // Nobody to ask right now; look again later.
            self.removing.remove(&node);
            self.removals_due.insert(node);
            let at = cx.now() + Duration::from_secs(5);
            self.schedule(cx, at, Pending::Remove(node));
            return;
        };
        let op = cx.invoke(OpKind::Remove { node, via });
        match cx.cluster_mut().remove(via, node) {
            Ok(()) => self.poll_remove(cx, op, node, via),
            Err(e) => {
                cx.complete(op, Outcome::Failed(e.to_string()));
                self.retry_remove(cx, node);
            }
        }
    }

    fn retry_remove(&mut self, cx: &mut Ctx<'_>, node: usize) {
        self.removing.remove(&node);
        self.removals_due.insert(node);
        let at = cx.now() + Duration::from_secs(1);
        self.schedule(cx, at, Pending::Remove(node));
    }

    fn poll_remove(&mut self, cx: &mut Ctx<'_>, op: OpId, node: usize, via: usize) {
        if cx.cluster().removal_confirmed(via, node) == Some(true) {
            cx.complete(op, Outcome::Ok);
            self.removing.remove(&node);
        } else if cx.cluster().state(via) != ProcessState::Up {
            cx.complete(
                op,
                Outcome::Indeterminate(format!("n{via} stopped before a majority confirmed")),
            );
            // The change may have spread, or not: ask another node (it is idempotent).
            self.retry_remove(cx, node);
        } else {
            let at = cx.now() + self.config.poll_interval;
            self.schedule(cx, at, Pending::PollRemove { op, node, via });
        }
    }

    fn next_fault(&mut self, cx: &mut Ctx<'_>) {
        let up = Self::up_nodes(cx);
        // Machines that are part of the cluster: started, and neither departed nor removed.
        let size = (0..cx.cluster().len())
            .filter(|&i| {
                matches!(
                    cx.cluster().state(i),
                    ProcessState::Up | ProcessState::Crashed
                ) && !cx.cluster().removed(i)
                    && !self.removals_due.contains(&i)
                    && !self.removing.contains(&i)
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
                            self.poll_leave(cx, op, node);
                            if rng::chance(cx.rng(), self.config.cancel_leave_probability) {
                                let (low, high) = self.config.cancel_leave_delay;
                                let at = cx.now() + rng::uniform(cx.rng(), low, high);
                                self.schedule(cx, at, Pending::CancelLeave(node));
                            }
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
        let between_outputs = rng::chance(cx.rng(), self.config.crash_between_outputs);
        let result = if between_outputs {
            let k = cx.rng().random_range(0..=self.config.crash_outputs_max);
            let deadline = self.config.crash_deadline;
            cx.cluster_mut().crash_after_outputs(node, k, deadline)
        } else {
            cx.cluster_mut().crash(node)
        };
        match result {
            Ok(()) => {
                cx.complete(op, Outcome::Ok);
                // Either way the process is gone by the time anything below happens: an armed
                // crash fires within its deadline, shorter than any restart or removal delay.
                if rng::chance(cx.rng(), self.config.restart_probability) {
                    let (lo, hi) = self.config.restart_delay;
                    let at = cx.now() + rng::uniform(cx.rng(), lo, hi).max(Duration::from_secs(1));
                    self.restarts_due.insert(node);
                    self.schedule(cx, at, Pending::Restart(node));
                } else {
                    let (lo, hi) = self.config.remove_delay;
                    let at = cx.now() + rng::uniform(cx.rng(), lo, hi);
                    self.removals_due.insert(node);
                    self.schedule(cx, at, Pending::Remove(node));
                }
            }
            Err(e) => cx.complete(op, Outcome::Failed(e.to_string())),
        }
    }

    fn restart(&mut self, cx: &mut Ctx<'_>, node: usize) {
        let state = cx.cluster().state(node);
        if self.restarts_due.contains(&node) && state.is_running() {
            // A crash armed between outputs has not fired yet: come back once it has.
            let at = cx.now() + Duration::from_secs(1);
            self.schedule(cx, at, Pending::Restart(node));
            return;
        }
        self.restarts_due.remove(&node);
        if !matches!(state, ProcessState::Crashed | ProcessState::Left) {
            return;
        }
        if state == ProcessState::Crashed
            && rng::chance(cx.rng(), self.config.new_address_probability)
        {
            let _ = cx.cluster_mut().move_address(node);
        }
        let op = cx.invoke(OpKind::Restart { node });
        let outcome = match cx.cluster_mut().start(node) {
            Ok(_) => Outcome::Ok,
            Err(e) => Outcome::Failed(e.to_string()),
        };
        cx.complete(op, outcome);
        match cx.cluster().state(node) {
            // It resumed an unfinished leave: that leave must complete too.
            ProcessState::Leaving => {
                let op = cx.invoke(OpKind::Leave { node });
                self.poll_leave(cx, op, node);
            }
            // A node that never finished joining goes on joining.
            ProcessState::Up if cx.cluster().own_status(node) == Some(RingStatus::Joining) => {
                let op = cx.invoke(OpKind::Join { node });
                self.poll_join(cx, op, node);
            }
            _ => {}
        }
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
            Pending::PollJoin { op, node } => self.poll_join(cx, op, node),
            Pending::PollLeave { op, node } => self.poll_leave(cx, op, node),
            // Only a node still leaving (not crashed meanwhile) is asked, and only before the
            // heal (after it, the operator lets every change finish).
            Pending::CancelLeave(node) => {
                if !self.quiesced && cx.cluster().state(node) == ProcessState::Leaving {
                    let op = cx.invoke(OpKind::CancelLeave { node });
                    match cx.cluster_mut().cancel_leave(node) {
                        Ok(()) => cx.complete(op, Outcome::Ok),
                        Err(e) => cx.complete(op, Outcome::Failed(e.to_string())),
                    }
                }
            }
            Pending::PollRemove { op, node, via } => self.poll_remove(cx, op, node, via),
            Pending::Remove(node) => self.remove(cx, node),
            Pending::NextFault if !self.quiesced => self.next_fault(cx),
            // Restarts due after the heal were already done at the heal.
            Pending::Restart(node) if self.restarts_due.contains(&node) => self.restart(cx, node),
            Pending::NextFault | Pending::Restart(_) => {}
        }
    }

    fn quiesce(&mut self, cx: &mut Ctx<'_>) {
        self.quiesced = true;
        // The operator brings back what should come back and writes off what is lost.
        for node in std::mem::take(&mut self.restarts_due) {
            self.restarts_due.insert(node);
            self.restart(cx, node);
        }
        let lost: Vec<usize> = self.removals_due.iter().copied().collect();
        for node in lost {
            self.remove(cx, node);
        }
    }
}
