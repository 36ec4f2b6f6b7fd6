//! Placement plans for operators: how evenly a ring spreads replicas, and how much a join or
//! leave would move.
//!
//! A plan is computed for *sample* members, not a live cluster: sample member `i` has the node id
//! [`sample_member_id`]`(i)`, the first 8 bytes (little-endian) of the keyed BLAKE3 hash of `i` as
//! a little-endian `u32`. A plan of M members uses samples `0..M`; `add K` appends samples
//! `M..M+K`; `remove K` removes samples `M-K..M`. Real node ids are random too, so the numbers
//! are typical of a real cluster of that shape — but not exact for it: to plan a real cluster,
//! build both [`Ring`]s from its ids and call [`Placement::of`] and [`moved_replicas`].
//!
//! Pure: no I/O, no clock, no randomness.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::partition::{first_u64, PartitionId, DEFAULT_PARTITIONS};
use super::placement::{Ring, RingConfig, RingError, DEFAULT_VNODES, MEMBERS_MAX};
use crate::id::NodeId;

/// The default replication factor N of a plan.
pub const DEFAULT_REPLICAS: u32 = 3;

/// Domain-separation key for sample member ids.
const SAMPLE_ID_KEY: &[u8; 32] = b"chorus/ring/v1/plan-sample-node.";

/// The node id of sample member `index` (see the module docs).
pub fn sample_member_id(index: u32) -> NodeId {
    NodeId::new(first_u64(blake3::keyed_hash(
        SAMPLE_ID_KEY,
        &index.to_le_bytes(),
    )))
}

/// A membership change to plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Add this many members.
    Add(u32),
    /// Remove this many members.
    Remove(u32),
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Add(k) => write!(f, "add {k}"),
            Change::Remove(k) => write!(f, "remove {k}"),
        }
    }
}

/// What to plan: M sample members, an optional change, and the ring's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanRequest {
    /// How many members the ring has now (M).
    pub members: u32,
    /// The change to evaluate, if any.
    pub change: Option<Change>,
    /// Replicas per partition (N).
    pub replicas: u32,
    /// Partitions (Q).
    pub partitions: u32,
    /// Tokens per member (V).
    pub vnodes: u32,
}

impl PlanRequest {
    /// A plan for `members` members with no change and default N, Q and V.
    pub fn new(members: u32) -> Self {
        PlanRequest {
            members,
            change: None,
            replicas: DEFAULT_REPLICAS,
            partitions: DEFAULT_PARTITIONS,
            vnodes: DEFAULT_VNODES,
        }
    }

    /// The same plan, evaluating `change`.
    pub fn with_change(self, change: Change) -> Self {
        PlanRequest {
            change: Some(change),
            ..self
        }
    }
}

/// Why a plan could not be computed. Planning has no side effects.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    /// M is 0.
    #[error("the member count must be at least 1")]
    NoMembers,
    /// N is 0.
    #[error("the replica count n must be at least 1")]
    NoReplicas,
    /// `add 0` or `remove 0`.
    #[error("`{change}` changes nothing: the count must be at least 1")]
    EmptyChange {
        /// The change.
        change: Change,
    },
    /// The change removes every member, or more.
    #[error("cannot remove {remove} of {members} members: at least one must remain")]
    RemoveTooMany {
        /// How many members the plan would remove.
        remove: u32,
        /// How many there are.
        members: u32,
    },
    /// M, or M plus the added members, is above [`MEMBERS_MAX`].
    #[error("{members} members is too many: at most {MEMBERS_MAX} are supported")]
    TooManyMembers {
        /// The requested member count.
        members: u64,
    },
    /// Q or V is out of range, or the ring would be too large.
    #[error(transparent)]
    Ring(#[from] RingError),
}

/// One member's share of a placement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemberLoad {
    /// The member; in JSON, its 16 hex digits (as shown everywhere else), since JSON tools
    /// round integers above 2^53.
    #[serde(with = "hex_id")]
    pub id: NodeId,
    /// How many partition replicas it holds.
    pub count: u64,
    /// Its fraction of all partition replicas.
    pub share: f64,
}

/// Node ids as hex strings in reports.
mod hex_id {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    use crate::id::NodeId;

    pub(super) fn serialize<S: Serializer>(id: &NodeId, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(id)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NodeId, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(D::Error::custom)
    }
}

/// How a ring spreads partition replicas over its members.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    /// Per member, sorted by id.
    pub members: Vec<MemberLoad>,
    /// Replicas per partition actually placed: N, or the member count if smaller.
    pub replicas: u32,
    /// All partition replicas: partitions × replicas.
    pub total: u64,
    /// The mean count per member.
    pub mean: f64,
    /// The smallest count.
    pub min: u64,
    /// The largest count.
    pub max: u64,
    /// `max / mean`: 1.0 is perfect balance.
    pub max_over_mean: f64,
}

impl Placement {
    /// The placement of `ring` with `n` replicas per partition.
    pub fn of(ring: &Ring, n: usize) -> Placement {
        let counts = ring.replica_counts(n);
        let total: u64 = counts.values().sum();
        let mean = total as f64 / counts.len() as f64;
        let min = counts.values().copied().min().unwrap_or(0);
        let max = counts.values().copied().max().unwrap_or(0);
        Placement {
            members: counts
                .into_iter()
                .map(|(id, count)| MemberLoad {
                    id,
                    count,
                    share: count as f64 / total as f64,
                })
                .collect(),
            // n.min(members) <= MEMBERS_MAX, so it fits.
            replicas: n.min(ring.member_count()) as u32,
            total,
            mean,
            min,
            max,
            max_over_mean: max as f64 / mean,
        }
    }
}

/// How many (partition, replica) assignments of `new` are not in `old`, with `n` replicas per
/// partition: the replicas that must be copied to a new owner. Compares partitions that exist in
/// both rings (they are the same when the configurations match).
pub fn moved_replicas(old: &Ring, new: &Ring, n: usize) -> u64 {
    new.partition_ids()
        .filter(|&p| old.has_partition(p))
        .map(|p| {
            let mut before = old.preference_list(p, n);
            before.sort_unstable();
            new.walk(p)
                .take(n)
                .filter(|id| before.binary_search(id).is_err())
                .count() as u64
        })
        .sum()
}

/// The effect of a change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChangeReport {
    /// The change.
    pub change: Change,
    /// The members added, sorted.
    pub added: Vec<NodeId>,
    /// The members removed, sorted.
    pub removed: Vec<NodeId>,
    /// The placement after the change (it lists the members after the change).
    pub after: Placement,
    /// Assignments of the new placement that the old one did not have.
    pub moved_replicas: u64,
    /// `moved_replicas` over all assignments of the new placement.
    pub moved_fraction: f64,
    /// The smallest possible `moved_fraction` for a perfectly balanced placement.
    pub ideal_moved_fraction: f64,
}

/// The result of a plan; serialises to JSON for tools and renders as a table for people.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanReport {
    /// Partitions (Q).
    pub partitions: u32,
    /// Tokens per member (V).
    pub vnodes: u32,
    /// Replicas per partition requested (N).
    pub replicas: u32,
    /// The most loaded member's replica count over the mean, for the current M members
    /// (the same as `before.max_over_mean`; the balance after a change is in `change.after`).
    pub max_over_mean: f64,
    /// The fraction of the new placement's replicas a change moves (`change.moved_fraction`),
    /// or 0 when no change was asked for.
    pub moved_fraction: f64,
    /// The placement of the M sample members.
    pub before: Placement,
    /// The effect of the change, if one was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<ChangeReport>,
}

/// Computes the plan for `request` (see the module docs for the sample members).
pub fn plan(request: &PlanRequest) -> Result<PlanReport, PlanError> {
    let m = request.members;
    if m == 0 {
        return Err(PlanError::NoMembers);
    }
    if request.replicas == 0 {
        return Err(PlanError::NoReplicas);
    }
    let after_count = match request.change {
        None => u64::from(m),
        Some(change @ (Change::Add(0) | Change::Remove(0))) => {
            return Err(PlanError::EmptyChange { change })
        }
        Some(Change::Add(k)) => u64::from(m) + u64::from(k),
        Some(Change::Remove(k)) if k >= m => {
            return Err(PlanError::RemoveTooMany {
                remove: k,
                members: m,
            })
        }
        Some(Change::Remove(k)) => u64::from(m - k),
    };
    let largest = after_count.max(u64::from(m));
    if largest > MEMBERS_MAX as u64 {
        return Err(PlanError::TooManyMembers { members: largest });
    }
    let config = RingConfig::new(request.partitions, request.vnodes)?;
    let n = request.replicas as usize;

    let ids: Vec<NodeId> = (0..m).map(sample_member_id).collect();
    let old = Ring::new(&ids, config)?;
    let before = Placement::of(&old, n);

    let change = match request.change {
        None => None,
        Some(change) => {
            let (added, removed): (Vec<NodeId>, Vec<NodeId>) = match change {
                Change::Add(k) => ((m..m + k).map(sample_member_id).collect(), Vec::new()),
                Change::Remove(k) => (Vec::new(), ids[(m - k) as usize..].to_vec()),
            };
            let new_ids = ids.iter().filter(|id| !removed.contains(id)).chain(&added);
            let new = Ring::new(new_ids, config)?;
            let after = Placement::of(&new, n);
            let moved = moved_replicas(&old, &new, n);
            let ideal = ideal_moved_fraction(u64::from(m), after_count, n as u64);
            let mut added = added;
            let mut removed = removed;
            added.sort();
            removed.sort();
            Some(ChangeReport {
                change,
                added,
                removed,
                moved_fraction: moved as f64 / after.total as f64,
                moved_replicas: moved,
                ideal_moved_fraction: ideal,
                after,
            })
        }
    };
    Ok(PlanReport {
        partitions: config.partitions(),
        vnodes: config.vnodes(),
        replicas: request.replicas,
        max_over_mean: before.max_over_mean,
        moved_fraction: change.as_ref().map_or(0.0, |c| c.moved_fraction),
        before,
        change,
    })
}

/// The least fraction of the new assignments that must move when `m` members become `m2`
/// (by adding or removing members) with `n` replicas per partition, if both placements were
/// perfectly balanced. Per partition the ring holds `min(n, members)` replicas.
fn ideal_moved_fraction(m: u64, m2: u64, n: u64) -> f64 {
    let (r, r2) = (n.min(m) as f64, n.min(m2) as f64);
    let (m, m2) = (m as f64, m2 as f64);
    let moved = if m2 > m {
        // The new members must receive their fair share; at most all old replicas stay.
        ((m2 - m) * r2 / m2).max(r2 - r)
    } else {
        // The remaining members keep at most what they held.
        (r2 - m2 * r / m).max(0.0)
    };
    moved / r2
}

impl PlanReport {
    /// A human-readable rendering: one table per placement, then the movement.
    pub fn render_text(&self) -> String {
        self.to_string()
    }
}

fn write_placement(f: &mut fmt::Formatter<'_>, placement: &Placement) -> fmt::Result {
    writeln!(
        f,
        "{:<16}  {:>8}  {:>6}  {:>7}",
        "member", "replicas", "share", "vs mean"
    )?;
    for load in &placement.members {
        writeln!(
            f,
            "{:<16}  {:>8}  {:>5.1}%  {:>7.2}",
            load.id.to_string(),
            load.count,
            load.share * 100.0,
            load.count as f64 / placement.mean
        )?;
    }
    writeln!(
        f,
        "mean {:.1}, min {}, max {}, max/mean {:.3}",
        placement.mean, placement.min, placement.max, placement.max_over_mean
    )
}

impl fmt::Display for PlanReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} partitions, {} vnodes per member, n = {}",
            self.partitions, self.vnodes, self.replicas
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "Current placement, {} members:",
            self.before.members.len()
        )?;
        write_placement(f, &self.before)?;
        if let Some(change) = &self.change {
            writeln!(f)?;
            writeln!(
                f,
                "After `{}`, {} members:",
                change.change,
                change.after.members.len()
            )?;
            write_placement(f, &change.after)?;
            writeln!(f)?;
            writeln!(
                f,
                "moved: {} of {} replicas ({:.1}%; ideal {:.1}%)",
                change.moved_replicas,
                change.after.total,
                change.moved_fraction * 100.0,
                change.ideal_moved_fraction * 100.0
            )?;
        }
        Ok(())
    }
}

/// One partition replica a change gives to a new owner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    /// The partition.
    pub partition: u16,
    /// Its new owner.
    pub to: NodeId,
    /// Its owners before the change (any of them can hand it over).
    pub from: Vec<NodeId>,
    /// Bytes of keys and states the partition holds, as its largest current copy reports
    /// (`None`: no current owner reported a size).
    pub bytes: Option<u64>,
}

/// What a change to a live cluster's ring would move: every partition replica that gets a new
/// owner, and the bytes that go with it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LivePlan {
    /// Members before the change, sorted.
    pub before: Vec<NodeId>,
    /// Members after it, sorted.
    pub after: Vec<NodeId>,
    /// Partition replicas after the change (partitions × replicas).
    pub replicas_total: u64,
    /// Every replica that moves, by partition then new owner.
    pub moves: Vec<Move>,
    /// Bytes the moves copy (partitions without a reported size count as 0).
    pub bytes_moved: u64,
    /// Moves whose partition size no current owner reported.
    pub unsized_moves: u64,
}

impl LivePlan {
    /// Compares the placements of `old` and `new` with `n` replicas; `sizes` has, per
    /// partition, the byte sizes its current owners reported.
    pub fn of(old: &Ring, new: &Ring, n: usize, sizes: &BTreeMap<PartitionId, u64>) -> LivePlan {
        let mut moves = Vec::new();
        for p in new.partition_ids().filter(|&p| old.has_partition(p)) {
            let before = old.preference_list(p, n);
            for to in new.preference_list(p, n) {
                if !before.contains(&to) {
                    moves.push(Move {
                        partition: p.get(),
                        to,
                        from: before.clone(),
                        bytes: sizes.get(&p).copied(),
                    });
                }
            }
        }
        let ids = |r: &Ring| {
            let mut v: Vec<NodeId> = r.members().iter().map(|m| m.id).collect();
            v.sort_unstable();
            v
        };
        LivePlan {
            before: ids(old),
            after: ids(new),
            replicas_total: new.partition_ids().len() as u64 * n.min(new.member_count()) as u64,
            bytes_moved: moves.iter().filter_map(|m| m.bytes).sum(),
            unsized_moves: moves.iter().filter(|m| m.bytes.is_none()).count() as u64,
            moves,
        }
    }

    /// Moves per new owner, sorted by owner.
    pub fn by_target(&self) -> BTreeMap<NodeId, (u64, u64)> {
        let mut out: BTreeMap<NodeId, (u64, u64)> = BTreeMap::new();
        for m in &self.moves {
            let e = out.entry(m.to).or_default();
            e.0 += 1;
            e.1 += m.bytes.unwrap_or(0);
        }
        out
    }
}

impl fmt::Display for LivePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let moved = self.moves.len() as u64;
        writeln!(
            f,
            "members: {} before, {} after; {moved} of {} partition replicas move ({:.1}%), {} bytes",
            self.before.len(),
            self.after.len(),
            self.replicas_total,
            100.0 * moved as f64 / self.replicas_total.max(1) as f64,
            self.bytes_moved
        )?;
        if self.unsized_moves > 0 {
            writeln!(
                f,
                "({} moves of partitions no current owner reported a size for count 0 bytes)",
                self.unsized_moves
            )?;
        }
        writeln!(f, "{:<18} {:>10} {:>14}", "NEW OWNER", "REPLICAS", "BYTES")?;
        for (to, (count, bytes)) in self.by_target() {
            writeln!(f, "{:<18} {count:>10} {bytes:>14}", to.to_string())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_plan_lists_each_new_replica_with_its_partition_size() {
        use crate::ring::Member;
        let ids: Vec<NodeId> = (0..3).map(sample_member_id).collect();
        let config = RingConfig::default();
        let old = Ring::new(ids.iter().copied().map(Member::new), config).unwrap();
        let joined = sample_member_id(3);
        let new = Ring::new(ids.iter().copied().chain([joined]).map(Member::new), config).unwrap();
        let sizes: BTreeMap<PartitionId, u64> = old
            .partition_ids()
            .map(|p| (p, 1000 + u64::from(p.get())))
            .collect();
        let plan = LivePlan::of(&old, &new, 3, &sizes);
        // Every replica a 4th member gains moves; nothing else does (the others held all).
        assert!(plan
            .moves
            .iter()
            .all(|m| m.to == joined && m.from.len() == 3));
        assert_eq!(plan.moves.len() as u64, moved_replicas(&old, &new, 3));
        let expected: u64 = plan
            .moves
            .iter()
            .map(|m| 1000 + u64::from(m.partition))
            .sum();
        assert_eq!(plan.bytes_moved, expected);
        assert_eq!(plan.unsized_moves, 0);
        assert_eq!(plan.replicas_total, 256 * 3);
        let share = plan.moves.len() as f64 / plan.replicas_total as f64;
        assert!((0.15..0.35).contains(&share), "about a quarter: {share}");
        assert_eq!(plan.by_target().len(), 1);
        // The reverse (it leaves) moves as many replicas back to the three.
        let back = LivePlan::of(&new, &old, 3, &BTreeMap::new());
        assert_eq!(back.moves.len(), plan.moves.len());
        assert_eq!(back.unsized_moves, back.moves.len() as u64);
        assert!(back.to_string().contains("partition replicas move"));
    }
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn sample_ids_are_pinned_and_distinct() {
        let first: Vec<u64> = (0..3).map(|i| sample_member_id(i).get()).collect();
        assert_eq!(first, PINNED_SAMPLES);
        let all: BTreeSet<NodeId> = (0..MEMBERS_MAX as u32).map(sample_member_id).collect();
        assert_eq!(all.len(), MEMBERS_MAX);
    }

    const PINNED_SAMPLES: [u64; 3] = [
        14985775118714612238,
        10774185938198644803,
        3498155526968773848,
    ];

    /// The acceptance targets at the defaults (Q = 256, V = 64, N = 3).
    #[test]
    fn acceptance_five_members() {
        let report = plan(&PlanRequest::new(5)).unwrap();
        assert_eq!(report.before.members.len(), 5);
        assert_eq!(report.before.total, 256 * 3);
        assert!((report.before.mean - 153.6).abs() < 1e-9);
        assert!(
            report.before.max_over_mean <= 1.25,
            "max/mean {}",
            report.before.max_over_mean
        );
        assert!(report.change.is_none());

        let report = plan(&PlanRequest::new(5).with_change(Change::Add(1))).unwrap();
        let change = report.change.as_ref().unwrap();
        assert_eq!(change.added, vec![sample_member_id(5)]);
        assert!(change.removed.is_empty());
        assert_eq!(change.after.members.len(), 6);
        assert!(
            change.moved_fraction <= 0.30,
            "moved {}",
            change.moved_fraction
        );
        assert!((change.ideal_moved_fraction - 1.0 / 6.0).abs() < 1e-9);
        assert!(change.after.max_over_mean <= 1.25);
        // Everything that moved, moved to the newcomer.
        let newcomer = change
            .after
            .members
            .iter()
            .find(|l| l.id == sample_member_id(5))
            .unwrap();
        assert_eq!(change.moved_replicas, newcomer.count);
    }

    #[test]
    fn removal_moves_exactly_the_leavers_replicas() {
        let report = plan(&PlanRequest::new(6).with_change(Change::Remove(2))).unwrap();
        let change = report.change.as_ref().unwrap();
        let mut expected_removed = vec![sample_member_id(4), sample_member_id(5)];
        expected_removed.sort();
        assert_eq!(change.removed, expected_removed);
        assert_eq!(change.after.members.len(), 4);
        let leavers: u64 = report
            .before
            .members
            .iter()
            .filter(|l| change.removed.contains(&l.id))
            .map(|l| l.count)
            .sum();
        assert_eq!(change.moved_replicas, leavers);
        assert!((change.ideal_moved_fraction - 2.0 / 6.0).abs() < 1e-9);
    }

    #[test]
    fn replicas_are_capped_at_the_member_count() {
        let report = plan(&PlanRequest {
            replicas: 5,
            ..PlanRequest::new(2)
        })
        .unwrap();
        assert_eq!(report.replicas, 5);
        assert_eq!(report.before.replicas, 2);
        assert_eq!(report.before.total, 512);
        assert!(report.before.members.iter().all(|l| l.count == 256));
        assert_eq!(report.before.max_over_mean, 1.0);
        // Growing from 2 to 4 members with n = 5: every partition gains both newcomers.
        let report = plan(&PlanRequest {
            replicas: 5,
            ..PlanRequest::new(2).with_change(Change::Add(2))
        })
        .unwrap();
        let change = report.change.unwrap();
        assert_eq!(change.moved_replicas, 512);
        assert!((change.moved_fraction - 0.5).abs() < 1e-9);
        assert!((change.ideal_moved_fraction - 0.5).abs() < 1e-9);
    }

    #[test]
    fn removal_below_n_moves_only_to_survivors_that_lacked_a_partition() {
        // 3 members, n = 2, remove 2: the survivor ends up with every partition, and gains
        // exactly those it did not hold before.
        let report = plan(&PlanRequest {
            replicas: 2,
            partitions: 16,
            vnodes: 4,
            ..PlanRequest::new(3).with_change(Change::Remove(2))
        })
        .unwrap();
        let change = report.change.as_ref().unwrap();
        let survivor = sample_member_id(0);
        let before = report
            .before
            .members
            .iter()
            .find(|l| l.id == survivor)
            .unwrap();
        assert_eq!(change.after.total, 16);
        assert_eq!(change.moved_replicas, 16 - before.count);
        // Ideally the survivor held 2/3 of the partitions and gains the other third.
        assert!((change.ideal_moved_fraction - 1.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn ideal_moved_fraction_cases() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(ideal_moved_fraction(5, 6, 3), 1.0 / 6.0));
        assert!(close(ideal_moved_fraction(6, 5, 3), 1.0 / 6.0));
        assert!(close(ideal_moved_fraction(1, 3, 3), 2.0 / 3.0));
        assert!(close(ideal_moved_fraction(3, 2, 3), 0.0));
        assert!(close(ideal_moved_fraction(10, 8, 1), 0.2));
    }

    #[test]
    fn invalid_requests_say_what_was_wrong() {
        let cases = [
            (PlanRequest::new(0), "member count must be at least 1"),
            (
                PlanRequest {
                    replicas: 0,
                    ..PlanRequest::new(5)
                },
                "replica count n must be at least 1",
            ),
            (
                PlanRequest::new(5).with_change(Change::Add(0)),
                "`add 0` changes nothing",
            ),
            (
                PlanRequest::new(5).with_change(Change::Remove(0)),
                "`remove 0` changes nothing",
            ),
            (
                PlanRequest::new(5).with_change(Change::Remove(5)),
                "cannot remove 5 of 5 members",
            ),
            (
                PlanRequest::new(5).with_change(Change::Remove(9)),
                "cannot remove 9 of 5 members",
            ),
            (PlanRequest::new(5000), "5000 members is too many"),
            (
                PlanRequest::new(4000).with_change(Change::Add(u32::MAX)),
                "4294971295 members is too many",
            ),
            (
                PlanRequest {
                    partitions: 0,
                    ..PlanRequest::new(5)
                },
                "partition count 0 is out of range",
            ),
            (
                PlanRequest {
                    vnodes: 100_000,
                    ..PlanRequest::new(5)
                },
                "virtual node count 100000 is out of range",
            ),
            (
                PlanRequest {
                    vnodes: TEST_VNODES_MAX,
                    ..PlanRequest::new(2000)
                },
                "tokens but at most",
            ),
        ];
        for (request, expected) in cases {
            let err = plan(&request).unwrap_err().to_string();
            assert!(err.contains(expected), "{request:?}: {err}");
        }
    }

    const TEST_VNODES_MAX: u32 = super::super::VNODES_MAX;

    #[test]
    fn json_report_shape() {
        let report = plan(&PlanRequest::new(3).with_change(Change::Add(1))).unwrap();
        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        assert_eq!(json["partitions"], 256);
        assert_eq!(json["vnodes"], 64);
        assert_eq!(json["replicas"], 3);
        assert_eq!(json["before"]["members"].as_array().unwrap().len(), 3);
        let first = &json["before"]["members"][0];
        assert_eq!(
            first["id"],
            report.before.members[0].id.to_string().as_str()
        );
        assert!(first["count"].is_u64() && first["share"].is_f64());
        assert!(json["before"]["max_over_mean"].is_f64());
        assert_eq!(json["change"]["change"]["add"], 1);
        assert!(json["change"]["moved_fraction"].is_f64());
        assert_eq!(json["moved_fraction"], json["change"]["moved_fraction"]);
        assert_eq!(json["max_over_mean"], json["before"]["max_over_mean"]);
        assert_eq!(
            json["change"]["after"]["members"].as_array().unwrap().len(),
            4
        );
        let back: PlanReport = serde_json::from_value(json).unwrap();
        assert_eq!(back, report);
        let plain = serde_json::to_value(plan(&PlanRequest::new(3)).unwrap()).unwrap();
        assert!(plain.get("change").is_none());
        assert_eq!(plain["moved_fraction"], 0.0);
    }

    #[test]
    fn text_report_is_a_table() {
        let report = plan(&PlanRequest::new(5).with_change(Change::Add(1))).unwrap();
        let text = report.render_text();
        assert_eq!(text, report.to_string());
        assert!(text.starts_with("256 partitions, 64 vnodes per member, n = 3\n"));
        assert!(text.contains("Current placement, 5 members:"));
        assert!(text.contains("After `add 1`, 6 members:"));
        assert!(text.contains("member            replicas   share  vs mean"));
        for load in report.before.members.iter() {
            let row = text
                .lines()
                .find(|l| l.starts_with(&load.id.to_string()))
                .unwrap();
            assert!(row.contains(&format!(" {} ", load.count)), "{row}");
        }
        let change = report.change.as_ref().unwrap();
        assert!(text.contains(&format!("moved: {} of 768 replicas", change.moved_replicas)));
        println!("{text}");
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config())]

        #[test]
        fn moved_replicas_are_exactly_the_changed_members_share(
            m in 1u32..10, k in 1u32..4, add: bool, n in 1u32..5,
            partitions in prop_oneof![Just(16u32), Just(64)],
            vnodes in prop_oneof![Just(4u32), Just(16)],
        ) {
            // A single member can only grow; otherwise remove between 1 and m - 1.
            let add = add || m == 1;
            let change = if add { Change::Add(k) } else { Change::Remove(1 + (k - 1) % (m - 1)) };
            let k = match change { Change::Add(k) | Change::Remove(k) => k };
            let report = plan(&PlanRequest {
                members: m, change: Some(change), replicas: n, partitions, vnodes,
            }).unwrap();
            let c = report.change.as_ref().unwrap();
            let sum = |p: &Placement, ids: &[NodeId]| -> u64 {
                p.members.iter().filter(|l| ids.contains(&l.id)).map(|l| l.count).sum()
            };
            prop_assert_eq!(c.after.total, u64::from(partitions * n.min(c.after.members.len() as u32)));
            if add {
                prop_assert_eq!(c.moved_replicas, sum(&c.after, &c.added));
            } else if m - k >= n {
                // Each lost replica is replaced by exactly one new one.
                prop_assert_eq!(c.moved_replicas, sum(&report.before, &c.removed));
            } else {
                // Too few survivors to fill the lists: some lost replicas are not replaced.
                prop_assert!(c.moved_replicas <= sum(&report.before, &c.removed));
            }
            prop_assert!(c.moved_fraction >= 0.0 && c.moved_fraction <= 1.0);
            let shares: f64 = c.after.members.iter().map(|l| l.share).sum();
            prop_assert!((shares - 1.0).abs() < 1e-9);
        }
    }
}
