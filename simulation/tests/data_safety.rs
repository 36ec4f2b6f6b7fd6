//! Data safety I (issue 20), pinned by deterministic scenarios on the whole simulated cluster:
//!
//! - a CRDT update replayed with its operation id at `w=3` is acknowledged by every replica
//!   holding it, the coordinator included (on main it timed out with 2 of 3 acknowledgements);
//! - a key created as a register on one side of a partition and as a counter on the other ends
//!   as one contested state on every replica, holding both, and reads report both parts (on
//!   main the replicas kept their own types and refused each other's states for good);
//! - with a tiny operation-id log on a hot counter, an update retried through a replica that
//!   had not seen it counts once (on main the log forgot ids by count before every replica held
//!   them, silently, and the duplicate counted);
//! - the per-seed profiles run through the whole simulator and pass.

use std::collections::BTreeMap;
use std::time::Duration;

use chorus::node::{
    ClientOp, ClientReply, ClientRequest, CrdtOp, CrdtValue, Object, RequestOptions,
};
use chorus::ring::{Member, Ring, RingConfig};
use chorus::NodeId;
use chorus_sim::cluster::{Cluster, ClusterConfig, Step};
use chorus_sim::network::Partition;
use chorus_sim::profile::{Profile, TINY_OP_LOG};
use chorus_sim::sim::{self, RunConfig};
use chorus_sim::trace::Trace;

/// A cluster of `n` nodes, started and given until [`at`]`(10)` to form and to catch up the
/// partitions each replicates (a node refuses reads of a partition until it has).
fn cluster(n: usize, config: ClusterConfig, seed: u64) -> Cluster {
    let mut c = Cluster::new(config, seed, Trace::new(false));
    for i in 0..n {
        let seeds: &[usize] = if i == 0 { &[] } else { &[0] };
        c.add_node(seeds).unwrap();
    }
    for i in 0..n {
        c.start(i).unwrap();
    }
    let mut replies = BTreeMap::new();
    run_to(&mut c, at(10), &mut replies);
    for i in 0..n {
        assert_eq!(c.catching_up(i), Some(0), "n{i} caught up by {:?}", at(10));
    }
    c
}

/// Time `s` of a scenario: seconds after the start, counted from a cluster formed at `s = 10`
/// (formation and catch-up take the first [`FORMED`] seconds).
fn at(s: u64) -> Duration {
    Duration::from_secs(s - 10 + FORMED)
}

/// When [`cluster`] hands over a formed, caught-up cluster.
const FORMED: u64 = 40;

/// Runs the cluster to `t`, keeping every client reply by token.
fn run_to(c: &mut Cluster, t: Duration, replies: &mut BTreeMap<u64, ClientReply>) {
    loop {
        match c.step(t) {
            Step::Idle => break,
            Step::Reply { token, reply, .. } => {
                replies.insert(token, *reply);
            }
            _ => {}
        }
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn incr(key: &str, op_id: &str, w: Option<usize>) -> ClientRequest {
    ClientRequest {
        key: key.as_bytes().to_vec(),
        op: ClientOp::Update {
            op: CrdtOp::GCounter { increment: 1 },
            op_id: op_id.to_owned(),
        },
        options: RequestOptions {
            w,
            ..RequestOptions::default()
        },
    }
}

fn read(key: &str, r: usize) -> ClientRequest {
    ClientRequest {
        key: key.as_bytes().to_vec(),
        op: ClientOp::Get,
        options: RequestOptions {
            r: Some(r),
            ..RequestOptions::default()
        },
    }
}

/// The replicas of `key` among the cluster's node slots, in preference order.
fn replicas_of(c: &Cluster, n: usize, key: &[u8]) -> Vec<usize> {
    let ids: Vec<NodeId> = (0..n).map(|i| c.id(i).unwrap()).collect();
    let ring = Ring::new(ids.iter().copied().map(Member::new), RingConfig::default()).unwrap();
    ring.preference_list(ring.partition_of(key), 3)
        .into_iter()
        .map(|id| ids.iter().position(|&x| x == id).unwrap())
        .collect()
}

/// Item 1: an update whose id every replica already applied, sent again at `w=3` (and `w=3`
/// strict) through each node, is acknowledged by all three, and counts once.
#[test]
fn a_replayed_op_id_at_w3_is_acknowledged_by_every_replica() {
    let mut c = cluster(3, ClusterConfig::default(), 21);
    let mut replies = BTreeMap::new();
    c.client_request(0, 0, 1, incr("hits", "op-1", Some(3)));
    run_to(&mut c, at(12), &mut replies);
    match replies.remove(&1) {
        Some(ClientReply::Updated(u)) => assert_eq!(u.acks, 3, "{u:?}"),
        other => panic!("the first update failed: {other:?}"),
    }
    // The replay through the coordinator of the first attempt, then through the others.
    for (token, node) in [(2u64, 0usize), (3, 1), (4, 2)] {
        let mut request = incr("hits", "op-1", Some(3));
        request.options.strict = token == 4;
        c.client_request(node, 0, token, request);
        run_to(&mut c, at(12 + token), &mut replies);
        match replies.remove(&token) {
            Some(ClientReply::Updated(u)) => {
                assert!(u.replayed, "through n{node}: {u:?}");
                assert_eq!(u.acks, 3, "through n{node}: {u:?}");
                assert_eq!(u.value, CrdtValue::Counter(1), "through n{node}: {u:?}");
            }
            other => panic!("the replay through n{node} was not acknowledged: {other:?}"),
        }
    }
    c.client_request(1, 0, 9, read("hits", 3));
    run_to(&mut c, at(20), &mut replies);
    match replies.remove(&9) {
        Some(ClientReply::Read(r)) => assert_eq!(r.crdt, Some(CrdtValue::Counter(1))),
        other => panic!("the read failed: {other:?}"),
    }
}

/// Item 4: the key's replicas hold a deleted register (so coordinators on both sides have a
/// copy and need not ask a majority). During a partition that leaves one replica on one side
/// and two on the other, a register write is acknowledged on the first side (with a fallback
/// holding a hint) and a counter increment on the other. After the heal every replica holds the
/// same contested state with both parts, and a read reports both.
#[test]
fn a_key_created_as_a_register_and_a_counter_on_two_sides_ends_contested_everywhere() {
    let config = ClusterConfig {
        // The deleted register must stay until both sides write.
        tombstone_gc_interval: None,
        ..ClusterConfig::default()
    };
    let n = 5;
    let mut c = cluster(n, config, 23);
    let mut replies = BTreeMap::new();
    let key = "both";
    let replicas = replicas_of(&c, n, key.as_bytes());
    let others: Vec<usize> = (0..n).filter(|i| !replicas.contains(i)).collect();
    let put = |value: &str, context| ClientRequest {
        key: key.as_bytes().to_vec(),
        op: ClientOp::Put {
            value: value.as_bytes().to_vec(),
            context,
        },
        options: RequestOptions {
            w: Some(3),
            ..RequestOptions::default()
        },
    };
    c.client_request(replicas[0], 0, 1, put("old", None));
    run_to(&mut c, at(11), &mut replies);
    let context = match replies.remove(&1) {
        Some(ClientReply::Written(w)) => w.context,
        other => panic!("the first write failed: {other:?}"),
    };
    let delete = ClientRequest {
        key: key.as_bytes().to_vec(),
        op: ClientOp::Delete {
            context: Some(context),
        },
        options: RequestOptions {
            w: Some(3),
            ..RequestOptions::default()
        },
    };
    c.client_request(replicas[0], 0, 2, delete);
    run_to(&mut c, at(12), &mut replies);
    assert!(
        matches!(replies.remove(&2), Some(ClientReply::Written(_))),
        "the delete was acknowledged by all three"
    );
    // One replica and a non-replica on one side; two replicas and a non-replica on the other.
    let left = [replicas[0], others[0]];
    c.network_mut().partition(Partition::Split {
        side: left.into_iter().collect(),
    });
    run_to(&mut c, at(30), &mut replies);
    let mut register = put("left", None);
    register.options.w = None;
    c.client_request(replicas[0], 0, 3, register);
    c.client_request(replicas[1], 0, 4, incr(key, "right-1", None));
    run_to(&mut c, at(40), &mut replies);
    match replies.remove(&3) {
        Some(ClientReply::Written(w)) => assert_eq!(w.values, vec![b"left".to_vec()]),
        other => panic!("the register write on the left failed: {other:?}"),
    }
    match replies.remove(&4) {
        Some(ClientReply::Updated(u)) => assert_eq!(u.value, CrdtValue::Counter(1)),
        other => panic!("the increment on the right failed: {other:?}"),
    }
    assert!(c.network_mut().heal_partition());
    // Hints, read repair and anti-entropy (every 15 s) bring the sides together.
    run_to(&mut c, at(100), &mut replies);
    let snapshot = c.snapshot();
    let copies: Vec<&Object> = replicas
        .iter()
        .map(|&i| {
            snapshot.nodes[i]
                .objects
                .iter()
                .find(|(k, _)| k.as_slice() == key.as_bytes())
                .map(|(_, o)| o)
                .unwrap_or_else(|| panic!("n{i} holds no copy of the key"))
        })
        .collect();
    for (i, o) in replicas.iter().zip(&copies) {
        assert_eq!(*o, copies[0], "n{i} and n{} differ", replicas[0]);
    }
    let state = copies[0];
    assert!(state.is_contested(), "{state:?}");
    assert_eq!(state.live_types(), vec!["register", "gcounter"]);
    assert_eq!(state.type_name(), "contested");
    let merged = snapshot
        .nodes
        .iter()
        .map(|n| n.data.as_ref().map_or(0, |d| d.merges_refused))
        .sum::<u64>();
    assert_eq!(merged, 0, "no merge refused");
    c.client_request(others[1], 0, 5, read(key, 3));
    run_to(&mut c, at(105), &mut replies);
    let r = match replies.remove(&5) {
        Some(ClientReply::Read(r)) => r,
        other => panic!("the read failed: {other:?}"),
    };
    assert_eq!(r.type_name.as_deref(), Some("contested"));
    assert_eq!(
        r.values,
        vec![b"left".to_vec()],
        "the register part's values"
    );
    let parts: Vec<(&str, Option<&CrdtValue>, usize)> = r
        .parts
        .iter()
        .map(|p| (p.type_name.as_str(), p.crdt.as_ref(), p.values.len()))
        .collect();
    assert_eq!(
        parts,
        vec![
            ("register", None, 1),
            ("gcounter", Some(&CrdtValue::Counter(1)), 0)
        ]
    );
}

/// Item 2: every node remembers ids four seconds and eight records per actor. One replica of a
/// hot counter is cut off; an increment is applied through another, and its retry through the
/// cut-off replica (which never saw it) applies it again there; then the first coordinator
/// takes twenty more increments, past its eight records. Its record of the retried id is not
/// yet on every replica, so it must keep it (main forgot it by count, silently): when the
/// copies meet, the second application is recognised as a duplicate and the id counts once.
#[test]
fn a_hot_counter_with_a_tiny_op_log_counts_a_retried_id_once() {
    let config = ClusterConfig {
        op_log: Some(TINY_OP_LOG),
        ..ClusterConfig::default()
    };
    let mut c = cluster(3, config, 29);
    let mut replies = BTreeMap::new();
    let ok = |replies: &mut BTreeMap<u64, ClientReply>, token: u64| match replies.remove(&token) {
        Some(ClientReply::Updated(u)) => u,
        other => panic!("update {token} was not acknowledged: {other:?}"),
    };
    // Every replica has the key.
    c.client_request(0, 0, 1, incr("hot", "first", Some(3)));
    run_to(&mut c, at(11), &mut replies);
    ok(&mut replies, 1);
    c.network_mut().partition(Partition::Isolate { node: 2 });
    c.client_request(0, 0, 2, incr("hot", "retried", None));
    run_to(&mut c, at(12), &mut replies);
    ok(&mut replies, 2);
    // The client did not hear back (say), and retries through n2, which has not seen it.
    c.client_request(2, 0, 3, incr("hot", "retried", Some(1)));
    run_to(&mut c, at(13), &mut replies);
    let u = ok(&mut replies, 3);
    assert!(!u.replayed, "n2 applies it again: {u:?}");
    let mut t = at(13);
    let mut forgot = 0;
    for i in 0..20u64 {
        c.client_request(0, 0, 10 + i, incr("hot", &format!("more-{i}"), None));
        // 50 ms apart, waiting (in 10 ms steps, a second at most) for a slow acknowledgement.
        t += Duration::from_millis(50);
        run_to(&mut c, t, &mut replies);
        let waited = t + secs(1);
        while !replies.contains_key(&(10 + i)) && t < waited {
            t += Duration::from_millis(10);
            run_to(&mut c, t, &mut replies);
        }
        let u = ok(&mut replies, 10 + i);
        forgot += usize::from(u.notes.iter().any(|n| n.contains("forgot")));
    }
    assert_eq!(forgot, 0, "nothing was stable to forget early");
    assert!(c.network_mut().heal_partition());
    // Anti-entropy (every 15 s) brings the copies together.
    run_to(&mut c, t + secs(60), &mut replies);
    let unstable: u64 = c
        .snapshot()
        .nodes
        .iter()
        .filter_map(|n| n.data.as_ref())
        .map(|d| d.op_ids_forgotten_unstable)
        .sum();
    assert_eq!(
        unstable, 0,
        "within four times the bound, nothing unstable is forgotten"
    );
    c.client_request(1, 0, 100, read("hot", 3));
    run_to(&mut c, t + secs(62), &mut replies);
    match replies.remove(&100) {
        Some(ClientReply::Read(r)) => assert_eq!(
            r.crdt,
            Some(CrdtValue::Counter(22)),
            "first, retried (once) and twenty more"
        ),
        other => panic!("the read failed: {other:?}"),
    }
}

/// Each profile, forced, runs a short whole simulation that passes every checker.
#[test]
fn every_profile_passes_a_short_run() {
    for (profile, seed) in [
        (Profile::Standard, 3),
        (Profile::TinyOpLog, 4),
        (Profile::LargeValues, 5),
    ] {
        let config = RunConfig {
            duration: secs(90),
            profile: Some(profile),
            ..RunConfig::new(seed)
        };
        let report = sim::run(&config).unwrap();
        assert!(
            report.passed(),
            "{profile} seed {seed}:\n{}",
            sim::summary(&report)
        );
        assert!(
            config
                .replay_command()
                .contains(&format!("--profile {profile}")),
            "a forced profile is in the replay command"
        );
    }
}
