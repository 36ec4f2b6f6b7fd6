//! The JSON body of a CRDT update as the HTTP API accepts it (`POST /v1/crdt/{key}`), parsed
//! into a [`CrdtOp`]. Pure parsing, no I/O: the HTTP handler calls it and answers 400 with the
//! error's text; the fuzz targets (`fuzzing`) call it on arbitrary bytes.
//!
//! One operation per body: `{"type":"gcounter","increment":N}` (N ≥ 1),
//! `{"type":"pncounter","increment":N}`, `{"type":"2pset","add":[...],"remove":[...]}`,
//! `{"type":"orset","add":[...],"remove":[...],"context":"..."}`. Unknown fields are refused.
//! Element sizes and counts are checked by the node core, not here.

use serde::Deserialize;

use crate::node::{Context, CrdtOp};

/// One update, as posted: `type` and the fields that type takes (`increment` for counters,
/// `add`/`remove` for sets, `context` for an OR-Set remove).
#[derive(Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UpdateBody {
    /// `gcounter`, `pncounter`, `2pset` or `orset`.
    #[serde(rename = "type")]
    pub type_name: String,
    /// Counters: the amount (G-Counter ≥ 1; PN-Counter any non-zero integer).
    #[cfg_attr(feature = "server", schema(value_type = Option<i64>))]
    pub increment: Option<serde_json::Number>,
    /// Sets: elements to add (each at most 1 KiB).
    pub add: Option<Vec<String>>,
    /// Sets: elements to remove (2P-Set: for good).
    pub remove: Option<Vec<String>>,
    /// OR-Set removes: the context of the read that saw the elements.
    pub context: Option<String>,
}

/// Why a posted CRDT update was refused (the HTTP API answers 400 with this text). Nothing
/// was changed.
#[derive(Debug, thiserror::Error)]
pub enum UpdateBodyError {
    /// Not JSON, or not the shape of an operation.
    #[error("the body is not a valid operation: {0}")]
    Json(#[from] serde_json::Error),
    /// A well-formed body whose fields do not fit its type.
    #[error("{0}")]
    Invalid(String),
}

fn invalid(message: impl Into<String>) -> UpdateBodyError {
    UpdateBodyError::Invalid(message.into())
}

/// Turns the posted JSON into an update of the named type, for `key` (an OR-Set context must
/// have been issued for it).
pub fn parse_update(body: &[u8], key: &[u8]) -> Result<CrdtOp, UpdateBodyError> {
    let b: UpdateBody = serde_json::from_slice(body)?;
    let no_sets = |b: &UpdateBody| {
        if b.add.is_some() || b.remove.is_some() || b.context.is_some() {
            Err(invalid(format!(
                "a {} operation has only \"increment\"",
                b.type_name
            )))
        } else {
            Ok(())
        }
    };
    let sets_only = |b: &UpdateBody| {
        if b.increment.is_some() {
            Err(invalid(format!(
                "a {} operation has no \"increment\"",
                b.type_name
            )))
        } else {
            Ok(())
        }
    };
    match b.type_name.as_str() {
        "gcounter" => {
            no_sets(&b)?;
            let n = b
                .increment
                .as_ref()
                .ok_or_else(|| invalid("a gcounter operation needs \"increment\""))?;
            let increment = n
                .as_u64()
                .filter(|&n| n >= 1 && i64::try_from(n).is_ok())
                .ok_or_else(|| {
                    invalid(format!(
                        "a gcounter increment is an integer from 1 to {}, not {n}",
                        i64::MAX
                    ))
                })?;
            Ok(CrdtOp::GCounter { increment })
        }
        "pncounter" => {
            no_sets(&b)?;
            let n = b
                .increment
                .as_ref()
                .ok_or_else(|| invalid("a pncounter operation needs \"increment\""))?;
            let increment = n.as_i64().ok_or_else(|| {
                invalid(format!(
                    "a pncounter increment is an integer within ±2^63, not {n}"
                ))
            })?;
            Ok(CrdtOp::PNCounter { increment })
        }
        "2pset" => {
            sets_only(&b)?;
            if b.context.is_some() {
                return Err(invalid("a 2pset operation takes no context"));
            }
            Ok(CrdtOp::TwoPSet {
                add: b.add.unwrap_or_default(),
                remove: b.remove.unwrap_or_default(),
            })
        }
        "orset" => {
            sets_only(&b)?;
            let context = match &b.context {
                None => None,
                Some(t) => Some(Context::from_token(t, key).map_err(|e| invalid(e.to_string()))?),
            };
            Ok(CrdtOp::ORSet {
                add: b.add.unwrap_or_default(),
                remove: b.remove.unwrap_or_default(),
                context,
            })
        }
        other => Err(invalid(format!(
            "unknown type {other:?}: one of gcounter, pncounter, 2pset, orset"
        ))),
    }
}
