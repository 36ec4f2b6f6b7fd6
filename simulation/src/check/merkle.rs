//! Merkle checkers: after the heal, replicas of every partition hold identical contents, and each
//! node's incrementally kept trees say what its disk holds.
//!
//! - [`MerkleRoots`]: every running replica of a partition (by the placement of the members the
//!   observers list) has the same Merkle root — exact convergence of every key, registers and
//!   CRDTs, whether or not anybody read it — keys written with several types (contested,
//!   DESIGN.md §3) included: their replicas converge on one state holding every type's part.
//! - [`MerkleExact`]: every running node's tree roots equal the roots computed afresh from the
//!   bytes on its disk; a tree that drifted from its data (a write that skipped the tree, a
//!   wrong leaf) would hide differences from anti-entropy forever.

use chorus::merkle::Digest;
use chorus::ring::PartitionId;

use super::{CheckInput, Checker, Violation};

/// Every Merkle checker.
pub fn all() -> Vec<Box<dyn Checker>> {
    vec![Box::new(MerkleRoots), Box::new(MerkleExact)]
}

/// See the module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct MerkleRoots;

impl Checker for MerkleRoots {
    fn name(&self) -> &'static str {
        "merkle-roots"
    }

    fn check(&self, input: &CheckInput<'_>, out: &mut Vec<Violation>) {
        if input.healed_at.is_none() {
            return;
        }
        let Some((ring, view)) = super::crdt::observed_ring(input) else {
            return;
        };
        for i in 0..view.partitions {
            let Ok(i) = u16::try_from(i) else { break };
            let p = PartitionId::new(i);
            let replicas = ring.preference_list(p, view.n);
            let roots: Vec<(usize, Digest)> = input
                .snapshot
                .nodes
                .iter()
                .filter(|n| n.process.is_running() && replicas.contains(&n.id))
                .map(|n| (n.slot, n.roots.get(&p).copied().unwrap_or(Digest::ZERO)))
                .collect();
            if let Some(&(first, a)) = roots.first() {
                if let Some(&(slot, b)) = roots[1..].iter().find(|(_, b)| *b != a) {
                    out.push(Violation {
                        checker: self.name(),
                        at: input.snapshot.at,
                        observer: Some(slot),
                        subject: Some(first),
                        message: format!(
                            "replicas of partition {i} differ: n{first} has root {a}, n{slot} has {b}"
                        ),
                    });
                }
            }
        }
    }
}

/// See the module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct MerkleExact;

impl Checker for MerkleExact {
    fn name(&self) -> &'static str {
        "merkle-exact"
    }

    fn check(&self, input: &CheckInput<'_>, out: &mut Vec<Violation>) {
        if input.healed_at.is_none() {
            return;
        }
        for n in input
            .snapshot
            .nodes
            .iter()
            .filter(|n| n.process.is_running())
        {
            if n.roots != n.disk_roots {
                let p = n
                    .roots
                    .keys()
                    .chain(n.disk_roots.keys())
                    .find(|p| n.roots.get(p) != n.disk_roots.get(p))
                    .map_or(0, |p| p.get());
                out.push(Violation {
                    checker: self.name(),
                    at: input.snapshot.at,
                    observer: Some(n.slot),
                    subject: None,
                    message: format!(
                        "n{}'s Merkle tree of partition {p} does not match its disk ({:?} vs {:?})",
                        n.slot,
                        n.roots.get(&PartitionId::new(p)),
                        n.disk_roots.get(&PartitionId::new(p))
                    ),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use chorus::NodeId;

    use super::*;
    use crate::history::History;
    use crate::snapshot::{ClusterSnapshot, NodeSnapshot, ProcessState};

    fn node(roots: &[(u16, u8)], disk: &[(u16, u8)]) -> NodeSnapshot {
        let map = |v: &[(u16, u8)]| -> BTreeMap<PartitionId, Digest> {
            v.iter()
                .map(|&(p, d)| (PartitionId::new(p), Digest([d; 16])))
                .collect()
        };
        NodeSnapshot {
            slot: 0,
            id: NodeId::new(1),
            process: ProcessState::Up,
            generation: 1,
            removed: false,
            view: None,
            data: None,
            objects: Vec::new(),
            hints_on_disk: 0,
            roots: map(roots),
            disk_roots: map(disk),
        }
    }

    fn check(n: NodeSnapshot) -> Vec<Violation> {
        let snapshot = ClusterSnapshot {
            at: Duration::from_secs(100),
            nodes: vec![n],
            lost: Default::default(),
            op_log: Default::default(),
        };
        let history = History::new();
        let mut out = Vec::new();
        MerkleExact.check(
            &CheckInput {
                snapshot: &snapshot,
                history: &history,
                healed_at: Some(Duration::from_secs(50)),
            },
            &mut out,
        );
        out
    }

    #[test]
    fn a_tree_that_drifted_from_its_disk_is_caught() {
        assert!(check(node(&[(1, 7), (2, 9)], &[(1, 7), (2, 9)])).is_empty());
        let v = check(node(&[(1, 7), (2, 9)], &[(1, 7), (2, 8)]));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].message.contains("partition 2"), "{}", v[0].message);
        // A key on disk the tree never heard of.
        assert_eq!(check(node(&[(1, 7)], &[(1, 7), (3, 1)])).len(), 1);
    }
}
