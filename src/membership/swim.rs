//! The glue between Chorus and `foca`: the SWIM identity, the MessagePack codec for SWIM
//! packets, and the custom-broadcast handler that spreads ring entries.

use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::{Buf, BufMut};
use foca::{Header, Invalidates, Member};
use serde::{Deserialize, Serialize};

use super::auth::EntryAuth;
use super::ring_state::{RingRecord, RingState, RingStatus};
use crate::id::NodeId;
use crate::protocol::DEPTH_MAX;

/// A node's identity in SWIM: its id, where to reach it, and its generation (bumped at every
/// start, so a restarted node replaces its previous incarnation everywhere).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PeerId {
    /// The node.
    pub node: NodeId,
    /// Its QUIC endpoint; SWIM packets travel as QUIC datagrams to it.
    pub addr: SocketAddr,
    /// Starts of this node so far; the newest wins.
    pub generation: u64,
}

impl PeerId {
    /// A placeholder identity for a seed known only by address. SWIM accepts an announce
    /// addressed to any identity with the seed's address, and answers with its real identity.
    pub fn seed(addr: SocketAddr) -> Self {
        PeerId {
            node: NodeId::new(0),
            addr,
            generation: 0,
        }
    }
}

/// SWIM's notion of "the same member" is the endpoint address: a seed is known only by its
/// address, and foca accepts an announce only when the destination's address is its own. Two
/// identities with one address are the same member; the newer generation wins.
impl foca::Identity for PeerId {
    type Addr = SocketAddr;

    /// The next generation; none past `u64::MAX` (foca then keeps the identity it has rather
    /// than wrap to a generation every peer has seen superseded).
    fn renew(&self) -> Option<Self> {
        Some(PeerId {
            generation: self.generation.checked_add(1)?,
            ..*self
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

/// Why a SWIM packet or broadcast could not be decoded or encoded.
#[derive(Debug, thiserror::Error)]
pub enum SwimCodecError {
    /// Malformed MessagePack or a value that violates its invariants.
    #[error("malformed SWIM data: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    /// Encoding failed.
    #[error("cannot encode SWIM data: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    /// The packet buffer is full.
    #[error("SWIM packet buffer full ({needed} bytes needed, {available} available)")]
    BufferFull {
        /// Bytes the item needs.
        needed: usize,
        /// Bytes left in the packet.
        available: usize,
    },
}

/// SWIM packet codec: each header and member is one MessagePack value.
#[derive(Debug, Clone, Copy, Default)]
pub struct SwimCodec;

impl SwimCodec {
    /// The node a SWIM packet says it comes from (its header's source), or `None` for a packet
    /// whose header does not decode. The transport knows the real sender from its certificate;
    /// a packet claiming another is refused.
    pub fn sender(packet: &[u8]) -> Option<NodeId> {
        Self::take::<Header<PeerId>>(packet)
            .ok()
            .map(|h| h.src.node)
    }

    fn put<T: Serialize>(value: &T, mut buf: impl BufMut) -> Result<(), SwimCodecError> {
        let bytes = rmp_serde::to_vec(value)?;
        if buf.remaining_mut() < bytes.len() {
            return Err(SwimCodecError::BufferFull {
                needed: bytes.len(),
                available: buf.remaining_mut(),
            });
        }
        buf.put_slice(&bytes);
        Ok(())
    }

    fn take<T: for<'de> Deserialize<'de>>(mut buf: impl Buf) -> Result<T, SwimCodecError> {
        let chunk = buf.chunk();
        let mut de = rmp_serde::Deserializer::new(Cursor::new(chunk));
        de.set_max_depth(DEPTH_MAX);
        let value = T::deserialize(&mut de)?;
        let used = de.position() as usize;
        buf.advance(used);
        Ok(value)
    }
}

impl foca::Codec<PeerId> for SwimCodec {
    type Error = SwimCodecError;

    fn encode_header(
        &mut self,
        header: &Header<PeerId>,
        buf: impl BufMut,
    ) -> Result<(), Self::Error> {
        Self::put(header, buf)
    }

    fn decode_header(&mut self, buf: impl Buf) -> Result<Header<PeerId>, Self::Error> {
        Self::take(buf)
    }

    fn encode_member(
        &mut self,
        member: &Member<PeerId>,
        buf: impl BufMut,
    ) -> Result<(), Self::Error> {
        Self::put(member, buf)
    }

    fn decode_member(&mut self, buf: impl Buf) -> Result<Member<PeerId>, Self::Error> {
        Self::take(buf)
    }
}

/// One node's ring record as a SWIM custom broadcast.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingBroadcast {
    /// The node the record describes.
    pub node: NodeId,
    /// The record (its signed entry, and a removal if any).
    pub record: RingRecord,
}

impl RingBroadcast {
    /// The broadcast's bytes.
    pub fn encode(&self) -> Vec<u8> {
        // A fixed-shape struct of integers, addresses and byte strings cannot fail to encode.
        rmp_serde::to_vec(self).unwrap_or_default()
    }
}

/// What makes one ring broadcast newer than another of the same node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingBroadcastKey {
    node: NodeId,
    status: RingStatus,
    info_version: u64,
    removed: bool,
}

impl Invalidates for RingBroadcastKey {
    /// A broadcast supersedes another of the same node when its entry ranks at least as high
    /// (the ring's order: version first, then status — a cancelled leave's `member` of a newer
    /// version supersedes the `leaving` before it) and it carries any removal the other does.
    fn invalidates(&self, other: &Self) -> bool {
        self.node == other.node
            && (self.info_version, self.status) >= (other.info_version, other.status)
            && self.removed >= other.removed
    }
}

/// The ring state shared between the node core and the broadcast handler.
///
/// `foca` owns its broadcast handler and offers no way to reach it afterwards, so the handler and
/// the node share the state through this handle. The core is single-threaded; the mutex is never
/// contended and exists only to make the handle `Send`.
pub type SharedRing = Arc<Mutex<RingState>>;

/// Counts of ring records a node did not believe: refused (bad signature, absurd version,
/// removal by a non-member) and ignored (relayed by a node that may only speak for itself).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingRefusals {
    /// Records refused.
    pub refused: u64,
    /// Records ignored.
    pub ignored: u64,
}

/// The refusal counts shared between the broadcast handler and the node core, like
/// [`SharedRing`].
pub type SharedRefusals = Arc<Mutex<RingRefusals>>;

/// Merges received ring broadcasts into the shared ring state — only what their nodes vouch
/// for (see [`RingState::merge_verified_record`]) — and tells foca to keep spreading only those
/// that taught this node something new.
#[derive(Debug, Clone)]
pub struct RingBroadcastHandler {
    ring: SharedRing,
    auth: Arc<dyn EntryAuth>,
    refusals: SharedRefusals,
}

impl RingBroadcastHandler {
    /// A handler merging into `ring`, checking signatures with `auth` and counting what it does
    /// not believe in `refusals`.
    pub fn new(ring: SharedRing, auth: Arc<dyn EntryAuth>, refusals: SharedRefusals) -> Self {
        RingBroadcastHandler {
            ring,
            auth,
            refusals,
        }
    }
}

impl foca::BroadcastHandler<PeerId> for RingBroadcastHandler {
    type Key = RingBroadcastKey;
    type Error = SwimCodecError;

    fn receive_item(
        &mut self,
        data: &[u8],
        sender: Option<&PeerId>,
    ) -> Result<Option<Self::Key>, Self::Error> {
        let item: RingBroadcast = rmp_serde::from_slice(data)?;
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let report = ring.merge_verified_record(
            sender.map(|p| p.node),
            item.node,
            &item.record,
            self.auth.as_ref(),
        );
        if report.refused > 0 || report.ignored > 0 {
            let mut r = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
            r.refused += report.refused;
            r.ignored += report.ignored;
        }
        // This node's own broadcasts (no sender) are already merged into the ring when they
        // are added, and spread all the same.
        if report.changed || (sender.is_none() && report.refused == 0) {
            let entry = item.record.effective();
            Ok(Some(RingBroadcastKey {
                node: item.node,
                status: entry.status,
                info_version: entry.info_version,
                removed: item.record.removal.is_some(),
            }))
        } else {
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use foca::{Codec, Identity};

    use super::*;
    use crate::membership::{InsecureTestAuth, NodeInfo, RingEntry, SignedEntry};

    fn peer(i: u64, generation: u64) -> PeerId {
        PeerId {
            node: NodeId::new(i),
            addr: SocketAddr::from(([127, 0, 0, 1], 7000 + i as u16)),
            generation,
        }
    }

    #[test]
    fn newer_generation_wins_and_renew_bumps_it() {
        let old = peer(1, 3);
        let new = old.renew().unwrap();
        assert_eq!(new.generation, 4);
        assert_eq!(new.addr(), old.addr());
        assert!(new.win_addr_conflict(&old));
        assert!(!old.win_addr_conflict(&new));
        // The last generation cannot be renewed: wrapping to 0 would lose to every older one.
        assert_eq!(peer(1, u64::MAX).renew(), None);
    }

    #[test]
    fn codec_round_trips_members_and_rejects_garbage() {
        let mut codec = SwimCodec;
        let member = Member::alive(peer(2, 1));
        let mut buf = Vec::new();
        codec.encode_member(&member, &mut buf).unwrap();
        codec.encode_member(&member, &mut buf).unwrap();
        let mut slice = buf.as_slice();
        assert_eq!(codec.decode_member(&mut slice).unwrap(), member);
        assert_eq!(codec.decode_member(&mut slice).unwrap(), member);
        assert!(slice.is_empty());
        let mut junk: &[u8] = &[0xc1, 0xff, 0x00];
        assert!(codec.decode_member(&mut junk).is_err());
        let mut small = [0u8; 4];
        assert!(codec.encode_member(&member, &mut small[..]).is_err());
    }

    #[test]
    fn handler_spreads_only_news() {
        use foca::BroadcastHandler;
        let ring = SharedRing::default();
        let refusals = SharedRefusals::default();
        let mut handler = RingBroadcastHandler::new(
            ring.clone(),
            Arc::new(InsecureTestAuth::new(NodeId::new(1))),
            refusals.clone(),
        );
        let node = NodeId::new(9);
        let entry = RingEntry {
            status: RingStatus::Member,
            info_version: 1,
            info: NodeInfo {
                quic_addr: SocketAddr::from(([127, 0, 0, 1], 1)),
                http_addr: SocketAddr::from(([127, 0, 0, 1], 2)),
            },
        };
        let item = RingBroadcast {
            node,
            record: RingRecord {
                signed: SignedEntry::sign(node, entry, &InsecureTestAuth::new(node)),
                removal: None,
            },
        };
        // Relayed by a stranger (not node 9, not an owner): ignored.
        assert!(handler
            .receive_item(&item.encode(), Some(&peer(5, 1)))
            .unwrap()
            .is_none());
        assert_eq!(refusals.lock().unwrap().ignored, 1);
        // Unsigned: refused.
        let mut unsigned = item.clone();
        unsigned.record.signed.sig = Default::default();
        assert!(handler
            .receive_item(&unsigned.encode(), None)
            .unwrap()
            .is_none());
        assert_eq!(refusals.lock().unwrap().refused, 1);
        // From node 9 itself: news the first time only.
        assert!(handler
            .receive_item(&item.encode(), Some(&peer(9, 1)))
            .unwrap()
            .is_some());
        assert!(handler
            .receive_item(&item.encode(), Some(&peer(9, 1)))
            .unwrap()
            .is_none());
        // This node's own broadcasts are spread even though they are no news to its ring.
        assert!(handler
            .receive_item(&item.encode(), None)
            .unwrap()
            .is_some());
        assert!(handler.receive_item(b"\xc1garbage", None).is_err());
        assert_eq!(ring.lock().unwrap().get(NodeId::new(9)), Some(&entry));
    }
}
