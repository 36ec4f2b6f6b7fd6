//! The pause nemesis: a member stops as if by `SIGSTOP` (a paused VM, a long stall), an
//! operator writes it off and removes it through another member while it is paused, and it
//! then resumes with its state and its stale view, believing itself a member.
//!
//! The resumed node still holds data, hints and timers from before: its anti-entropy
//! exchanges, hint deliveries and read repairs could bring back what the members deleted and
//! purged while it was away, and its acknowledgements would count for copies nobody keeps. The
//! members must refuse its data-path traffic, and it must learn that it was removed and stop
//! serving. The deletes-stay and lost-writes checkers see what gets through.
//!
//! After the warm-up the nemesis acts at exponentially distributed intervals (rarely: a pause
//! writes a machine off for good, and the membership workload joins new ones to make up). With
//! no pause in effect and at least four running members, it pauses one of them (`pause`) —
//! preferably one that holds hints, whose delivery after the resume is what would bring back
//! keys deleted meanwhile: it waits up to [`PauseConfig::holder_wait`] for such a member — asks
//! a running member that lists it to remove it a few seconds later (`remove`, polled until a
//! majority confirmed it, retried through another member if the one asked stops), and resumes
//! it (`resume`) after a pause long enough for deletes made meanwhile to have their tombstones
//! purged. At the heal a node still paused is resumed at once; a removal still due is requested
//! first.

use std::time::Duration;

use chorus::membership::RingStatus;

use super::{pick, Ctx, Wakeups, Workload};
use crate::args::{FaultKind, FaultSet};
use crate::cluster::ProcessState;
use crate::history::{OpId, OpKind, Outcome};
use crate::rng;

/// Parameters of the pause nemesis.
#[derive(Debug, Clone)]
pub struct PauseConfig {
    /// Whether `pause` is among the enabled faults.
    pub faults: FaultSet,
    /// No pause before this time.
    pub warmup: Duration,
    /// Mean time between two attempts to pause a node.
    pub interval_mean: Duration,
    /// The removal is requested this long after the pause (uniform).
    pub remove_delay: (Duration, Duration),
    /// A pause lasts this long (uniform); longer than the removal delay, and long enough for
    /// tombstones of deletes made during the pause to be purged.
    pub pause_duration: (Duration, Duration),
    /// Fewest running members (the paused one included) for a pause: the others must still
    /// hold a majority to confirm the removal.
    pub members_min: usize,
    /// How often a pending removal is polled.
    pub poll_interval: Duration,
    /// How long an attempt waits for a member that holds hints before pausing any member.
    pub holder_wait: Duration,
    /// How often a waiting attempt looks for a member that holds hints.
    pub holder_poll: Duration,
}

impl PauseConfig {
    /// Defaults with the given faults.
    pub fn new(faults: FaultSet) -> Self {
        PauseConfig {
            faults,
            warmup: Duration::from_secs(30),
            interval_mean: Duration::from_secs(200),
            remove_delay: (Duration::from_secs(2), Duration::from_secs(15)),
            pause_duration: (Duration::from_secs(30), Duration::from_secs(100)),
            members_min: 4,
            poll_interval: Duration::from_millis(250),
            holder_wait: Duration::from_secs(120),
            holder_poll: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Pending {
    Next,
    Remove(usize),
    PollRemove { op: OpId, node: usize, via: usize },
    Resume(usize),
}

/// See the module documentation.
#[derive(Debug)]
pub struct PauseNemesis {
    config: PauseConfig,
    wakeups: Wakeups<Pending>,
    quiesced: bool,
    /// The paused node, if any.
    paused: Option<usize>,
    /// The node whose removal is due and not yet requested.
    remove_due: Option<usize>,
    /// When the current attempt started looking for a member that holds hints.
    looking_since: Option<Duration>,
}

impl PauseNemesis {
    /// A nemesis with `config`.
    pub fn new(config: PauseConfig) -> Self {
        PauseNemesis {
            config,
            wakeups: Wakeups::default(),
            quiesced: false,
            paused: None,
            remove_due: None,
            looking_since: None,
        }
    }

    fn schedule(&mut self, cx: &mut Ctx<'_>, at: Duration, what: Pending) {
        self.wakeups.schedule(cx, at, what);
    }

    /// Running members the operator counts on.
    fn members(cx: &Ctx<'_>) -> Vec<usize> {
        (0..cx.cluster().len())
            .filter(|&i| {
                cx.cluster().state(i) == ProcessState::Up
                    && !cx.cluster().removed(i)
                    && cx.cluster().own_status(i) == Some(RingStatus::Member)
            })
            .collect()
    }

    fn next(&mut self, cx: &mut Ctx<'_>) {
        if self.paused.is_none() {
            let members = Self::members(cx);
            if members.len() >= self.config.members_min {
                let holders: Vec<usize> = members
                    .iter()
                    .copied()
                    .filter(|&m| cx.cluster().hints_held(m) > 0)
                    .collect();
                let since = *self.looking_since.get_or_insert(cx.now());
                let choice = if !holders.is_empty() {
                    pick(cx.rng(), &holders)
                } else if cx.now() < since + self.config.holder_wait {
                    // Look again soon.
                    let at = cx.now() + self.config.holder_poll;
                    self.schedule(cx, at, Pending::Next);
                    return;
                } else {
                    pick(cx.rng(), &members)
                };
                if let Some(node) = choice {
                    self.looking_since = None;
                    self.pause(cx, node);
                }
            }
        }
        let gap =
            rng::exponential(cx.rng(), self.config.interval_mean, 4.0).max(Duration::from_secs(1));
        let at = cx.now() + gap;
        self.schedule(cx, at, Pending::Next);
    }

    fn pause(&mut self, cx: &mut Ctx<'_>, node: usize) {
        let op = cx.invoke(OpKind::Pause { node });
        if let Err(e) = cx.cluster_mut().pause(node) {
            cx.complete(op, Outcome::Failed(e.to_string()));
            return;
        }
        cx.complete(op, Outcome::Ok);
        self.paused = Some(node);
        self.remove_due = Some(node);
        let (lo, hi) = self.config.remove_delay;
        let at = cx.now() + rng::uniform(cx.rng(), lo, hi);
        self.schedule(cx, at, Pending::Remove(node));
        let (lo, hi) = self.config.pause_duration;
        let at = cx.now() + rng::uniform(cx.rng(), lo, hi);
        self.schedule(cx, at, Pending::Resume(node));
    }

    /// Asks a running member that lists `node` to remove it, and polls until a majority
    /// confirmed it; looks again later if nobody can be asked now.
    fn remove(&mut self, cx: &mut Ctx<'_>, node: usize) {
        let Some(id) = cx.cluster().id(node) else {
            return;
        };
        let vias: Vec<usize> = Self::members(cx)
            .into_iter()
            .filter(|&v| {
                v != node
                    && cx
                        .cluster()
                        .view(v)
                        .is_some_and(|view| view.members.iter().any(|m| m.id == id.to_string()))
            })
            .collect();
        let Some(via) = pick(cx.rng(), &vias) else {
            let at = cx.now() + Duration::from_secs(1);
            self.schedule(cx, at, Pending::Remove(node));
            return;
        };
        self.remove_due = None;
        let op = cx.invoke(OpKind::Remove { node, via });
        match cx.cluster_mut().remove(via, node) {
            Ok(()) => self.poll_remove(cx, op, node, via),
            Err(e) => {
                cx.complete(op, Outcome::Failed(e.to_string()));
                self.remove_due = Some(node);
                let at = cx.now() + Duration::from_secs(1);
                self.schedule(cx, at, Pending::Remove(node));
            }
        }
    }

    fn poll_remove(&mut self, cx: &mut Ctx<'_>, op: OpId, node: usize, via: usize) {
        if cx.cluster().removal_confirmed(via, node) == Some(true) {
            cx.complete(op, Outcome::Ok);
        } else if cx.cluster().state(via) != ProcessState::Up {
            cx.complete(
                op,
                Outcome::Indeterminate(format!("n{via} stopped before a majority confirmed")),
            );
            // The change may have spread, or not: ask another member (it is idempotent).
            self.remove_due = Some(node);
            let at = cx.now() + Duration::from_secs(1);
            self.schedule(cx, at, Pending::Remove(node));
        } else {
            let at = cx.now() + self.config.poll_interval;
            self.schedule(cx, at, Pending::PollRemove { op, node, via });
        }
    }

    fn resume(&mut self, cx: &mut Ctx<'_>, node: usize) {
        if self.paused != Some(node) {
            return;
        }
        if self.remove_due == Some(node) {
            // Not written off yet (nobody could be asked so far): the operator does that
            // before the machine comes back.
            self.remove(cx, node);
            if self.remove_due == Some(node) {
                let at = cx.now() + Duration::from_secs(1);
                self.schedule(cx, at, Pending::Resume(node));
                return;
            }
        }
        self.paused = None;
        let op = cx.invoke(OpKind::Resume { node });
        let outcome = match cx.cluster_mut().resume(node) {
            Ok(()) => Outcome::Ok,
            Err(e) => Outcome::Failed(e.to_string()),
        };
        cx.complete(op, outcome);
    }
}

impl Workload for PauseNemesis {
    fn name(&self) -> &'static str {
        "pause-nemesis"
    }

    fn start(&mut self, cx: &mut Ctx<'_>) {
        if !self.config.faults.contains(FaultKind::Pause) {
            return;
        }
        let at = self.config.warmup + rng::exponential(cx.rng(), self.config.interval_mean, 4.0);
        self.schedule(cx, at, Pending::Next);
    }

    fn wake(&mut self, token: u64, cx: &mut Ctx<'_>) {
        let Some(what) = self.wakeups.take(token) else {
            return;
        };
        match what {
            Pending::Next if !self.quiesced => self.next(cx),
            Pending::Next => {}
            // A removal the resume already requested is not requested twice.
            Pending::Remove(node) if self.remove_due == Some(node) => self.remove(cx, node),
            Pending::Remove(_) => {}
            Pending::PollRemove { op, node, via } => self.poll_remove(cx, op, node, via),
            Pending::Resume(node) => self.resume(cx, node),
        }
    }

    fn quiesce(&mut self, cx: &mut Ctx<'_>) {
        self.quiesced = true;
        if let Some(node) = self.paused {
            self.resume(cx, node);
        }
    }
}
