//! The per-step monitors fail on the violations they exist for, fed by hand: a hint deleted
//! before anyone acknowledged storing it, a dot minted twice. And the pause nemesis: a default
//! run pauses a member, removes it while paused, resumes it, and passes.

use std::time::Duration;

use chorus::causality::{Register, VersionVector};
use chorus::node::{HintsMessage, MergeEntry, MergeReply, Object, PeerMessage, ReplicaMessage};
use chorus::ring::partition_of;
use chorus::storage::{data_key, hint_key, MemoryStore, Space, WriteBatch};
use chorus::NodeId;
use chorus_sim::check::datapath::DataPathMonitor;
use chorus_sim::check::dots::DotMonitor;
use serde::Serialize;

const PARTITIONS: u32 = 64;

fn t(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

fn register(actor: u64, value: &str) -> Object {
    let mut r = Register::new();
    r.put(
        NodeId::new(actor),
        &VersionVector::new(),
        value.as_bytes().to_vec(),
    );
    Object::Register(r)
}

/// A hint as the node stores it.
#[derive(Serialize)]
struct StoredHint {
    #[serde(with = "serde_bytes")]
    key: Vec<u8>,
    object: Object,
    holders: Vec<NodeId>,
}

/// The holder (slot 0, process 1) with one durable hint of `k` for `owner`.
fn holder_disk(owner: NodeId, object: &Object) -> MemoryStore {
    let mut disk = MemoryStore::new();
    let mut b = WriteBatch::default();
    let bytes = chorus::protocol::encode(&StoredHint {
        key: b"k".to_vec(),
        object: object.clone(),
        holders: Vec::new(),
    })
    .unwrap();
    b.put(Space::Hints, hint_key(owner, 1), bytes);
    disk.write_unsynced(&b);
    disk.sync();
    disk
}

fn delete_hint(owner: NodeId) -> WriteBatch {
    let mut b = WriteBatch::default();
    b.delete(Space::Hints, hint_key(owner, 1));
    b
}

fn merge(batch: u64, object: &Object) -> Vec<u8> {
    let m: PeerMessage = ReplicaMessage::Merge {
        reply: MergeReply::Hints { batch },
        entries: vec![MergeEntry {
            key: b"k".to_vec(),
            object: object.clone(),
        }],
    }
    .into();
    chorus::protocol::encode(&m).unwrap()
}

fn delivered(batch: u64, refused: Vec<u32>) -> Vec<u8> {
    let m: PeerMessage = HintsMessage::Delivered { batch, refused }.into();
    chorus::protocol::encode(&m).unwrap()
}

/// Holder slot 0 (process 1) offers its hint of `k` to `owner` as delivery 7, then `events`
/// happen, then it deletes the hint: the hint-deletion violations found.
fn hint_run(events: impl FnOnce(&mut DataPathMonitor, &[u8])) -> Vec<String> {
    let owner = NodeId::new(9);
    let object = register(3, "v");
    let disk = holder_disk(owner, &object);
    let mut m = DataPathMonitor::new();
    m.partitions(0, PARTITIONS);
    let offer = merge(7, &object);
    m.sending(t(1), 0, 1, owner, &offer, &disk, PARTITIONS);
    events(&mut m, &delivered(7, Vec::new()));
    m.persisted(0, 1, &delete_hint(owner), t(3), &disk);
    assert_eq!(m.hint_deletes_checked(), 1);
    m.violations()
        .iter()
        .filter(|v| v.checker == "hint-deletion")
        .map(|v| v.message.clone())
        .collect()
}

#[test]
fn a_hint_deleted_after_its_owner_acknowledged_it_is_fine() {
    let found = hint_run(|m, ack| m.delivered(t(2), 0, 1, NodeId::new(9), ack));
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn a_hint_deleted_when_sent_is_caught() {
    let found = hint_run(|_, _| {});
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].contains("before any node acknowledged storing it durably"),
        "{found:#?}"
    );
}

#[test]
fn an_acknowledgement_from_the_wrong_node_or_process_or_a_refusal_does_not_count() {
    // Another node than the delivery went to.
    let found = hint_run(|m, ack| m.delivered(t(2), 0, 1, NodeId::new(4), ack));
    assert_eq!(found.len(), 1, "another node: {found:#?}");
    // The holder's previous process sent the delivery; this one deletes.
    let found = hint_run(|m, ack| m.delivered(t(2), 0, 2, NodeId::new(9), ack));
    assert_eq!(found.len(), 1, "another process: {found:#?}");
    // The owner refused the entry (too large): it did not store it.
    let found = hint_run(|m, _| m.delivered(t(2), 0, 1, NodeId::new(9), &delivered(7, vec![0])));
    assert_eq!(found.len(), 1, "refused: {found:#?}");
}

#[test]
fn a_hint_the_holder_keeps_as_a_replica_itself_may_go() {
    // A hint for a departed owner the holder hands to itself: no message, its own durable data
    // covers the hint.
    let owner = NodeId::new(9);
    let object = register(3, "v");
    let mut disk = holder_disk(owner, &object);
    let mut b = WriteBatch::default();
    b.put(
        Space::Data,
        data_key(partition_of(b"k", PARTITIONS), b"k"),
        object.encode().unwrap(),
    );
    disk.write_unsynced(&b);
    disk.sync();
    let mut m = DataPathMonitor::new();
    m.partitions(0, PARTITIONS);
    m.persisted(0, 1, &delete_hint(owner), t(3), &disk);
    assert!(m.violations().is_empty(), "{:#?}", m.violations());
}

fn put(key: &str, object: &Object) -> WriteBatch {
    let mut b = WriteBatch::default();
    b.put(
        Space::Data,
        data_key(partition_of(key.as_bytes(), PARTITIONS), key.as_bytes()),
        object.encode().unwrap(),
    );
    b
}

#[test]
fn a_dot_minted_twice_is_caught_at_the_write() {
    let mut m = DotMonitor::new();
    // Actor 1 mints 1:1 for "k" naming "a"; another node stores the same state: fine.
    m.persisted(0, &put("k", &register(1, "a")), t(1));
    m.persisted(1, &put("k", &register(1, "a")), t(2));
    // The same dot of another key is another event.
    m.persisted(0, &put("j", &register(1, "b")), t(3));
    assert!(m.violations().is_empty(), "{:#?}", m.violations());
    assert_eq!(m.checked(), 3);
    // Actor 1 mints 1:1 for "k" again, naming "b": caught at this write.
    m.persisted(0, &put("k", &register(1, "b")), t(4));
    assert_eq!(m.violations().len(), 1, "{:#?}", m.violations());
    let v = &m.violations()[0];
    assert_eq!(v.at, t(4));
    assert!(v.message.contains("a dot was minted twice"), "{v}");
}

/// A default run pauses a member, has it removed by the operator while paused, resumes it, and
/// passes every checker (the members refuse the resumed node's data-path traffic and it stops),
/// with both per-step monitors at work.
#[test]
fn a_default_run_pauses_removes_and_resumes_a_member_and_passes() {
    let report = chorus_sim::sim::run(&chorus_sim::sim::RunConfig::new(7)).unwrap();
    assert!(report.passed(), "{}", chorus_sim::sim::summary(&report));
    let ops = report.history.ops();
    let done = |f: &dyn Fn(&chorus_sim::history::OpKind) -> Option<usize>| -> Vec<usize> {
        ops.iter()
            .filter(|o| o.outcome == Some(chorus_sim::history::Outcome::Ok))
            .filter_map(|o| f(&o.kind))
            .collect()
    };
    use chorus_sim::history::OpKind;
    let paused = done(&|k| match k {
        OpKind::Pause { node } => Some(*node),
        _ => None,
    });
    let resumed = done(&|k| match k {
        OpKind::Resume { node } => Some(*node),
        _ => None,
    });
    let removed = done(&|k| match k {
        OpKind::Remove { node, .. } => Some(*node),
        _ => None,
    });
    assert!(!paused.is_empty(), "seed 7 pauses a member");
    for n in &paused {
        assert!(resumed.contains(n), "n{n} resumed");
        assert!(removed.contains(n), "n{n} removed while paused");
    }
    assert!(report.hint_deletes_checked > 0);
    assert!(report.dots_checked > 0);
}
