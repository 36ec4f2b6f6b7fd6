//! The QUIC client protocol (ALPN [`CLIENT_ALPN`]): what a client and a node say to each other
//! on the node's QUIC endpoint. This module defines the messages and their framing; it does no
//! I/O (the node side lives in `api::quic`, the client side in `client`).
//!
//! # Lanes and frames
//!
//! A client opens a few long-lived bidirectional streams ("lanes") on one connection and
//! multiplexes its requests over them: each request is a frame carrying a request id chosen by
//! the client, and the node answers each with a frame carrying the same id, in whatever order the
//! answers are ready. Many requests (and answers) share one QUIC packet and one write, which is
//! what makes this cheaper than a stream per request.
//!
//! ```text
//! +----------------+----------------+----------------------------------------+
//! | length: u32 BE | request id: u64 BE | envelope (see `protocol`): message  |
//! +----------------+----------------+----------------------------------------+
//! ```
//!
//! `length` counts the id and the envelope. The id sits outside the envelope so that a frame
//! whose body cannot be decoded still gets an answer naming it.
//!
//! # A lane's life
//!
//! The first frame of every lane is [`ClientMessage::Hello`] with the client token (when the
//! node requires one); the node answers [`ServerMessage::Ready`], or
//! [`ServerMessage::Refused`] with code `unauthorized` and ends the lane. Then any number of
//! [`ClientMessage::Request`]s (every operation of the HTTP data API) and
//! [`ClientMessage::Cluster`] (what `GET /v1/cluster` answers). Requests are checked against
//! the same limits as over HTTP and fail with the same codes: the core's own failures arrive as
//! [`ClientReply::Failed`]; what the API layer refuses before the core sees it (malformed
//! frames, a frame over the size limit, a node shutting down) as [`ServerMessage::Refused`].
//! A frame over the size limit, or one cut short, also ends the lane (its framing can no longer
//! be trusted); the connection and its other lanes go on.

use serde::{Deserialize, Serialize};

use super::{decode_with_limit, encode_into, WireError, HEADER_BYTES};
use crate::node::{ClientReply, ClientRequest, ClusterView};

/// ALPN protocol identifier of the QUIC client API.
pub const CLIENT_ALPN: &[u8] = b"chorus-client/1";

/// The DNS name every node certificate carries; clients verify nodes against it.
pub const NODE_SERVER_NAME: &str = "chorus-node";

/// Bytes of a frame before its envelope: the length and the request id.
pub const FRAME_HEADER_BYTES: usize = 12;

/// Request id of a lane's hello (any id works; clients use this one).
pub const HELLO_ID: u64 = 0;

/// Most bytes of a client token.
pub const TOKEN_BYTES_MAX: usize = 4096;

/// What a client sends on a lane.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMessage {
    /// The first frame of every lane.
    Hello {
        /// The client token, when the node is configured with one.
        token: Option<String>,
    },
    /// A data request (registers and CRDTs).
    Request(ClientRequest),
    /// The cluster as the node sees it (what `GET /v1/cluster` answers).
    Cluster,
}

/// What a node answers on a lane.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerMessage {
    /// The hello was accepted: requests may follow.
    Ready,
    /// The answer to a data request (its failures included).
    Reply(ClientReply),
    /// The answer to [`ClientMessage::Cluster`].
    Cluster(Box<ClusterView>),
    /// Refused before the node core saw it.
    Refused(Refusal),
}

/// A request the API layer refused, in the shape of the HTTP API's error bodies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// Machine-readable code: `unauthorized`, `bad_request`, `too_large`, `shutting_down`,
    /// `overloaded`.
    pub code: String,
    /// What happened.
    pub message: String,
    /// For writes: whether it may have been applied.
    pub indeterminate: Option<bool>,
}

impl Refusal {
    /// A refusal of something that certainly changed nothing.
    pub fn new(code: &str, message: impl Into<String>) -> Refusal {
        Refusal {
            code: code.into(),
            message: message.into(),
            indeterminate: None,
        }
    }
}

/// Encodes `message` as one frame with request id `id`.
pub fn encode_frame<T: Serialize>(id: u64, message: &T) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&id.to_be_bytes());
    encode_into(&mut out, message)?;
    let len = out.len() - 4;
    let len = u32::try_from(len).map_err(|_| WireError::TooLarge {
        len,
        max: u32::MAX as usize,
    })?;
    out[..4].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

/// A frame's header: how many bytes follow it and the request id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Bytes of the envelope that follows.
    pub body_len: usize,
    /// The request id.
    pub id: u64,
}

impl FrameHeader {
    /// Parses a frame header, refusing frames whose envelope would exceed `body_max` bytes or
    /// whose length cannot even hold the id and an envelope header.
    pub fn parse(bytes: &[u8; FRAME_HEADER_BYTES], body_max: usize) -> Result<Self, WireError> {
        let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        let mut id = [0; 8];
        id.copy_from_slice(&bytes[4..]);
        let id = u64::from_be_bytes(id);
        if len < 8 + HEADER_BYTES {
            return Err(WireError::Truncated {
                len: len.saturating_sub(8),
            });
        }
        let body_len = len - 8;
        if body_len > body_max {
            return Err(WireError::TooLarge {
                len: body_len,
                max: body_max,
            });
        }
        Ok(FrameHeader { body_len, id })
    }
}

/// A frame that cannot be read: its id (as far as the header names one) and why.
#[derive(Debug)]
pub struct FrameError {
    /// The request id in the offending header.
    pub id: u64,
    /// What is wrong.
    pub error: WireError,
    /// The frame is over the size limit but its length is plausible: its bytes are skipped as
    /// they arrive and the stream's framing goes on. Otherwise the framing is lost.
    pub skipped: bool,
}

/// Frames over the limit but at most this large are skipped rather than ending the stream.
pub const SKIP_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Cuts frames out of a stream's bytes as they arrive, whatever the read boundaries: the
/// reader fills [`FrameBuffer::spare`], reports it with [`FrameBuffer::filled`], and takes
/// every complete frame with [`FrameBuffer::next_frame`]. One read usually yields many frames,
/// so a busy lane costs a read per batch, not per request. No I/O here.
#[derive(Debug)]
pub struct FrameBuffer {
    buf: Vec<u8>,
    /// The unconsumed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    body_max: usize,
    /// Bytes of a skipped frame still to come (and be dropped).
    discard: usize,
}

/// Bytes asked of each read.
const READ_BYTES: usize = 64 * 1024;

impl FrameBuffer {
    /// A buffer refusing frames whose envelope exceeds `body_max` bytes.
    pub fn new(body_max: usize) -> FrameBuffer {
        FrameBuffer {
            buf: Vec::new(),
            start: 0,
            end: 0,
            body_max,
            discard: 0,
        }
    }

    /// Changes the size limit for the frames still to come.
    pub fn set_body_max(&mut self, body_max: usize) {
        self.body_max = body_max;
    }

    /// Room to read into: 64 KiB beyond what is buffered. The buffer grows with the bytes
    /// that arrive, never with what a header declares.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start > 0 && (self.start == self.end || self.start >= self.buf.len() / 2) {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < self.end + READ_BYTES {
            self.buf.resize(self.end + READ_BYTES, 0);
        }
        &mut self.buf[self.end..]
    }

    /// `n` bytes were read into the space [`FrameBuffer::spare`] gave.
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
        let drop = self.discard.min(self.end - self.start);
        self.start += drop;
        self.discard -= drop;
    }

    /// Whether part of a frame is buffered or owed.
    pub fn mid_frame(&self) -> bool {
        self.end > self.start || self.discard > 0
    }

    /// The id of the frame in progress, once its header is buffered.
    pub fn partial_id(&self) -> Option<u64> {
        let have = &self.buf[self.start..self.end];
        (have.len() >= FRAME_HEADER_BYTES).then(|| {
            let mut id = [0u8; 8];
            id.copy_from_slice(&have[4..FRAME_HEADER_BYTES]);
            u64::from_be_bytes(id)
        })
    }

    /// The next complete frame: its id and envelope bytes. `Ok(None)` when more bytes are
    /// needed; an error when the header is unusable (the stream's framing is then lost).
    pub fn next_frame(&mut self) -> Result<Option<(u64, &[u8])>, FrameError> {
        let have = &self.buf[self.start..self.end];
        if have.len() < FRAME_HEADER_BYTES {
            return Ok(None);
        }
        let mut header = [0u8; FRAME_HEADER_BYTES];
        header.copy_from_slice(&have[..FRAME_HEADER_BYTES]);
        let h = match FrameHeader::parse(&header, self.body_max) {
            Ok(h) => h,
            Err(error) => {
                let mut id = [0u8; 8];
                id.copy_from_slice(&header[4..]);
                let declared = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
                let total = declared as usize + 4;
                let skipped =
                    matches!(error, WireError::TooLarge { .. }) && total <= SKIP_BYTES_MAX;
                if skipped {
                    let have = self.end - self.start;
                    self.start += total.min(have);
                    self.discard = total.saturating_sub(have);
                }
                return Err(FrameError {
                    id: u64::from_be_bytes(id),
                    error,
                    skipped,
                });
            }
        };
        let total = FRAME_HEADER_BYTES + h.body_len;
        if have.len() < total {
            return Ok(None);
        }
        let body = self.start + FRAME_HEADER_BYTES;
        self.start += total;
        Ok(Some((h.id, &self.buf[body..body + h.body_len])))
    }
}

/// Most bytes one write of frames gathers.
pub const WRITE_BATCH_BYTES: usize = 256 * 1024;

/// Fills `batch` with `first` and then whatever `next` has ready, up to [`WRITE_BATCH_BYTES`]:
/// frames queued while the last write was in progress go out in one write.
pub fn gather(batch: &mut Vec<u8>, first: &[u8], mut next: impl FnMut() -> Option<Vec<u8>>) {
    batch.clear();
    batch.extend_from_slice(first);
    while batch.len() < WRITE_BATCH_BYTES {
        match next() {
            Some(more) => batch.extend_from_slice(&more),
            None => break,
        }
    }
}

/// Decodes a frame's envelope (the bytes after its header) of at most `body_max` bytes.
pub fn decode_body<T: serde::de::DeserializeOwned>(
    body: &[u8],
    body_max: usize,
) -> Result<T, WireError> {
    decode_with_limit(body, body_max)
}

/// Largest request frame body a node accepts, given its key and value limits: the largest
/// value (or set update, which the core bounds by the same total) plus the key, a context and
/// the envelope.
pub fn request_body_max(key_bytes_max: usize, value_bytes_max: usize) -> usize {
    value_bytes_max
        .saturating_add(key_bytes_max)
        .saturating_add(64 * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{ClientOp, RequestOptions};

    fn put() -> ClientMessage {
        ClientMessage::Request(ClientRequest {
            key: b"k".to_vec(),
            op: ClientOp::Put {
                value: vec![7; 100],
                context: None,
            },
            options: RequestOptions {
                w: Some(3),
                ..RequestOptions::default()
            },
        })
    }

    fn split(frame: &[u8]) -> (FrameHeader, &[u8]) {
        let header: [u8; FRAME_HEADER_BYTES] = frame[..FRAME_HEADER_BYTES].try_into().unwrap();
        (
            FrameHeader::parse(&header, 1 << 20).unwrap(),
            &frame[FRAME_HEADER_BYTES..],
        )
    }

    #[test]
    fn frames_round_trip_with_their_id() {
        let frame = encode_frame(42, &put()).unwrap();
        let (h, body) = split(&frame);
        assert_eq!(h.id, 42);
        assert_eq!(h.body_len, body.len());
        let back: ClientMessage = decode_body(body, 1 << 20).unwrap();
        assert_eq!(back, put());
    }

    #[test]
    fn frames_are_cut_out_of_arbitrary_read_boundaries() {
        let frames: Vec<Vec<u8>> = (0..50u64)
            .map(|i| encode_frame(i, &put()).unwrap())
            .collect();
        let stream: Vec<u8> = frames.concat();
        for chunk in [1, 7, 12, 13, 500, stream.len()] {
            let mut fb = FrameBuffer::new(1 << 20);
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                let spare = fb.spare();
                spare[..piece.len()].copy_from_slice(piece);
                fb.filled(piece.len());
                while let Some((id, body)) = fb.next_frame().unwrap() {
                    let m: ClientMessage = decode_body(body, 1 << 20).unwrap();
                    assert_eq!(m, put());
                    got.push(id);
                }
            }
            assert_eq!(got, (0..50).collect::<Vec<_>>(), "chunks of {chunk}");
            assert!(!fb.mid_frame());
        }
        // An oversize header is an error naming its id.
        let mut fb = FrameBuffer::new(10);
        let frame = encode_frame(77, &put()).unwrap();
        fb.spare()[..frame.len()].copy_from_slice(&frame);
        fb.filled(frame.len());
        let e = fb.next_frame().unwrap_err();
        assert_eq!(e.id, 77);
        assert!(matches!(e.error, WireError::TooLarge { .. }) && e.skipped);
        // Its bytes are dropped, in whatever pieces they come, and the next frame is read.
        let mut fb = FrameBuffer::new(50);
        let mut big = encode_frame(5, &put()).unwrap();
        let small_frame = encode_frame(6, &ClientMessage::Cluster).unwrap();
        big.extend_from_slice(&small_frame);
        let mut errors = Vec::new();
        let mut got = Vec::new();
        for piece in big.chunks(20) {
            fb.spare()[..piece.len()].copy_from_slice(piece);
            fb.filled(piece.len());
            loop {
                match fb.next_frame() {
                    Ok(Some((id, _))) => got.push(id),
                    Ok(None) => break,
                    Err(e) => errors.push((e.id, e.skipped)),
                }
            }
        }
        assert_eq!((errors, got), (vec![(5, true)], vec![6]));
        // An absurd length ends the framing.
        let mut fb = FrameBuffer::new(200);
        let mut h = u32::MAX.to_be_bytes().to_vec();
        h.extend_from_slice(&9u64.to_be_bytes());
        fb.spare()[..12].copy_from_slice(&h);
        fb.filled(12);
        let e = fb.next_frame().unwrap_err();
        assert!(!e.skipped && e.id == 9);
    }

    #[test]
    fn bad_headers_and_bodies_are_errors_not_panics() {
        let frame = encode_frame(1, &put()).unwrap();
        let header: [u8; FRAME_HEADER_BYTES] = frame[..FRAME_HEADER_BYTES].try_into().unwrap();
        // Over the limit.
        assert!(matches!(
            FrameHeader::parse(&header, 10),
            Err(WireError::TooLarge { .. })
        ));
        // A length too small to hold an id and an envelope header.
        let mut short = header;
        short[..4].copy_from_slice(&3u32.to_be_bytes());
        assert!(matches!(
            FrameHeader::parse(&short, 1 << 20),
            Err(WireError::Truncated { .. })
        ));
        // Garbage and truncated bodies.
        let body = &frame[FRAME_HEADER_BYTES..];
        for bad in [
            &body[..body.len() - 1],
            &b"CH\x01\xff\xff"[..],
            &b"GET / HTTP"[..],
        ] {
            assert!(decode_body::<ClientMessage>(bad, 1 << 20).is_err());
        }
        // A server message is not a client message.
        let reply = encode_frame(1, &ServerMessage::Ready).unwrap();
        assert!(decode_body::<ClientMessage>(&reply[FRAME_HEADER_BYTES..], 1 << 20).is_err());
    }
}
