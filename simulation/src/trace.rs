//! The event trace: a running BLAKE3 hash over every event of a run, optionally printed.
//!
//! Every delivered or dropped packet and message, every timer firing, every process start, crash
//! and stop, and every fault and client operation is fed to the hash as a length-prefixed binary
//! record: time (nanoseconds), kind, endpoints (node slots) and bytes. Two runs have the same
//! `trace-hash` only if they did the same things at the same simulated instants, which is what
//! the determinism tests compare. With printing on, each record is also written to stdout as
//! one line as it happens. This module decides nothing; it only records.

use std::fmt;
use std::io::Write;
use std::time::Duration;

/// What a trace record describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A SWIM datagram reached its destination.
    GossipDelivered,
    /// A SWIM datagram was lost (the reason is in the record's text).
    GossipDropped,
    /// A peer message reached its destination.
    MessageDelivered,
    /// A peer message could not be delivered (the reason is in the record's text).
    MessageDropped,
    /// A node's timer fired.
    Timer,
    /// A process started, crashed, left or stopped.
    Process,
    /// A fault or a client operation (the description is in the record's text).
    Operation,
}

impl Kind {
    fn tag(self) -> u8 {
        match self {
            Kind::GossipDelivered => 1,
            Kind::GossipDropped => 2,
            Kind::MessageDelivered => 3,
            Kind::MessageDropped => 4,
            Kind::Timer => 5,
            Kind::Process => 6,
            Kind::Operation => 7,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::GossipDelivered => "gossip",
            Kind::GossipDropped => "gossip-drop",
            Kind::MessageDelivered => "message",
            Kind::MessageDropped => "message-drop",
            Kind::Timer => "timer",
            Kind::Process => "process",
            Kind::Operation => "op",
        }
    }
}

/// An endpoint of a trace record: a node slot, or nothing (faults, operations).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Node slot `i` (shown as `n<i>`).
    Node(usize),
    /// No node (e.g. an address that belongs to no node, or the simulator itself).
    None,
}

impl End {
    fn code(self) -> u64 {
        match self {
            End::Node(i) => i as u64,
            End::None => u64::MAX,
        }
    }
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Node(i) => write!(f, "n{i}"),
            End::None => f.write_str("-"),
        }
    }
}

/// The running trace of one simulation.
pub struct Trace {
    hasher: blake3::Hasher,
    print: bool,
    records: u64,
}

impl Trace {
    /// An empty trace; with `print`, every record is also written to stdout.
    pub fn new(print: bool) -> Self {
        Trace {
            hasher: blake3::Hasher::new(),
            print,
            records: 0,
        }
    }

    /// Records an event carrying raw bytes (packets, messages); `note` says why a drop happened
    /// and is hashed too.
    pub fn bytes(
        &mut self,
        at: Duration,
        kind: Kind,
        from: End,
        to: End,
        bytes: &[u8],
        note: &str,
    ) {
        self.header(at, kind, from, to);
        self.hasher.update(&(bytes.len() as u64).to_le_bytes());
        self.hasher.update(bytes);
        self.hasher.update(&(note.len() as u64).to_le_bytes());
        self.hasher.update(note.as_bytes());
        if self.print {
            let sep = if note.is_empty() { "" } else { " " };
            self.print_line(format_args!(
                "{} {:<12} {from} -> {to} {} B{sep}{note}",
                stamp(at),
                kind.label(),
                bytes.len()
            ));
        }
    }

    /// Records an event described by text (timers, processes, faults, operations).
    pub fn text(&mut self, at: Duration, kind: Kind, from: End, to: End, text: fmt::Arguments<'_>) {
        self.header(at, kind, from, to);
        // Length-prefix the text without allocating: hash it through a counting writer, then the
        // length.
        let mut w = CountingHasher {
            hasher: &mut self.hasher,
            len: 0,
        };
        let _ = w.write_fmt(text);
        let len = w.len;
        self.hasher.update(&len.to_le_bytes());
        if self.print {
            self.print_line(format_args!(
                "{} {:<12} {from} -> {to} {text}",
                stamp(at),
                kind.label()
            ));
        }
    }

    /// Prints one line; once stdout is closed (`chorus-sim run --trace | head`), printing stops
    /// quietly and the run goes on (the trace hash does not depend on printing).
    fn print_line(&mut self, line: fmt::Arguments<'_>) {
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{line}").is_err() {
            self.print = false;
        }
    }

    fn header(&mut self, at: Duration, kind: Kind, from: End, to: End) {
        self.records += 1;
        let mut head = [0u8; 33];
        head[..16].copy_from_slice(&at.as_nanos().to_le_bytes());
        head[16] = kind.tag();
        head[17..25].copy_from_slice(&from.code().to_le_bytes());
        head[25..33].copy_from_slice(&to.code().to_le_bytes());
        self.hasher.update(&head);
    }

    /// How many records were traced so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The hash of everything traced so far, as 64 hex digits.
    pub fn hash_hex(&self) -> String {
        self.hasher.finalize().to_hex().to_string()
    }
}

struct CountingHasher<'a> {
    hasher: &'a mut blake3::Hasher,
    len: u64,
}

impl Write for CountingHasher<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.hasher.update(buf);
        self.len += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `[  12.345678s]`: simulated time with microsecond resolution.
pub fn stamp(at: Duration) -> String {
    format!("[{:>11.6}s]", at.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_records_same_hash_and_every_field_counts() {
        let run = |to: usize, bytes: &[u8], t: u64| {
            let mut tr = Trace::new(false);
            let at = Duration::from_millis(t);
            tr.bytes(
                at,
                Kind::GossipDelivered,
                End::Node(0),
                End::Node(to),
                bytes,
                "",
            );
            tr.text(
                at,
                Kind::Timer,
                End::Node(0),
                End::Node(0),
                format_args!("probe {}", 1),
            );
            tr.hash_hex()
        };
        assert_eq!(run(1, b"abc", 5), run(1, b"abc", 5));
        assert_ne!(run(1, b"abc", 5), run(2, b"abc", 5));
        assert_ne!(run(1, b"abc", 5), run(1, b"abd", 5));
        assert_ne!(run(1, b"abc", 5), run(1, b"abc", 6));
    }

    #[test]
    fn record_boundaries_are_unambiguous() {
        let mut a = Trace::new(false);
        a.text(
            Duration::ZERO,
            Kind::Operation,
            End::None,
            End::None,
            format_args!("ab"),
        );
        a.text(
            Duration::ZERO,
            Kind::Operation,
            End::None,
            End::None,
            format_args!("c"),
        );
        let mut b = Trace::new(false);
        b.text(
            Duration::ZERO,
            Kind::Operation,
            End::None,
            End::None,
            format_args!("a"),
        );
        b.text(
            Duration::ZERO,
            Kind::Operation,
            End::None,
            End::None,
            format_args!("bc"),
        );
        assert_ne!(a.hash_hex(), b.hash_hex());
    }
}
