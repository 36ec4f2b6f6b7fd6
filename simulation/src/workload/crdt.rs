//! The CRDT workload: clients that update counters and sets through random nodes, retrying
//! updates whose outcome they do not know with the same operation id, as a careful client of
//! a real cluster would.
//!
//! Keys: `g0`, `g1` (G-Counters, increments of 1), `p0` (a PN-Counter, ±1), `s0` (a 2P-Set) and
//! `o0` (an OR-Set; removes go with the context of the client's last read of it, or without).
//! Elements come from a small pool so adds and removes of one element meet. An update that ends
//! indeterminate is sent again, with its operation id, to another random node, up to
//! [`CrdtConfig::retries`] times. One update in about 30 is of the wrong type for its key (it
//! must be refused). Every attempt goes into the history ([`CrdtRecord`]).
//!
//! After the heal it stops updating and reads every key with `r=N` every few seconds; the
//! [`crate::check::crdt`] checkers judge the latest of these reads.

use std::collections::BTreeMap;
use std::time::Duration;

use chorus::node::{
    ClientError, ClientOp, ClientReply, ClientRequest, Context, CrdtOp, RequestOptions,
};
use rand::RngExt;

use super::{pick, Ctx, Wakeups, Workload};
use crate::history::{CrdtRecord, CrdtResult, OpId, OpKind, Outcome};
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
    /// How often an indeterminate update is sent again.
    pub retries: u32,
}

impl Default for CrdtConfig {
    fn default() -> Self {
        CrdtConfig {
            clients: 3,
            think: (Duration::from_millis(20), Duration::from_millis(700)),
            warmup: Duration::from_secs(8),
            final_read_every: Duration::from_secs(3),
            n: 3,
            retries: 3,
        }
    }
}

#[derive(Debug, Clone)]
enum Pending {
    Next(usize),
    Retry {
        client: usize,
        key: String,
        op: CrdtOp,
        op_id: String,
        left: u32,
    },
    FinalRound,
}

/// A request in flight.
#[derive(Debug)]
struct InFlight {
    client: Option<usize>,
    op: OpId,
    key: String,
    update: Option<(CrdtOp, String, u32)>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Crdt {
    config: CrdtConfig,
    wakeups: Wakeups<Pending>,
    /// Each client's OR-Set context from its last read or update.
    contexts: Vec<Option<Context>>,
    next_op: Vec<u64>,
    in_flight: BTreeMap<u64, InFlight>,
    next_token: u64,
    quiesced: bool,
}

impl Crdt {
    /// A workload with `config`.
    pub fn new(config: CrdtConfig) -> Self {
        Crdt {
            contexts: vec![None; config.clients],
            next_op: vec![0; config.clients],
            config,
            wakeups: Wakeups::default(),
            in_flight: BTreeMap::new(),
            next_token: 0,
            quiesced: false,
        }
    }

    fn serving(cx: &Ctx<'_>) -> Vec<usize> {
        (0..cx.cluster().len())
            .filter(|&i| cx.cluster().state(i) == ProcessState::Up)
            .collect()
    }

    fn think(&mut self, cx: &mut Ctx<'_>, client: usize) {
        let (lo, hi) = self.config.think;
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

    #[allow(clippy::too_many_arguments)]
    fn send_update(
        &mut self,
        cx: &mut Ctx<'_>,
        client: usize,
        node: usize,
        key: String,
        op: CrdtOp,
        op_id: String,
        left: u32,
    ) {
        let kind = OpKind::Update {
            key: key.clone(),
            what: format!("{} ({op_id})", Self::describe(&op)),
            node,
        };
        let id = cx.invoke(kind);
        cx.history_mut().record_crdt(CrdtRecord {
            op: id,
            key: key.clone(),
            update: Some((op.clone(), op_id.clone())),
            final_read: false,
            result: None,
        });
        self.next_token += 1;
        let token = self.next_token;
        let request = ClientRequest {
            key: key.clone().into_bytes(),
            op: ClientOp::Update {
                op: op.clone(),
                op_id: op_id.clone(),
            },
            options: RequestOptions::default(),
        };
        self.in_flight.insert(
            token,
            InFlight {
                client: Some(client),
                op: id,
                key,
                update: Some((op, op_id, left)),
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
        cx.history_mut().record_crdt(CrdtRecord {
            op: id,
            key: key.to_owned(),
            update: None,
            final_read,
            result: None,
        });
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

    fn next(&mut self, cx: &mut Ctx<'_>, client: usize) {
        if self.quiesced {
            return;
        }
        let serving = Self::serving(cx);
        let Some(node) = pick(cx.rng(), &serving) else {
            self.think(cx, client);
            return;
        };
        let (key, kind) = KEYS[cx.rng().random_range(0..KEYS.len())];
        let dice: u32 = cx.rng().random_range(0..100);
        if dice < 15 {
            self.send_read(cx, Some(client), node, key, None);
            return;
        }
        let element = ELEMENTS[cx.rng().random_range(0..ELEMENTS.len())].to_owned();
        let adding = dice < 60;
        // Now and then an update of the wrong type: it must be refused and change nothing.
        let kind = if dice >= 97 {
            if kind.ends_with("counter") {
                "2pset"
            } else {
                "gcounter"
            }
        } else {
            kind
        };
        let op = match kind {
            "gcounter" => CrdtOp::GCounter { increment: 1 },
            "pncounter" => CrdtOp::PNCounter {
                increment: if adding { 1 } else { -1 },
            },
            "2pset" if adding => CrdtOp::TwoPSet {
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
                    self.contexts[client].clone()
                } else {
                    None
                },
            },
        };
        self.next_op[client] += 1;
        let op_id = format!("c{client}-{}", self.next_op[client]);
        let retries = self.config.retries;
        self.send_update(cx, client, node, key.to_owned(), op, op_id, retries);
    }

    fn final_round(&mut self, cx: &mut Ctx<'_>) {
        let serving = Self::serving(cx);
        for &(key, _) in KEYS {
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
}

impl Workload for Crdt {
    fn name(&self) -> &'static str {
        "crdt"
    }

    fn start(&mut self, cx: &mut Ctx<'_>) {
        for c in 0..self.config.clients {
            let jitter = rng::uniform(cx.rng(), Duration::ZERO, Duration::from_secs(1));
            let at = self.config.warmup + jitter;
            self.wakeups.schedule(cx, at, Pending::Next(c));
        }
    }

    fn wake(&mut self, token: u64, cx: &mut Ctx<'_>) {
        match self.wakeups.take(token) {
            Some(Pending::Next(c)) => self.next(cx, c),
            Some(Pending::Retry {
                client,
                key,
                op,
                op_id,
                left,
            }) => {
                // Retries go on after the heal too: a client wants its answer.
                let serving = Self::serving(cx);
                match pick(cx.rng(), &serving) {
                    Some(node) => self.send_update(cx, client, node, key, op, op_id, left),
                    None => {
                        let at = cx.now() + Duration::from_secs(1);
                        let p = Pending::Retry {
                            client,
                            key,
                            op,
                            op_id,
                            left,
                        };
                        self.wakeups.schedule(cx, at, p);
                    }
                }
            }
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
                if let (Some(c), Some(ctx)) = (f.client, &r.context) {
                    if f.key.starts_with('o') {
                        self.contexts[c] = Some(ctx.clone());
                    }
                }
                cx.history_mut().crdt_result(f.op, CrdtResult::Read(r.crdt));
                Outcome::Ok
            }
            ClientReply::Updated(u) => {
                if let (Some(c), Some(ctx)) = (f.client, &u.context) {
                    self.contexts[c] = Some(ctx.clone());
                }
                cx.history_mut().crdt_result(
                    f.op,
                    CrdtResult::Updated {
                        notes: u.notes,
                        acked_by: u.acked_by,
                    },
                );
                Outcome::Ok
            }
            ClientReply::Written(_) => Outcome::Failed("a register reply to a CRDT request".into()),
            ClientReply::Failed(e) => {
                let indeterminate = f.update.is_some()
                    && matches!(
                        e,
                        ClientError::Unavailable {
                            indeterminate: true,
                            ..
                        }
                    );
                if indeterminate {
                    if let (Some(c), Some((op, op_id, left))) = (f.client, &f.update) {
                        if *left > 0 {
                            retry = Some(Pending::Retry {
                                client: c,
                                key: f.key.clone(),
                                op: op.clone(),
                                op_id: op_id.clone(),
                                left: left - 1,
                            });
                        }
                    }
                    Outcome::Indeterminate(e.to_string())
                } else {
                    Outcome::Failed(e.to_string())
                }
            }
        };
        cx.complete(f.op, outcome);
        match (retry, f.client) {
            (Some(p), _) => {
                let at = cx.now()
                    + rng::uniform(cx.rng(), Duration::from_millis(100), Duration::from_secs(1));
                self.wakeups.schedule(cx, at, p);
            }
            (None, Some(c)) => self.think(cx, c),
            (None, None) => {}
        }
    }
}
