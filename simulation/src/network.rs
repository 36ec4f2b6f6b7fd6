//! The simulated network: what happens to each datagram and message between two nodes.
//!
//! The model, after TigerBeetle's packet simulator:
//!
//! - **Latency** per directed link: a fixed minimum plus an exponential tail whose mean is the
//!   configured mean scaled by a per-link factor in [0.5, 2) derived from the seed, so some links
//!   are consistently slower than others. Reordering falls out of the random tail.
//! - **Datagrams** (SWIM gossip, QUIC datagrams in production) are unreliable: each is lost with
//!   the current loss probability and duplicated with a small probability (a duplicate takes its
//!   own independent latency).
//! - **Messages** (peer messages, one QUIC stream each in production) are reliable while the
//!   path works: a random loss only costs a retransmission timeout. They are never duplicated.
//!   They are lost when the path stays cut (partition, destination down) for longer than the
//!   stream timeout, or when an endpoint restarts underneath them (the connection dies).
//! - **Partitions** ([`Partition`]) cut directed links: a symmetric split, one isolated node, a
//!   one-way cut (the listed nodes hear everyone but nobody hears them), or a bridge (two sides
//!   that can both reach one shared node but not each other). A partition is judged when a
//!   packet *arrives*, so packets in flight when it starts are lost with it.
//! - **Degraded periods** raise the loss probability and add extra latency on every link.
//!
//! The network owns its random stream; it does not know about nodes beyond their slot numbers.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use crate::rng::{self, SimRng};

/// Static parameters of the network.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Smallest one-way latency of any packet.
    pub latency_min: Duration,
    /// Mean of the exponential tail added to `latency_min` (before the per-link factor).
    pub latency_mean: Duration,
    /// No latency tail draw exceeds this multiple of its mean.
    pub latency_cap_factor: f64,
    /// Probability that a datagram is lost outside degraded periods.
    pub loss: f64,
    /// Probability that a delivered datagram is delivered twice.
    pub duplicate: f64,
    /// How long a message sender waits before retransmitting a lost or undeliverable message.
    pub retransmit_after: Duration,
    /// How long a message keeps being retried before its stream gives up.
    pub stream_timeout: Duration,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            latency_min: Duration::from_micros(500),
            latency_mean: Duration::from_millis(2),
            latency_cap_factor: 25.0,
            loss: 0.01,
            duplicate: 0.005,
            retransmit_after: Duration::from_millis(200),
            stream_timeout: Duration::from_secs(10),
        }
    }
}

/// Which directed links are cut. Node slots not named in a partition (nodes that join while it
/// lasts) belong to its second side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Partition {
    /// Two sides that cannot hear each other: `side` and everyone else.
    Split {
        /// The first side.
        side: BTreeSet<usize>,
    },
    /// One node that can neither send nor receive.
    Isolate {
        /// The isolated node.
        node: usize,
    },
    /// The `muted` nodes hear everyone, but nobody outside hears them.
    OneWay {
        /// The nodes whose packets to the others are lost.
        muted: BTreeSet<usize>,
    },
    /// `left` and everyone else (except `bridge`) cannot hear each other; `bridge` hears and is
    /// heard by both sides.
    Bridge {
        /// One side.
        left: BTreeSet<usize>,
        /// The node both sides can reach.
        bridge: usize,
    },
}

impl Partition {
    /// Whether a packet from `from` to `to` is lost.
    pub fn blocks(&self, from: usize, to: usize) -> bool {
        if from == to {
            return false;
        }
        match self {
            Partition::Split { side } => side.contains(&from) != side.contains(&to),
            Partition::Isolate { node } => from == *node || to == *node,
            Partition::OneWay { muted } => muted.contains(&from) && !muted.contains(&to),
            Partition::Bridge { left, bridge } => {
                from != *bridge && to != *bridge && left.contains(&from) != left.contains(&to)
            }
        }
    }
}

fn names(set: &BTreeSet<usize>) -> String {
    let v: Vec<String> = set.iter().map(|i| format!("n{i}")).collect();
    format!("{{{}}}", v.join(","))
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Partition::Split { side } => write!(f, "split {} | rest", names(side)),
            Partition::Isolate { node } => write!(f, "isolate n{node}"),
            Partition::OneWay { muted } => write!(f, "one-way: nobody hears {}", names(muted)),
            Partition::Bridge { left, bridge } => {
                write!(f, "bridge {} | n{bridge} | rest", names(left))
            }
        }
    }
}

/// A period of bad network on every link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Degradation {
    /// Loss probability of datagrams (and of each message transmission) during the period.
    pub loss: f64,
    /// Mean of an extra exponential latency added to every packet.
    pub extra_latency_mean: Duration,
}

impl fmt::Display for Degradation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "loss {:.0}%, extra latency mean {} ms",
            self.loss * 100.0,
            self.extra_latency_mean.as_millis()
        )
    }
}

/// What becomes of a datagram handed to the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatagramFate {
    /// Lost on the way.
    Lost,
    /// Arrives after the first delay, and again after the second one if duplicated.
    Arrives(Duration, Option<Duration>),
}

/// The network's state: configuration, current faults and its random stream.
#[derive(Debug)]
pub struct Network {
    config: NetConfig,
    seed: u64,
    rng: SimRng,
    partition: Option<Partition>,
    degradation: Option<Degradation>,
}

impl Network {
    /// A healthy network for the run with `seed`.
    pub fn new(config: NetConfig, seed: u64) -> Self {
        Network {
            config,
            seed,
            rng: rng::stream(seed, "network"),
            partition: None,
            degradation: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &NetConfig {
        &self.config
    }

    /// Starts (or replaces) a partition.
    pub fn partition(&mut self, p: Partition) {
        self.partition = Some(p);
    }

    /// Starts (or replaces) a degraded period.
    pub fn degrade(&mut self, d: Degradation) {
        self.degradation = Some(d);
    }

    /// Ends the partition, if any; returns whether there was one.
    pub fn heal_partition(&mut self) -> bool {
        self.partition.take().is_some()
    }

    /// Ends the degraded period, if any; returns whether there was one.
    pub fn restore(&mut self) -> bool {
        self.degradation.take().is_some()
    }

    /// The current partition.
    pub fn current_partition(&self) -> Option<&Partition> {
        self.partition.as_ref()
    }

    /// The current degraded period.
    pub fn current_degradation(&self) -> Option<Degradation> {
        self.degradation
    }

    /// Whether packets from `from` to `to` are currently cut.
    pub fn blocked(&self, from: usize, to: usize) -> bool {
        self.partition.as_ref().is_some_and(|p| p.blocks(from, to))
    }

    fn loss(&self) -> f64 {
        match self.degradation {
            Some(d) => d.loss.max(self.config.loss),
            None => self.config.loss,
        }
    }

    /// Per-link latency factor in [0.5, 2), fixed for the whole run.
    fn link_factor(&self, from: usize, to: usize) -> f64 {
        let x = rng::derive(self.seed, "link", ((from as u64) << 32) | to as u64);
        0.5 + 1.5 * ((x >> 11) as f64 / (1u64 << 53) as f64)
    }

    /// One packet's one-way latency on the link `from → to`.
    pub fn latency(&mut self, from: usize, to: usize) -> Duration {
        let mean = self.config.latency_mean.mul_f64(self.link_factor(from, to));
        let mut d = self.config.latency_min
            + rng::exponential(&mut self.rng, mean, self.config.latency_cap_factor);
        if let Some(deg) = self.degradation {
            if !deg.extra_latency_mean.is_zero() {
                d += rng::exponential(
                    &mut self.rng,
                    deg.extra_latency_mean,
                    self.config.latency_cap_factor,
                );
            }
        }
        d
    }

    /// Decides loss, delay and duplication of a datagram sent now from `from` to `to`.
    /// Partitions are judged on arrival, not here.
    pub fn datagram(&mut self, from: usize, to: usize) -> DatagramFate {
        let loss = self.loss();
        if rng::chance(&mut self.rng, loss) {
            return DatagramFate::Lost;
        }
        let first = self.latency(from, to);
        let second =
            rng::chance(&mut self.rng, self.config.duplicate).then(|| self.latency(from, to));
        DatagramFate::Arrives(first, second)
    }

    /// Delay of one message transmission from `from` to `to`: latency plus one retransmission
    /// timeout per random loss. `None` if the stream gives up (too many consecutive losses).
    pub fn message_delay(&mut self, from: usize, to: usize) -> Option<Duration> {
        let mut delay = Duration::ZERO;
        let loss = self.loss();
        while rng::chance(&mut self.rng, loss) {
            delay += self.config.retransmit_after;
            if delay >= self.config.stream_timeout {
                return None;
            }
        }
        Some(delay + self.latency(from, to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(xs: &[usize]) -> BTreeSet<usize> {
        xs.iter().copied().collect()
    }

    #[test]
    fn partitions_cut_the_right_links() {
        let split = Partition::Split { side: set(&[0, 1]) };
        assert!(split.blocks(0, 2) && split.blocks(2, 1));
        assert!(!split.blocks(0, 1) && !split.blocks(2, 3));
        // A node that joins later belongs to the second side.
        assert!(split.blocks(0, 9) && !split.blocks(2, 9));

        let iso = Partition::Isolate { node: 2 };
        assert!(iso.blocks(2, 0) && iso.blocks(0, 2) && !iso.blocks(0, 1));

        let one_way = Partition::OneWay { muted: set(&[1]) };
        assert!(one_way.blocks(1, 0), "nobody hears n1");
        assert!(!one_way.blocks(0, 1), "n1 hears everyone");

        let bridge = Partition::Bridge {
            left: set(&[0, 1]),
            bridge: 2,
        };
        assert!(bridge.blocks(0, 3) && bridge.blocks(4, 1));
        assert!(!bridge.blocks(0, 2) && !bridge.blocks(2, 4) && !bridge.blocks(3, 2));
        assert!(!bridge.blocks(0, 1) && !bridge.blocks(3, 4));
        for p in [split, iso, one_way, bridge] {
            for i in 0..5 {
                assert!(!p.blocks(i, i));
            }
        }
    }

    #[test]
    fn latency_has_the_minimum_and_loss_follows_degradation() {
        let mut net = Network::new(NetConfig::default(), 3);
        for _ in 0..1000 {
            assert!(net.latency(0, 1) >= Duration::from_micros(500));
        }
        net.degrade(Degradation {
            loss: 1.0,
            extra_latency_mean: Duration::ZERO,
        });
        assert_eq!(net.datagram(0, 1), DatagramFate::Lost);
        assert_eq!(
            net.message_delay(0, 1),
            None,
            "every retransmission is lost"
        );
        assert!(net.restore());
        let delivered = (0..1000)
            .filter(|_| matches!(net.datagram(0, 1), DatagramFate::Arrives(..)))
            .count();
        assert!(delivered > 950, "{delivered}");
    }

    #[test]
    fn links_differ_but_are_stable() {
        let net = Network::new(NetConfig::default(), 3);
        let f = net.link_factor(0, 1);
        assert_eq!(f, net.link_factor(0, 1));
        assert!((0.5..2.0).contains(&f));
        assert_ne!(f, net.link_factor(1, 0));
    }
}
