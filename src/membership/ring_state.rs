//! Ring membership as a CRDT: who owns partitions, independent of who is reachable.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::auth::{entry_message, removal_message, EntryAuth};
use crate::id::NodeId;

/// Where a node stands in the ring: `joining → member → leaving → left`. Statuses move
/// forward, with one exception a node signs itself: a leave cancelled before `left` goes back
/// from `leaving` to `member` (with a newer version, which is what the ring orders by).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub enum RingStatus {
    /// Announced itself; owns no partitions yet.
    Joining,
    /// Owns partitions.
    Member,
    /// Handing its partitions to the others; still owns them until it is gone.
    Leaving,
    /// Gone for good. The same node id never comes back.
    Left,
}

impl RingStatus {
    /// Whether a node in this status holds partitions in the placement.
    pub fn owns_partitions(self) -> bool {
        matches!(self, RingStatus::Member | RingStatus::Leaving)
    }

    /// The lowercase name used in the HTTP API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            RingStatus::Joining => "joining",
            RingStatus::Member => "member",
            RingStatus::Leaving => "leaving",
            RingStatus::Left => "left",
        }
    }
}

/// How to reach a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's QUIC endpoint (peers and QUIC clients).
    pub quic_addr: SocketAddr,
    /// The node's HTTP API.
    pub http_addr: SocketAddr,
}

/// One node's ring entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingEntry {
    /// The node's status.
    pub status: RingStatus,
    /// Version of the entry, bumped by the node itself whenever it signs a new one (its status
    /// or addresses changed). At most [`VERSION_MAX`].
    pub info_version: u64,
    /// The node's addresses as of `info_version`.
    pub info: NodeInfo,
}

/// Largest entry version believed. A node bumps its version when its status or addresses
/// change, a handful of times in its life; one bumping it every second would need 136 years to
/// get here. Larger versions are refused, so no arithmetic on versions can overflow.
pub const VERSION_MAX: u64 = u32::MAX as u64;

impl RingEntry {
    /// The order in which one node's signed entries supersede each other: newest version first,
    /// ties (only a node that signed two entries of one version, say after restoring an old
    /// data directory, makes them) broken by the furthest status, then the info, so the merge
    /// is deterministic.
    fn rank(&self) -> (u64, RingStatus, NodeInfo) {
        (self.info_version, self.status, self.info)
    }
}

/// A ring entry with its node's signature ([`super::EntryAuth`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedEntry {
    /// The entry.
    pub entry: RingEntry,
    /// The node's public key (the one its id is derived from). Empty: unsigned.
    pub key: serde_bytes::ByteBuf,
    /// The node's signature of [`super::entry_message`]. Empty: unsigned.
    pub sig: serde_bytes::ByteBuf,
}

impl SignedEntry {
    /// `entry` of `node`, signed with `auth` (which must be that node's).
    pub fn sign(node: NodeId, entry: RingEntry, auth: &dyn EntryAuth) -> SignedEntry {
        SignedEntry {
            entry,
            key: serde_bytes::ByteBuf::from(auth.public_key()),
            sig: serde_bytes::ByteBuf::from(auth.sign(&entry_message(node, &entry))),
        }
    }

    /// Whether `node` vouches for this entry, with a version no larger than [`VERSION_MAX`].
    pub fn verify(&self, node: NodeId, auth: &dyn EntryAuth) -> bool {
        self.entry.info_version <= VERSION_MAX
            && auth.verify(
                node,
                &self.key,
                &entry_message(node, &self.entry),
                &self.sig,
            )
    }

    fn rank(&self) -> (u64, RingStatus, NodeInfo, &[u8], &[u8]) {
        let (v, s, i) = self.entry.rank();
        (v, s, i, &self.key, &self.sig)
    }
}

/// An operator's removal of a node: the operator's signature of
/// [`super::removal_message`] of the removed node ([`EntryAuth::verify_operator`]), and the
/// node that took the request. Only the signature is trusted: no node can remove another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removal {
    /// The node that took the operator's request and first spread it (for the record only).
    pub by: NodeId,
    /// The operator's signature of [`super::removal_message`] of the removed node.
    pub sig: serde_bytes::ByteBuf,
}

impl Removal {
    /// The operator's removal `signature`, taken by node `by`.
    pub fn new(by: NodeId, signature: Vec<u8>) -> Removal {
        Removal {
            by,
            sig: serde_bytes::ByteBuf::from(signature),
        }
    }

    /// Whether this is the operator's removal of `subject`.
    pub fn verify(&self, subject: NodeId, auth: &dyn EntryAuth) -> bool {
        auth.verify_operator(&removal_message(subject), &self.sig)
    }

    fn rank(&self) -> (NodeId, &[u8]) {
        (self.by, &self.sig)
    }
}

/// Everything known of one node: its newest signed entry, and an operator's removal of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingRecord {
    /// The node's newest entry, signed by itself.
    pub signed: SignedEntry,
    /// The operator's removal of the node, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removal: Option<Removal>,
}

impl RingRecord {
    /// The entry the ring acts on: the signed one, `left` when the node was removed.
    pub fn effective(&self) -> RingEntry {
        let mut e = self.signed.entry;
        if self.removal.is_some() {
            e.status = RingStatus::Left;
        }
        e
    }

    /// Least upper bound with another record of the same node; returns whether it changed.
    fn merge(&mut self, other: &RingRecord) -> bool {
        let mut changed = false;
        if other.signed.rank() > self.signed.rank() {
            self.signed = other.signed.clone();
            changed = true;
        }
        changed |= self.merge_removal(other.removal.as_ref());
        changed
    }

    /// Keeps one removal: of two, the least (a deterministic choice; any one suffices).
    fn merge_removal(&mut self, other: Option<&Removal>) -> bool {
        let Some(other) = other else { return false };
        match &self.removal {
            Some(mine) if mine.rank() <= other.rank() => false,
            _ => {
                self.removal = Some(other.clone());
                true
            }
        }
    }
}

/// Why received ring state was not (wholly) believed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MergeReport {
    /// Whether anything changed.
    pub changed: bool,
    /// Entries or removals refused: bad or missing signature (a removal must carry the
    /// operator's), or a version above [`VERSION_MAX`].
    pub refused: u64,
    /// Records ignored because the sender may only speak for itself (it is not a ring owner).
    pub ignored: u64,
}

/// The ring membership of the whole cluster: a map of per-node records merged pointwise.
/// Commutative, associative and idempotent; gossiped by SWIM broadcasts and by periodic
/// full-state exchange. Liveness is not part of it: a down member keeps its partitions.
///
/// # Who is believed
///
/// Received state goes through [`RingState::merge_verified`]: a node's entry is believed only
/// when the node signed it (a peer cannot change another node's status, addresses or version),
/// and a removal only when the operator signed it (a verdict that depends on nothing else, so
/// every node reaches the same state). A sender that owns no partitions in the receiver's ring
/// (unknown, joining, or gone) may only speak for itself: the rest of what it sends is ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    from = "BTreeMap<NodeId, RingRecord>",
    into = "BTreeMap<NodeId, RingRecord>"
)]
pub struct RingState {
    records: BTreeMap<NodeId, RingRecord>,
    /// Each record's [`RingRecord::effective`] entry, kept beside it.
    entries: BTreeMap<NodeId, RingEntry>,
}

impl From<BTreeMap<NodeId, RingRecord>> for RingState {
    fn from(records: BTreeMap<NodeId, RingRecord>) -> Self {
        let entries = records.iter().map(|(&n, r)| (n, r.effective())).collect();
        RingState { records, entries }
    }
}

impl From<RingState> for BTreeMap<NodeId, RingRecord> {
    fn from(s: RingState) -> Self {
        s.records
    }
}

impl RingState {
    /// An empty ring.
    pub fn new() -> Self {
        Self::default()
    }

    /// Merges one node's record as is, without checking who vouches for it: only for state
    /// this node made or persisted itself. Returns whether anything changed.
    pub fn merge_record(&mut self, node: NodeId, record: &RingRecord) -> bool {
        let changed = match self.records.get_mut(&node) {
            Some(mine) => mine.merge(record),
            None => {
                self.records.insert(node, record.clone());
                true
            }
        };
        if changed {
            if let Some(r) = self.records.get(&node) {
                self.entries.insert(node, r.effective());
            }
        }
        changed
    }

    /// Merges an unsigned entry of `node`, as [`RingState::merge_record`] does: for tests and
    /// tools that build a ring by hand. Other nodes refuse such an entry.
    pub fn merge_entry(&mut self, node: NodeId, entry: &RingEntry) -> bool {
        let record = RingRecord {
            signed: SignedEntry {
                entry: *entry,
                key: Default::default(),
                sig: Default::default(),
            },
            removal: None,
        };
        self.merge_record(node, &record)
    }

    /// Merges another replica's whole state as is (see [`RingState::merge_record`]); returns
    /// whether anything changed.
    pub fn merge(&mut self, other: &RingState) -> bool {
        let mut changed = false;
        for (&node, record) in &other.records {
            changed |= self.merge_record(node, record);
        }
        changed
    }

    /// Merges what node `from` sent (see the type's documentation for who is believed);
    /// `auth` checks signatures. Records of nodes other than `from` are ignored unless `from`
    /// owns partitions in this ring; each signed entry must be its node's, each removal the
    /// operator's.
    pub fn merge_verified(
        &mut self,
        from: NodeId,
        other: &RingState,
        auth: &dyn EntryAuth,
    ) -> MergeReport {
        let from_owner = self
            .entries
            .get(&from)
            .is_some_and(|e| e.status.owns_partitions());
        let mut report = MergeReport::default();
        let mut removals = Vec::new();
        for (&node, record) in &other.records {
            if node != from && !from_owner {
                report.ignored += 1;
                continue;
            }
            if self.records.get(&node) == Some(record) {
                continue;
            }
            report.changed |= self.merge_signed(node, &record.signed, auth, &mut report);
            if let Some(r) = &record.removal {
                removals.push((node, r));
            }
        }
        // Removals after the entries: the removed node's entry may have come in the same state.
        for (node, removal) in removals {
            report.changed |= self.merge_removal(node, removal, auth, &mut report);
        }
        report
    }

    /// Merges one received record (a SWIM broadcast) relayed by `from` (`None`: this node's
    /// own broadcast), as [`RingState::merge_verified`] would.
    pub fn merge_verified_record(
        &mut self,
        from: Option<NodeId>,
        node: NodeId,
        record: &RingRecord,
        auth: &dyn EntryAuth,
    ) -> MergeReport {
        let mut report = MergeReport::default();
        let from_owner = from.is_none_or(|f| {
            f == node
                || self
                    .entries
                    .get(&f)
                    .is_some_and(|e| e.status.owns_partitions())
        });
        if !from_owner {
            report.ignored += 1;
            return report;
        }
        if self.records.get(&node) == Some(record) {
            return report;
        }
        report.changed |= self.merge_signed(node, &record.signed, auth, &mut report);
        if let Some(r) = &record.removal {
            report.changed |= self.merge_removal(node, r, auth, &mut report);
        }
        report
    }

    fn merge_signed(
        &mut self,
        node: NodeId,
        signed: &SignedEntry,
        auth: &dyn EntryAuth,
        report: &mut MergeReport,
    ) -> bool {
        let known = self.records.get(&node).map(|r| &r.signed);
        if known.is_some_and(|k| k.rank() >= signed.rank()) {
            return false;
        }
        if !signed.verify(node, auth) {
            report.refused += 1;
            return false;
        }
        self.merge_record(
            node,
            &RingRecord {
                signed: signed.clone(),
                removal: None,
            },
        )
    }

    fn merge_removal(
        &mut self,
        node: NodeId,
        removal: &Removal,
        auth: &dyn EntryAuth,
        report: &mut MergeReport,
    ) -> bool {
        let Some(record) = self.records.get(&node) else {
            // Nothing to remove yet: the node's own entry must come first.
            report.refused += 1;
            return false;
        };
        if record
            .removal
            .as_ref()
            .is_some_and(|r| r.rank() <= removal.rank())
        {
            return false;
        }
        if !removal.verify(node, auth) {
            report.refused += 1;
            return false;
        }
        let mut record = record.clone();
        record.merge_removal(Some(removal));
        self.merge_record(node, &record)
    }

    /// Whether `self` knows everything `other` knows.
    pub fn covers(&self, other: &RingState) -> bool {
        let mut merged = self.clone();
        !merged.merge(other)
    }

    /// One node's entry (as the ring acts on it: `left` once removed).
    pub fn get(&self, node: NodeId) -> Option<&RingEntry> {
        self.entries.get(&node)
    }

    /// One node's whole record.
    pub fn record(&self, node: NodeId) -> Option<&RingRecord> {
        self.records.get(&node)
    }

    /// Every known node and its entry, in node order.
    pub fn iter(&self) -> impl Iterator<Item = (NodeId, &RingEntry)> + '_ {
        self.entries.iter().map(|(&n, e)| (n, e))
    }

    /// The nodes that hold partitions (members and leaving nodes), in node order.
    pub fn owners(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.entries
            .iter()
            .filter(|(_, e)| e.status.owns_partitions())
            .map(|(&n, _)| n)
    }

    /// Number of known nodes (any status).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no node is known.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::membership::InsecureTestAuth;

    fn info(port: u16) -> NodeInfo {
        NodeInfo {
            quic_addr: SocketAddr::from(([127, 0, 0, 1], port)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], port + 1)),
        }
    }

    fn arb_status() -> impl Strategy<Value = RingStatus> {
        prop_oneof![
            Just(RingStatus::Joining),
            Just(RingStatus::Member),
            Just(RingStatus::Leaving),
            Just(RingStatus::Left),
        ]
    }

    fn arb_state() -> impl Strategy<Value = RingState> {
        let entry = (arb_status(), 0u64..3, 0u16..3).prop_map(|(status, v, p)| RingEntry {
            status,
            info_version: v,
            info: info(1000 + p),
        });
        let removal = prop::option::of((1u64..5).prop_map(|by| operator_removal(by, 0)));
        prop::collection::btree_map((1u64..5).prop_map(NodeId::new), (entry, removal), 0..5)
            .prop_map(|records| {
                let mut s = RingState::new();
                for (n, (e, removal)) in records {
                    let signed = SignedEntry::sign(n, e, &InsecureTestAuth::new(n));
                    s.merge_record(n, &RingRecord { signed, removal });
                }
                s
            })
    }

    #[test]
    fn newest_signed_entry_wins_and_a_removal_makes_it_left() {
        let n = NodeId::new(1);
        let mut s = RingState::new();
        assert!(s.merge_entry(
            n,
            &RingEntry {
                status: RingStatus::Leaving,
                info_version: 1,
                info: info(1)
            }
        ));
        assert!(s.merge_entry(
            n,
            &RingEntry {
                status: RingStatus::Member,
                info_version: 2,
                info: info(7)
            }
        ));
        let e = s.get(n).unwrap();
        assert_eq!(e.status, RingStatus::Member);
        assert_eq!(e.info, info(7));
        assert!(!s.merge_entry(
            n,
            &RingEntry {
                status: RingStatus::Joining,
                info_version: 0,
                info: info(9)
            }
        ));
        assert_eq!(s.owners().collect::<Vec<_>>(), vec![n]);
        let record = RingRecord {
            signed: s.record(n).unwrap().signed.clone(),
            removal: Some(operator_removal(2, n.get())),
        };
        assert!(s.merge_record(n, &record));
        assert_eq!(s.get(n).unwrap().status, RingStatus::Left);
        assert_eq!(s.owners().count(), 0);
    }

    /// The test operator's removal of `subject`, taken by `by`.
    fn operator_removal(by: u64, subject: u64) -> Removal {
        Removal::new(
            NodeId::new(by),
            InsecureTestAuth::operator_sign(&removal_message(NodeId::new(subject))),
        )
    }

    fn signed(n: u64, status: RingStatus, version: u64, port: u16) -> RingRecord {
        let node = NodeId::new(n);
        let entry = RingEntry {
            status,
            info_version: version,
            info: info(port),
        };
        RingRecord {
            signed: SignedEntry::sign(node, entry, &InsecureTestAuth::new(node)),
            removal: None,
        }
    }

    /// Issue 22, item 2: a member forging another node's entry (a bumped version, its own
    /// address), a phantom member, an absurd version, or a removal signed by any node — a
    /// joiner or a member — rather than the operator changes nothing, and each is counted.
    #[test]
    fn only_what_a_node_signed_itself_is_believed() {
        use RingStatus::*;
        let auth = InsecureTestAuth::new(NodeId::new(1));
        let (a, b) = (NodeId::new(1), NodeId::new(2));
        let mut mine = RingState::new();
        mine.merge_record(a, &signed(1, Member, 1, 10));
        mine.merge_record(b, &signed(2, Member, 1, 20));
        let before = mine.clone();

        // b's entry with a bumped version and a's address, re-signed by a: refused.
        let mut forged = signed(2, Member, 9, 10);
        forged.signed.sig = signed(1, Member, 9, 10).signed.sig;
        forged.signed.key = signed(1, Member, 9, 10).signed.key;
        let mut sent = RingState::new();
        sent.merge_record(b, &forged);
        // A phantom member, signed by nobody.
        sent.merge_entry(
            NodeId::new(3),
            &RingEntry {
                status: Member,
                info_version: 1,
                info: info(30),
            },
        );
        // b's real entry, but with a version beyond the bound.
        let mut absurd = RingState::new();
        absurd.merge_record(b, &signed(2, Member, u64::MAX, 20));
        let report = mine.merge_verified(a, &sent, &auth);
        assert_eq!((report.changed, report.refused), (false, 2));
        let report = mine.merge_verified(a, &absurd, &auth);
        assert_eq!((report.changed, report.refused), (false, 1));
        // A removal of a signed by a joining node c, and one signed by member b itself (with
        // the key of its own ring entry): refused.
        let c = NodeId::new(3);
        let mut removal = RingState::new();
        removal.merge_record(c, &signed(3, Joining, 1, 30));
        removal.merge_record(
            a,
            &RingRecord {
                signed: mine.record(a).unwrap().signed.clone(),
                removal: Some(Removal::new(
                    c,
                    InsecureTestAuth::new(c).sign(&removal_message(a)),
                )),
            },
        );
        let report = mine.merge_verified(a, &removal, &auth);
        assert_eq!(report.refused, 1);
        let mut by_member = RingState::new();
        by_member.merge_record(
            a,
            &RingRecord {
                signed: mine.record(a).unwrap().signed.clone(),
                removal: Some(Removal::new(
                    b,
                    InsecureTestAuth::new(b).sign(&removal_message(a)),
                )),
            },
        );
        let report = mine.merge_verified(b, &by_member, &auth);
        assert_eq!((report.changed, report.refused), (false, 1));
        // The operator's removal of a, but presented as the removal of b: refused.
        let mut moved = RingState::new();
        moved.merge_record(
            b,
            &RingRecord {
                signed: mine.record(b).unwrap().signed.clone(),
                removal: Some(operator_removal(1, a.get())),
            },
        );
        let report = mine.merge_verified(b, &moved, &auth);
        assert_eq!((report.changed, report.refused), (false, 1));
        assert_eq!(mine.get(a), before.get(a));
        assert_eq!(mine.get(b), before.get(b));
        assert_eq!(mine.get(c).map(|e| e.status), Some(Joining));

        // What b signs itself is believed; so is the operator's removal, whoever relays it.
        let mut real = RingState::new();
        real.merge_record(b, &signed(2, Leaving, 2, 21));
        real.merge_record(
            c,
            &RingRecord {
                signed: signed(3, Joining, 1, 30).signed,
                removal: Some(operator_removal(2, c.get())),
            },
        );
        let report = mine.merge_verified(b, &real, &auth);
        assert_eq!((report.changed, report.refused), (true, 0));
        assert_eq!(
            mine.get(b).map(|e| (e.status, e.info)),
            Some((Leaving, info(21)))
        );
        assert_eq!(mine.get(c).map(|e| e.status), Some(Left));
    }

    /// Issue 22, item 2: a sender that owns no partitions may only speak for itself.
    #[test]
    fn a_non_owner_may_only_speak_for_itself() {
        use RingStatus::*;
        let auth = InsecureTestAuth::new(NodeId::new(1));
        let (a, stranger, phantom) = (NodeId::new(1), NodeId::new(8), NodeId::new(9));
        let mut mine = RingState::new();
        mine.merge_record(a, &signed(1, Member, 1, 10));
        let mut sent = RingState::new();
        sent.merge_record(stranger, &signed(8, Joining, 1, 80));
        sent.merge_record(phantom, &signed(9, Member, 1, 90));
        sent.merge_record(a, &signed(1, Left, 7, 10));
        let report = mine.merge_verified(stranger, &sent, &auth);
        assert_eq!((report.changed, report.ignored), (true, 2));
        assert_eq!(mine.get(stranger).map(|e| e.status), Some(Joining));
        assert!(mine.get(phantom).is_none());
        assert_eq!(mine.get(a).map(|e| e.status), Some(Member));
        // The same from SWIM broadcasts relayed by the stranger.
        let report = mine.merge_verified_record(
            Some(stranger),
            phantom,
            sent.record(phantom).unwrap(),
            &auth,
        );
        assert_eq!((report.changed, report.ignored), (false, 1));
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config())]

        #[test]
        fn merge_is_a_join(a in arb_state(), b in arb_state(), c in arb_state()) {
            let mut ab = a.clone(); ab.merge(&b);
            let mut ba = b.clone(); ba.merge(&a);
            prop_assert_eq!(&ab, &ba);
            let mut ab_c = ab.clone(); ab_c.merge(&c);
            let mut bc = b.clone(); bc.merge(&c);
            let mut a_bc = a.clone(); a_bc.merge(&bc);
            prop_assert_eq!(&ab_c, &a_bc);
            let mut aa = a.clone();
            prop_assert!(!aa.merge(&a));
            prop_assert_eq!(&aa, &a);
            prop_assert!(ab.covers(&a) && ab.covers(&b));
        }
    }
}
