//! The admin HTTP API (axum). Every answer carries the store revision it reflects in
//! `X-Trellis-Index`, as Consul's API does with `X-Consul-Index`.
//!
//! Every operation is declared once, in [`ROUTES`]: the router is built from that table
//! and so is the OpenAPI document at `/v1/openapi.json`, so the two cannot disagree.

mod acl;
mod blocking;
mod config;
mod kv;
mod nodes;
mod openapi;
mod operator;

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, on};
use trellis_raft_store::StoreNode;

pub use acl::AclToken;

pub const INDEX_HEADER: &str = "x-trellis-index";

pub struct AdminState {
    pub node: StoreNode,
    /// When set, every request but `GET /v1/status/*` must present this token.
    pub acl_token: Option<AclToken>,
}

pub type State = Arc<AdminState>;

/// One operation of the admin API, as the OpenAPI document describes it.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// `GET`, `PUT`, `POST` or `DELETE`.
    pub method: &'static str,
    /// In axum's syntax, which is OpenAPI's except for the catch-all `{*key}`.
    pub path: &'static str,
    pub summary: &'static str,
    /// Query parameters, by name; [`openapi`] describes each name once.
    pub query: &'static [&'static str],
    /// What the request body holds, for operations that take one.
    pub body: Option<&'static str>,
}

/// Declares every route once: the table the OpenAPI document is made from, and the
/// function that registers the same routes on the router.
macro_rules! routes {
    ($( $method:ident $path:literal => $handler:expr, $summary:literal,
        query [$($q:literal),*] $(, body $body:literal)? ; )*) => {
        /// Every operation the admin API serves.
        pub const ROUTES: &[Route] = &[$(
            Route {
                method: stringify!($method),
                path: $path,
                summary: $summary,
                query: &[$($q),*],
                body: routes!(@body $($body)?),
            },
        )*];

        fn add_routes(router: Router<State>) -> Router<State> {
            router $( .route($path, on(MethodFilter::$method, $handler)) )*
        }
    };
    (@body) => { None };
    (@body $body:literal) => { Some($body) };
}

routes! {
    GET "/v1/kv" => kv::get_all, "Every key (as ?recurse from the root)",
        query ["recurse", "keys", "raw", "stale", "index", "wait"];
    GET "/v1/kv/" => kv::get_all, "Every key (as ?recurse from the root)",
        query ["recurse", "keys", "raw", "stale", "index", "wait"];
    GET "/v1/kv/{*key}" => kv::get, "One key, or every key under a prefix with ?recurse",
        query ["recurse", "keys", "raw", "stale", "index", "wait"];
    PUT "/v1/kv/{*key}" => kv::put, "Writes a key; answers true, or false when ?cas did not match",
        query ["cas", "recurse"], body "the raw value";
    DELETE "/v1/kv/{*key}" => kv::delete, "Deletes a key, or every key under it with ?recurse",
        query ["cas", "recurse"];
    POST "/v1/apply" => config::apply,
        "Validates a multi-document YAML or JSON body whole and stores it as one atomic batch",
        query ["dry-run", "cas", "source"], body "YAML (--- separated) or JSON (one object, an array, or several objects) mesh resources";
    POST "/v1/delete" => config::delete_documents,
        "Deletes every resource a multi-document body names, as one atomic batch",
        query ["dry-run", "cas", "source"], body "YAML or JSON documents naming the resources";
    GET "/v1/config/{kind}" => config::list, "Lists one kind, in every namespace or one",
        query ["namespace", "labelSelector", "index", "wait", "stale"];
    GET "/v1/config/{kind}/{namespace}" => config::list_namespace, "Lists one kind in one namespace",
        query ["labelSelector", "index", "wait", "stale"];
    GET "/v1/config/{kind}/{namespace}/{name}" => config::get,
        "One resource; X-Trellis-Index is the revision of its last change",
        query ["index", "wait", "stale"];
    PUT "/v1/config/{kind}/{namespace}/{name}" => config::put,
        "Creates or replaces one resource, which must name itself as the path does",
        query ["dry-run", "cas", "source"], body "one YAML or JSON mesh resource";
    DELETE "/v1/config/{kind}/{namespace}/{name}" => config::delete, "Deletes one resource",
        query ["dry-run", "cas"];
    GET "/v1/nodes" => nodes::list, "Every node an agent runs on, with the config version it applied",
        query ["stale"];
    GET "/v1/nodes/{name}" => nodes::get,
        "One node: versions sent and applied, the last refused push, its workloads and their health",
        query ["stale"];
    GET "/v1/health/service/{name}" => nodes::service_health,
        "A service's endpoints as agents registered them, with their health",
        query ["namespace", "passing", "stale"];
    GET "/v1/status/leader" => operator::leader, "The leader's address (\"\" when there is none)",
        query [];
    GET "/v1/status/peers" => operator::peers, "The voters' addresses", query [];
    GET "/v1/status/ready" => operator::ready,
        "200 once this server is in a cluster with a leader, 503 before", query [];
    GET "/v1/operator/raft/configuration" => operator::configuration,
        "Every server with its role and progress", query [];
    DELETE "/v1/operator/raft/peer" => operator::remove_peer,
        "Removes a server from the Raft group", query ["id", "address"];
    GET "/v1/openapi.json" => openapi::document, "This document", query [];
}

pub fn router(state: State) -> Router {
    add_routes(Router::new())
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        // Layers run outside in: the token is checked first, then errors become JSON,
        // then the revision is added to whatever answer came out.
        .layer(axum::middleware::map_response_with_state(
            state.clone(),
            add_index,
        ))
        .layer(axum::middleware::from_fn(json_errors))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            acl::require_token,
        ))
        .with_state(state)
}

/// Adds the server's current revision when a handler did not set a more precise one.
async fn add_index(
    axum::extract::State(state): axum::extract::State<State>,
    mut response: Response,
) -> Response {
    let headers = response.headers_mut();
    if !headers.contains_key(INDEX_HEADER) {
        let revision = *state.node.revision().borrow();
        headers.insert(
            HeaderName::from_static(INDEX_HEADER),
            HeaderValue::from(revision),
        );
    }
    response
}

/// Errors the handlers did not write themselves (axum's refusals of a bad query string
/// or body, a method the path does not take, an empty 404 from the KV API) are turned
/// into the same JSON `{"error": ...}` every other error uses, so clients parse one shape.
async fn json_errors(request: Request, next: Next) -> Response {
    let what = format!("{} {}", request.method(), request.uri().path());
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // axum's refusals are one short line; anything longer is cut rather than buffered.
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let reason = status.canonical_reason().unwrap_or("error");
    let message = if status == StatusCode::METHOD_NOT_ALLOWED {
        let allowed = parts
            .headers
            .get(header::ALLOW)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        format!("{what}: method not allowed (allowed: {allowed})")
    } else if text.is_empty() {
        format!("{what}: {reason}")
    } else {
        format!("{what}: {text}")
    };
    parts.headers.remove(header::CONTENT_TYPE);
    parts.headers.remove(header::CONTENT_LENGTH);
    let mut answer = ApiError::new(status, message).into_response();
    for (name, value) in parts.headers.iter() {
        answer.headers_mut().insert(name.clone(), value.clone());
    }
    answer
}

/// An error answer: JSON `{"error": "..."}` with a fitting status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    details: Option<serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            details: None,
        }
    }

    /// An error with more fields beside `error` (for instance every refused document).
    pub fn with_details(
        status: StatusCode,
        message: impl Into<String>,
        details: serde_json::Value,
    ) -> Self {
        ApiError {
            details: Some(details),
            ..ApiError::new(status, message)
        }
    }
}

impl From<trellis_raft_store::Error> for ApiError {
    fn from(e: trellis_raft_store::Error) -> Self {
        use trellis_raft_store::Error as E;
        let status = match &e {
            E::NoLeader(_) => StatusCode::SERVICE_UNAVAILABLE,
            E::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            E::Compacted { .. } => StatusCode::GONE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "error": self.message });
        if let (Some(serde_json::Value::Object(extra)), Some(obj)) =
            (self.details, body.as_object_mut())
        {
            obj.extend(extra);
        }
        (self.status, axum::Json(body)).into_response()
    }
}

pub(crate) fn with_index(revision: u64, body: impl IntoResponse) -> Response {
    let mut response = body.into_response();
    response.headers_mut().insert(
        HeaderName::from_static(INDEX_HEADER),
        HeaderValue::from(revision),
    );
    response
}
