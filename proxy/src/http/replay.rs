//! A request body that can be sent again: what makes retries possible for any request, not
//! only those whose body was read in full beforehand.
//!
//! The first attempt streams the body from the client and keeps a copy (up to a limit). A
//! retry replays the copy, then goes on reading from the client where the first attempt
//! stopped. Past the limit the copy is dropped and the request can no longer be retried, as
//! with Envoy's buffer limit.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::body::{self, Body, BoxError};

struct State {
    source: Option<Body>,
    buffered: Vec<Bytes>,
    size: usize,
    trailers: Option<HeaderMap>,
    ended: bool,
    overflowed: bool,
    failed: bool,
    /// Only the body of the latest attempt may read; an abandoned attempt's body, which hyper
    /// may still poll for a moment, must not steal frames from the retry.
    current: u64,
}

pub struct Replay {
    /// None for a request without a body (most of them): every attempt sends the same
    /// nothing, with no shared state to allocate and lock.
    state: Option<Arc<Mutex<State>>>,
    limit: usize,
    hint: SizeHint,
}

impl Replay {
    pub fn new(body: Body, limit: usize) -> Self {
        let hint = body.size_hint();
        let state = (!body.is_end_stream()).then(|| {
            Arc::new(Mutex::new(State {
                source: Some(body),
                buffered: Vec::new(),
                size: 0,
                trailers: None,
                ended: false,
                overflowed: false,
                failed: false,
                current: 0,
            }))
        });
        Self { state, limit, hint }
    }

    /// A body for the next attempt, replaying from the start.
    pub fn attempt(&self) -> Body {
        let Some(state) = &self.state else {
            return body::empty();
        };
        let id = match state.lock() {
            Ok(mut s) => {
                s.current += 1;
                s.current
            }
            Err(_) => 0,
        };
        body::boxed(ReplayBody {
            state: state.clone(),
            id,
            pos: 0,
            trailers_sent: false,
            limit: self.limit,
            hint: self.hint,
        })
    }

    /// Whether another attempt would send the same body.
    pub fn can_replay(&self) -> bool {
        self.state.as_ref().is_none_or(|state| {
            state
                .lock()
                .map(|s| !s.overflowed && !s.failed)
                .unwrap_or(false)
        })
    }
}

pub struct ReplayBody {
    state: Arc<Mutex<State>>,
    id: u64,
    pos: usize,
    trailers_sent: bool,
    limit: usize,
    hint: SizeHint,
}

impl HttpBody for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Ok(mut s) = this.state.lock() else {
            return Poll::Ready(Some(Err("request body lock poisoned".into())));
        };
        if s.current != this.id {
            return Poll::Ready(Some(Err("request body taken by a retry".into())));
        }
        if this.pos < s.buffered.len() && !s.overflowed {
            this.pos += 1;
            return Poll::Ready(Some(Ok(Frame::data(s.buffered[this.pos - 1].clone()))));
        }
        if s.ended {
            if !this.trailers_sent
                && let Some(t) = s.trailers.clone()
            {
                this.trailers_sent = true;
                return Poll::Ready(Some(Ok(Frame::trailers(t))));
            }
            return Poll::Ready(None);
        }
        loop {
            let Some(source) = s.source.as_mut() else {
                return Poll::Ready(None);
            };
            let polled = Pin::new(&mut *source).poll_frame(cx);
            // Known here, not only when the next poll returns None, so the last chunk goes out
            // with END_STREAM instead of being followed by an empty frame.
            let source_done = source.is_end_stream();
            match polled {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    s.ended = true;
                    s.source = None;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => {
                    s.failed = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        if source_done {
                            s.ended = true;
                            s.source = None;
                        }
                        if data.is_empty() {
                            // Nothing to send. A client's empty DATA frame with END_STREAM
                            // (as gRPC clients end a call) forwarded as an empty frame
                            // without it counts against h2's limit of 100 per connection,
                            // and the upstream closes the shared connection.
                            continue;
                        }
                        if !s.overflowed {
                            if s.size + data.len() > this.limit {
                                s.overflowed = true;
                                s.buffered = Vec::new();
                            } else {
                                s.size += data.len();
                                s.buffered.push(data.clone());
                                this.pos += 1;
                            }
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Err(frame) => match frame.into_trailers() {
                        Ok(trailers) => {
                            s.trailers = Some(trailers.clone());
                            s.ended = true;
                            s.source = None;
                            this.trailers_sent = true;
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                        // Neither data nor trailers: nothing a proxy can forward.
                        Err(_) => return Poll::Ready(Some(Err("unknown body frame".into()))),
                    },
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state.lock().is_ok_and(|s| {
            s.ended
                && !s.overflowed
                && self.pos >= s.buffered.len()
                && (s.trailers.is_none() || self.trailers_sent)
        })
    }

    fn size_hint(&self) -> SizeHint {
        // Every attempt sends the whole body, so the client's hint holds for each.
        self.hint
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    /// Read as soon as the source knows it is done: HTTP/2 then sends the last chunk with
    /// END_STREAM rather than following it with an empty DATA frame.
    #[tokio::test]
    async fn the_last_chunk_ends_the_stream() {
        let replay = Replay::new(body::full("order"), 1024);
        let mut attempt = replay.attempt();
        let frame = attempt.frame().await.expect("a frame").expect("data");
        assert_eq!(frame.into_data().ok(), Some(Bytes::from("order")));
        assert!(attempt.is_end_stream());
    }

    #[tokio::test]
    async fn empty_chunks_are_not_forwarded() {
        let chunks = ["a", "", "b", ""].map(|c| Ok::<_, BoxError>(Frame::data(Bytes::from(c))));
        let source = body::boxed(StreamBody::new(futures::stream::iter(chunks)));
        let replay = Replay::new(source, 1024);
        for _ in 0..2 {
            let mut attempt = replay.attempt();
            let mut sent = Vec::new();
            while let Some(frame) = attempt.frame().await {
                sent.push(frame.expect("data").into_data().expect("data"));
            }
            assert_eq!(sent, ["a", "b"], "the first attempt and its replay");
        }
    }
}
