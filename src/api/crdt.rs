//! The HTTP endpoints of CRDT keys (G-Counter, PN-Counter, 2P-Set, OR-Set).
//!
//! - `GET /v1/crdt/{key}` → 200 `{"type": "...", "value": ..., "context": "..."|null}`: counters
//!   give an integer, sets a sorted array of strings; the context (OR-Sets only) is what a
//!   remove sends back to remove exactly what the read saw. 404 when the key was never written,
//!   409 when it is a register.
//! - `POST /v1/crdt/{key}` with one JSON operation: `{"type":"gcounter","increment":N}` (N ≥ 1),
//!   `{"type":"pncounter","increment":N}`, `{"type":"2pset","add":[...],"remove":[...]}`,
//!   `{"type":"orset","add":[...],"remove":[...],"context":"..."}`. Header `x-chorus-op-id`
//!   names the operation (printable ASCII, at most 128 bytes): sending the same id again,
//!   to any node, applies it at most once (within the window of [`crate::crdt::OpLog`]); without
//!   one, this node mints an id. Answers 204, or 200 with `{"type", "value", "context", "op_id",
//!   "replayed", "notes"}` when `?return=value` is asked for or when part of the update had no
//!   effect (`notes` says what and why); always with `x-chorus-acks`, `x-chorus-op-id` and
//!   `x-chorus-sync`. Errors as for registers: 400 malformed JSON, unknown type, a counter
//!   overflow, a bad op id or context, an element over 1 KiB; 409 a key of another type;
//!   503 quorum not reached (`indeterminate` says whether it may have been applied: retry with
//!   the same op id).
//!
//! Handlers only translate: the node core validates again and does the work.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::http::{
    bad, call, error, failure, header, key_after, options_of, wrong_reply, ApiState, Refusal,
    ACKS_HEADER, OP_ID_HEADER, SYNC_HEADER,
};
use crate::crdt::check_op_id;
use crate::node::{ClientError, ClientOp, ClientReply, ClientRequest, Context, CrdtOp, CrdtValue};
use crate::protocol::crdt_json::UpdateBody;

/// The path prefix of the CRDT endpoints.
const CRDT_PREFIX: &str = "/v1/crdt/";

/// A CRDT key as clients see it.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct View {
    /// `gcounter`, `pncounter`, `2pset` or `orset`.
    #[serde(rename = "type")]
    type_name: String,
    /// A counter's integer (a decimal string beyond 64 bits), or a set's sorted elements.
    #[schema(value_type = Object)]
    value: serde_json::Value,
    /// OR-Sets: the context a remove sends back to remove exactly what this read saw.
    context: Option<String>,
}

/// The answer to an update, when it has a body.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct Updated {
    /// The key's type.
    #[serde(rename = "type")]
    type_name: String,
    /// The key's value after the update (as in [`View`]).
    #[schema(value_type = Object)]
    value: serde_json::Value,
    /// OR-Sets: the context after the update.
    context: Option<String>,
    /// The operation's id.
    op_id: String,
    /// Whether this op id had been applied already (the update was not applied again).
    replayed: bool,
    /// Parts of the update that had no effect, and why.
    notes: Vec<String>,
}

pub(super) fn value_json(v: &CrdtValue) -> serde_json::Value {
    match v {
        CrdtValue::Counter(n) => match i64::try_from(*n) {
            Ok(n) => serde_json::Value::from(n),
            // Beyond i64 (only with many actors near their limits): exact, as a string.
            Err(_) => serde_json::Value::from(n.to_string()),
        },
        CrdtValue::Set(elements) => serde_json::Value::from(elements.clone()),
    }
}

/// `GET /v1/crdt/{key}`.
#[utoipa::path(get, path = "/v1/crdt/{*key}", tag = "crdt",
    params(
        ("key" = String, Path, description = "The key, percent-encoded (any bytes)"),
        super::openapi::DataParams,
        ("x-request-id" = Option<String>, Header, description = "The request's id")),
    responses(
        (status = 200, description = "The key's type and value", body = View),
        (status = 404, description = "Never written (`not_found`)",
            body = super::http::ErrorBody),
        super::openapi::DataErrors))]
pub(super) async fn crdt_get(
    State(api): State<ApiState>,
    uri: Uri,
    RawQuery(query): RawQuery,
) -> Response {
    let request = match (key_after(&uri, CRDT_PREFIX, &api.limits), options_of(query)) {
        (Ok(key), Ok(options)) => ClientRequest {
            key,
            op: ClientOp::Get,
            options,
        },
        (Err(r), _) | (_, Err(r)) => return *r.0,
    };
    let read = match call(&api, request).await {
        Ok(ClientReply::Read(r)) => r,
        Ok(ClientReply::Failed(e)) => return failure(&e, false),
        Ok(_) => return wrong_reply(),
        Err(resp) => return resp,
    };
    if !read.parts.is_empty() {
        return super::http::contested(&read);
    }
    match (read.type_name, read.crdt) {
        (None, _) => error(StatusCode::NOT_FOUND, "not_found", "no such key".into()),
        (Some(t), Some(value)) => Json(View {
            type_name: t,
            value: value_json(&value),
            context: read.context.as_ref().map(Context::to_token),
        })
        .into_response(),
        (Some(t), None) => failure(
            &ClientError::TypeConflict(format!(
                "the key holds a {t}, not a CRDT; read it at /v1/kv/"
            )),
            false,
        ),
    }
}

/// Splits `return=value` off the query string (the rest are the request options).
fn split_return(query: Option<String>) -> Result<(bool, Option<String>), Refusal> {
    let Some(q) = query else {
        return Ok((false, None));
    };
    let mut want = false;
    let mut rest = Vec::new();
    for part in q.split('&').filter(|p| !p.is_empty()) {
        match part.strip_prefix("return=") {
            Some("value") => want = true,
            Some(other) => return Err(bad(format!("return={other:?}: only return=value"))),
            None => rest.push(part),
        }
    }
    Ok((want, (!rest.is_empty()).then(|| rest.join("&"))))
}

/// A fresh operation id for an update sent without one: 128 bits from the operating system's
/// random source, as 32 lowercase hex characters. Drawn anew for every update and unrelated to
/// request ids, so no client can guess, and send first, the id of another client's update
/// (which would make that update answer 204 while applying nothing).
fn mint_op_id() -> Result<String, rand::rngs::SysError> {
    use rand::TryRng as _;
    let mut bits = [0u8; 16];
    rand::rngs::SysRng.try_fill_bytes(&mut bits)?;
    Ok(format!("{:032x}", u128::from_be_bytes(bits)))
}

fn op_id_of(headers: &HeaderMap) -> Result<String, Refusal> {
    match headers.get(OP_ID_HEADER) {
        None => mint_op_id().map_err(|e| {
            tracing::warn!("the operating system's random source failed: {e}");
            let e = ClientError::Internal(format!(
                "the node could not draw a random op id ({e}); send {OP_ID_HEADER}"
            ));
            Refusal(Box::new(failure(&e, true)))
        }),
        Some(v) => {
            let id = v
                .to_str()
                .map_err(|_| bad("the op id header is not printable ASCII"))?;
            check_op_id(id).map_err(|e| bad(e.to_string()))?;
            Ok(id.to_owned())
        }
    }
}

/// Turns the posted JSON into an update of the named type (the parsing itself is
/// [`crate::protocol::crdt_json`], in the core so that it is fuzzed without the server).
fn parse_update(body: &[u8], key: &[u8]) -> Result<CrdtOp, Refusal> {
    crate::protocol::crdt_json::parse_update(body, key).map_err(|e| bad(e.to_string()))
}

/// `POST /v1/crdt/{key}`.
#[utoipa::path(post, path = "/v1/crdt/{*key}", tag = "crdt",
    params(
        ("key" = String, Path, description = "The key, percent-encoded (any bytes)"),
        super::openapi::DataParams,
        super::openapi::ReturnParam,
        ("x-chorus-op-id" = Option<String>, Header, description = "The operation's id \
            (printable ASCII, at most 128 bytes): the same id sent again, to any node, is \
            applied at most once. Minted when absent"),
        ("x-request-id" = Option<String>, Header, description = "The request's id")),
    request_body(content = UpdateBody, content_type = "application/json"),
    responses(
        (status = 204, description = "Applied",
            headers(
                ("x-chorus-acks" = u32, description = "Replicas that acknowledged durably"),
                ("x-chorus-op-id" = String, description = "The operation's id"),
                ("x-chorus-sync" = String, description = "The sync policy that applied"))),
        (status = 200, description = "Applied; the value after it (`?return=value`, or when \
            part of the update had no effect: see `notes`)", body = Updated,
            headers(
                ("x-chorus-acks" = u32, description = "Replicas that acknowledged durably"),
                ("x-chorus-op-id" = String, description = "The operation's id"),
                ("x-chorus-sync" = String, description = "The sync policy that applied"))),
        super::openapi::DataErrors))]
pub(super) async fn crdt_post(
    State(api): State<ApiState>,
    uri: Uri,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "the operation is larger than the body limit".into(),
            )
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", e.body_text()),
    };
    let prepared = (|| {
        let key = key_after(&uri, CRDT_PREFIX, &api.limits)?;
        let (want_value, rest) = split_return(query)?;
        let options = options_of(rest)?;
        let op_id = op_id_of(&headers)?;
        let op = parse_update(&body, &key)?;
        Ok::<_, Refusal>((
            want_value,
            ClientRequest {
                key,
                op: ClientOp::Update { op, op_id },
                options,
            },
        ))
    })();
    let (want_value, request) = match prepared {
        Ok(p) => p,
        Err(r) => return *r.0,
    };
    let u = match call(&api, request).await {
        Ok(ClientReply::Updated(u)) => u,
        Ok(ClientReply::Failed(e)) => return failure(&e, true),
        Ok(_) => return wrong_reply(),
        Err(resp) => return resp,
    };
    let mut resp = if want_value || !u.notes.is_empty() {
        Json(Updated {
            type_name: u.type_name,
            value: value_json(&u.value),
            context: u.context.as_ref().map(Context::to_token),
            op_id: u.op_id.clone(),
            replayed: u.replayed,
            notes: u.notes,
        })
        .into_response()
    } else {
        StatusCode::NO_CONTENT.into_response()
    };
    let h = resp.headers_mut();
    h.insert(ACKS_HEADER, header(&u.acks.to_string()));
    h.insert(OP_ID_HEADER, header(&u.op_id));
    h.insert(SYNC_HEADER, header(api.sync));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(r: Result<CrdtOp, Refusal>) -> Result<CrdtOp, StatusCode> {
        r.map_err(|e| e.0.status())
    }

    #[test]
    fn operations_parse_by_type_and_bad_ones_are_refused() {
        let p = |s: &str| status(parse_update(s.as_bytes(), b"k"));
        assert_eq!(
            p(r#"{"type":"gcounter","increment":3}"#),
            Ok(CrdtOp::GCounter { increment: 3 })
        );
        assert_eq!(
            p(r#"{"type":"pncounter","increment":-3}"#),
            Ok(CrdtOp::PNCounter { increment: -3 })
        );
        assert_eq!(
            p(r#"{"type":"2pset","add":["a"]}"#),
            Ok(CrdtOp::TwoPSet {
                add: vec!["a".into()],
                remove: vec![]
            })
        );
        for bad in [
            "not json",
            r#"{"type":"gcounter","increment":0}"#,
            r#"{"type":"gcounter","increment":-1}"#,
            r#"{"type":"gcounter","increment":1.5}"#,
            r#"{"type":"gcounter","increment":9223372036854775808}"#,
            r#"{"type":"gcounter"}"#,
            r#"{"type":"gcounter","increment":1,"add":["a"]}"#,
            r#"{"type":"pncounter","increment":99999999999999999999}"#,
            r#"{"type":"2pset","increment":1}"#,
            r#"{"type":"2pset","add":["a"],"context":"x"}"#,
            r#"{"type":"orset","remove":["a"],"context":"!!"}"#,
            r#"{"type":"register"}"#,
            r#"{"type":"orset","extra":1}"#,
        ] {
            assert_eq!(p(bad), Err(StatusCode::BAD_REQUEST), "{bad}");
        }
    }

    #[test]
    fn return_value_is_split_from_the_options() {
        let (want, rest) = split_return(Some("w=3&return=value".into())).ok().unwrap();
        assert!(want);
        assert_eq!(rest.as_deref(), Some("w=3"));
        assert!(split_return(Some("return=all".into())).is_err());
        let (want, rest) = split_return(None).ok().unwrap();
        assert!(!want && rest.is_none());
    }

    #[test]
    fn minted_op_ids_are_valid_and_distinct() {
        let (a, b) = (mint_op_id().unwrap(), mint_op_id().unwrap());
        assert_ne!(a, b);
        assert!(check_op_id(&a).is_ok());
    }

    /// How many leading characters two ids share.
    fn common_prefix(a: &str, b: &str) -> usize {
        a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count()
    }

    #[test]
    fn minted_op_ids_are_128_random_bits_in_hex() {
        let ids: Vec<String> = (0..1000).map(|_| mint_op_id().unwrap()).collect();
        for id in &ids {
            assert_eq!(id.len(), 32, "{id}");
            assert!(
                id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
                "{id}"
            );
            assert!(check_op_id(id).is_ok());
        }
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        // Not a prefix and a counter: consecutive ids share no prefix or suffix beyond what
        // chance gives (8 hex characters by chance: about 1 in 4 billion per pair), and no
        // two of the 1,000 share 11 leading characters (sorted neighbours are the closest).
        for pair in ids.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            assert!(common_prefix(a, b) < 8, "{a} {b}");
            let (ra, rb): (String, String) = (a.chars().rev().collect(), b.chars().rev().collect());
            assert!(common_prefix(&ra, &rb) < 8, "{a} {b}");
        }
        let mut sorted = ids.clone();
        sorted.sort();
        for pair in sorted.windows(2) {
            assert!(common_prefix(&pair[0], &pair[1]) <= 10, "{pair:?}");
        }
        // About half the 128,000 bits are set (a standard deviation is about 180).
        let ones: u32 = ids
            .iter()
            .map(|id| u128::from_str_radix(id, 16).unwrap().count_ones())
            .sum();
        assert!((62_000..66_000).contains(&ones), "{ones} bits set");
    }

    #[test]
    fn minted_op_ids_share_nothing_with_request_ids() {
        for _ in 0..100 {
            let before = mint_op_id().unwrap();
            let request = super::super::http::mint_request_id();
            let after = mint_op_id().unwrap();
            let (prefix, _counter) = request.split_once('-').unwrap();
            for op in [&before, &after] {
                assert!(!op.contains('-'), "{op}");
                // No 10 characters of the request id's random part (by chance: about 1 in
                // 50 million per op id).
                for part in prefix.as_bytes().windows(10) {
                    let part = std::str::from_utf8(part).unwrap();
                    assert!(!op.contains(part), "{op} {request}");
                }
            }
            assert!(common_prefix(&before, &after) < 8, "{before} {after}");
        }
    }

    #[test]
    fn an_update_without_an_op_id_gets_a_minted_one() {
        let minted = op_id_of(&HeaderMap::new()).ok().unwrap();
        assert_eq!(minted.len(), 32);
        assert_ne!(op_id_of(&HeaderMap::new()).ok().unwrap(), minted);
        let mut headers = HeaderMap::new();
        headers.insert(OP_ID_HEADER, "client-chosen-1".parse().unwrap());
        assert_eq!(op_id_of(&headers).ok().unwrap(), "client-chosen-1");
    }
}
