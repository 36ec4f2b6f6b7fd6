//! The core's log lines, stamped with simulated time and node, for `run --log LEVEL`.
//!
//! The node core logs through `tracing` (joins, members up and down, rejoins, rejected
//! packets; foca adds its protocol decisions at `debug` and `trace`). The production runtime
//! wraps each node in a span; here the cluster instead records which node is handling an input,
//! and at what simulated time, in a thread-local that [`install`]'s subscriber reads when it
//! prints. Logging is off unless installed and never feeds the trace, so it cannot change a
//! run's result. This module owns only that thread-local and the subscriber.

use std::cell::Cell;
use std::fmt::{self, Write as _};
use std::io::Write;
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

use crate::trace::stamp;

thread_local! {
    static CURRENT: Cell<Option<(usize, Duration)>> = const { Cell::new(None) };
}

/// Marks node `node` as handling an input at `now` until the guard drops.
pub fn enter(node: usize, now: Duration) -> Guard {
    CURRENT.with(|c| c.set(Some((node, now))));
    Guard
}

/// Clears the current node when dropped.
pub struct Guard;

impl Drop for Guard {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(None));
    }
}

/// Installs a global subscriber printing core log lines at `level` or more severe to stdout.
/// Returns false if a subscriber was already installed.
pub fn install(level: Level) -> bool {
    tracing::subscriber::set_global_default(Printer { level }).is_ok()
}

struct Printer {
    level: Level,
}

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value}");
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

impl Subscriber for Printer {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= self.level
    }

    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _span: &Id, _values: &Record<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        let (who, at) = match CURRENT.with(Cell::get) {
            Some((node, now)) => (format!("n{node}"), stamp(now)),
            None => ("-".to_owned(), "[          ?s]".to_owned()),
        };
        let meta = event.metadata();
        // A closed stdout (`| head`) drops the line instead of panicking.
        let _ = writeln!(
            std::io::stdout().lock(),
            "{at} log {:<5}    {who} {}:{}",
            meta.level(),
            meta.target(),
            fields.0
        );
    }

    fn enter(&self, _span: &Id) {}

    fn exit(&self, _span: &Id) {}
}
