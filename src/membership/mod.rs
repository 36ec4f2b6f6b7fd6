//! Membership: who is in the ring (a CRDT) and who is reachable (SWIM, via `foca`).
//!
//! Ring membership (`joining → member → leaving → left`) changes only on purpose and decides
//! placement; liveness (`alive / suspect / down`) comes from SWIM and never changes ring
//! membership. This module is part of the sans-IO core: no sockets, clock or ambient randomness.
//! Ring entries are believed only when the node they describe signed them ([`EntryAuth`]).

mod auth;
mod ring_state;
mod swim;

pub use auth::{entry_message, removal_message, EntryAuth, InsecureTestAuth};
pub use ring_state::{
    MergeReport, NodeInfo, Removal, RingEntry, RingRecord, RingState, RingStatus, SignedEntry,
    VERSION_MAX,
};
pub use swim::{
    PeerId, RingBroadcast, RingBroadcastHandler, RingBroadcastKey, RingRefusals, SharedRefusals,
    SharedRing, SwimCodec, SwimCodecError,
};
