//! `/v1/kv/...`: raw keys and values, shaped like Consul's KV API, with blocking
//! queries (`?index=N&wait=30s`).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine;
use serde::{Deserialize, Serialize};
use trellis_raft_store::{Compare, KeyValue, Op, Txn};

use super::blocking::{block_until_changed, parse_wait};
use super::{ApiError, State as AppState, with_index};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    recurse: Option<String>,
    stale: Option<String>,
    raw: Option<String>,
    keys: Option<String>,
    index: Option<u64>,
    wait: Option<String>,
}

/// A flag given as `?recurse`, `?recurse=` or `?recurse=true`.
fn flag(v: &Option<String>) -> bool {
    matches!(v.as_deref(), Some("" | "true" | "1"))
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    key: String,
    value: Option<String>,
    create_index: u64,
    modify_index: u64,
    version: u64,
}

fn entry(kv: KeyValue) -> Entry {
    Entry {
        key: String::from_utf8_lossy(&kv.key).into_owned(),
        value: Some(base64::engine::general_purpose::STANDARD.encode(&kv.value)),
        create_index: kv.create_revision,
        modify_index: kv.mod_revision,
        version: kv.version,
    }
}

pub async fn get_all(
    state: State<AppState>,
    query: Query<ReadQuery>,
) -> Result<Response, ApiError> {
    get(state, Path(String::new()), query).await
}

pub async fn get(
    State(state): State<AppState>,
    Path(key): Path<String>,
    Query(q): Query<ReadQuery>,
) -> Result<Response, ApiError> {
    let prefix = flag(&q.recurse) || flag(&q.keys) || key.is_empty();
    if let Some(index) = q.index.filter(|i| *i > 0) {
        block_until_changed(&state, &key, !prefix, index, parse_wait(&q.wait)?).await?;
    }
    let (revision, kvs, _) = state
        .node
        .range(key.as_bytes(), prefix, 0, flag(&q.stale))
        .await?;
    if kvs.is_empty() {
        return Ok(with_index(revision, StatusCode::NOT_FOUND));
    }
    if flag(&q.raw) && !prefix {
        let value = kvs
            .into_iter()
            .next()
            .map(|kv| kv.value)
            .unwrap_or_default();
        return Ok(with_index(revision, value));
    }
    if flag(&q.keys) {
        let keys: Vec<String> = kvs
            .into_iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect();
        return Ok(with_index(revision, Json(keys)));
    }
    Ok(with_index(
        revision,
        Json(kvs.into_iter().map(entry).collect::<Vec<_>>()),
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct WriteQuery {
    cas: Option<u64>,
    recurse: Option<String>,
}

/// `PUT /v1/kv/KEY[?cas=N]`: the body is the value. Answers `true`, or `false` when
/// `cas` did not match (0: only if the key does not exist).
pub async fn put(
    State(state): State<AppState>,
    Path(key): Path<String>,
    Query(q): Query<WriteQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    if q.recurse.is_some() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "recurse: not allowed on PUT",
        ));
    }
    let op = Op::Put {
        key: key.clone().into_bytes(),
        value: body.to_vec(),
    };
    write(&state, key, q.cas, op).await
}

/// `DELETE /v1/kv/KEY[?recurse][&cas=N]`.
pub async fn delete(
    State(state): State<AppState>,
    Path(key): Path<String>,
    Query(q): Query<WriteQuery>,
) -> Result<Response, ApiError> {
    let op = if flag(&q.recurse) {
        Op::DeletePrefix {
            prefix: key.clone().into_bytes(),
        }
    } else {
        Op::Delete {
            key: key.clone().into_bytes(),
        }
    };
    write(&state, key, q.cas, op).await
}

/// Runs one operation, guarded by `cas` on `key` when given; answers `true` or `false`
/// as Consul does.
async fn write(
    state: &AppState,
    key: String,
    cas: Option<u64>,
    op: Op,
) -> Result<Response, ApiError> {
    let txn = Txn {
        compare: cas
            .map(|rev| Compare {
                key: key.into_bytes(),
                mod_revision: rev,
            })
            .into_iter()
            .collect(),
        success: vec![op],
        failure: vec![],
    };
    let result = state.node.txn(txn).await?;
    Ok(with_index(result.revision, Json(result.succeeded)))
}
