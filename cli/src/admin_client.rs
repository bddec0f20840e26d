//! The CLI's client of a server's admin HTTP API.

use anyhow::{Context, bail};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

pub struct AdminClient {
    base: String,
    http: reqwest::Client,
}

impl AdminClient {
    pub fn new(server: &str) -> anyhow::Result<Self> {
        let base = server.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("--server {server}: give a URL such as http://127.0.0.1:8500");
        }
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .build()
            .context("building the HTTP client")?;
        Ok(AdminClient { base, http })
    }

    /// Sends a request and decodes a JSON answer; an error answer becomes its message.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<T> {
        let url = format!("{}{}", self.base, path);
        let response = self
            .http
            .request(method, &url)
            .query(query)
            .send()
            .await
            .with_context(|| {
                format!(
                    "cannot reach the Trellis server at {} (set --server or TRELLIS_ADDR)",
                    self.base
                )
            })?;
        let status = response.status();
        let body = response.bytes().await.context("reading the answer")?;
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            if status == StatusCode::NOT_FOUND && message.is_empty() {
                bail!("{path}: not found");
            }
            bail!("{message} (HTTP {})", status.as_u16());
        }
        serde_json::from_slice(&body)
            .with_context(|| format!("{url}: the answer is not the JSON expected"))
    }
}
