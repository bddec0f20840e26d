//! The admin HTTP API (axum). Every answer carries the store revision it reflects in
//! `X-Trellis-Index`, as Consul's API does with `X-Consul-Index`.

mod config;
mod kv;
mod operator;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use trellis_raft_store::StoreNode;

pub const INDEX_HEADER: &str = "x-trellis-index";

pub struct AdminState {
    pub node: StoreNode,
}

pub type State = Arc<AdminState>;

pub fn router(state: State) -> Router {
    Router::new()
        .route("/v1/kv", get(kv::get_all))
        .route("/v1/kv/", get(kv::get_all))
        .route(
            "/v1/kv/{*key}",
            get(kv::get).put(kv::put).delete(kv::delete),
        )
        .route("/v1/apply", post(config::apply))
        .route("/v1/delete", post(config::delete_documents))
        .route("/v1/config/{kind}", get(config::list))
        .route("/v1/config/{kind}/{namespace}", get(config::list_namespace))
        .route(
            "/v1/config/{kind}/{namespace}/{name}",
            get(config::get).put(config::put).delete(config::delete),
        )
        .route("/v1/status/leader", get(operator::leader))
        .route("/v1/status/peers", get(operator::peers))
        .route("/v1/status/ready", get(operator::ready))
        .route(
            "/v1/operator/raft/configuration",
            get(operator::configuration),
        )
        .route("/v1/operator/raft/peer", delete(operator::remove_peer))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(axum::middleware::map_response_with_state(
            state.clone(),
            add_index,
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
