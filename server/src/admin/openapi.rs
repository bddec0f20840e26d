//! `GET /v1/openapi.json`: an OpenAPI 3.0 document made from [`super::ROUTES`], the same
//! table the router is built from, so it lists exactly what the server serves.

use std::collections::BTreeMap;

use axum::Json;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{ROUTES, Route};

/// What each query parameter means; a route names the ones it takes.
fn query_param(name: &str) -> Value {
    let (schema, description) = match name {
        "index" => (
            json!({"type": "integer", "minimum": 0}),
            "Blocking query: answer once something under the path changed after this revision (from X-Trellis-Index), or when ?wait is over",
        ),
        "wait" => (
            json!({"type": "string", "example": "30s"}),
            "How long a blocking query waits at most (default 5m, at most 10m)",
        ),
        "stale" => (
            json!({"type": "boolean", "allowEmptyValue": true}),
            "Answer from this server's state without asking the leader",
        ),
        "recurse" => (
            json!({"type": "boolean", "allowEmptyValue": true}),
            "Every key under the path",
        ),
        "keys" => (
            json!({"type": "boolean", "allowEmptyValue": true}),
            "Only the key names",
        ),
        "raw" => (
            json!({"type": "boolean", "allowEmptyValue": true}),
            "The value itself, not JSON",
        ),
        "cas" => (
            json!({"type": "integer", "minimum": 0}),
            "Write only if the resource was last changed at this revision (0: only if it does not exist); 409 when it changed since, 412 when it does not exist",
        ),
        "dry-run" => (
            json!({"type": "boolean"}),
            "Answer what would change (created, updated, unchanged, deleted, with before and after) and write nothing",
        ),
        "source" => (
            json!({"type": "string"}),
            "The name errors give the body, such as the file it came from",
        ),
        "namespace" => (json!({"type": "string"}), "Only this namespace"),
        "labelSelector" => (
            json!({"type": "string", "example": "app=reviews,version!=v1"}),
            "Kubernetes equality-based label selector",
        ),
        "id" => (json!({"type": "integer"}), "A server's node id"),
        "address" => (json!({"type": "string"}), "A server's gRPC address"),
        _ => (json!({"type": "string"}), ""),
    };
    json!({"name": name, "in": "query", "required": false, "schema": schema, "description": description})
}

/// `{kind}` stays as it is; axum's catch-all `{*key}` is OpenAPI's `{key}`.
pub fn openapi_path(path: &str) -> String {
    path.replace("{*", "{")
}

fn path_params(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| {
            let name = name.trim_start_matches('*');
            json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}})
        })
        .collect()
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    })
}

fn operation(route: &Route) -> Value {
    let mut parameters = path_params(route.path);
    parameters.extend(route.query.iter().map(|q| query_param(q)));
    let mut responses = serde_json::Map::new();
    responses.insert(
        "200".into(),
        json!({
            "description": "OK",
            "headers": {"X-Trellis-Index": {"$ref": "#/components/headers/X-Trellis-Index"}},
            "content": {"application/json": {}}
        }),
    );
    responses.insert(
        "400".into(),
        error_response("A malformed request or a refused document"),
    );
    responses.insert("403".into(), error_response("A token is required"));
    if route.path.contains('{') || route.path.starts_with("/v1/operator") {
        responses.insert("404".into(), error_response("Not found"));
    }
    if route.query.contains(&"cas") {
        responses.insert("409".into(), error_response("Changed since ?cas"));
        responses.insert(
            "412".into(),
            error_response("?cas named a resource that does not exist"),
        );
    }
    responses.insert("503".into(), error_response("No leader"));
    let operation_id: String = format!("{} {}", route.method, route.path)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let mut op = json!({
        "summary": route.summary,
        "operationId": operation_id,
        "parameters": parameters,
        "responses": responses,
    });
    if let Some(body) = route.body {
        op["requestBody"] = json!({
            "required": true,
            "description": body,
            "content": {
                "application/yaml": {"schema": {"type": "string"}},
                "application/json": {"schema": {}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            }
        });
    }
    op
}

/// The whole document.
pub fn spec() -> Value {
    let mut paths: BTreeMap<String, serde_json::Map<String, Value>> = BTreeMap::new();
    for route in ROUTES {
        paths
            .entry(openapi_path(route.path))
            .or_default()
            .insert(route.method.to_ascii_lowercase(), operation(route));
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Trellis admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Mesh configuration (Istio resources and trellis.dev kinds), the replicated key-value store and cluster status. Every answer carries the store revision in X-Trellis-Index.",
        },
        "paths": paths,
        "components": {
            "headers": {
                "X-Trellis-Index": {
                    "description": "The store revision the answer reflects; for one resource, the revision of its last change",
                    "schema": {"type": "integer"}
                }
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {"type": "string"},
                        "errors": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "document": {"type": "string", "description": "file[index] Kind namespace/name"},
                                    "path": {"type": "string", "nullable": true, "description": "the field path, such as spec.http[0].route[1].weight"},
                                    "message": {"type": "string"}
                                }
                            }
                        }
                    }
                }
            },
            "securitySchemes": {
                "token": {"type": "apiKey", "in": "header", "name": "x-trellis-token"},
                "bearer": {"type": "http", "scheme": "bearer"}
            }
        },
        "security": [{"token": []}, {"bearer": []}, {}],
    })
}

pub async fn document() -> Response {
    Json(spec()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented_once_with_its_path_parameters() {
        let doc = spec();
        let mut count = 0;
        for route in ROUTES {
            let op = &doc["paths"][openapi_path(route.path)][route.method.to_ascii_lowercase()];
            assert!(
                op.is_object(),
                "{} {} is not documented",
                route.method,
                route.path
            );
            for p in path_params(route.path) {
                assert!(
                    op["parameters"].as_array().unwrap().contains(&p),
                    "{} {} lacks {p}",
                    route.method,
                    route.path
                );
            }
            count += 1;
        }
        let documented: usize = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|ops| ops.as_object().unwrap().len())
            .sum();
        assert_eq!(documented, count);
    }
}
