//! The admin listener (`/ready`, `/config_dump`, `/clusters`, `/stats/prometheus`) and the
//! Prometheus listener.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::{self, Body};
use crate::shared::Shared;

pub async fn serve(stream: TcpStream, shared: Arc<Shared>, metrics_only: bool) {
    let svc_shared = shared;
    let service = service_fn(move |req: Request<Incoming>| {
        let shared = svc_shared.clone();
        async move { Ok::<_, Infallible>(answer(&shared, &req, metrics_only)) }
    });
    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "admin connection ended with an error");
    }
}

fn reply(status: StatusCode, content_type: &'static str, text: String) -> Response<Body> {
    let mut resp = Response::new(body::full(text));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn answer(shared: &Shared, req: &Request<Incoming>, metrics_only: bool) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    let path = req.uri().path();
    if matches!(path, "/stats/prometheus" | "/metrics") {
        return reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            shared.metrics.encode(),
        );
    }
    if metrics_only {
        return reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into());
    }
    match path {
        "/ready" | "/healthz/ready" => {
            if shared.drain.is_draining() {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "DRAINING\n".into(),
                )
            } else {
                reply(StatusCode::OK, "text/plain", "LIVE\n".into())
            }
        }
        "/config_dump" => {
            let rt = shared.runtime();
            match serde_json::to_string_pretty(rt.snapshot.as_ref()) {
                Ok(json) => reply(StatusCode::OK, "application/json", json),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("{e}\n"),
                ),
            }
        }
        "/clusters" => {
            let rt = shared.runtime();
            let now = Instant::now();
            let clusters: serde_json::Map<String, serde_json::Value> = rt
                .clusters
                .iter()
                .map(|(name, c)| {
                    let endpoints: Vec<serde_json::Value> = c
                        .endpoints
                        .iter()
                        .map(|e| {
                            serde_json::json!({
                                "address": e.authority,
                                "active_requests": e.active(),
                                "ejected": e.is_ejected(now),
                                "weight": e.endpoint.weight,
                                "locality": e.endpoint.locality,
                            })
                        })
                        .collect();
                    (name.clone(), serde_json::Value::Array(endpoints))
                })
                .collect();
            let json = serde_json::to_string_pretty(&clusters).unwrap_or_default();
            reply(StatusCode::OK, "application/json", json)
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /ready, /config_dump, /clusters, /stats/prometheus\n".into(),
        ),
    }
}
