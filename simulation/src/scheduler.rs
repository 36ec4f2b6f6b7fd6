//! The discrete-event queue: what happens next, in a total order that never depends on the host.
//!
//! Events are kept in a `BTreeMap` keyed by (simulated time, sequence number). The sequence
//! number is assigned at insertion, so events due at the same instant run in the order they were
//! scheduled — the same rule the production runtime's timer map follows. The queue is bounded:
//! a runaway feedback loop is reported as an overflow instead of eating the host's memory.
//! This module knows nothing about nodes or networks; it is generic over the event type.

use std::collections::BTreeMap;
use std::time::Duration;

/// Default bound on pending events: far above what a healthy cluster of 64 nodes needs.
pub const EVENTS_PENDING_MAX: usize = 4_000_000;

/// A time-ordered event queue.
#[derive(Debug)]
pub struct Scheduler<E> {
    queue: BTreeMap<(Duration, u64), E>,
    seq: u64,
    pending_max: usize,
    overflowed: bool,
}

impl<E> Scheduler<E> {
    /// An empty queue holding at most `pending_max` events.
    pub fn new(pending_max: usize) -> Self {
        Scheduler {
            queue: BTreeMap::new(),
            seq: 0,
            pending_max,
            overflowed: false,
        }
    }

    /// Schedules `event` at `at`. When the queue is full the event is discarded and the queue
    /// remembers that it overflowed (see [`Scheduler::overflowed`]); the run is then invalid.
    pub fn schedule(&mut self, at: Duration, event: E) {
        if self.queue.len() >= self.pending_max {
            self.overflowed = true;
            return;
        }
        self.seq += 1;
        self.queue.insert((at, self.seq), event);
    }

    /// Removes and returns the earliest event due at or before `until`.
    pub fn pop_due(&mut self, until: Duration) -> Option<(Duration, E)> {
        let entry = self.queue.first_entry()?;
        if entry.key().0 > until {
            return None;
        }
        let ((at, _), event) = entry.remove_entry();
        Some((at, event))
    }

    /// When the earliest pending event is due.
    pub fn next_at(&self) -> Option<Duration> {
        self.queue.keys().next().map(|&(at, _)| at)
    }

    /// Number of pending events.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether no event is pending.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Whether an event was ever discarded because the queue was full.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_out_by_time_then_insertion_order() {
        let mut s = Scheduler::new(10);
        let t = Duration::from_millis;
        s.schedule(t(5), "c");
        s.schedule(t(1), "a");
        s.schedule(t(5), "d");
        s.schedule(t(3), "b");
        assert_eq!(s.next_at(), Some(t(1)));
        let mut out = Vec::new();
        while let Some((at, e)) = s.pop_due(t(5)) {
            out.push((at.as_millis(), e));
        }
        assert_eq!(out, vec![(1, "a"), (3, "b"), (5, "c"), (5, "d")]);
        assert!(s.is_empty());
    }

    #[test]
    fn pop_due_respects_the_horizon_and_the_bound_is_reported() {
        let mut s = Scheduler::new(2);
        s.schedule(Duration::from_secs(2), 1);
        assert_eq!(s.pop_due(Duration::from_secs(1)), None);
        s.schedule(Duration::from_secs(3), 2);
        assert!(!s.overflowed());
        s.schedule(Duration::from_secs(4), 3);
        assert!(s.overflowed());
        assert_eq!(s.len(), 2);
    }
}
