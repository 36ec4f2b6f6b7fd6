//! Operation ids for retry-safe updates, and the counter that uses them to count an operation
//! once however many coordinators applied it.
//!
//! A client that retries a timed-out increment cannot know whether the first attempt landed. So
//! every update carries an operation id, and a key's state remembers the ids it applied
//! recently: an [`OpLog`]. A coordinator whose copy already holds an id does nothing; two
//! coordinators that both applied one id (the retry reached a replica that had not yet received
//! the first attempt) are reconciled when their states meet:
//!
//! - Each application is recorded under the id, by the actor that performed it, with the
//!   actor's own sequence number. Records merge by union.
//! - Of several applications of one id, the one by the smallest actor is *canonical*; the others
//!   are *duplicates*. A [`Counter`]'s entries hold every application; its value leaves the
//!   duplicates out, so it needs the records of an operation applied twice for as long as the
//!   counter lives: those are never forgotten (below).
//! - Records are forgotten per actor, oldest first, after a time window or beyond a count
//!   ([`OpLogPolicy`]): each actor keeps a *floor*, which only it raises, and records at or
//!   below it are dropped by every merge. An id is therefore recognised while its first
//!   application is among the records its actor still keeps: by default for 10 minutes and the
//!   last 128 updates by that actor to that key. A retry later than that may be applied again.
//!   Records of an operation applied by two actors are never forgotten (they are *pinned*), so
//!   the operation keeps counting once; such operations are as rare as retries that reach two
//!   coordinators before the first attempt reached the second.
//! - Memory: an actor is a process, and a process that stops leaves its records in the keys it
//!   updated (at most 128 per key, about 50 bytes each) for good: only an actor forgets its
//!   own. A node restarted very often grows its hot counters by that much per restart;
//!   compacting departed actors needs a cluster-wide agreement that they are gone, which this
//!   version does not have.
//!
//! Times are the applying actor's own clock (milliseconds, as the core's `now`); they are only
//! ever compared with that same actor's times, so clocks of different nodes never meet.
//!
//! This module does no I/O and reads no clock: the caller passes `now`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Crdt, CrdtError, PNCounter};
use crate::id::NodeId;

/// Longest operation id, in bytes.
pub const OP_ID_BYTES_MAX: usize = 128;

/// Most records one actor may hold in a decoded state (the policy keeps far fewer).
const RECORDS_PER_ACTOR_DECODE_MAX: usize = 4096;

/// How long operation ids are remembered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpLogPolicy {
    /// Records older than this (by their actor's clock) are forgotten, in milliseconds.
    pub window_ms: u64,
    /// Records an actor keeps per key at most; older ones are forgotten.
    pub per_actor_max: usize,
}

impl Default for OpLogPolicy {
    fn default() -> Self {
        OpLogPolicy {
            window_ms: 10 * 60 * 1000,
            per_actor_max: 128,
        }
    }
}

/// One application of an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Application {
    /// The applying actor's sequence number for this key (from 1).
    pub seq: u64,
    /// The applying actor's clock, in milliseconds.
    pub at_ms: u64,
    /// What it added (0 for set operations).
    pub amount: i64,
    /// Kept below its actor's floor: when it was forgotten, its operation had been applied by
    /// another actor too, and the value needs the record to count the operation once.
    pub pinned: bool,
}

/// What an actor has done to one key: its newest sequence number and its floor (records at or
/// below the floor are forgotten).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorMark {
    /// Newest sequence number.
    pub seq: u64,
    /// Records with `seq <= floor` are forgotten.
    pub floor: u64,
}

/// An operation id as a key remembers it: the first 128 bits of its BLAKE3 hash (so records
/// have a fixed size; two ids colliding is as likely as guessing a random 128-bit value).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OpKey(u64, u64);

impl OpKey {
    /// The key of operation id `id`.
    pub fn of(id: &str) -> OpKey {
        let h = blake3::hash(id.as_bytes());
        let b = h.as_bytes();
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(w)
        };
        OpKey(word(0), word(8))
    }
}

/// One application of one operation by one actor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The operation.
    pub op: OpKey,
    /// The actor that applied it.
    pub actor: NodeId,
    /// What the application was.
    pub app: Application,
}

/// The recently applied operation ids of one key (see the module documentation): records
/// sorted by operation then actor, one per pair, so a state clones and encodes as one flat
/// array.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "OpLogWire")]
pub struct OpLog {
    marks: BTreeMap<NodeId, ActorMark>,
    records: Vec<Record>,
}

#[derive(Deserialize)]
struct OpLogWire {
    marks: BTreeMap<NodeId, ActorMark>,
    records: Vec<Record>,
}

/// Why an operation id was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpIdError {
    /// Empty, too long, or with characters outside printable ASCII.
    #[error("an operation id is 1 to {OP_ID_BYTES_MAX} printable ASCII characters")]
    Malformed,
}

/// Checks that `id` is a valid operation id.
pub fn check_op_id(id: &str) -> Result<(), OpIdError> {
    let ok =
        !id.is_empty() && id.len() <= OP_ID_BYTES_MAX && id.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(OpIdError::Malformed)
    }
}

impl TryFrom<OpLogWire> for OpLog {
    type Error = String;

    fn try_from(w: OpLogWire) -> Result<Self, Self::Error> {
        if w.marks.values().any(|m| m.floor > m.seq) {
            return Err("a floor above its sequence number".into());
        }
        let mut per_actor: BTreeMap<NodeId, usize> = BTreeMap::new();
        for pair in w.records.windows(2) {
            if (pair[0].op, pair[0].actor) >= (pair[1].op, pair[1].actor) {
                return Err("records out of order or repeated".into());
            }
        }
        for r in &w.records {
            let mark = w.marks.get(&r.actor).copied().unwrap_or_default();
            if (r.app.seq <= mark.floor && !r.app.pinned) || r.app.seq > mark.seq {
                return Err(format!(
                    "record {} of actor {} is outside its marks",
                    r.app.seq, r.actor
                ));
            }
            let n = per_actor.entry(r.actor).or_default();
            *n += 1;
            if *n > RECORDS_PER_ACTOR_DECODE_MAX {
                return Err(format!("actor {} holds too many records", r.actor));
            }
        }
        Ok(OpLog {
            marks: w.marks,
            records: w.records,
        })
    }
}

impl OpLog {
    /// The records of operation `op` (the first is canonical).
    fn group(&self, op: OpKey) -> &[Record] {
        let start = self.records.partition_point(|r| r.op < op);
        let end = start + self.records[start..].partition_point(|r| r.op == op);
        &self.records[start..end]
    }

    /// The records grouped by operation.
    fn groups(&self) -> impl Iterator<Item = &[Record]> + '_ {
        self.records.chunk_by(|a, b| a.op == b.op)
    }

    /// The applications of `id` still remembered, by actor (the first is canonical).
    pub fn applications(&self, id: &str) -> impl Iterator<Item = (NodeId, Application)> + '_ {
        self.group(OpKey::of(id)).iter().map(|r| (r.actor, r.app))
    }

    /// Whether `id` was applied (and is still remembered).
    pub fn contains(&self, id: &str) -> bool {
        !self.group(OpKey::of(id)).is_empty()
    }

    /// Operation ids remembered.
    pub fn len(&self) -> usize {
        self.groups().count()
    }

    /// Whether no operation id is remembered.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Records that `actor` applied set update `id` at `now_ms` (the caller checked
    /// [`OpLog::contains`] first), then forgets `actor`'s records beyond `policy`.
    pub fn record_set_update(&mut self, actor: NodeId, id: &str, now_ms: u64, policy: OpLogPolicy) {
        self.record(actor, id, 0, now_ms, policy);
    }

    /// Records that `actor` applied `id` with `amount` at `now_ms`, then forgets `actor`'s
    /// records beyond `policy`. The caller checked [`OpLog::contains`] first.
    fn record(&mut self, actor: NodeId, id: &str, amount: i64, now_ms: u64, policy: OpLogPolicy) {
        let mark = self.marks.entry(actor).or_default();
        mark.seq += 1;
        let record = Record {
            op: OpKey::of(id),
            actor,
            app: Application {
                seq: mark.seq,
                at_ms: now_ms,
                amount,
                pinned: false,
            },
        };
        match self
            .records
            .binary_search_by(|r| (r.op, r.actor).cmp(&(record.op, actor)))
        {
            Ok(i) => self.records[i] = record,
            Err(i) => self.records.insert(i, record),
        }
        self.forget(actor, now_ms, policy);
    }

    /// Raises `actor`'s floor past its records that are too old or too many. Only an actor
    /// raises its own floor, together with the pins it decides: so any state that knows a floor
    /// also holds every record that floor pinned, and merging stays a join.
    fn forget(&mut self, actor: NodeId, now_ms: u64, policy: OpLogPolicy) {
        let mine = self.seqs_of(actor);
        let excess = mine.len().saturating_sub(policy.per_actor_max);
        let mut floor = None;
        for (i, &(seq, at)) in mine.iter().enumerate() {
            if i < excess || at.saturating_add(policy.window_ms) < now_ms {
                floor = Some(seq);
            } else {
                break;
            }
        }
        if let Some(f) = floor {
            self.raise_floor(actor, f);
        }
    }

    /// `actor`'s remembered records as (seq, time), oldest first.
    fn seqs_of(&self, actor: NodeId) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = self
            .records
            .iter()
            .filter(|r| r.actor == actor)
            .map(|r| (r.app.seq, r.app.at_ms))
            .collect();
        v.sort_unstable();
        v
    }

    /// Forgets `actor`'s records up to `floor`, except those of an operation applied by more
    /// than one actor: they are pinned instead, for good (the value needs them to count the
    /// operation once).
    fn raise_floor(&mut self, actor: NodeId, floor: u64) {
        let mut start = 0;
        while start < self.records.len() {
            let op = self.records[start].op;
            let len = self.records[start..].partition_point(|r| r.op == op);
            if len > 1 {
                for r in &mut self.records[start..start + len] {
                    if r.actor == actor && r.app.seq <= floor {
                        r.app.pinned = true;
                    }
                }
            }
            start += len;
        }
        if let Some(mark) = self.marks.get_mut(&actor) {
            mark.floor = mark.floor.max(floor);
        }
        self.drop_forgotten();
    }

    fn drop_forgotten(&mut self) {
        let marks = &self.marks;
        self.records
            .retain(|r| r.app.pinned || r.app.seq > marks.get(&r.actor).map_or(0, |m| m.floor));
    }

    /// The sum of every duplicate (every application but the canonical one of each id).
    fn duplicates(&self) -> i128 {
        self.groups()
            .flat_map(|g| g.iter().skip(1))
            .map(|r| i128::from(r.app.amount))
            .sum()
    }
}

impl Crdt for OpLog {
    fn merge(&mut self, other: &Self) {
        for (actor, m) in &other.marks {
            let mine = self.marks.entry(*actor).or_default();
            mine.seq = mine.seq.max(m.seq);
            mine.floor = mine.floor.max(m.floor);
        }
        if !other.records.is_empty() {
            let mine = std::mem::take(&mut self.records);
            let mut out = Vec::with_capacity(mine.len() + other.records.len());
            let (mut i, mut j) = (0, 0);
            while i < mine.len() || j < other.records.len() {
                let (a, b) = (mine.get(i), other.records.get(j));
                match (a, b) {
                    (Some(x), Some(y)) => match (x.op, x.actor).cmp(&(y.op, y.actor)) {
                        std::cmp::Ordering::Less => {
                            out.push(*x);
                            i += 1;
                        }
                        std::cmp::Ordering::Greater => {
                            out.push(*y);
                            j += 1;
                        }
                        // One actor may apply an id again once its record was forgotten
                        // (beyond the window): the later application is the one remembered.
                        std::cmp::Ordering::Equal => {
                            let mut r = if y.app.seq > x.app.seq { *y } else { *x };
                            if x.app.seq == y.app.seq {
                                r.app.pinned = x.app.pinned || y.app.pinned;
                            }
                            out.push(r);
                            i += 1;
                            j += 1;
                        }
                    },
                    (Some(x), None) => {
                        out.push(*x);
                        i += 1;
                    }
                    (None, Some(y)) => {
                        out.push(*y);
                        j += 1;
                    }
                    (None, None) => break,
                }
            }
            self.records = out;
        }
        self.drop_forgotten();
    }

    fn leq(&self, other: &Self) -> bool {
        let mut merged = other.clone();
        merged.merge(self);
        &merged == other
    }
}

/// What an update did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// It was applied now.
    Now,
    /// Its operation id was applied before: nothing changed.
    Replayed,
}

/// A counter whose updates carry operation ids (see the module documentation): a
/// [`PNCounter`] with one entry per actor, and the [`OpLog`] of its recent updates. It serves
/// both `gcounter` keys (the API only lets amounts be positive) and `pncounter` keys.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    entries: PNCounter,
    log: OpLog,
}

impl Counter {
    /// The zero counter.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value: every update once, duplicates left out.
    pub fn value(&self) -> i128 {
        self.entries.value().saturating_sub(self.log.duplicates())
    }

    /// The operation log.
    pub fn log(&self) -> &OpLog {
        &self.log
    }

    /// Adds `amount` on behalf of `actor` under operation `id`, unless `id` was applied before.
    ///
    /// # Errors
    ///
    /// [`CrdtError::CounterOverflow`] when `actor`'s entry would overflow; nothing changed.
    pub fn apply(
        &mut self,
        actor: NodeId,
        id: &str,
        amount: i64,
        now_ms: u64,
        policy: OpLogPolicy,
    ) -> Result<Applied, CrdtError> {
        if self.log.contains(id) {
            return Ok(Applied::Replayed);
        }
        self.add(actor, amount)?;
        self.log.record(actor, id, amount, now_ms, policy);
        Ok(Applied::Now)
    }

    fn add(&mut self, actor: NodeId, amount: i64) -> Result<(), CrdtError> {
        if amount >= 0 {
            self.entries.increment(actor, amount.unsigned_abs())
        } else {
            self.entries.decrement(actor, amount.unsigned_abs())
        }
    }
}

impl Crdt for Counter {
    fn merge(&mut self, other: &Self) {
        self.entries.merge(&other.entries);
        self.log.merge(&other.log);
    }

    fn leq(&self, other: &Self) -> bool {
        self.entries.leq(&other.entries) && self.log.leq(&other.log)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use crate::crdt::testing::{check_merge_laws, check_round_trip, merged, node, REPLICAS};

    const KEEP_ALL: OpLogPolicy = OpLogPolicy {
        window_ms: u64::MAX,
        per_actor_max: usize::MAX,
    };

    /// Forgets fast, so histories exercise floors, trimming and pins.
    const FORGETFUL: OpLogPolicy = OpLogPolicy {
        window_ms: 6,
        per_actor_max: 3,
    };

    /// The amount of operation `id` (a client retrying sends the same amount).
    fn amount_of(id: u8) -> i64 {
        i64::from(id % 7) - 2
    }

    #[derive(Clone, Debug)]
    enum Step {
        /// Replica `.0` applies operation id `.1` (a retry when the id was used before).
        Apply(usize, u8),
        /// Replica `to` merges replica `from`'s state.
        Sync { from: usize, to: usize },
    }

    fn arb_steps() -> impl Strategy<Value = Vec<Step>> {
        let apply = (0..REPLICAS, 0u8..12).prop_map(|(r, id)| Step::Apply(r, id));
        let sync = (0..REPLICAS, 0..REPLICAS).prop_map(|(from, to)| Step::Sync { from, to });
        proptest::collection::vec(prop_oneof![2 => apply, 1 => sync], 0..50)
    }

    fn replay(steps: &[Step], policy: OpLogPolicy) -> (Vec<Counter>, BTreeSet<u8>) {
        let mut states = vec![Counter::new(); REPLICAS];
        let mut ids = BTreeSet::new();
        for (t, step) in steps.iter().enumerate() {
            match *step {
                Step::Apply(r, id) => {
                    states[r]
                        .apply(node(r), &id.to_string(), amount_of(id), t as u64, policy)
                        .unwrap();
                    ids.insert(id);
                }
                Step::Sync { from, to } => {
                    let source = states[from].clone();
                    states[to].merge(&source);
                }
            }
        }
        (states, ids)
    }

    fn converge(states: &[Counter]) -> Counter {
        let mut all = Counter::new();
        for s in states {
            all.merge(s);
        }
        all
    }

    proptest! {
        #[test]
        fn merge_laws_hold(steps in arb_steps()) {
            for policy in [KEEP_ALL, FORGETFUL] {
                let (s, _) = replay(&steps, policy);
                check_merge_laws(&s[0], &s[1], &s[2])?;
                check_merge_laws(&s[0].log, &s[1].log, &s[2].log)?;
                check_round_trip(&s[0])?;
            }
        }

        /// Whatever the merges, no state holds more than `per_actor_max` unpinned records of
        /// one actor.
        #[test]
        fn forgetting_keeps_every_key_bounded(steps in arb_steps()) {
            let (states, _) = replay(&steps, FORGETFUL);
            for s in &states {
                for r in 0..REPLICAS {
                    let mine = s.log.records.iter().filter(|x| x.actor == node(r) && !x.app.pinned).count();
                    prop_assert!(mine <= FORGETFUL.per_actor_max, "{} records of replica {}", mine, r);
                }
            }
        }

        /// However retries spread over coordinators, once every state has met, each operation
        /// id counts exactly once (while ids are remembered).
        #[test]
        fn every_operation_counts_once(steps in arb_steps(), order in proptest::collection::vec(0..REPLICAS, 0..6)) {
            let (states, ids) = replay(&steps, KEEP_ALL);
            let want: i128 = ids.iter().map(|&id| i128::from(amount_of(id))).sum();
            let mut all = Counter::new();
            for &r in &order {
                all.merge(&states[r]);
            }
            let all = merged(&all, &converge(&states));
            prop_assert_eq!(all.value(), want);
            // Also once every actor forgot every record it may forget (all but the pinned).
            let mut everyone = all.clone();
            for (q, other) in states.iter().enumerate() {
                let mut theirs = merged(other, &all);
                theirs.log.raise_floor(node(q), u64::MAX);
                everyone.merge(&theirs);
            }
            prop_assert_eq!(everyone.value(), want);
        }

        /// A replica's own value never counts one operation twice, even before it met the
        /// others.
        #[test]
        fn no_replica_ever_overcounts(steps in arb_steps()) {
            let (states, ids) = replay(&steps, KEEP_ALL);
            let most: i128 = ids.iter().map(|&id| i128::from(amount_of(id).max(0))).sum();
            for s in &states {
                prop_assert!(s.value() <= most, "{} > {}", s.value(), most);
            }
        }
    }

    #[test]
    fn a_replayed_id_changes_nothing() {
        let mut c = Counter::new();
        let a = NodeId::new(1);
        assert_eq!(c.apply(a, "op-1", 5, 0, KEEP_ALL), Ok(Applied::Now));
        let before = c.clone();
        assert_eq!(c.apply(a, "op-1", 5, 1, KEEP_ALL), Ok(Applied::Replayed));
        assert_eq!(c, before);
        assert_eq!(c.value(), 5);
    }

    #[test]
    fn a_retry_through_another_coordinator_counts_once() {
        let (a, b) = (NodeId::new(1), NodeId::new(2));
        let mut x = Counter::new();
        let mut y = Counter::new();
        x.apply(a, "op", 3, 0, KEEP_ALL).unwrap();
        y.apply(b, "op", 3, 0, KEEP_ALL).unwrap();
        let both = merged(&x, &y);
        assert_eq!(both.value(), 3, "the duplicate is left out");
        // A's application is canonical; b's is the duplicate.
        let apps: Vec<NodeId> = both.log.applications("op").map(|(n, _)| n).collect();
        assert_eq!(apps, vec![a, b]);
        // Both actors forgetting everything they may: the shared records stay, pinned.
        let mut forgot = both.clone();
        forgot.log.raise_floor(a, u64::MAX);
        forgot.log.raise_floor(b, u64::MAX);
        assert!(forgot.log.contains("op"));
        assert_eq!(forgot.value(), 3);
        assert_eq!(merged(&forgot, &x).value(), 3);
        assert_eq!(merged(&forgot, &y).value(), 3);
    }

    #[test]
    fn records_of_an_operation_applied_twice_are_pinned_not_forgotten() {
        let (x, y) = (NodeId::new(1), NodeId::new(2));
        let policy = OpLogPolicy {
            window_ms: 10,
            per_actor_max: 100,
        };
        // x applied "op"; y applied it again (a retry through another coordinator).
        let mut a = Counter::new();
        a.apply(x, "op", 1, 0, policy).unwrap();
        let mut b = Counter::new();
        b.apply(y, "op", 1, 0, policy).unwrap();
        a.merge(&b);
        assert_eq!(a.value(), 1);
        // Much later x applies more: its old record would be forgotten, but is pinned.
        a.apply(x, "later", 1, 1000, policy).unwrap();
        assert!(a.log.contains("op"));
        assert_eq!(a.value(), 2, "y's duplicate still counts out");
        assert_eq!(merged(&a, &b).value(), 2);
    }

    #[test]
    fn records_are_forgotten_by_age_and_by_count() {
        let a = NodeId::new(1);
        let policy = OpLogPolicy {
            window_ms: 100,
            per_actor_max: 3,
        };
        let mut c = Counter::new();
        for i in 0..5u64 {
            c.apply(a, &format!("op{i}"), 1, i, policy).unwrap();
        }
        assert_eq!(c.log.len(), 3, "only the newest 3");
        assert!(!c.log.contains("op0") && c.log.contains("op4"));
        c.apply(a, "late", 1, 1000, policy).unwrap();
        assert_eq!(c.log.len(), 1, "older than the window");
        assert_eq!(c.value(), 6);
        // A stale copy that still holds forgotten records gets them dropped by the merge.
        let mut stale = Counter::new();
        stale.apply(a, "op0", 1, 0, KEEP_ALL).unwrap();
        let m = merged(&stale, &c);
        assert!(!m.log.contains("op0"));
        assert_eq!(m.value(), 6);
    }

    #[test]
    fn op_ids_are_checked() {
        assert!(check_op_id("a-b_c.1").is_ok());
        for bad in ["", "has space", "é", &"x".repeat(OP_ID_BYTES_MAX + 1)] {
            assert_eq!(check_op_id(bad), Err(OpIdError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn bad_logs_are_refused_on_decode() {
        let a = NodeId::new(1);
        let mut c = Counter::new();
        c.apply(a, "op", 1, 0, KEEP_ALL).unwrap();
        let mut bad = c.clone();
        bad.log.marks.get_mut(&a).unwrap().floor = 1;
        let bytes = rmp_serde::to_vec(&bad).unwrap();
        assert!(rmp_serde::from_slice::<Counter>(&bytes).is_err());
        // Records out of order, or one repeated.
        let mut bad = c.clone();
        bad.log.records.push(c.log.records[0]);
        let bytes = rmp_serde::to_vec(&bad).unwrap();
        assert!(rmp_serde::from_slice::<Counter>(&bytes).is_err());
        // A record newer than its actor's sequence number.
        let mut bad = c.clone();
        bad.log.records[0].app.seq = 9;
        let bytes = rmp_serde::to_vec(&bad).unwrap();
        assert!(rmp_serde::from_slice::<Counter>(&bytes).is_err());
        // The valid state decodes.
        let bytes = rmp_serde::to_vec(&c).unwrap();
        assert_eq!(rmp_serde::from_slice::<Counter>(&bytes).unwrap(), c);
    }
}
