//! The register workload: clients that read, write and delete a few keys through random nodes,
//! under whatever the nemesis and the membership workload do.
//!
//! Each client runs one operation at a time against a node picked at random among those
//! serving: a read (sometimes with `r=1` or `r=3`), a write with the context of its last read or
//! write of the key, a blind write (no context: a sibling by design), or a delete with its
//! context; writes sometimes use `w=1`, `w=3`, `strict`, or both `w=3` and `strict` (on every
//! replica: any later read at any `r` must find the key, through joins, leaves and removals). Values are unique in a run
//! (`c<client>-<n>`), so checkers can tell every write apart. Every operation goes into the
//! history with what it sent and got back ([`DataOp`]); its outcome is `ok`, `failed` (certainly
//! not applied) or `indeterminate` (it may have been).
//!
//! Now and then a client instead takes a key of its own through a whole life: it writes a fresh
//! key `t<client>-<n>`, deletes it with the write's context, and leaves it alone, so that the
//! key ends as a tombstone nobody touches (what tombstone GC purges); long after, some such keys
//! are written again (blind), so a key's second life is checked too.
//!
//! About one operation in [`SHARED_ONE_IN`] goes to a key the CRDT clients update too
//! ([`super::SHARED_KEYS`], renamed every [`super::SHARED_GENERATION`], and written blind by
//! the workload itself at the instant each generation starts, racing the CRDT clients' first
//! updates): a register write there is refused (409, nothing applied anywhere) while the key
//! holds a live CRDT part and no live register, and races with CRDT updates leave the key
//! contested (both parts kept); reads of a contested key report the register part's values and
//! context, which is what the register clients and checkers use. With
//! [`LargeValues`] some operations go to keys `b<i>` whose values are hundreds of KiB, named in
//! the history by [`value_name`].
//!
//! A prober watches reads while ownership changes: it writes [`RegisterConfig::stable_keys`]
//! keys `e<i>` once each with `w=N` and `strict` (on every replica, retried until acknowledged;
//! nothing deletes them), then every [`RegisterConfig::probe_every`] reads one of them at `r=1`
//! through every serving node. Joins, leaves and removals move partitions to nodes that do not
//! hold them yet, and a read at `r=1` through such a node asks it first: it must say "don't
//! know", never "absent" (the `strict-writes-seen` checker).
//!
//! After the heal it stops writing and reads every key it touched with `r=N` every few seconds:
//! the [`crate::check::register`] checkers judge the latest of these final reads.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chorus::node::{
    ClientError, ClientOp, ClientReply, ClientRequest, Context, ReadResult, RequestOptions,
};
use rand::RngExt;

use super::{pick, Ctx, Wakeups, Workload};
use crate::history::{DataOp, DataResult, OpId, OpKind, Outcome};
use crate::rng;
use crate::snapshot::ProcessState;

/// Parameters of the register workload.
#[derive(Debug, Clone)]
pub struct RegisterConfig {
    /// Concurrent clients.
    pub clients: usize,
    /// Keys they share.
    pub keys: usize,
    /// Pause between a client's operations (uniform).
    pub think: (Duration, Duration),
    /// No operation before this time (the cluster bootstraps).
    pub warmup: Duration,
    /// After the heal, how often every key is read with `r=N`.
    pub final_read_every: Duration,
    /// Replicas per key (for the final reads).
    pub n: usize,
    /// Also write the keys the CRDT clients update ([`super::SHARED_KEYS`]), about one
    /// operation in [`SHARED_ONE_IN`].
    pub shared: bool,
    /// Also write large values (see [`LargeValues`]).
    pub large: Option<LargeValues>,
    /// Keys the prober writes once on every replica (0: no prober).
    pub stable_keys: usize,
    /// How often the prober reads one of them at `r=1` through every serving node.
    pub probe_every: Duration,
}

impl Default for RegisterConfig {
    fn default() -> Self {
        RegisterConfig {
            clients: 4,
            keys: 6,
            think: (Duration::from_millis(20), Duration::from_millis(800)),
            warmup: Duration::from_secs(8),
            final_read_every: Duration::from_secs(3),
            n: 3,
            shared: true,
            large: None,
            stable_keys: 16,
            probe_every: Duration::from_millis(250),
        }
    }
}

/// Large values: some operations go to keys `b0`, `b1`, ... whose values are hundreds of KiB,
/// written mostly blind so that siblings pile up towards the bound on a client write's state,
/// on both sides of partitions.
#[derive(Debug, Clone, Copy)]
pub struct LargeValues {
    /// Keys that take large values.
    pub keys: usize,
    /// Size of a value, uniform in this range (bytes).
    pub bytes: (usize, usize),
    /// Share of operations (per mille) that go to these keys.
    pub per_mille: u32,
}

impl Default for LargeValues {
    fn default() -> Self {
        LargeValues {
            keys: 2,
            bytes: (300 * 1024, 900 * 1024),
            per_mille: 200,
        }
    }
}

/// One operation in this many goes to a key shared with the CRDT clients.
pub const SHARED_ONE_IN: u32 = 5;

/// A large value named `name`: the name, `@` and the value's length, `#`, then filler up to
/// that length. [`value_name`] gives the name back (and notices any damage).
pub fn large_value(name: &str, bytes: usize) -> Vec<u8> {
    let head = format!("{name}@{bytes}#");
    let mut v = head.into_bytes();
    let len = bytes.max(v.len());
    v.resize(len, b'.');
    v
}

/// The name under which the history and the checkers know a value: the value itself, or for
/// a large value ([`large_value`]) its name and length; a large value not exactly as written
/// (wrong length, damaged filler) gets a name no client wrote, which the checkers report.
pub fn value_name(bytes: &[u8]) -> String {
    let Some(hash) = bytes.iter().position(|&b| b == b'#') else {
        return String::from_utf8_lossy(bytes).into_owned();
    };
    let head = String::from_utf8_lossy(&bytes[..hash]).into_owned();
    // The length exactly, the filler by sample (every 4 KiB and its last bytes): values are
    // read often, and the core never edits a value's bytes, only stores or drops them whole.
    let filler = &bytes[hash + 1..];
    let tail = &filler[filler.len().saturating_sub(64)..];
    let intact = head
        .rsplit_once('@')
        .and_then(|(_, n)| n.parse::<usize>().ok())
        .is_some_and(|n| n == bytes.len())
        && filler.iter().step_by(4096).all(|&b| b == b'.')
        && tail.iter().all(|&b| b == b'.');
    if intact {
        head
    } else {
        format!("{head} (damaged: {} bytes)", bytes.len())
    }
}

#[derive(Debug, Clone, Copy)]
enum Pending {
    Next(usize),
    /// Create every shared key of the generation starting now.
    Race,
    FinalRound,
    /// Write stable key `i` (again, after a failure).
    Stable(usize),
    /// Read stable keys at `r=1` through every serving node.
    Probe,
}

#[derive(Debug, Default)]
struct Client {
    /// The context of this client's last answer for each key.
    contexts: BTreeMap<String, Context>,
    next_value: u64,
    /// The key this client is taking through a life (written, not yet deleted).
    living: Option<String>,
    next_life: u64,
}

/// Share of operations (per mille) that move a key through its life instead.
const LIFE_OPS_PER_MILLE: u32 = 80;

/// A key deleted this long ago may be written again.
const REVIVE_AFTER: Duration = Duration::from_secs(90);

/// A request in flight.
#[derive(Debug)]
struct InFlight {
    client: Option<usize>,
    op: OpId,
    key: String,
    write: bool,
    /// The write of stable key `i`.
    stable: Option<usize>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Register {
    config: RegisterConfig,
    wakeups: Wakeups<Pending>,
    clients: Vec<Client>,
    in_flight: BTreeMap<u64, InFlight>,
    next_token: u64,
    quiesced: bool,
    /// Keys deleted at the end of a life, with when, and whether written again since.
    retired: Vec<(String, Duration, bool)>,
    /// Shared keys touched (read at the end).
    shared: BTreeSet<String>,
    /// Stable keys whose write on every replica was acknowledged.
    stable_written: BTreeSet<usize>,
}

impl Register {
    /// A workload with `config`.
    pub fn new(config: RegisterConfig) -> Self {
        let clients = (0..config.clients).map(|_| Client::default()).collect();
        Register {
            config,
            wakeups: Wakeups::default(),
            clients,
            in_flight: BTreeMap::new(),
            next_token: 0,
            quiesced: false,
            retired: Vec::new(),
            shared: BTreeSet::new(),
            stable_written: BTreeSet::new(),
        }
    }

    fn key(i: usize) -> String {
        format!("k{i}")
    }

    fn large_key(i: usize) -> String {
        format!("b{i}")
    }

    fn stable_key(i: usize) -> String {
        format!("e{i}")
    }

    /// Every key the clients wrote or may write (not the keys taken through a life).
    fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = (0..self.config.keys).map(Self::key).collect();
        keys.extend(self.shared.iter().cloned());
        if let Some(l) = self.config.large {
            keys.extend((0..l.keys).map(Self::large_key));
        }
        keys.extend((0..self.config.stable_keys).map(Self::stable_key));
        keys
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

    fn send(
        &mut self,
        cx: &mut Ctx<'_>,
        client: Option<usize>,
        node: usize,
        kind: OpKind,
        request: ClientRequest,
        final_read: bool,
    ) {
        self.send_as(cx, client, None, node, kind, request, final_read);
    }

    #[allow(clippy::too_many_arguments)]
    fn send_as(
        &mut self,
        cx: &mut Ctx<'_>,
        client: Option<usize>,
        stable: Option<usize>,
        node: usize,
        kind: OpKind,
        request: ClientRequest,
        final_read: bool,
    ) {
        let key = String::from_utf8_lossy(&request.key).into_owned();
        let write = request.op.is_write();
        let context = match &request.op {
            ClientOp::Put { context, .. } | ClientOp::Delete { context } => {
                context.as_ref().map(|c| c.seen().clone())
            }
            ClientOp::Get | ClientOp::Update { .. } => None,
        };
        let op = cx.invoke(kind);
        cx.history_mut().record_data(DataOp {
            op,
            key: key.clone(),
            context,
            final_read,
            options: request.options,
            result: None,
        });
        self.next_token += 1;
        let token = self.next_token;
        self.in_flight.insert(
            token,
            InFlight {
                client,
                op,
                key,
                write,
                stable,
            },
        );
        cx.request(node, token, request);
    }

    /// Writes stable key `i` on every replica (blind: a retry after an indeterminate attempt
    /// makes a sibling, which is harmless).
    fn write_stable(&mut self, cx: &mut Ctx<'_>, i: usize) {
        if self.quiesced {
            return;
        }
        let serving = Self::serving(cx);
        let Some(node) = pick(cx.rng(), &serving) else {
            let at = cx.now() + Duration::from_secs(1);
            self.wakeups.schedule(cx, at, Pending::Stable(i));
            return;
        };
        let key = Self::stable_key(i);
        let value = format!("{key}-{}", cx.now().as_millis());
        let request = ClientRequest {
            key: key.clone().into_bytes(),
            op: ClientOp::Put {
                value: value.clone().into_bytes(),
                context: None,
            },
            options: RequestOptions {
                w: Some(self.config.n),
                strict: true,
                ..RequestOptions::default()
            },
        };
        let kind = OpKind::Write { key, value, node };
        self.send_as(cx, None, Some(i), node, kind, request, false);
    }

    /// Reads a random written stable key at `r=1` through every serving node.
    fn probe(&mut self, cx: &mut Ctx<'_>) {
        if self.quiesced {
            return;
        }
        let written: Vec<usize> = self.stable_written.iter().copied().collect();
        for node in Self::serving(cx) {
            let Some(i) = pick(cx.rng(), &written) else {
                break;
            };
            let key = Self::stable_key(i);
            let request = ClientRequest {
                key: key.clone().into_bytes(),
                op: ClientOp::Get,
                options: RequestOptions {
                    r: Some(1),
                    ..RequestOptions::default()
                },
            };
            self.send(cx, None, node, OpKind::Read { key, node }, request, false);
        }
        let at = cx.now() + self.config.probe_every;
        self.wakeups.schedule(cx, at, Pending::Probe);
    }

    fn next_op(&mut self, cx: &mut Ctx<'_>, client: usize) {
        if self.quiesced {
            return;
        }
        let serving = Self::serving(cx);
        let Some(node) = pick(cx.rng(), &serving) else {
            self.think(cx, client);
            return;
        };
        if cx.rng().random_range(0..1000) < LIFE_OPS_PER_MILLE {
            self.life_op(cx, client, node);
            return;
        }
        let large = self
            .config
            .large
            .filter(|l| l.keys > 0 && cx.rng().random_range(0..1000) < l.per_mille);
        let key = if let Some(l) = large {
            Self::large_key(cx.rng().random_range(0..l.keys))
        } else if self.config.shared && cx.rng().random_range(0..SHARED_ONE_IN) == 0 {
            let i = cx.rng().random_range(0..super::SHARED_KEYS.len());
            let (key, _) = super::shared_key(i, cx.now());
            self.shared.insert(key.clone());
            key
        } else {
            Self::key(cx.rng().random_range(0..self.config.keys))
        };
        // Large values are written mostly blind: siblings pile up.
        // (Dice below `with_context` write with the context, below `writes` blind, above delete.)
        let (with_context, writes) = if large.is_some() { (42, 96) } else { (72, 88) };
        let dice: u32 = cx.rng().random_range(0..100);
        let mut options = RequestOptions::default();
        let known = self.clients[client].contexts.get(&key).cloned();
        let (kind, op) = if dice < 35 {
            options.r = match cx.rng().random_range(0..10) {
                0..=5 => None,
                6 | 7 => Some(1),
                _ => Some(self.config.n),
            };
            (
                OpKind::Read {
                    key: key.clone(),
                    node,
                },
                ClientOp::Get,
            )
        } else {
            options.w = match cx.rng().random_range(0..20) {
                0..=11 => None,
                12..=14 => Some(1),
                15 | 16 => Some(self.config.n),
                // On every replica, and only on replicas: any later read must see it (the
                // `strict-writes-seen` checker).
                17 => {
                    options.strict = true;
                    Some(self.config.n)
                }
                _ => {
                    options.strict = true;
                    None
                }
            };
            let size = large.map(|l| cx.rng().random_range(l.bytes.0..=l.bytes.1));
            let c = &mut self.clients[client];
            if dice < writes {
                c.next_value += 1;
                let value = format!("c{client}-{}", c.next_value);
                let context = if dice < with_context { known } else { None };
                let (name, bytes) = match size {
                    Some(size) => {
                        let bytes = large_value(&value, size);
                        (value_name(&bytes), bytes)
                    }
                    None => (value.clone(), value.into_bytes()),
                };
                (
                    OpKind::Write {
                        key: key.clone(),
                        value: name,
                        node,
                    },
                    ClientOp::Put {
                        value: bytes,
                        context,
                    },
                )
            } else {
                (
                    OpKind::Delete {
                        key: key.clone(),
                        node,
                    },
                    ClientOp::Delete { context: known },
                )
            }
        };
        let request = ClientRequest {
            key: key.into_bytes(),
            op,
            options,
        };
        self.send(cx, Some(client), node, kind, request, false);
    }

    /// At the start of a generation of shared keys: a blind write to each, through random
    /// nodes, at the instant the CRDT clients create them too (see [`super::SHARED_KEYS`]).
    fn race(&mut self, cx: &mut Ctx<'_>) {
        if self.quiesced {
            return;
        }
        let now = cx.now();
        let generation = now.as_secs() / super::SHARED_GENERATION.as_secs();
        for i in 0..super::SHARED_KEYS.len() {
            let serving = Self::serving(cx);
            let Some(node) = pick(cx.rng(), &serving) else {
                break;
            };
            let (key, _) = super::shared_key(i, now);
            self.shared.insert(key.clone());
            let value = format!("race{generation}-{i}");
            let request = ClientRequest {
                key: key.clone().into_bytes(),
                op: ClientOp::Put {
                    value: value.clone().into_bytes(),
                    context: None,
                },
                options: RequestOptions::default(),
            };
            let kind = OpKind::Write { key, value, node };
            self.send(cx, None, node, kind, request, false);
        }
        let at = super::next_generation(now);
        self.wakeups.schedule(cx, at, Pending::Race);
    }

    /// The next step of a key's life (see the module notes).
    fn life_op(&mut self, cx: &mut Ctx<'_>, client: usize, node: usize) {
        let now = cx.now();
        let revive = self
            .retired
            .iter()
            .position(|(_, at, again)| !again && now >= *at + REVIVE_AFTER);
        let c = &mut self.clients[client];
        let (key, kind, op) = if let Some(key) = c.living.take() {
            // Deleted with the write's context; a write that failed leaves no context, and
            // the key is simply abandoned.
            let Some(context) = c.contexts.get(&key).cloned() else {
                // (Still read at the end, in case the write landed after all.)
                self.retired.push((key, now, true));
                self.think(cx, client);
                return;
            };
            self.retired.push((key.clone(), now, false));
            (
                key.clone(),
                OpKind::Delete { key, node },
                ClientOp::Delete {
                    context: Some(context),
                },
            )
        } else {
            c.next_value += 1;
            let value = format!("c{client}-{}", c.next_value);
            let key = match revive {
                Some(i) => {
                    self.retired[i].2 = true;
                    self.retired[i].0.clone()
                }
                None => {
                    c.next_life += 1;
                    let key = format!("t{client}-{}", c.next_life);
                    c.living = Some(key.clone());
                    key
                }
            };
            (
                key.clone(),
                OpKind::Write {
                    key,
                    value: value.clone(),
                    node,
                },
                ClientOp::Put {
                    value: value.into_bytes(),
                    context: None,
                },
            )
        };
        let request = ClientRequest {
            key: key.into_bytes(),
            op,
            options: RequestOptions::default(),
        };
        self.send(cx, Some(client), node, kind, request, false);
    }

    fn final_round(&mut self, cx: &mut Ctx<'_>) {
        let serving = Self::serving(cx);
        if !serving.is_empty() {
            let mut keys = self.keys();
            keys.extend(self.retired.iter().map(|(k, _, _)| k.clone()));
            keys.extend(self.clients.iter().filter_map(|c| c.living.clone()));
            for key in keys {
                let Some(node) = pick(cx.rng(), &serving) else {
                    break;
                };
                // Every replica: N, or all the owners when fewer remain.
                let owners = cx.cluster().view(node).map_or(0, |v| {
                    v.members
                        .iter()
                        .filter(|m| m.status.owns_partitions())
                        .count()
                });
                let r = self.config.n.min(owners).max(1);
                let request = ClientRequest {
                    key: key.clone().into_bytes(),
                    op: ClientOp::Get,
                    options: RequestOptions {
                        r: Some(r),
                        ..RequestOptions::default()
                    },
                };
                self.send(cx, None, node, OpKind::Read { key, node }, request, true);
            }
        }
        let at = cx.now() + self.config.final_read_every;
        self.wakeups.schedule(cx, at, Pending::FinalRound);
    }
}

fn strings(values: &[Vec<u8>]) -> Vec<String> {
    values.iter().map(|v| value_name(v)).collect()
}

/// The register context of a read: the key's, or its register part's when it is contested.
fn register_context(r: &ReadResult) -> Option<Context> {
    if r.parts.is_empty() {
        // (An OR-Set's context is no register context.)
        return match r.type_name.as_deref() {
            None | Some("register") => r.context.clone(),
            Some(_) => None,
        };
    }
    r.parts
        .iter()
        .find(|p| p.type_name == "register")
        .and_then(|p| p.context.clone())
}

impl Workload for Register {
    fn name(&self) -> &'static str {
        "register"
    }

    fn start(&mut self, cx: &mut Ctx<'_>) {
        for c in 0..self.config.clients {
            let jitter = rng::uniform(cx.rng(), Duration::ZERO, Duration::from_secs(1));
            let at = self.config.warmup + jitter;
            self.wakeups.schedule(cx, at, Pending::Next(c));
        }
        if self.config.shared {
            let at = super::next_generation(self.config.warmup);
            self.wakeups.schedule(cx, at, Pending::Race);
        }
        if self.config.stable_keys > 0 {
            for i in 0..self.config.stable_keys {
                self.wakeups
                    .schedule(cx, self.config.warmup, Pending::Stable(i));
            }
            let at = self.config.warmup + self.config.probe_every;
            self.wakeups.schedule(cx, at, Pending::Probe);
        }
    }

    fn wake(&mut self, token: u64, cx: &mut Ctx<'_>) {
        match self.wakeups.take(token) {
            Some(Pending::Next(c)) => self.next_op(cx, c),
            Some(Pending::Race) => self.race(cx),
            Some(Pending::FinalRound) => self.final_round(cx),
            Some(Pending::Stable(i)) => self.write_stable(cx, i),
            Some(Pending::Probe) => self.probe(cx),
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
        let outcome = match reply {
            ClientReply::Read(r) => {
                // (A key that holds only another type has no register context: a write
                // without one is refused, or becomes a sibling of nothing.)
                let context = register_context(&r);
                if let (Some(c), Some(ctx)) = (f.client, &context) {
                    self.clients[c].contexts.insert(f.key.clone(), ctx.clone());
                }
                cx.history_mut().data_result(
                    f.op,
                    DataResult::Read {
                        values: strings(&r.values),
                        context: context.map(|c| c.seen().clone()),
                    },
                );
                Outcome::Ok
            }
            ClientReply::Written(w) => {
                if let Some(c) = f.client {
                    self.clients[c]
                        .contexts
                        .insert(f.key.clone(), w.context.clone());
                }
                cx.history_mut().data_result(
                    f.op,
                    DataResult::Written {
                        values: strings(&w.values),
                        context: w.context.seen().clone(),
                        dot: w.dot,
                        acked_by: w.acked_by,
                    },
                );
                Outcome::Ok
            }
            ClientReply::Updated(_) => Outcome::Failed("a CRDT reply to a register request".into()),
            ClientReply::Failed(e) => {
                let indeterminate = f.write
                    && matches!(
                        e,
                        ClientError::Unavailable {
                            indeterminate: true,
                            ..
                        }
                    );
                if indeterminate {
                    Outcome::Indeterminate(e.to_string())
                } else {
                    Outcome::failed(&e)
                }
            }
        };
        if let Some(i) = f.stable {
            if outcome == Outcome::Ok {
                self.stable_written.insert(i);
            } else {
                let at = cx.now() + Duration::from_secs(1);
                self.wakeups.schedule(cx, at, Pending::Stable(i));
            }
        }
        cx.complete(f.op, outcome);
        if let Some(c) = f.client {
            self.think(cx, c);
        }
    }
}
