//! Peer-to-peer messages between nodes (one message per QUIC stream, in the wire envelope).

use serde::{Deserialize, Serialize};

use crate::id::NodeId;
use crate::membership::RingState;

/// A message from one node to another, with the sender's id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerEnvelope {
    /// The sending node.
    pub from: NodeId,
    /// What it says.
    pub message: PeerMessage,
}

/// Everything nodes say to each other outside SWIM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMessage {
    /// Full ring-membership state, exchanged periodically so a node that missed broadcasts
    /// catches up. With `reply`, the receiver answers with its own state if it knows more.
    RingSync {
        /// The sender's whole ring state.
        state: RingState,
        /// Whether the receiver should answer with its state when it knows something new.
        reply: bool,
    },
}
