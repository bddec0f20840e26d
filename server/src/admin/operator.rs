//! Cluster status and Raft membership, as `consul operator raft` offers them.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{ApiError, State as AppState};

/// `GET /v1/status/leader`: the leader's address, as a JSON string ("" when none).
pub async fn leader(State(state): State<AppState>) -> Result<Response, ApiError> {
    let status = state.node.status().await?;
    let addr = status
        .members
        .iter()
        .find(|m| Some(m.id) == status.leader)
        .map(|m| m.address.clone())
        .unwrap_or_default();
    Ok(Json(addr).into_response())
}

/// `GET /v1/status/peers`: the voters' addresses.
pub async fn peers(State(state): State<AppState>) -> Result<Response, ApiError> {
    let status = state.node.status().await?;
    let addrs: Vec<String> = status
        .members
        .iter()
        .filter(|m| m.voter)
        .map(|m| m.address.clone())
        .collect();
    Ok(Json(addrs).into_response())
}

/// `GET /v1/status/ready`: 200 once this server is in a cluster with a leader.
pub async fn ready(State(state): State<AppState>) -> Response {
    let status = state.node.status().await.ok();
    let leader = status.as_ref().and_then(|s| s.leader);
    let body = serde_json::json!({
        "ready": leader.is_some() && !state.node.cluster_id().is_empty(),
        "node_id": state.node.id(),
        "cluster_id": state.node.cluster_id(),
        "leader": leader,
    });
    let code = if body["ready"] == true {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// `GET /v1/operator/raft/configuration`: every server with its role and progress.
pub async fn configuration(State(state): State<AppState>) -> Result<Response, ApiError> {
    let status = state.node.status().await?;
    Ok(Json(status).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemovePeer {
    id: Option<u64>,
    address: Option<String>,
}

/// `DELETE /v1/operator/raft/peer?id=N` (or `?address=HOST:PORT`).
pub async fn remove_peer(
    State(state): State<AppState>,
    Query(q): Query<RemovePeer>,
) -> Result<Response, ApiError> {
    let status = state.node.status().await?;
    let id = match (q.id, q.address) {
        (Some(id), None) => id,
        (None, Some(addr)) => status
            .members
            .iter()
            .find(|m| m.address == addr)
            .map(|m| m.id)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("address: no member at {addr}"),
                )
            })?,
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "give exactly one of the query parameters id or address",
            ));
        }
    };
    if !status.members.iter().any(|m| m.id == id) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("id: {id} is not a member"),
        ));
    }
    state.node.remove_peer(id).await?;
    Ok(Json(serde_json::json!({ "removed": id })).into_response())
}
