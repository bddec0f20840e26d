//! The nodes streaming from agents: what each runs, which version its proxy applied, and
//! why it refused the last push it refused.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use trellis_api::discovery::{ENDPOINTS_PREFIX, NODES_PREFIX, NodeStatus, parse_endpoint_key};

use super::{ApiError, State as AppState};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NodesQuery {
    stale: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HealthQuery {
    namespace: Option<String>,
    stale: Option<String>,
    /// Only endpoints that take traffic (Consul's `?passing`).
    passing: Option<String>,
}

/// `GET /v1/health/service/{name}`: the service's endpoints as agents registered them, with
/// their health (Consul's health endpoint, in Trellis's JSON).
pub async fn service_health(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<HealthQuery>,
) -> Result<Response, ApiError> {
    let ns = q.namespace.as_deref().unwrap_or("default");
    let prefix = format!("{ENDPOINTS_PREFIX}{ns}/{name}/");
    let (revision, kvs, _) = state
        .node
        .range(prefix.as_bytes(), true, 0, q.stale.is_some())
        .await?;
    let items: Vec<serde_json::Value> = kvs
        .iter()
        .filter_map(|kv| {
            let ep: trellis_api::discovery::StoredEndpoint =
                serde_json::from_slice(&kv.value).ok()?;
            if q.passing.is_some() && !ep.health.takes_traffic() {
                return None;
            }
            let mut v = serde_json::to_value(&ep).ok()?;
            v["id"] = serde_json::Value::String(
                String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned(),
            );
            Some(v)
        })
        .collect();
    Ok(super::with_index(
        revision,
        Json(serde_json::json!({ "items": items })),
    ))
}

fn decode(kv_value: &[u8]) -> Option<NodeStatus> {
    serde_json::from_slice(kv_value).ok()
}

/// `GET /v1/nodes`: every node a server has heard from.
pub async fn list(
    State(state): State<AppState>,
    Query(q): Query<NodesQuery>,
) -> Result<Response, ApiError> {
    let (_, kvs, _) = state
        .node
        .range(NODES_PREFIX.as_bytes(), true, 0, q.stale.is_some())
        .await?;
    let items: Vec<NodeStatus> = kvs.iter().filter_map(|kv| decode(&kv.value)).collect();
    Ok(Json(serde_json::json!({ "items": items })).into_response())
}

/// `GET /v1/nodes/{name}`: one node, with the workloads it registered and their health.
pub async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<NodesQuery>,
) -> Result<Response, ApiError> {
    let stale = q.stale.is_some();
    let key = format!("{NODES_PREFIX}{name}");
    let (_, mut kvs, _) = state.node.range(key.as_bytes(), false, 0, stale).await?;
    let Some(status) = kvs.pop().and_then(|kv| decode(&kv.value)) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("node {name:?}: no server has heard from it"),
        ));
    };
    let (_, endpoints, _) = state
        .node
        .range(ENDPOINTS_PREFIX.as_bytes(), true, 0, true)
        .await?;
    let workloads: Vec<serde_json::Value> = endpoints
        .iter()
        .filter_map(|kv| {
            let key = std::str::from_utf8(&kv.key).ok()?;
            let (ns, svc, node) = parse_endpoint_key(key)?;
            if node != name {
                return None;
            }
            let mut v: serde_json::Value = serde_json::from_slice(&kv.value).ok()?;
            v["service"] = serde_json::Value::String(svc.to_owned());
            v["namespace"] = serde_json::Value::String(ns.to_owned());
            Some(v)
        })
        .collect();
    Ok(Json(serde_json::json!({ "node": status, "workloads": workloads })).into_response())
}
