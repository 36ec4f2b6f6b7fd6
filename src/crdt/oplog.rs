//! Operation ids for retry-safe updates, and the counter that uses them to count an operation
//! once however many coordinators applied it.
//!
//! A client that retries a timed-out increment cannot know whether the first attempt landed. So
//! every update carries an operation id, and a key's state remembers the ids it applied: an
//! [`OpLog`]. A coordinator whose copy already holds an id does nothing; two coordinators that
//! both applied one id (the retry reached a replica that had not yet received the first
//! attempt) are reconciled when their states meet:
//!
//! - Each application is recorded under the id, by the actor that performed it, with the
//!   actor's own sequence number. Records merge by union.
//! - Of several applications of one id, the one by the smallest actor is *canonical*; the others
//!   are *duplicates*. A [`Counter`]'s entries hold every application; its value leaves the
//!   duplicates out, so it needs the records of an operation applied twice for as long as the
//!   counter lives: those are never forgotten (they are *pinned* when their actor forgets).
//!
//! # Forgetting
//!
//! Records are forgotten per actor, oldest first: each actor keeps a *floor*, which only it
//! raises, and records at or below it are dropped by every merge. Forgetting a record is safe
//! only once it can no longer change the value, which takes two things:
//!
//! - **Stability.** Every current replica of the key holds the record. Each replica notes in
//!   the state, whenever it stores it, how far it holds each actor's records (its *row*,
//!   [`OpLog::observe`]), under the replica set it sees ([`replica_set_id`]); rows merge by
//!   maximum and travel with the state, and only rows of the judging node's current set
//!   count. (Copies that differ only in rows are left to anti-entropy: read repair does not
//!   send them, see [`OpLog::without_rows`].) An actor learns that replica `r` holds its
//!   record only by merging a state that came from `r` after `r` held it, and that state
//!   carries every application `r` made before it saw the record: so when the actor forgets,
//!   it already sees any duplicate and pins instead. A replica that left the set may have
//!   applied a duplicate its successor did not have yet; a leave completes only once its
//!   handoff is with its successor, and the successor's rows count only once taken under
//!   the new set, so they carry that duplicate too. Not covered yet (open): a join, or a
//!   former owner partitioned with a stale view, moves a key away from a replica whose last
//!   writes follow after the set changed; a duplicate whose only copy waits in a hint (hint
//!   holders' rows never count) or in a message delayed past the window, such as one a
//!   process applied and sent just before it crashed (its restarted successor's row does not
//!   account for it). A replica's row claims only what it holds durably ([`RowClaim`]): a
//!   crash takes back what is not, and a row that claimed it could let an actor forget a
//!   record the restarted replica then applies again.
//! - **Age.** A retry can arrive late; a record is kept at least [`OpLogPolicy::window_ms`]
//!   (by its actor's clock) after it was applied, so a retry within that window is recognised
//!   through any replica.
//!
//! Memory is bounded, and the bounds are reported, never silent. Past
//! [`OpLogPolicy::per_actor_max`] records of one actor in one key (a hot key), the actor
//! forgets its oldest *stable* records early: a retry of one of those arriving later may count
//! again. Past four times that (a replica unreachable for long while the key stays hot), it
//! forgets its oldest records even if not stable: a duplicate applied concurrently elsewhere
//! may then count twice. Both are returned as [`Forgotten`] (the node counts them and says so
//! in the update's reply).
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

/// Most records one actor may hold in a decoded state (four times the largest policy bound).
const RECORDS_PER_ACTOR_DECODE_MAX: usize = 4 * PER_ACTOR_MAX_LIMIT;

/// Largest [`OpLogPolicy::per_actor_max`] a node accepts.
pub const PER_ACTOR_MAX_LIMIT: usize = 4096;

/// Most replica rows a decoded log may hold (nodes that ever stored the key).
const ROWS_DECODE_MAX: usize = 1024;

/// How long operation ids are remembered (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpLogPolicy {
    /// A record is kept at least this long after it was applied (by its actor's clock), in
    /// milliseconds, and after that until every replica holds it.
    pub window_ms: u64,
    /// Records of one actor a key keeps before it forgets stable ones early; four times this
    /// before it forgets unstable ones. At most [`PER_ACTOR_MAX_LIMIT`].
    pub per_actor_max: usize,
}

impl Default for OpLogPolicy {
    fn default() -> Self {
        OpLogPolicy {
            window_ms: 10 * 60 * 1000,
            per_actor_max: 1024,
        }
    }
}

/// Where an update is applied: the replica node whose row the log keeps, and the key's
/// current replicas (every one of them must hold a record before it may be forgotten).
#[derive(Clone, Copy, Debug)]
pub struct Site<'a> {
    /// The node applying the update (its row is refreshed).
    pub node: NodeId,
    /// The key's current replicas. Empty: unknown, so nothing is stable.
    pub replicas: &'a [NodeId],
    /// What the node's row may claim it holds.
    pub claim: RowClaim<'a>,
}

/// What a replica's row may claim it holds when it stores a state (see "Stability"): never
/// more than it holds durably, since a crash takes back whatever is not, and a row that went
/// out claiming it could let an actor forget a record the replica then applies again.
#[derive(Clone, Copy, Debug)]
pub enum RowClaim<'a> {
    /// Everything the state holds: it is durable as it is stored.
    State,
    /// The sequence numbers, by actor, of the replica's durable copy ([`OpLog::held_seqs`]).
    Upto(&'a BTreeMap<NodeId, u64>),
    /// The durable copy is not known (a state stored earlier is not durable yet): the row
    /// stays as it is.
    Unchanged,
}

/// No sequence numbers: what a replica without a durable copy may claim.
pub static NOTHING_HELD: BTreeMap<NodeId, u64> = BTreeMap::new();

/// Records forgotten by one update before it was safe, because of the memory bounds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Forgotten {
    /// Stable records forgotten before their window: a late retry of one may count again.
    pub early: u32,
    /// Records forgotten before every replica held them: a duplicate applied concurrently
    /// elsewhere may count twice.
    pub unstable: u32,
}

impl Forgotten {
    /// Whether anything was forgotten before it was safe.
    pub fn any(&self) -> bool {
        self.early > 0 || self.unstable > 0
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
    /// Per replica node and replica set: the newest sequence number of each actor its durable
    /// copy held when it last stored the key as a replica of that set (see "Stability").
    rows: BTreeMap<RowKey, BTreeMap<NodeId, u64>>,
}

#[derive(Deserialize)]
struct OpLogWire {
    marks: BTreeMap<NodeId, ActorMark>,
    records: Vec<Record>,
    #[serde(default)]
    rows: BTreeMap<RowKey, BTreeMap<NodeId, u64>>,
}

/// Whose row: the replica that stored the state, and the replica set it stored it under
/// ([`replica_set_id`]). A row counts toward stability only for that same set: a replica that
/// joined the set later shows by its row under the new set that it stored the key after the
/// set changed, not before.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct RowKey(NodeId, u64);

/// A deterministic identity of a set of replicas (order and repeats do not matter): FNV-1a
/// over the sorted node ids, the same on every node and every version.
pub(crate) fn replica_set_id(replicas: &[NodeId]) -> u64 {
    let mut ids: Vec<u64> = replicas.iter().map(|n| n.get()).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for id in ids {
        for b in id.to_be_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
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
        if w.rows.len() > ROWS_DECODE_MAX || w.rows.values().any(|row| row.len() > w.marks.len()) {
            return Err("too many replica rows".into());
        }
        // A row says how far a replica holds each actor's records: never past what the log
        // itself knows (an inflated row would make records look stable).
        let inflated = w
            .rows
            .values()
            .flatten()
            .any(|(actor, &seq)| w.marks.get(actor).is_none_or(|m| seq > m.seq));
        if inflated {
            return Err("a replica row beyond the log's sequence numbers".into());
        }
        Ok(OpLog {
            marks: w.marks,
            records: w.records,
            rows: w.rows,
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

    /// Records that `actor` applied set update `id` at `now_ms` on `site` (the caller checked
    /// [`OpLog::contains`] first), then forgets `actor`'s records that `policy` lets go.
    pub fn record_set_update(
        &mut self,
        actor: NodeId,
        id: &str,
        now_ms: u64,
        policy: OpLogPolicy,
        site: Site<'_>,
    ) -> Forgotten {
        self.record(actor, id, 0, now_ms, policy, site)
    }

    /// Notes that `node`, which sees `replicas` as the key's replicas, holds this state: its
    /// row for that set becomes the state's sequence numbers (see "Stability"), and rows of
    /// other sets, or of nodes outside this one, are dropped (only rows of the current set
    /// count, and without pruning every node that ever stored the key would keep a row for
    /// good: past [`ROWS_DECODE_MAX`], a state that no longer decodes). For a state stored
    /// durably as it is; a replica whose stored state may still be lost in a crash calls
    /// [`OpLog::observe_claiming`] with what it holds durably.
    pub fn observe(&mut self, node: NodeId, replicas: &[NodeId]) {
        self.observe_claiming(node, replicas, RowClaim::State);
    }

    /// [`OpLog::observe`], with `node`'s row claiming only what `claim` allows: with
    /// [`RowClaim::Upto`] the row becomes those sequence numbers (never past the state's
    /// own), with [`RowClaim::Unchanged`] it stays as it is.
    pub fn observe_claiming(&mut self, node: NodeId, replicas: &[NodeId], claim: RowClaim<'_>) {
        let set = replica_set_id(replicas);
        self.rows
            .retain(|k, _| k.1 == set && (k.0 == node || replicas.contains(&k.0)));
        let row: BTreeMap<NodeId, u64> = match claim {
            RowClaim::State => self.held_seqs(),
            RowClaim::Upto(held) => held
                .iter()
                .filter_map(|(a, &seq)| {
                    let seq = seq.min(self.marks.get(a).map_or(0, |m| m.seq));
                    (seq > 0).then_some((*a, seq))
                })
                .collect(),
            RowClaim::Unchanged => return,
        };
        if row.is_empty() {
            if !matches!(claim, RowClaim::State) {
                self.rows.remove(&RowKey(node, set));
            }
        } else {
            self.rows.insert(RowKey(node, set), row);
        }
    }

    /// The row of replica `node` under the replica set `replicas`: how far, by its own
    /// account, it holds each actor's records (`None`: it claims nothing).
    pub fn row(&self, node: NodeId, replicas: &[NodeId]) -> Option<&BTreeMap<NodeId, u64>> {
        self.rows.get(&RowKey(node, replica_set_id(replicas)))
    }

    /// How far this state holds each actor's records: its sequence numbers by actor (what a
    /// replica's row claims when this state is its durable copy).
    pub fn held_seqs(&self) -> BTreeMap<NodeId, u64> {
        self.marks.iter().map(|(a, m)| (*a, m.seq)).collect()
    }

    /// The log without its replica rows, to tell copies that differ only in rows (which
    /// anti-entropy reconciles in its time) from copies that differ in what they hold.
    pub fn without_rows(&self) -> OpLog {
        OpLog {
            marks: self.marks.clone(),
            records: self.records.clone(),
            rows: BTreeMap::new(),
        }
    }

    /// Whether the two logs hold the same records and marks (rows aside).
    pub fn same_records(&self, other: &OpLog) -> bool {
        self.marks == other.marks && self.records == other.records
    }

    /// The highest sequence number of `actor` that every one of `replicas` holds as a replica
    /// of that same set (0 when one has no such row, or none is named).
    fn stable_upto(&self, actor: NodeId, replicas: &[NodeId]) -> u64 {
        if replicas.is_empty() {
            return 0;
        }
        let set = replica_set_id(replicas);
        replicas
            .iter()
            .map(|r| {
                self.rows
                    .get(&RowKey(*r, set))
                    .and_then(|row| row.get(&actor))
                    .copied()
                    .unwrap_or(0)
            })
            .min()
            .unwrap_or(0)
    }

    /// Records that `actor` applied `id` with `amount` at `now_ms` on `site`, then forgets
    /// `actor`'s records that `policy` lets go. The caller checked [`OpLog::contains`] first.
    fn record(
        &mut self,
        actor: NodeId,
        id: &str,
        amount: i64,
        now_ms: u64,
        policy: OpLogPolicy,
        site: Site<'_>,
    ) -> Forgotten {
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
        self.observe_claiming(site.node, site.replicas, site.claim);
        self.forget(actor, now_ms, policy, site)
    }

    /// Raises `actor`'s floor past its oldest records that may go (see "Forgetting"): older
    /// than the window and held by every replica, or beyond the bounds. Only an actor raises
    /// its own floor, together with the pins it decides: so any state that knows a floor also
    /// holds every record that floor pinned, and merging stays a join.
    fn forget(
        &mut self,
        actor: NodeId,
        now_ms: u64,
        policy: OpLogPolicy,
        site: Site<'_>,
    ) -> Forgotten {
        let floor_now = self.marks.get(&actor).map_or(0, |m| m.floor);
        let mine: Vec<(u64, u64)> = self
            .seqs_of(actor)
            .into_iter()
            .filter(|&(seq, _)| seq > floor_now)
            .collect();
        let stable = self.stable_upto(actor, site.replicas);
        let soft = policy.per_actor_max.clamp(1, PER_ACTOR_MAX_LIMIT);
        let hard = soft.saturating_mul(4);
        let mut floor = None;
        let mut forgotten = Forgotten::default();
        for (i, &(seq, at)) in mine.iter().enumerate() {
            let kept = mine.len() - i;
            let aged = at.saturating_add(policy.window_ms) < now_ms;
            if seq <= stable && aged {
                floor = Some(seq);
            } else if seq <= stable && kept > soft {
                forgotten.early += 1;
                floor = Some(seq);
            } else if kept > hard {
                forgotten.unstable += 1;
                floor = Some(seq);
            } else {
                break;
            }
        }
        if let Some(f) = floor {
            self.raise_floor(actor, f);
        }
        forgotten
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
        for (key, row) in &other.rows {
            // Both are the same replica's rows (for one set) from different times: the later
            // holds the earlier (its durable copy only grows while it replicates the key), so
            // the join is the entrywise maximum.
            let mine = self.rows.entry(*key).or_default();
            for (actor, &seq) in row {
                let s = mine.entry(*actor).or_default();
                *s = (*s).max(seq);
            }
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

    /// Adds `amount` on behalf of `actor` under operation `id` on `site`, unless `id` was
    /// applied before; returns what it did and what it forgot before it was safe.
    ///
    /// # Errors
    ///
    /// [`CrdtError::CounterOverflow`] when `actor`'s entry would overflow (more than 2^64
    /// increments); nothing changed.
    pub fn apply(
        &mut self,
        actor: NodeId,
        id: &str,
        amount: i64,
        now_ms: u64,
        policy: OpLogPolicy,
        site: Site<'_>,
    ) -> Result<(Applied, Forgotten), CrdtError> {
        if self.log.contains(id) {
            return Ok((Applied::Replayed, Forgotten::default()));
        }
        self.add(actor, amount)?;
        let forgotten = self.log.record(actor, id, amount, now_ms, policy, site);
        Ok((Applied::Now, forgotten))
    }

    /// Notes that replica `node` holds this state (see [`OpLog::observe`]).
    pub fn observe(&mut self, node: NodeId, replicas: &[NodeId]) {
        self.log.observe(node, replicas);
    }

    /// Notes that replica `node` stores this state, claiming what `claim` allows (see
    /// [`OpLog::observe_claiming`]).
    pub fn observe_claiming(&mut self, node: NodeId, replicas: &[NodeId], claim: RowClaim<'_>) {
        self.log.observe_claiming(node, replicas, claim);
    }

    /// Whether the two counters hold the same (rows aside: see [`OpLog::without_rows`]).
    pub fn same_data(&self, other: &Counter) -> bool {
        self.entries == other.entries && self.log.same_records(&other.log)
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
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::crdt::testing::{check_merge_laws, check_round_trip, merged, node, REPLICAS};

    const KEEP_ALL: OpLogPolicy = OpLogPolicy {
        window_ms: u64::MAX,
        per_actor_max: PER_ACTOR_MAX_LIMIT,
    };

    /// Forgets as soon as it may: a record is forgotten once every replica holds it and 6 ms
    /// passed; the bounds are far away.
    const FORGETFUL: OpLogPolicy = OpLogPolicy {
        window_ms: 6,
        per_actor_max: PER_ACTOR_MAX_LIMIT,
    };

    /// Tiny bounds too: forgets early, and even unstable records, all the time.
    const CRAMPED: OpLogPolicy = OpLogPolicy {
        window_ms: 6,
        per_actor_max: 2,
    };

    /// Every replica's node id (replica `i` is node `i`, whose actor is node `i` as well).
    fn all() -> Vec<NodeId> {
        (0..REPLICAS).map(node).collect()
    }

    fn site(r: usize, replicas: &[NodeId]) -> Site<'_> {
        Site {
            node: node(r),
            replicas,
            claim: RowClaim::State,
        }
    }

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
        /// Replica `.0` leaves the key and the spare node (slot [`SPARE`], a future owner that
        /// may have stored states already, as a non-replica) takes its place: as in a leave,
        /// the spare first stores everything the leaving replica holds (its handoff, under the
        /// old replica set), then the set changes and a new spare comes.
        Replace(usize),
    }

    /// The slot of the node that is not a replica yet (see [`Step::Replace`]).
    const SPARE: usize = REPLICAS;

    fn arb_steps() -> impl Strategy<Value = Vec<Step>> {
        let apply = (0..REPLICAS, 0u8..12).prop_map(|(r, id)| Step::Apply(r, id));
        let sync = (0..=SPARE, 0..=SPARE).prop_map(|(from, to)| Step::Sync { from, to });
        let replace = (0..REPLICAS).prop_map(Step::Replace);
        proptest::collection::vec(prop_oneof![2 => apply, 2 => sync, 1 => replace], 0..80)
    }

    /// What a history did: the states, when each id was first applied, and whether anything
    /// was forgotten before it was safe.
    struct Run {
        states: Vec<Counter>,
        /// The node in each replica slot at the end (replacements bring new ones).
        ids: Vec<NodeId>,
        first: BTreeMap<u8, u64>,
        reported: bool,
    }

    /// Replays `steps` (one per millisecond). With `within_window`, a retry later than the
    /// window after its id's first application is left out (the guarantee covers retries
    /// within the window).
    fn replay(steps: &[Step], policy: OpLogPolicy, within_window: bool) -> Run {
        let mut ids = all();
        ids.push(NodeId::new(99));
        let mut run = Run {
            ids,
            states: vec![Counter::new(); REPLICAS + 1],
            first: BTreeMap::new(),
            reported: false,
        };
        for (t, step) in steps.iter().enumerate() {
            let t = t as u64;
            match *step {
                Step::Apply(r, id) => {
                    let t0 = *run.first.entry(id).or_insert(t);
                    if within_window && t > t0.saturating_add(policy.window_ms) {
                        continue;
                    }
                    let site = Site {
                        node: run.ids[r],
                        replicas: &run.ids[..REPLICAS],
                        claim: RowClaim::State,
                    };
                    let (_, f) = run.states[r]
                        .apply(run.ids[r], &id.to_string(), amount_of(id), t, policy, site)
                        .unwrap();
                    run.reported |= f.any();
                }
                Step::Sync { from, to } => {
                    let source = run.states[from].clone();
                    run.states[to].merge(&source);
                    run.states[to].observe(run.ids[to], &run.ids[..REPLICAS]);
                }
                Step::Replace(r) => {
                    let handed = run.states[r].clone();
                    run.states[SPARE].merge(&handed);
                    run.states[SPARE].observe(run.ids[SPARE], &run.ids[..REPLICAS]);
                    run.states.swap(r, SPARE);
                    run.ids.swap(r, SPARE);
                    // The leaving node is gone (everything it held is with its successor).
                    run.states[SPARE] = Counter::new();
                    run.ids[SPARE] = NodeId::new(100 + t);
                }
            }
        }
        run
    }

    fn converge(states: &[Counter]) -> Counter {
        let mut all = Counter::new();
        for s in states {
            all.merge(s);
        }
        all
    }

    fn want(run: &Run) -> i128 {
        run.first.keys().map(|&id| i128::from(amount_of(id))).sum()
    }

    proptest! {
        #[test]
        fn merge_laws_hold(steps in arb_steps()) {
            for policy in [KEEP_ALL, FORGETFUL, CRAMPED] {
                let s = replay(&steps, policy, false).states;
                check_merge_laws(&s[0], &s[1], &s[2])?;
                check_merge_laws(&s[0].log, &s[1].log, &s[2].log)?;
                check_round_trip(&s[0])?;
            }
        }

        /// Issue 20, defect 2: with records forgotten as soon as the rules allow (every
        /// replica holds them, the window passed), any interleaving of applications, retries
        /// through any replica within the window, merges and replicas replaced as a leave
        /// does, counts every operation id exactly once: none twice, none dropped — in every
        /// order the states later meet.
        #[test]
        fn a_tiny_window_never_counts_an_id_twice_nor_drops_one(
            steps in arb_steps(),
            order in proptest::collection::vec(0..REPLICAS, 0..6),
        ) {
            let run = replay(&steps, FORGETFUL, true);
            prop_assert!(!run.reported, "the bounds are never reached here");
            let mut some = Counter::new();
            for &r in &order {
                some.merge(&run.states[r]);
            }
            let everything = merged(&some, &converge(&run.states));
            prop_assert_eq!(everything.value(), want(&run));
            // However the states meet, and after every replica observed the whole.
            let mut again = everything.clone();
            for r in 0..REPLICAS {
                let mut theirs = merged(&run.states[r], &everything);
                theirs.observe(run.ids[r], &run.ids[..REPLICAS]);
                again.merge(&theirs);
            }
            prop_assert_eq!(again.value(), want(&run));
        }

        /// With tiny memory bounds a key forgets records before it is safe: that is always
        /// reported, and only then may the value be off; an acknowledged increment is never
        /// dropped.
        #[test]
        fn tiny_bounds_are_reported_and_never_drop_an_increment(
            steps in arb_steps(),
        ) {
            let run = replay(&steps, CRAMPED, true);
            let value = converge(&run.states).value();
            if !run.reported {
                prop_assert_eq!(value, want(&run));
            }
            // Positive amounts only: nothing acknowledged is ever subtracted away.
            let positive: i128 = run
                .first
                .keys()
                .map(|&id| i128::from(amount_of(id)))
                .filter(|&a| a > 0)
                .sum();
            let negative: i128 = run
                .first
                .keys()
                .map(|&id| i128::from(amount_of(id)))
                .filter(|&a| a < 0)
                .sum();
            if !run.reported {
                prop_assert!(value <= positive && value >= negative);
            }
        }

        /// Whatever the merges, no state holds more than four times `per_actor_max` unpinned
        /// records of one actor.
        #[test]
        fn forgetting_keeps_every_key_bounded(steps in arb_steps()) {
            let run = replay(&steps, CRAMPED, false);
            for s in &run.states {
                for r in 0..REPLICAS {
                    let mine = s.log.records.iter().filter(|x| x.actor == node(r) && !x.app.pinned).count();
                    prop_assert!(mine <= 4 * CRAMPED.per_actor_max, "{} records of replica {}", mine, r);
                }
            }
        }

        /// A replica's own value never counts one operation twice, even before it met the
        /// others.
        #[test]
        fn no_replica_ever_overcounts(steps in arb_steps()) {
            let run = replay(&steps, KEEP_ALL, false);
            let most: i128 = run.first.keys().map(|&id| i128::from(amount_of(id).max(0))).sum();
            for s in &run.states {
                prop_assert!(s.value() <= most, "{} > {}", s.value(), most);
            }
        }
    }

    /// A replica whose state may be ahead of its disk: a crash takes it back to the disk, and
    /// the restarted process applies updates as a new actor. `ids` and `disk_ids` are the
    /// operation ids whose effect each holds: the truth a value must match.
    #[derive(Clone)]
    struct Disked {
        state: Counter,
        disk: Counter,
        ids: std::collections::BTreeSet<u8>,
        disk_ids: std::collections::BTreeSet<u8>,
        actor: NodeId,
    }

    /// Replicas that persist, crash and restart; every row claims only what the replica's
    /// disk holds ([`RowClaim::Upto`]), as the node's replica does.
    struct Crashing {
        replicas: Vec<Disked>,
        ids: Vec<NodeId>,
        first: BTreeMap<u8, u64>,
        reported: bool,
        restarts: u64,
    }

    impl Crashing {
        fn new() -> Crashing {
            let ids = all();
            Crashing {
                replicas: ids
                    .iter()
                    .map(|&id| Disked {
                        state: Counter::new(),
                        disk: Counter::new(),
                        ids: Default::default(),
                        disk_ids: Default::default(),
                        actor: id,
                    })
                    .collect(),
                ids,
                first: BTreeMap::new(),
                reported: false,
                restarts: 0,
            }
        }

        fn apply(&mut self, r: usize, id: u8, t: u64, policy: OpLogPolicy) {
            self.first.entry(id).or_insert(t);
            let held = self.replicas[r].disk.log.held_seqs();
            let site = Site {
                node: self.ids[r],
                replicas: &self.ids,
                claim: RowClaim::Upto(&held),
            };
            let d = &mut self.replicas[r];
            let (applied, f) = d
                .state
                .apply(d.actor, &id.to_string(), amount_of(id), t, policy, site)
                .unwrap();
            if applied == Applied::Now {
                d.ids.insert(id);
            }
            self.reported |= f.any();
        }

        fn sync(&mut self, from: usize, to: usize) {
            let (state, ids) = (
                self.replicas[from].state.clone(),
                self.replicas[from].ids.clone(),
            );
            let d = &mut self.replicas[to];
            d.state.merge(&state);
            d.ids.extend(ids);
            let held = d.disk.log.held_seqs();
            d.state
                .observe_claiming(self.ids[to], &self.ids, RowClaim::Upto(&held));
        }

        fn persist(&mut self, r: usize) {
            let d = &mut self.replicas[r];
            d.disk = d.state.clone();
            d.disk_ids = d.ids.clone();
        }

        fn crash(&mut self, r: usize) {
            self.restarts += 1;
            let d = &mut self.replicas[r];
            d.state = d.disk.clone();
            d.ids = d.disk_ids.clone();
            d.actor = NodeId::new(1000 + self.restarts);
        }

        /// Every state merged, and the value it must have: each operation id it holds, once.
        fn outcome(&self) -> (i128, i128) {
            let all = converge(
                &self
                    .replicas
                    .iter()
                    .map(|d| d.state.clone())
                    .collect::<Vec<_>>(),
            );
            let ids: std::collections::BTreeSet<u8> =
                self.replicas.iter().flat_map(|d| d.ids.clone()).collect();
            let want = ids.iter().map(|&id| i128::from(amount_of(id))).sum();
            (all.value(), want)
        }
    }

    #[derive(Clone, Debug)]
    enum CrashStep {
        Apply(usize, u8),
        Sync { from: usize, to: usize },
        Persist(usize),
        Crash(usize),
    }

    fn arb_crash_steps() -> impl Strategy<Value = Vec<CrashStep>> {
        let apply = (0..REPLICAS, 0u8..8).prop_map(|(r, id)| CrashStep::Apply(r, id));
        let sync = (0..REPLICAS, 0..REPLICAS).prop_map(|(from, to)| CrashStep::Sync { from, to });
        let persist = (0..REPLICAS).prop_map(CrashStep::Persist);
        let crash = (0..REPLICAS).prop_map(CrashStep::Crash);
        proptest::collection::vec(
            prop_oneof![3 => apply, 4 => sync, 2 => persist, 1 => crash],
            0..80,
        )
    }

    /// Issue 20, defect 2, the crash case: replica 1 stores "x" and its state goes out
    /// claiming it holds it before its disk does; replica 0, seeing every replica's row claim
    /// "x", forgets it once it is old; replica 1 crashes, loses "x", and applies the client's
    /// retry of it again as a new process. With rows claiming what the state holds (the rule
    /// before) the merged value counts "x" twice, for good; rows claim only what is on disk
    /// now, so replica 0 keeps "x" until replica 1 holds it durably, and it counts once.
    #[test]
    fn a_replica_that_crashes_never_lets_an_operation_count_twice() {
        let mut c = Crashing::new();
        c.apply(0, 3, 0, FORGETFUL);
        c.sync(0, 1);
        c.sync(1, 0);
        c.sync(0, 2);
        c.persist(2);
        c.sync(0, 2);
        c.sync(2, 0);
        c.crash(1);
        c.apply(1, 3, 6, FORGETFUL);
        c.persist(0);
        c.apply(0, 4, 20, FORGETFUL);
        c.apply(0, 5, 30, FORGETFUL);
        assert!(!c.reported);
        let (value, want) = c.outcome();
        assert_eq!(
            value,
            want,
            "every id once: {}",
            amount_of(3) + amount_of(4) + amount_of(5)
        );
    }

    proptest! {
        // The crash that matters is a few steps in a precise order: many cases (each is
        // cheap), so that the rule before the fix fails here too, not only in the unit case.
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Any interleaving of applications, retries within the window through any replica,
        /// merges, persists and crashes (a restarted replica applies as a new actor) counts
        /// every operation id its states hold exactly once, however forgetful the policy.
        #[test]
        fn crashes_never_make_an_operation_count_twice(steps in arb_crash_steps()) {
            let mut c = Crashing::new();
            for (t, step) in steps.iter().enumerate() {
                let t = t as u64;
                match *step {
                    CrashStep::Apply(r, id) => {
                        let t0 = c.first.get(&id).copied().unwrap_or(t);
                        if t <= t0.saturating_add(FORGETFUL.window_ms) {
                            c.apply(r, id, t, FORGETFUL);
                        }
                    }
                    CrashStep::Sync { from, to } => c.sync(from, to),
                    CrashStep::Persist(r) => c.persist(r),
                    CrashStep::Crash(r) => c.crash(r),
                }
            }
            prop_assert!(!c.reported);
            let (value, want) = c.outcome();
            prop_assert_eq!(value, want);
        }
    }

    /// Issue 20, defect 2, the unit reproduction: `x` applied "op" and went on; `y` applied a
    /// retry of it before it had `x`'s state. On main `x` forgot "op" (beyond one record) and
    /// the merge counted it twice (3); an unstable record is kept, and the value is 2.
    #[test]
    fn a_record_not_yet_on_every_replica_is_not_forgotten() {
        let policy = OpLogPolicy {
            window_ms: u64::MAX,
            per_actor_max: 1,
        };
        let (a, b) = (node(0), node(1));
        let replicas = [a, b];
        let (mut x, mut y) = (Counter::new(), Counter::new());
        x.apply(a, "op", 1, 0, policy, site(0, &replicas)).unwrap();
        y.apply(b, "op", 1, 0, policy, site(1, &replicas)).unwrap();
        let (_, f) = x
            .apply(a, "other", 1, 1, policy, site(0, &replicas))
            .unwrap();
        assert!(!f.any(), "nothing was forgotten");
        x.merge(&y);
        assert_eq!(x.value(), 2);
    }

    /// Issue 20, defect 2, the cluster reproduction in miniature: op P through A, then 200
    /// more through A (with B holding all of them), then a retry of P through B. On main A
    /// forgot P after 128 updates and B applied the retry again; now P is remembered for its
    /// window, and the retry is recognised.
    #[test]
    fn a_prompt_retry_on_a_hot_key_is_recognised_through_another_replica() {
        let policy = OpLogPolicy::default();
        let (a, b) = (node(0), node(1));
        let replicas = [a, b];
        let mut at_a = Counter::new();
        at_a.apply(a, "P", 1, 0, policy, site(0, &replicas))
            .unwrap();
        for i in 0..200u64 {
            at_a.apply(a, &format!("n{i}"), 1, i, policy, site(0, &replicas))
                .unwrap();
        }
        let mut at_b = at_a.clone();
        at_b.observe(b, &replicas);
        let (applied, _) = at_b
            .apply(b, "P", 1, 300, policy, site(1, &replicas))
            .unwrap();
        assert_eq!(applied, Applied::Replayed);
        assert_eq!(merged(&at_a, &at_b).value(), 201);
    }

    /// A record leaves once its window passed and every replica holds it (and not before).
    #[test]
    fn records_are_forgotten_once_old_and_on_every_replica() {
        let policy = OpLogPolicy {
            window_ms: 100,
            per_actor_max: 1024,
        };
        let (a, b) = (node(0), node(1));
        let replicas = [a, b];
        let mut c = Counter::new();
        c.apply(a, "old", 1, 0, policy, site(0, &replicas)).unwrap();
        c.apply(a, "late", 1, 1000, policy, site(0, &replicas))
            .unwrap();
        assert!(c.log.contains("old"), "b does not hold it yet");
        // b stores the state; a learns it (merging b's copy), then updates again.
        let mut at_b = c.clone();
        at_b.observe(b, &replicas);
        c.merge(&at_b);
        c.apply(a, "later", 1, 1001, policy, site(0, &replicas))
            .unwrap();
        assert!(!c.log.contains("old"), "old, and on every replica");
        assert!(c.log.contains("late"), "still within its window");
        assert_eq!(c.value(), 3);
        // A stale copy that still holds the forgotten record gets it dropped by the merge.
        let m = merged(&at_b, &c);
        assert!(!m.log.contains("old"));
        assert_eq!(m.value(), 3);
    }

    /// Past the bound a hot key forgets stable records early, and says so.
    #[test]
    fn the_memory_bound_forgets_stable_records_first_and_reports_it() {
        let policy = OpLogPolicy {
            window_ms: u64::MAX,
            per_actor_max: 3,
        };
        let a = node(0);
        let alone = [a];
        let mut c = Counter::new();
        let mut early = 0;
        for i in 0..10u64 {
            let (_, f) = c
                .apply(a, &format!("op{i}"), 1, i, policy, site(0, &alone))
                .unwrap();
            assert_eq!(f.unstable, 0, "every record is stable on the only replica");
            early += f.early;
        }
        assert_eq!(early, 7);
        assert_eq!(c.log.len(), 3);
        assert_eq!(c.value(), 10);
        // With a replica that never stores the key, records are unstable: kept up to four
        // times the bound, then forgotten all the same, reported as unstable.
        let replicas = [a, node(1)];
        let mut c = Counter::new();
        let mut unstable = 0;
        for i in 0..20u64 {
            let (_, f) = c
                .apply(a, &format!("op{i}"), 1, i, policy, site(0, &replicas))
                .unwrap();
            assert_eq!(f.early, 0);
            unstable += f.unstable;
        }
        assert_eq!(c.log.len(), 12);
        assert_eq!(unstable, 8);
    }

    #[test]
    fn a_replayed_id_changes_nothing() {
        let mut c = Counter::new();
        let a = NodeId::new(1);
        let s = Site {
            node: a,
            replicas: &[],
            claim: RowClaim::State,
        };
        assert_eq!(
            c.apply(a, "op-1", 5, 0, KEEP_ALL, s).map(|x| x.0),
            Ok(Applied::Now)
        );
        let before = c.clone();
        assert_eq!(
            c.apply(a, "op-1", 5, 1, KEEP_ALL, s).map(|x| x.0),
            Ok(Applied::Replayed)
        );
        assert_eq!(c, before);
        assert_eq!(c.value(), 5);
    }

    #[test]
    fn a_retry_through_another_coordinator_counts_once() {
        let (a, b) = (NodeId::new(1), NodeId::new(2));
        let replicas = [a, b];
        let sa = Site {
            node: a,
            replicas: &replicas,
            claim: RowClaim::State,
        };
        let sb = Site {
            node: b,
            replicas: &replicas,
            claim: RowClaim::State,
        };
        let mut x = Counter::new();
        let mut y = Counter::new();
        x.apply(a, "op", 3, 0, KEEP_ALL, sa).unwrap();
        y.apply(b, "op", 3, 0, KEEP_ALL, sb).unwrap();
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
    fn op_ids_are_checked() {
        assert!(check_op_id("a-b_c.1").is_ok());
        for bad in ["", "has space", "é", &"x".repeat(OP_ID_BYTES_MAX + 1)] {
            assert_eq!(check_op_id(bad), Err(OpIdError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn bad_logs_are_refused_on_decode() {
        let a = NodeId::new(1);
        let s = Site {
            node: a,
            replicas: &[],
            claim: RowClaim::State,
        };
        let mut c = Counter::new();
        c.apply(a, "op", 1, 0, KEEP_ALL, s).unwrap();
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
        // A replica row beyond an actor's sequence number.
        let mut bad = c.clone();
        let actor = *bad.log.marks.keys().next().unwrap();
        bad.log
            .rows
            .insert(RowKey(node(5), 1), [(actor, 1_000)].into());
        let bytes = rmp_serde::to_vec(&bad).unwrap();
        assert!(rmp_serde::from_slice::<Counter>(&bytes).is_err());
        // A replica row naming actors the log never saw.
        let mut bad = c.clone();
        bad.log
            .rows
            .insert(RowKey(node(5), 1), [(node(7), 1), (node(8), 1)].into());
        let bytes = rmp_serde::to_vec(&bad).unwrap();
        assert!(rmp_serde::from_slice::<Counter>(&bytes).is_err());
        // The valid state decodes.
        let bytes = rmp_serde::to_vec(&c).unwrap();
        assert_eq!(rmp_serde::from_slice::<Counter>(&bytes).unwrap(), c);
    }

    /// Found by a hostile review: rows were never pruned, so a key stored by more than
    /// `ROWS_DECODE_MAX` nodes over its life (churn, stray merges) encoded but no longer
    /// decoded. Rows of nodes that are not current replicas are dropped as each replica
    /// stores the state.
    #[test]
    fn rows_of_nodes_that_are_no_longer_replicas_are_dropped() {
        let a = node(0);
        let replicas = [a, node(1), node(2)];
        let mut c = Counter::new();
        let site = Site {
            node: a,
            replicas: &replicas,
            claim: RowClaim::State,
        };
        c.apply(a, "x", 1, 0, KEEP_ALL, site).unwrap();
        for k in 0..(ROWS_DECODE_MAX as u64 + 1) {
            // A node that stored the key once as a replica, then lost its share of the ring.
            let passer = NodeId::new(10_000 + k);
            c.observe(passer, &[a, passer]);
            c.observe(a, &replicas);
        }
        c.observe(node(1), &replicas);
        let set = replica_set_id(&replicas);
        let rows: Vec<RowKey> = c.log.rows.keys().copied().collect();
        assert_eq!(rows, vec![RowKey(a, set), RowKey(node(1), set)]);
        let bytes = rmp_serde::to_vec(&c).unwrap();
        let back: Counter = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back, c);
    }

    /// Found by a hostile review: a replica that applied a retry (a duplicate) and then left
    /// the key, before the others merged its copy. The new owner had stored the first
    /// application during the handoff, and its row made the record look stable under the new
    /// replica set: the first application's actor forgot it and the duplicate counted twice,
    /// silently (11, not 6). Rows count only for the replica set they were taken under: the
    /// new owner's row from before the set changed proves nothing about the new set.
    #[test]
    fn a_row_taken_before_the_replica_set_changed_does_not_make_a_record_stable() {
        let policy = OpLogPolicy {
            window_ms: 100,
            per_actor_max: 1024,
        };
        let (a, b, c, d) = (node(0), node(1), node(2), NodeId::new(77));
        let old = [a, b, c];
        let new = [a, b, d];
        let at = |n: NodeId, replicas: &'static [NodeId]| Site {
            node: n,
            replicas,
            claim: RowClaim::State,
        };
        let old: &'static [NodeId] = Box::leak(Box::new(old));
        let new: &'static [NodeId] = Box::leak(Box::new(new));
        let mut at_a = Counter::new();
        let mut at_c = Counter::new();
        at_a.apply(a, "P", 5, 0, policy, at(a, old)).unwrap();
        // The retry reaches C, which has not seen A's application.
        at_c.apply(c, "P", 5, 1, policy, at(c, old)).unwrap();
        // B stores A's state; D, the future owner, gets it in C's leave handoff (still under
        // the old set); A learns both rows.
        let mut at_b = at_a.clone();
        at_b.observe(b, old);
        let mut at_d = at_a.clone();
        at_d.observe(d, old);
        at_a.merge(&at_b);
        at_a.merge(&at_d);
        // C's leave completes only once its handoff (the duplicate) is with D; then the set is
        // {A, B, D}. A updates again after the window, under the new set.
        at_d.merge(&at_c);
        let (_, f) = at_a.apply(a, "Q", 1, 1000, policy, at(a, new)).unwrap();
        assert!(at_a.log.contains("P"), "P is not stable under the new set");
        assert!(!f.any());
        // D stores again under the new set (with the duplicate), and everyone meets.
        at_d.observe(d, new);
        let mut all = at_a.clone();
        all.merge(&at_d);
        all.merge(&at_b);
        assert_eq!(all.value(), 6, "P counted once");
        // A forgets P only after it saw D's row under the new set, which comes with the
        // duplicate: it pins rather than forgets, and the value stays.
        at_a.merge(&at_d);
        let mut at_b2 = at_a.clone();
        at_b2.observe(b, new);
        at_a.merge(&at_b2);
        at_a.apply(a, "R", 1, 3000, policy, at(a, new)).unwrap();
        let mut all = at_a.clone();
        all.merge(&at_d);
        all.merge(&at_c);
        assert_eq!(all.value(), 7, "P once, Q and R");
    }
}
