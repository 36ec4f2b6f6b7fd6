//! Membership: who is in the ring (a CRDT) and who is reachable (SWIM, via `foca`).
//!
//! Ring membership (`joining → member → leaving → left`) changes only on purpose and decides
//! placement; liveness (`alive / suspect / down`) comes from SWIM and never changes ring
//! membership. This module is part of the sans-IO core: no sockets, clock or ambient randomness.

mod ring_state;
mod swim;

pub use ring_state::{NodeInfo, RingEntry, RingState, RingStatus};
pub use swim::{
    PeerId, RingBroadcast, RingBroadcastHandler, RingBroadcastKey, SharedRing, SwimCodec,
    SwimCodecError,
};
