//! The hints sub-machine: writes this node holds for replicas that were down.
//!
//! A coordinator that finds a replica down sends the write to a fallback with
//! [`HintsMessage::Store`]; the fallback stores it durably in the store's `hints` space (one
//! entry per write, keyed by the replica and a local sequence number) and acknowledges it then.
//! Every [`super::DataConfig::hint_interval`] the sub-machine offers durable hints, a batch at a
//! time, to each owner that SWIM holds reachable, as a [`ReplicaMessage::Merge`]; it deletes them
//! only once the owner acknowledged that it merged them durably. A hint for a node that has left
//! the ring goes to the key's current replicas instead. Hints survive restarts: the index is
//! rebuilt from the store when the node starts. This sub-machine never touches the data space.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{debug, error, info, warn};

use super::coordinator::CoordinatorMessage;
use super::object::Object;
use super::replica::{MergeEntry, MergeReply, ReplicaMessage};
use super::Effects;
use crate::id::NodeId;
use crate::protocol;
use crate::storage::{hint_key, split_hint_key, ReadStore, Space, StoreError};

/// A delivery not acknowledged within this long is offered again.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

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
    },
    /// The sender durably merged delivery `batch`.
    Delivered {
        /// The delivery.
        batch: u64,
    },
}

/// Timers of the hints sub-machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HintsTimer {
    /// Time to offer hints to owners that are reachable.
    Deliver,
}

/// A hint: the node it is for, and its number.
type HintId = (NodeId, u64);

/// A hint as stored.
#[derive(Debug, Serialize, Deserialize)]
struct StoredHint {
    #[serde(with = "serde_bytes")]
    key: Vec<u8>,
    object: Object,
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
}

impl Hints {
    /// The hints sub-machine, with the index of the hints already in `store`.
    pub(crate) fn new(
        store: Box<dyn ReadStore>,
        interval: Duration,
        batch_max: usize,
    ) -> Result<Self, StoreError> {
        let mut held: BTreeMap<NodeId, BTreeMap<u64, u64>> = BTreeMap::new();
        let mut next_seq = 1;
        for (k, _) in store.scan(Space::Hints, &[], &[], usize::MAX)? {
            match split_hint_key(&k) {
                Some((target, seq)) => {
                    held.entry(target).or_default().insert(seq, 0);
                    next_seq = next_seq.max(seq + 1);
                }
                None => warn!(len = k.len(), "ignoring a malformed hint key"),
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
            next_batch: 1,
            in_flight: BTreeMap::new(),
            offered: BTreeSet::new(),
        })
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
            } => {
                let bytes = match protocol::encode(&StoredHint { key, object }) {
                    Ok(b) => b,
                    Err(e) => {
                        warn!(error = %e, "cannot encode a hint");
                        return;
                    }
                };
                let seq = self.next_seq;
                self.next_seq += 1;
                let at = fx.journal.staging_seq();
                fx.journal
                    .batch()
                    .put(Space::Hints, hint_key(target, seq), bytes);
                self.held.entry(target).or_default().insert(seq, at);
                if req != 0 {
                    fx.after_durable(at, from, CoordinatorMessage::Ack { req }.into());
                }
            }
            HintsMessage::Delivered { batch } => {
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
                for (target, seq) in d.hints {
                    self.offered.remove(&(target, seq));
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
        let durable = fx.journal.durable_seq();
        let in_ring = |n: NodeId| fx.topo.ring.as_ref().is_some_and(|r| r.contains(n));
        let targets: Vec<NodeId> = self.held.keys().copied().collect();
        let mut batches: BTreeMap<NodeId, Vec<(HintId, MergeEntry)>> = BTreeMap::new();
        for target in targets {
            let owner_gone = !in_ring(target) && fx.topo.ring.is_some();
            if !owner_gone && (!fx.topo.is_alive(target) || busy.contains(&target)) {
                continue;
            }
            let ready: Vec<u64> = self.held[&target]
                .iter()
                .filter(|&(&seq, &at)| at <= durable && !self.offered.contains(&(target, seq)))
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
                // A hint for a node that has left the ring goes to the key's current replicas.
                let to = if owner_gone {
                    let p = fx.topo.partition(&entry.key);
                    match fx
                        .topo
                        .primaries(p)
                        .into_iter()
                        .find(|&n| fx.topo.is_alive(n) && !busy.contains(&n))
                    {
                        Some(n) => n,
                        None => continue,
                    }
                } else {
                    target
                };
                let batch = batches.entry(to).or_default();
                if batch.len() < self.batch_max {
                    batch.push(((target, seq), entry));
                }
            }
        }
        for (to, items) in batches {
            if items.is_empty() {
                continue;
            }
            let batch = self.next_batch;
            self.next_batch += 1;
            let (hints, entries): (Vec<_>, Vec<_>) = items.into_iter().unzip();
            self.offered.extend(hints.iter().copied());
            debug!(%to, hints = hints.len(), batch, "handing hints back");
            // `to` may be this node: a hint for a departed owner whose key it now replicates.
            fx.send(
                to,
                ReplicaMessage::Merge {
                    reply: MergeReply::Hints { batch },
                    entries,
                }
                .into(),
            );
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

    fn load(&self, target: NodeId, seq: u64) -> Result<Option<MergeEntry>, String> {
        let Some(bytes) = self
            .store
            .get(Space::Hints, &hint_key(target, seq))
            .map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        let h: StoredHint =
            protocol::decode_with_limit(&bytes, super::object::OBJECT_BYTES_MAX + 4096)
                .map_err(|e| e.to_string())?;
        Ok(Some(MergeEntry {
            key: h.key,
            object: h.object,
        }))
    }
}
