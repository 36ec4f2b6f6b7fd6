//! Seed inputs for the fuzz targets (`chorus::fuzzing`), written under `<dir>/<target>/`:
//! real encoded messages, captured from a small in-process cluster run on simulated time,
//! plus hand-made tokens, frames and JSON bodies.
//!
//! ```text
//! cargo run --release -p chorus-sim -- fuzz-seeds [--dir fuzz/corpus]
//! ```
//!
//! Each seed is named by its content's hash, so running it again adds nothing new. The
//! cluster: four nodes join through one seed; clients write registers and every CRDT type
//! (with contexts), one node is down for a while (so hints are stored and handed back), one
//! leaves, and an anti-entropy repair runs. Every peer message, SWIM packet, stored value
//! and ring state seen on the way is kept, at most a few of each kind.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use chorus::fuzzing::FUZZ_KEY;
use chorus::membership::{NodeInfo, SwimCodec};
use chorus::node::{
    ClientOp, ClientReply, ClientRequest, Context, CrdtOp, Node, NodeConfig, Output, Persisted,
    RequestOptions, Timer,
};
use chorus::protocol::client::{encode_frame, ClientMessage, Refusal, ServerMessage};
use chorus::storage::{meta::encode_ring, SharedMemoryStore, Store as _, WriteOp};
use chorus::NodeId;
use foca::Codec as _;

/// Most seeds kept of one kind (variant of a message, space of a stored value).
const PER_KIND: usize = 4;

fn addr(i: u64) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7000 + i as u16))
}

fn id_of(a: SocketAddr) -> NodeId {
    NodeId::new(100 + u64::from(a.port() - 7000))
}

enum Event {
    Gossip(NodeId, Vec<u8>),
    Message(NodeId, Vec<u8>),
    Timer(Timer),
}

/// Seeds by target, each kept with the kind it was classified as.
#[derive(Default)]
struct Seeds {
    by_target: BTreeMap<&'static str, BTreeMap<String, Vec<Vec<u8>>>>,
}

impl Seeds {
    fn add(&mut self, target: &'static str, kind: String, bytes: Vec<u8>) {
        let kinds = self.by_target.entry(target).or_default();
        let list = kinds.entry(kind).or_default();
        if list.len() < PER_KIND && !list.contains(&bytes) {
            list.push(bytes);
        }
    }

    fn write(&self, dir: &Path) -> std::io::Result<usize> {
        let mut n = 0;
        for (target, kinds) in &self.by_target {
            let d = dir.join(target);
            std::fs::create_dir_all(&d)?;
            for bytes in kinds.values().flatten() {
                let name = blake3::hash(bytes).to_hex();
                std::fs::write(d.join(&name[..40]), bytes)?;
                n += 1;
            }
        }
        Ok(n)
    }
}

/// The first two levels of a value's `Debug` form: `Replica(Merge`, `Hints(Store`, ...
fn kind(debug: &str) -> String {
    let mut depth = 0;
    let mut end = debug.len();
    for (i, c) in debug.char_indices() {
        if matches!(c, '(' | '{' | ' ') {
            depth += 1;
            if depth == 2 {
                end = i;
                break;
            }
        }
    }
    debug[..end].to_owned()
}

/// Four nodes on simulated time with perfect delivery.
struct Net {
    now: Duration,
    seq: u64,
    nodes: BTreeMap<SocketAddr, Node>,
    stores: BTreeMap<SocketAddr, SharedMemoryStore>,
    queue: BTreeMap<(Duration, u64), (SocketAddr, Event)>,
    replies: BTreeMap<u64, ClientReply>,
    seeds: Seeds,
}

impl Net {
    fn start(&mut self, i: u64, seeds: Vec<SocketAddr>) {
        let a = addr(i);
        let info = NodeInfo {
            quic_addr: a,
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8000 + i as u16)),
        };
        let auth = std::sync::Arc::new(chorus::membership::InsecureTestAuth::new(id_of(a)));
        let config = NodeConfig::new(id_of(a), 1, info, seeds, auth);
        let store = self.stores.entry(a).or_default().clone();
        let mut node = Node::new(config, i, Persisted::default(), store).expect("a node starts");
        node.start(self.now);
        self.nodes.insert(a, node);
        self.drain(a);
    }

    fn push(&mut self, at: Duration, to: SocketAddr, e: Event) {
        self.seq += 1;
        self.queue.insert((at, self.seq), (to, e));
    }

    fn drain(&mut self, a: SocketAddr) {
        let mut outs = Vec::new();
        if let Some(node) = self.nodes.get_mut(&a) {
            while let Some(o) = node.poll_output() {
                outs.push(o);
            }
        }
        let later = self.now + Duration::from_millis(1);
        for o in outs {
            match o {
                Output::Gossip { to, bytes } => {
                    let mut codec = SwimCodec;
                    if let Ok(h) = codec.decode_header(&bytes[..]) {
                        let k = format!("swim {:?}", h.message);
                        self.seeds.add("peer_message", kind(&k), bytes.clone());
                    }
                    self.push(later, to, Event::Gossip(id_of(a), bytes));
                }
                Output::Message { addr, bytes, .. } => {
                    if let Ok(m) = chorus::protocol::decode::<chorus::node::PeerMessage>(&bytes) {
                        self.seeds
                            .add("peer_message", kind(&format!("{m:?}")), bytes.clone());
                    }
                    self.push(later, addr, Event::Message(id_of(a), bytes));
                }
                Output::Persist { seq, batch } => {
                    for op in batch.ops() {
                        if let WriteOp::Put { space, value, .. } = op {
                            let k = match chorus::node::Object::decode(value) {
                                Ok(o) => format!("{space:?} {}", o.type_name()),
                                Err(_) => format!("{space:?}"),
                            };
                            self.seeds.add("stored_state", k, value.clone());
                        }
                    }
                    let store = self.stores.get_mut(&a).expect("a running node has a store");
                    store.write(&batch, true).expect("the memory store writes");
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
                    if let Ok(bytes) = encode_ring(&state) {
                        let k = format!("ring of {}", state.len());
                        self.seeds.add("stored_state", k, bytes);
                    }
                }
                Output::PersistGeneration(_)
                | Output::PeerRestarted { .. }
                | Output::Left
                | Output::StatsAsked { .. }
                | Output::StatsAnswered { .. } => {}
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
                Event::Gossip(from, b) => node.handle_gossip(from, &b, at),
                Event::Message(from, b) => node.handle_message(from, &b, at),
                Event::Timer(t) => node.handle_timer(t, at),
            }
            self.drain(to);
        }
        self.now = end;
    }

    /// Sends a request to node `i`, runs until it is answered (at most 10 simulated seconds),
    /// and keeps the request and answer as client frames.
    fn request(&mut self, i: u64, key: &[u8], op: ClientOp) -> Option<ClientReply> {
        self.seq += 1;
        let handle = self.seq;
        let request = ClientRequest {
            key: key.to_vec(),
            op,
            options: RequestOptions::default(),
        };
        let what = match &request.op {
            ClientOp::Update { op, .. } => kind(&format!("{op:?}")),
            op => kind(&format!("{op:?}")),
        };
        let message = ClientMessage::Request(request.clone());
        if let Ok(frame) = encode_frame(handle, &message) {
            self.seeds
                .add("client_frame", format!("Request {what}"), frame);
        }
        let now = self.now;
        self.nodes
            .get_mut(&addr(i))?
            .handle_client(handle, request, now);
        self.drain(addr(i));
        for _ in 0..1000 {
            if let Some(r) = self.replies.remove(&handle) {
                let answer = ServerMessage::Reply(r.clone());
                if let Ok(frame) = encode_frame(handle, &answer) {
                    self.seeds
                        .add("client_frame", kind(&format!("{answer:?}")), frame);
                }
                return Some(r);
            }
            self.run_for(Duration::from_millis(10));
        }
        None
    }
}

fn update(op: CrdtOp) -> ClientOp {
    let op_id = format!(
        "seed-{}",
        blake3::hash(format!("{op:?}").as_bytes()).to_hex()
    );
    ClientOp::Update { op, op_id }
}

/// Runs the cluster and collects what it says and stores.
fn cluster_seeds(seeds: &mut Seeds) -> Vec<Context> {
    let mut net = Net {
        now: Duration::ZERO,
        seq: 0,
        nodes: BTreeMap::new(),
        stores: BTreeMap::new(),
        queue: BTreeMap::new(),
        replies: BTreeMap::new(),
        seeds: Seeds::default(),
    };
    net.start(0, vec![]);
    for i in 1..4 {
        net.start(i, vec![addr(0)]);
    }
    net.run_for(Duration::from_secs(10));
    let mut contexts = Vec::new();
    let keys: Vec<Vec<u8>> = (0..12u8)
        .map(|k| format!("key-{k}").into_bytes())
        .chain([FUZZ_KEY.to_vec()])
        .collect();
    let mut phase = |net: &mut Net, round: u64| {
        for (n, key) in keys.iter().enumerate() {
            let at = (n as u64 + round) % 4;
            let at = if net.nodes.contains_key(&addr(at)) {
                at
            } else {
                0
            };
            let reply = match n % 5 {
                0 | 1 => {
                    let context = match net.request(at, key, ClientOp::Get) {
                        Some(ClientReply::Read(r)) => r.context,
                        _ => None,
                    };
                    if n % 5 == 1 && round > 0 {
                        net.request(at, key, ClientOp::Delete { context })
                    } else {
                        let value = format!("value {round} of {n}").into_bytes();
                        net.request(at, key, ClientOp::Put { value, context })
                    }
                }
                2 => net.request(
                    at,
                    key,
                    update(CrdtOp::GCounter {
                        increment: round + 1,
                    }),
                ),
                3 => net.request(
                    at,
                    key,
                    update(CrdtOp::PNCounter {
                        increment: -(round as i64) - 2,
                    }),
                ),
                _ if key == FUZZ_KEY || n % 2 == 0 => {
                    let context = match net.request(at, key, ClientOp::Get) {
                        Some(ClientReply::Read(r)) => r.context,
                        _ => None,
                    };
                    net.request(
                        at,
                        key,
                        update(CrdtOp::ORSet {
                            add: vec![format!("a{round}"), "shared".into()],
                            remove: if round > 0 { vec!["a0".into()] } else { vec![] },
                            context,
                        }),
                    )
                }
                _ => net.request(
                    at,
                    key,
                    update(CrdtOp::TwoPSet {
                        add: vec![format!("e{round}")],
                        remove: if round > 1 { vec!["e0".into()] } else { vec![] },
                    }),
                ),
            };
            match reply {
                Some(ClientReply::Read(r)) => contexts.extend(r.context),
                Some(ClientReply::Written(w)) => contexts.push(w.context),
                Some(ClientReply::Updated(u)) => contexts.extend(u.context),
                _ => {}
            }
        }
        net.run_for(Duration::from_secs(2));
    };
    phase(&mut net, 0);
    // A node down: writes leave hints on the others, handed back when it returns.
    let down = addr(3);
    let node = net.nodes.remove(&down).expect("running");
    phase(&mut net, 1);
    net.run_for(Duration::from_secs(5));
    net.nodes.insert(down, node);
    net.run_for(Duration::from_secs(20));
    phase(&mut net, 2);
    let now = net.now;
    if let Some(n) = net.nodes.get_mut(&addr(1)) {
        let _ = n.start_repair(None, now);
    }
    net.drain(addr(1));
    net.run_for(Duration::from_secs(20));
    let view = net.nodes[&addr(0)].cluster_view();
    for (id, m) in [
        (0, ServerMessage::Ready),
        (9, ServerMessage::Cluster(Box::new(view))),
        (
            10,
            ServerMessage::Refused(Refusal {
                indeterminate: Some(true),
                ..Refusal::new("overloaded", "the node is busy")
            }),
        ),
    ] {
        if let Ok(frame) = encode_frame(id, &m) {
            net.seeds
                .add("client_frame", kind(&format!("{m:?}")), frame);
        }
    }
    // One node leaves: leave and handoff traffic.
    let now = net.now;
    if let Some(n) = net.nodes.get_mut(&addr(2)) {
        n.leave(now);
    }
    net.drain(addr(2));
    net.run_for(Duration::from_secs(30));
    let found = std::mem::take(&mut net.seeds);
    for (target, kinds) in found.by_target {
        for (k, list) in kinds {
            for bytes in list {
                seeds.add(target, k.clone(), bytes);
            }
        }
    }
    contexts
}

/// Runs the capture cluster and writes every seed under `dir` (one directory per target);
/// returns a one-line summary. With `verbose`, the summary also lists every captured kind.
pub fn write_corpus(dir: &Path, verbose: bool) -> Result<String, Box<dyn std::error::Error>> {
    let mut seeds = Seeds::default();
    let contexts = cluster_seeds(&mut seeds);

    // Client frames: a lane's opening and whole streams, cut into reads of several sizes and
    // under several frame limits (the first two bytes of a `client_frame` input).
    let frames: Vec<Vec<u8>> = seeds
        .by_target
        .get("client_frame")
        .map(|k| k.values().flatten().cloned().collect())
        .unwrap_or_default();
    let hello = encode_frame(
        0,
        &ClientMessage::Hello {
            token: Some("a-token".into()),
        },
    )?;
    let cluster = encode_frame(1, &ClientMessage::Cluster)?;
    let mut out = Seeds::default();
    for (n, f) in frames.iter().enumerate() {
        let limit = [3u8, 3, 2, 1][n % 4];
        let read = [255u8, 7, 1, 64][n % 4];
        let mut input = vec![read, limit];
        input.extend_from_slice(f);
        out.add("client_frame", format!("frame {n}"), input);
    }
    let mut stream = vec![13u8, 3];
    stream.extend_from_slice(&hello);
    stream.extend(frames.iter().take(6).flatten());
    stream.extend_from_slice(&cluster);
    out.add("client_frame", "stream".into(), stream.clone());
    // The same stream with a small limit: big frames are skipped, the rest still read.
    stream[1] = 1;
    out.add("client_frame", "stream, small limit".into(), stream);
    let mut truncated = vec![5u8, 2];
    truncated.extend_from_slice(&hello[..hello.len() - 1]);
    out.add("client_frame", "truncated".into(), truncated);

    // Contexts: tokens as a client sends them back, and their raw encoding.
    let mut ctxs = contexts;
    ctxs.push(Context::new(FUZZ_KEY, Default::default()));
    ctxs.push(Context::new(
        FUZZ_KEY,
        [(NodeId::new(1), 3), (NodeId::new(u64::MAX), 1 << 40)]
            .into_iter()
            .collect(),
    ));
    let mut raw_ok = 0;
    for (n, c) in ctxs.iter().enumerate() {
        let key_bound = Context::new(FUZZ_KEY, c.seen().clone());
        let token = key_bound.to_token();
        if n < 8 {
            out.add("context", format!("token {n}"), token.clone().into_bytes());
            out.add(
                "context",
                format!("raw {n}"),
                rmp_serde::to_vec(&key_bound)?,
            );
            raw_ok += 1;
        }
        if n < 4 {
            out.add(
                "crdt_body",
                format!("orset {n}"),
                serde_json::to_vec(&serde_json::json!({
                    "type": "orset", "add": ["x"], "remove": ["a0", "shared"], "context": token,
                }))?,
            );
        }
    }
    assert!(raw_ok > 2, "the cluster run issued contexts");
    for body in [
        r#"{"type":"gcounter","increment":3}"#,
        r#"{"type":"gcounter","increment":9223372036854775807}"#,
        r#"{"type":"pncounter","increment":-3}"#,
        r#"{"type":"pncounter","increment":-9223372036854775808}"#,
        r#"{"type":"2pset","add":["a","b"],"remove":["c"]}"#,
        r#"{"type":"2pset","remove":["\u00e9\ud83d\ude00"]}"#,
        r#"{"type":"orset","add":["a"]}"#,
        r#"{"type":"orset","add":[],"remove":["a"],"context":null}"#,
        r#"{"type":"gcounter","increment":1.5e3}"#,
        r#"{"type":"orset","extra":1}"#,
    ] {
        out.add("crdt_body", body.into(), body.as_bytes().to_vec());
    }
    // Metadata a start reads: the node id (text) and the generation (big-endian), the
    // largest of which a start must refuse rather than wrap.
    out.add(
        "stored_state",
        "meta node id".into(),
        NodeId::new(0x1234).to_string().into_bytes(),
    );
    for g in [41u64, u64::MAX] {
        out.add(
            "stored_state",
            format!("meta generation {g}"),
            g.to_be_bytes().to_vec(),
        );
    }
    let mut n = seeds.write(dir)?;
    n += out.write(dir)?;
    let summary: BTreeMap<&str, usize> =
        seeds
            .by_target
            .iter()
            .chain(&out.by_target)
            .fold(BTreeMap::new(), |mut m, (t, k)| {
                *m.entry(*t).or_default() += k.values().map(Vec::len).sum::<usize>();
                m
            });
    let kinds: BTreeSet<&String> = seeds.by_target.values().flat_map(|k| k.keys()).collect();
    let mut text = format!(
        "wrote {n} seeds under {} ({summary:?}; {} kinds of captured message and state)",
        dir.display(),
        kinds.len()
    );
    if verbose {
        text.push_str(&format!("\n{kinds:#?}"));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The files under `dir`, by target.
    fn listing(dir: &Path) -> BTreeMap<String, BTreeSet<String>> {
        let names = |d: &Path| -> BTreeSet<String> {
            std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        };
        names(dir)
            .into_iter()
            .map(|t| (t.clone(), names(&dir.join(&t))))
            .collect()
    }

    #[test]
    fn every_target_gets_seeds_and_a_second_run_writes_the_same_ones() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let summary = write_corpus(a.path(), false).unwrap();
        let first = listing(a.path());
        let targets: Vec<&str> = first.keys().map(String::as_str).collect();
        assert_eq!(
            targets,
            [
                "client_frame",
                "context",
                "crdt_body",
                "peer_message",
                "stored_state"
            ],
            "{summary}"
        );
        // Captured traffic, not only the hand-made inputs: peer messages of many kinds.
        assert!(first["peer_message"].len() >= 20, "{summary}");
        assert!(first.values().all(|files| !files.is_empty()), "{summary}");
        // Files are named by their content's hash: equal listings are equal seeds.
        write_corpus(b.path(), false).unwrap();
        assert_eq!(listing(b.path()), first, "the capture is deterministic");
        // A run into a corpus that has them adds nothing.
        write_corpus(a.path(), false).unwrap();
        assert_eq!(listing(a.path()), first);
    }
}
