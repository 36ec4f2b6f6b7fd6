//! Whole runs in conditions where the membership protocol has no excuse: a clean network, no
//! faults. Every checker must pass, and the cluster must be what the workload built.

use std::time::Duration;

use chorus_sim::args::FaultSet;
use chorus_sim::cluster::ProcessState;
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
        let counts = report.history.counts();
        assert_eq!(
            (counts.ok, counts.failed, counts.indeterminate),
            (6, 0, 0),
            "six joins"
        );
        assert_eq!(report.settled_after, Some(Duration::from_secs(1)));
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
