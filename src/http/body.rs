//! Request bodies: how long they may take to arrive, and what a body that could
//! not be read is answered.
//!
//! `DefaultBodyLimit` bounds how much a body holds; [`deadline`] bounds how long it
//! takes, as one deadline for the whole body rather than a wait between chunks,
//! which a peer sending a byte every few seconds would never meet. tower-http's
//! `RequestBodyTimeoutLayer` is the latter, and not in the graph.

use std::error::Error;
use std::fmt;
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use futures_util::stream::{self, StreamExt};
use tokio::time::Instant;

use super::error::ApiError;

/// What a body yields once its deadline has passed. Extractors wrap it in their
/// rejection; [`refused`] finds it there.
#[derive(Debug)]
struct TimedOut;

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the request body did not arrive in time")
    }
}

impl Error for TimedOut {}

/// Middleware: the request's body fails with [`TimedOut`] if it has not wholly
/// arrived within `timeout` of now, and is not read any further.
pub(crate) async fn deadline(
    State(timeout): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    // No body (a GET), or one already whole: nothing to wait for, no timer. A
    // timeout past what `Instant` can count is no timeout.
    let due = match Instant::now().checked_add(timeout) {
        Some(due) if !request.body().is_end_stream() => due,
        _ => return next.run(request).await,
    };
    let request = request.map(|body| {
        let chunks = stream::unfold(Some(body.into_data_stream()), move |chunks| async move {
            let mut chunks = chunks?;
            match tokio::time::timeout_at(due, chunks.next()).await {
                Ok(Some(chunk)) => Some((chunk.map_err(axum::BoxError::from), Some(chunks))),
                Ok(None) => None,
                // The body is dropped here, so hyper reads no more of it and
                // does not keep the connection.
                Err(_) => Some((Err(TimedOut.into()), None)),
            }
        });
        Body::from_stream(chunks)
    });
    next.run(request).await
}

/// The answer to a body that could not be read: `408 body_timeout` if it came
/// too slowly, `413 body_too_large` if it was over `limit`, else `400
/// invalid_body`.
pub(crate) fn refused(rejection: BytesRejection, limit: usize, timeout: Duration) -> ApiError {
    if caused_by::<TimedOut>(&rejection) {
        ApiError::body_timeout(timeout)
    } else if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::body_too_large(limit)
    } else {
        ApiError::invalid_body(rejection.body_text())
    }
}

/// Whether `error` or anything in its chain of sources is an `E`.
fn caused_by<E: Error + 'static>(error: &(dyn Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<E>() {
            return true;
        }
        cause = e.source();
    }
    false
}
