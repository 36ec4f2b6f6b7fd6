//! Safety invariants checked after every simulated step, not only at the end of a run.
//!
//! The end-of-run checkers judge a settled cluster; a protocol can still misbehave on the way
//! (a status that goes backwards and forwards again, two processes with one identity) and
//! recover before the end. [`SafetyMonitor`] sees an [`Observation`] after every step and
//! records a [`Violation`] the moment an invariant breaks:
//!
//! - **ring status never moves backwards**: within one process, no node's ring entry regresses
//!   (`joining → member → leaving → left` only forward, except a cancelled leave: `leaving`
//!   back to `member` with a newer version) or disappears;
//! - **generations never drop**: each start of a slot has a newer generation than the last,
//!   and within one process the generation SWIM knows for a node never decreases;
//! - **a node that left never serves again**: once a slot reported that its leave completed,
//!   it never starts again and is never seen up;
//! - **one process per node id**: no two running processes share a node id;
//! - **a node knows itself**: a running node's ring state always holds its own entry;
//! - **members are made by members**: a node that did not found the cluster becomes a member
//!   only while its ring state shows another member (or a leaving node, which still owns its
//!   partitions) it could have caught up from, unless every other node that was ever a member
//!   left, was removed, signed `left` after handing its partitions to this joiner, or is a
//!   fellow joiner it handed them to as well, still seen joining here.
//!
//! It depends only on the observation types of [`crate::snapshot`] and the node's own types.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chorus::membership::RingStatus;
use chorus::NodeId;

use super::Violation;
use crate::snapshot::{NodeObservation, Observation, ProcessState};

const CHECKER: &str = "safety";

/// Most violations kept (the first ones matter; a broken invariant tends to repeat).
const VIOLATIONS_MAX: usize = 32;

/// Watches every step of a run; see the module documentation.
#[derive(Debug, Default)]
pub struct SafetyMonitor {
    /// Per (slot, subject): the process it was seen in, the furthest status seen there, and
    /// the version of the entry that had it.
    statuses: BTreeMap<(usize, NodeId), (u64, RingStatus, u64)>,
    /// Per (slot, subject): the process and the newest SWIM generation seen there.
    swim_generations: BTreeMap<(usize, NodeId), (u64, u64)>,
    /// Per slot: the generation of its last start.
    generations: BTreeMap<usize, u64>,
    /// Slots whose leave completed.
    left: BTreeSet<usize>,
    /// Slots whose own ring state showed themselves `left` (their partitions were handed to
    /// their future owners, though the leave may still be gathering confirmations of `left`
    /// before it completes), with the joiners they handed them to: the joining nodes in their
    /// ring when they signed it, if it listed no other member (none otherwise).
    handed_to: BTreeMap<usize, BTreeSet<NodeId>>,
    /// Slots that became members because the ring had emptied (every other member gone), by
    /// the node id they did it as: joiners that take the ring over together.
    heirs: BTreeMap<usize, NodeId>,
    /// Slots an operator removed for good.
    removed: BTreeSet<usize>,
    /// Slots seen as a member (by their own ring state) at some point.
    members_ever: BTreeSet<usize>,
    /// Running processes by node id.
    running: BTreeMap<NodeId, BTreeSet<usize>>,
    violations: Vec<Violation>,
    dropped: usize,
}

impl SafetyMonitor {
    /// A monitor that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every violation so far (at most a bounded number; see [`SafetyMonitor::dropped`]).
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// How many further violations were not kept.
    pub fn dropped(&self) -> usize {
        self.dropped
    }

    fn report(&mut self, at: Duration, observer: usize, subject: Option<usize>, message: String) {
        if self.violations.len() >= VIOLATIONS_MAX {
            self.dropped += 1;
            return;
        }
        self.violations.push(Violation {
            checker: CHECKER,
            at,
            observer: Some(observer),
            subject,
            message,
        });
    }

    /// Checks one observation made at simulated time `at`.
    pub fn observe(&mut self, at: Duration, obs: &Observation) {
        match obs {
            Observation::Started {
                slot,
                id,
                epoch,
                generation,
                initial,
                ..
            } => {
                self.started(at, *slot, *id, *epoch, *generation);
                // What the process starts from counts as its first status.
                let status = initial.unwrap_or(RingStatus::Joining);
                self.statuses.insert((*slot, *id), (*epoch, status, 0));
            }
            Observation::Stopped { slot, id, .. } => {
                if let Some(set) = self.running.get_mut(id) {
                    set.remove(slot);
                    if set.is_empty() {
                        self.running.remove(id);
                    }
                }
            }
            Observation::Removed { slot } => {
                self.removed.insert(*slot);
            }
            Observation::Node(n) => self.node(at, n),
        }
    }

    fn started(&mut self, at: Duration, slot: usize, id: NodeId, epoch: u64, generation: u64) {
        if self.left.contains(&slot) {
            self.report(
                at,
                slot,
                Some(slot),
                format!("n{slot} completed its leave but started again (process {epoch})"),
            );
        }
        if let Some(&last) = self.generations.get(&slot) {
            if generation <= last {
                self.report(
                    at,
                    slot,
                    Some(slot),
                    format!(
                        "n{slot} started with generation {generation}, not newer than its last start's {last}"
                    ),
                );
            }
        }
        self.generations.insert(slot, generation);
        let others: Vec<usize> = self
            .running
            .get(&id)
            .map(|s| s.iter().copied().filter(|&o| o != slot).collect())
            .unwrap_or_default();
        for other in others {
            self.report(
                at,
                slot,
                Some(other),
                format!("n{slot} started as node {id}, which n{other} is already running as"),
            );
        }
        self.running.entry(id).or_default().insert(slot);
    }

    fn node(&mut self, at: Duration, n: &NodeObservation) {
        let slot = n.slot;
        if n.left_reported {
            self.left.insert(slot);
        }
        let own = n.own_status();
        if own.is_none() {
            self.report(
                at,
                slot,
                Some(slot),
                format!("n{slot}'s ring state does not list the node itself"),
            );
        }
        let before = self
            .statuses
            .get(&(slot, n.id))
            .filter(|(epoch, _, _)| *epoch == n.epoch)
            .map(|&(_, s, _)| s);
        // (A joining node asked to leave goes straight to `leaving`: that is no promotion.)
        let promoted = before == Some(RingStatus::Joining) && own == Some(RingStatus::Member);
        if promoted && !n.founder {
            // A leaving node still owns its partitions until its handoff is done: a joiner
            // catches up from it as from a member (seed 1094 of 10 minutes: every member was
            // leaving, and a joiner that had pulled everything from them was reported).
            let other_member = n.ring.iter().any(|(id, e)| {
                id != n.id && matches!(e.status, RingStatus::Member | RingStatus::Leaving)
            });
            // Every machine that was ever a member left or was removed: the ring has no member
            // to catch up from, and the joiners carry it on (with whatever the removals lost).
            // A last member that signed `left` after handing its partitions to this node counts
            // as gone even before its leave completes, and so does a fellow joiner it handed them
            // to as well, which became a member while this node still sees it joining (seed
            // 493: three joiners took the ring over from the last member, which signed `left` a
            // few milliseconds before it reported the leave complete).
            let handed_to_me = |s: usize| self.handed_to.get(&s).is_some_and(|h| h.contains(&n.id));
            let fellow_heir = |s: usize| {
                self.heirs.get(&s).is_some_and(|&h| {
                    n.ring.get(h).map(|e| e.status) == Some(RingStatus::Joining)
                        && self
                            .handed_to
                            .values()
                            .any(|to| to.contains(&n.id) && to.contains(&h))
                })
            };
            let ring_emptied = self.members_ever.iter().any(|&s| s != slot)
                && self.members_ever.iter().all(|&s| {
                    s == slot
                        || self.left.contains(&s)
                        || self.removed.contains(&s)
                        || handed_to_me(s)
                        || fellow_heir(s)
                });
            if !other_member && ring_emptied {
                self.heirs.insert(slot, n.id);
            }
            if !other_member && !ring_emptied {
                self.report(
                    at,
                    slot,
                    Some(slot),
                    format!(
                        "n{slot} became a member without knowing any other member to catch up from"
                    ),
                );
            }
        }
        if own == Some(RingStatus::Member) {
            self.members_ever.insert(slot);
        }
        if own == Some(RingStatus::Left) && !self.handed_to.contains_key(&slot) {
            let others = |status: RingStatus| -> BTreeSet<NodeId> {
                n.ring
                    .iter()
                    .filter(|&(id, e)| id != n.id && e.status == status)
                    .map(|(id, _)| id)
                    .collect()
            };
            let to = if others(RingStatus::Member).is_empty() {
                others(RingStatus::Joining)
            } else {
                BTreeSet::new()
            };
            self.handed_to.insert(slot, to);
        }
        if self.left.contains(&slot) && n.process == ProcessState::Up {
            self.report(
                at,
                slot,
                Some(slot),
                format!("n{slot} completed its leave but is serving as an up node"),
            );
        }
        // Ring entries only move forward within one process, and never disappear.
        let mut regressions = Vec::new();
        for (subject, entry) in n.ring.iter() {
            let seen = self.statuses.entry((slot, subject)).or_insert((
                n.epoch,
                entry.status,
                entry.info_version,
            ));
            // The one way back: the node itself cancelled its leave, with a newer version.
            let cancelled = seen.1 == RingStatus::Leaving
                && entry.status == RingStatus::Member
                && entry.info_version > seen.2;
            if seen.0 != n.epoch {
                *seen = (n.epoch, entry.status, entry.info_version);
            } else if entry.status < seen.1 && !cancelled {
                regressions.push(format!(
                    "ring entry of {subject} went back from {} to {}",
                    seen.1.as_str(),
                    entry.status.as_str()
                ));
            } else {
                seen.1 = entry.status;
                seen.2 = entry.info_version;
            }
        }
        let vanished: Vec<NodeId> = self
            .statuses
            .range((slot, NodeId::new(0))..=(slot, NodeId::new(u64::MAX)))
            .filter(|(&(_, subject), &(epoch, _, _))| {
                epoch == n.epoch && n.ring.get(subject).is_none()
            })
            .map(|(&(_, subject), _)| subject)
            .collect();
        for subject in vanished {
            regressions.push(format!("ring entry of {subject} disappeared"));
            self.statuses.remove(&(slot, subject));
        }
        for message in regressions {
            self.report(at, slot, None, message);
        }
        // SWIM generations never drop within one process.
        let mut drops = Vec::new();
        for (&subject, &generation) in &n.generations {
            let seen = self
                .swim_generations
                .entry((slot, subject))
                .or_insert((n.epoch, generation));
            if seen.0 != n.epoch {
                *seen = (n.epoch, generation);
            } else if generation < seen.1 {
                drops.push(format!(
                    "SWIM generation of {subject} dropped from {} to {generation}",
                    seen.1
                ));
            } else {
                seen.1 = generation;
            }
        }
        for message in drops {
            self.report(at, slot, None, message);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use chorus::membership::{NodeInfo, RingEntry, RingState};

    use super::*;

    fn t(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn id(i: u64) -> NodeId {
        NodeId::new(0x100 + i)
    }

    fn ring(entries: &[(u64, RingStatus)]) -> RingState {
        let mut r = RingState::new();
        for &(i, status) in entries {
            let addr = SocketAddr::from(([10, 0, 0, i as u8], 7000));
            r.merge_entry(
                id(i),
                &RingEntry {
                    status,
                    info_version: 1,
                    info: NodeInfo {
                        quic_addr: addr,
                        http_addr: addr,
                    },
                },
            );
        }
        r
    }

    fn started(slot: usize, epoch: u64, generation: u64) -> Observation {
        Observation::Started {
            slot,
            id: id(slot as u64),
            epoch,
            generation,
            addr: SocketAddr::from(([10, 0, 0, slot as u8], 7000)),
            initial: None,
        }
    }

    fn seen(slot: usize, epoch: u64, r: RingState, generations: &[(u64, u64)]) -> Observation {
        Observation::Node(NodeObservation {
            slot,
            epoch,
            id: id(slot as u64),
            process: ProcessState::Up,
            ring: r,
            generations: generations.iter().map(|&(i, g)| (id(i), g)).collect(),
            left_reported: false,
            founder: false,
        })
    }

    #[test]
    fn a_healthy_history_passes() {
        let mut m = SafetyMonitor::new();
        m.observe(t(0), &started(0, 1, 1));
        m.observe(t(1), &seen(0, 1, ring(&[(0, RingStatus::Joining)]), &[]));
        m.observe(
            t(2),
            &seen(
                0,
                1,
                ring(&[(0, RingStatus::Member), (1, RingStatus::Member)]),
                &[(1, 1)],
            ),
        );
        m.observe(
            t(3),
            &seen(
                0,
                1,
                ring(&[(0, RingStatus::Member), (1, RingStatus::Left)]),
                &[(1, 2)],
            ),
        );
        m.observe(
            t(4),
            &Observation::Stopped {
                slot: 0,
                id: id(0),
                epoch: 1,
            },
        );
        // A new process may start from an older ring (it lost unsynced writes).
        m.observe(
            t(5),
            &Observation::Started {
                slot: 0,
                id: id(0),
                epoch: 2,
                generation: 2,
                addr: SocketAddr::from(([10, 0, 0, 0], 7000)),
                initial: Some(RingStatus::Member),
            },
        );
        m.observe(
            t(6),
            &seen(0, 2, ring(&[(0, RingStatus::Member)]), &[(1, 1)]),
        );
        assert!(m.violations().is_empty(), "{:#?}", m.violations());
    }

    #[test]
    fn a_node_missing_from_its_own_ring_is_caught() {
        let mut m = SafetyMonitor::new();
        m.observe(t(1), &seen(0, 1, ring(&[(1, RingStatus::Member)]), &[]));
        assert_eq!(m.violations().len(), 1);
        assert!(m.violations()[0]
            .message
            .contains("does not list the node itself"));
    }

    #[test]
    fn a_self_promoted_member_is_caught_but_a_founder_is_not() {
        let mut m = SafetyMonitor::new();
        m.observe(
            t(1),
            &seen(
                2,
                1,
                ring(&[(2, RingStatus::Joining), (3, RingStatus::Joining)]),
                &[],
            ),
        );
        m.observe(
            t(2),
            &seen(
                2,
                1,
                ring(&[(2, RingStatus::Member), (3, RingStatus::Joining)]),
                &[],
            ),
        );
        assert_eq!(m.violations().len(), 1, "{:#?}", m.violations());
        assert!(m.violations()[0]
            .message
            .contains("without knowing any other member"));
        // Promoted after syncing with a member: fine.
        m.observe(t(3), &seen(4, 1, ring(&[(4, RingStatus::Joining)]), &[]));
        m.observe(
            t(4),
            &seen(
                4,
                1,
                ring(&[(4, RingStatus::Member), (0, RingStatus::Member)]),
                &[],
            ),
        );
        // The founder promotes itself alone.
        let mut founder = NodeObservation {
            slot: 0,
            epoch: 1,
            id: id(0),
            process: ProcessState::Up,
            ring: ring(&[(0, RingStatus::Joining)]),
            generations: BTreeMap::new(),
            left_reported: false,
            founder: true,
        };
        m.observe(t(5), &Observation::Node(founder.clone()));
        founder.ring = ring(&[(0, RingStatus::Member)]);
        m.observe(t(6), &Observation::Node(founder));
        assert_eq!(m.violations().len(), 1, "{:#?}", m.violations());
        // Every member so far (n0, n2, n4) is removed: a joiner alone carries the ring on.
        for slot in [0, 2] {
            m.observe(t(7), &Observation::Removed { slot });
        }
        let promote = |m: &mut SafetyMonitor, slot: usize| {
            let me = slot as u64;
            m.observe(
                t(8),
                &seen(slot, 1, ring(&[(me, RingStatus::Joining)]), &[]),
            );
            m.observe(t(9), &seen(slot, 1, ring(&[(me, RingStatus::Member)]), &[]));
        };
        promote(&mut m, 5);
        assert_eq!(m.violations().len(), 2, "n4 remains: {:#?}", m.violations());
        m.observe(t(10), &Observation::Removed { slot: 4 });
        m.observe(t(10), &Observation::Removed { slot: 5 });
        promote(&mut m, 6);
        assert_eq!(m.violations().len(), 2, "{:#?}", m.violations());
    }

    /// Seed 493: the last member handed its partitions to three joiners and signed `left`; the
    /// joiners became members a few milliseconds before the leave reported itself complete.
    /// Until the last member signed `left`, a joiner that promotes itself without it is caught.
    #[test]
    fn joiners_may_take_the_ring_over_from_a_last_member_that_signed_left() {
        let founder = |ring: RingState| {
            Observation::Node(NodeObservation {
                slot: 0,
                epoch: 1,
                id: id(0),
                process: ProcessState::Leaving,
                ring,
                generations: BTreeMap::new(),
                left_reported: false,
                founder: true,
            })
        };
        let gone = ring(&[(0, RingStatus::Left), (1, RingStatus::Member)]);
        for signed in [false, true] {
            let mut m = SafetyMonitor::new();
            m.observe(t(1), &founder(ring(&[(0, RingStatus::Member)])));
            let joining = ring(&[(0, RingStatus::Leaving), (1, RingStatus::Joining)]);
            m.observe(t(2), &seen(1, 1, joining, &[]));
            if signed {
                // n0 signs `left` after its handoff to n1.
                let r = ring(&[(0, RingStatus::Left), (1, RingStatus::Joining)]);
                m.observe(t(3), &founder(r));
            }
            m.observe(t(4), &seen(1, 1, gone.clone(), &[]));
            let caught = usize::from(!signed);
            assert_eq!(m.violations().len(), caught, "{:#?}", m.violations());
        }
        // Two joiners take the ring over at once, each still seeing the other joining; a third
        // that n0 did not hand its partitions to promotes itself while they are members, still
        // seeing them joining: caught.
        let mut m = SafetyMonitor::new();
        m.observe(t(1), &founder(ring(&[(0, RingStatus::Member)])));
        for me in [1, 2, 3] {
            let joining = ring(&[(0, RingStatus::Leaving), (me, RingStatus::Joining)]);
            m.observe(t(2), &seen(me as usize, 1, joining, &[]));
        }
        let r = ring(&[
            (0, RingStatus::Left),
            (1, RingStatus::Joining),
            (2, RingStatus::Joining),
        ]);
        m.observe(t(3), &founder(r));
        for (me, other) in [(1, 2), (2, 1)] {
            let r = ring(&[
                (0, RingStatus::Left),
                (me, RingStatus::Member),
                (other, RingStatus::Joining),
            ]);
            m.observe(t(4), &seen(me as usize, 1, r, &[]));
        }
        assert!(m.violations().is_empty(), "{:#?}", m.violations());
        let r = ring(&[
            (0, RingStatus::Left),
            (1, RingStatus::Joining),
            (2, RingStatus::Joining),
            (3, RingStatus::Member),
        ]);
        m.observe(t(5), &seen(3, 1, r, &[]));
        assert_eq!(m.violations().len(), 1, "{:#?}", m.violations());
    }

    /// Seed 1094 of 10 minutes: every member was leaving, and a joiner that had pulled its
    /// partitions from them (they still own them until their handoff is done) was reported.
    #[test]
    fn a_joiner_promoted_after_pulling_from_leaving_nodes_is_fine() {
        let mut m = SafetyMonitor::new();
        m.observe(
            t(1),
            &seen(
                3,
                1,
                ring(&[(3, RingStatus::Joining), (5, RingStatus::Leaving)]),
                &[],
            ),
        );
        m.observe(
            t(2),
            &seen(
                3,
                1,
                ring(&[(3, RingStatus::Member), (5, RingStatus::Leaving)]),
                &[],
            ),
        );
        assert!(m.violations().is_empty(), "{:#?}", m.violations());
        // With only joiners and departed nodes in view, it is still caught.
        m.observe(
            t(3),
            &seen(
                4,
                1,
                ring(&[(4, RingStatus::Joining), (5, RingStatus::Left)]),
                &[],
            ),
        );
        m.observe(
            t(4),
            &seen(
                4,
                1,
                ring(&[(4, RingStatus::Member), (5, RingStatus::Left)]),
                &[],
            ),
        );
        assert_eq!(m.violations().len(), 1, "{:#?}", m.violations());
    }

    #[test]
    fn a_status_moving_backwards_is_caught() {
        let mut m = SafetyMonitor::new();
        let me = (0, RingStatus::Member);
        m.observe(t(1), &seen(0, 1, ring(&[me, (1, RingStatus::Left)]), &[]));
        m.observe(t(2), &seen(0, 1, ring(&[me, (1, RingStatus::Member)]), &[]));
        assert_eq!(m.violations().len(), 1, "{:#?}", m.violations());
        let v = &m.violations()[0];
        assert_eq!((v.checker, v.at, v.observer), (CHECKER, t(2), Some(0)));
        assert!(v.message.contains("went back from left to member"), "{v}");
        // And an entry that disappears.
        m.observe(t(3), &seen(0, 1, ring(&[me]), &[]));
        assert!(m.violations()[1].message.contains("disappeared"));
    }

    /// A cancelled leave goes from `leaving` back to `member` with a newer version; the same
    /// step without a newer version is a regression.
    #[test]
    fn only_a_cancelled_leave_goes_back_to_member() {
        let mut m = SafetyMonitor::new();
        let me = (0, RingStatus::Member);
        let mut r = ring(&[me, (1, RingStatus::Leaving)]);
        m.observe(t(1), &seen(0, 1, r.clone(), &[]));
        let back = |version| RingEntry {
            status: RingStatus::Member,
            info_version: version,
            info: r.get(id(1)).unwrap().info,
        };
        // The same version: a regression.
        let mut same = ring(&[me]);
        same.merge_entry(id(1), &back(1));
        m.observe(t(2), &seen(0, 1, same, &[]));
        assert_eq!(m.violations().len(), 1, "{:#?}", m.violations());
        // A newer version: a cancelled leave.
        let mut m = SafetyMonitor::new();
        m.observe(t(1), &seen(0, 1, r.clone(), &[]));
        r.merge_entry(id(1), &back(2));
        m.observe(t(2), &seen(0, 1, r, &[]));
        assert!(m.violations().is_empty(), "{:#?}", m.violations());
    }

    #[test]
    fn a_generation_drop_is_caught() {
        let mut m = SafetyMonitor::new();
        m.observe(t(0), &started(3, 1, 4));
        m.observe(t(1), &started(3, 2, 4));
        assert!(m.violations()[0]
            .message
            .contains("generation 4, not newer than its last start's 4"));
        let me = (0, RingStatus::Member);
        m.observe(t(2), &seen(0, 1, ring(&[me]), &[(1, 5)]));
        m.observe(t(3), &seen(0, 1, ring(&[me]), &[(1, 3)]));
        assert_eq!(m.violations().len(), 2);
        assert!(m.violations()[1]
            .message
            .contains("SWIM generation of 0000000000000101 dropped from 5 to 3"));
    }

    #[test]
    fn a_node_that_left_and_serves_again_is_caught() {
        let mut m = SafetyMonitor::new();
        let mut obs = NodeObservation {
            slot: 2,
            epoch: 1,
            id: id(2),
            process: ProcessState::Leaving,
            ring: ring(&[(2, RingStatus::Left)]),
            generations: BTreeMap::new(),
            left_reported: true,
            founder: false,
        };
        m.observe(t(1), &Observation::Node(obs.clone()));
        assert!(m.violations().is_empty());
        obs.process = ProcessState::Up;
        m.observe(t(2), &Observation::Node(obs));
        m.observe(t(3), &started(2, 2, 2));
        let msgs: Vec<&str> = m.violations().iter().map(|v| v.message.as_str()).collect();
        assert_eq!(msgs.len(), 2, "{msgs:?}");
        assert!(msgs[0].contains("is serving as an up node"));
        assert!(msgs[1].contains("completed its leave but started again"));
    }

    #[test]
    fn two_processes_with_one_id_are_caught() {
        let mut m = SafetyMonitor::new();
        m.observe(t(0), &started(1, 1, 1));
        // Slot 4 runs a copy of n1's data directory: same id.
        m.observe(
            t(1),
            &Observation::Started {
                slot: 4,
                id: id(1),
                epoch: 1,
                generation: 7,
                addr: SocketAddr::from(([10, 0, 0, 9], 7000)),
                initial: None,
            },
        );
        assert_eq!(m.violations().len(), 1);
        assert_eq!(m.violations()[0].subject, Some(1));
        assert!(m.violations()[0]
            .message
            .contains("n4 started as node 0000000000000101, which n1 is already running as"));
        // Once n1 is gone, n4 may run as that id.
        m.observe(
            t(2),
            &Observation::Stopped {
                slot: 1,
                id: id(1),
                epoch: 1,
            },
        );
        m.observe(
            t(3),
            &Observation::Stopped {
                slot: 4,
                id: id(1),
                epoch: 1,
            },
        );
        m.observe(
            t(4),
            &Observation::Started {
                slot: 4,
                id: id(1),
                epoch: 2,
                generation: 8,
                addr: SocketAddr::from(([10, 0, 0, 9], 7000)),
                initial: None,
            },
        );
        assert_eq!(m.violations().len(), 1);
    }
}
