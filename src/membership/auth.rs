//! Who vouches for a ring entry: signatures over ring entries and removals.
//!
//! A node's ring entry (its status and addresses) is believed only when the node itself signed
//! it, with the key its id is derived from; a removal only when the cluster's operator signed
//! it, with the operator key (in a real cluster the CA key, which already decides who may be a
//! node at all) — no node, member or not, can remove another (see [`super::RingState`] for
//! the rules). The core does no cryptography itself: the driver supplies an [`EntryAuth`] —
//! the runtime one signs with the node's certificate key (ECDSA P-256), derives ids as the
//! transport does and checks removals against the CA certificates; the simulator and unit
//! tests use [`InsecureTestAuth`], a deterministic stand-in. Both sides of a cluster must use
//! the same kind.
//!
//! What is signed is a fixed, canonical byte string ([`entry_message`], [`removal_message`]),
//! independent of the wire encoding, so every node checks the same bytes.

use std::fmt::Debug;
use std::net::SocketAddr;

use super::ring_state::{RingEntry, RingStatus};
use crate::id::NodeId;

/// Signs this node's ring entries and checks those of others.
///
/// Implementations must be deterministic in [`EntryAuth::verify`] (every node must reach the
/// same verdict on the same bytes) and must bind keys to node ids: `verify(node, key, ..)`
/// holds only when `key` is the public key `node`'s id is derived from.
pub trait EntryAuth: Debug + Send + Sync {
    /// This node's public key, as carried in its signed entries.
    fn public_key(&self) -> Vec<u8>;
    /// A signature of `message` under this node's key.
    fn sign(&self, message: &[u8]) -> Vec<u8>;
    /// Whether `key` belongs to `node` (its id is derived from it) and `signature` is a valid
    /// signature of `message` under it.
    fn verify(&self, node: NodeId, key: &[u8], message: &[u8], signature: &[u8]) -> bool;
    /// Whether `signature` is the operator's signature of `message` (an operator action such
    /// as a removal, [`removal_message`]). No node key can make one.
    fn verify_operator(&self, message: &[u8], signature: &[u8]) -> bool;
}

/// The bytes a node signs to vouch for its entry.
pub fn entry_message(node: NodeId, entry: &RingEntry) -> Vec<u8> {
    let mut m = Vec::with_capacity(80);
    m.extend_from_slice(b"chorus/ring-entry/v1\0");
    m.extend_from_slice(&node.get().to_be_bytes());
    m.push(match entry.status {
        RingStatus::Joining => 0,
        RingStatus::Member => 1,
        RingStatus::Leaving => 2,
        RingStatus::Left => 3,
    });
    m.extend_from_slice(&entry.info_version.to_be_bytes());
    put_addr(&mut m, entry.info.quic_addr);
    put_addr(&mut m, entry.info.http_addr);
    m
}

/// The bytes the operator signs to remove `subject` from the ring.
pub fn removal_message(subject: NodeId) -> Vec<u8> {
    let mut m = Vec::with_capacity(32);
    m.extend_from_slice(b"chorus/ring-removal/v1\0");
    m.extend_from_slice(&subject.get().to_be_bytes());
    m
}

fn put_addr(m: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(a) => {
            m.push(4);
            m.extend_from_slice(&a.ip().octets());
        }
        SocketAddr::V6(a) => {
            m.push(6);
            m.extend_from_slice(&a.ip().octets());
        }
    }
    m.extend_from_slice(&addr.port().to_be_bytes());
}

/// A deterministic stand-in for signatures, for the simulator and unit tests: a node's "key" is
/// a label naming its id, and its "signature" a BLAKE3 hash keyed by a secret derived from that
/// id. It models who may vouch for what, but protects nothing: anyone can compute any node's
/// secret. Never use it in a real cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InsecureTestAuth {
    node: NodeId,
}

impl InsecureTestAuth {
    /// The stand-in signer of node `node`.
    pub fn new(node: NodeId) -> Self {
        InsecureTestAuth { node }
    }

    fn key_of(node: NodeId) -> Vec<u8> {
        let mut k = b"insecure-test-key:".to_vec();
        k.extend_from_slice(&node.get().to_be_bytes());
        k
    }

    fn tag(node: NodeId, message: &[u8]) -> [u8; 32] {
        let secret = blake3::derive_key("chorus insecure test ring secret", &Self::key_of(node));
        *blake3::keyed_hash(&secret, message).as_bytes()
    }

    /// The stand-in operator's signature of `message` (what the simulator's and the tests'
    /// operator sends with a removal).
    pub fn operator_sign(message: &[u8]) -> Vec<u8> {
        let secret = blake3::derive_key("chorus insecure test operator secret", b"operator");
        blake3::keyed_hash(&secret, message).as_bytes().to_vec()
    }
}

impl EntryAuth for InsecureTestAuth {
    fn public_key(&self) -> Vec<u8> {
        Self::key_of(self.node)
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        Self::tag(self.node, message).to_vec()
    }

    fn verify(&self, node: NodeId, key: &[u8], message: &[u8], signature: &[u8]) -> bool {
        key == Self::key_of(node).as_slice() && signature == Self::tag(node, message).as_slice()
    }

    fn verify_operator(&self, message: &[u8], signature: &[u8]) -> bool {
        signature == Self::operator_sign(message).as_slice()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::NodeInfo;

    fn entry(port: u16) -> RingEntry {
        RingEntry {
            status: RingStatus::Member,
            info_version: 3,
            info: NodeInfo {
                quic_addr: SocketAddr::from(([10, 0, 0, 1], port)),
                http_addr: SocketAddr::from(([10, 0, 0, 1], port + 1)),
            },
        }
    }

    #[test]
    fn a_signature_binds_node_entry_and_key() {
        let (a, b) = (NodeId::new(1), NodeId::new(2));
        let auth = InsecureTestAuth::new(a);
        let m = entry_message(a, &entry(7000));
        let sig = auth.sign(&m);
        assert!(auth.verify(a, &auth.public_key(), &m, &sig));
        // Another node, another entry, another key, or a changed signature: refused.
        assert!(!auth.verify(b, &auth.public_key(), &m, &sig));
        assert!(!auth.verify(a, &auth.public_key(), &entry_message(a, &entry(7002)), &sig));
        assert!(!auth.verify(a, &InsecureTestAuth::new(b).public_key(), &m, &sig));
        let mut bad = sig.clone();
        bad[0] ^= 1;
        assert!(!auth.verify(a, &auth.public_key(), &m, &bad));
        // Messages of different kinds never coincide.
        assert_ne!(entry_message(a, &entry(7000)), removal_message(a));
        // No node's signature is the operator's.
        let rm = removal_message(b);
        assert!(auth.verify_operator(&rm, &InsecureTestAuth::operator_sign(&rm)));
        assert!(!auth.verify_operator(&rm, &auth.sign(&rm)));
        assert!(!auth.verify_operator(&removal_message(a), &InsecureTestAuth::operator_sign(&rm)));
    }
}
