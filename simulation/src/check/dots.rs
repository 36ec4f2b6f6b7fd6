//! No dot is minted twice, checked at every write a node makes to its disk, not only at the
//! end of a run.
//!
//! A register's dot (actor, counter) names the one write that actor minted with that counter
//! for that key; a dot minted twice (a counter that restarts lower after a crash — Riak's
//! doomstones) makes two different values look like one event, and one of them silently
//! disappears wherever both meet. The end-of-run [`super::register::DotsUnique`] sees it only if
//! both values survive to the end on some disk; [`DotMonitor`] sees every data write of every
//! node as it goes to the disk:
//!
//! - for each register value (and tombstone) in the written state, it remembers which value
//!   the (key, dot) named the first time any node wrote it;
//! - a later write in which the same (key, dot) names another value is a violation: the
//!   dot's actor minted it twice. Only that actor mints its dots, and a value under a dot never
//!   changes as it is copied, so no legitimate path writes it.
//!
//! Values are remembered by a BLAKE3 fingerprint (large values stay cheap). It reads the write
//! batches the cluster performs; it changes nothing.

use std::collections::HashMap;
use std::time::Duration;

use chorus::causality::{Dot, RegisterValue};
use chorus::node::Object;
use chorus::storage::{split_data_key, Space, WriteBatch, WriteOp};

use super::Violation;

const CHECKER: &str = "dot-minted-twice";

/// Most violations kept.
const VIOLATIONS_MAX: usize = 32;

/// A value's fingerprint: `None` for a tombstone.
type Fingerprint = Option<[u8; 32]>;

fn fingerprint(v: &RegisterValue) -> Fingerprint {
    match v {
        RegisterValue::Bytes(b) => Some(*blake3::hash(b).as_bytes()),
        RegisterValue::Tombstone => None,
    }
}

fn show(f: &Fingerprint) -> String {
    match f {
        Some(h) => format!(
            "a value with hash {}",
            &blake3::Hash::from(*h).to_hex()[..12]
        ),
        None => "a tombstone".to_owned(),
    }
}

/// Watches every data write for a dot that names two values; see the module documentation.
#[derive(Debug, Default)]
pub struct DotMonitor {
    /// Per (key, dot): the value it named when first written, and the slot that wrote it.
    seen: HashMap<(Vec<u8>, Dot), (Fingerprint, usize)>,
    violations: Vec<Violation>,
    dropped: usize,
    checked: u64,
}

impl DotMonitor {
    /// A monitor that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// The violations found so far (at most [`VIOLATIONS_MAX`]).
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// Violations found beyond those kept.
    pub fn dropped(&self) -> usize {
        self.dropped
    }

    /// Dotted register values checked so far.
    pub fn checked(&self) -> u64 {
        self.checked
    }

    /// Slot `node` writes `batch` to its disk at `at`.
    pub fn persisted(&mut self, node: usize, batch: &WriteBatch, at: Duration) {
        for op in batch.ops() {
            let WriteOp::Put {
                space: Space::Data,
                key,
                value,
            } = op
            else {
                continue;
            };
            let Some((_, user_key)) = split_data_key(key) else {
                continue;
            };
            let Ok(object) = Object::decode(value) else {
                continue;
            };
            // (The register part of a contested key too.)
            let Some(reg) = object.as_register() else {
                continue;
            };
            for (dot, value) in reg.dvvset().dotted_values() {
                self.checked += 1;
                let print = fingerprint(value);
                match self.seen.get(&(user_key.to_vec(), dot)) {
                    None => {
                        self.seen.insert((user_key.to_vec(), dot), (print, node));
                    }
                    Some((first, by)) if *first != print => {
                        let message = format!(
                            "wrote dot {}:{} of key {:?} naming {}, but n{by} wrote that dot naming {} before: a dot was minted twice",
                            dot.node,
                            dot.counter,
                            String::from_utf8_lossy(user_key),
                            show(&print),
                            show(first),
                        );
                        let v = Violation {
                            checker: CHECKER,
                            at,
                            observer: Some(node),
                            subject: Some(*by),
                            message,
                        };
                        if self.violations.len() < VIOLATIONS_MAX {
                            self.violations.push(v);
                        } else {
                            self.dropped += 1;
                        }
                    }
                    Some(_) => {}
                }
            }
        }
    }
}
