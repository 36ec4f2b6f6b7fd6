//! Whole runs in conditions where the membership protocol has no excuse: a clean network, no
//! faults. Every checker must pass, and the cluster must be what the workload built.

use std::time::Duration;

use chorus_sim::args::FaultSet;
use chorus_sim::cluster::ProcessState;
use chorus_sim::history::Outcome;
use chorus_sim::sim::{self, RunConfig};

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
        // Without faults every client operation succeeds.
        let data = report
            .history
            .ops()
            .iter()
            .filter(|o| o.client == "register");
        let (mut ok, mut total) = (0, 0);
        for op in data {
            total += 1;
            ok += usize::from(op.outcome == Some(Outcome::Ok));
        }
        assert!(total > 50, "the clients did work: {total}");
        assert_eq!(ok, total, "{}", sim::summary(&report));
        // Settling waits for the final reads after the heal (a round every 3 s).
        assert!(report.settled_after <= Some(Duration::from_secs(10)));
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
