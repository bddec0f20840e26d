//! `/v1/config/...` and `/v1/apply`: the mesh's resources, validated with Istio's rules
//! before anything is stored, and stored as one atomic batch per request.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use trellis_api::{Kind, Resource, ResourceKey, parse_documents};
use trellis_raft_store::{Compare, KeyValue, Op, Txn};

use super::blocking::{block_until_changed, parse_wait};
use super::{ApiError, State as AppState, with_index};

/// `{"error": ..., "errors": [{document, path, message}]}` for refused documents.
fn refused(errors: &trellis_api::ParseErrors) -> ApiError {
    let list: Vec<Value> = errors
        .iter()
        .map(|e| {
            serde_json::json!({
                "document": e.doc().to_string(),
                "path": e.path().map(|p| p.to_string()),
                "message": e.message(),
            })
        })
        .collect();
    ApiError::with_details(
        StatusCode::BAD_REQUEST,
        errors.to_string(),
        serde_json::json!({ "errors": list }),
    )
}

fn kind_from_path(kind: &str) -> Result<Kind, ApiError> {
    Kind::from_str(kind).map_err(|_| {
        let known: Vec<String> = Kind::ALL.iter().map(|k| k.store_name()).collect();
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "kind: '{kind}' is not a mesh kind; one of {}",
                known.join(", ")
            ),
        )
    })
}

/// What the store keeps for a resource: its JSON without server-managed metadata.
fn stored_form(resource: &mut Resource) -> String {
    let meta = resource.metadata_mut();
    meta.resource_version = None;
    meta.generation = None;
    meta.managed_fields.clear();
    resource.to_json()
}

/// The stored JSON as answered, with `metadata.resourceVersion` set to the revision of
/// its last change, as Kubernetes does (and what `?cas=` takes).
fn answered(kv: &KeyValue) -> Value {
    let mut value: Value = serde_json::from_slice(&kv.value).unwrap_or(Value::Null);
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert(
            "resourceVersion".into(),
            Value::String(kv.mod_revision.to_string()),
        );
    }
    value
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct WriteQuery {
    /// `?dry-run`, `?dry-run=true` (or `1`); `false`/`0` is a real write.
    dry_run: Option<String>,
    cas: Option<u64>,
    /// Names the body in error messages (the CLI passes the file name).
    source: Option<String>,
}

impl WriteQuery {
    fn dry_run(&self) -> Result<bool, ApiError> {
        match self.dry_run.as_deref() {
            None | Some("false" | "0") => Ok(false),
            Some("" | "true" | "1") => Ok(true),
            Some(other) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("dry-run: '{other}' is not true or false"),
            )),
        }
    }
}

#[derive(Serialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
enum Action {
    Created,
    Updated,
    Unchanged,
    Deleted,
}

#[derive(Serialize)]
struct Change {
    kind: String,
    namespace: String,
    name: String,
    action: Action,
    /// For a dry run: the stored form before and after.
    #[serde(skip_serializing_if = "Option::is_none")]
    before: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    after: Option<Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

#[derive(Serialize)]
struct Outcome {
    revision: u64,
    dry_run: bool,
    changes: Vec<Change>,
}

fn parse_body(source: &str, body: &Bytes) -> Result<Vec<trellis_api::Document>, ApiError> {
    let text = std::str::from_utf8(body).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{source}: the body is not UTF-8 text"),
        )
    })?;
    let docs = parse_documents(source, text).map_err(|e| refused(&e))?;
    if docs.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{source}: no documents"),
        ));
    }
    Ok(docs)
}

/// Applies documents as one batch: validated whole, written all together or not at all.
async fn apply_documents(
    state: &AppState,
    docs: Vec<trellis_api::Document>,
    dry_run: bool,
    cas: Option<u64>,
) -> Result<Response, ApiError> {
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut planned = Vec::new();
    for mut doc in docs {
        let key = doc.resource.store_key();
        if let Some(first) = seen.insert(key.clone(), doc.id.to_string()) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "{}: the same resource as {first}; a batch names each resource once",
                    doc.id
                ),
            ));
        }
        let value = stored_form(&mut doc.resource);
        planned.push((doc.resource.key(), key, value, doc.warnings));
    }
    // One linearizable barrier for the whole batch, then local reads: what they see is
    // at least as new as anything committed before the request arrived.
    state.node.linearize().await?;
    let mut changes = Vec::new();
    let mut compare = Vec::new();
    let mut ops = Vec::new();
    for (rkey, key, value, warnings) in planned {
        let current = state
            .node
            .range(key.as_bytes(), false, 0, true)
            .await?
            .1
            .pop();
        if let Some(expected) = cas {
            let actual = current.as_ref().map_or(0, |kv| kv.mod_revision);
            if actual != expected {
                return Err(cas_refusal(&rkey, expected, actual));
            }
        }
        // Every read above is part of the batch's precondition: a change in between
        // fails the whole batch rather than overwriting it.
        compare.push(Compare {
            key: key.clone().into_bytes(),
            mod_revision: current.as_ref().map_or(0, |kv| kv.mod_revision),
        });
        let action = match &current {
            None => Action::Created,
            Some(kv) if kv.value == value.as_bytes() => Action::Unchanged,
            Some(_) => Action::Updated,
        };
        if action != Action::Unchanged {
            ops.push(Op::Put {
                key: key.into_bytes(),
                value: value.clone().into_bytes(),
            });
        }
        changes.push(Change {
            kind: rkey.kind.to_string(),
            namespace: rkey.namespace.clone(),
            name: rkey.name.clone(),
            action,
            before: dry_run.then(|| current.as_ref().map(answered)).flatten(),
            after: dry_run.then(|| serde_json::from_str(&value).unwrap_or(Value::Null)),
            warnings: warnings.iter().map(ToString::to_string).collect(),
        });
    }
    commit(state, compare, ops, changes, dry_run).await
}

fn cas_refusal(key: &ResourceKey, expected: u64, actual: u64) -> ApiError {
    if actual == 0 && expected != 0 {
        ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            format!("cas: {key} does not exist (expected revision {expected})"),
        )
    } else {
        ApiError::new(
            StatusCode::CONFLICT,
            format!("cas: {key} is at revision {actual}, not {expected}; read it again and retry"),
        )
    }
}

async fn commit(
    state: &AppState,
    compare: Vec<Compare>,
    ops: Vec<Op>,
    changes: Vec<Change>,
    dry_run: bool,
) -> Result<Response, ApiError> {
    let revision = if dry_run || ops.is_empty() {
        *state.node.revision().borrow()
    } else {
        let result = state
            .node
            .txn(Txn {
                compare,
                success: ops,
                failure: vec![],
            })
            .await?;
        if !result.succeeded {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "a resource in this batch changed while it was applied; nothing was written, apply again",
            ));
        }
        result.revision
    };
    Ok(with_index(
        revision,
        Json(Outcome {
            revision,
            dry_run,
            changes,
        }),
    ))
}

/// `POST /v1/apply`: a multi-document YAML or JSON body.
pub async fn apply(
    State(state): State<AppState>,
    Query(q): Query<WriteQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let source = q.source.clone().unwrap_or_else(|| "request body".into());
    let docs = parse_body(&source, &body)?;
    apply_documents(&state, docs, q.dry_run()?, q.cas).await
}

/// `POST /v1/delete`: deletes every resource a multi-document body names, together.
pub async fn delete_documents(
    State(state): State<AppState>,
    Query(q): Query<WriteQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let source = q.source.clone().unwrap_or_else(|| "request body".into());
    let text = std::str::from_utf8(&body).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{source}: the body is not UTF-8 text"),
        )
    })?;
    // Deleting needs only the names: a document that no longer validates can still go.
    let raws = trellis_api::split_documents(&source, text).map_err(|e| refused(&e))?;
    let mut keys = BTreeSet::new();
    for raw in raws {
        let kind = raw
            .value
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let meta = raw.value.get("metadata");
        let name = meta
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let namespace = meta
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let kind = Kind::from_str(kind).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("{}: kind: '{kind}' is not a mesh kind", raw.id),
            )
        })?;
        if name.is_empty() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("{}: metadata.name: required", raw.id),
            ));
        }
        keys.insert(ResourceKey::new(kind, namespace, name));
    }
    delete_keys(&state, keys.into_iter().collect(), q.dry_run()?, q.cas).await
}

async fn delete_keys(
    state: &AppState,
    keys: Vec<ResourceKey>,
    dry_run: bool,
    cas: Option<u64>,
) -> Result<Response, ApiError> {
    state.node.linearize().await?;
    let mut compare = Vec::new();
    let mut ops = Vec::new();
    let mut changes = Vec::new();
    for key in keys {
        let store_key = key.store_key();
        let Some(current) = state
            .node
            .range(store_key.as_bytes(), false, 0, true)
            .await?
            .1
            .pop()
        else {
            // A precondition on a revision of something that is not there fails as a
            // precondition (412), as it does for a write.
            if let Some(expected) = cas.filter(|c| *c != 0) {
                return Err(cas_refusal(&key, expected, 0));
            }
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("{key}: not found"),
            ));
        };
        if let Some(expected) = cas
            && current.mod_revision != expected
        {
            return Err(cas_refusal(&key, expected, current.mod_revision));
        }
        compare.push(Compare {
            key: store_key.clone().into_bytes(),
            mod_revision: current.mod_revision,
        });
        ops.push(Op::Delete {
            key: store_key.into_bytes(),
        });
        changes.push(Change {
            kind: key.kind.to_string(),
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            action: Action::Deleted,
            before: dry_run.then(|| answered(&current)),
            after: None,
            warnings: Vec::new(),
        });
    }
    commit(state, compare, ops, changes, dry_run).await
}

/// `PUT /v1/config/{kind}/{namespace}/{name}`: one document, which must name itself
/// as the path does.
pub async fn put(
    State(state): State<AppState>,
    Path((kind, namespace, name)): Path<(String, String, String)>,
    Query(q): Query<WriteQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let kind = kind_from_path(&kind)?;
    let source = q.source.clone().unwrap_or_else(|| "request body".into());
    let docs = parse_body(&source, &body)?;
    if docs.len() != 1 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "{source}: holds {} documents; PUT takes one (POST /v1/apply takes many)",
                docs.len()
            ),
        ));
    }
    let key = docs[0].resource.key();
    let wanted = ResourceKey::new(kind, namespace, name);
    if key != wanted {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "{}: the document is {key} but the path names {wanted}",
                docs[0].id
            ),
        ));
    }
    apply_documents(&state, docs, q.dry_run()?, q.cas).await
}

/// `DELETE /v1/config/{kind}/{namespace}/{name}[?cas=N][&dry-run=true]`.
pub async fn delete(
    State(state): State<AppState>,
    Path((kind, namespace, name)): Path<(String, String, String)>,
    Query(q): Query<WriteQuery>,
) -> Result<Response, ApiError> {
    let kind = kind_from_path(&kind)?;
    delete_keys(
        &state,
        vec![ResourceKey::new(kind, namespace, name)],
        q.dry_run()?,
        q.cas,
    )
    .await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReadQuery {
    index: Option<u64>,
    wait: Option<String>,
    stale: Option<String>,
    /// For lists: `app=reviews,version!=v1,canary,!legacy`.
    label_selector: Option<String>,
    namespace: Option<String>,
}

fn stale(q: &ReadQuery) -> bool {
    matches!(q.stale.as_deref(), Some("" | "true" | "1"))
}

/// `GET /v1/config/{kind}/{namespace}/{name}`, with blocking queries.
pub async fn get(
    State(state): State<AppState>,
    Path((kind, namespace, name)): Path<(String, String, String)>,
    Query(q): Query<ReadQuery>,
) -> Result<Response, ApiError> {
    let kind = kind_from_path(&kind)?;
    let key = ResourceKey::new(kind, namespace, name);
    let store_key = key.store_key();
    if let Some(index) = q.index.filter(|i| *i > 0) {
        block_until_changed(&state, &store_key, true, index, parse_wait(&q.wait)?).await?;
    }
    let (revision, mut kvs, _) = state
        .node
        .range(store_key.as_bytes(), false, 0, stale(&q))
        .await?;
    match kvs.pop() {
        // The revision of its last change, not the store's: a blocking query given it
        // then wakes only when this resource changes.
        Some(kv) => Ok(with_index(kv.mod_revision, Json(answered(&kv)))),
        None => Ok(with_index(
            revision,
            ApiError::new(StatusCode::NOT_FOUND, format!("{key}: not found")),
        )),
    }
}

/// `GET /v1/config/{kind}[?namespace=NS][&labelSelector=...]`, with blocking queries.
pub async fn list(
    State(state): State<AppState>,
    Path(kind): Path<String>,
    Query(q): Query<ReadQuery>,
) -> Result<Response, ApiError> {
    let kind = kind_from_path(&kind)?;
    list_kind(state, kind, q.namespace.clone(), q).await
}

/// `GET /v1/config/{kind}/{namespace}`.
pub async fn list_namespace(
    State(state): State<AppState>,
    Path((kind, namespace)): Path<(String, String)>,
    Query(q): Query<ReadQuery>,
) -> Result<Response, ApiError> {
    let kind = kind_from_path(&kind)?;
    list_kind(state, kind, Some(namespace), q).await
}

async fn list_kind(
    state: AppState,
    kind: Kind,
    namespace: Option<String>,
    q: ReadQuery,
) -> Result<Response, ApiError> {
    let selector = match &q.label_selector {
        Some(s) => Some(LabelSelector::parse(s)?),
        None => None,
    };
    let prefix = ResourceKey::store_prefix(kind, namespace.as_deref());
    if let Some(index) = q.index.filter(|i| *i > 0) {
        block_until_changed(&state, &prefix, false, index, parse_wait(&q.wait)?).await?;
    }
    let (revision, kvs, _) = state
        .node
        .range(prefix.as_bytes(), true, 0, stale(&q))
        .await?;
    let items: Vec<Value> = kvs
        .iter()
        .map(answered)
        .filter(|v| match &selector {
            None => true,
            Some(sel) => {
                let labels: BTreeMap<String, String> = v
                    .pointer("/metadata/labels")
                    .and_then(|l| serde_json::from_value(l.clone()).ok())
                    .unwrap_or_default();
                sel.matches(&labels)
            }
        })
        .collect();
    Ok(with_index(
        revision,
        Json(serde_json::json!({ "items": items })),
    ))
}

/// Kubernetes' equality-based label selectors.
#[derive(Debug, PartialEq)]
pub(crate) enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

#[derive(Debug, PartialEq)]
pub(crate) struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    pub(crate) fn parse(text: &str) -> Result<Self, ApiError> {
        let bad = |part: &str| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "labelSelector: '{part}' is not a requirement (use key=value, key!=value, key or !key)"
                ),
            )
        };
        let valid = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        };
        let mut reqs = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let req = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::NotExists(k.trim().into())
            } else {
                Requirement::Exists(part.into())
            };
            let key = match &req {
                Requirement::Equals(k, _)
                | Requirement::NotEquals(k, _)
                | Requirement::Exists(k)
                | Requirement::NotExists(k) => k,
            };
            if !valid(key) {
                return Err(bad(part));
            }
            reqs.push(req);
        }
        Ok(LabelSelector(reqs))
    }

    pub(crate) fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_selectors_read_as_kubectl_reads_them() {
        let sel = LabelSelector::parse("app=reviews, version!=v1,canary,!legacy").unwrap();
        let labels = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(sel.matches(&labels(&[
            ("app", "reviews"),
            ("version", "v2"),
            ("canary", "")
        ])));
        assert!(!sel.matches(&labels(&[
            ("app", "reviews"),
            ("version", "v1"),
            ("canary", "")
        ])));
        assert!(!sel.matches(&labels(&[
            ("app", "reviews"),
            ("canary", ""),
            ("legacy", "y")
        ])));
        assert!(LabelSelector::parse("a=b,=c").is_err());
    }
}
