//! A per-node circuit breaker: after consecutive failures (or one failure that shows the node
//! is gone: it cannot be reached, or it did not answer within the request's own timeout) the
//! node is skipped for a cool-down; then one request at a time probes it (half-open); a success
//! closes the breaker, a failed probe opens it again for twice as long (up to a cap).
//!
//! The breaker reads no clock: callers pass `now`, so its rules are tested without waiting.

use std::time::{Duration, Instant};

/// The state of one node's breaker, as [`super::Client::nodes`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Requests go to the node.
    Closed,
    /// The node is skipped until its cool-down ends.
    Open,
    /// The cool-down ended: one probe request is allowed through.
    HalfOpen,
}

/// Settings of every node's breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker (a failure that shows the node is gone
    /// opens it at once).
    pub failures: u32,
    /// The first cool-down; each failed probe doubles it.
    pub cooldown: Duration,
    /// The longest cool-down.
    pub cooldown_max: Duration,
    /// A probe with no outcome after this long lets another probe through.
    pub probe_timeout: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: 3,
            cooldown: Duration::from_secs(1),
            cooldown_max: Duration::from_secs(30),
            probe_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probe_since: Instant },
}

/// One node's breaker.
#[derive(Clone, Debug)]
pub(crate) struct Breaker {
    state: State,
    cooldown: Duration,
}

impl Breaker {
    pub(crate) fn new(config: &BreakerConfig) -> Breaker {
        Breaker {
            state: State::Closed { failures: 0 },
            cooldown: config.cooldown,
        }
    }

    /// The state as seen at `now` (an open breaker whose cool-down is over shows half-open).
    pub(crate) fn state(&self, now: Instant) -> BreakerState {
        match self.state {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { until } if now < until => BreakerState::Open,
            State::Open { .. } | State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Whether a request may go to the node now; a request let through a half-open breaker is
    /// its probe.
    pub(crate) fn allow(&mut self, now: Instant, config: &BreakerConfig) -> bool {
        match self.state {
            State::Closed { .. } => true,
            State::Open { until } if now < until => false,
            State::Open { .. } => {
                self.state = State::HalfOpen { probe_since: now };
                true
            }
            State::HalfOpen { probe_since } => {
                if now.saturating_duration_since(probe_since) >= config.probe_timeout {
                    self.state = State::HalfOpen { probe_since: now };
                    true
                } else {
                    false
                }
            }
        }
    }

    /// The node answered.
    pub(crate) fn success(&mut self, config: &BreakerConfig) {
        self.state = State::Closed { failures: 0 };
        self.cooldown = config.cooldown;
    }

    /// The node failed a request; `gone` when the failure shows it unreachable.
    pub(crate) fn failure(&mut self, now: Instant, gone: bool, config: &BreakerConfig) {
        match self.state {
            State::Closed { failures } => {
                let failures = failures.saturating_add(1);
                if gone || failures >= config.failures.max(1) {
                    self.state = State::Open {
                        until: now + self.cooldown,
                    };
                } else {
                    self.state = State::Closed { failures };
                }
            }
            State::HalfOpen { .. } => {
                self.cooldown = (self.cooldown * 2).min(config.cooldown_max);
                self.state = State::Open {
                    until: now + self.cooldown,
                };
            }
            // Requests sent before it opened: no new information.
            State::Open { .. } => {}
        }
    }

    /// When an open breaker's cool-down ends (for choosing among all-open nodes).
    pub(crate) fn open_until(&self) -> Option<Instant> {
        match self.state {
            State::Open { until } => Some(until),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_failures_open_then_a_probe_closes() {
        let c = BreakerConfig::default();
        let t0 = Instant::now();
        let mut b = Breaker::new(&c);
        b.failure(t0, false, &c);
        b.failure(t0, false, &c);
        assert_eq!(b.state(t0), BreakerState::Closed);
        // A success in between resets the count.
        b.success(&c);
        b.failure(t0, false, &c);
        b.failure(t0, false, &c);
        assert!(b.allow(t0, &c));
        b.failure(t0, false, &c);
        assert_eq!(b.state(t0), BreakerState::Open);
        assert!(!b.allow(t0 + Duration::from_millis(999), &c));
        // Cool-down over: exactly one probe.
        let t1 = t0 + c.cooldown;
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        assert!(b.allow(t1, &c));
        assert!(!b.allow(t1, &c));
        b.success(&c);
        assert_eq!(b.state(t1), BreakerState::Closed);
        assert!(b.allow(t1, &c));
    }

    #[test]
    fn a_node_gone_opens_at_once_and_failed_probes_back_off() {
        let c = BreakerConfig::default();
        let t0 = Instant::now();
        let mut b = Breaker::new(&c);
        b.failure(t0, true, &c);
        assert_eq!(b.state(t0), BreakerState::Open);
        let t1 = t0 + Duration::from_secs(1);
        assert!(b.allow(t1, &c));
        b.failure(t1, true, &c);
        // Twice the cool-down now.
        assert!(!b.allow(t1 + Duration::from_millis(1999), &c));
        assert!(b.allow(t1 + Duration::from_secs(2), &c));
        // A probe that never reports lets another through after the probe timeout.
        let t2 = t1 + Duration::from_secs(2);
        assert!(!b.allow(t2 + Duration::from_secs(1), &c));
        assert!(b.allow(t2 + c.probe_timeout, &c));
        // The cool-down is capped.
        let mut t = t2 + c.probe_timeout;
        for _ in 0..20 {
            b.failure(t, true, &c);
            t += c.cooldown_max;
            assert!(b.allow(t, &c));
        }
    }
}
