//! Rate-limited log lines for refusals a stranger can cause at will (bad frames, refused
//! connections, wrong tokens), so that a flood of bad input cannot flood the log.
//!
//! Each log statement that a stranger can trigger has its own [`RateLimit`] (the macros
//! [`crate::warn_limited!`] and [`crate::info_limited!`] declare one per call site): at most
//! [`LINES_PER_WINDOW`] lines per [`WINDOW`]; the lines beyond are suppressed and counted
//! (`chorus_log_lines_suppressed_total`, by the `category` the call site names), and the next
//! line let through says how many were suppressed before it (field `suppressed`).
//! The clock is the runtime's (`std::time::Instant`): this is runtime code, never the
//! deterministic core's.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Lines of one category written per [`WINDOW`] at most.
pub const LINES_PER_WINDOW: u32 = 10;

/// The window over which [`LINES_PER_WINDOW`] applies.
pub const WINDOW: Duration = Duration::from_secs(10);

/// The budget of the HTTP API's token refusals (`api::auth`).
pub static AUTH: RateLimit = RateLimit::new("auth");

/// A budget of log lines for one category of refusal.
#[derive(Debug)]
pub struct RateLimit {
    category: &'static str,
    state: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    started: Option<Instant>,
    lines: u32,
    suppressed: u64,
}

impl RateLimit {
    /// A budget for `category` (the label of its suppressed-lines counter).
    pub const fn new(category: &'static str) -> RateLimit {
        RateLimit {
            category,
            state: Mutex::new(Window {
                started: None,
                lines: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether a line may be written now: `Some(n)` with the lines suppressed since the last
    /// one written, or `None` (the line is suppressed and counted).
    pub fn check(&self) -> Option<u64> {
        let allowed = self.check_at(Instant::now());
        if allowed.is_none() {
            crate::api::metrics::log_line_suppressed(self.category);
        }
        allowed
    }

    fn check_at(&self, now: Instant) -> Option<u64> {
        let mut w = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if w.started
            .is_none_or(|s| now.saturating_duration_since(s) >= WINDOW)
        {
            w.started = Some(now);
            w.lines = 0;
        }
        if w.lines < LINES_PER_WINDOW {
            w.lines += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed += 1;
            None
        }
    }
}

/// `tracing::warn!` through a [`RateLimit`] of its own:
/// `warn_limited!("category", field = value, "message")`. A line that is let through carries
/// `suppressed`, the lines of this call site suppressed before it.
#[macro_export]
macro_rules! warn_limited {
    ($category:literal, $($rest:tt)+) => {{
        static LIMIT: $crate::runtime::ratelog::RateLimit =
            $crate::runtime::ratelog::RateLimit::new($category);
        if let Some(suppressed) = LIMIT.check() {
            ::tracing::warn!(suppressed, $($rest)+);
        }
    }};
}

/// `tracing::info!` through a [`RateLimit`] of its own, like [`crate::warn_limited!`].
#[macro_export]
macro_rules! info_limited {
    ($category:literal, $($rest:tt)+) => {{
        static LIMIT: $crate::runtime::ratelog::RateLimit =
            $crate::runtime::ratelog::RateLimit::new($category);
        if let Some(suppressed) = LIMIT.check() {
            ::tracing::info!(suppressed, $($rest)+);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_cut_to_the_budget_and_the_next_line_counts_what_was_dropped() {
        let limit = RateLimit::new("test");
        let t0 = Instant::now();
        let allowed: Vec<Option<u64>> = (0..2000).map(|_| limit.check_at(t0)).collect();
        let written = allowed.iter().filter(|a| a.is_some()).count();
        assert_eq!(written, LINES_PER_WINDOW as usize);
        assert!(allowed[..LINES_PER_WINDOW as usize]
            .iter()
            .all(|a| *a == Some(0)));
        // Still inside the window: suppressed.
        assert_eq!(limit.check_at(t0 + WINDOW / 2), None);
        // The next window: written, with the count of the lines dropped before it.
        let dropped = 2000 - LINES_PER_WINDOW as u64 + 1;
        assert_eq!(limit.check_at(t0 + WINDOW), Some(dropped));
        assert_eq!(limit.check_at(t0 + WINDOW), Some(0));
    }
}
