//! Whole-node tests on a tiny in-process network: perfect delivery, simulated time.

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::storage::{SharedMemoryStore, Store as _};

fn addr(i: u64) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7000 + i as u16))
}

fn config(i: u64, generation: u64, seeds: Vec<SocketAddr>) -> NodeConfig {
    let info = NodeInfo {
        quic_addr: addr(i),
        http_addr: SocketAddr::from(([127, 0, 0, 1], 8000 + i as u16)),
    };
    let id = NodeId::new(100 + i);
    let auth = std::sync::Arc::new(crate::membership::InsecureTestAuth::new(id));
    NodeConfig::new(id, generation, info, seeds, auth)
}

/// Nodes keyed by address, a queue of pending deliveries and timers, and simulated time.
struct Net {
    now: Duration,
    seq: u64,
    nodes: BTreeMap<SocketAddr, Node>,
    /// What each node persisted, as a driver would keep it on disk.
    disks: BTreeMap<SocketAddr, Persisted>,
    /// Each node's store (writes are synced at once).
    stores: BTreeMap<SocketAddr, SharedMemoryStore>,
    /// Answers to client requests, by handle.
    replies: BTreeMap<u64, ClientReply>,
    queue: BTreeMap<(Duration, u64), (SocketAddr, Event)>,
    down: BTreeSet<SocketAddr>,
    left: BTreeSet<SocketAddr>,
    /// Messages that reached a node not running, with their destination.
    sent_to_dead: Vec<(SocketAddr, Vec<u8>)>,
    /// The request id the next client requests carry.
    request_id: Option<std::sync::Arc<str>>,
    /// Frozen nodes (a paused VM): their events wait, in order, until they resume.
    paused: BTreeMap<SocketAddr, (Node, Vec<Event>)>,
    /// Every `PeerRestarted` output: (observer, restarted node, its address).
    restarts: Vec<(SocketAddr, NodeId, SocketAddr)>,
    /// Every `StatsAnswered` output: (asker, answering node, handle, figures).
    stats: Vec<(SocketAddr, NodeId, u64, Vec<u8>)>,
}

enum Event {
    Gossip(NodeId, Vec<u8>),
    Message(NodeId, Vec<u8>),
    Timer(Timer),
}

fn id_of(a: SocketAddr) -> NodeId {
    NodeId::new(100 + u64::from(a.port() - 7000))
}

const LATENCY: Duration = Duration::from_millis(1);

impl Net {
    fn new() -> Net {
        Net {
            now: Duration::ZERO,
            seq: 0,
            nodes: BTreeMap::new(),
            disks: BTreeMap::new(),
            stores: BTreeMap::new(),
            replies: BTreeMap::new(),
            queue: BTreeMap::new(),
            down: BTreeSet::new(),
            left: BTreeSet::new(),
            sent_to_dead: Vec::new(),
            request_id: None,
            paused: BTreeMap::new(),
            restarts: Vec::new(),
            stats: Vec::new(),
        }
    }

    /// Freezes node `a`: it handles nothing, and what reaches it waits.
    fn pause(&mut self, a: SocketAddr) {
        let node = self.nodes.remove(&a).expect("running");
        self.paused.insert(a, (node, Vec::new()));
    }

    /// Thaws node `a`: its timers that came due fire first (a resumed process runs its own
    /// loop before the network catches up), then the messages that waited arrive.
    fn resume(&mut self, a: SocketAddr) {
        let (node, waiting) = self.paused.remove(&a).expect("paused");
        self.nodes.insert(a, node);
        let (timers, rest): (Vec<Event>, Vec<Event>) = waiting
            .into_iter()
            .partition(|e| matches!(e, Event::Timer(_)));
        for e in timers.into_iter().chain(rest) {
            let now = self.now;
            let node = self.nodes.get_mut(&a).expect("resumed");
            match e {
                Event::Gossip(from, b) => node.handle_gossip(from, &b, now),
                Event::Message(from, b) => node.handle_message(from, &b, now),
                Event::Timer(t) => node.handle_timer(t, now),
            }
            self.drain(a);
        }
    }

    fn start(&mut self, config: NodeConfig) {
        let a = config.info.quic_addr;
        let disk = self.disks.get(&a).cloned().unwrap_or_default();
        let store = self.stores.entry(a).or_default().clone();
        let mut node = Node::new(config, a.port() as u64, disk, store).unwrap();
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
                    self.push(self.now + LATENCY, to, Event::Gossip(id_of(a), bytes))
                }
                Output::Message {
                    addr: to, bytes, ..
                } => self.push(self.now + LATENCY, to, Event::Message(id_of(a), bytes)),
                Output::Persist { seq, batch } => {
                    self.stores
                        .get_mut(&a)
                        .expect("started nodes have a store")
                        .write(&batch, true)
                        .unwrap();
                    if let Some(n) = self.nodes.get_mut(&a) {
                        n.handle_durable(seq, self.now);
                    }
                    self.drain(a);
                }
                Output::Reply { client, reply } => {
                    self.replies.insert(client, reply);
                }
                Output::SetTimer { at, timer } => self.push(at, a, Event::Timer(timer)),
                Output::PersistRing(state) => {
                    self.disks.entry(a).or_default().ring = state;
                }
                Output::PersistGeneration(_) => {}
                Output::PeerRestarted { node, addr } => self.restarts.push((a, node, addr)),
                Output::Left => {
                    self.disks.entry(a).or_default().leave_complete = true;
                    self.left.insert(a);
                }
                Output::StatsAsked { from, id } => {
                    let figures = format!("figures of {}", id_of(a)).into_bytes();
                    if let Some(n) = self.nodes.get_mut(&a) {
                        n.answer_stats(from, id, figures, self.now);
                    }
                    self.drain(a);
                }
                Output::StatsAnswered { from, id, stats } => {
                    self.stats.push((a, from, id, stats));
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
            if let Some((_, waiting)) = self.paused.get_mut(&to) {
                waiting.push(event);
                continue;
            }
            let Some(node) = self.nodes.get_mut(&to) else {
                if let Event::Message(_, b) = event {
                    self.sent_to_dead.push((to, b));
                }
                continue;
            };
            match event {
                Event::Gossip(from, b) => node.handle_gossip(from, &b, at),
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

    /// Submits a client request at node `i` and runs until it is answered (or 10 s pass).
    fn request(
        &mut self,
        i: u64,
        key: &[u8],
        op: ClientOp,
        options: RequestOptions,
    ) -> ClientReply {
        self.seq += 1;
        let handle = self.seq;
        let now = self.now;
        let node = self.nodes.get_mut(&addr(i)).expect("running");
        node.handle_client_traced(
            handle,
            ClientRequest {
                key: key.to_vec(),
                op,
                options,
            },
            self.request_id.clone(),
            now,
        );
        self.drain(addr(i));
        for _ in 0..1000 {
            if let Some(r) = self.replies.remove(&handle) {
                return r;
            }
            self.run_for(Duration::from_millis(10));
        }
        panic!("no answer to request {handle}");
    }

    fn put(&mut self, i: u64, key: &[u8], value: &[u8], context: Option<Context>) -> ClientReply {
        let op = ClientOp::Put {
            value: value.to_vec(),
            context,
        };
        self.request(i, key, op, RequestOptions::default())
    }

    fn get(&mut self, i: u64, key: &[u8], r: usize) -> ReadResult {
        let options = RequestOptions {
            r: Some(r),
            ..RequestOptions::default()
        };
        match self.request(i, key, ClientOp::Get, options) {
            ClientReply::Read(r) => r,
            other => panic!("read failed: {other:?}"),
        }
    }
}

fn written(reply: ClientReply) -> WriteResult {
    match reply {
        ClientReply::Written(w) => w,
        other => panic!("write failed: {other:?}"),
    }
}

fn sorted(mut v: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    v.sort();
    v
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
    net.until_caught_up();
    net
}

impl Net {
    /// Runs until every running node has caught up every partition it replicates (it answers
    /// reads of them all), for at most a simulated minute.
    fn until_caught_up(&mut self) {
        for _ in 0..60 {
            if self
                .nodes
                .values()
                .all(|n| n.data_stats().partitions_catching_up == 0)
            {
                return;
            }
            self.run_for(Duration::from_secs(1));
        }
        panic!("the nodes did not catch up within a minute");
    }
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
    // Every other node told its driver to drop its connection to the old process, and did
    // not do so for any node that did not restart.
    let told: BTreeSet<SocketAddr> = net
        .restarts
        .iter()
        .map(|&(observer, node, at)| {
            assert_eq!((node, at), (NodeId::new(103), addr(3)));
            observer
        })
        .collect();
    assert_eq!(told, (0..3).map(addr).collect::<BTreeSet<_>>());
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
        Node::new(
            config(2, 2, vec![addr(0)]),
            1,
            disk,
            SharedMemoryStore::new()
        ),
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
        node.handle_gossip(NodeId::new(109), junk, net.now);
        node.handle_message(NodeId::new(109), junk, net.now);
    }
    assert_eq!(node.ring_state(), ring_before);
    net.drain(addr(1));
    net.run_for(Duration::from_secs(3));
    assert_eq!(summary(&net.view(1)), before);
}

/// A ring sync from node `from` to node `to`, carrying `state`, as the transport delivers it.
fn ring_sync(net: &mut Net, from: NodeId, to: u64, state: RingState) {
    let bytes = protocol::encode(&PeerMessage::Membership(MembershipMessage::RingSync {
        state,
        reply: SyncReply::Never,
    }))
    .unwrap();
    let now = net.now;
    net.nodes
        .get_mut(&addr(to))
        .unwrap()
        .handle_message(from, &bytes, now);
    net.drain(addr(to));
}

/// A record holding `entry`, signed by `signer` (the node itself or a forger).
fn signed_by(entry: crate::membership::RingEntry, signer: NodeId) -> crate::membership::RingRecord {
    use crate::membership::{InsecureTestAuth, RingRecord, SignedEntry};
    let forged = SignedEntry::sign(signer, entry, &InsecureTestAuth::new(signer));
    RingRecord {
        signed: SignedEntry {
            entry,
            key: forged.key,
            sig: forged.sig,
        },
        removal: None,
    }
}

/// Issue 22, item 2: a member (legitimate certificate, in the ring) sends another member's
/// entry with a bumped version and its own address, that entry at version `u64::MAX`, and a
/// phantom member. None is believed, each is counted, and the cluster goes on unchanged.
#[test]
fn a_forged_ring_entry_from_a_member_changes_nothing() {
    use crate::membership::RingEntry;
    let mut net = cluster(3);
    let before = summary(&net.view(0));
    let ring_before = net.nodes[&addr(0)].ring_state();
    let (attacker, victim) = (NodeId::new(101), NodeId::new(102));
    let real = *ring_before.get(victim).unwrap();
    let mut forged = RingState::new();
    // The victim's entry, one version on, pointing at the attacker's addresses.
    let hijack = RingEntry {
        info_version: real.info_version + 1,
        info: ring_before.get(attacker).unwrap().info,
        ..real
    };
    forged.merge_record(victim, &signed_by(hijack, attacker));
    // A phantom member, vouched for by the attacker.
    let phantom = NodeId::new(177);
    let phantom_entry = RingEntry {
        status: RingStatus::Member,
        info_version: 1,
        info: ring_before.get(attacker).unwrap().info,
    };
    forged.merge_record(phantom, &signed_by(phantom_entry, attacker));
    let (refused, ignored) = net.nodes[&addr(0)].ring_refusals();
    let refused_stat = net.nodes[&addr(0)].data_stats().ring_entries_refused;
    ring_sync(&mut net, attacker, 0, forged);
    // The victim's own entry at u64::MAX (its own signature, even): an absurd version.
    let mut absurd = RingState::new();
    let huge = RingEntry {
        info_version: u64::MAX,
        ..real
    };
    absurd.merge_record(victim, &signed_by(huge, victim));
    ring_sync(&mut net, attacker, 0, absurd);
    assert_eq!(net.nodes[&addr(0)].ring_state(), ring_before);
    assert_eq!(net.nodes[&addr(0)].ring_refusals(), (refused + 3, ignored));
    let stats = net.nodes[&addr(0)].data_stats();
    assert_eq!(stats.ring_entries_refused, refused_stat + 3);
    net.run_for(Duration::from_secs(5));
    assert_eq!(summary(&net.view(0)), before);
    assert_eq!(
        net.nodes[&addr(0)].ring_state().get(victim).unwrap().info,
        real.info
    );
    // The cluster still takes writes at w = 2 everywhere.
    for i in 0..3 {
        let w = written(net.put(i, format!("after-{i}").as_bytes(), b"v", None));
        assert!(w.acks >= 2, "n{i}: {w:?}");
    }
}

/// Issue 22, item 2: a node that is not a ring member (a certificate that never joined) may
/// only ask to join: the ring state it sends about others — phantom members and a member's
/// departure, even validly signed by them — is ignored and counted; only its own entry, as a
/// joining node, is recorded.
#[test]
fn ring_state_from_a_non_member_is_ignored() {
    use crate::membership::RingEntry;
    let mut net = cluster(3);
    let before = summary(&net.view(0));
    let ring_before = net.nodes[&addr(0)].ring_state();
    let stranger = NodeId::new(150);
    let mut sent = RingState::new();
    let info = |port: u16| NodeInfo {
        quic_addr: SocketAddr::from(([127, 0, 0, 1], port)),
        http_addr: SocketAddr::from(([127, 0, 0, 1], port + 1)),
    };
    let own = RingEntry {
        status: RingStatus::Joining,
        info_version: 1,
        info: info(9150),
    };
    sent.merge_record(stranger, &signed_by(own, stranger));
    for p in 151..154u64 {
        let phantom = NodeId::new(p);
        let e = RingEntry {
            status: RingStatus::Member,
            info_version: 1,
            info: info(9000 + p as u16),
        };
        sent.merge_record(phantom, &signed_by(e, phantom));
    }
    let victim = NodeId::new(102);
    let left = RingEntry {
        status: RingStatus::Left,
        info_version: ring_before.get(victim).unwrap().info_version + 1,
        ..*ring_before.get(victim).unwrap()
    };
    sent.merge_record(victim, &signed_by(left, victim));
    let (refused, ignored) = net.nodes[&addr(0)].ring_refusals();
    ring_sync(&mut net, stranger, 0, sent);
    let after = net.nodes[&addr(0)].ring_state();
    assert_eq!(net.nodes[&addr(0)].ring_refusals(), (refused, ignored + 4));
    assert_eq!(after.len(), ring_before.len() + 1);
    assert_eq!(
        after.get(stranger).map(|e| e.status),
        Some(RingStatus::Joining)
    );
    for (id, e) in ring_before.iter() {
        assert_eq!(after.get(id), Some(e), "{id}");
    }
    assert_eq!(after.owners().count(), 3);
    // Its data-path messages are still refused, and the members go on.
    net.run_for(Duration::from_secs(3));
    assert_eq!(
        summary(&net.view(0))
            .into_iter()
            .filter(|(id, _, _)| *id != stranger.to_string())
            .collect::<Vec<_>>(),
        before
    );
}

/// Issue 22, item 2: a member's figures for the status page travel over the peer transport:
/// asked of a ring member by id, answered by its driver, delivered with the authenticated
/// sender; nodes outside the ring can neither ask nor be asked.
#[test]
fn member_figures_are_asked_over_the_peer_transport() {
    let mut net = cluster(3);
    let now = net.now;
    let n0 = net.nodes.get_mut(&addr(0)).unwrap();
    n0.ask_stats(NodeId::new(101), 7, now);
    n0.ask_stats(NodeId::new(102), 8, now);
    // Not a ring member: never asked.
    n0.ask_stats(NodeId::new(150), 9, now);
    net.drain(addr(0));
    net.run_for(Duration::from_millis(100));
    let mut got: Vec<_> = net
        .stats
        .iter()
        .map(|(at, from, id, s)| (*at, *from, *id, String::from_utf8_lossy(s).into_owned()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (
                addr(0),
                NodeId::new(101),
                7,
                format!("figures of {}", NodeId::new(101))
            ),
            (
                addr(0),
                NodeId::new(102),
                8,
                format!("figures of {}", NodeId::new(102))
            ),
        ]
    );
    // A stranger asking is refused as any data-path sender outside the ring.
    let bytes = protocol::encode(&PeerMessage::Stats(StatsMessage::Ask { id: 1 })).unwrap();
    let refused = net.nodes[&addr(1)].data_stats().refused_senders;
    let now = net.now;
    net.nodes
        .get_mut(&addr(1))
        .unwrap()
        .handle_message(NodeId::new(150), &bytes, now);
    net.drain(addr(1));
    net.run_for(Duration::from_millis(100));
    assert_eq!(
        net.nodes[&addr(1)].data_stats().refused_senders,
        refused + 1
    );
    assert_eq!(net.stats.len(), 2);
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

fn member_of(view: &ClusterView, i: u64) -> Option<&MemberView> {
    let id = NodeId::new(100 + i).to_string();
    view.members.iter().find(|m| m.id == id)
}

#[test]
fn a_leave_waits_for_a_majority_of_the_ring_members_not_of_swim() {
    let mut net = cluster(5);
    for i in 1..4 {
        net.crash(addr(i));
    }
    // SWIM now knows only n0 alive: a majority of *that* view would be n0 alone.
    net.run_for(Duration::from_secs(15));
    net.nodes.get_mut(&addr(4)).unwrap().leave(net.now);
    net.drain(addr(4));
    net.run_for(Duration::from_secs(20));
    assert!(
        !net.left.contains(&addr(4)),
        "one confirmation of four is not a majority"
    );
    let pending = net.view(4).pending;
    assert_eq!(pending.len(), 1, "{pending:?}");
    let p = &pending[0];
    assert_eq!((p.kind.as_str(), p.status), ("leave", RingStatus::Leaving));
    assert_eq!((p.confirmed, p.needed), (1, 3), "{p:?}");
    assert_eq!(p.waiting_for.len(), 3);
    assert!(p.caught_up);
    // Two of the crashed members come back: the leave completes.
    net.start(config(1, 2, vec![addr(0)]));
    net.start(config(2, 2, vec![addr(0)]));
    net.run_for(Duration::from_secs(20));
    assert!(net.left.contains(&addr(4)));
    for i in 0..3 {
        let v = net.view(i);
        assert_eq!(member_of(&v, 4).unwrap().status, RingStatus::Left, "n{i}");
    }
}

/// Found by `chorus-sim run --seed 449`: with every other member leaving, a removal had no
/// one to confirm it, counted as confirmed at once, and was lost with the node that took it.
/// The leaving nodes then waited for good to hand partitions to the dead node.
#[test]
fn a_removal_is_confirmed_only_once_another_node_holds_it_even_when_the_others_are_leaving() {
    let mut net = cluster(3);
    net.crash(addr(2));
    net.run_for(Duration::from_secs(10));
    let dead = NodeId::new(102);
    // n1 leaves; its partitions would go to n0 and the dead n2, so the leave waits.
    net.nodes.get_mut(&addr(1)).unwrap().leave(net.now);
    net.drain(addr(1));
    net.run_for(Duration::from_secs(3));
    assert_eq!(
        member_of(&net.view(0), 1).unwrap().status,
        RingStatus::Leaving
    );
    assert!(!net.left.contains(&addr(1)));
    // n0 is the only member left: the operator removes n2 through it while n1 hears nothing.
    net.pause(addr(1));
    let n0 = net.nodes.get_mut(&addr(0)).unwrap();
    assert_eq!(
        n0.remove(dead, operator_signature(dead), false, net.now),
        Ok(())
    );
    assert_eq!(
        n0.removal_confirmed(dead),
        Some(false),
        "no other node holds the removal yet"
    );
    net.drain(addr(0));
    net.run_for(Duration::from_secs(5));
    assert_eq!(net.nodes[&addr(0)].removal_confirmed(dead), Some(false));
    let pending = net.view(0).pending;
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!((pending[0].confirmed, pending[0].needed), (0, 1));
    // n1 hears of it: the removal is confirmed, n1 holds it, and n1's leave completes.
    net.resume(addr(1));
    net.run_for(Duration::from_secs(10));
    assert_eq!(net.nodes[&addr(0)].removal_confirmed(dead), Some(true));
    assert!(
        net.left.contains(&addr(1)),
        "n1 hands its partitions to n0 alone"
    );
    let ring = net.disks[&addr(1)].ring.clone();
    assert_eq!(
        ring.get(dead).map(|e| e.status),
        Some(RingStatus::Left),
        "n1 persisted the removal"
    );
}

/// With no member left, a leave hands its partitions to the joiners without waiting for the
/// other leaving nodes: one of them may be dead, and a leaving node cannot remove it (found by
/// a hostile review of the fix for seed 449, which first let leaves wait for leaving nodes).
#[test]
fn a_leave_with_no_member_left_does_not_wait_for_a_dead_leaving_node() {
    let mut net = cluster(2);
    net.start(config(2, 1, vec![addr(0)]));
    net.run_for(Duration::from_millis(2500));
    assert_eq!(
        member_of(&net.view(2), 2).unwrap().status,
        RingStatus::Joining
    );
    // n1 starts leaving and dies at once (frozen for good): the others see it leaving.
    net.nodes.get_mut(&addr(1)).unwrap().leave(net.now);
    net.drain(addr(1));
    net.pause(addr(1));
    net.run_for(Duration::from_secs(1));
    assert_eq!(
        member_of(&net.view(0), 1).unwrap().status,
        RingStatus::Leaving
    );
    net.nodes.get_mut(&addr(0)).unwrap().leave(net.now);
    net.drain(addr(0));
    net.run_for(Duration::from_secs(30));
    assert!(
        net.left.contains(&addr(0)),
        "n0 handed everything to the joiner and left: {:?}",
        net.view(0).pending
    );
    // The operator writes off the dead n1 through the joiner, which then carries the ring on.
    let dead = NodeId::new(101);
    let n2 = net.nodes.get_mut(&addr(2)).unwrap();
    assert_eq!(
        n2.remove(dead, operator_signature(dead), false, net.now),
        Ok(())
    );
    net.drain(addr(2));
    net.run_for(Duration::from_secs(30));
    let v = net.view(2);
    assert_eq!(
        member_of(&v, 2).unwrap().status,
        RingStatus::Member,
        "{v:#?}"
    );
    assert_eq!(member_of(&v, 1).unwrap().status, RingStatus::Left);
}

/// A joiner counts as caught up with the ring when a node that owns partitions answers it,
/// leaving or not: when the last member started leaving before it answered the joiner twice
/// (the first answer only introduces it), the joiner received every partition and then waited
/// for good, a joiner with no member left to catch up from.
#[test]
fn a_joiner_the_last_member_hands_everything_to_before_it_caught_up_carries_the_ring_on() {
    let mut net = cluster(1);
    written(net.put(0, b"apples", b"red", None));
    net.start(config(1, 1, vec![addr(0)]));
    net.run_for(Duration::from_millis(300));
    assert_eq!(
        member_of(&net.view(1), 1).unwrap().status,
        RingStatus::Joining
    );
    net.nodes.get_mut(&addr(0)).unwrap().leave(net.now);
    net.drain(addr(0));
    net.run_for(Duration::from_secs(30));
    assert!(net.left.contains(&addr(0)), "{:?}", net.view(0).pending);
    let v = net.view(1);
    assert_eq!(
        member_of(&v, 1).unwrap().status,
        RingStatus::Member,
        "{:?}",
        v.pending
    );
    assert_eq!(net.get(1, b"apples", 1).values, vec![b"red".to_vec()]);
}

#[test]
fn a_node_asked_to_leave_while_joining_waits_until_it_knows_the_members() {
    let mut net = Net::new();
    // n1 joins through n0, which is not running yet: n1 knows nobody.
    net.start(config(1, 1, vec![addr(0)]));
    net.run_for(Duration::from_secs(1));
    net.nodes.get_mut(&addr(1)).unwrap().leave(net.now);
    net.drain(addr(1));
    // A joiner's copy may be incomplete: cancelling would make it a member serving it.
    assert_eq!(
        net.nodes.get_mut(&addr(1)).unwrap().cancel_leave(net.now),
        Err(CancelLeaveError::NotCancellable)
    );
    net.run_for(Duration::from_secs(10));
    assert!(
        !net.left.contains(&addr(1)),
        "no member confirmed anything: the leave must not complete"
    );
    let pending = net.view(1).pending;
    assert_eq!(pending.len(), 1);
    assert!(!pending[0].caught_up);
    net.start(config(0, 1, vec![]));
    net.run_for(Duration::from_secs(10));
    assert!(net.left.contains(&addr(1)));
    assert_eq!(
        member_of(&net.view(0), 1).unwrap().status,
        RingStatus::Left,
        "the founder learned of the leave"
    );
}

/// Seed 1221 (sweep 1000..2000): a joiner asked to leave before it knew any member saw itself
/// as the only node owning partitions, took every partition for caught up, and answered
/// "absent" at r=1 for keys written on every replica long before.
#[test]
fn a_node_asked_to_leave_while_joining_never_answers_absent_for_what_it_never_held() {
    let mut net = cluster(1);
    written(net.put(0, b"apples", b"red", None));
    // n1 joins through n0, which is frozen: n1 knows no member when it is asked to leave.
    net.pause(addr(0));
    net.start(config(1, 1, vec![addr(0)]));
    net.run_for(Duration::from_secs(1));
    net.nodes.get_mut(&addr(1)).unwrap().leave(net.now);
    net.drain(addr(1));
    net.run_for(Duration::from_secs(1));
    let options = RequestOptions {
        r: Some(1),
        ..RequestOptions::default()
    };
    match net.request(1, b"apples", ClientOp::Get, options) {
        ClientReply::Failed(ClientError::Unavailable { .. }) => {}
        other => panic!("a node that never held the key's partition answered {other:?}"),
    }
    net.resume(addr(0));
    net.run_for(Duration::from_secs(10));
    assert!(net.left.contains(&addr(1)), "{:?}", net.view(1).pending);
    assert_eq!(net.get(0, b"apples", 1).values, vec![b"red".to_vec()]);
}

#[test]
fn a_leave_interrupted_by_a_crash_resumes_after_the_restart() {
    let mut net = cluster(3);
    net.nodes.get_mut(&addr(2)).unwrap().leave(net.now);
    net.drain(addr(2));
    // It crashes before anyone heard of the leave; its disk says `leaving`.
    net.crash(addr(2));
    net.queue.clear();
    assert_eq!(
        net.disks[&addr(2)]
            .ring
            .get(NodeId::new(102))
            .unwrap()
            .status,
        RingStatus::Leaving
    );
    let mut n0 = Net::new();
    std::mem::swap(&mut n0.disks, &mut net.disks);
    std::mem::swap(&mut n0.stores, &mut net.stores);
    // Restart everyone from disk; n2 resumes its leave on its own.
    let mut net = n0;
    net.start(config(0, 2, vec![]));
    net.start(config(1, 2, vec![addr(0)]));
    net.start(config(2, 2, vec![addr(0)]));
    assert!(net.nodes[&addr(2)].has_left(), "resumed");
    assert_eq!(
        net.nodes.get_mut(&addr(2)).unwrap().cancel_leave(net.now),
        Err(CancelLeaveError::NotCancellable),
        "a restarted node cannot tell whether it was a member"
    );
    net.run_for(Duration::from_secs(20));
    assert!(net.left.contains(&addr(2)));
    assert_eq!(member_of(&net.view(0), 2).unwrap().status, RingStatus::Left);
    let disk = net.disks[&addr(2)].clone();
    assert!(disk.leave_complete);
    assert!(matches!(
        Node::new(
            config(2, 3, vec![addr(0)]),
            1,
            disk,
            SharedMemoryStore::new()
        ),
        Err(NodeError::AlreadyLeft(_))
    ));
}

#[test]
fn a_leave_can_be_cancelled_until_it_completes() {
    let mut net = cluster(5);
    assert_eq!(
        net.nodes.get_mut(&addr(4)).unwrap().cancel_leave(net.now),
        Err(CancelLeaveError::NotLeaving)
    );
    // Three members down: the leave cannot gather its majority and stays `leaving`.
    for i in 1..4 {
        net.crash(addr(i));
    }
    net.run_for(Duration::from_secs(15));
    net.nodes.get_mut(&addr(4)).unwrap().leave(net.now);
    net.drain(addr(4));
    net.run_for(Duration::from_secs(10));
    assert_eq!(
        member_of(&net.view(0), 4).unwrap().status,
        RingStatus::Leaving
    );
    net.nodes
        .get_mut(&addr(4))
        .unwrap()
        .cancel_leave(net.now)
        .unwrap();
    net.drain(addr(4));
    net.run_for(Duration::from_secs(5));
    for i in [0, 4] {
        let v = net.view(i);
        assert_eq!(member_of(&v, 4).unwrap().status, RingStatus::Member, "n{i}");
        assert!(v.pending.is_empty(), "n{i}: {:?}", v.pending);
    }
    assert!(!net.nodes[&addr(4)].has_left());
    assert_eq!(
        net.disks[&addr(4)]
            .ring
            .get(NodeId::new(104))
            .unwrap()
            .status,
        RingStatus::Member,
        "persisted"
    );
    // The members come back: nothing completes the cancelled leave, and it keeps its share.
    for i in 1..4 {
        net.start(config(i, 2, vec![addr(0)]));
    }
    net.run_for(Duration::from_secs(20));
    assert!(!net.left.contains(&addr(4)));
    for i in 0..5 {
        let v = net.view(i);
        let m = member_of(&v, 4).unwrap();
        assert_eq!(m.status, RingStatus::Member, "n{i}");
        assert!(m.partitions > 0, "n{i}: {m:?}");
    }
    // A leave that completed cannot be undone.
    net.nodes.get_mut(&addr(4)).unwrap().leave(net.now);
    net.drain(addr(4));
    net.run_for(Duration::from_secs(20));
    assert!(net.left.contains(&addr(4)));
    assert_eq!(
        net.nodes.get_mut(&addr(4)).unwrap().cancel_leave(net.now),
        Err(CancelLeaveError::Completed)
    );
    assert_eq!(member_of(&net.view(0), 4).unwrap().status, RingStatus::Left);
}

/// The test operator's signature of the removal of `node`.
fn operator_signature(node: NodeId) -> Vec<u8> {
    crate::membership::InsecureTestAuth::operator_sign(&crate::membership::removal_message(node))
}

#[test]
fn an_operator_removes_a_dead_node_and_a_revived_one_stops() {
    let mut net = cluster(4);
    net.crash(addr(3));
    net.run_for(Duration::from_secs(10));
    let dead = NodeId::new(103);
    let n0 = net.nodes.get_mut(&addr(0)).unwrap();
    assert_eq!(
        n0.remove(
            NodeId::new(100),
            operator_signature(NodeId::new(100)),
            false,
            net.now
        ),
        Err(RemoveError::Itself(NodeId::new(100)))
    );
    assert_eq!(
        n0.remove(
            NodeId::new(999),
            operator_signature(NodeId::new(999)),
            false,
            net.now
        ),
        Err(RemoveError::Unknown(NodeId::new(999)))
    );
    // Without the operator's signature of this very removal, nothing is removed: a node's own
    // signature, the operator's removal of another node, nothing at all.
    use crate::membership::EntryAuth as _;
    for sig in [
        crate::membership::InsecureTestAuth::new(NodeId::new(100))
            .sign(&crate::membership::removal_message(dead)),
        operator_signature(NodeId::new(102)),
        Vec::new(),
    ] {
        assert_eq!(
            n0.remove(dead, sig, true, net.now),
            Err(RemoveError::NotSigned(dead))
        );
    }
    assert_eq!(n0.removal_confirmed(dead), None);
    // A live member is not removed without force, and nothing changes.
    let ring_before = n0.cluster_view();
    assert_eq!(
        n0.remove(
            NodeId::new(102),
            operator_signature(NodeId::new(102)),
            false,
            net.now
        ),
        Err(RemoveError::NotDown {
            node: NodeId::new(102),
            liveness: Liveness::Alive
        })
    );
    assert_eq!(n0.removal_confirmed(NodeId::new(102)), None);
    assert_eq!(n0.cluster_view().members, ring_before.members);
    assert_eq!(
        n0.remove(dead, operator_signature(dead), false, net.now),
        Ok(())
    );
    assert_eq!(n0.removal_confirmed(dead), Some(false));
    net.drain(addr(0));
    net.run_for(Duration::from_secs(5));
    assert_eq!(net.nodes[&addr(0)].removal_confirmed(dead), Some(true));
    for i in 0..3 {
        let v = net.view(i);
        let m = member_of(&v, 3).unwrap();
        assert_eq!((m.status, m.partitions), (RingStatus::Left, 0), "n{i}");
        let total: u64 = v.members.iter().map(|m| m.partitions).sum();
        assert_eq!(total, 256 * 3, "three owners hold every replica");
        assert!(v.pending.is_empty());
    }
    // The machine was not dead after all: it comes back, learns it was removed, and stops.
    net.start(config(3, 2, vec![addr(0)]));
    net.run_for(Duration::from_secs(10));
    assert!(net.left.contains(&addr(3)));
    assert!(net.nodes[&addr(3)].has_left());
    assert!(matches!(
        Node::new(
            config(3, 3, vec![addr(0)]),
            1,
            net.disks[&addr(3)].clone(),
            SharedMemoryStore::new()
        ),
        Err(NodeError::AlreadyLeft(_))
    ));
}

#[test]
fn a_joining_node_becomes_a_member_only_after_syncing_with_a_member() {
    let mut net = Net::new();
    // n1 and n2 know only each other and n0, which is down: they must not promote themselves.
    net.start(config(1, 1, vec![addr(2)]));
    net.start(config(2, 1, vec![addr(1), addr(0)]));
    net.run_for(Duration::from_secs(10));
    for i in [1, 2] {
        assert_eq!(
            member_of(&net.view(i), i).unwrap().status,
            RingStatus::Joining,
            "n{i} synced only with a joining node"
        );
    }
    net.start(config(0, 1, vec![]));
    net.run_for(Duration::from_secs(15));
    for i in 0..3 {
        let v = net.view(i);
        assert_eq!(v.members.len(), 3, "n{i}: {v:?}");
        assert!(
            v.members.iter().all(|m| m.status == RingStatus::Member),
            "n{i}: {v:?}"
        );
    }
}

#[test]
fn a_write_on_one_node_is_read_from_every_node_and_kept_on_three_replicas() {
    let mut net = cluster(4);
    let w = written(net.put(3, b"cart:1", b"apples", None));
    assert!(w.acks >= 2, "{w:?}");
    assert_eq!(w.values, vec![b"apples".to_vec()]);
    net.run_for(Duration::from_secs(1));
    for i in 0..4 {
        let r = net.get(i, b"cart:1", 3);
        assert_eq!(r.values, vec![b"apples".to_vec()], "via n{i}");
        assert!(!r.deleted);
    }
    let holders = (0..4)
        .filter(|&i| {
            net.nodes[&addr(i)]
                .local_object(b"cart:1")
                .unwrap()
                .is_some()
        })
        .count();
    assert_eq!(holders, 3, "N=3 replicas hold the key");
}

#[test]
fn stale_contexts_make_siblings_and_the_returned_context_resolves_them() {
    let mut net = cluster(3);
    let first = written(net.put(0, b"k", b"v0", None));
    let stale = first.context.clone();
    let a = written(net.put(1, b"k", b"a", Some(stale.clone())));
    let b = written(net.put(2, b"k", b"b", Some(stale)));
    assert_eq!(a.values, vec![b"a".to_vec()]);
    // The second writer learns of the first's value with its own answer.
    assert_eq!(sorted(b.values.clone()), vec![b"a".to_vec(), b"b".to_vec()]);
    net.run_for(Duration::from_secs(1));
    let r = net.get(0, b"k", 3);
    assert_eq!(sorted(r.values.clone()), vec![b"a".to_vec(), b"b".to_vec()]);
    let resolved = written(net.put(0, b"k", b"ab", r.context));
    assert_eq!(resolved.values, vec![b"ab".to_vec()]);
    net.run_for(Duration::from_secs(1));
    for i in 0..3 {
        assert_eq!(net.get(i, b"k", 3).values, vec![b"ab".to_vec()], "n{i}");
    }
}

#[test]
fn deletes_leave_a_tombstone_and_a_context() {
    let mut net = cluster(3);
    let w = written(net.put(0, b"gone", b"x", None));
    let d = written(net.request(
        1,
        b"gone",
        ClientOp::Delete {
            context: Some(w.context),
        },
        RequestOptions::default(),
    ));
    assert!(d.values.is_empty(), "{d:?}");
    net.run_for(Duration::from_secs(1));
    let r = net.get(2, b"gone", 3);
    assert!(
        r.values.is_empty() && r.deleted && r.context.is_some(),
        "{r:?}"
    );
    let never = net.get(2, b"never", 2);
    assert!(never.values.is_empty() && !never.deleted && never.context.is_none());
}

#[test]
fn bad_requests_are_refused_and_change_nothing() {
    let mut net = cluster(3);
    written(net.put(0, b"k", b"v", None));
    let other_ctx = written(net.put(0, b"other", b"o", None)).context;
    let bad = [
        net.put(0, b"k", b"x", Some(other_ctx)),
        net.put(0, &[1; 1025], b"x", None),
        net.put(0, b"k", &vec![0; 1024 * 1024 + 1], None),
        net.request(
            0,
            b"k",
            ClientOp::Get,
            RequestOptions {
                r: Some(4),
                ..RequestOptions::default()
            },
        ),
        net.request(
            0,
            b"k",
            ClientOp::Put {
                value: b"x".to_vec(),
                context: None,
            },
            RequestOptions {
                w: Some(0),
                ..RequestOptions::default()
            },
        ),
    ];
    let codes: Vec<&str> = bad
        .iter()
        .map(|r| match r {
            ClientReply::Failed(e) => e.code(),
            other => panic!("accepted: {other:?}"),
        })
        .collect();
    assert_eq!(
        codes,
        [
            "bad_request",
            "too_large",
            "too_large",
            "bad_request",
            "bad_request"
        ]
    );
    net.run_for(Duration::from_secs(1));
    assert_eq!(net.get(1, b"k", 3).values, vec![b"v".to_vec()]);
}

#[test]
fn with_a_replica_down_writes_go_to_a_fallback_and_the_hint_comes_home() {
    let mut net = cluster(4);
    // Find a key n3 replicates, then crash n3.
    let key = (0..1000)
        .map(|i| format!("key{i}").into_bytes())
        .find(|k| {
            let ring = net.nodes[&addr(0)].placement().unwrap();
            let p = ring.partition_of(k);
            ring.is_replica(p, NodeId::new(103), 3)
        })
        .unwrap();
    net.crash(addr(3));
    net.run_for(Duration::from_secs(10));
    let w = written(net.put(0, &key, b"during", None));
    assert!(w.acks >= 2, "{w:?}");
    net.run_for(Duration::from_secs(1));
    let held: usize = (0..3)
        .map(|i| net.nodes[&addr(i)].data_stats().hints_pending)
        .sum();
    assert_eq!(held, 1, "a fallback holds the write for n3");
    // Strict writes refuse fallbacks: only two replicas are up, so w=3 fails at once.
    let strict = net.request(
        0,
        &key,
        ClientOp::Put {
            value: b"strict".to_vec(),
            context: None,
        },
        RequestOptions {
            w: Some(3),
            strict: true,
            ..RequestOptions::default()
        },
    );
    assert!(
        matches!(
            strict,
            ClientReply::Failed(ClientError::Unavailable {
                indeterminate: false,
                ..
            })
        ),
        "{strict:?}"
    );
    net.start(config(3, 2, vec![addr(0)]));
    net.run_for(Duration::from_secs(10));
    let held: usize = (0..4)
        .map(|i| net.nodes[&addr(i)].data_stats().hints_pending)
        .sum();
    assert_eq!(held, 0, "hints drained");
    let local = net.nodes[&addr(3)].local_object(&key).unwrap().unwrap();
    let values: Vec<&[u8]> = local.as_register().unwrap().values().collect();
    assert_eq!(values, vec![&b"during"[..]], "n3 got the write it missed");
}

#[test]
fn a_non_replica_forwards_a_write_to_a_replica_which_mints_the_dot() {
    let mut net = cluster(5);
    let ring = net.nodes[&addr(0)].placement().unwrap().clone();
    let (key, outsider) = (0..1000)
        .map(|i| format!("fwd{i}").into_bytes())
        .find_map(|k| {
            let p = ring.partition_of(&k);
            (0..5)
                .find(|&i| !ring.is_replica(p, NodeId::new(100 + i), 3))
                .map(|i| (k, i))
        })
        .unwrap();
    let w = written(net.put(outsider, &key, b"v", None));
    let minter = w.dot.node;
    let replicas: Vec<NodeId> = ring.preference_list(ring.partition_of(&key), 3);
    let actors: Vec<NodeId> = replicas
        .iter()
        .map(|&r| net.nodes[&addr(r.get() - 100)].actor())
        .collect();
    assert!(
        actors.contains(&minter),
        "the dot was minted by a replica's actor"
    );
    assert_ne!(minter, net.nodes[&addr(outsider)].actor());
}

/// Three nodes where n2 missed a strict write of `rr` ("old" → "new") while it was down, and
/// is back.
fn stale_replica() -> Net {
    let mut net = cluster(3);
    written(net.put(0, b"rr", b"old", None));
    net.run_for(Duration::from_secs(1));
    net.crash(addr(2));
    net.run_for(Duration::from_secs(10));
    let ctx = net.get(0, b"rr", 2).context;
    // A strict write leaves no hint for n2: when it comes back, its copy is stale.
    let strict = RequestOptions {
        strict: true,
        ..RequestOptions::default()
    };
    let op = ClientOp::Put {
        value: b"new".to_vec(),
        context: ctx,
    };
    written(net.request(0, b"rr", op, strict));
    let hints: usize = (0..2)
        .map(|i| net.nodes[&addr(i)].data_stats().hints_pending)
        .sum();
    assert_eq!(hints, 0, "strict writes leave no hints");
    net.start(config(2, 2, vec![addr(0)]));
    net.run_for(Duration::from_secs(10));
    net
}

#[test]
fn a_read_repairs_a_stale_replica() {
    let mut net = stale_replica();
    let r = net.get(1, b"rr", 3);
    assert_eq!(r.values, vec![b"new".to_vec()]);
    net.run_for(Duration::from_millis(100));
    let local = net.nodes[&addr(2)].local_object(b"rr").unwrap().unwrap();
    let values: Vec<&[u8]> = local.as_register().unwrap().values().collect();
    assert_eq!(
        values,
        vec![&b"new"[..]],
        "read repair brought n2 up to date"
    );
    assert!(
        net.nodes[&addr(1)].data_stats().read_repairs >= 1,
        "the coordinator counts the repair it sent"
    );
}

/// The coordinator's log lines about a request carry the client's request id.
#[cfg(feature = "server")]
#[test]
fn the_coordinators_lines_about_a_request_carry_its_request_id() {
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Lines {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    let mut net = stale_replica();
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    net.request_id = Some(Arc::from("req-7f3a"));
    tracing::subscriber::with_default(subscriber, || {
        assert_eq!(net.get(1, b"rr", 3).values, vec![b"new".to_vec()]);
    });
    let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    let repair = text
        .lines()
        .find(|l| l.contains("read repair"))
        .unwrap_or_else(|| panic!("no read repair line:\n{text}"));
    assert!(repair.contains("request_id=\"req-7f3a\""), "{repair}");
}

#[test]
fn a_replica_that_does_not_answer_gets_a_hint_kept_by_the_coordinator() {
    // Three nodes: no fallback exists, so the coordinator keeps the hint itself.
    let mut net = cluster(3);
    net.crash(addr(2));
    // Before SWIM notices, the write still goes to n2, which never answers.
    let w = written(net.put(0, b"silent", b"v", None));
    assert_eq!(w.acks, 2);
    net.run_for(Duration::from_secs(1));
    assert_eq!(net.nodes[&addr(0)].data_stats().hints_pending, 1);
    net.run_for(Duration::from_secs(5));
    assert_eq!(
        net.nodes[&addr(0)].data_stats().requests_in_flight,
        0,
        "the request lingered until its deadline, no longer"
    );
    net.start(config(2, 2, vec![addr(0)]));
    net.run_for(Duration::from_secs(10));
    assert_eq!(net.nodes[&addr(0)].data_stats().hints_pending, 0);
    assert_eq!(net.nodes[&addr(0)].data_stats().hints_delivered, 1);
    let local = net.nodes[&addr(2)]
        .local_object(b"silent")
        .unwrap()
        .unwrap();
    assert_eq!(local.as_register().unwrap().values().count(), 1);
}

#[test]
fn writes_answered_but_waiting_for_a_silent_replica_do_not_count_against_the_cap() {
    // A cap of 4 requests in flight. n2 is dead but SWIM has not noticed yet: every write is
    // answered by two replicas and then lingers, waiting for n2 until its deadline. Lingering
    // writes must not make the node refuse new ones.
    let mut net = Net::new();
    for i in 0..3 {
        let mut c = config(i, 1, if i == 0 { vec![] } else { vec![addr(0)] });
        c.data.requests_in_flight_max = 4;
        net.start(c);
    }
    net.run_for(Duration::from_secs(10));
    net.until_caught_up();
    net.crash(addr(2));
    for i in 0..12u32 {
        let key = format!("k{i}");
        let w = written(net.put(0, key.as_bytes(), b"v", None));
        assert_eq!(w.acks, 2, "write {i}");
    }
    let stats = net.nodes[&addr(0)].data_stats();
    assert!(
        stats.requests_in_flight <= 4,
        "lingering requests are bounded too: {}",
        stats.requests_in_flight
    );
    // Every write is on the two live replicas.
    for i in 0..12u32 {
        let key = format!("k{i}");
        for n in 0..2 {
            assert!(
                net.nodes[&addr(n)]
                    .local_object(key.as_bytes())
                    .unwrap()
                    .is_some(),
                "{key} on n{n}"
            );
        }
    }
}

/// Which of nodes `0..n` hold a local copy of `key`, against which replicate it.
fn holders_and_owners(net: &Net, n: u64, key: &[u8]) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let ring = net.nodes[&addr(0)].placement().unwrap().clone();
    let owners = ring
        .preference_list(ring.partition_of(key), 3)
        .iter()
        .map(|id| id.get() - 100)
        .collect();
    let holders = (0..n)
        .filter(|&i| {
            net.nodes
                .get(&addr(i))
                .is_some_and(|node| node.local_object(key).unwrap().is_some())
        })
        .collect();
    (holders, owners)
}

#[test]
fn after_a_join_old_owners_drop_what_they_no_longer_own_and_a_leave_brings_it_back() {
    let mut net = cluster(3);
    let keys: Vec<String> = (0..300).map(|i| format!("user:{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        written(net.put(i as u64 % 3, k.as_bytes(), k.as_bytes(), None));
    }
    let actor_before = net.nodes[&addr(0)].actor();
    net.start(config(3, 1, vec![addr(0)]));
    net.run_for(Duration::from_secs(60));
    assert_eq!(
        member_of(&net.view(0), 3).map(|m| m.status),
        Some(RingStatus::Member)
    );
    let mut dropped = 0;
    for k in &keys {
        let (holders, owners) = holders_and_owners(&net, 4, k.as_bytes());
        assert_eq!(holders, owners, "{k}: held by exactly its replicas");
        // Every old node held every key (3 nodes, N = 3).
        dropped += (0..3).filter(|i| !owners.contains(i)).count() as u64;
    }
    let stats: u64 = (0..3)
        .map(|i| net.nodes[&addr(i)].data_stats().keys_dropped)
        .sum();
    assert_eq!(stats, dropped, "each old owner dropped what it lost");
    assert!(stats > 0);
    // Dropping retired the actor, so a key dropped and written again gets fresh dots.
    assert_ne!(net.nodes[&addr(0)].actor(), actor_before);
    for (i, k) in keys.iter().enumerate() {
        let r = net.get(i as u64 % 4, k.as_bytes(), 3);
        assert_eq!(r.values, vec![k.as_bytes().to_vec()], "{k}");
    }
    // Writes go on after the drop, with contexts from before it.
    for k in keys.iter().take(30) {
        let ctx = net.get(0, k.as_bytes(), 2).context;
        let w = written(net.put(0, k.as_bytes(), b"again", ctx));
        assert_eq!(w.values, vec![b"again".to_vec()], "{k}");
    }
    // n3 leaves: the others own everything again, with every write.
    let node = net.nodes.get_mut(&addr(3)).unwrap();
    node.leave(net.now);
    net.drain(addr(3));
    net.run_for(Duration::from_secs(60));
    assert!(net.left.contains(&addr(3)));
    for (i, k) in keys.iter().enumerate() {
        let (holders, owners) = holders_and_owners(&net, 3, k.as_bytes());
        assert_eq!(owners, BTreeSet::from([0, 1, 2]));
        assert_eq!(holders, owners, "{k}");
        let want: &[u8] = if i < 30 { b"again" } else { k.as_bytes() };
        for n in 0..3 {
            let local = net.nodes[&addr(n)]
                .local_object(k.as_bytes())
                .unwrap()
                .unwrap();
            let values: Vec<&[u8]> = local.as_register().unwrap().values().collect();
            assert_eq!(values, vec![want], "{k} on n{n}");
        }
    }
}

#[test]
fn a_leaving_fallback_passes_its_hints_to_a_node_without_the_write() {
    let mut net = cluster(5);
    let ring = net.nodes[&addr(0)].placement().unwrap().clone();
    let key = b"handed".to_vec();
    let primaries: Vec<u64> = ring
        .preference_list(ring.partition_of(&key), 3)
        .iter()
        .map(|n| n.get() - 100)
        .collect();
    let (a, b, c) = (primaries[0], primaries[1], primaries[2]);
    let others: Vec<u64> = (0..5).filter(|i| !primaries.contains(i)).collect();
    let (fallback, spare) = (others[0], others[1]);
    // A replica and the spare are down: the write's fallback can only be `fallback`.
    net.crash(addr(c));
    net.crash(addr(spare));
    net.run_for(Duration::from_secs(10));
    let w = written(net.put(a, &key, b"v", None));
    assert!(w.acks >= 2, "{w:?}");
    net.run_for(Duration::from_secs(1));
    let hints = |net: &Net, i: u64| {
        net.nodes
            .get(&addr(i))
            .map_or(0, |n| n.data_stats().hints_pending)
    };
    assert_eq!(
        hints(&net, fallback),
        1,
        "the fallback holds the write for c"
    );
    // The fallback leaves. The hint must not go to a or b: each may hold the write's only
    // other copy, and two copies would become one. It waits for a node without the write.
    let node = net.nodes.get_mut(&addr(fallback)).unwrap();
    node.leave(net.now);
    net.drain(addr(fallback));
    net.run_for(Duration::from_secs(30));
    assert_eq!(
        hints(&net, a) + hints(&net, b),
        0,
        "no holder took the hint"
    );
    assert_eq!(hints(&net, fallback), 1, "the leaver keeps it meanwhile");
    assert!(
        !net.left.contains(&addr(fallback)),
        "the leave waits for it"
    );
    net.start(config(spare, 2, vec![addr(a)]));
    net.run_for(Duration::from_secs(30));
    assert!(net.left.contains(&addr(fallback)), "the leave completed");
    assert_eq!(hints(&net, spare), 1, "the spare holds the hint now");
    assert_eq!(hints(&net, a) + hints(&net, b), 0);
    // When the replica is back, the hint reaches it.
    net.start(config(c, 2, vec![addr(a)]));
    net.run_for(Duration::from_secs(20));
    assert_eq!(hints(&net, spare), 0, "hint delivered");
    let local = net.nodes[&addr(c)].local_object(&key).unwrap().unwrap();
    let values: Vec<&[u8]> = local.as_register().unwrap().values().collect();
    assert_eq!(values, vec![&b"v"[..]]);
}

#[test]
fn an_acknowledgement_from_a_node_that_is_not_a_target_counts_for_nothing() {
    let mut net = cluster(4);
    let ring = net.nodes[&addr(0)].placement().unwrap().clone();
    // A key n0 replicates and n3 does not.
    let key = (0..1000)
        .map(|i| format!("forged{i}").into_bytes())
        .find(|k| {
            let p = ring.partition_of(k);
            ring.is_replica(p, NodeId::new(100), 3) && !ring.is_replica(p, NodeId::new(103), 3)
        })
        .unwrap();
    let p = ring.partition_of(&key);
    let silent = ring
        .preference_list(p, 3)
        .into_iter()
        .find(|&n| n != NodeId::new(100))
        .unwrap();
    // The key exists (so n0 writes at once instead of first asking what the key holds).
    written(net.put(0, &key, b"v0", None));
    net.run_for(Duration::from_secs(1));
    // That replica crashes; before SWIM notices, a w=3 write is sent to it.
    net.crash(addr(silent.get() - 100));
    net.seq += 1;
    let handle = net.seq;
    let now = net.now;
    let request = ClientRequest {
        key: key.clone(),
        op: ClientOp::Put {
            value: b"v".to_vec(),
            context: None,
        },
        options: RequestOptions {
            w: Some(3),
            strict: true,
            timeout_ms: Some(1000),
            ..RequestOptions::default()
        },
    };
    net.nodes
        .get_mut(&addr(0))
        .unwrap()
        .handle_client(handle, request, now);
    net.drain(addr(0));
    net.run_for(Duration::from_millis(5));
    // n3 learns the real request id (here: from the message to the dead replica) and
    // acknowledges it.
    let req = net
        .sent_to_dead
        .iter()
        .find_map(|(to, bytes)| {
            if *to != addr(silent.get() - 100) {
                return None;
            }
            match crate::protocol::decode::<PeerMessage>(bytes) {
                Ok(PeerMessage::Replica(ReplicaMessage::Write { req, .. })) => Some(req),
                _ => None,
            }
        })
        .expect("the write went to the silent replica");
    let forged =
        crate::protocol::encode(&PeerMessage::Coordinator(CoordinatorMessage::Ack { req }))
            .unwrap();
    let now = net.now;
    net.nodes
        .get_mut(&addr(0))
        .unwrap()
        .handle_message(NodeId::new(103), &forged, now);
    net.drain(addr(0));
    net.run_for(Duration::from_secs(3));
    let reply = net
        .replies
        .remove(&handle)
        .expect("answered by its deadline");
    assert!(
        matches!(reply, ClientReply::Failed(_)),
        "a forged acknowledgement completed w=3: {reply:?}"
    );
}

fn update(net: &mut Net, i: u64, key: &[u8], op: CrdtOp, op_id: &str) -> ClientReply {
    let op = ClientOp::Update {
        op,
        op_id: op_id.to_owned(),
    };
    net.request(i, key, op, RequestOptions::default())
}

#[test]
fn counter_updates_reach_every_replica_and_a_replayed_op_id_counts_once() {
    let mut net = cluster(3);
    let incr = |n| CrdtOp::GCounter { increment: n };
    match update(&mut net, 0, b"hits", incr(2), "op-a") {
        ClientReply::Updated(u) => {
            assert_eq!((u.value, u.replayed), (CrdtValue::Counter(2), false));
            assert!(u.acks >= 2);
        }
        other => panic!("{other:?}"),
    }
    // The same id through another node: acknowledged again, applied once.
    match update(&mut net, 2, b"hits", incr(2), "op-a") {
        ClientReply::Updated(u) => assert_eq!((u.value, u.replayed), (CrdtValue::Counter(2), true)),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        update(&mut net, 1, b"hits", incr(3), "op-b"),
        ClientReply::Updated(_)
    ));
    net.run_for(Duration::from_secs(1));
    for i in 0..3 {
        let r = net.get(i, b"hits", 3);
        assert_eq!(r.type_name.as_deref(), Some("gcounter"));
        assert_eq!(r.crdt, Some(CrdtValue::Counter(5)), "node {i}");
        assert!(r.values.is_empty() && r.context.is_none());
    }
}

#[test]
fn a_key_keeps_the_type_of_its_first_write() {
    let mut net = cluster(3);
    written(net.put(0, b"k", b"v", None));
    let refused = update(&mut net, 1, b"k", CrdtOp::GCounter { increment: 1 }, "x");
    assert!(
        matches!(&refused, ClientReply::Failed(ClientError::TypeConflict(m)) if m.contains("register")),
        "{refused:?}"
    );
    let set = CrdtOp::ORSet {
        add: vec!["a".into()],
        remove: vec![],
        context: None,
    };
    assert!(matches!(
        update(&mut net, 2, b"s", set, "y"),
        ClientReply::Updated(_)
    ));
    assert!(matches!(
        net.put(0, b"s", b"v", None),
        ClientReply::Failed(ClientError::TypeConflict(_))
    ));
    let r = net.get(2, b"k", 3);
    assert_eq!(r.values, vec![b"v".to_vec()]);
    let s = net.get(1, b"s", 3);
    assert_eq!(s.crdt, Some(CrdtValue::Set(vec!["a".into()])));
    assert!(s.context.is_some(), "an OR-Set read carries its context");
}

#[test]
fn invalid_updates_are_refused_before_anything_changes() {
    let mut net = cluster(3);
    let refused = |reply: ClientReply| {
        matches!(
            reply,
            ClientReply::Failed(ClientError::BadRequest(_) | ClientError::TooLarge(_))
        )
    };
    assert!(refused(update(
        &mut net,
        0,
        b"c",
        CrdtOp::GCounter { increment: 0 },
        "a"
    )));
    assert!(refused(update(
        &mut net,
        0,
        b"c",
        CrdtOp::GCounter { increment: 1 },
        ""
    )));
    assert!(refused(update(
        &mut net,
        0,
        b"c",
        CrdtOp::GCounter { increment: 1 },
        "bad id"
    )));
    let big = CrdtOp::TwoPSet {
        add: vec!["x".repeat(1025)],
        remove: vec![],
    };
    assert!(refused(update(&mut net, 0, b"c", big, "b")));
    let r = net.get(0, b"c", 3);
    assert_eq!((r.type_name, r.crdt), (None, None), "nothing was written");
}

/// Anti-entropy messages a peer could forge or mangle: each is refused or ignored, nothing
/// panics, the node's data stays as it was, and it keeps serving.
#[test]
fn hostile_anti_entropy_messages_change_nothing() {
    use crate::merkle::{BucketSet, Digest};
    use crate::node::sync::AeMessage;
    use crate::ring::PartitionId;

    let mut net = cluster(3);
    let _ = net.put(1, b"k", b"v", None);
    net.run_for(Duration::from_secs(1));
    let roots_before = net.nodes.get_mut(&addr(1)).unwrap().merkle_roots();
    assert_eq!(roots_before.len(), 1, "one key, one partition");
    let mut all = BucketSet::default();
    for b in 0..crate::merkle::BUCKETS {
        all.insert(b);
    }
    let p = PartitionId::new(3);
    let hostile = vec![
        // Wrong number of groups; a partition beyond the ring.
        AeMessage::Compare {
            xid: 1,
            p,
            groups: vec![Digest::ZERO; 3],
        },
        AeMessage::Compare {
            xid: 2,
            p: PartitionId::new(60_000),
            groups: vec![Digest::ZERO; crate::merkle::GROUPS],
        },
        // A page outside its partition, one reversed, one with too many digests.
        AeMessage::Keys {
            xid: 3,
            p,
            buckets: all.clone(),
            from: vec![0xff, 0xff, 1],
            to: Vec::new(),
            digests: Vec::new(),
        },
        AeMessage::Keys {
            xid: 4,
            p,
            buckets: all.clone(),
            from: vec![0, 3, 9],
            to: vec![0, 3, 1],
            digests: Vec::new(),
        },
        AeMessage::Keys {
            xid: 5,
            p,
            buckets: all,
            from: vec![0, 3],
            to: Vec::new(),
            digests: (0..5000)
                .map(|i: u32| {
                    (
                        serde_bytes::ByteBuf::from(i.to_be_bytes().to_vec()),
                        Digest::ZERO,
                    )
                })
                .collect(),
        },
        // Answers to exchanges that do not exist.
        AeMessage::Buckets {
            xid: 77,
            buckets: vec![(65535, Digest::ZERO)],
            complete: true,
        },
        AeMessage::Diff {
            xid: 78,
            from: Vec::new(),
            want: Vec::new(),
            upto: Some(serde_bytes::ByteBuf::from(vec![1])),
            entries: Vec::new(),
        },
        AeMessage::Refused {
            xid: 79,
            why: "no".into(),
        },
    ];
    let node = net.nodes.get_mut(&addr(1)).unwrap();
    for m in hostile {
        let bytes = crate::protocol::encode(&PeerMessage::from(SyncMessage::Ae(m))).unwrap();
        node.handle_message(NodeId::new(102), &bytes, net.now);
    }
    assert_eq!(node.merkle_roots(), roots_before);
    net.drain(addr(1));
    net.run_for(Duration::from_secs(2));
    assert_eq!(net.get(1, b"k", 2).values, vec![b"v".to_vec()]);
}

/// Tombstone GC: short intervals, so tests see rounds within simulated minutes.
fn gc_config(i: u64, generation: u64, seeds: Vec<SocketAddr>) -> NodeConfig {
    let mut c = config(i, generation, seeds);
    c.data.tombstone_gc_interval = Some(Duration::from_secs(5));
    c.data.tombstone_gc_quiet = Duration::from_secs(20);
    c.data.timeout_max = Duration::from_secs(10);
    c.data.anti_entropy_interval = Some(Duration::from_secs(10));
    c
}

fn gc_cluster(n: u64) -> Net {
    let mut net = Net::new();
    net.start(gc_config(0, 1, vec![]));
    for i in 1..n {
        net.start(gc_config(i, 1, vec![addr(0)]));
    }
    net.run_for(Duration::from_secs(10));
    net.until_caught_up();
    net
}

fn purged(net: &Net, n: u64) -> u64 {
    (0..n)
        .filter_map(|i| net.nodes.get(&addr(i)))
        .map(|node| node.data_stats().tombstones_purged)
        .sum()
}

/// The first replica of `key` (it coordinates the key's writes).
fn first_replica(net: &Net, key: &[u8]) -> u64 {
    let ring = net.nodes[&addr(0)].placement().unwrap().clone();
    ring.preference_list(ring.partition_of(key), 3)[0].get() - 100
}

#[test]
fn tombstones_are_purged_once_every_member_agrees_and_the_key_lives_again() {
    let mut net = gc_cluster(4);
    let keys: Vec<String> = (0..40).map(|i| format!("gone:{i}")).collect();
    let mut old_state = BTreeMap::new();
    for k in &keys {
        let at = first_replica(&net, k.as_bytes());
        let w = written(net.put(at, k.as_bytes(), b"v", None));
        let d = written(net.request(
            at,
            k.as_bytes(),
            ClientOp::Delete {
                context: Some(w.context),
            },
            RequestOptions {
                w: Some(3),
                ..RequestOptions::default()
            },
        ));
        assert!(d.values.is_empty());
        let tomb = net.nodes[&addr(at)].local_object(k.as_bytes()).unwrap();
        old_state.insert(k.clone(), (at, tomb.unwrap()));
    }
    // Within the quiet window (the deletes just went out), nothing goes.
    net.run_for(Duration::from_secs(10));
    assert_eq!(purged(&net, 4), 0);
    net.run_for(Duration::from_secs(120));
    // Every replica purged every tombstone; no node holds anything of the keys.
    assert_eq!(purged(&net, 4), 3 * keys.len() as u64);
    for k in &keys {
        let (holders, _) = holders_and_owners(&net, 4, k.as_bytes());
        assert!(holders.is_empty(), "{k} still held by {holders:?}");
        let r = net.get(0, k.as_bytes(), 3);
        assert!(
            r.values.is_empty() && !r.deleted && r.context.is_none(),
            "{r:?}"
        );
    }
    let rounds: u64 = (0..4)
        .map(|i| net.nodes[&addr(i)].data_stats().gc_rounds)
        .sum();
    assert!(rounds > 0);
    // The keys live again through the node that minted their old dots. A copy of the old
    // tombstone that a lost purge would have left (delivered here by hand) does not swallow
    // the new write: its dot is above everything the old life used.
    for k in &keys {
        let (at, tomb) = old_state[k].clone();
        let w = written(net.put(at, k.as_bytes(), b"again", None));
        assert_eq!(w.values, vec![b"again".to_vec()]);
        let merge = PeerMessage::Replica(ReplicaMessage::Merge {
            reply: MergeReply::Repair,
            entries: vec![MergeEntry {
                key: k.as_bytes().to_vec(),
                object: tomb,
            }],
        });
        let bytes = protocol::encode(&merge).unwrap();
        for n in 0..4 {
            let now = net.now;
            let from = NodeId::new(100 + (n + 1) % 4);
            net.nodes
                .get_mut(&addr(n))
                .unwrap()
                .handle_message(from, &bytes, now);
            net.drain(addr(n));
        }
        net.run_for(Duration::from_secs(1));
        for n in 0..4 {
            let r = net.get(n, k.as_bytes(), 3);
            assert_eq!(r.values, vec![b"again".to_vec()], "{k} read at n{n}");
        }
    }
}

#[test]
fn a_member_that_missed_a_delete_holds_its_purge_back_and_nothing_comes_back() {
    let mut net = gc_cluster(3);
    let w = written(net.put(0, b"k", b"old", None));
    // n2 goes down holding "old"; the delete reaches n0 and n1 only.
    net.crash(addr(2));
    net.run_for(Duration::from_secs(10));
    let d = written(net.request(
        0,
        b"k",
        ClientOp::Delete {
            context: Some(w.context),
        },
        RequestOptions {
            w: Some(2),
            ..RequestOptions::default()
        },
    ));
    assert!(d.values.is_empty());
    net.run_for(Duration::from_secs(120));
    assert_eq!(purged(&net, 3), 0, "a member is down: no round");
    net.start(gc_config(2, 2, vec![addr(0)]));
    net.run_for(Duration::from_secs(240));
    // n2 got the tombstone (hints or anti-entropy), then every copy was purged.
    assert_eq!(purged(&net, 3), 3);
    let (holders, _) = holders_and_owners(&net, 3, b"k");
    assert!(holders.is_empty(), "{holders:?}");
    for n in 0..3 {
        let r = net.get(n, b"k", 1);
        assert!(r.values.is_empty(), "n{n} resurrected {r:?}");
    }
}

fn update_with(
    net: &mut Net,
    i: u64,
    key: &[u8],
    op: CrdtOp,
    op_id: &str,
    options: RequestOptions,
) -> ClientReply {
    let op = ClientOp::Update {
        op,
        op_id: op_id.to_owned(),
    };
    net.request(i, key, op, options)
}

/// Issue 20, defect 1: a replayed operation id is acknowledged by every replica that holds
/// it, the coordinator included, so a retry at `w = N` succeeds (it timed out, 2 of 3).
#[test]
fn a_replay_at_w_equal_n_is_acknowledged_by_every_replica_including_the_coordinator() {
    let mut net = cluster(3);
    let all = RequestOptions {
        w: Some(3),
        ..RequestOptions::default()
    };
    let incr = CrdtOp::GCounter { increment: 1 };
    let first = update_with(&mut net, 0, b"c5", incr.clone(), "retry-1", all);
    assert!(
        matches!(&first, ClientReply::Updated(u) if u.acks == 3 && !u.replayed),
        "{first:?}"
    );
    // The same request again, through every node (each coordinates it: with N = 3 on three
    // nodes every node is a replica).
    for i in [0, 0, 1, 2] {
        match update_with(&mut net, i, b"c5", incr.clone(), "retry-1", all) {
            ClientReply::Updated(u) => {
                assert_eq!(u.acks, 3, "through node {i}");
                assert!(u.replayed, "through node {i}");
                assert_eq!(u.value, CrdtValue::Counter(1));
            }
            other => panic!("a replay through node {i} at w=3: {other:?}"),
        }
    }
    // With one replica down, a replay at w = 2 succeeds the same way.
    net.crash(addr(2));
    net.run_for(Duration::from_secs(8));
    let two = RequestOptions {
        w: Some(2),
        strict: true,
        ..RequestOptions::default()
    };
    for i in [0, 1] {
        match update_with(&mut net, i, b"c5", incr.clone(), "retry-1", two) {
            ClientReply::Updated(u) => assert!(u.replayed && u.acks == 2, "{u:?}"),
            other => panic!("a replay through node {i} at w=2, one replica down: {other:?}"),
        }
    }
}

fn no_hints_config(i: u64, generation: u64, seeds: Vec<SocketAddr>) -> NodeConfig {
    let mut c = config(i, generation, seeds);
    c.data.hints = false;
    c
}

fn pn(increment: i64) -> CrdtOp {
    CrdtOp::PNCounter { increment }
}

/// Issue 20, defect 4 (the reproduction on real nodes, in miniature): a replica that missed
/// a counter's writes takes a register write for the key before it has its copy. On main it
/// answered 204 and kept a register while the others kept the counter, for good; now it asks
/// the other replicas first and refuses (409, nothing stored), and every replica converges.
#[test]
fn a_write_of_another_type_on_a_replica_without_its_copy_is_refused_and_replicas_converge() {
    let mut net = Net::new();
    net.start(no_hints_config(0, 1, vec![]));
    for i in 1..3 {
        net.start(no_hints_config(i, 1, vec![addr(0)]));
    }
    net.run_for(Duration::from_secs(10));
    net.until_caught_up();
    net.crash(addr(2));
    net.run_for(Duration::from_secs(8));
    let w2 = RequestOptions {
        w: Some(2),
        ..RequestOptions::default()
    };
    for n in 0..3 {
        let r = update_with(&mut net, 0, b"k", pn(10), &format!("i{n}"), w2);
        assert!(matches!(r, ClientReply::Updated(_)), "{r:?}");
    }
    net.start(no_hints_config(2, 2, vec![addr(0)]));
    net.run_for(Duration::from_secs(3));
    assert!(net.nodes[&addr(2)].local_object(b"k").unwrap().is_none());
    let put = net.request(
        2,
        b"k",
        ClientOp::Put {
            value: b"oops".to_vec(),
            context: None,
        },
        RequestOptions {
            w: Some(1),
            ..RequestOptions::default()
        },
    );
    assert!(
        matches!(&put, ClientReply::Failed(ClientError::TypeConflict(m)) if m.contains("pncounter")),
        "{put:?}"
    );
    // Within two anti-entropy intervals every replica holds the same counter (op-id rows of
    // the other replicas may reach the first one in the second round).
    net.run_for(Duration::from_secs(130));
    let states: Vec<Option<Object>> = (0..3)
        .map(|i| net.nodes[&addr(i)].local_object(b"k").unwrap())
        .collect();
    assert!(states[0].is_some());
    assert!(states.iter().all(|s| s == &states[0]), "{states:?}");
    let r = net.get(2, b"k", 3);
    assert_eq!(r.type_name.as_deref(), Some("pncounter"));
    assert_eq!(r.crdt, Some(CrdtValue::Counter(30)));
    assert!(matches!(
        update(&mut net, 2, b"k", pn(1), "after"),
        ClientReply::Updated(_)
    ));
}

/// Issue 20, defect 4: two coordinators create one key with two types at once. Both writes
/// were acknowledged, so both are kept: every replica converges to one contested state, and a
/// read says so and shows each part. Deleting the register part with its context ends the
/// contest, leaving the counter.
#[test]
fn keys_created_with_two_types_at_once_converge_to_one_contested_state() {
    let mut net = cluster(3);
    let (now, key) = (net.now, b"both".to_vec());
    let put = ClientRequest {
        key: key.clone(),
        op: ClientOp::Put {
            value: b"reg".to_vec(),
            context: None,
        },
        options: RequestOptions::default(),
    };
    let incr = ClientRequest {
        key: key.clone(),
        op: ClientOp::Update {
            op: CrdtOp::GCounter { increment: 5 },
            op_id: "g".into(),
        },
        options: RequestOptions::default(),
    };
    net.nodes
        .get_mut(&addr(0))
        .unwrap()
        .handle_client(9001, put, now);
    net.nodes
        .get_mut(&addr(1))
        .unwrap()
        .handle_client(9002, incr, now);
    net.drain(addr(0));
    net.drain(addr(1));
    net.run_for(Duration::from_secs(2));
    assert!(
        matches!(net.replies.remove(&9001), Some(ClientReply::Written(_))),
        "the register write was acknowledged"
    );
    assert!(
        matches!(net.replies.remove(&9002), Some(ClientReply::Updated(_))),
        "the counter update was acknowledged"
    );
    // Within two anti-entropy intervals every replica holds the same state (op-id rows claim
    // only what is durable, so they reach the others a round after the data).
    net.run_for(Duration::from_secs(130));
    let states: Vec<Object> = (0..3)
        .map(|i| net.nodes[&addr(i)].local_object(&key).unwrap().unwrap())
        .collect();
    assert!(states.iter().all(|s| s == &states[0]), "{states:?}");
    assert!(states[0].is_contested());
    let r = net.get(2, &key, 3);
    assert_eq!(r.type_name.as_deref(), Some("contested"));
    let types: Vec<&str> = r.parts.iter().map(|p| p.type_name.as_str()).collect();
    assert_eq!(types, ["register", "gcounter"]);
    assert_eq!(r.parts[0].values, vec![b"reg".to_vec()]);
    assert_eq!(r.parts[1].crdt, Some(CrdtValue::Counter(5)));
    // Updates of either live type still apply; a third type is refused.
    assert!(matches!(
        update(&mut net, 1, &key, CrdtOp::GCounter { increment: 1 }, "g2"),
        ClientReply::Updated(u) if u.value == CrdtValue::Counter(6)
    ));
    assert!(matches!(
        update(&mut net, 1, &key, pn(1), "p"),
        ClientReply::Failed(ClientError::TypeConflict(_))
    ));
    // The register part ends with a delete carrying its context.
    let ctx = r.parts[0].context.clone();
    let del = net.request(
        0,
        &key,
        ClientOp::Delete { context: ctx },
        RequestOptions::default(),
    );
    assert!(matches!(del, ClientReply::Written(_)), "{del:?}");
    net.run_for(Duration::from_secs(1));
    let r = net.get(1, &key, 3);
    assert_eq!(r.type_name.as_deref(), Some("gcounter"));
    assert_eq!(r.crdt, Some(CrdtValue::Counter(6)));
    assert!(r.parts.is_empty());
}

/// Issue 20, defect 6: a counter's range belongs to the counter. On main an increment's fate
/// depended on the coordinating process's own entry: three rounds of +MAX/-MAX through one
/// node overflowed its entry (400) while the value stayed 0.
#[test]
fn a_counter_update_gets_the_same_answer_through_any_node() {
    let mut net = cluster(3);
    let max = i64::MAX;
    for round in 0..3 {
        for (n, step) in [(max, "up"), (-max, "down")] {
            let r = update(&mut net, 0, b"pn", pn(n), &format!("{step}{round}"));
            assert!(matches!(r, ClientReply::Updated(_)), "round {round}: {r:?}");
        }
    }
    assert!(matches!(
        update(&mut net, 0, b"pn", pn(max), "top"),
        ClientReply::Updated(u) if u.value == CrdtValue::Counter(i128::from(max))
    ));
    // Past the top: refused through every node, and nothing changed.
    for i in 0..3 {
        let r = update(&mut net, i, b"pn", pn(1), &format!("over{i}"));
        assert!(
            matches!(&r, ClientReply::Failed(ClientError::BadRequest(m)) if m.contains("range")),
            "through node {i}: {r:?}"
        );
    }
    // A valid update still applies.
    assert!(matches!(
        update(&mut net, 2, b"pn", pn(-1), "back"),
        ClientReply::Updated(u) if u.value == CrdtValue::Counter(i128::from(max) - 1)
    ));
    let g = |n: u64| CrdtOp::GCounter { increment: n };
    assert!(matches!(
        update(&mut net, 1, b"g", g(max as u64), "g1"),
        ClientReply::Updated(_)
    ));
    for i in 0..3 {
        assert!(matches!(
            update(&mut net, i, b"g", g(1), &format!("g-over{i}")),
            ClientReply::Failed(ClientError::BadRequest(_))
        ));
    }
}

/// A register of `siblings` concurrent values of 1 MiB each, by actors from `first`.
fn big_register(first: u64, siblings: u64) -> Object {
    let mut r = crate::causality::Register::new();
    for a in first..first + siblings {
        r.put(
            NodeId::new(a),
            &crate::causality::VersionVector::new(),
            vec![b'a'; 1 << 20],
        );
    }
    Object::Register(r)
}

/// Issue 20, defect 5: a replica acknowledges exactly what it stored. A hint whose merge into
/// its owner's copy would be larger than a replica stores is refused there; the fallback keeps
/// it (and both count it). On main the owner counted the refused entry as handled and the
/// fallback deleted the hint: the siblings it carried were gone.
#[test]
fn a_hint_the_owner_cannot_store_stays_with_the_fallback() {
    let mut net = cluster(3);
    let key = b"huge".to_vec();
    // Each state alone is under the stored limit; together they are over it.
    let siblings = (super::object::OBJECT_BYTES_MAX as u64 / (1 << 20)) * 6 / 10;
    let mine = big_register(1000, siblings);
    let theirs = big_register(5000, siblings);
    let (x, y, z) = (NodeId::new(100), NodeId::new(101), NodeId::new(102));
    let now = net.now;
    let to_y = crate::protocol::encode(&PeerMessage::Replica(ReplicaMessage::Merge {
        reply: replica::MergeReply::Repair,
        entries: vec![MergeEntry {
            key: key.clone(),
            object: mine,
        }],
    }))
    .unwrap();
    net.nodes
        .get_mut(&addr(1))
        .unwrap()
        .handle_message(z, &to_y, now);
    net.drain(addr(1));
    let to_x = crate::protocol::encode(&PeerMessage::Hints(HintsMessage::Store {
        req: 0,
        target: y,
        key: key.clone(),
        object: theirs,
        holders: vec![z],
    }))
    .unwrap();
    net.nodes
        .get_mut(&addr(0))
        .unwrap()
        .handle_message(z, &to_x, now);
    net.drain(addr(0));
    net.run_for(Duration::from_secs(3));
    let (sx, sy) = (
        net.nodes[&addr(0)].data_stats(),
        net.nodes[&addr(1)].data_stats(),
    );
    assert_eq!(sx.hints_pending, 1, "the fallback keeps the hint: {sx:?}");
    assert!(sx.sends_refused >= 1, "{sx:?}");
    assert!(sy.merges_refused >= 1, "{sy:?}");
    let _ = x;
    // The owner's copy is its own state, untouched.
    let held = net.nodes[&addr(1)].local_object(&key).unwrap().unwrap();
    assert_eq!(
        held.as_register().unwrap().values().count() as u64,
        siblings
    );
}

/// Issue 21, item 6: the sibling guard. Blind writes to one key grow its siblings up to the
/// bound; beyond it a blind write is refused (413, nothing changed) and says how to resolve;
/// a write with the context of a read resolves them; the keys with the most siblings are
/// reported.
#[test]
fn the_sibling_guard_refuses_blind_writes_beyond_the_bound_and_reports_the_key() {
    let mut net = Net::new();
    let guarded = |i: u64, seeds: Vec<SocketAddr>| {
        let mut c = config(i, 1, seeds);
        c.data.siblings_max = 4;
        c
    };
    net.start(guarded(0, vec![]));
    for i in 1..3 {
        net.start(guarded(i, vec![addr(0)]));
    }
    net.run_for(Duration::from_secs(10));
    net.until_caught_up();
    for n in 0..4 {
        let w = written(net.put(0, b"hot", format!("v{n}").as_bytes(), None));
        assert_eq!(w.values.len(), n + 1);
    }
    let refused = net.put(1, b"hot", b"one too many", None);
    assert!(
        matches!(&refused, ClientReply::Failed(ClientError::TooLarge(m)) if m.contains("siblings") && m.contains("context")),
        "{refused:?}"
    );
    let r = net.get(2, b"hot", 3);
    assert_eq!(r.values.len(), 4, "nothing changed");
    let stats = net.nodes[&addr(0)].data_stats();
    assert_eq!(
        stats
            .crowded_keys
            .first()
            .map(|k| (k.key.as_str(), k.siblings)),
        Some(("hot", 4))
    );
    // Resolving with the read's context goes through and clears the report.
    let w = written(net.put(1, b"hot", b"merged", r.context));
    assert_eq!(w.values, vec![b"merged".to_vec()]);
    net.run_for(Duration::from_secs(1));
    for i in 0..3 {
        let stats = net.nodes[&addr(i)].data_stats();
        assert!(
            stats.crowded_keys.is_empty(),
            "node {i}: {:?}",
            stats.crowded_keys
        );
    }
    assert_eq!(net.nodes[&addr(1)].data_stats().siblings_refused, 1);
}

/// Issue 21, item 1: a node that stalls, is removed by an operator as dead, and resumes with
/// a stale view must not bring back a delete that was acknowledged and purged while it was
/// gone. Its data-plane messages are refused by the members (and counted), and it stops
/// serving data as soon as it learns it was removed. On main its anti-entropy handed the old
/// value back and the deleted key lived again.
#[test]
fn a_removed_node_that_resumes_brings_no_purged_delete_back() {
    let mut net = gc_cluster(4);
    let ring = net.nodes[&addr(0)].placement().unwrap().clone();
    let stalled = NodeId::new(103);
    // Keys n3 replicates and n0 does not coordinate (n0 is the operator's node).
    let keys: Vec<Vec<u8>> = (0..2000)
        .map(|i| format!("old{i}").into_bytes())
        .filter(|k| ring.is_replica(ring.partition_of(k), stalled, 3))
        .take(20)
        .collect();
    let all = RequestOptions {
        w: Some(3),
        ..RequestOptions::default()
    };
    for k in &keys {
        let put = ClientOp::Put {
            value: b"old".to_vec(),
            context: None,
        };
        assert!(matches!(
            net.request(0, k, put, all),
            ClientReply::Written(_)
        ));
    }
    net.run_for(Duration::from_secs(2));
    net.pause(addr(3));
    net.run_for(Duration::from_secs(10));
    net.nodes
        .get_mut(&addr(0))
        .unwrap()
        .remove(stalled, operator_signature(stalled), false, net.now)
        .unwrap();
    net.run_for(Duration::from_secs(30));
    assert_eq!(net.nodes[&addr(0)].removal_confirmed(stalled), Some(true));
    for k in &keys {
        let r = net.get(0, k, 3);
        let del = net.request(0, k, ClientOp::Delete { context: r.context }, all);
        assert!(matches!(del, ClientReply::Written(_)), "{del:?}");
    }
    // Tombstone GC asks the members (n3 is not one any more) and purges.
    net.run_for(Duration::from_secs(90));
    for k in &keys {
        for i in 0..3 {
            assert!(
                net.nodes[&addr(i)].local_object(k).unwrap().is_none(),
                "n{i} still holds {:?}",
                String::from_utf8_lossy(k)
            );
        }
    }
    net.resume(addr(3));
    net.run_for(Duration::from_secs(40));
    let refused: u64 = (0..3)
        .map(|i| net.nodes[&addr(i)].data_stats().refused_senders)
        .sum();
    assert!(
        refused > 0,
        "the members refused the removed node's messages"
    );
    // Once it knows, the removed node serves nothing either.
    let late = net.request(3, &keys[0], ClientOp::Get, RequestOptions::default());
    assert!(
        matches!(&late, ClientReply::Failed(ClientError::Unavailable { message, .. }) if message.contains("left")),
        "{late:?}"
    );
    for k in &keys {
        let r = net.get(1, k, 3);
        assert!(
            r.values.is_empty(),
            "{:?} came back: {:?}",
            String::from_utf8_lossy(k),
            r.values
        );
    }
}

#[test]
fn a_node_that_just_gained_a_partition_answers_dont_know_not_absent_until_it_caught_up() {
    // Four nodes, N = 3: each partition is on three of them. n3 dies and n0 removes it: n0
    // becomes a replica, at once, of every partition it did not hold, before any of their
    // data reached it.
    let mut net = cluster(4);
    let ring = net.nodes[&addr(0)].placement().unwrap().clone();
    let n0 = NodeId::new(100);
    let n3 = NodeId::new(103);
    let keys: Vec<String> = (0..400)
        .map(|i| format!("gained:{i}"))
        .filter(|k| {
            let owners = ring.preference_list(ring.partition_of(k.as_bytes()), 3);
            owners.contains(&n3) && !owners.contains(&n0)
        })
        .take(20)
        .collect();
    assert_eq!(keys.len(), 20, "the ring spreads keys over every node");
    let all = RequestOptions {
        w: Some(3),
        strict: true,
        ..RequestOptions::default()
    };
    for k in &keys {
        let op = ClientOp::Put {
            value: k.as_bytes().to_vec(),
            context: None,
        };
        let w = written(net.request(1, k.as_bytes(), op, all));
        assert_eq!(w.acks, 3, "{k}: on every replica");
    }
    assert!(keys.iter().all(|k| net.nodes[&addr(0)]
        .local_object(k.as_bytes())
        .unwrap()
        .is_none()));
    net.crash(addr(3));
    net.run_for(Duration::from_secs(10));
    net.nodes
        .get_mut(&addr(0))
        .unwrap()
        .remove(n3, operator_signature(n3), false, net.now)
        .unwrap();
    net.drain(addr(0));
    // n0 now replicates every one of these keys, holds none of them yet, and reads at r=1
    // through it ask it first: it must not say "absent" (another replica answers instead).
    for k in &keys {
        let owners = net.nodes[&addr(0)]
            .placement()
            .unwrap()
            .preference_list(ring.partition_of(k.as_bytes()), 3);
        assert!(owners.contains(&n0), "{k}: n0 gained it");
        let r = net.get(0, k.as_bytes(), 1);
        assert_eq!(
            r.values,
            vec![k.as_bytes().to_vec()],
            "{k} read at r=1 via n0"
        );
    }
    // Once it caught up with the other replicas, it answers from its own copy.
    net.run_for(Duration::from_secs(30));
    for k in &keys {
        assert!(
            net.nodes[&addr(0)]
                .local_object(k.as_bytes())
                .unwrap()
                .is_some(),
            "{k}: n0 caught up"
        );
        let r = net.get(0, k.as_bytes(), 1);
        assert_eq!(
            r.values,
            vec![k.as_bytes().to_vec()],
            "{k} after the catch-up"
        );
    }
}

/// Issue 21, item 4 (a residual): a replica that has not caught up the key's partition answers
/// a look (what does the key hold, before a write to a key the coordinator has no copy of)
/// from the copy it has. Its "absent" says nothing about what the key's replicas hold, so it
/// must not count toward the majority the coordinator waits for. Here the one reachable
/// replica with the key (a counter) is frozen: a register write through a replica without the
/// key must be refused, not applied on top of nothing.
#[test]
fn a_look_answered_by_a_replica_still_catching_up_counts_for_nothing() {
    let mut net = Net::new();
    net.start(no_hints_config(0, 1, vec![]));
    for i in 1..4 {
        net.start(no_hints_config(i, 1, vec![addr(0)]));
    }
    net.run_for(Duration::from_secs(10));
    net.until_caught_up();
    let ring = net.nodes[&addr(0)].placement().unwrap().clone();
    let (n0, n1, n3) = (NodeId::new(100), NodeId::new(101), NodeId::new(103));
    let key = (0..400)
        .map(|i| format!("look:{i}"))
        .find(|k| {
            let owners = ring.preference_list(ring.partition_of(k.as_bytes()), 3);
            owners.contains(&n0) && !owners.contains(&n1)
        })
        .expect("the ring spreads keys over every node");
    let key = key.as_bytes();
    // The counter reaches n2 and n3 while n0 is down (no hints: n0 never hears of it).
    net.crash(addr(0));
    net.run_for(Duration::from_secs(8));
    let w2 = RequestOptions {
        w: Some(2),
        ..RequestOptions::default()
    };
    let first = update_with(
        &mut net,
        2,
        key,
        CrdtOp::GCounter { increment: 1 },
        "g1",
        w2,
    );
    assert!(matches!(first, ClientReply::Updated(_)), "{first:?}");
    net.start(no_hints_config(0, 2, vec![addr(1)]));
    net.run_for(Duration::from_secs(3));
    assert!(net.nodes[&addr(0)].local_object(key).unwrap().is_none());
    // n3 dies and is removed: n1 becomes a replica of the key, and holds nothing of it yet.
    net.crash(addr(3));
    net.run_for(Duration::from_secs(10));
    net.nodes
        .get_mut(&addr(0))
        .unwrap()
        .remove(n3, operator_signature(n3), false, net.now)
        .unwrap();
    net.drain(addr(0));
    net.run_for(Duration::from_secs(1));
    assert!(net.nodes[&addr(1)].data_stats().partitions_catching_up > 0);
    assert!(net.nodes[&addr(1)].local_object(key).unwrap().is_none());
    net.pause(addr(2));
    let put = net.request(
        0,
        key,
        ClientOp::Put {
            value: b"oops".to_vec(),
            context: None,
        },
        w2,
    );
    assert!(
        matches!(&put, ClientReply::Failed(ClientError::Unavailable { message, .. })
            if message.contains("0 of them from complete copies; 1 needed")),
        "a write applied on a look only a catching-up replica answered: {put:?}"
    );
    // Nothing of it anywhere once n2 is back and the replicas converged: the key is the
    // counter, alone.
    net.resume(addr(2));
    net.run_for(Duration::from_secs(130));
    let r = net.get(0, key, 3);
    assert_eq!(r.type_name.as_deref(), Some("gcounter"), "{r:?}");
    assert_eq!(r.crdt, Some(CrdtValue::Counter(1)));
    assert!(r.values.is_empty(), "{r:?}");
}

/// Issue 20, defect 2 (the crash case), the replica's side: a state leaves a node before it is
/// durable (a coordinator sends an update to the other replicas at once), and a crash would
/// take it back. So the op-log row that state carries for the node claims only the node's
/// durable copy: nothing after the key's first update, the first update after the second.
/// (Had it claimed the state, an actor could forget a record that the node, restarted, then
/// applies again from a retry: the unit case `a_replica_that_crashes_never_lets_an_operation_count_twice`.)
#[test]
fn the_row_a_coordinator_sends_claims_only_its_durable_copy() {
    let mut net = cluster(3);
    let key = b"rows";
    let w3 = RequestOptions {
        w: Some(3),
        ..RequestOptions::default()
    };
    let ring = net.nodes[&addr(0)].placement().unwrap().clone();
    let replicas = ring.preference_list(ring.partition_of(key), 3);
    let n0 = NodeId::new(100);
    let actor = net.nodes[&addr(0)].actor();
    let row_at = |net: &Net, i: u64| -> Option<BTreeMap<NodeId, u64>> {
        match net.nodes[&addr(i)].local_object(key).unwrap() {
            Some(Object::GCounter(c)) => c.log().row(n0, &replicas).cloned(),
            other => panic!("not a counter: {other:?}"),
        }
    };
    let first = update_with(
        &mut net,
        0,
        key,
        CrdtOp::GCounter { increment: 1 },
        "r1",
        w3,
    );
    assert!(matches!(first, ClientReply::Updated(_)), "{first:?}");
    assert_eq!(
        row_at(&net, 1),
        None,
        "n0 held nothing durably when it sent r1"
    );
    let second = update_with(
        &mut net,
        0,
        key,
        CrdtOp::GCounter { increment: 1 },
        "r2",
        w3,
    );
    assert!(matches!(second, ClientReply::Updated(_)), "{second:?}");
    assert_eq!(
        row_at(&net, 1),
        Some(BTreeMap::from([(actor, 1)])),
        "n0 held r1, not r2, durably when it sent r2"
    );
}
