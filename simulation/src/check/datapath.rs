//! The data path's acknowledgement contract, checked at every message a node sends, not only
//! at the end of a run.
//!
//! A replica acknowledges a write (`CoordinatorMessage::Ack`) only once its storage reports the
//! write durable, and a fallback acknowledges a hint only once the hint is durable: a crash
//! right after the acknowledgement must keep what it acknowledged. The end-of-run checkers see
//! a violation of this only when a crash falls in the gap and the other copies are lost too;
//! [`DataPathMonitor`] sees it the moment the acknowledgement leaves the node:
//!
//! - it remembers each replica write and hint store delivered with a request number, with the
//!   state it carries;
//! - when the receiver sends `Ack` for that request, the state must be covered by what its
//!   disk would keep after a crash now; otherwise the acknowledgement came before durability:
//!   a violation. (Unless the node deleted the key since the delivery — a partition dropped,
//!   a tombstone purged — which proves nothing either way.)
//!
//! A hint holder deletes a hint only once a node acknowledged that it durably stored the hint's
//! state (the owner merged it, or another node adopted it): a hint deleted on sending, or on an
//! acknowledgement for something else, is a write whose last copy may vanish. The monitor
//! checks this at every hint deletion, against what the holder was acknowledged:
//!
//! - it remembers each hint delivery the holder sends (`ReplicaMessage::Merge` answered with
//!   `HintsMessage::Delivered`, or `HintsMessage::Adopt`) with the keys and states it carries;
//! - when the holder receives `Delivered` for that delivery from the node it went to, the
//!   entries not refused count as acknowledged (the receiver sends `Delivered` only once they
//!   are durable there);
//! - when the holder deletes a hint, the state the hint holds (read from its disk just before
//!   the deletion applies) must be covered by what this process was acknowledged for the key;
//!   otherwise: a violation. The only excuse is the holder's own durable data covering it — a
//!   hint for a departed owner handed to the holder itself, which the node does without a
//!   message (`hints.rs` deletes hints nowhere else).
//!
//! A coordinator answers a write as done only once `w` distinct nodes acknowledged it, its
//! own acknowledgement counting only once its copy is durable. That acknowledgement never
//! crosses the network, so the checks above cannot see it counted early or twice; the
//! `replies` check judges every successful reply against the disks of the nodes it names.
//!
//! It decodes messages the way the node does and reads the simulated disk; it changes nothing.

use std::collections::HashMap;
use std::time::Duration;

use chorus::node::{
    CoordinatorMessage, HintsMessage, MergeReply, Object, PeerMessage, ReplicaMessage,
};
use chorus::ring::partition_of;
use chorus::storage::{
    data_key, split_hint_key, MemoryStore, ReadStore, Space, WriteBatch, WriteOp,
};
use chorus::NodeId;
use serde::Deserialize;

use super::Violation;

mod replies;
pub use replies::{Asked, REPLY_CHECKER};

const CHECKER: &str = "data-path";

/// The name of the hint-deletion contract's violations.
const HINT_CHECKER: &str = "hint-deletion";

/// Most hint deliveries remembered at once (deliveries that time out are never acknowledged;
/// the oldest are forgotten beyond this).
const OFFERS_MAX: usize = 100_000;

/// A hint delivery as sent: the node it went to, and the keys and states it carries.
type Offer = (NodeId, Vec<(Vec<u8>, Object)>);

/// Most violations kept.
const VIOLATIONS_MAX: usize = 32;

/// Most deliveries remembered at once (writes refused or lost are never acknowledged; the
/// oldest are forgotten beyond this).
const EXPECTED_MAX: usize = 200_000;

/// What an acknowledgement must prove durable, and when it was delivered.
#[derive(Debug)]
struct Expected {
    at: Duration,
    what: Expect,
}

#[derive(Debug)]
enum Expect {
    /// A replica write: the key's state covers `object`.
    Write { key: Vec<u8>, object: Object },
    /// A hint for `target`: one of the hints held for it, of `key`, covers `object`.
    Hint {
        target: NodeId,
        key: Vec<u8>,
        object: Object,
    },
}

/// A hint as the node stores it (the same fields in the same order as the core's).
#[derive(Deserialize)]
struct StoredHint {
    #[serde(with = "serde_bytes")]
    key: Vec<u8>,
    object: Object,
    #[allow(dead_code)]
    holders: Vec<NodeId>,
}

/// Watches the data path's acknowledgements; see the module documentation.
#[derive(Debug, Default)]
pub struct DataPathMonitor {
    /// By (receiving slot, its process epoch, sender, request).
    expected: HashMap<(usize, u64, NodeId, u64), Expected>,
    /// When each slot last deleted each key of its data space.
    deleted: HashMap<(usize, Vec<u8>), Duration>,
    /// When each slot last deleted a hint for each target.
    hints_deleted: HashMap<(usize, NodeId), Duration>,
    /// When each slot last deleted a hint of each key (for any target).
    hint_keys_deleted: HashMap<(usize, Vec<u8>), Duration>,
    /// Each slot's ring partition count.
    partitions: HashMap<usize, u32>,
    /// Insertion order of `expected`, to forget the oldest beyond the bound.
    order: std::collections::VecDeque<(usize, u64, NodeId, u64)>,
    /// Hint deliveries sent, by (holder slot, its process epoch, delivery): the node they went
    /// to and the keys and states they carry.
    offers: HashMap<(usize, u64, u64), Offer>,
    /// Insertion order of `offers`.
    offers_order: std::collections::VecDeque<(usize, u64, u64)>,
    /// Per (holder slot, process epoch, key): the merged states some node acknowledged
    /// storing durably for this holder's hint deliveries.
    hints_acked: HashMap<(usize, u64, Vec<u8>), Object>,
    /// Hint deletions checked so far.
    hint_deletes_checked: u64,
    /// Successful client replies checked against their acknowledgers' disks so far.
    replies_checked: u64,
    violations: Vec<Violation>,
    dropped: usize,
    checked: u64,
}

impl DataPathMonitor {
    /// A monitor that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// The violations found so far (at most [`VIOLATIONS_MAX`]).
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// Violations found beyond those kept.
    pub fn dropped(&self) -> usize {
        self.dropped
    }

    /// Acknowledgements checked against the disk so far.
    pub fn checked(&self) -> u64 {
        self.checked
    }

    /// Successful write and update replies checked against their acknowledgers' disks so far.
    pub fn replies_checked(&self) -> u64 {
        self.replies_checked
    }

    /// Hint deletions checked against the acknowledgements so far.
    pub fn hint_deletes_checked(&self) -> u64 {
        self.hint_deletes_checked
    }

    fn report(&mut self, v: Violation) {
        if self.violations.len() < VIOLATIONS_MAX {
            self.violations.push(v);
        } else {
            self.dropped += 1;
        }
    }

    /// Process `epoch` of slot `node` writes `batch` to its disk at `at`; `disk` is its disk
    /// just before (deletes excuse what they remove from the acknowledgement check; a hint
    /// deleted must have been acknowledged).
    pub fn persisted(
        &mut self,
        node: usize,
        epoch: u64,
        batch: &WriteBatch,
        at: Duration,
        disk: &MemoryStore,
    ) {
        for op in batch.ops() {
            if let WriteOp::Delete {
                space: Space::Hints,
                key,
            } = op
            {
                self.hint_deleted(node, epoch, key, at, disk);
            }
        }
        for op in batch.ops() {
            match op {
                WriteOp::Delete {
                    space: Space::Data,
                    key,
                } => {
                    self.deleted.insert((node, key.clone()), at);
                }
                WriteOp::Delete {
                    space: Space::Hints,
                    key,
                } => {
                    if let Some((target, _)) = split_hint_key(key) {
                        self.hints_deleted.insert((node, target), at);
                    }
                }
                _ => {}
            }
        }
    }

    /// Checks the deletion of hint `hint_key` by process `epoch` of slot `node`.
    fn hint_deleted(
        &mut self,
        node: usize,
        epoch: u64,
        hint_key: &[u8],
        at: Duration,
        disk: &MemoryStore,
    ) {
        let Some((target, seq)) = split_hint_key(hint_key) else {
            return;
        };
        // Deleting what is not there (any more) deletes nothing.
        let Some((key, object)) = disk
            .get(Space::Hints, hint_key)
            .ok()
            .flatten()
            .and_then(|b| chorus::node::hints::stored_hint_object(&b))
        else {
            return;
        };
        self.hint_keys_deleted.insert((node, key.clone()), at);
        self.hint_deletes_checked += 1;
        let acked = self.hints_acked.get(&(node, epoch, key.clone()));
        if covers(acked, &object) {
            return;
        }
        // Handed to the holder itself (a departed owner's key it now replicates).
        let partitions = self.partitions.get(&node).copied().unwrap_or(0);
        if partitions > 0 {
            let own = disk
                .get_durable(Space::Data, &data_key(partition_of(&key, partitions), &key))
                .and_then(|b| Object::decode(b).ok());
            if covers(own.as_ref(), &object) {
                return;
            }
        }
        self.report(Violation {
            checker: HINT_CHECKER,
            at,
            observer: Some(node),
            subject: None,
            message: format!(
                "deleted hint {seq} of {:?} for {target} before any node acknowledged storing it durably: a crash of the holder now loses the write",
                String::from_utf8_lossy(&key)
            ),
        });
    }

    /// Slot `node` runs with `partitions` ring partitions (from its configuration).
    pub fn partitions(&mut self, node: usize, partitions: u32) {
        self.partitions.insert(node, partitions);
    }

    /// Process `epoch` of slot `to` received `bytes` from node `from` at `at`.
    pub fn delivered(&mut self, at: Duration, to: usize, epoch: u64, from: NodeId, bytes: &[u8]) {
        if matches!(tag(bytes), Some(("Hints", "Delivered"))) {
            if let Ok(PeerMessage::Hints(HintsMessage::Delivered { batch, refused })) =
                chorus::protocol::decode::<PeerMessage>(bytes)
            {
                self.hints_delivered(to, epoch, from, batch, &refused);
            }
            return;
        }
        if !matches!(tag(bytes), Some(("Replica", "Write") | ("Hints", "Store"))) {
            return;
        }
        let Ok(message) = chorus::protocol::decode::<PeerMessage>(bytes) else {
            return;
        };
        let (req, expect) = match message {
            PeerMessage::Replica(ReplicaMessage::Write { req, key, object }) if req != 0 => {
                (req, Expect::Write { key, object })
            }
            PeerMessage::Hints(HintsMessage::Store {
                req,
                target,
                key,
                object,
                ..
            }) if req != 0 => (
                req,
                Expect::Hint {
                    target,
                    key,
                    object,
                },
            ),
            _ => return,
        };
        let id = (to, epoch, from, req);
        let expected = Expected { at, what: expect };
        if self.expected.insert(id, expected).is_none() {
            self.order.push_back(id);
        }
        while self.expected.len() > EXPECTED_MAX {
            match self.order.pop_front() {
                Some(old) => {
                    self.expected.remove(&old);
                }
                None => break,
            }
        }
    }

    /// Holder `to` (process `epoch`) was told by `from` that delivery `batch` is durable there,
    /// but for the entries at the positions in `refused`.
    fn hints_delivered(
        &mut self,
        to: usize,
        epoch: u64,
        from: NodeId,
        batch: u64,
        refused: &[u32],
    ) {
        let id = (to, epoch, batch);
        // An acknowledgement from another node than the delivery went to proves nothing.
        if self.offers.get(&id).is_none_or(|(dest, _)| *dest != from) {
            return;
        }
        let Some((_, entries)) = self.offers.remove(&id) else {
            return;
        };
        for (i, (key, object)) in entries.into_iter().enumerate() {
            if refused.contains(&u32::try_from(i).unwrap_or(u32::MAX)) {
                continue;
            }
            match self.hints_acked.entry((to, epoch, key)) {
                std::collections::hash_map::Entry::Occupied(mut e) => {
                    e.get_mut().merge(&object);
                }
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(object);
                }
            }
        }
    }

    /// Remembers a hint delivery process `epoch` of slot `from` sends to `to`.
    fn hints_offered(&mut self, from: usize, epoch: u64, to: NodeId, bytes: &[u8]) {
        let (batch, entries) = match chorus::protocol::decode::<PeerMessage>(bytes) {
            Ok(PeerMessage::Replica(ReplicaMessage::Merge {
                reply: MergeReply::Hints { batch },
                entries,
            })) => (
                batch,
                entries.into_iter().map(|e| (e.key, e.object)).collect(),
            ),
            Ok(PeerMessage::Hints(HintsMessage::Adopt { batch, hints })) => (
                batch,
                hints
                    .into_iter()
                    .map(|h| (h.entry.key, h.entry.object))
                    .collect(),
            ),
            _ => return,
        };
        let id = (from, epoch, batch);
        if self.offers.insert(id, (to, entries)).is_none() {
            self.offers_order.push_back(id);
        }
        while self.offers.len() > OFFERS_MAX {
            match self.offers_order.pop_front() {
                Some(old) => {
                    self.offers.remove(&old);
                }
                None => break,
            }
        }
    }

    /// Process `epoch` of slot `from` sends `bytes` to node `to`; `disk` is its disk now and
    /// `partitions` its ring's partition count.
    #[allow(clippy::too_many_arguments)]
    pub fn sending(
        &mut self,
        at: Duration,
        from: usize,
        epoch: u64,
        to: NodeId,
        bytes: &[u8],
        disk: &MemoryStore,
        partitions: u32,
    ) {
        match tag(bytes) {
            Some(("Coordinator", "Ack" | "Refused")) => {}
            Some(("Replica", "Merge") | ("Hints", "Adopt")) => {
                self.hints_offered(from, epoch, to, bytes);
                return;
            }
            _ => return,
        }
        let req = match chorus::protocol::decode::<PeerMessage>(bytes) {
            Ok(PeerMessage::Coordinator(CoordinatorMessage::Ack { req })) => req,
            Ok(PeerMessage::Coordinator(CoordinatorMessage::Refused { req, .. })) => {
                self.expected.remove(&(from, epoch, to, req));
                return;
            }
            _ => return,
        };
        // An ack for a request this slot was never sent (the coordinator's own, a fallback
        // that kept a hint for a write it got as a replica...) is not judged here.
        let Some(Expected { at: since, what }) = self.expected.remove(&(from, epoch, to, req))
        else {
            return;
        };
        self.checked += 1;
        let deleted_since = |key: &[u8]| {
            self.deleted
                .get(&(from, key.to_vec()))
                .is_some_and(|&d| d >= since)
        };
        let (durable, excused, what) = match &what {
            Expect::Write { key, object } => {
                let skey = data_key(partition_of(key, partitions), key);
                let durable = disk
                    .get_durable(Space::Data, &skey)
                    .and_then(|b| Object::decode(b).ok());
                (
                    covers(durable.as_ref(), object),
                    deleted_since(&skey),
                    format!("a write of {:?}", String::from_utf8_lossy(key)),
                )
            }
            Expect::Hint {
                target,
                key,
                object,
            } => {
                let prefix = target.get().to_be_bytes();
                let durable = disk
                    .durable_with_prefix(Space::Hints, &prefix)
                    .filter_map(|(_, v)| chorus::protocol::decode::<StoredHint>(v).ok())
                    .any(|h| &h.key == key && covers(Some(&h.object), object));
                // A hint delivered (and deleted) since is excused.
                let excused = self
                    .hints_deleted
                    .get(&(from, *target))
                    .is_some_and(|&d| d >= since);
                (
                    durable,
                    excused,
                    format!("a hint of {:?} for {target}", String::from_utf8_lossy(key)),
                )
            }
        };
        if !durable && !excused {
            let v = Violation {
                checker: CHECKER,
                at,
                observer: Some(from),
                subject: None,
                message: format!(
                    "acknowledged {what} (request {req} of {to}) before its storage reported it durable: a crash now loses it"
                ),
            };
            if self.violations.len() < VIOLATIONS_MAX {
                self.violations.push(v);
            } else {
                self.dropped += 1;
            }
        }
    }
}

/// The message's variant and its inner variant, read from the envelope's first bytes (magic,
/// version, then MessagePack maps of one entry keyed by the variant's name), so that only the
/// messages this monitor judges are decoded. `None` for anything else; a name this does not
/// recognise only means the message is not judged.
fn tag(bytes: &[u8]) -> Option<(&str, &str)> {
    fn entry(b: &[u8]) -> Option<(&str, &[u8])> {
        // A map of one entry, whose key is a short string.
        let (&map, rest) = b.split_first()?;
        let (&len, rest) = rest.split_first()?;
        if map != 0x81 || !(0xa0..=0xbf).contains(&len) {
            return None;
        }
        let n = usize::from(len - 0xa0);
        let name = std::str::from_utf8(rest.get(..n)?).ok()?;
        Some((name, &rest[n..]))
    }
    let (outer, rest) = entry(bytes.get(3..)?)?;
    let (inner, _) = entry(rest)?;
    Some((outer, inner))
}

/// Whether `held` already holds everything `offered` brings (its data; operation-log rows
/// aside).
fn covers(held: Option<&Object>, offered: &Object) -> bool {
    let Some(held) = held else {
        return false;
    };
    let mut merged = held.clone();
    merged.merge(offered);
    merged.same_data(held)
}

#[cfg(test)]
mod tests {
    use chorus::node::{CoordinatorMessage, HintsMessage, PeerMessage, ReplicaMessage};

    use super::*;

    /// The cheap tag agrees with the real encoding, so no judged message is skipped.
    #[test]
    fn tags_name_the_variants_of_encoded_messages() {
        let cases: Vec<(PeerMessage, (&str, &str))> = vec![
            (
                CoordinatorMessage::Ack { req: 7 }.into(),
                ("Coordinator", "Ack"),
            ),
            (
                ReplicaMessage::Write {
                    req: 1,
                    key: b"k".to_vec(),
                    object: Object::Register(Default::default()),
                }
                .into(),
                ("Replica", "Write"),
            ),
            (
                ReplicaMessage::Read {
                    req: 1,
                    key: b"k".to_vec(),
                    look: false,
                }
                .into(),
                ("Replica", "Read"),
            ),
            (
                HintsMessage::Delivered {
                    batch: 1,
                    refused: Vec::new(),
                }
                .into(),
                ("Hints", "Delivered"),
            ),
        ];
        for (m, want) in cases {
            let bytes = chorus::protocol::encode(&m).unwrap();
            assert_eq!(tag(&bytes), Some(want), "{m:?}");
        }
        assert_eq!(tag(b"CH"), None);
    }
}
