//! The body read deadline: a client has `limits.body_read_timeout_ms` from the moment its request
//! headers are in to deliver the whole body. A body that is still incomplete then fails with
//! [`BodyTimeout`], which [`super::request::read_body`] answers with 408 `request_timeout`, so a
//! client that sends headers and then trickles its body (or sends nothing) cannot hold a
//! connection and a handler for longer than that.

use super::Shared;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use hyper::body::{Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// The error a body gives once its deadline has passed.
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeout(pub u64);

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the request body was not received within {} ms", self.0)
    }
}

impl std::error::Error for BodyTimeout {}

/// A body that fails with [`BodyTimeout`] when it has not ended by its deadline.
pub struct TimedBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    limit_ms: u64,
}

impl std::fmt::Debug for TimedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TimedBody({} ms)", self.limit_ms)
    }
}

impl TimedBody {
    pub fn new(inner: Body, limit_ms: u64) -> TimedBody {
        TimedBody {
            inner,
            deadline: Box::pin(tokio::time::sleep(Duration::from_millis(limit_ms))),
            limit_ms,
        }
    }
}

impl hyper::body::Body for TimedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        // The deadline is looked at first, so a body that keeps trickling in is cut off too.
        if this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyTimeout(this.limit_ms)))));
        }
        Pin::new(&mut this.inner)
            .poll_frame(cx)
            .map(|f| f.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Middleware: gives every request body its deadline.
pub async fn body_deadline(State(app): State<Shared>, req: Request, next: Next) -> Response {
    let ms = app.engine.policy.limits.body_read_timeout_ms;
    let req = req.map(|b| {
        if hyper::body::Body::is_end_stream(&b) {
            b
        } else {
            Body::new(TimedBody::new(b, ms))
        }
    });
    next.run(req).await
}

/// True if `e` or one of its sources is a [`BodyTimeout`].
pub fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(x) = cur {
        if x.is::<BodyTimeout>() {
            return true;
        }
        cur = x.source();
    }
    false
}
