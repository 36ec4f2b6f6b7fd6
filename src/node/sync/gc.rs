//! Tombstone garbage collection: purging register tombstones once no copy of what they deleted
//! can come back.
//!
//! A delete leaves a tombstone (a register whose only values are tombstones) so that an older
//! copy of the key, wherever it still is, is superseded when it arrives. Purging the tombstone
//! is safe once no older copy exists anywhere and none can still arrive. There is no
//! wall-clock grace period; instead the node that is first in a partition's preference list
//! runs *rounds*:
//!
//! 1. It picks up to [`GcConfig::keys_per_round`] tombstones of the partitions it leads, each
//!    with the Merkle leaf of its state, and asks **every ring member** — replicas, and any
//!    node that may still hold an old owner's copy — whether it agrees ([`GcMessage::Query`]).
//! 2. A member agrees to a key only if its own copy is that exact state or it holds nothing
//!    of the key, the copy is durable, it has sent no state of the key to another node within
//!    the *quiet* window, and its node-wide conditions hold: it is a member whose copy of every
//!    partition it replicates is complete (caught up since it became a replica), the ring is stable (nobody joining or leaving, no pending placement, every
//!    owner reachable) with the same owners as the asker's, it holds no hints, and it has run
//!    for at least the quiet window ([`GcMessage::Vote`]).
//! 3. When every member agreed to a key, every member deletes its copy if it is still exactly
//!    that state ([`GcMessage::Purge`], then [`ReplicaCall::Drop`] with `purge`).
//!
//! Why nothing deleted comes back: at the vote, no member holds an older state of the key, so
//! none can send one later; a state sent earlier was sent more than the quiet window ago, and
//! the quiet window is longer than any peer message lives (the runtime's transport drops a
//! message queued longer than 30 s and abandons a stream after 30 s; the simulator's network
//! holds a message at most its stream timeout plus the latency tail)
//! and than any client request lasts (a coordinator repairs with the replies it collected, at
//! most `timeout_max` after they were sent). A node that joins starts empty (and no round runs
//! while it joins); a node that left or was removed never serves again. A member whose purge
//! was lost keeps the tombstone, which is harmless: anti-entropy spreads it again and a later
//! round purges it. The next write to a purged key mints a dot above the replica's *dot floor*
//! (see the replica's notes), so it is never taken for a write of the key's previous life.
//!
//! The quiet window is the larger of the configured one and twice the longest client timeout.
//! A round needs every member up and answering; while one is down, tombstones wait.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use tracing::{debug, info, warn};

use super::super::object::Object;
use super::super::replica::{leaf_of, ReplicaCall};
use super::super::{Call, Effects, PeerMessage};
use super::SyncMessage;
use crate::id::NodeId;
use crate::merkle::Digest;
use crate::ring::{key_hash, PartitionId};
use crate::storage::{data_key, partition_range, ReadStore, Space, SCAN_BYTES_MAX};

/// Most keys one query may name (enforced when one arrives).
pub(crate) const KEYS_PER_QUERY_MAX: usize = 4096;

/// Most ring members a query may name.
const OWNERS_MAX: usize = 4096;

/// Most stored entries a node examines for tombstones per tick (the scan runs on the node's
/// loop, so it is kept short).
const SCAN_PER_TICK: usize = 4096;

/// The bytes every encoded tombstone contains (the variant's name): a stored state without
/// them is not decoded at all.
const TOMBSTONE_MARK: &[u8] = b"Tombstone";

/// Whether `bytes` (an encoded object) may be a register whose values are all tombstones.
fn maybe_tombstone(bytes: &[u8]) -> bool {
    bytes
        .windows(TOMBSTONE_MARK.len())
        .any(|w| w == TOMBSTONE_MARK)
}

/// A round not answered by every member within this long is abandoned.
const ROUND_TIMEOUT: Duration = Duration::from_secs(10);

/// Tombstone GC settings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GcConfig {
    /// How often each partition this node leads is looked at (`None`: never purge).
    pub(crate) interval: Option<Duration>,
    /// The quiet window (see the module notes).
    pub(crate) quiet: Duration,
    /// Most tombstones per round.
    pub(crate) keys_per_round: usize,
    /// Purge without asking (a planted bug; see `DataConfig::tombstone_gc_unchecked`).
    pub(crate) unchecked: bool,
}

/// Messages of tombstone GC (inside [`SyncMessage::Gc`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GcMessage {
    /// May these tombstones go? (Answered with [`GcMessage::Vote`].)
    Query {
        /// The round.
        gid: u64,
        /// The ring's owners as the asker sees them, sorted.
        owners: Vec<NodeId>,
        /// The keys, each with the Merkle leaf of the tombstone the asker holds.
        keys: Vec<(ByteBuf, Digest)>,
    },
    /// Per key of the query, in order: whether the sender agrees (empty: it refuses them all).
    Vote {
        /// The round.
        gid: u64,
        /// The sender's answers.
        agreed: Vec<bool>,
    },
    /// Every member agreed: delete these keys where the copy is still the given state.
    Purge {
        /// The keys and the leaves of the agreed states.
        keys: Vec<(ByteBuf, Digest)>,
    },
}

/// Keys whose state this node sent to another node recently: two generations of a bit set
/// (a Bloom filter with two probes). A key noted at time `t` is reported until at least
/// `t + window`; a false positive only delays a purge.
pub(crate) struct RecentKeys {
    window: Duration,
    bits: [Vec<u64>; 2],
    current: usize,
    rotated_at: Duration,
}

/// Bits per generation (a power of two): 2^20, 128 KiB.
const RECENT_BITS: usize = 1 << 20;

impl RecentKeys {
    pub(crate) fn new(window: Duration) -> Self {
        RecentKeys {
            window,
            bits: [vec![0; RECENT_BITS / 64], vec![0; RECENT_BITS / 64]],
            current: 0,
            rotated_at: Duration::ZERO,
        }
    }

    fn probes(key: &[u8]) -> [usize; 2] {
        let h = key_hash(key);
        let mask = (RECENT_BITS - 1) as u64;
        [(h & mask) as usize, ((h >> 32) & mask) as usize]
    }

    /// Notes that a state of `key` left this node at `now`.
    pub(crate) fn note(&mut self, key: &[u8], now: Duration) {
        if now >= self.rotated_at + self.window {
            let older = 1 - self.current;
            if now >= self.rotated_at + self.window * 2 {
                self.bits[self.current].fill(0);
            }
            self.bits[older].fill(0);
            self.current = older;
            self.rotated_at = now;
        }
        for b in Self::probes(key) {
            self.bits[self.current][b / 64] |= 1 << (b % 64);
        }
    }

    /// Whether a state of `key` may have left this node within the window before `now`.
    pub(crate) fn maybe(&self, key: &[u8], now: Duration) -> bool {
        let set = |g: usize| {
            Self::probes(key)
                .iter()
                .all(|&b| self.bits[g][b / 64] & (1 << (b % 64)) != 0)
        };
        // The current generation holds notes from [rotated_at, rotated_at + window) (a later
        // note rotates), the older one notes from before rotated_at.
        (now < self.rotated_at + self.window * 2 && set(self.current))
            || (now < self.rotated_at + self.window && set(1 - self.current))
    }
}

struct Round {
    gid: u64,
    /// User keys and the leaves asked about.
    keys: Vec<(Vec<u8>, Digest)>,
    agreed: Vec<bool>,
    waiting: BTreeSet<NodeId>,
    started: Duration,
}

/// The tombstone GC half of the sync sub-machine.
pub(crate) struct Gc {
    config: GcConfig,
    recent: RecentKeys,
    /// Per partition, the journal number of the newest state staged in it: a copy is trusted
    /// for a vote only once that is durable (coarse, so that a write costs no allocation here;
    /// a partition being written to just waits for the next pass).
    undurable: BTreeMap<PartitionId, u64>,
    started_at: Option<Duration>,
    round: Option<Round>,
    next_gid: u64,
    /// The next partition to look at, and when the current pass over them began.
    cursor: u32,
    pass_started: Option<Duration>,
    /// Where in the partition the scan goes on (empty: from its start).
    resume: Vec<u8>,
    rounds: u64,
}

impl Gc {
    pub(crate) fn new(config: GcConfig, first_gid: u64) -> Self {
        Gc {
            config,
            recent: RecentKeys::new(config.quiet),
            undurable: BTreeMap::new(),
            started_at: None,
            round: None,
            next_gid: first_gid,
            cursor: 0,
            pass_started: None,
            resume: Vec::new(),
            rounds: 0,
        }
    }

    /// Notes that a state of `key` left this node.
    pub(crate) fn note_sent(&mut self, key: &[u8], now: Duration) {
        if self.config.interval.is_some() {
            self.recent.note(key, now);
        }
    }

    /// Notes the states of every message that carries some, on its way to another node.
    pub(crate) fn note_outgoing(&mut self, message: &PeerMessage, now: Duration) {
        if self.config.interval.is_none() {
            return;
        }
        use super::super::hints::HintsMessage;
        use super::super::replica::ReplicaMessage;
        use super::exchange::AeMessage;
        match message {
            PeerMessage::Replica(ReplicaMessage::Write { key, .. })
            | PeerMessage::Hints(HintsMessage::Store { key, .. }) => self.note_sent(key, now),
            PeerMessage::Replica(ReplicaMessage::Merge { entries, .. })
            | PeerMessage::Sync(SyncMessage::Ae(AeMessage::Diff { entries, .. })) => {
                for e in entries {
                    self.note_sent(&e.key, now);
                }
            }
            PeerMessage::Hints(HintsMessage::Adopt { hints, .. }) => {
                for h in hints {
                    self.note_sent(&h.entry.key, now);
                }
            }
            _ => {}
        }
    }

    /// A state of a key of partition `p` was staged under journal number `seq`.
    pub(crate) fn note_staged(&mut self, p: PartitionId, seq: u64) {
        let e = self.undurable.entry(p).or_default();
        *e = (*e).max(seq);
    }

    /// Rounds this node completed since start (every member answered).
    pub(crate) fn rounds(&self) -> u64 {
        self.rounds
    }

    fn quiet_over(&self, now: Duration) -> bool {
        self.started_at
            .is_some_and(|s| now >= s + self.config.quiet)
    }

    /// The node-wide conditions for agreeing to anything (see the module notes).
    fn may_agree(&self, hints_held: usize, fx: &Effects<'_>) -> bool {
        fx.topo.member
            && fx.topo.complete
            && fx.topo.catching_up == 0
            && !fx.topo.joining
            && !fx.topo.leaving
            && fx.topo.stable()
            && hints_held == 0
            && self.quiet_over(fx.now)
    }

    /// Whether this node agrees that the tombstone of `key` with leaf `leaf` may go.
    fn agrees(&self, key: &[u8], leaf: Digest, store: &dyn ReadStore, fx: &Effects<'_>) -> bool {
        if self.recent.maybe(key, fx.now) {
            return false;
        }
        let p = fx.topo.partition(key);
        if self
            .undurable
            .get(&p)
            .is_some_and(|&seq| seq > fx.journal.durable_seq())
        {
            return false;
        }
        let skey = data_key(p, key);
        match store.get(Space::Data, &skey) {
            Ok(None) => true,
            Ok(Some(bytes)) => leaf_of(&skey, &bytes) == leaf,
            Err(e) => {
                warn!(error = %e, "cannot read a key a tombstone GC round asks about");
                false
            }
        }
    }

    /// Time passed: abandons a round that took too long, and may start the next.
    pub(crate) fn tick(&mut self, store: &dyn ReadStore, hints_held: usize, fx: &mut Effects<'_>) {
        let Some(interval) = self.config.interval.filter(|i| !i.is_zero()) else {
            return;
        };
        let now = fx.now;
        self.started_at.get_or_insert(now);
        let durable = fx.journal.durable_seq();
        self.undurable.retain(|_, seq| *seq > durable);
        if let Some(r) = &self.round {
            if now < r.started + ROUND_TIMEOUT {
                return;
            }
            debug!(
                gid = r.gid,
                waiting = r.waiting.len(),
                "tombstone GC round abandoned"
            );
            self.round = None;
        }
        if !self.config.unchecked && !self.may_agree(hints_held, fx) {
            return;
        }
        let partitions = fx.topo.partition_ids().count() as u32;
        if partitions == 0 {
            return;
        }
        let pass = *self.pass_started.get_or_insert(now);
        let (mut examined, mut bytes) = (0, 0);
        let mut keys = Vec::new();
        let round_max = self.config.keys_per_round.clamp(1, KEYS_PER_QUERY_MAX);
        while examined < SCAN_PER_TICK && bytes < SCAN_BYTES_MAX && keys.len() < round_max {
            if self.cursor >= partitions {
                // A pass is over; the next starts an interval after this one did.
                if now < pass + interval || !keys.is_empty() {
                    break;
                }
                self.cursor = 0;
                self.pass_started = Some(now);
            }
            let Ok(index) = u16::try_from(self.cursor) else {
                self.cursor = partitions;
                continue;
            };
            let p = PartitionId::new(index);
            if fx.topo.primaries(p).first() != Some(&fx.me) {
                self.cursor += 1;
                self.resume.clear();
                continue;
            }
            let budget = (SCAN_PER_TICK - examined, SCAN_BYTES_MAX - bytes);
            let (scanned, read, done) = self.candidates(p, round_max, budget, &mut keys, store, fx);
            examined += scanned.max(1);
            bytes += read;
            if done {
                self.cursor += 1;
            }
        }
        if !keys.is_empty() {
            self.start_round(keys, fx);
        }
    }

    /// Adds tombstones of `p` to `keys`, from where the scan stopped, until `keys` holds
    /// `max`, reading at most `budget` entries and bytes; returns how many entries and bytes
    /// were read, and whether the partition is done.
    fn candidates(
        &mut self,
        p: PartitionId,
        max: usize,
        budget: (usize, usize),
        keys: &mut Vec<(Vec<u8>, Digest)>,
        store: &dyn ReadStore,
        fx: &Effects<'_>,
    ) -> (usize, usize, bool) {
        let (start, end) = partition_range(p);
        let from = if self.resume.is_empty() {
            start
        } else {
            self.resume.clone()
        };
        let page = match store.scan_page(Space::Data, &from, &end, budget.0.max(1), budget.1) {
            Ok(page) => page,
            Err(e) => {
                warn!(error = %e, partition = %p, "cannot scan a partition for tombstones");
                self.resume.clear();
                return (0, 0, true);
            }
        };
        let more = !page.complete;
        let page = page.entries;
        let scanned = page.len();
        let read: usize = page.iter().map(|(k, v)| k.len() + v.len()).sum();
        let mut last = None;
        for (skey, bytes) in &page {
            last = Some(skey);
            let Some((_, key)) = crate::storage::split_data_key(skey) else {
                continue;
            };
            let tombstone = maybe_tombstone(bytes)
                && matches!(
                    Object::decode(bytes),
                    Ok(Object::Register(ref r)) if r.is_deleted()
                );
            if !tombstone {
                continue;
            }
            let leaf = leaf_of(skey, bytes);
            if self.config.unchecked || self.agrees(key, leaf, store, fx) {
                keys.push((key.to_vec(), leaf));
                if keys.len() >= max {
                    break;
                }
            }
        }
        let done = match last {
            Some(l) if more || keys.len() >= max => {
                // Go on after the last entry looked at.
                let mut next = l.clone();
                next.push(0);
                self.resume = next;
                false
            }
            _ => {
                self.resume.clear();
                true
            }
        };
        (scanned, read, done)
    }

    fn start_round(&mut self, keys: Vec<(Vec<u8>, Digest)>, fx: &mut Effects<'_>) {
        let gid = self.next_gid;
        self.next_gid = self.next_gid.wrapping_add(1);
        let owners = fx.topo.owners();
        let waiting: BTreeSet<NodeId> = if self.config.unchecked {
            BTreeSet::new()
        } else {
            owners.iter().copied().filter(|&o| o != fx.me).collect()
        };
        debug!(
            gid,
            keys = keys.len(),
            members = owners.len(),
            "tombstone GC round"
        );
        let wire: Vec<(ByteBuf, Digest)> = keys
            .iter()
            .map(|(k, l)| (ByteBuf::from(k.clone()), *l))
            .collect();
        for &to in &waiting {
            fx.send(
                to,
                SyncMessage::Gc(GcMessage::Query {
                    gid,
                    owners: owners.clone(),
                    keys: wire.clone(),
                })
                .into(),
            );
        }
        self.round = Some(Round {
            gid,
            agreed: vec![true; keys.len()],
            keys,
            waiting,
            started: fx.now,
        });
        self.maybe_finish(fx);
    }

    /// A GC message from `from`.
    pub(crate) fn handle(
        &mut self,
        from: NodeId,
        msg: GcMessage,
        store: &dyn ReadStore,
        hints_held: usize,
        fx: &mut Effects<'_>,
    ) {
        match msg {
            GcMessage::Query { gid, owners, keys } => {
                if keys.len() > KEYS_PER_QUERY_MAX || owners.len() > OWNERS_MAX {
                    warn!(%from, keys = keys.len(), owners = owners.len(), "oversized tombstone GC query dropped");
                    return;
                }
                let ok = owners == fx.topo.owners()
                    && owners.contains(&from)
                    && self.may_agree(hints_held, fx);
                let agreed = if ok {
                    keys.iter()
                        .map(|(k, leaf)| self.agrees(k, *leaf, store, fx))
                        .collect()
                } else {
                    Vec::new()
                };
                fx.send(
                    from,
                    SyncMessage::Gc(GcMessage::Vote { gid, agreed }).into(),
                );
            }
            GcMessage::Vote { gid, agreed } => {
                let Some(r) = self.round.as_mut().filter(|r| r.gid == gid) else {
                    return;
                };
                if !r.waiting.remove(&from) {
                    return;
                }
                if agreed.len() == r.keys.len() {
                    for (mine, theirs) in r.agreed.iter_mut().zip(agreed) {
                        *mine &= theirs;
                    }
                } else {
                    r.agreed.fill(false);
                }
                self.maybe_finish(fx);
            }
            GcMessage::Purge { keys } => {
                if keys.len() > KEYS_PER_QUERY_MAX {
                    warn!(%from, keys = keys.len(), "oversized tombstone purge dropped");
                    return;
                }
                if !fx.topo.owners().contains(&from) {
                    debug!(%from, "tombstone purge from a non-member ignored");
                    return;
                }
                let keys: Vec<(Vec<u8>, Digest)> = keys
                    .into_iter()
                    .map(|(k, leaf)| (data_key(fx.topo.partition(&k), &k), leaf))
                    .collect();
                if !keys.is_empty() {
                    fx.calls
                        .push_back(Call::Replica(ReplicaCall::Drop { keys, purge: true }));
                }
            }
        }
    }

    fn maybe_finish(&mut self, fx: &mut Effects<'_>) {
        if self.round.as_ref().is_none_or(|r| !r.waiting.is_empty()) {
            return;
        }
        let Some(r) = self.round.take() else { return };
        self.rounds += 1;
        let keys: Vec<(ByteBuf, Digest)> = r
            .keys
            .into_iter()
            .zip(r.agreed)
            .filter(|(_, ok)| *ok)
            .map(|((k, l), _)| (ByteBuf::from(k), l))
            .collect();
        if keys.is_empty() {
            return;
        }
        info!(keys = keys.len(), "every member agreed: purging tombstones");
        for to in fx.topo.owners() {
            fx.send(
                to,
                SyncMessage::Gc(GcMessage::Purge { keys: keys.clone() }).into(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_encoded_tombstone_carries_the_mark_and_plain_values_do_not() {
        use crate::causality::{Register, VersionVector};
        let n = NodeId::new(7);
        let mut r = Register::new();
        r.put(n, &VersionVector::new(), b"some value".to_vec());
        let live = Object::Register(r.clone()).encode().unwrap();
        assert!(!maybe_tombstone(&live));
        r.delete(n, &r.context());
        let dead = Object::Register(r.clone()).encode().unwrap();
        assert!(maybe_tombstone(&dead));
        // A tombstone next to a concurrent value still carries it (and is no candidate).
        r.put(
            NodeId::new(8),
            &VersionVector::new(),
            b"concurrent".to_vec(),
        );
        assert!(maybe_tombstone(&Object::Register(r).encode().unwrap()));
    }

    #[test]
    fn a_noted_key_is_reported_for_at_least_the_window() {
        let w = Duration::from_secs(10);
        let mut r = RecentKeys::new(w);
        let s = Duration::from_secs;
        r.note(b"a", s(5));
        for t in [5, 9, 14, 15] {
            assert!(r.maybe(b"a", s(t)), "at {t}");
        }
        // Other keys come and go; "a" stays until its window is over.
        r.note(b"b", s(12));
        assert!(r.maybe(b"a", s(14)));
        r.note(b"c", s(23));
        assert!(r.maybe(b"b", s(23)));
        assert!(!r.maybe(b"a", s(23)), "noted at 5, window 10");
        r.note(b"d", s(60));
        assert!(!r.maybe(b"b", s(60)) && !r.maybe(b"c", s(60)));
        assert!(r.maybe(b"d", s(60)));
        assert!(!r.maybe(b"never", s(60)));
        // With nothing noted since, "d" is forgotten once its window is over.
        assert!(r.maybe(b"d", s(69)));
        assert!(!r.maybe(b"d", s(80)));
    }
}
