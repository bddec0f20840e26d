//! The admin API's token check: with `--acl-token-file`, every request but the status
//! probes must present the token, as Consul's `X-Consul-Token` works.

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, State as AppState};

/// The header the CLI sends; `Authorization: Bearer TOKEN` is read too.
pub const TOKEN_HEADER: &str = "x-trellis-token";

/// The operator's token. Its `Debug` never shows it, so it cannot reach a log by accident.
#[derive(Clone)]
pub struct AclToken(Vec<u8>);

impl AclToken {
    /// `None` for an empty token: an empty secret would let anyone in.
    pub fn new(token: &str) -> Option<AclToken> {
        let token = token.trim();
        (!token.is_empty()).then(|| AclToken(token.as_bytes().to_vec()))
    }

    /// Compares in time that depends only on the lengths, never on where the first
    /// differing byte is, so the token cannot be guessed byte by byte.
    fn matches(&self, presented: &[u8]) -> bool {
        let expected = &self.0;
        let mut diff = u8::from(expected.len() != presented.len());
        for (i, e) in expected.iter().enumerate() {
            let p = presented.get(i).copied().unwrap_or(0);
            diff |= e ^ p;
        }
        std::hint::black_box(diff) == 0
    }
}

impl std::fmt::Debug for AclToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AclToken(<redacted>)")
    }
}

/// Liveness and readiness probes (load balancers, systemd, `trellis operator`) carry no
/// secret; they reveal nothing but whether there is a leader.
fn exempt(request: &Request) -> bool {
    matches!(*request.method(), Method::GET | Method::HEAD)
        && request.uri().path().starts_with("/v1/status/")
}

fn presented(request: &Request) -> Option<&[u8]> {
    let headers = request.headers();
    if let Some(v) = headers.get(TOKEN_HEADER) {
        return Some(v.as_bytes());
    }
    let auth = headers.get(header::AUTHORIZATION)?.as_bytes();
    let scheme = auth.get(..7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| auth.get(7..))
        .flatten()
}

pub async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = &state.acl_token else {
        return next.run(request).await;
    };
    if exempt(&request) {
        return next.run(request).await;
    }
    match presented(&request) {
        Some(p) if token.matches(p) => next.run(request).await,
        Some(_) => ApiError::new(
            StatusCode::FORBIDDEN,
            "the token is not valid here (sent in x-trellis-token or Authorization: Bearer)",
        )
        .into_response(),
        None => ApiError::new(
            StatusCode::FORBIDDEN,
            "this server requires a token: send it in x-trellis-token or Authorization: Bearer (trellis --token or TRELLIS_TOKEN)",
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_matches() {
        let t = AclToken::new(" s3cret\n").unwrap();
        assert!(t.matches(b"s3cret"));
        for wrong in [&b""[..], b"s3cre", b"s3cret2", b"S3cret", b"s3cret\n"] {
            assert!(!t.matches(wrong), "{wrong:?}");
        }
        assert!(AclToken::new("  \n").is_none());
        assert_eq!(format!("{t:?}"), "AclToken(<redacted>)");
    }
}
