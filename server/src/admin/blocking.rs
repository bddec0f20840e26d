//! Blocking queries, as Consul does them: `?index=N&wait=30s` answers once something
//! under the path changed after revision `N`, or when the wait is over.

use std::time::Duration;

use axum::http::StatusCode;
use futures::StreamExt;
use trellis_raft_store::WatchUpdate;

use super::{ApiError, State as AppState};

/// The longest a blocking query waits, as in Consul.
const MAX_WAIT: Duration = Duration::from_secs(600);
const DEFAULT_WAIT: Duration = Duration::from_secs(300);

pub(crate) fn parse_wait(wait: &Option<String>) -> Result<Duration, ApiError> {
    match wait {
        None => Ok(DEFAULT_WAIT),
        Some(w) => humantime::parse_duration(w)
            .map(|d| d.min(MAX_WAIT))
            .map_err(|e| {
                ApiError::new(StatusCode::BAD_REQUEST, format!("wait: {e} (e.g. 30s, 5m)"))
            }),
    }
}

enum Woke {
    Changed,
    /// The kept history starts after `index`.
    Compacted,
    /// The server is stopping.
    Ended,
}

/// Returns once `key` (with `exact`) or something under it changed after `index`, or
/// when `wait` is over. Changes to other keys that share the prefix do not wake it.
pub(crate) async fn block_until_changed(
    state: &AppState,
    key: &str,
    exact: bool,
    index: u64,
    wait: Duration,
) -> Result<(), ApiError> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut from = index.saturating_add(1);
    loop {
        let mut updates = state.node.watch(key.as_bytes().to_vec(), from)?;
        let woke = tokio::time::timeout_at(deadline, async {
            while let Some(update) = updates.next().await {
                match update {
                    WatchUpdate::Compacted { .. } => return Woke::Compacted,
                    WatchUpdate::Events(events) => {
                        if !exact || events.iter().any(|e| e.kv.key == key.as_bytes()) {
                            return Woke::Changed;
                        }
                    }
                }
            }
            Woke::Ended
        })
        .await;
        match woke {
            Err(_) | Ok(Woke::Changed | Woke::Ended) => return Ok(()),
            Ok(Woke::Compacted) => {
                // The history no longer reaches back to `index`. A key that still has
                // the revision the client saw has not changed: wait for what comes next
                // rather than answer at once, or a client holding an old index of a
                // quiet key would spin. Anything else is answered as changed.
                if !exact {
                    return Ok(());
                }
                let (revision, kvs, _) = state.node.range(key.as_bytes(), false, 0, true).await?;
                match kvs.first() {
                    Some(kv) if kv.mod_revision <= index => from = revision + 1,
                    _ => return Ok(()),
                }
            }
        }
    }
}
