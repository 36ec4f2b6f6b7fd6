//! The data commands of the `chorus` CLI (`get`, `put`, `delete`, `counter`, `set`), built on
//! the Rust client library.
//!
//! Output: values go to stdout (one value as its raw bytes; siblings one per line), the causal
//! context to stderr as `context: TOKEN` (pass it back with `--context`); `--json` prints one
//! JSON object instead. Exit codes: 0 success, 1 not found, 2 failure, 3 indeterminate (a
//! write that may have been applied).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use base64::Engine as _;
use clap::{Args, Subcommand};
use serde_json::json;

use chorus::client::{
    Client, Config, Context, CrdtOp, CrdtValue, Error, Options, Protocol, Updated, Value, Written,
};

/// How a data command reaches the cluster.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// HTTP address of a node (repeatable); the client learns the rest of the cluster from it.
    /// `https://HOST:PORT` for nodes serving HTTPS (verified against --ca).
    #[arg(long, default_value = "127.0.0.1:7200", value_name = "IP:PORT")]
    node: Vec<String>,
    /// quic (needs the cluster CA: --ca) or http.
    #[arg(long, default_value = "http")]
    protocol: Protocol,
    /// The cluster CA certificate, for --protocol quic, and for https:// nodes the CA their
    /// HTTPS certificates chain to [default: chorus-dev/ca/ca.pem].
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// File holding the client token (or set CHORUS_TOKEN).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Replies a read waits for.
    #[arg(long)]
    r: Option<usize>,
    /// Durable acknowledgements a write waits for.
    #[arg(long)]
    w: Option<usize>,
    /// Only the key's own replicas count (no sloppy quorum).
    #[arg(long)]
    strict: bool,
    /// How long the request may take, in milliseconds.
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// `chorus get`.
#[derive(Args, Debug)]
pub struct GetArgs {
    /// The key.
    key: String,
    #[command(flatten)]
    client: ClientArgs,
}

/// `chorus put`.
#[derive(Args, Debug)]
pub struct PutArgs {
    /// The key.
    key: String,
    /// The value (or --file).
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    value: Option<String>,
    /// Read the value from this file ("-": standard input).
    #[arg(long)]
    file: Option<PathBuf>,
    /// The context of the read this write supersedes (from `chorus get`).
    #[arg(long)]
    context: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

/// `chorus delete`.
#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// The key.
    key: String,
    /// The context of the read this delete supersedes (without one, the delete covers what
    /// a fresh read sees).
    #[arg(long)]
    context: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

/// `chorus counter`.
#[derive(Subcommand, Debug)]
pub enum CounterCommand {
    /// Print a counter's value.
    Get {
        /// The key.
        key: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Add N (default 1; negative makes it a PN-Counter) and print the new value.
    Incr {
        /// The key.
        key: String,
        /// The amount.
        #[arg(default_value_t = 1, allow_negative_numbers = true)]
        n: i64,
        /// The operation id (retrying with the same id applies it once).
        #[arg(long)]
        op_id: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `chorus set`.
#[derive(Subcommand, Debug)]
pub enum SetCommand {
    /// Print a set's elements, one per line.
    Get {
        /// The key.
        key: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Add elements (a new key becomes an add-wins OR-Set; --two-phase makes it a 2P-Set).
    Add {
        /// The key.
        key: String,
        /// The elements.
        #[arg(required = true)]
        elements: Vec<String>,
        /// Create a 2P-Set (removal is permanent) rather than an OR-Set.
        #[arg(long)]
        two_phase: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove elements (from an OR-Set: the adds a fresh read sees).
    Remove {
        /// The key.
        key: String,
        /// The elements.
        #[arg(required = true)]
        elements: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Exit code: not found.
const NOT_FOUND: u8 = 1;
/// Exit code: failure.
const FAILED: u8 = 2;
/// Exit code: a write that may have been applied.
const INDETERMINATE: u8 = 3;

/// A command's outcome: printed, then turned into the exit code.
enum Outcome {
    Done,
    NotFound(String),
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| config_error(format!("cannot start the async runtime: {e}")))
}

fn config_error(message: String) -> Error {
    Error {
        kind: chorus::client::ErrorKind::Config,
        code: "config".into(),
        message,
        indeterminate: false,
    }
}

async fn connect(args: &ClientArgs) -> Result<(Client, Options), Error> {
    let mut config = Config::new(args.node.clone());
    config.protocol = args.protocol;
    let https = args.node.iter().any(|n| n.trim().starts_with("https://"));
    if args.protocol == Protocol::Quic || https {
        let path = args
            .ca
            .clone()
            .unwrap_or_else(|| PathBuf::from("chorus-dev/ca/ca.pem"));
        config.ca_pem = Some(std::fs::read_to_string(&path).map_err(|e| {
            config_error(format!(
                "cannot read the cluster CA {} (give --ca FILE): {e}",
                path.display()
            ))
        })?);
    }
    config.token = match (&args.token_file, std::env::var("CHORUS_TOKEN")) {
        (Some(path), _) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| config_error(format!("cannot read {}: {e}", path.display())))?
                .trim()
                .to_owned(),
        ),
        (None, Ok(t)) if !t.trim().is_empty() => Some(t.trim().to_owned()),
        _ => None,
    };
    let options = Options {
        r: args.r,
        w: args.w,
        strict: args.strict,
        timeout_ms: args.timeout_ms,
    };
    let client = Client::connect(config).await?;
    Ok((client.with(options), options))
}

/// Runs a command and turns its outcome into output and an exit code.
fn finish(json: bool, result: Result<Outcome, Error>) -> ExitCode {
    match result {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::NotFound(what)) => {
            if !json {
                eprintln!("{what}");
            }
            ExitCode::from(NOT_FOUND)
        }
        Err(e) => {
            if json {
                println!(
                    "{}",
                    json!({"error": e.code, "message": e.message, "indeterminate": e.indeterminate})
                );
            }
            if e.indeterminate {
                eprintln!("indeterminate: the write may have been applied: {e}");
                ExitCode::from(INDETERMINATE)
            } else {
                eprintln!("error: {e}");
                ExitCode::from(FAILED)
            }
        }
    }
}

fn run<F>(args: &ClientArgs, f: impl FnOnce(Client) -> F) -> ExitCode
where
    F: std::future::Future<Output = Result<Outcome, Error>>,
{
    let result = runtime().and_then(|rt| {
        rt.block_on(async {
            let (client, _) = connect(args).await?;
            f(client).await
        })
    });
    finish(args.json, result)
}

/// A value as JSON: a string when it is UTF-8, else `{"base64": "..."}`.
fn value_json(v: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(v) {
        Ok(s) => json!(s),
        Err(_) => json!({"base64": base64::engine::general_purpose::STANDARD.encode(v)}),
    }
}

/// A sibling on one line: its text when that is UTF-8 without line breaks, else base64.
fn sibling_line(v: &[u8]) -> String {
    match std::str::from_utf8(v) {
        Ok(s) if !s.contains(['\n', '\r']) => s.to_owned(),
        _ => format!(
            "base64:{}",
            base64::engine::general_purpose::STANDARD.encode(v)
        ),
    }
}

fn print_context(context: Option<&Context>) {
    if let Some(c) = context {
        eprintln!("context: {}", c.to_token());
    }
}

fn print_siblings(values: &[Vec<u8>]) {
    let mut out = std::io::stdout().lock();
    for v in values {
        let _ = writeln!(out, "{}", sibling_line(v));
    }
}

fn parse_context(token: Option<&str>, key: &str) -> Result<Option<Context>, Error> {
    token
        .map(|t| {
            Context::from_token(t, key.as_bytes())
                .map_err(|e| config_error(format!("--context: {e}")))
        })
        .transpose()
}

/// `chorus get KEY`.
pub fn get(args: GetArgs) -> ExitCode {
    let json = args.client.json;
    run(&args.client, |client| async move {
        let read = client.get(&args.key).await?;
        if json {
            println!(
                "{}",
                json!({
                    "key": args.key,
                    "found": read.value != Value::Absent,
                    "deleted": read.deleted,
                    "values": read.value.values().iter().map(|v| value_json(v)).collect::<Vec<_>>(),
                    "context": read.context.as_ref().map(Context::to_token),
                })
            );
        }
        match &read.value {
            Value::Absent => {
                if !json {
                    print_context(read.context.as_ref());
                }
                let what = if read.deleted { "deleted" } else { "not found" };
                return Ok(Outcome::NotFound(format!("{}: {what}", args.key)));
            }
            Value::One(v) if !json => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(v);
                if std::io::IsTerminal::is_terminal(&out) && !v.ends_with(b"\n") {
                    let _ = out.write_all(b"\n");
                }
                print_context(read.context.as_ref());
            }
            Value::Siblings(all) if !json => {
                eprintln!(
                    "{} siblings (concurrent writes); write with --context to resolve them",
                    all.len()
                );
                print_siblings(all);
                print_context(read.context.as_ref());
            }
            _ => {}
        }
        Ok(Outcome::Done)
    })
}

fn report_write(key: &str, w: &Written, json: bool) {
    if json {
        println!(
            "{}",
            json!({
                "key": key,
                "acks": w.acks,
                "values": w.value.values().iter().map(|v| value_json(v)).collect::<Vec<_>>(),
                "context": w.context.to_token(),
            })
        );
        return;
    }
    match &w.value {
        Value::Siblings(all) => {
            eprintln!(
                "written ({} acks); {} siblings remain (concurrent writes):",
                w.acks,
                all.len()
            );
            print_siblings(all);
        }
        Value::One(_) => eprintln!("written ({} acks)", w.acks),
        Value::Absent => eprintln!("deleted ({} acks)", w.acks),
    }
    print_context(Some(&w.context));
}

/// `chorus put KEY VALUE|--file F`.
pub fn put(args: PutArgs) -> ExitCode {
    let json = args.client.json;
    run(&args.client, |client| async move {
        let value = match (&args.value, &args.file) {
            (Some(v), _) => v.clone().into_bytes(),
            (None, Some(p)) if p.as_os_str() == "-" => {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
                    .map_err(|e| config_error(format!("cannot read standard input: {e}")))?;
                buf
            }
            (None, Some(p)) => std::fs::read(p)
                .map_err(|e| config_error(format!("cannot read {}: {e}", p.display())))?,
            (None, None) => return Err(config_error("give a VALUE or --file".into())),
        };
        let context = parse_context(args.context.as_deref(), &args.key)?;
        let w = client.put(&args.key, value, context.as_ref()).await?;
        report_write(&args.key, &w, json);
        Ok(Outcome::Done)
    })
}

/// `chorus delete KEY`.
pub fn delete(args: DeleteArgs) -> ExitCode {
    let json = args.client.json;
    run(&args.client, |client| async move {
        let context = match parse_context(args.context.as_deref(), &args.key)? {
            Some(c) => Some(c),
            // Without a context, delete what a fresh read sees (as a user expects of `delete`).
            None => {
                let read = client.get(&args.key).await?;
                if read.value == Value::Absent {
                    let what = if read.deleted {
                        "already deleted"
                    } else {
                        "not found"
                    };
                    return Ok(Outcome::NotFound(format!("{}: {what}", args.key)));
                }
                read.context
            }
        };
        let w = client.delete(&args.key, context.as_ref()).await?;
        report_write(&args.key, &w, json);
        Ok(Outcome::Done)
    })
}

fn print_update(u: &Updated, json: bool) {
    if json {
        let value = match &u.value {
            CrdtValue::Counter(n) => json!(n.to_string()),
            CrdtValue::Set(e) => json!(e),
        };
        println!(
            "{}",
            json!({
                "type": u.type_name,
                "value": value,
                "op_id": u.op_id,
                "replayed": u.replayed,
                "notes": u.notes,
                "acks": u.acks,
            })
        );
        return;
    }
    match &u.value {
        CrdtValue::Counter(n) => println!("{n}"),
        CrdtValue::Set(elements) => {
            for e in elements {
                println!("{e}");
            }
        }
    }
    for note in &u.notes {
        eprintln!("note: {note}");
    }
    if u.replayed {
        eprintln!("op id {} was applied before; not applied again", u.op_id);
    }
}

/// `chorus counter ...`.
pub fn counter(command: CounterCommand) -> ExitCode {
    match command {
        CounterCommand::Get { key, client: args } => {
            let json = args.json;
            run(&args, |client| async move {
                match client.crdt(&key).await? {
                    None => Ok(Outcome::NotFound(format!("{key}: not found"))),
                    Some(c) => match c.value {
                        CrdtValue::Counter(n) => {
                            if json {
                                println!(
                                    "{}",
                                    json!({"key": key, "type": c.type_name, "value": n.to_string()})
                                );
                            } else {
                                println!("{n}");
                            }
                            Ok(Outcome::Done)
                        }
                        CrdtValue::Set(_) => Err(type_conflict(&key, &c.type_name, "counter")),
                    },
                }
            })
        }
        CounterCommand::Incr {
            key,
            n,
            op_id,
            client: args,
        } => {
            let json = args.json;
            run(&args, |client| async move {
                if n == 0 {
                    return Err(config_error("N must not be 0".into()));
                }
                let u = match op_id {
                    Some(id) => {
                        let op = if n > 0 {
                            match client.crdt(&key).await? {
                                Some(c) if c.type_name == "pncounter" => {
                                    CrdtOp::PNCounter { increment: n }
                                }
                                _ => CrdtOp::GCounter {
                                    increment: n.unsigned_abs(),
                                },
                            }
                        } else {
                            CrdtOp::PNCounter { increment: n }
                        };
                        client.update_with_id(&key, op, id).await?
                    }
                    None => client.incr(&key, n).await?,
                };
                print_update(&u, json);
                Ok(Outcome::Done)
            })
        }
    }
}

fn type_conflict(key: &str, held: &str, wanted: &str) -> Error {
    Error {
        kind: chorus::client::ErrorKind::TypeConflict,
        code: "type_conflict".into(),
        message: format!("{key} holds a {held}, not a {wanted}"),
        indeterminate: false,
    }
}

/// `chorus set ...`.
pub fn set(command: SetCommand) -> ExitCode {
    match command {
        SetCommand::Get { key, client: args } => {
            let json = args.json;
            run(&args, |client| async move {
                match client.crdt(&key).await? {
                    None => Ok(Outcome::NotFound(format!("{key}: not found"))),
                    Some(c) => match c.value {
                        CrdtValue::Set(elements) => {
                            if json {
                                println!(
                                    "{}",
                                    json!({"key": key, "type": c.type_name, "elements": elements})
                                );
                            } else {
                                for e in elements {
                                    println!("{e}");
                                }
                            }
                            Ok(Outcome::Done)
                        }
                        CrdtValue::Counter(_) => Err(type_conflict(&key, &c.type_name, "set")),
                    },
                }
            })
        }
        SetCommand::Add {
            key,
            elements,
            two_phase,
            client: args,
        } => {
            let json = args.json;
            run(&args, |client| async move {
                let u = if two_phase {
                    let op = CrdtOp::TwoPSet {
                        add: elements,
                        remove: Vec::new(),
                    };
                    client.update(&key, op).await?
                } else {
                    client.set_add(&key, elements).await?
                };
                print_update(&u, json);
                Ok(Outcome::Done)
            })
        }
        SetCommand::Remove {
            key,
            elements,
            client: args,
        } => {
            let json = args.json;
            run(&args, |client| async move {
                let u = client.set_remove(&key, elements).await?;
                print_update(&u, json);
                Ok(Outcome::Done)
            })
        }
    }
}
