//! Envelope round trips and hostile-input tests for every wire type.

use std::fmt::Debug;

use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::*;
use crate::causality::testing::{arb_node, arb_vv};
use crate::causality::{Dot, Register, VersionVector};
use crate::id::NodeId;

/// Encodes, decodes, and checks that every strict prefix and any trailing byte is rejected.
fn check_wire<T>(value: &T) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let bytes = encode(value).expect("encode");
    let back: T = decode(&bytes).expect("decode");
    prop_assert_eq!(&back, value);
    for cut in 0..bytes.len() {
        prop_assert!(
            decode::<T>(&bytes[..cut]).is_err(),
            "prefix of {} bytes decoded",
            cut
        );
    }
    let mut longer = bytes.clone();
    longer.push(0);
    let trailing = matches!(
        decode::<T>(&longer),
        Err(WireError::TrailingBytes { extra: 1, .. })
    );
    prop_assert!(trailing, "a trailing byte was accepted");
    Ok(())
}

fn arb_register() -> impl Strategy<Value = Register> {
    let op = (
        arb_node(),
        arb_vv(),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
    );
    proptest::collection::vec(op, 0..12).prop_map(|ops| {
        let mut r = Register::new();
        for (node, ctx, value) in ops {
            match value {
                Some(v) => r.put(node, &ctx, v),
                None => r.delete(node, &ctx),
            };
        }
        r
    })
}

proptest! {
    #![proptest_config(crate::testing::proptest_config())]

    #[test]
    fn node_ids_and_dots_round_trip(raw in any::<u64>(), counter in 1u64..) {
        check_wire(&NodeId::new(raw))?;
        check_wire(&Dot::new(NodeId::new(raw), counter))?;
    }

    #[test]
    fn version_vectors_round_trip(vv in arb_vv()) {
        check_wire(&vv)?;
    }

    #[test]
    fn registers_round_trip(r in arb_register()) {
        check_wire(&r)?;
    }

    /// Arbitrary bytes, with or without a valid header, never panic any decoder.
    #[test]
    fn garbage_never_panics(body in proptest::collection::vec(any::<u8>(), 0..64), header in any::<bool>()) {
        let mut bytes = Vec::new();
        if header {
            bytes.extend_from_slice(&MAGIC);
            bytes.push(WIRE_VERSION);
        }
        bytes.extend_from_slice(&body);
        let _ = decode::<VersionVector>(&bytes);
        let _ = decode::<Register>(&bytes);
        let _ = decode::<Dot>(&bytes);
    }
}

#[test]
fn envelope_errors_say_what_is_wrong() {
    let good = encode(&VersionVector::new()).unwrap();
    assert!(matches!(
        decode::<VersionVector>(&good[..2]),
        Err(WireError::Truncated { len: 2 })
    ));
    let mut bad_magic = good.clone();
    bad_magic[0] = b'X';
    assert!(matches!(
        decode::<VersionVector>(&bad_magic),
        Err(WireError::BadMagic { .. })
    ));
    let mut future = good.clone();
    future[2] = WIRE_VERSION + 1;
    let err = decode::<VersionVector>(&future).unwrap_err();
    assert!(matches!(err, WireError::UnsupportedVersion { found } if found == WIRE_VERSION + 1));
    assert!(err.to_string().contains("unsupported wire version"));
    assert!(matches!(
        decode_with_limit::<VersionVector>(&good, 2),
        Err(WireError::TooLarge { max: 2, .. })
    ));
}

#[test]
fn huge_declared_lengths_are_rejected_without_allocating() {
    // A bin32 header declaring 4 GiB of bytes, followed by nothing.
    let mut bytes = vec![
        MAGIC[0],
        MAGIC[1],
        WIRE_VERSION,
        0xc6,
        0xff,
        0xff,
        0xff,
        0xff,
    ];
    assert!(decode::<Register>(&bytes).is_err());
    // An array32 header declaring 4 billion elements.
    bytes[3] = 0xdd;
    assert!(decode::<Register>(&bytes).is_err());
    assert!(decode::<VersionVector>(&bytes).is_err());
}

#[test]
fn deep_nesting_is_rejected() {
    let mut bytes = vec![MAGIC[0], MAGIC[1], WIRE_VERSION];
    bytes.extend(std::iter::repeat_n(0x91u8, 10_000)); // fixarray of one element, nested
    assert!(matches!(
        decode::<Register>(&bytes),
        Err(WireError::Malformed { .. })
    ));
}

#[test]
fn invalid_states_are_rejected_on_decode() {
    // A version vector with a zero counter.
    let bytes = encode(&std::collections::BTreeMap::from([(NodeId::new(1), 0u64)])).unwrap();
    let err = decode::<VersionVector>(&bytes).unwrap_err();
    assert!(err.to_string().contains("counter 0"), "{err}");
}

#[test]
fn counters_beyond_the_limit_are_rejected() {
    use crate::causality::COUNTER_MAX;
    let bytes = encode(&std::collections::BTreeMap::from([(
        NodeId::new(1),
        COUNTER_MAX + 1,
    )]))
    .unwrap();
    assert!(decode::<VersionVector>(&bytes).is_err());
    let ok = encode(&std::collections::BTreeMap::from([(
        NodeId::new(1),
        COUNTER_MAX,
    )]))
    .unwrap();
    assert!(decode::<VersionVector>(&ok).is_ok());
}

mod crdts {
    use super::*;
    use crate::crdt::{Crdt, GCounter, ORSet, PNCounter, TwoPSet};

    /// A CRDT operation by one of three replicas, or a merge between them.
    #[derive(Clone, Debug)]
    enum Op {
        Inc(usize, u64),
        Dec(usize, u64),
        Add(usize, u8),
        Remove(usize, u8),
        Merge(usize, usize),
    }

    fn arb_ops() -> impl Strategy<Value = Vec<Op>> {
        let op = prop_oneof![
            (0..3usize, 0..1000u64).prop_map(|(r, v)| Op::Inc(r, v)),
            (0..3usize, 0..1000u64).prop_map(|(r, v)| Op::Dec(r, v)),
            (0..3usize, any::<u8>()).prop_map(|(r, e)| Op::Add(r, e)),
            (0..3usize, any::<u8>()).prop_map(|(r, e)| Op::Remove(r, e)),
            (0..3usize, 0..3usize).prop_map(|(a, b)| Op::Merge(a, b)),
        ];
        proptest::collection::vec(op, 0..30)
    }

    #[derive(Default, Clone)]
    struct Replica {
        g: GCounter,
        pn: PNCounter,
        two: TwoPSet<Vec<u8>>,
        or: ORSet<Vec<u8>>,
    }

    fn run(ops: &[Op]) -> Vec<Replica> {
        let mut rs = vec![Replica::default(); 3];
        for op in ops {
            match *op {
                Op::Inc(r, v) => {
                    let node = NodeId::new(r as u64 + 1);
                    rs[r].g.increment(node, v).unwrap();
                    rs[r].pn.increment(node, v).unwrap();
                }
                Op::Dec(r, v) => {
                    rs[r].pn.decrement(NodeId::new(r as u64 + 1), v).unwrap();
                }
                Op::Add(r, e) => {
                    rs[r].two.add(vec![e]);
                    rs[r].or.add(NodeId::new(r as u64 + 1), vec![e]).unwrap();
                }
                Op::Remove(r, e) => {
                    rs[r].two.remove(vec![e]);
                    rs[r].or.remove(&vec![e]);
                }
                Op::Merge(a, b) => {
                    let src = rs[b].clone();
                    rs[a].g.merge(&src.g);
                    rs[a].pn.merge(&src.pn);
                    rs[a].two.merge(&src.two);
                    rs[a].or.merge(&src.or);
                }
            }
        }
        rs
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config())]

        #[test]
        fn crdts_round_trip_through_the_envelope(ops in arb_ops()) {
            for r in run(&ops) {
                check_wire(&r.g)?;
                check_wire(&r.pn)?;
                check_wire(&r.two)?;
                check_wire(&r.or)?;
            }
        }

        #[test]
        fn garbage_never_panics_crdt_decoders(body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut bytes = vec![MAGIC[0], MAGIC[1], WIRE_VERSION];
            bytes.extend_from_slice(&body);
            let _ = decode::<GCounter>(&bytes);
            let _ = decode::<PNCounter>(&bytes);
            let _ = decode::<TwoPSet<Vec<u8>>>(&bytes);
            let _ = decode::<ORSet<Vec<u8>>>(&bytes);
        }
    }
}
