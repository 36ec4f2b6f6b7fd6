//! Command-line value parsing: durations (`1h`, `10m`, `90s`, `1m30s`, `250ms`), seed ranges
//! (`0..200`, `5..=9`) and fault lists (`partition,loss,crash,join,leave,pause`).
//!
//! Every parser returns a [`ArgError`] that says what was wrong and what is accepted; none
//! panics on any input. Formatting ([`format_duration`], [`FaultSet`]'s `Display`) is the exact
//! inverse, so a replay command printed by the simulator parses back to the same run.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Why a command-line value was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgError {
    /// Not a duration.
    #[error("invalid duration {input:?}: {reason} (examples: 90s, 10m, 1h, 1m30s, 250ms)")]
    Duration {
        /// The rejected text (truncated).
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Not a seed range.
    #[error("invalid seed range {input:?}: {reason} (examples: 0..200, 7..=7)")]
    SeedRange {
        /// The rejected text (truncated).
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Not a fault kind.
    #[error(
        "unknown fault kind {input:?}; known kinds: partition, loss, crash, join, leave, pause, all, none"
    )]
    Fault {
        /// The rejected text (truncated).
        input: String,
    },
}

fn shown(input: &str) -> String {
    input.chars().take(40).collect()
}

/// Longest accepted duration: 1000 days, far beyond any useful run, small enough that
/// simulated time never overflows.
const DURATION_MAX: Duration = Duration::from_secs(1000 * 24 * 3600);

/// Parses a duration: a bare integer means seconds; anything else is read by `humantime`
/// (`1h30m`, `90s`, `250ms`, `1m 30s`). At most [`DURATION_MAX`], in whole milliseconds.
/// Text humantime could overflow on (over 40 characters, or a number of more than 11 digits)
/// is refused before it sees it.
pub fn parse_duration(input: &str) -> Result<Duration, ArgError> {
    let err = |reason: String| ArgError::Duration {
        input: shown(input),
        reason,
    };
    let text = input.trim();
    let longest_number = text
        .split(|c: char| !c.is_ascii_digit())
        .map(str::len)
        .max()
        .unwrap_or(0);
    if text.len() > 40 || longest_number > 11 {
        return Err(err("number too large".into()));
    }
    let d = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        Duration::from_secs(text.parse().map_err(|_| err("number too large".into()))?)
    } else {
        humantime::parse_duration(text).map_err(|e| err(e.to_string()))?
    };
    if d > DURATION_MAX {
        return Err(err("longer than 1000 days".into()));
    }
    if d.subsec_nanos() % 1_000_000 != 0 {
        return Err(err("finer than a millisecond".into()));
    }
    Ok(d)
}

/// Formats a duration the way [`parse_duration`] reads it back (`1h`, `5m`, `90s`, `1m30s`,
/// `1500ms`). Sub-millisecond parts are dropped.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let mut secs = ms / 1000;
    let mut out = String::new();
    for (unit, size) in [("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

/// A half-open range of seeds to sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedRange {
    /// First seed.
    pub start: u64,
    /// One past the last seed.
    pub end: u64,
}

impl SeedRange {
    /// Number of seeds in the range.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the range holds no seed (never true for a parsed range).
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

impl FromStr for SeedRange {
    type Err = ArgError;

    /// `A..B` (B excluded) or `A..=B` (B included); the range must not be empty.
    fn from_str(input: &str) -> Result<Self, ArgError> {
        let err = |reason| ArgError::SeedRange {
            input: shown(input),
            reason,
        };
        let (a, b, inclusive) = if let Some((a, b)) = input.split_once("..=") {
            (a, b, true)
        } else if let Some((a, b)) = input.split_once("..") {
            (a, b, false)
        } else {
            return Err(err("expected A..B or A..=B"));
        };
        let start: u64 = a.trim().parse().map_err(|_| err("start is not a number"))?;
        let last: u64 = b.trim().parse().map_err(|_| err("end is not a number"))?;
        let end = if inclusive {
            last.checked_add(1).ok_or_else(|| err("end too large"))?
        } else {
            last
        };
        if end <= start {
            return Err(err("the range is empty"));
        }
        Ok(SeedRange { start, end })
    }
}

/// A kind of fault the simulation may inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// Network partitions: symmetric split, isolated node, one-way, bridge.
    Partition,
    /// Degraded network periods: loss bursts with extra latency.
    Loss,
    /// A node crashes (losing unsynced writes), and usually restarts later.
    Crash,
    /// A new node joins the cluster.
    Join,
    /// A member leaves the cluster for good.
    Leave,
    /// A member is paused (as by `SIGSTOP`), removed by an operator while paused, and resumed
    /// with its stale view.
    Pause,
}

impl FaultKind {
    /// Every kind, in canonical order.
    pub const ALL: [FaultKind; 6] = [
        FaultKind::Partition,
        FaultKind::Loss,
        FaultKind::Crash,
        FaultKind::Join,
        FaultKind::Leave,
        FaultKind::Pause,
    ];

    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Partition => "partition",
            FaultKind::Loss => "loss",
            FaultKind::Crash => "crash",
            FaultKind::Join => "join",
            FaultKind::Leave => "leave",
            FaultKind::Pause => "pause",
        }
    }
}

/// The set of fault kinds enabled for a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultSet(BTreeSet<FaultKind>);

impl FaultSet {
    /// Every fault kind.
    pub fn all() -> Self {
        FaultSet(FaultKind::ALL.into_iter().collect())
    }

    /// No faults at all: a clean network and no membership changes after bootstrap.
    pub fn none() -> Self {
        FaultSet(BTreeSet::new())
    }

    /// Whether `kind` is enabled.
    pub fn contains(&self, kind: FaultKind) -> bool {
        self.0.contains(&kind)
    }
}

impl Default for FaultSet {
    fn default() -> Self {
        FaultSet::all()
    }
}

impl FromStr for FaultSet {
    type Err = ArgError;

    /// A comma-separated list of kinds; `all` and `none` are accepted alone or in a list.
    fn from_str(input: &str) -> Result<Self, ArgError> {
        let mut set = BTreeSet::new();
        for part in input.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "all" => set.extend(FaultKind::ALL),
                "none" => {}
                _ => {
                    let kind = FaultKind::ALL
                        .into_iter()
                        .find(|k| k.as_str() == part)
                        .ok_or_else(|| ArgError::Fault { input: shown(part) })?;
                    set.insert(kind);
                }
            }
        }
        Ok(FaultSet(set))
    }
}

impl fmt::Display for FaultSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let names: Vec<&str> = self.0.iter().map(|k| k.as_str()).collect();
        f.write_str(&names.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_format_round_trip() {
        let cases = [
            ("90s", 90_000),
            ("10m", 600_000),
            ("1h", 3_600_000),
            ("1h30m", 5_400_000),
            ("1m30s", 90_000),
            ("1m 30s", 90_000),
            ("10 m", 600_000),
            ("1d", 86_400_000),
            ("1.5h", 5_400_000),
            ("250ms", 250),
            ("45", 45_000),
        ];
        for (text, ms) in cases {
            let d = parse_duration(text).unwrap();
            assert_eq!(d, Duration::from_millis(ms), "{text}");
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
        assert_eq!(format_duration(Duration::from_secs(3690)), "1h1m30s");
    }

    #[test]
    fn bad_durations_are_errors() {
        for bad in [
            "",
            "s",
            "10x",
            "-3s",
            "1.5ms",
            "1500us",
            "99999999999999999999s",
            "18446744073709551615s500ms500ms",
            "+5",
            "25000h",
            "h1",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn seed_ranges() {
        assert_eq!("0..200".parse(), Ok(SeedRange { start: 0, end: 200 }));
        assert_eq!("7..=7".parse(), Ok(SeedRange { start: 7, end: 8 }));
        for bad in [
            "",
            "5",
            "5..5",
            "9..3",
            "a..b",
            "1..=18446744073709551615",
            "..4",
        ] {
            assert!(bad.parse::<SeedRange>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn fault_lists() {
        let s: FaultSet = "crash, join".parse().unwrap();
        assert!(s.contains(FaultKind::Crash) && !s.contains(FaultKind::Loss));
        assert_eq!(s.to_string(), "crash,join");
        assert_eq!("all".parse::<FaultSet>().unwrap(), FaultSet::all());
        assert_eq!("none".parse::<FaultSet>().unwrap().to_string(), "none");
        assert_eq!(
            FaultSet::all().to_string(),
            "partition,loss,crash,join,leave,pause"
        );
        assert!("crash,bogus".parse::<FaultSet>().is_err());
    }
}
