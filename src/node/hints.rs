//! The hints sub-machine: writes this node holds for replicas that were down.
//!
//! A coordinator that finds a replica down sends the write to a fallback with
//! [`HintsMessage::Store`]; the fallback stores it durably in the store's `hints` space (one
//! entry per write, keyed by the replica and a local sequence number) and acknowledges it then.
//! Every [`super::DataConfig::hint_interval`] the sub-machine offers durable hints, a batch at a
//! time, to each owner that SWIM holds reachable, as a [`ReplicaMessage::Merge`]; it deletes them
//! only once the owner acknowledged that it merged them durably. A hint for a node that has left
//! the ring goes to the key's current replicas instead. A leaving node hands the hints whose
//! owner is down to another member to hold ([`HintsMessage::Adopt`]) rather than take them away
//! (merging them into a different replica would leave the owner's copy missing). Hints survive
//! restarts: the index is rebuilt from the store when the node starts. This sub-machine never
//! touches the data space.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{debug, error, info, warn};

use super::coordinator::CoordinatorMessage;
use super::object::{Object, BATCH_BYTES_MAX};
use super::replica::{MergeEntry, MergeReply, ReplicaMessage};
use super::Effects;
use crate::id::NodeId;
use crate::protocol;
use crate::storage::{hint_key, split_hint_key, ReadStore, Space, StoreError, SCAN_BYTES_MAX};

/// A delivery not acknowledged within this long is offered again.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// A hint its owner refused to store (its merged state would be too large) is offered again
/// only after this long: it stays held and reported, without a storm of re-deliveries.
const REFUSED_BACKOFF: Duration = Duration::from_secs(60);

/// Messages to a node's hints sub-machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HintsMessage {
    /// Hold `object` for `target`, a replica of `key` that is down, until it can take it. With
    /// `req` other than 0, acknowledge to the sender ([`CoordinatorMessage::Ack`]) once durable.
    Store {
        /// The coordinator's request, or 0.
        req: u64,
        /// The replica the write is for.
        target: NodeId,
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The state to hand over.
        object: Object,
        /// Every node the write went to: none of them is a safe place to pass the hint on to,
        /// as it may hold the write's only other copy.
        holders: Vec<NodeId>,
    },
    /// Hold these hints on the sender's behalf (it is leaving and their replicas are down);
    /// acknowledge with [`HintsMessage::Delivered`] once they are durable here.
    Adopt {
        /// The hand-over.
        batch: u64,
        /// The hints: the replica each is for, with its key and state.
        hints: Vec<AdoptedHint>,
    },
    /// The sender durably merged (or adopted) delivery `batch`, except the entries at the
    /// positions in `refused`, which it did not store: they stay with the receiver.
    Delivered {
        /// The delivery.
        batch: u64,
        /// Positions of entries the sender refused (a merge beyond the stored size limit).
        #[serde(default)]
        refused: Vec<u32>,
    },
}

/// A hint handed to another node to hold ([`HintsMessage::Adopt`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdoptedHint {
    /// The replica the hint is for.
    pub target: NodeId,
    /// The key and its state.
    pub entry: MergeEntry,
    /// Nodes that may hold another copy of the write.
    pub holders: Vec<NodeId>,
}

/// Timers of the hints sub-machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HintsTimer {
    /// Time to offer hints to owners that are reachable.
    Deliver,
}

/// A hint read back from the store, with its encoded size.
struct Loaded {
    size: usize,
    entry: MergeEntry,
    holders: Vec<NodeId>,
}

/// A hint: the node it is for, and its number.
type HintId = (NodeId, u64);

/// A hint as stored.
#[derive(Debug, Serialize, Deserialize)]
struct StoredHint {
    #[serde(with = "serde_bytes")]
    key: Vec<u8>,
    object: Object,
    /// Nodes that may hold another copy of the write.
    holders: Vec<NodeId>,
}

#[derive(Debug)]
struct Delivery {
    /// Where it went.
    to: NodeId,
    /// The hints it carries: (target, number).
    hints: Vec<(NodeId, u64)>,
    sent_at: Duration,
}

/// The hints sub-machine.
pub(crate) struct Hints {
    store: Box<dyn ReadStore>,
    interval: Duration,
    batch_max: usize,
    /// Hints held, by target and number, with the journal number they are durable under.
    held: BTreeMap<NodeId, BTreeMap<u64, u64>>,
    next_seq: u64,
    next_batch: u64,
    in_flight: BTreeMap<u64, Delivery>,
    /// Hints in a delivery in flight.
    offered: BTreeSet<(NodeId, u64)>,
    /// Hints their owners acknowledged since start.
    delivered: u64,
    /// Hints a replica refused to store since start (they are kept).
    refused: u64,
    /// Refused hints, with when they may be offered again.
    held_back: BTreeMap<HintId, Duration>,
}

impl Hints {
    /// The hints sub-machine, with the index of the hints already in `store`.
    pub(crate) fn new(
        store: Box<dyn ReadStore>,
        interval: Duration,
        batch_max: usize,
        first_batch: u64,
    ) -> Result<Self, StoreError> {
        let mut held: BTreeMap<NodeId, BTreeMap<u64, u64>> = BTreeMap::new();
        let mut next_seq = 1;
        // Page by page, bounded in bytes: hints carry whole states.
        let mut from = Vec::new();
        loop {
            let page = store.scan_page(Space::Hints, &from, &[], 4096, SCAN_BYTES_MAX)?;
            for (k, _) in &page.entries {
                match split_hint_key(k) {
                    Some((target, seq)) => {
                        held.entry(target).or_default().insert(seq, 0);
                        next_seq = next_seq.max(seq + 1);
                    }
                    None => warn!(len = k.len(), "ignoring a malformed hint key"),
                }
            }
            match page.next_from() {
                Some(next) => from = next,
                None => break,
            }
        }
        let count: usize = held.values().map(BTreeMap::len).sum();
        if count > 0 {
            info!(hints = count, targets = held.len(), "loaded held hints");
        }
        Ok(Hints {
            store,
            interval,
            batch_max: batch_max.max(1),
            held,
            next_seq,
            // Random per process: a late acknowledgement of a previous process's delivery never
            // matches one of this process's.
            next_batch: first_batch,
            in_flight: BTreeMap::new(),
            offered: BTreeSet::new(),
            delivered: 0,
            refused: 0,
            held_back: BTreeMap::new(),
        })
    }

    /// Hints a replica refused to store since start (each is kept and offered again).
    pub(crate) fn refused(&self) -> u64 {
        self.refused
    }

    /// Hints their owners acknowledged since start.
    pub(crate) fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Hints held (durable or not).
    pub(crate) fn pending(&self) -> usize {
        self.held.values().map(BTreeMap::len).sum()
    }

    /// Arms the delivery timer.
    pub(crate) fn start(&mut self, fx: &mut Effects<'_>) {
        fx.set_timer(self.interval, HintsTimer::Deliver);
    }

    pub(crate) fn handle_message(&mut self, from: NodeId, msg: HintsMessage, fx: &mut Effects<'_>) {
        match msg {
            HintsMessage::Store {
                req,
                target,
                key,
                object,
                holders,
            } => {
                if fx.topo.left {
                    // This node is going away: whoever sent it must keep it elsewhere.
                    debug!(%from, "refused a hint: this node has left");
                    return;
                }
                let Some(at) = self.hold(target, key, object, holders, fx) else {
                    return;
                };
                if req != 0 {
                    fx.after_durable(at, from, CoordinatorMessage::Ack { req }.into());
                }
            }
            HintsMessage::Adopt { batch, hints } => {
                if fx.topo.left {
                    debug!(%from, "refused hints to adopt: this node has left");
                    return;
                }
                let mut at = fx.journal.staging_seq();
                for h in hints {
                    if let Some(a) = self.hold(h.target, h.entry.key, h.entry.object, h.holders, fx)
                    {
                        at = a;
                    }
                }
                let refused = Vec::new();
                fx.after_durable(at, from, HintsMessage::Delivered { batch, refused }.into());
            }
            HintsMessage::Delivered { batch, refused } => {
                let Some(d) = self.in_flight.get(&batch) else {
                    return;
                };
                if d.to != from {
                    debug!(batch, %from, "ignored a delivery acknowledgement from another node");
                    return;
                }
                let Some(d) = self.in_flight.remove(&batch) else {
                    return;
                };
                for (i, (target, seq)) in d.hints.into_iter().enumerate() {
                    self.offered.remove(&(target, seq));
                    if refused.contains(&u32::try_from(i).unwrap_or(u32::MAX)) {
                        // Not stored there: kept, offered again later, and reported.
                        self.refused += 1;
                        self.held_back
                            .insert((target, seq), fx.now + REFUSED_BACKOFF);
                        warn!(%target, seq, %from, "a replica refused a hint (its merged state would be too large); keeping it");
                        continue;
                    }
                    self.delivered += 1;
                    fx.journal
                        .batch()
                        .delete(Space::Hints, hint_key(target, seq));
                    if let Some(h) = self.held.get_mut(&target) {
                        h.remove(&seq);
                        if h.is_empty() {
                            self.held.remove(&target);
                        }
                    }
                }
                // Keep going while the owner takes them.
                self.deliver(fx);
            }
        }
    }

    /// Stages `object` as a hint for `target`; returns the journal number it is durable under.
    fn hold(
        &mut self,
        target: NodeId,
        key: Vec<u8>,
        object: Object,
        holders: Vec<NodeId>,
        fx: &mut Effects<'_>,
    ) -> Option<u64> {
        let bytes = match protocol::encode(&StoredHint {
            key,
            object,
            holders,
        }) {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "cannot encode a hint");
                return None;
            }
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let at = fx.journal.staging_seq();
        fx.journal
            .batch()
            .put(Space::Hints, hint_key(target, seq), bytes);
        self.held.entry(target).or_default().insert(seq, at);
        Some(at)
    }

    pub(crate) fn handle_timer(&mut self, timer: HintsTimer, fx: &mut Effects<'_>) {
        match timer {
            HintsTimer::Deliver => {
                self.deliver(fx);
                fx.set_timer(self.interval, HintsTimer::Deliver);
            }
        }
    }

    /// Offers durable hints to every reachable owner that has no delivery in flight.
    pub(crate) fn deliver(&mut self, fx: &mut Effects<'_>) {
        if fx.topo.left {
            // Left, or removed: the members refuse what this node would send.
            return;
        }
        let now = fx.now;
        let stale: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, d)| now.saturating_sub(d.sent_at) > DELIVERY_TIMEOUT)
            .map(|(&b, _)| b)
            .collect();
        for b in stale {
            if let Some(d) = self.in_flight.remove(&b) {
                debug!(batch = b, to = %d.to, "hint delivery timed out; offering again");
                for h in d.hints {
                    self.offered.remove(&h);
                }
            }
        }
        let busy: BTreeSet<NodeId> = self.in_flight.values().map(|d| d.to).collect();
        self.held_back.retain(|_, until| *until > now);
        let durable = fx.journal.durable_seq();
        let in_ring = |n: NodeId| fx.topo.ring.as_ref().is_some_and(|r| r.contains(n));
        let targets: Vec<NodeId> = self.held.keys().copied().collect();
        // Per destination and kind (merge into a replica, or adopt as hints).
        let mut batches: BTreeMap<(NodeId, bool), Vec<(HintId, Loaded)>> = BTreeMap::new();
        for target in targets {
            // A hint whose owner left the ring goes to the key's current replicas.
            let gone = !in_ring(target) && fx.topo.ring.is_some();
            let direct = !gone && fx.topo.is_alive(target);
            if direct && busy.contains(&target) {
                continue;
            }
            // A leaving node must not take hints away: those whose replica is down go to
            // another node to hold.
            if !gone && !direct && !fx.topo.leaving {
                continue;
            }
            let ready: Vec<u64> = self.held[&target]
                .iter()
                .filter(|&(&seq, &at)| {
                    at <= durable
                        && !self.offered.contains(&(target, seq))
                        && !self.held_back.contains_key(&(target, seq))
                })
                .map(|(&seq, _)| seq)
                .take(self.batch_max)
                .collect();
            for seq in ready {
                let entry = match self.load(target, seq) {
                    Ok(Some(e)) => e,
                    Ok(None) => {
                        // Gone from the store (deleted by a delivery whose deletion is staged).
                        continue;
                    }
                    Err(e) => {
                        error!(error = %e, "cannot read a hint");
                        continue;
                    }
                };
                let key = (if direct {
                    Some(target)
                } else {
                    let usable = |n: &NodeId| {
                        fx.topo.is_alive(*n)
                            && !busy.contains(n)
                            && *n != target
                            && !(fx.topo.leaving && *n == fx.me)
                    };
                    // A node that may already hold the write is the last choice: merging or
                    // leaving the hint there would make two copies one.
                    let fresh = |n: &NodeId| usable(n) && !entry.holders.contains(n);
                    let p = fx.topo.partition(&entry.entry.key);
                    let primaries = fx.topo.primaries(p);
                    if gone {
                        // One of the current replicas that may lack it; any of them when all
                        // of them had it sent (wait otherwise).
                        let first = primaries.iter().copied().find(fresh);
                        let all_held = primaries
                            .iter()
                            .filter(|&&n| !(fx.topo.leaving && n == fx.me))
                            .all(|n| entry.holders.contains(n));
                        first.or_else(|| {
                            all_held
                                .then(|| primaries.iter().copied().find(usable))
                                .flatten()
                        })
                    } else {
                        // Another fallback first, like the coordinator's choice; wait (keep
                        // the hint, and the leave) while only holders are reachable.
                        fx.topo
                            .fallbacks(p)
                            .into_iter()
                            .chain(primaries)
                            .find(fresh)
                            .or_else(|| {
                                fx.topo
                                    .alive
                                    .iter()
                                    .copied()
                                    .find(|n| in_ring(*n) && fresh(n))
                            })
                    }
                })
                .map(|to| (to, !direct && !gone));
                let Some(key) = key else {
                    debug!(%target, gone, holders = ?entry.holders, "a hint waits for a node without the write");
                    continue;
                };
                let batch = batches.entry(key).or_default();
                let bytes: usize = batch.iter().map(|(_, e)| e.size).sum();
                if batch.len() < self.batch_max && (batch.is_empty() || bytes < BATCH_BYTES_MAX) {
                    batch.push(((target, seq), entry));
                }
            }
        }
        for ((to, adopt), items) in batches {
            if items.is_empty() {
                continue;
            }
            let batch = self.next_batch;
            self.next_batch = self.next_batch.wrapping_add(1);
            let hints: Vec<HintId> = items.iter().map(|(h, _)| *h).collect();
            self.offered.extend(hints.iter().copied());
            let message = if adopt {
                debug!(%to, hints = hints.len(), batch, "handing hints to another node to hold");
                HintsMessage::Adopt {
                    batch,
                    hints: items
                        .into_iter()
                        .map(|((target, _), l)| AdoptedHint {
                            target,
                            entry: l.entry,
                            holders: l.holders,
                        })
                        .collect(),
                }
                .into()
            } else {
                debug!(%to, hints = hints.len(), batch, "handing hints back");
                // `to` may be this node: a hint for a departed owner whose key it now replicates.
                ReplicaMessage::Merge {
                    reply: MergeReply::Hints { batch },
                    entries: items.into_iter().map(|(_, l)| l.entry).collect(),
                }
                .into()
            };
            fx.send(to, message);
            self.in_flight.insert(
                batch,
                Delivery {
                    to,
                    hints,
                    sent_at: now,
                },
            );
        }
    }

    fn load(&self, target: NodeId, seq: u64) -> Result<Option<Loaded>, String> {
        let Some(bytes) = self
            .store
            .get(Space::Hints, &hint_key(target, seq))
            .map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        let h = decode_stored(&bytes)?;
        Ok(Some(Loaded {
            size: bytes.len(),
            entry: MergeEntry {
                key: h.key,
                object: h.object,
            },
            holders: h.holders,
        }))
    }
}

fn decode_stored(bytes: &[u8]) -> Result<StoredHint, String> {
    protocol::decode_with_limit(bytes, super::object::OBJECT_BYTES_MAX + 4096)
        .map_err(|e| e.to_string())
}

/// The key and state a stored hint carries (for tools that inspect a node's disk, such as the
/// simulator's checkers); `None` if the bytes are not a hint.
pub fn stored_hint_object(bytes: &[u8]) -> Option<(Vec<u8>, Object)> {
    decode_stored(bytes).ok().map(|h| (h.key, h.object))
}
