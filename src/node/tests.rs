//! Whole-node tests on a tiny in-process network: perfect delivery, simulated time.

use std::collections::{BTreeMap, BTreeSet};

use super::*;

fn addr(i: u64) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7000 + i as u16))
}

fn config(i: u64, generation: u64, seeds: Vec<SocketAddr>) -> NodeConfig {
    let info = NodeInfo {
        quic_addr: addr(i),
        http_addr: SocketAddr::from(([127, 0, 0, 1], 8000 + i as u16)),
    };
    NodeConfig::new(NodeId::new(100 + i), generation, info, seeds)
}

/// Nodes keyed by address, a queue of pending deliveries and timers, and simulated time.
struct Net {
    now: Duration,
    seq: u64,
    nodes: BTreeMap<SocketAddr, Node>,
    /// Persisted ring states, as a driver would keep them on disk.
    disks: BTreeMap<SocketAddr, RingState>,
    queue: BTreeMap<(Duration, u64), (SocketAddr, Event)>,
    down: BTreeSet<SocketAddr>,
    left: BTreeSet<SocketAddr>,
}

enum Event {
    Gossip(Vec<u8>),
    Message(SocketAddr, Vec<u8>),
    Timer(Timer),
}

const LATENCY: Duration = Duration::from_millis(1);

impl Net {
    fn new() -> Net {
        Net {
            now: Duration::ZERO,
            seq: 0,
            nodes: BTreeMap::new(),
            disks: BTreeMap::new(),
            queue: BTreeMap::new(),
            down: BTreeSet::new(),
            left: BTreeSet::new(),
        }
    }

    fn start(&mut self, config: NodeConfig) {
        let a = config.info.quic_addr;
        let disk = self.disks.get(&a).cloned().unwrap_or_default();
        let mut node = Node::new(config, a.port() as u64, disk).unwrap();
        node.start(self.now);
        self.nodes.insert(a, node);
        self.down.remove(&a);
        self.drain(a);
    }

    fn crash(&mut self, a: SocketAddr) {
        self.nodes.remove(&a);
        self.down.insert(a);
    }

    fn push(&mut self, at: Duration, to: SocketAddr, e: Event) {
        self.seq += 1;
        self.queue.insert((at, self.seq), (to, e));
    }

    fn drain(&mut self, a: SocketAddr) {
        let Some(node) = self.nodes.get_mut(&a) else {
            return;
        };
        let mut outs = Vec::new();
        while let Some(o) = node.poll_output() {
            outs.push(o);
        }
        for o in outs {
            match o {
                Output::Gossip { to, bytes } => {
                    self.push(self.now + LATENCY, to, Event::Gossip(bytes))
                }
                Output::Message { to, bytes } => {
                    self.push(self.now + LATENCY, to, Event::Message(a, bytes))
                }
                Output::SetTimer { at, timer } => self.push(at, a, Event::Timer(timer)),
                Output::PersistRing(state) => {
                    self.disks.insert(a, state);
                }
                Output::PersistGeneration(_) => {}
                Output::Left => {
                    self.left.insert(a);
                }
            }
        }
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > end {
                break;
            }
            let ((at, _), (to, event)) = entry.remove_entry();
            self.now = at;
            let Some(node) = self.nodes.get_mut(&to) else {
                continue;
            };
            match event {
                Event::Gossip(b) => node.handle_gossip(&b, at),
                Event::Message(from, b) => node.handle_message(from, &b, at),
                Event::Timer(t) => node.handle_timer(t, at),
            }
            self.drain(to);
        }
        self.now = end;
    }

    fn view(&self, i: u64) -> ClusterView {
        self.nodes[&addr(i)].cluster_view()
    }
}

fn summary(view: &ClusterView) -> Vec<(String, Liveness, RingStatus)> {
    view.members
        .iter()
        .map(|m| (m.id.clone(), m.liveness, m.status))
        .collect()
}

fn cluster(n: u64) -> Net {
    let mut net = Net::new();
    net.start(config(0, 1, vec![]));
    for i in 1..n {
        net.start(config(i, 1, vec![addr(0)]));
    }
    net.run_for(Duration::from_secs(10));
    net
}

#[test]
fn nodes_join_through_one_seed_and_agree() {
    let net = cluster(5);
    for i in 0..5 {
        let v = net.view(i);
        assert_eq!(v.members.len(), 5, "node {i}: {v:?}");
        for m in &v.members {
            assert_eq!(m.liveness, Liveness::Alive, "node {i} sees {m:?}");
            assert_eq!(m.status, RingStatus::Member, "node {i} sees {m:?}");
        }
        // 256 partitions × 3 replicas spread over 5 members.
        let total: u64 = v.members.iter().map(|m| m.partitions).sum();
        assert_eq!(total, 256 * 3);
        assert_eq!(summary(&v), summary(&net.view(0)));
    }
}

#[test]
fn crash_is_detected_and_restart_rejoins_with_new_generation() {
    let mut net = cluster(4);
    net.crash(addr(3));
    net.run_for(Duration::from_secs(10));
    let crashed = NodeId::new(103).to_string();
    for i in 0..3 {
        let v = net.view(i);
        let m = v.members.iter().find(|m| m.id == crashed).unwrap();
        assert_eq!(m.liveness, Liveness::Down, "node {i}");
        // Liveness never changes ring membership.
        assert_eq!(m.status, RingStatus::Member);
    }
    net.start(config(3, 2, vec![addr(0)]));
    net.run_for(Duration::from_secs(10));
    for i in 0..4 {
        let v = net.view(i);
        let m = v.members.iter().find(|m| m.id == crashed).unwrap();
        assert_eq!(
            (m.liveness, m.incarnation),
            (Liveness::Alive, 2),
            "node {i}: {m:?}"
        );
        assert_eq!(v.members.len(), 4);
    }
}

#[test]
fn graceful_leave_shows_left_everywhere_and_cannot_restart() {
    let mut net = cluster(3);
    let node = net.nodes.get_mut(&addr(2)).unwrap();
    node.leave(net.now);
    net.drain(addr(2));
    // Left only once a majority of the others confirmed.
    assert!(!net.left.contains(&addr(2)));
    net.run_for(Duration::from_secs(5));
    assert!(net.left.contains(&addr(2)));
    let gone = NodeId::new(102).to_string();
    for i in 0..2 {
        let v = net.view(i);
        let m = v.members.iter().find(|m| m.id == gone).unwrap();
        assert_eq!(m.status, RingStatus::Left, "node {i}");
        assert_eq!(m.partitions, 0);
        let total: u64 = v.members.iter().map(|m| m.partitions).sum();
        assert_eq!(total, 256 * 2, "2 owners left, each partition on both");
    }
    let disk = net.disks[&addr(2)].clone();
    assert!(matches!(
        Node::new(config(2, 2, vec![addr(0)]), 1, disk),
        Err(NodeError::AlreadyLeft(_))
    ));
}

#[test]
fn garbage_input_is_dropped_and_changes_nothing() {
    let mut net = cluster(3);
    let before = summary(&net.view(1));
    let ring_before = net.nodes[&addr(1)].ring_state();
    let node = net.nodes.get_mut(&addr(1)).unwrap();
    for junk in [
        &b""[..],
        b"\x00",
        b"\xff\xff\xff\xff",
        b"CH\x01\xc1",
        &[0x93; 64],
    ] {
        node.handle_gossip(junk, net.now);
        node.handle_message(addr(9), junk, net.now);
    }
    assert_eq!(node.ring_state(), ring_before);
    net.drain(addr(1));
    net.run_for(Duration::from_secs(3));
    assert_eq!(summary(&net.view(1)), before);
}

#[test]
fn a_late_seed_is_reached_by_re_announcing() {
    let mut net = Net::new();
    net.start(config(1, 1, vec![addr(0)]));
    net.run_for(Duration::from_secs(3));
    assert_eq!(net.view(1).members.len(), 1);
    net.start(config(0, 1, vec![]));
    net.run_for(Duration::from_secs(5));
    for i in 0..2 {
        let v = net.view(i);
        assert_eq!(v.members.len(), 2, "{v:?}");
        assert!(v
            .members
            .iter()
            .all(|m| m.status == RingStatus::Member && m.liveness == Liveness::Alive));
    }
}
