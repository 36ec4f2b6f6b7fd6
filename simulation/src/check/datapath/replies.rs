//! The coordinator's side of the acknowledgement contract, checked at every successful client
//! reply: a write or CRDT update answered as done names, in `acked_by`, at least `w` distinct
//! nodes, and each of them holds it durably at that moment — in its data (a replica) or in a
//! hint (a fallback). The coordinator's own acknowledgement never crosses the network, so the
//! message check of [`super::DataPathMonitor::sending`] cannot see it counted too early or
//! twice; this check can. "Holds it" is judged from the reply itself: a register write's dot
//! is in the causal context of the node's durable copy, a CRDT update's operation id is in its
//! durable operation log. A node that deleted its copy of the key, or a hint of it, since the
//! request began proves nothing either way and is excused.
//!
//! What it does not see: whether an acknowledger holds the write *because of this request*
//! (anti-entropy or a later write may have brought it), the default `w` of a request the
//! receiving node forwarded (the replica it went to resolves it; judged as 1 here), and
//! updates in runs with the tiny operation-log profile (ids are forgotten within a request).

use std::time::Duration;

use chorus::causality::Dot;
use chorus::node::{ClientReply, Object};
use chorus::ring::partition_of;
use chorus::storage::{data_key, MemoryStore, Space};
use chorus::NodeId;

use super::{DataPathMonitor, Violation};

/// The name of this contract's violations.
pub const REPLY_CHECKER: &str = "acknowledged-by";

/// What a client asked of a coordinator, as far as its success must prove it.
#[derive(Clone, Debug)]
pub struct Asked {
    /// The key.
    pub key: Vec<u8>,
    /// The acknowledgements the write waits for (the request's `w`, or the node's default).
    pub w: usize,
    /// When the request reached the coordinator.
    pub at: Duration,
}

/// What one acknowledging node's durable copy must show.
enum Proof<'a> {
    Dot(Dot),
    OpId(&'a str),
}

impl Proof<'_> {
    fn shown_by(&self, object: &Object) -> bool {
        match self {
            Proof::Dot(dot) => object
                .part("register")
                .and_then(|p| p.as_register().map(|r| r.context().contains(*dot)))
                .unwrap_or(false),
            Proof::OpId(id) => object.knows_op(id),
        }
    }
}

impl DataPathMonitor {
    /// Slot `coordinator` answered `reply` to `asked` at `at`. `ackers` finds, for a node id,
    /// its slot and its disk now. `op_ids_kept`: operation ids are remembered at least as long
    /// as a request runs (not the simulator's tiny operation-log profile), so an update can be
    /// judged by its id.
    pub fn replied<'d>(
        &mut self,
        at: Duration,
        coordinator: usize,
        asked: &Asked,
        reply: &ClientReply,
        op_ids_kept: bool,
        ackers: impl Fn(NodeId) -> Option<(usize, &'d MemoryStore)>,
    ) {
        let (proof, acks, acked_by) = match reply {
            ClientReply::Written(w) => (Proof::Dot(w.dot), w.acks, &w.acked_by),
            ClientReply::Updated(u) if op_ids_kept && !u.op_id.is_empty() => {
                (Proof::OpId(&u.op_id), u.acks, &u.acked_by)
            }
            _ => return,
        };
        self.replies_checked += 1;
        let key = String::from_utf8_lossy(&asked.key).into_owned();
        let mut distinct = acked_by.clone();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() != acked_by.len() || acks != acked_by.len() || acks < asked.w {
            self.report(Violation {
                checker: REPLY_CHECKER,
                at,
                observer: Some(coordinator),
                subject: None,
                message: format!(
                    "answered a write of {key:?} as done with {acks} acknowledgements from {acked_by:?} ({} distinct) for w={}",
                    distinct.len(),
                    asked.w
                ),
            });
            return;
        }
        for &node in acked_by {
            let Some((slot, disk)) = ackers(node) else {
                self.report(Violation {
                    checker: REPLY_CHECKER,
                    at,
                    observer: Some(coordinator),
                    subject: None,
                    message: format!(
                        "answered a write of {key:?} as done counting an acknowledgement from {node}, which is no node of the cluster"
                    ),
                });
                continue;
            };
            if self.holds(slot, disk, asked, &proof) {
                continue;
            }
            self.report(Violation {
                checker: REPLY_CHECKER,
                at,
                observer: Some(coordinator),
                subject: Some(slot),
                message: format!(
                    "answered a write of {key:?} as done counting {node}'s acknowledgement, but {node} does not hold it durably (neither in its data nor in a hint): a crash now loses it"
                ),
            });
        }
    }

    /// Whether slot `slot`'s durable data or hints show `proof` for the key, or it deleted
    /// the key or a hint since the request began.
    fn holds(&self, slot: usize, disk: &MemoryStore, asked: &Asked, proof: &Proof<'_>) -> bool {
        let partitions = self.partitions.get(&slot).copied().unwrap_or(0);
        if partitions > 0 {
            let skey = data_key(partition_of(&asked.key, partitions), &asked.key);
            let data = disk
                .get_durable(Space::Data, &skey)
                .and_then(|b| Object::decode(b).ok());
            if data.is_some_and(|o| proof.shown_by(&o)) {
                return true;
            }
            if self
                .deleted
                .get(&(slot, skey))
                .is_some_and(|&d| d >= asked.at)
            {
                return true;
            }
        }
        let in_hint = disk
            .durable_with_prefix(Space::Hints, &[])
            .filter_map(|(_, v)| chorus::node::hints::stored_hint_object(v))
            .any(|(k, o)| k == asked.key && proof.shown_by(&o));
        in_hint
            || self
                .hint_keys_deleted
                .get(&(slot, asked.key.clone()))
                .is_some_and(|&d| d >= asked.at)
    }
}

#[cfg(test)]
mod tests {
    use chorus::causality::{Register, VersionVector};
    use chorus::crdt::{OpLogPolicy, RowClaim, Site};
    use chorus::node::{Context, CrdtOp, CrdtValue, UpdateResult, WriteResult};
    use chorus::storage::WriteBatch;

    use super::*;

    const PARTITIONS: u32 = 8;

    fn id(n: u64) -> NodeId {
        NodeId::new(n)
    }

    /// A monitor that knows slots 0..3 run with [`PARTITIONS`] partitions.
    fn monitor() -> DataPathMonitor {
        let mut m = DataPathMonitor::new();
        for slot in 0..3 {
            m.partitions(slot, PARTITIONS);
        }
        m
    }

    fn asked(w: usize) -> Asked {
        Asked {
            key: b"k".to_vec(),
            w,
            at: Duration::from_secs(1),
        }
    }

    /// A disk holding `object` as its copy of `k`, synced (`durable`) or not.
    fn disk_with(object: &Object, durable: bool) -> MemoryStore {
        let mut disk = MemoryStore::new();
        let mut batch = WriteBatch::default();
        batch.put(
            Space::Data,
            data_key(partition_of(b"k", PARTITIONS), b"k"),
            object.encode().unwrap(),
        );
        disk.write_unsynced(&batch);
        if durable {
            disk.sync();
        }
        disk
    }

    /// A register write by node 1 and the reply naming `acked_by`.
    fn written(acked_by: &[u64]) -> (Object, ClientReply) {
        let mut r = Register::new();
        let dot = r.put(id(1), &VersionVector::new(), b"v".to_vec());
        let reply = ClientReply::Written(WriteResult {
            values: vec![b"v".to_vec()],
            context: Context::new(b"k", r.context()),
            acks: acked_by.len(),
            acked_by: acked_by.iter().map(|&n| id(n)).collect(),
            dot,
        });
        (Object::Register(r), reply)
    }

    fn judge(m: &mut DataPathMonitor, reply: &ClientReply, w: usize, disks: &[MemoryStore]) {
        m.replied(Duration::from_secs(2), 0, &asked(w), reply, true, |n| {
            let slot = usize::try_from(n.get() - 1).ok()?;
            disks.get(slot).map(|d| (slot, d))
        });
    }

    #[test]
    fn a_write_held_durably_by_w_acknowledgers_passes() {
        let (object, reply) = written(&[1, 2]);
        let disks = [disk_with(&object, true), disk_with(&object, true)];
        let mut m = monitor();
        judge(&mut m, &reply, 2, &disks);
        assert!(m.violations().is_empty(), "{:?}", m.violations());
        assert_eq!(m.replies_checked(), 1);
    }

    /// The planted bug this check exists for: the coordinator's own acknowledgement counted
    /// twice, so a success names fewer nodes than `w`.
    #[test]
    fn a_success_with_fewer_acknowledgers_than_w_is_a_violation() {
        let (object, reply) = written(&[1]);
        let disks = [disk_with(&object, true)];
        let mut m = monitor();
        judge(&mut m, &reply, 2, &disks);
        assert_eq!(m.violations().len(), 1);
        assert_eq!(m.violations()[0].checker, REPLY_CHECKER);
        assert!(m.violations()[0].message.contains("w=2"));
    }

    #[test]
    fn an_acknowledger_whose_copy_is_not_durable_is_a_violation() {
        let (object, reply) = written(&[1, 2]);
        let disks = [disk_with(&object, true), disk_with(&object, false)];
        let mut m = monitor();
        judge(&mut m, &reply, 2, &disks);
        assert_eq!(m.violations().len(), 1);
        assert_eq!(m.violations()[0].subject, Some(1));
    }

    #[test]
    fn a_copy_without_the_writes_dot_does_not_prove_it() {
        let (object, reply) = written(&[1, 2]);
        let mut other = Register::new();
        other.put(id(2), &VersionVector::new(), b"older".to_vec());
        let disks = [
            disk_with(&object, true),
            disk_with(&Object::Register(other), true),
        ];
        let mut m = monitor();
        judge(&mut m, &reply, 2, &disks);
        assert_eq!(m.violations().len(), 1);
    }

    #[test]
    fn a_durable_hint_counts_as_holding_the_write() {
        let (object, reply) = written(&[1, 2]);
        let mut fallback = MemoryStore::new();
        /// A hint as the node stores it (the fields of the core's, in order).
        #[derive(serde::Serialize)]
        struct Hint<'a> {
            #[serde(with = "serde_bytes")]
            key: &'a [u8],
            object: &'a Object,
            holders: Vec<NodeId>,
        }
        let bytes = chorus::protocol::encode(&Hint {
            key: b"k",
            object: &object,
            holders: Vec::new(),
        })
        .unwrap();
        let mut batch = WriteBatch::default();
        batch.put(Space::Hints, chorus::storage::hint_key(id(3), 1), bytes);
        fallback.write_unsynced(&batch);
        fallback.sync();
        let disks = [disk_with(&object, true), fallback];
        let mut m = monitor();
        judge(&mut m, &reply, 2, &disks);
        assert!(m.violations().is_empty(), "{:?}", m.violations());
    }

    #[test]
    fn an_update_is_judged_by_its_operation_id() {
        let op = CrdtOp::GCounter { increment: 1 };
        let site = Site {
            node: id(1),
            replicas: &[],
            claim: RowClaim::State,
        };
        let (counter, _) =
            Object::apply_update(None, id(1), &op, "op-1", 0, OpLogPolicy::default(), site)
                .unwrap();
        let reply = ClientReply::Updated(UpdateResult {
            type_name: "gcounter".into(),
            value: CrdtValue::Counter(1),
            context: None,
            op_id: "op-1".into(),
            replayed: false,
            notes: Vec::new(),
            acks: 2,
            acked_by: vec![id(1), id(2)],
        });
        let fresh = Object::GCounter(Default::default());
        let disks = [disk_with(&counter, true), disk_with(&fresh, true)];
        let mut m = monitor();
        judge(&mut m, &reply, 2, &disks);
        assert_eq!(m.violations().len(), 1, "{:?}", m.violations());
        assert_eq!(m.violations()[0].subject, Some(1));
    }
}
