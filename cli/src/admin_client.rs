//! The CLI's client of a server's admin HTTP API.

use anyhow::{Context, bail};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

pub struct AdminClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// An error answer from the server, kept whole so its field paths can be printed.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: String,
    pub body: serde_json::Value,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (HTTP {})", self.message, self.status.as_u16())
    }
}

impl std::error::Error for Refusal {}

impl AdminClient {
    pub fn new(server: &str, token: Option<String>) -> anyhow::Result<Self> {
        let server = server.trim();
        // `host:port` alone means plain HTTP, as CONSUL_HTTP_ADDR reads it.
        let base = if server.contains("://") {
            server.trim_end_matches('/').to_string()
        } else {
            format!("http://{}", server.trim_end_matches('/'))
        };
        let host = base
            .strip_prefix("http://")
            .or_else(|| base.strip_prefix("https://"));
        if host.is_none_or(str::is_empty) {
            bail!("--server {server}: give host:port or a URL such as http://127.0.0.1:8500");
        }
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .build()
            .context("building the HTTP client")?;
        Ok(AdminClient { base, token, http })
    }

    /// Sends a request and returns the JSON answer; an error answer becomes a [`Refusal`].
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<serde_json::Value> {
        let url = format!("{}{}", self.base, path);
        let mut request = self.http.request(method, &url).query(query);
        if let Some(token) = &self.token {
            request = request.header("x-trellis-token", token);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.with_context(|| {
            format!(
                "cannot reach the Trellis server at {} (set --server or TRELLIS_ADDR)",
                self.base
            )
        })?;
        let status = response.status();
        let bytes = response.bytes().await.context("reading the answer")?;
        let value: serde_json::Value = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
            })
        };
        if !status.is_success() {
            let message = value
                .get("error")
                .and_then(|e| e.as_str())
                .map(str::to_string)
                .unwrap_or_else(|| {
                    format!("{path}: {}", status.canonical_reason().unwrap_or("error"))
                });
            return Err(Refusal {
                status,
                message,
                body: value,
            }
            .into());
        }
        Ok(value)
    }

    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<T> {
        let value = self.request(method, path, query, None).await?;
        serde_json::from_value(value)
            .with_context(|| format!("{path}: the answer is not the JSON expected"))
    }
}
