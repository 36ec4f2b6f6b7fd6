//! The network nemesis: a client that cuts and degrades the network, one fault at a time per
//! kind, and heals everything when the fault phase ends.
//!
//! After the warm-up it acts at exponentially distributed intervals. With `partition` enabled
//! and no partition in effect, it may start one of the four partition shapes (symmetric split,
//! isolated node, one-way, bridge) over the machines that have not left, and heals it after a
//! random duration. With `loss` enabled and no degraded period in effect, it may degrade every
//! link (loss 5–60 %, extra latency up to a few hundred milliseconds) for a while. Each start
//! and end is an instantaneous operation of the client `nemesis` in the history.

use std::collections::BTreeSet;
use std::time::Duration;

use rand::RngExt;

use super::{pick, shuffle, Ctx, Wakeups, Workload};
use crate::args::{FaultKind, FaultSet};
use crate::cluster::ProcessState;
use crate::history::{OpKind, Outcome};
use crate::network::{Degradation, Partition};
use crate::rng;

/// Parameters of the nemesis.
#[derive(Debug, Clone)]
pub struct NemesisConfig {
    /// Which of `partition` and `loss` to inject.
    pub faults: FaultSet,
    /// No fault before this time.
    pub warmup: Duration,
    /// Mean time between two attempts to start a fault.
    pub interval_mean: Duration,
    /// A partition lasts this long (uniform).
    pub partition_duration: (Duration, Duration),
    /// A degraded period lasts this long (uniform).
    pub degrade_duration: (Duration, Duration),
    /// Highest loss probability of a degraded period.
    pub degrade_loss_max: f64,
    /// Highest mean extra latency of a degraded period.
    pub degrade_latency_max: Duration,
}

impl NemesisConfig {
    /// Defaults with the given faults.
    pub fn new(faults: FaultSet) -> Self {
        NemesisConfig {
            faults,
            warmup: Duration::from_secs(15),
            interval_mean: Duration::from_secs(20),
            partition_duration: (Duration::from_secs(3), Duration::from_secs(45)),
            degrade_duration: (Duration::from_secs(2), Duration::from_secs(25)),
            degrade_loss_max: 0.6,
            degrade_latency_max: Duration::from_millis(300),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Pending {
    Next,
    Heal,
    Restore,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Nemesis {
    config: NemesisConfig,
    wakeups: Wakeups<Pending>,
    quiesced: bool,
}

impl Nemesis {
    /// A nemesis with `config`.
    pub fn new(config: NemesisConfig) -> Self {
        Nemesis {
            config,
            wakeups: Wakeups::default(),
            quiesced: false,
        }
    }

    fn schedule(&mut self, cx: &mut Ctx<'_>, at: Duration, what: Pending) {
        self.wakeups.schedule(cx, at, what);
    }

    fn next(&mut self, cx: &mut Ctx<'_>) {
        let mut kinds = Vec::new();
        let net = cx.cluster().network();
        if self.config.faults.contains(FaultKind::Partition) && net.current_partition().is_none() {
            kinds.push(FaultKind::Partition);
        }
        if self.config.faults.contains(FaultKind::Loss) && net.current_degradation().is_none() {
            kinds.push(FaultKind::Loss);
        }
        match pick(cx.rng(), &kinds) {
            Some(FaultKind::Partition) => self.partition(cx),
            Some(FaultKind::Loss) => self.degrade(cx),
            _ => {}
        }
        let gap =
            rng::exponential(cx.rng(), self.config.interval_mean, 4.0).max(Duration::from_secs(1));
        let at = cx.now() + gap;
        self.schedule(cx, at, Pending::Next);
    }

    fn partition(&mut self, cx: &mut Ctx<'_>) {
        let mut nodes: Vec<usize> = (0..cx.cluster().len())
            .filter(|&i| {
                !matches!(
                    cx.cluster().state(i),
                    ProcessState::Left | ProcessState::Leaving | ProcessState::NotStarted
                )
            })
            .collect();
        let Some(p) = choose_partition(cx, &mut nodes) else {
            return;
        };
        cx.instant(OpKind::Partition(p.to_string()), Outcome::Ok);
        cx.cluster_mut().network_mut().partition(p);
        let (lo, hi) = self.config.partition_duration;
        let at = cx.now() + rng::uniform(cx.rng(), lo, hi);
        self.schedule(cx, at, Pending::Heal);
    }

    fn degrade(&mut self, cx: &mut Ctx<'_>) {
        let loss = cx
            .rng()
            .random_range(0.05..=self.config.degrade_loss_max.max(0.05));
        let latency_max = self.config.degrade_latency_max;
        let extra = rng::uniform(cx.rng(), Duration::ZERO, latency_max);
        let d = Degradation {
            loss,
            extra_latency_mean: extra,
        };
        cx.instant(OpKind::Degrade(d.to_string()), Outcome::Ok);
        cx.cluster_mut().network_mut().degrade(d);
        let (lo, hi) = self.config.degrade_duration;
        let at = cx.now() + rng::uniform(cx.rng(), lo, hi);
        self.schedule(cx, at, Pending::Restore);
    }

    fn heal(cx: &mut Ctx<'_>) {
        if cx.cluster_mut().network_mut().heal_partition() {
            cx.instant(OpKind::Heal, Outcome::Ok);
        }
    }

    fn restore(cx: &mut Ctx<'_>) {
        if cx.cluster_mut().network_mut().restore() {
            cx.instant(OpKind::Restore, Outcome::Ok);
        }
    }
}

/// One of the partition shapes that fits `nodes` (shuffled in place), or `None` if fewer than
/// two machines are in play.
fn choose_partition(cx: &mut Ctx<'_>, nodes: &mut [usize]) -> Option<Partition> {
    let k = nodes.len();
    if k < 2 {
        return None;
    }
    shuffle(cx.rng(), nodes);
    let shapes: &[u8] = if k >= 3 { &[0, 1, 2, 3] } else { &[0, 1, 2] };
    let shape = pick(cx.rng(), shapes)?;
    Some(match shape {
        0 => {
            let cut = cx.rng().random_range(1..k);
            Partition::Split {
                side: nodes[..cut].iter().copied().collect(),
            }
        }
        1 => Partition::Isolate { node: nodes[0] },
        2 => {
            let muted = cx.rng().random_range(1..=(k / 2).max(1));
            Partition::OneWay {
                muted: nodes[..muted].iter().copied().collect(),
            }
        }
        _ => {
            let bridge = nodes[0];
            let cut = cx.rng().random_range(1..k - 1);
            let left: BTreeSet<usize> = nodes[1..=cut].iter().copied().collect();
            Partition::Bridge { left, bridge }
        }
    })
}

impl Workload for Nemesis {
    fn name(&self) -> &'static str {
        "nemesis"
    }

    fn start(&mut self, cx: &mut Ctx<'_>) {
        let at = self.config.warmup;
        self.schedule(cx, at, Pending::Next);
    }

    fn wake(&mut self, token: u64, cx: &mut Ctx<'_>) {
        let Some(what) = self.wakeups.take(token) else {
            return;
        };
        if self.quiesced {
            return;
        }
        match what {
            Pending::Next => self.next(cx),
            Pending::Heal => Self::heal(cx),
            Pending::Restore => Self::restore(cx),
        }
    }

    fn quiesce(&mut self, cx: &mut Ctx<'_>) {
        self.quiesced = true;
        Self::heal(cx);
        Self::restore(cx);
    }
}
