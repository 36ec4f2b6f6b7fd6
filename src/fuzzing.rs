//! Fuzz target bodies: every decoder that reads bytes from outside the process, driven with
//! arbitrary input, asserting what must hold beyond "no panic".
//!
//! The `fuzz/` crate (cargo-fuzz, nightly) calls these functions from its targets, and
//! `tests/fuzz_corpus.rs` replays every committed input under `fuzz/corpus/<target>/` through
//! the same functions on stable, so `cargo test` checks the corpus on every run. A target
//! panics (an assertion, or a decoder's own panic) exactly when it found a bug.
//!
//! | target          | what it decodes                                                   |
//! |-----------------|-------------------------------------------------------------------|
//! | `peer_message`  | a peer message envelope ([`crate::node::PeerMessage`]) and a SWIM packet |
//! | `client_frame`  | a QUIC client stream: frames, [`ClientMessage`] and [`ServerMessage`] bodies |
//! | `context`       | a context token ([`Context::from_token`]), as text and as raw bytes |
//! | `crdt_body`     | the JSON body of a CRDT update ([`crdt_json::parse_update`])       |
//! | `stored_state`  | what the store holds: objects, hints, the node's metadata (id, generation, ring) |
//!
//! Not part of the public API (hidden from the docs); it is public only so that the fuzz crate
//! can reach it.

use base64::Engine as _;
use foca::Codec as _;

use crate::membership::{RingBroadcast, RingState, SwimCodec};
use crate::node::hints::stored_hint_object;
use crate::node::object::{CONTEXT_CHARS_MAX, CONTEXT_COUNTER_MAX, CONTEXT_ENTRIES_MAX};
use crate::node::{ClientOp, Context, ContextError, CrdtOp, Object, PeerMessage};
use crate::protocol::client::{
    decode_body, encode_frame, ClientMessage, FrameBuffer, FrameHeader, ServerMessage,
    FRAME_HEADER_BYTES,
};
use crate::protocol::{self, crdt_json, DEFAULT_FRAME_BYTES_MAX, HEADER_BYTES};
use crate::storage::meta::{boot, META_GENERATION, META_NODE_ID, META_RING};
use crate::storage::MemoryStore;
use crate::NodeId;

/// A fuzz target: takes arbitrary bytes, panics only on a bug.
pub type Target = fn(&[u8]);

/// Every target, by the name of its directory under `fuzz/corpus/` and its fuzz binary.
pub const TARGETS: &[(&str, Target)] = &[
    ("peer_message", peer_message),
    ("client_frame", client_frame),
    ("context", context),
    ("crdt_body", crdt_body),
    ("stored_state", stored_state),
];

/// The key contexts are bound to in the `context` and `crdt_body` targets (seeds use it too).
pub const FUZZ_KEY: &[u8] = b"fuzz";

/// Peer traffic: the bytes of a peer message as the transport hands them to the node
/// ([`crate::node::Node::handle_message`]), and the same bytes as a SWIM packet
/// ([`crate::node::Node::handle_gossip`]: the sender check, then foca's header and members).
pub fn peer_message(data: &[u8]) {
    if let Ok(m) = protocol::decode::<PeerMessage>(data) {
        assert!(data.len() <= DEFAULT_FRAME_BYTES_MAX);
        round_trip(&m, protocol::decode::<PeerMessage>);
    }
    swim_packet(data);
}

/// A SWIM packet: header, then (as foca reads it) a count and that many members, then custom
/// broadcasts (ring entries).
fn swim_packet(data: &[u8]) {
    let sender = SwimCodec::sender(data);
    let mut codec = SwimCodec;
    let mut buf = data;
    let Ok(header) = codec.decode_header(&mut buf) else {
        assert!(sender.is_none(), "the sender check and foca disagree");
        return;
    };
    assert_eq!(sender, Some(header.src.node));
    let mut again = Vec::new();
    codec
        .encode_header(&header, &mut again)
        .expect("a decoded header encodes");
    assert_eq!(codec.decode_header(&again[..]).ok(), Some(header));
    if buf.len() >= 2 {
        let count = u16::from_be_bytes([buf[0], buf[1]]);
        buf = &buf[2..];
        for _ in 0..count {
            let Ok(member) = codec.decode_member(&mut buf) else {
                break;
            };
            let mut again = Vec::new();
            codec
                .encode_member(&member, &mut again)
                .expect("a decoded member encodes");
            assert_eq!(codec.decode_member(&again[..]).ok(), Some(member));
        }
    }
    if let Ok(b) = rmp_serde::from_slice::<RingBroadcast>(buf) {
        assert_eq!(
            rmp_serde::from_slice::<RingBroadcast>(&b.encode()).ok(),
            Some(b)
        );
    }
}

/// A QUIC client lane's bytes. The first two bytes choose how the stream is cut into reads
/// and the frame size limit; the rest is the stream. Frames are cut out with
/// [`FrameBuffer`] and each body decoded as a client's request and as a node's answer.
/// Cutting the stream into reads of any size yields the same frames as reading it whole.
pub fn client_frame(data: &[u8]) {
    let [read, limit, stream @ ..] = data else {
        return;
    };
    let body_max = match limit % 4 {
        0 => 64,
        1 => 1024,
        2 => 64 * 1024,
        _ => DEFAULT_FRAME_BYTES_MAX,
    };
    let chunk = usize::from(*read).max(1);
    let pieces = frames(stream, chunk, body_max);
    let whole = frames(stream, usize::MAX, body_max);
    assert_eq!(pieces, whole, "read boundaries changed the frames");
    for frame in pieces {
        let Ok((id, body)) = frame else { continue };
        assert!(body.len() <= body_max && body.len() >= HEADER_BYTES);
        if let Ok(m) = decode_body::<ClientMessage>(&body, body_max) {
            if let ClientMessage::Request(r) = &m {
                // What the node core does with a context from this path (`DataConfig`).
                if let ClientOp::Put {
                    context: Some(c), ..
                }
                | ClientOp::Delete { context: Some(c) } = &r.op
                {
                    context_checked(c, &r.key);
                }
            }
            frame_round_trip(id, &m, body_max);
        }
        if let Ok(m) = decode_body::<ServerMessage>(&body, body_max) {
            frame_round_trip(id, &m, body_max);
        }
    }
}

/// A frame read from a stream, or the id and `skipped` flag of one that could not be.
type Frame = Result<(u64, Vec<u8>), (u64, bool)>;

/// The frames of `stream` read in pieces of at most `chunk` bytes (stopping at the first
/// error that loses the framing).
fn frames(stream: &[u8], chunk: usize, body_max: usize) -> Vec<Frame> {
    let mut fb = FrameBuffer::new(body_max);
    let mut out = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let spare = fb.spare();
        let n = rest.len().min(chunk).min(spare.len());
        spare[..n].copy_from_slice(&rest[..n]);
        fb.filled(n);
        rest = &rest[n..];
        loop {
            match fb.next_frame() {
                Ok(Some((id, body))) => out.push(Ok((id, body.to_vec()))),
                Ok(None) => break,
                Err(e) => {
                    out.push(Err((e.id, e.skipped)));
                    if !e.skipped {
                        return out;
                    }
                }
            }
        }
    }
    out
}

fn frame_round_trip<T>(id: u64, m: &T, body_max: usize)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let frame = encode_frame(id, m).expect("a decoded message encodes");
    let header: [u8; FRAME_HEADER_BYTES] = frame[..FRAME_HEADER_BYTES]
        .try_into()
        .expect("a frame holds its header");
    let h = FrameHeader::parse(&header, usize::MAX).expect("an encoded frame's header parses");
    assert_eq!((h.id, h.body_len), (id, frame.len() - FRAME_HEADER_BYTES));
    let body = &frame[FRAME_HEADER_BYTES..];
    round_trip(m, |b| decode_body::<T>(b, usize::MAX));
    if body.len() <= body_max {
        assert_eq!(decode_body::<T>(body, body_max).ok().as_ref(), Some(m));
    }
}

/// Context tokens: the input as a token (text) and, base64-encoded, as the raw encoding
/// inside one.
pub fn context(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    token(&text);
    token(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data));
}

/// A token accepted for [`FUZZ_KEY`] is within the limits, round-trips, and is refused for
/// another key. (A token refused for it may be accepted for another key: the key hash is in
/// the clear, and the fuzzer finds a token for `another key` in minutes.)
fn token(t: &str) {
    if let Ok(c) = Context::from_token(t, FUZZ_KEY) {
        assert!(t.trim().len() <= CONTEXT_CHARS_MAX);
        context_checked(&c, FUZZ_KEY);
        assert_eq!(
            Context::from_token(&c.to_token(), FUZZ_KEY).as_ref(),
            Ok(&c)
        );
        assert_eq!(
            Context::from_token(t, b"another key"),
            Err(ContextError::WrongKey)
        );
    }
}

/// What holds of a context accepted for `key`.
fn context_checked(c: &Context, key: &[u8]) {
    if c.check(key).is_ok() {
        assert!(c.is_for(key));
        assert!(c.seen().len() <= CONTEXT_ENTRIES_MAX);
        assert!(c.seen().iter().all(|(_, n)| n <= CONTEXT_COUNTER_MAX));
    }
}

/// The JSON body of a CRDT update. An accepted body, written back as JSON, parses to the
/// same update.
pub fn crdt_body(data: &[u8]) {
    let Ok(op) = crdt_json::parse_update(data, FUZZ_KEY) else {
        return;
    };
    let json = match &op {
        CrdtOp::GCounter { increment } => {
            assert!(*increment >= 1 && i64::try_from(*increment).is_ok());
            serde_json::json!({"type": "gcounter", "increment": increment})
        }
        CrdtOp::PNCounter { increment } => {
            serde_json::json!({"type": "pncounter", "increment": increment})
        }
        CrdtOp::TwoPSet { add, remove } => {
            serde_json::json!({"type": "2pset", "add": add, "remove": remove})
        }
        CrdtOp::ORSet {
            add,
            remove,
            context,
        } => {
            if let Some(c) = context {
                context_checked(c, FUZZ_KEY);
            }
            serde_json::json!({"type": "orset", "add": add, "remove": remove,
                "context": context.as_ref().map(Context::to_token)})
        }
    };
    let bytes = serde_json::to_vec(&json).expect("JSON values serialize");
    let back = crdt_json::parse_update(&bytes, FUZZ_KEY).expect("a written-back update parses");
    assert_eq!(back, op);
}

/// What a replica reads back from its store: an object (the `data` space), a hint (the
/// `hints` space), the ring state, and each metadata value a start reads (the `meta` space).
/// A decoded object re-encodes to what decodes to itself, answers every question a read asks
/// of it, and merges with itself into the same data.
pub fn stored_state(data: &[u8]) {
    if let Ok(o) = Object::decode(data) {
        object_checked(&o);
    }
    if let Some((_, o)) = stored_hint_object(data) {
        object_checked(&o);
    }
    if let Ok(ring) = protocol::decode::<RingState>(data) {
        round_trip(&ring, protocol::decode::<RingState>);
    }
    for key in [META_NODE_ID, META_GENERATION, META_RING] {
        boot_from(key, data);
    }
}

/// A start reading `data` as the metadata value under `key`: it fails as corrupt or boots,
/// and a second start keeps the id and the ring and bumps the generation.
fn boot_from(key: &str, data: &[u8]) {
    let mut store = MemoryStore::new();
    store.put_meta_unsynced(key, data);
    store.sync();
    let Ok(first) = boot(&mut store, NodeId::new(1)) else {
        return;
    };
    assert!(first.generation >= 1);
    if key == META_GENERATION {
        let stored = u64::from_be_bytes(data.try_into().expect("an accepted generation"));
        assert_eq!(Some(first.generation), stored.checked_add(1));
    }
    match boot(&mut store, NodeId::new(2)) {
        Ok(second) => {
            assert_eq!((second.id, &second.ring), (first.id, &first.ring));
            assert_eq!(second.generation, first.generation + 1);
        }
        Err(e) => assert!(
            first.generation == u64::MAX,
            "a store that booted once does not boot again: {e}"
        ),
    }
}

fn object_checked(o: &Object) {
    round_trip(o, Object::decode);
    let _ = (
        o.type_name(),
        o.live_types(),
        o.is_contested(),
        o.is_tombstone(),
    );
    let _ = (o.crdt_value(), o.context(FUZZ_KEY), o.parts(FUZZ_KEY));
    let mut merged = o.clone();
    merged.merge(o);
    assert!(
        merged.same_data(o),
        "merging a state with itself changed it"
    );
}

/// Encodes `value`, decodes it with `decode`, and checks that it comes back equal and that
/// encoding is stable (the decoded copy encodes to the same bytes).
fn round_trip<T, E: std::fmt::Debug>(value: &T, decode: impl Fn(&[u8]) -> Result<T, E>)
where
    T: serde::Serialize + PartialEq + std::fmt::Debug,
{
    let bytes = protocol::encode(value).expect("a decoded value encodes");
    let back = decode(&bytes).expect("a re-encoded value decodes");
    assert_eq!(&back, value, "the value changed in a round trip");
    assert_eq!(
        protocol::encode(&back).expect("a decoded value encodes"),
        bytes,
        "the encoding is not stable"
    );
}
