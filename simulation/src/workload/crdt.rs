//! The CRDT workload: clients that update counters and sets through random nodes, retrying
//! updates whose outcome they do not know with the same operation id, as a careful client of
//! a real cluster would.
//!
//! Keys: `g0`, `g1` (G-Counters, increments of 1), `p0` (a PN-Counter, ±1), `s0` (a 2P-Set) and
//! `o0` (an OR-Set; removes go with the context of the client's last read of it, or without),
//! and about one operation in [`SHARED_ONE_IN`] on a key the register clients write too
//! ([`super::SHARED_KEYS`]: a G-Counter, an OR-Set and a 2P-Set part beside a register, under
//! names that move on every [`super::SHARED_GENERATION`]).
//! Elements come from a small pool so adds and removes of one element meet. One update in about
//! 30 is of the wrong type for its key: it must be refused unless the key holds no live type,
//! and it adds an element (or makes an increment) no other update makes, so that the checkers
//! can tell whether it was stored.
//!
//! Updates use the node's default quorum, or `w=1`, or `w=3` (about one in five), or `w=3` with
//! `strict` (one in ten). An update that fails without a definite refusal (unavailable, timed
//! out, overloaded) is sent again, with its operation id and options, to another random node,
//! up to [`CrdtConfig::attempts`] attempts in all, backing off; retries go on after the heal,
//! and the [`crate::check::crdt::RetriesAcknowledged`] checker requires every update still
//! being retried then to be acknowledged once its replicas are up. At the instant each
//! generation of shared keys starts, the workload also creates them (racing the register
//! clients' blind writes there). Every attempt goes into the
//! history ([`CrdtRecord`]).
//!
//! With [`CrdtConfig::hot`] (the tiny op-log profile, [`crate::profile`]), further clients
//! increment one counter, `h0`, as fast as they can with a short timeout, retrying quickly
//! through other nodes: a key that takes updates faster than it may forget their ids.
//!
//! After the heal it stops updating and reads every key with `r=N` every few seconds; the
//! [`crate::check::crdt`] checkers judge the latest of these reads.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chorus::node::{
    ClientError, ClientOp, ClientReply, ClientRequest, Context, CrdtOp, ReadResult, RequestOptions,
};
use rand::RngExt;

use super::register::value_name;
use super::{next_generation, pick, shared_key, Ctx, Wakeups, Workload, SHARED_KEYS};
use crate::history::{CrdtRead, CrdtRecord, CrdtResult, OpId, OpKind, Outcome};
use crate::rng;
use crate::snapshot::ProcessState;

/// The keys and their types.
pub const KEYS: &[(&str, &str)] = &[
    ("g0", "gcounter"),
    ("g1", "gcounter"),
    ("p0", "pncounter"),
    ("s0", "2pset"),
    ("o0", "orset"),
];

/// The hot counter of [`CrdtConfig::hot`].
pub const HOT_KEY: &str = "h0";

/// One operation in this many goes to a key shared with the register clients.
pub const SHARED_ONE_IN: u32 = 5;

/// Elements the set operations draw from.
const ELEMENTS: &[&str] = &["a", "b", "c", "d", "e"];

/// Parameters of the CRDT workload.
#[derive(Debug, Clone)]
pub struct CrdtConfig {
    /// Concurrent clients.
    pub clients: usize,
    /// Pause between a client's operations (uniform).
    pub think: (Duration, Duration),
    /// No operation before this time (the cluster bootstraps).
    pub warmup: Duration,
    /// After the heal, how often every key is read with `r=N`.
    pub final_read_every: Duration,
    /// Replicas per key (for the final reads).
    pub n: usize,
    /// Most attempts of one operation id (the first and its retries).
    pub attempts: u32,
    /// Pause before a retry (uniform).
    pub retry_after: (Duration, Duration),
    /// Also update the keys the register clients write ([`SHARED_KEYS`]).
    pub shared: bool,
    /// Hot-counter clients, if any.
    pub hot: Option<HotCounter>,
}

impl Default for CrdtConfig {
    fn default() -> Self {
        CrdtConfig {
            clients: 3,
            think: (Duration::from_millis(20), Duration::from_millis(700)),
            warmup: Duration::from_secs(8),
            final_read_every: Duration::from_secs(3),
            n: 3,
            attempts: 40,
            retry_after: (Duration::from_millis(100), Duration::from_secs(1)),
            shared: true,
            hot: None,
        }
    }
}

/// Clients that increment [`HOT_KEY`] as fast as they can, in bursts.
#[derive(Debug, Clone, Copy)]
pub struct HotCounter {
    /// How many.
    pub clients: usize,
    /// Pause between increments in a burst (uniform).
    pub think: (Duration, Duration),
    /// How long a burst lasts.
    pub burst: Duration,
    /// How long the lull after it lasts.
    pub lull: Duration,
    /// Pause between increments in a lull (uniform).
    pub lull_think: (Duration, Duration),
    /// Each request's timeout: short, so retries come while the id is still remembered.
    pub timeout: Duration,
    /// Pause before a retry (uniform).
    pub retry_after: (Duration, Duration),
}

impl Default for HotCounter {
    fn default() -> Self {
        HotCounter {
            clients: 2,
            think: (Duration::from_millis(5), Duration::from_millis(40)),
            burst: Duration::from_secs(5),
            lull: Duration::from_secs(15),
            lull_think: (Duration::from_millis(500), Duration::from_millis(2000)),
            timeout: Duration::from_millis(1000),
            retry_after: (Duration::from_millis(20), Duration::from_millis(200)),
        }
    }
}

/// An update to send (again).
#[derive(Debug, Clone)]
struct Attempt {
    client: usize,
    key: String,
    op: CrdtOp,
    op_id: String,
    options: RequestOptions,
    /// This attempt's number (1: the first).
    attempt: u32,
    /// A creation of a shared key at the start of its generation (no client waits for it).
    racing: bool,
    /// The node the previous attempt went to.
    last_node: Option<usize>,
}

#[derive(Debug, Clone)]
enum Pending {
    Next(usize),
    Retry(Box<Attempt>),
    /// Create every shared key of the generation starting now.
    Race,
    FinalRound,
}

/// A request in flight.
#[derive(Debug)]
struct InFlight {
    client: Option<usize>,
    op: OpId,
    key: String,
    update: Option<Attempt>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Crdt {
    config: CrdtConfig,
    wakeups: Wakeups<Pending>,
    /// Each client's OR-Set contexts (per key) from its last read or update.
    contexts: Vec<BTreeMap<String, Context>>,
    next_op: Vec<u64>,
    in_flight: BTreeMap<u64, InFlight>,
    next_token: u64,
    quiesced: bool,
    /// Shared keys touched (read at the end).
    shared: BTreeSet<String>,
}

impl Crdt {
    /// A workload with `config`.
    pub fn new(config: CrdtConfig) -> Self {
        let clients = config.clients + config.hot.map_or(0, |h| h.clients);
        Crdt {
            contexts: vec![BTreeMap::new(); clients],
            next_op: vec![0; clients],
            config,
            wakeups: Wakeups::default(),
            in_flight: BTreeMap::new(),
            next_token: 0,
            quiesced: false,
            shared: BTreeSet::new(),
        }
    }

    /// Whether client `c` is a hot-counter client.
    fn is_hot(&self, c: usize) -> bool {
        c >= self.config.clients
    }

    /// Every key the clients updated or may update.
    fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = KEYS.iter().map(|(k, _)| (*k).to_owned()).collect();
        keys.extend(self.shared.iter().cloned());
        if self.config.hot.is_some() {
            keys.push(HOT_KEY.to_owned());
        }
        keys
    }

    fn serving(cx: &Ctx<'_>) -> Vec<usize> {
        (0..cx.cluster().len())
            .filter(|&i| cx.cluster().state(i) == ProcessState::Up)
            .collect()
    }

    fn think(&mut self, cx: &mut Ctx<'_>, client: usize) {
        let (lo, hi) = match self.config.hot {
            // Bursts and lulls: the key forgets ids early in a burst, and the lull shows
            // whether it counts each id once again once the burst's records are gone.
            Some(h) if self.is_hot(client) => {
                let period = h.burst + h.lull;
                let phase = Duration::from_millis(
                    (cx.now().as_millis() % period.as_millis().max(1)) as u64,
                );
                if phase < h.burst {
                    h.think
                } else {
                    h.lull_think
                }
            }
            _ => self.config.think,
        };
        let at = cx.now() + rng::uniform(cx.rng(), lo, hi);
        self.wakeups.schedule(cx, at, Pending::Next(client));
    }

    fn describe(op: &CrdtOp) -> String {
        match op {
            CrdtOp::GCounter { increment } => format!("+{increment}"),
            CrdtOp::PNCounter { increment } => format!("{increment:+}"),
            CrdtOp::TwoPSet { add, remove } | CrdtOp::ORSet { add, remove, .. } => {
                format!("add {add:?} remove {remove:?}")
            }
        }
    }

    fn send_update(&mut self, cx: &mut Ctx<'_>, node: usize, mut a: Attempt) {
        let mut what = format!("{} ({}", Self::describe(&a.op), a.op_id);
        if let Some(w) = a.options.w {
            what.push_str(&format!(", w={w}"));
        }
        if a.options.strict {
            what.push_str(", strict");
        }
        if a.attempt > 1 {
            what.push_str(&format!(", attempt {}", a.attempt));
        }
        what.push(')');
        let kind = OpKind::Update {
            key: a.key.clone(),
            what,
            node,
        };
        let id = cx.invoke(kind);
        let client = (!a.racing).then_some(a.client);
        cx.history_mut().record_crdt(CrdtRecord {
            op: id,
            key: a.key.clone(),
            update: Some((a.op.clone(), a.op_id.clone())),
            final_read: false,
            result: None,
            attempt: a.attempt,
            attempts_max: self.config.attempts,
            options: a.options,
        });
        self.next_token += 1;
        let token = self.next_token;
        let request = ClientRequest {
            key: a.key.clone().into_bytes(),
            op: ClientOp::Update {
                op: a.op.clone(),
                op_id: a.op_id.clone(),
            },
            options: a.options,
        };
        a.last_node = Some(node);
        self.in_flight.insert(
            token,
            InFlight {
                client,
                op: id,
                key: a.key.clone(),
                update: Some(a),
            },
        );
        cx.request(node, token, request);
    }

    fn send_read(
        &mut self,
        cx: &mut Ctx<'_>,
        client: Option<usize>,
        node: usize,
        key: &str,
        r: Option<usize>,
    ) {
        let final_read = client.is_none();
        let id = cx.invoke(OpKind::Read {
            key: key.to_owned(),
            node,
        });
        cx.history_mut()
            .record_crdt(CrdtRecord::new(id, key, None, final_read, None));
        self.next_token += 1;
        let token = self.next_token;
        self.in_flight.insert(
            token,
            InFlight {
                client,
                op: id,
                key: key.to_owned(),
                update: None,
            },
        );
        let request = ClientRequest {
            key: key.as_bytes().to_vec(),
            op: ClientOp::Get,
            options: RequestOptions {
                r,
                ..RequestOptions::default()
            },
        };
        cx.request(node, token, request);
    }

    fn next_op_id(&mut self, client: usize) -> String {
        self.next_op[client] += 1;
        let prefix = if self.is_hot(client) { "h" } else { "c" };
        format!("{prefix}{client}-{}", self.next_op[client])
    }

    fn next(&mut self, cx: &mut Ctx<'_>, client: usize) {
        if self.quiesced {
            return;
        }
        let serving = Self::serving(cx);
        let Some(node) = pick(cx.rng(), &serving) else {
            self.think(cx, client);
            return;
        };
        if let Some(hot) = self.config.hot.filter(|_| self.is_hot(client)) {
            let op_id = self.next_op_id(client);
            let a = Attempt {
                client,
                key: HOT_KEY.to_owned(),
                op: CrdtOp::GCounter { increment: 1 },
                op_id,
                options: RequestOptions {
                    timeout_ms: Some(u64::try_from(hot.timeout.as_millis()).unwrap_or(u64::MAX)),
                    ..RequestOptions::default()
                },
                attempt: 1,
                racing: false,
                last_node: None,
            };
            self.send_update(cx, node, a);
            return;
        }
        let (key, kind) = if self.config.shared && cx.rng().random_range(0..SHARED_ONE_IN) == 0 {
            let i = cx.rng().random_range(0..SHARED_KEYS.len());
            let (key, kind) = shared_key(i, cx.now());
            self.shared.insert(key.clone());
            (key, kind)
        } else {
            let (key, kind) = KEYS[cx.rng().random_range(0..KEYS.len())];
            (key.to_owned(), kind)
        };
        let key = key.as_str();
        let dice: u32 = cx.rng().random_range(0..100);
        if dice < 15 {
            self.send_read(cx, Some(client), node, key, None);
            return;
        }
        let op_id = self.next_op_id(client);
        let element = ELEMENTS[cx.rng().random_range(0..ELEMENTS.len())].to_owned();
        let adding = dice < 60;
        // Now and then an update of the wrong type: it must be refused and change nothing
        // (unless the key holds no live type yet). Its element is its own, so that the
        // checkers can tell whether it was stored.
        let wrong = dice >= 97;
        let (kind, element) = if wrong {
            let other = if kind.ends_with("counter") {
                "2pset"
            } else {
                "gcounter"
            };
            (other, format!("z-{op_id}"))
        } else {
            (kind, element)
        };
        let op = match kind {
            "gcounter" => CrdtOp::GCounter { increment: 1 },
            "pncounter" => CrdtOp::PNCounter {
                increment: if adding { 1 } else { -1 },
            },
            "2pset" if adding || wrong => CrdtOp::TwoPSet {
                add: vec![element],
                remove: vec![],
            },
            "2pset" => CrdtOp::TwoPSet {
                add: vec![],
                remove: vec![element],
            },
            _ if adding => CrdtOp::ORSet {
                add: vec![element],
                remove: vec![],
                context: None,
            },
            _ => CrdtOp::ORSet {
                add: vec![],
                remove: vec![element],
                context: if dice < 85 {
                    self.contexts[client].get(key).cloned()
                } else {
                    None
                },
            },
        };
        let mut options = RequestOptions::default();
        match cx.rng().random_range(0..20) {
            0..=11 => {}
            12..=14 => options.w = Some(self.config.n),
            15 | 16 => {
                options.w = Some(self.config.n);
                options.strict = true;
            }
            17 => options.strict = true,
            _ => options.w = Some(1),
        }
        let a = Attempt {
            client,
            key: key.to_owned(),
            op,
            op_id,
            options,
            attempt: 1,
            racing: false,
            last_node: None,
        };
        self.send_update(cx, node, a);
    }

    /// At the start of a generation of shared keys: an update of each, of its CRDT type,
    /// through random nodes, at the instant the register clients create them too (see
    /// [`SHARED_KEYS`]). The first client sends them (and retries them), without waiting.
    fn race(&mut self, cx: &mut Ctx<'_>) {
        if self.quiesced {
            return;
        }
        let now = cx.now();
        let generation = now.as_secs() / super::SHARED_GENERATION.as_secs();
        for i in 0..SHARED_KEYS.len() {
            let serving = Self::serving(cx);
            let Some(node) = pick(cx.rng(), &serving) else {
                break;
            };
            let (key, kind) = shared_key(i, now);
            self.shared.insert(key.clone());
            let op = match kind {
                "gcounter" => CrdtOp::GCounter { increment: 1 },
                "pncounter" => CrdtOp::PNCounter { increment: 1 },
                "2pset" => CrdtOp::TwoPSet {
                    add: vec!["a".into()],
                    remove: vec![],
                },
                _ => CrdtOp::ORSet {
                    add: vec!["a".into()],
                    remove: vec![],
                    context: None,
                },
            };
            let a = Attempt {
                client: 0,
                key,
                op,
                op_id: format!("race{generation}-{i}"),
                options: RequestOptions::default(),
                attempt: 1,
                racing: true,
                last_node: None,
            };
            self.send_update(cx, node, a);
        }
        let at = next_generation(now);
        self.wakeups.schedule(cx, at, Pending::Race);
    }

    fn final_round(&mut self, cx: &mut Ctx<'_>) {
        let serving = Self::serving(cx);
        for key in self.keys() {
            let key = key.as_str();
            let Some(node) = pick(cx.rng(), &serving) else {
                break;
            };
            let owners = cx.cluster().view(node).map_or(0, |v| {
                v.members
                    .iter()
                    .filter(|m| m.status.owns_partitions())
                    .count()
            });
            let r = self.config.n.min(owners).max(1);
            self.send_read(cx, None, node, key, Some(r));
        }
        let at = cx.now() + self.config.final_read_every;
        self.wakeups.schedule(cx, at, Pending::FinalRound);
    }

    /// The OR-Set context of a read: the key's, or its OR-Set part's when it is contested.
    fn orset_context(r: &ReadResult) -> Option<Context> {
        if r.parts.is_empty() {
            return (r.type_name.as_deref() == Some("orset"))
                .then(|| r.context.clone())
                .flatten();
        }
        r.parts
            .iter()
            .find(|p| p.type_name == "orset")
            .and_then(|p| p.context.clone())
    }
}

impl Workload for Crdt {
    fn name(&self) -> &'static str {
        "crdt"
    }

    fn start(&mut self, cx: &mut Ctx<'_>) {
        for c in 0..self.contexts.len() {
            let jitter = rng::uniform(cx.rng(), Duration::ZERO, Duration::from_secs(1));
            let at = self.config.warmup + jitter;
            self.wakeups.schedule(cx, at, Pending::Next(c));
        }
        if self.config.shared {
            let at = next_generation(self.config.warmup);
            self.wakeups.schedule(cx, at, Pending::Race);
        }
    }

    fn wake(&mut self, token: u64, cx: &mut Ctx<'_>) {
        match self.wakeups.take(token) {
            Some(Pending::Next(c)) => self.next(cx, c),
            Some(Pending::Retry(a)) => {
                let a = *a;
                // Retries go on after the heal too: a client wants its answer. Another node
                // than the last one, when there is one.
                let serving = Self::serving(cx);
                let others: Vec<usize> = serving
                    .iter()
                    .copied()
                    .filter(|&n| Some(n) != a.last_node)
                    .collect();
                let candidates = if others.is_empty() { &serving } else { &others };
                match pick(cx.rng(), candidates) {
                    Some(node) => self.send_update(cx, node, a),
                    None => {
                        let at = cx.now() + Duration::from_secs(1);
                        self.wakeups.schedule(cx, at, Pending::Retry(Box::new(a)));
                    }
                }
            }
            Some(Pending::Race) => self.race(cx),
            Some(Pending::FinalRound) => self.final_round(cx),
            None => {}
        }
    }

    fn quiesce(&mut self, cx: &mut Ctx<'_>) {
        self.quiesced = true;
        let at = cx.now() + Duration::from_secs(2);
        self.wakeups.schedule(cx, at, Pending::FinalRound);
    }

    fn reply(&mut self, token: u64, reply: ClientReply, cx: &mut Ctx<'_>) {
        let Some(f) = self.in_flight.remove(&token) else {
            return;
        };
        let mut retry = None;
        let outcome = match reply {
            ClientReply::Read(r) => {
                if let (Some(c), Some(ctx)) = (f.client, Self::orset_context(&r)) {
                    self.contexts[c].insert(f.key.clone(), ctx);
                }
                let read = CrdtRead::from_result(&r, value_name);
                cx.history_mut().crdt_result(f.op, CrdtResult::Read(read));
                Outcome::Ok
            }
            ClientReply::Updated(u) => {
                if let (Some(c), Some(ctx)) = (f.client, &u.context) {
                    if u.type_name == "orset" {
                        self.contexts[c].insert(f.key.clone(), ctx.clone());
                    }
                }
                cx.history_mut().crdt_result(
                    f.op,
                    CrdtResult::Updated {
                        notes: u.notes,
                        acked_by: u.acked_by,
                        replayed: u.replayed,
                    },
                );
                Outcome::Ok
            }
            ClientReply::Written(_) => Outcome::Failed("a register reply to a CRDT request".into()),
            ClientReply::Failed(e) => {
                let outcome = match &e {
                    ClientError::Unavailable {
                        indeterminate: true,
                        ..
                    } if f.update.is_some() => Outcome::Indeterminate(e.to_string()),
                    _ => Outcome::failed(&e),
                };
                // Anything but a refusal of the update itself may go differently next time
                // (and an earlier attempt may have been applied): send it again.
                let transient = matches!(
                    e,
                    ClientError::Unavailable { .. }
                        | ClientError::Overloaded
                        | ClientError::Internal(_)
                );
                if let Some(a) = f.update.as_ref().filter(|_| transient) {
                    if a.attempt < self.config.attempts {
                        let mut next = a.clone();
                        next.attempt += 1;
                        retry = Some(Pending::Retry(Box::new(next)));
                    }
                }
                outcome
            }
        };
        cx.complete(f.op, outcome);
        // (A racing creation has no client waiting: its retries go on, nobody thinks after.)
        match (retry, f.client) {
            (Some(p), _) => {
                let hot = f.update.as_ref().is_some_and(|a| self.is_hot(a.client));
                let (lo, hi) = match self.config.hot {
                    Some(h) if hot => h.retry_after,
                    _ => self.config.retry_after,
                };
                // Back off: twice as long every five attempts, up to eight times, so that the
                // attempts last through a long partition.
                let attempt = f.update.as_ref().map_or(1, |a| a.attempt);
                let factor = 1u32 << (attempt / 5).min(3);
                let at = cx.now() + rng::uniform(cx.rng(), lo * factor, hi * factor);
                self.wakeups.schedule(cx, at, p);
            }
            (None, Some(c)) => self.think(cx, c),
            (None, None) => {}
        }
    }
}
