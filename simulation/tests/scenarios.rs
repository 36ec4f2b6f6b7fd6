//! Whole runs in conditions where the membership protocol has no excuse: a clean network, no
//! faults. Every checker must pass, and the cluster must be what the workload built.

use std::time::Duration;

use chorus_sim::args::FaultSet;
use chorus_sim::cluster::ProcessState;
use chorus_sim::history::Outcome;
use chorus_sim::sim::{self, RunConfig};

/// Time the scenarios below add to their own schedules, written for a cluster that formed by
/// t = 10 s: formation now ends once every node has caught up the partitions it gained, which
/// waits for the placement to stand for a few seconds.
const FORMING: Duration = Duration::from_secs(30);

#[test]
fn a_fault_free_cluster_forms_and_passes_every_checker() {
    for seed in 0..4 {
        let config = RunConfig {
            nodes: 6,
            duration: Duration::from_secs(60),
            faults: FaultSet::none(),
            ..RunConfig::new(seed)
        };
        let report = sim::run(&config).unwrap();
        assert!(report.passed(), "seed {seed}:\n{}", sim::summary(&report));
        let snap = &report.snapshot;
        assert_eq!(snap.nodes.len(), 6);
        for n in &snap.nodes {
            assert_eq!(n.process, ProcessState::Up);
            assert_eq!(n.view.as_ref().unwrap().members.len(), 6);
        }
        let joins: Vec<_> = report
            .history
            .ops()
            .iter()
            .filter(|o| o.client == "membership")
            .collect();
        assert_eq!(joins.len(), 6, "six joins");
        assert!(joins.iter().all(|o| o.outcome == Some(Outcome::Ok)));
        // Without faults every client operation succeeds, except writes of one type to a key
        // holding another (the shared keys, by design: 409, nothing applied), blind writes
        // beyond the size bound (413, nothing applied) and, while nodes
        // are still joining (and for a few seconds after, while the last joiner's ring entry
        // spreads), requests a replica refuses because its view of the ring differs.
        // (A node answers reads of the partitions it gained once the placement has stood for
        // a few seconds and it has caught them up with the other replicas.)
        let formed = joins.iter().filter_map(|o| o.end).max().unwrap() + FORMING;
        let data = report
            .history
            .ops()
            .iter()
            .filter(|o| o.client == "register");
        let (mut ok, mut total, mut typed) = (0, 0, 0);
        for op in data {
            total += 1;
            match &op.outcome {
                Some(Outcome::Ok) => ok += 1,
                Some(Outcome::Failed(why)) if why.starts_with("type_conflict") => typed += 1,
                // Blind writes of large values beyond the bound on a client write's state.
                Some(Outcome::Failed(why)) if why.starts_with("too_large") => {}
                // The final reads still running when the run stops.
                Some(Outcome::Indeterminate(why)) if why.contains("when the run ended") => {}
                other => assert!(
                    op.start < formed,
                    "seed {seed}: {op:?} failed after the cluster formed ({other:?}):\n{}",
                    sim::summary(&report)
                ),
            }
        }
        assert!(total > 50, "the clients did work: {total}");
        assert!(
            ok > total * 3 / 4,
            "{ok} of {total} ok, {typed} refused for their type"
        );
        // Settling waits for the final reads after the heal (a round every 3 s), and for
        // anti-entropy (every 15 s per node) to carry each CRDT replica's record of which
        // operation ids it holds to the others (read repair leaves such differences alone).
        assert!(
            report.settled_after <= Some(Duration::from_secs(40)),
            "seed {seed}: {:?}",
            report.settled_after
        );
    }
}

#[test]
fn a_single_node_cluster_is_fine_alone() {
    let config = RunConfig {
        nodes: 1,
        duration: Duration::from_secs(30),
        ..RunConfig::new(1)
    };
    let report = sim::run(&config).unwrap();
    assert!(report.passed(), "{}", sim::summary(&report));
}

#[test]
fn faults_are_injected_and_recorded() {
    let report = sim::run(&RunConfig::new(11)).unwrap();
    let kinds: Vec<String> = report
        .history
        .ops()
        .iter()
        .map(|o| o.kind.to_string())
        .collect();
    for needle in ["partition", "degrade", "crash", "join", "leave"] {
        assert!(
            kinds.iter().any(|k| k.starts_with(needle)),
            "no {needle} in 5 minutes of faults: {kinds:?}"
        );
    }
    assert!(report.stats.dropped.get("partition").copied().unwrap_or(0) > 0);
    assert!(report.stats.dropped.get("loss").copied().unwrap_or(0) > 0);
}

/// Two groups form apart: the founder's side and a side whose seeds point at each other and at
/// the founder, which they cannot reach at first. The far side must not promote itself to
/// members on its own, and once the network heals it must find the founder through its seeds
/// although none of its nodes is alone.
#[test]
fn two_groups_that_formed_apart_merge_after_the_heal() {
    use chorus_sim::check::{self, CheckInput};
    use chorus_sim::cluster::{Cluster, ClusterConfig, Step};
    use chorus_sim::history::History;
    use chorus_sim::network::Partition;
    use chorus_sim::trace::Trace;

    let mut c = Cluster::new(ClusterConfig::default(), 5, Trace::new(false));
    let seeds: [&[usize]; 5] = [&[], &[0], &[0, 3], &[0, 2], &[0, 2]];
    for s in seeds {
        c.add_node(s).unwrap();
    }
    c.network_mut().partition(Partition::Split {
        side: [0, 1].into_iter().collect(),
    });
    for i in 0..5 {
        c.start(i).unwrap();
    }
    let run_to = |c: &mut Cluster, t: u64| {
        while c.step(Duration::from_secs(t)) != Step::Idle {}
    };
    run_to(&mut c, 60);
    for i in 2..5 {
        let v = c.view(i).unwrap();
        assert!(
            v.members
                .iter()
                .all(|m| m.status != chorus::membership::RingStatus::Member),
            "n{i} must not become a member without syncing with one: {v:?}"
        );
        assert!(v.members.len() >= 2, "the far side found each other: {v:?}");
    }
    assert!(c.network_mut().heal_partition());
    let healed_at = c.now();
    let checkers = check::default_checkers(Duration::from_secs(60));
    let history = History::new();
    let mut settled = None;
    for t in 61..=120 {
        run_to(&mut c, t);
        let snapshot = c.snapshot();
        let violations = check::run_all(
            &checkers,
            &CheckInput {
                snapshot: &snapshot,
                history: &history,
                healed_at: Some(healed_at),
            },
        );
        if violations.is_empty() {
            settled = Some(t - 60);
            break;
        }
    }
    let settled = settled.expect("one cluster within a minute of the heal");
    assert!(settled <= 30, "merged {settled} s after the heal");
    for i in 0..5 {
        assert_eq!(c.view(i).unwrap().members.len(), 5);
    }
}

/// A dot is never minted twice: a coordinator whose write reached the other replicas but not
/// its own disk (it crashed before the sync) restarts and coordinates another write to the same
/// key. With a fresh actor per process the new write gets a new dot; with the node id as the
/// actor (what per-process actors exist to prevent) it reuses the lost write's dot, and the
/// dots-unique checker catches it.
#[test]
fn a_coordinator_that_lost_a_write_never_mints_its_dot_again() {
    use chorus::node::{ClientOp, ClientRequest, NodeConfig, RequestOptions};
    use chorus_sim::check::{self, CheckInput, Checker};
    use chorus_sim::cluster::{Cluster, ClusterConfig, Step};
    use chorus_sim::history::History;
    use chorus_sim::trace::Trace;

    fn run(tune: Option<fn(&mut NodeConfig)>) -> Vec<check::Violation> {
        let config = ClusterConfig {
            // Slow syncs: the crash below falls before the coordinator's write is durable.
            disk_sync: (Duration::from_millis(20), Duration::from_millis(20)),
            disk_slow_one_in: 0,
            tune,
            // Anti-entropy would bring the lost state back to the restarted node before its
            // next write and so hide what this scenario isolates: the window in between.
            anti_entropy_interval: None,
            ..ClusterConfig::default()
        };
        let mut c = Cluster::new(config, 3, Trace::new(false));
        for seeds in [&[][..], &[0], &[0]] {
            c.add_node(seeds).unwrap();
        }
        for i in 0..3 {
            c.start(i).unwrap();
        }
        let run_to = |c: &mut Cluster, t: Duration| while c.step(t + FORMING) != Step::Idle {};
        run_to(&mut c, Duration::from_secs(10));
        let put = |value: &str| ClientRequest {
            key: b"k".to_vec(),
            op: ClientOp::Put {
                value: value.as_bytes().to_vec(),
                context: None,
            },
            options: RequestOptions::default(),
        };
        // A first write every replica keeps: n0 restarts with a copy of the key (a coordinator
        // without any copy asks a majority for the key's state before minting, which alone
        // would avoid the reuse below).
        c.client_request(0, 0, 1, put("zero"));
        run_to(&mut c, Duration::from_secs(11));
        c.client_request(0, 0, 2, put("first"));
        // Crash n0 a millisecond later: its replicas got the write, its disk did not.
        c.crash_after_outputs(0, u32::MAX, Duration::from_millis(1))
            .unwrap();
        run_to(&mut c, Duration::from_secs(12));
        c.start(0).unwrap();
        run_to(&mut c, Duration::from_secs(20));
        c.client_request(0, 0, 3, put("second"));
        run_to(&mut c, Duration::from_secs(30));
        let snapshot = c.snapshot();
        let held: Vec<usize> = snapshot.nodes.iter().map(|n| n.objects.len()).collect();
        assert_eq!(held, vec![1, 1, 1], "every replica holds the key");
        let history = History::new();
        let mut out = Vec::new();
        check::register::DotsUnique.check(
            &CheckInput {
                snapshot: &snapshot,
                history: &history,
                healed_at: None,
            },
            &mut out,
        );
        out
    }

    assert!(run(None).is_empty(), "per-process actors never reuse a dot");
    let reused = run(Some(|c: &mut NodeConfig| c.data.actor_per_process = false));
    assert_eq!(reused.len(), 1, "{reused:#?}");
    assert!(reused[0].message.contains("a dot was minted twice"));
}

/// DESIGN.md §3 and the CRDT issue: a counter entry is never restarted from an incomplete copy.
/// A coordinator increments, crashes before its disk has the increment (its replicas have it),
/// restarts and increments again. With a fresh actor per process every increment counts; with
/// the node id as the actor (the unsafe setting, kept to show this) the later increment
/// continues the entry from the copy that lost the earlier one, and the merge loses one.
#[test]
fn a_counter_increment_lost_in_a_crash_is_never_overwritten() {
    use chorus::node::{
        ClientOp, ClientRequest, CrdtOp, CrdtValue, NodeConfig, Object, RequestOptions,
    };
    use chorus_sim::cluster::{Cluster, ClusterConfig, Step};
    use chorus_sim::trace::Trace;

    fn run(tune: Option<fn(&mut NodeConfig)>) -> i128 {
        let config = ClusterConfig {
            disk_sync: (Duration::from_millis(20), Duration::from_millis(20)),
            disk_slow_one_in: 0,
            tune,
            // Anti-entropy would bring the lost state back to the restarted node before its
            // next write and so hide what this scenario isolates: the window in between.
            anti_entropy_interval: None,
            ..ClusterConfig::default()
        };
        let mut c = Cluster::new(config, 3, Trace::new(false));
        for seeds in [&[][..], &[0], &[0]] {
            c.add_node(seeds).unwrap();
        }
        for i in 0..3 {
            c.start(i).unwrap();
        }
        let run_to = |c: &mut Cluster, t: Duration| while c.step(t + FORMING) != Step::Idle {};
        run_to(&mut c, Duration::from_secs(10));
        let incr = |op_id: &str| ClientRequest {
            key: b"hits".to_vec(),
            op: ClientOp::Update {
                op: CrdtOp::GCounter { increment: 1 },
                op_id: op_id.to_owned(),
            },
            options: RequestOptions::default(),
        };
        // The key exists, durably, everywhere (so the next increment is applied at once).
        c.client_request(0, 0, 1, incr("zero"));
        run_to(&mut c, Duration::from_secs(11));
        c.client_request(0, 0, 2, incr("first"));
        c.crash_after_outputs(0, u32::MAX, Duration::from_millis(1))
            .unwrap();
        run_to(&mut c, Duration::from_secs(12));
        c.start(0).unwrap();
        run_to(&mut c, Duration::from_secs(20));
        c.client_request(0, 0, 3, incr("second"));
        run_to(&mut c, Duration::from_secs(30));
        // Everything every disk holds, merged: what any later read converges to.
        let snapshot = c.snapshot();
        let mut all: Option<Object> = None;
        for n in &snapshot.nodes {
            for (_, o) in &n.objects {
                match &mut all {
                    None => all = Some(o.clone()),
                    Some(a) => a.merge(o),
                }
            }
        }
        match all.and_then(|o| o.crdt_value()) {
            Some(CrdtValue::Counter(v)) => v,
            other => panic!("no counter on any disk: {other:?}"),
        }
    }

    assert_eq!(run(None), 3, "per-process actors keep every increment");
    assert_eq!(
        run(Some(|c: &mut NodeConfig| c.data.actor_per_process = false)),
        2,
        "the unsafe setting loses the increment the crash took from n0's disk: the scenario really exercises the bug"
    );
}

/// The anti-entropy issue: with read repair and hints off, a replica that was down while keys
/// were written catches up by Merkle-tree exchange alone, and the merkle-roots checker sees
/// exact convergence; with anti-entropy off too (the planted fault) the checker reports the
/// replica that never caught up.
#[test]
fn anti_entropy_alone_brings_back_a_replica_that_missed_writes() {
    use chorus::node::{ClientOp, ClientRequest, NodeConfig, RequestOptions};
    use chorus_sim::check::{self, CheckInput, Checker};
    use chorus_sim::cluster::{Cluster, ClusterConfig, Step};
    use chorus_sim::history::History;
    use chorus_sim::trace::Trace;

    fn run(tune: Option<fn(&mut NodeConfig)>) -> (Vec<check::Violation>, usize) {
        let config = ClusterConfig {
            repairs_off: true,
            tune,
            ..ClusterConfig::default()
        };
        let mut c = Cluster::new(config, 7, Trace::new(false));
        for seeds in [&[][..], &[0], &[0]] {
            c.add_node(seeds).unwrap();
        }
        for i in 0..3 {
            c.start(i).unwrap();
        }
        let run_to = |c: &mut Cluster, t: u64| {
            while c.step(Duration::from_secs(t) + FORMING) != Step::Idle {}
        };
        run_to(&mut c, 10);
        c.crash(2).unwrap();
        run_to(&mut c, 20);
        for i in 0..50u64 {
            let put = ClientRequest {
                key: format!("key{i}").into_bytes(),
                op: ClientOp::Put {
                    value: vec![b'v'; 100],
                    context: None,
                },
                options: RequestOptions::default(),
            };
            c.client_request((i % 2) as usize, 0, i + 1, put);
        }
        run_to(&mut c, 30);
        c.start(2).unwrap();
        let healed_at = c.now();
        // Two anti-entropy intervals and a little more.
        run_to(&mut c, 70);
        let snapshot = c.snapshot();
        let history = History::new();
        let input = CheckInput {
            snapshot: &snapshot,
            history: &history,
            healed_at: Some(healed_at),
        };
        let mut out = Vec::new();
        check::merkle::MerkleRoots.check(&input, &mut out);
        check::merkle::MerkleExact.check(&input, &mut out);
        (out, snapshot.nodes[2].objects.len())
    }

    let (violations, held) = run(None);
    assert!(violations.is_empty(), "{violations:#?}");
    assert_eq!(held, 50, "the restarted replica holds every key");
    let (violations, held) = run(Some(|c: &mut NodeConfig| {
        c.data.anti_entropy_interval = None
    }));
    assert!(
        held < 50,
        "without anti-entropy nothing brings the keys back"
    );
    assert!(
        violations.iter().any(|v| v.checker == "merkle-roots"),
        "the checker catches the divergence: {violations:#?}"
    );
}

/// The tombstone GC issue: a delete stays deleted however tombstones are purged. A replica
/// holds "old" and is down while the delete reaches the other two (hints off). Tombstone GC
/// waits for every member, so nothing is purged until the replica is back and anti-entropy
/// gave it the tombstone; then all three copies go, and the key reads as never written.
/// Purging without asking (the planted fault) deletes the two tombstones at once, and when the
/// replica comes back its "old" spreads again: the deleted value is back, which is what the
/// deletes-stay checker looks for.
#[test]
fn a_delete_stays_deleted_through_tombstone_gc_but_purging_without_asking_brings_it_back() {
    use std::collections::BTreeMap;

    use chorus::node::{ClientOp, ClientReply, ClientRequest, NodeConfig, RequestOptions};
    use chorus::ring::{Member, Ring, RingConfig};
    use chorus_sim::cluster::{Cluster, ClusterConfig, Step};
    use chorus_sim::trace::Trace;

    fn run(tune: Option<fn(&mut NodeConfig)>) -> (Vec<Vec<u8>>, u64) {
        let config = ClusterConfig {
            tune,
            // No hint carries the delete to n2: only anti-entropy can.
            repairs_off: true,
            ..ClusterConfig::default()
        };
        let mut c = Cluster::new(config, 5, Trace::new(false));
        for seeds in [&[][..], &[0], &[0]] {
            c.add_node(seeds).unwrap();
        }
        for i in 0..3 {
            c.start(i).unwrap();
        }
        let mut replies: BTreeMap<u64, ClientReply> = BTreeMap::new();
        let run_to = |c: &mut Cluster, secs: u64, replies: &mut BTreeMap<u64, ClientReply>| loop {
            match c.step(Duration::from_secs(secs) + FORMING) {
                Step::Idle => break,
                Step::Reply { token, reply, .. } => {
                    replies.insert(token, *reply);
                }
                _ => {}
            }
        };
        let request = |op: ClientOp, w: Option<usize>, r: Option<usize>| ClientRequest {
            key: b"k".to_vec(),
            op,
            options: RequestOptions {
                w,
                r,
                ..RequestOptions::default()
            },
        };
        run_to(&mut c, 10, &mut replies);
        // The node that leads tombstone GC for "k" (first in its preference list) stays up;
        // another replica goes down.
        let ids: Vec<_> = (0..3).map(|i| c.id(i).unwrap()).collect();
        let ring = Ring::new(ids.iter().copied().map(Member::new), RingConfig::default()).unwrap();
        let leader = ring.preference_list(ring.partition_of(b"k"), 3)[0];
        let down = (0..3).rev().find(|&i| ids[i] != leader).unwrap();
        let up = (0..3).find(|&i| i != down).unwrap();
        let put = ClientOp::Put {
            value: b"old".to_vec(),
            context: None,
        };
        c.client_request(up, 0, 1, request(put, Some(3), None));
        run_to(&mut c, 11, &mut replies);
        let context = match replies.remove(&1) {
            Some(ClientReply::Written(w)) => w.context,
            other => panic!("the write failed: {other:?}"),
        };
        c.crash(down).unwrap();
        run_to(&mut c, 13, &mut replies);
        let delete = ClientOp::Delete {
            context: Some(context),
        };
        c.client_request(up, 0, 2, request(delete, Some(2), None));
        run_to(&mut c, 15, &mut replies);
        assert!(matches!(replies.remove(&2), Some(ClientReply::Written(_))));
        // Long enough for many GC rounds while n2 is down.
        run_to(&mut c, 150, &mut replies);
        c.start(down).unwrap();
        run_to(&mut c, 400, &mut replies);
        c.client_request(up, 0, 3, request(ClientOp::Get, None, Some(3)));
        run_to(&mut c, 405, &mut replies);
        let values = match replies.remove(&3) {
            Some(ClientReply::Read(r)) => r.values,
            other => panic!("the read failed: {other:?}"),
        };
        let purged = c
            .snapshot()
            .nodes
            .iter()
            .filter_map(|n| n.data.as_ref())
            .map(|d| d.tombstones_purged)
            .sum();
        (values, purged)
    }

    let (values, purged) = run(None);
    assert!(values.is_empty(), "the delete stays: {values:?}");
    assert_eq!(purged, 3, "all three tombstones went once n2 held one");
    let (values, _) = run(Some(|c: &mut NodeConfig| {
        c.data.tombstone_gc_unchecked = true
    }));
    assert_eq!(
        values,
        vec![b"old".to_vec()],
        "purging without asking brings the deleted value back: the scenario exercises the bug"
    );
}
