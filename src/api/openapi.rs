//! The OpenAPI 3.1 document of the HTTP API (`GET /v1/openapi.json`).
//!
//! Generated, never written by hand: every handler carries a `#[utoipa::path]` description,
//! the router is built from those descriptions (`utoipa-axum`), so a route cannot exist without
//! its entry, and every body is the schema of the Rust type the handler serialises. This module
//! holds the document's frame (title, tags, the bearer-token scheme), the query parameters the
//! data endpoints share, the error answers they share, and the one rewrite the document needs:
//! axum's catch-all `{*key}` segments are plain `{key}` parameters in OpenAPI.

use std::sync::OnceLock;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, IntoResponses, Modify, OpenApi};

use super::http::ErrorBody;

/// The document's frame; the paths come from the router.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Chorus HTTP API",
        description = "A leaderless, Dynamo-style, eventually consistent key-value store. \
            Any node answers any request. Keys are any byte string, percent-encoded in the \
            path (a `/` inside a key may stay literal). With a client token configured \
            (`--client-token-file`), every endpoint but `/health` needs \
            `Authorization: Bearer <token>`; leave, remove and repair always need the \
            operator token (`--operator-token-file`). Every answer carries `x-request-id`. Errors are \
            JSON `{\"error\": code, \"message\": text}` (with `indeterminate` on a write's \
            503); unknown paths answer 404 `not_found`, an empty key 400 `bad_request`."
    ),
    tags(
        (name = "kv", description = "Registers: values with siblings and causal contexts"),
        (name = "crdt", description = "G-Counter, PN-Counter, 2P-Set, OR-Set keys"),
        (name = "cluster", description = "Membership, partitions, repair"),
        (name = "operations", description = "Health, metrics, status page, this document")
    ),
    modifiers(&BearerToken)
)]
pub struct ApiDoc;

struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "client_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "operator_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        // Optional: a node without a client token accepts requests without one. The
        // operations that change the cluster name `operator_token` themselves.
        openapi.security = Some(vec![
            utoipa::openapi::security::SecurityRequirement::default(),
            utoipa::openapi::security::SecurityRequirement::new(
                "client_token",
                Vec::<String>::new(),
            ),
        ]);
    }
}

/// Query parameters of every data endpoint (registers and CRDTs); the parser
/// ([`super::http::options_of`]) accepts exactly these and refuses any other.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Read by the document; the handlers parse the query themselves.
pub(super) struct DataParams {
    /// Replies to wait for on a read (1..=N; default: a majority of N).
    r: Option<u32>,
    /// Durable acknowledgements to wait for on a write (1..=N; default: a majority of N).
    w: Option<u32>,
    /// Only the key's N primary replicas count towards `w` (no sloppy quorum).
    strict: Option<bool>,
    /// Give up waiting after this many milliseconds (default: the node's request timeout).
    timeout_ms: Option<u64>,
}

/// Query parameter of `POST /v1/crdt/{key}` beside [`DataParams`].
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Read by the document.
pub(super) struct ReturnParam {
    /// `value`: answer 200 with the key's value after the update instead of 204.
    #[param(rename = "return", pattern = "^value$")]
    r#return: Option<String>,
}

/// Query parameter of `GET /v1/partitions`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Read by the document.
pub(super) struct PartitionsParams {
    /// Also report the bytes each partition holds (reads every key).
    bytes: Option<bool>,
}

/// Query parameter of `POST /v1/repair`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Read by the document.
pub(super) struct RepairParams {
    /// Repair only this partition (default: every partition this node replicates).
    partition: Option<u16>,
}

/// Errors every data endpoint may answer.
#[derive(IntoResponses)]
#[allow(dead_code)] // Read by the document.
pub(super) enum DataErrors {
    /// Malformed input; nothing changed.
    #[response(
        status = 400,
        description = "Malformed key, query, context, op id or body (`bad_request`); nothing changed"
    )]
    BadRequest(ErrorBody<'static>),
    /// Missing or wrong token.
    #[response(
        status = 401,
        description = "The node has a client token and the request \
        does not carry it (`unauthorized`)"
    )]
    Unauthorized(ErrorBody<'static>),
    /// The key holds another type.
    #[response(
        status = 409,
        description = "A write of another type than the key's (`type_conflict`; nothing \
            changed), or a read of a contested key (`contested`: writes of several types raced; \
            the body then also lists every part with its `type`, `values` or `value`, and \
            `context`)"
    )]
    Conflict(ErrorBody<'static>),
    /// Over a size limit.
    #[response(
        status = 413,
        description = "Key or value over the limit (`too_large`)"
    )]
    TooLarge(ErrorBody<'static>),
    /// Internal failure.
    #[response(status = 500, description = "Internal failure (`internal`)")]
    Internal(ErrorBody<'static>),
    /// Not served.
    #[response(
        status = 503,
        description = "Quorum not reached (`unavailable`), node overloaded (`overloaded`: its \
            queue of requests is full; nothing applied) or shutting down (`shutting_down`). \
            On a write, `indeterminate` says whether it may have been applied."
    )]
    Unavailable(ErrorBody<'static>),
}

/// The document as JSON, built once.
pub fn document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let (_, api) = super::http::routes().split_for_parts();
        let api = catch_all_to_parameters(api);
        // Serialising a document of plain maps and strings cannot fail.
        api.to_pretty_json().unwrap_or_default()
    })
}

/// `{*key}` (axum's catch-all segment) → `{key}` (an OpenAPI path parameter).
fn catch_all_to_parameters(mut api: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    let paths = std::mem::take(&mut api.paths.paths);
    api.paths.paths = paths
        .into_iter()
        .map(|(path, item)| (path.replace("{*", "{"), item))
        .collect();
    api
}

/// `GET /v1/openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API",
        content_type = "application/json", body = Object))
)]
pub async fn openapi_json() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        document(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_data_parameters_are_the_ones_the_parser_accepts() {
        let documented: Vec<String> = DataParams::into_params(|| None)
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(documented, ["r", "w", "strict", "timeout_ms"]);
        for name in &documented {
            let value = if name == "strict" { "true" } else { "1" };
            assert!(
                super::super::http::options_of(Some(format!("{name}={value}"))).is_ok(),
                "{name}"
            );
        }
        assert!(super::super::http::options_of(Some("consistency=all".into())).is_err());
    }

    #[test]
    fn the_document_is_openapi_3_1_with_plain_path_parameters() {
        let doc: serde_json::Value = serde_json::from_str(document()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().unwrap();
        assert!(paths.contains_key("/v1/kv/{key}"));
        assert!(paths.keys().all(|p| !p.contains('*')), "{paths:?}");
    }
}
