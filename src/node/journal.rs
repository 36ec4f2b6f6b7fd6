//! Staged writes and the durable point: how the core gets writes to disk without doing I/O.
//!
//! Sub-machines stage writes into the [`Journal`] while they handle an input and register what
//! must wait for them (an acknowledgement to send, say) with [`Journal::after_durable`]. At the
//! end of the input the router turns the staged writes into one [`super::Output::Persist`]
//! numbered by a sequence number; the driver commits batches in order, several per sync (group
//! commit), and reports the highest durable number back through
//! [`super::Node::handle_durable`]; the journal then releases what waited for it, in order. The
//! journal never performs I/O and never releases anything early.

use std::collections::BTreeMap;

use crate::storage::WriteBatch;

/// See the module documentation. `E` is what waits for durability.
#[derive(Debug)]
pub(crate) struct Journal<E> {
    /// Number of the batch being staged (the first is 1).
    staging: u64,
    /// Highest number reported durable.
    durable: u64,
    batch: WriteBatch,
    /// What waits, by the number it waits for (in the order it was registered within one).
    waiting: BTreeMap<u64, Vec<E>>,
    waiting_len: usize,
}

impl<E> Journal<E> {
    pub(crate) fn new() -> Self {
        Journal {
            staging: 1,
            durable: 0,
            batch: WriteBatch::new(),
            waiting: BTreeMap::new(),
            waiting_len: 0,
        }
    }

    /// The batch being staged, to add writes to; they become durable with number
    /// [`Journal::staging_seq`].
    pub(crate) fn batch(&mut self) -> &mut WriteBatch {
        &mut self.batch
    }

    /// The number the writes staged now will be durable under.
    pub(crate) fn staging_seq(&self) -> u64 {
        self.staging
    }

    /// The highest number known durable.
    pub(crate) fn durable_seq(&self) -> u64 {
        self.durable
    }

    /// Runs `event` once everything staged up to `seq` is durable: at once (returned) if it
    /// already is.
    pub(crate) fn after_durable(&mut self, seq: u64, event: E) -> Option<E> {
        if seq <= self.durable {
            return Some(event);
        }
        // Numbers need not arrive in order (an unchanged key waits for the batch it was last
        // staged in, which may be older than another wait).
        self.waiting.entry(seq).or_default().push(event);
        self.waiting_len += 1;
        None
    }

    /// Takes the staged batch, if any, with its number; later writes get the next number.
    pub(crate) fn take_batch(&mut self) -> Option<(u64, WriteBatch)> {
        if self.batch.is_empty() {
            return None;
        }
        let seq = self.staging;
        self.staging += 1;
        Some((seq, std::mem::take(&mut self.batch)))
    }

    /// Everything up to `seq` is durable: the events that waited for it, in order. Numbers the
    /// journal never handed out are ignored.
    pub(crate) fn durable(&mut self, seq: u64) -> Vec<E> {
        let seq = seq.min(self.staging.saturating_sub(1));
        if seq <= self.durable {
            return Vec::new();
        }
        self.durable = seq;
        let later = self.waiting.split_off(&(seq + 1));
        let ready = std::mem::replace(&mut self.waiting, later);
        let out: Vec<E> = ready.into_values().flatten().collect();
        self.waiting_len -= out.len();
        out
    }

    /// Events waiting for durability.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Space;

    #[test]
    fn events_wait_for_their_batch_and_are_released_in_order() {
        let mut j: Journal<&str> = Journal::new();
        assert!(j.take_batch().is_none(), "nothing staged");
        j.batch().put(Space::Data, b"a".to_vec(), b"1".to_vec());
        let s1 = j.staging_seq();
        assert_eq!(j.after_durable(s1, "ack a"), None);
        assert_eq!(j.take_batch().map(|(s, b)| (s, b.len())), Some((1, 1)));
        j.batch().put(Space::Data, b"b".to_vec(), b"2".to_vec());
        let s2 = j.staging_seq();
        assert_eq!(j.after_durable(s2, "ack b"), None);
        assert_eq!(j.take_batch().map(|(s, _)| s), Some(2));
        // A number never handed out does not release anything beyond what exists.
        assert_eq!(j.durable(1), vec!["ack a"]);
        assert_eq!(j.durable(1), Vec::<&str>::new());
        assert_eq!(j.durable(99), vec!["ack b"]);
        assert_eq!(j.durable_seq(), 2);
        // Already durable: released at once.
        assert_eq!(j.after_durable(2, "late"), Some("late"));
        assert_eq!(j.waiting(), 0);
        // Waits registered out of order are released by their own numbers, in number order.
        for n in 3..=4 {
            j.batch().put(Space::Data, vec![n as u8], vec![]);
            j.take_batch();
        }
        assert_eq!(j.after_durable(4, "four"), None);
        assert_eq!(j.after_durable(3, "three"), None);
        assert_eq!(j.waiting(), 2);
        assert_eq!(j.durable(3), vec!["three"]);
        assert_eq!(j.durable(4), vec!["four"]);
    }
}
