//! The admin API's error responses: a status and `{"error": code, "detail": text}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// An error response. Every failure the API reports is one of these, so a client
/// never sees a bare status or a 500 for bad input.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    detail: String,
    /// Which failure of its code, where a code covers several (`publish_failed`).
    kind: Option<&'static str>,
    /// What this node delivered before the failure (`publish_failed`).
    local: Option<crate::BroadcastReport>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            kind: None,
            local: None,
        }
    }

    /// A cluster broadcast that was not published: 503 when Redis refused it, is
    /// unreachable, or the cluster is busy or shut down (this node's members got
    /// it); 413 when it is over the cluster's `max_payload` and 422 when the codec
    /// refused it (no member got it). `kind` names which, `local` what this node
    /// delivered.
    #[cfg(feature = "cluster")]
    pub(crate) fn publish_failed<M>(
        e: &crate::cluster::PublishError<M>,
        local: crate::BroadcastReport,
    ) -> Self {
        use crate::cluster::PublishError;
        const HERE: &str = "members on this node got it, other nodes did not";
        const NONE: &str = "no member got it";
        let (status, kind, reached) = match e {
            PublishError::Redis(..) => (StatusCode::SERVICE_UNAVAILABLE, "redis", HERE),
            PublishError::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy", HERE),
            PublishError::Closed(_) => (StatusCode::SERVICE_UNAVAILABLE, "closed", HERE),
            PublishError::TooLarge(..) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large", NONE),
            PublishError::Codec(..) => (StatusCode::UNPROCESSABLE_ENTITY, "codec", NONE),
        };
        Self {
            kind: Some(kind),
            local: Some(local),
            ..Self::new(status, "publish_failed", format!("{e}; {reached}"))
        }
    }

    /// 400: a query parameter the endpoint does not take.
    pub(crate) fn unknown_parameter(name: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "unknown_parameter",
            format!("unknown query parameter {name:?}"),
        )
    }

    /// 400: a filter value that means nothing (`kind=robot`, `connected_within=soon`).
    pub(crate) fn invalid_filter(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_filter", detail)
    }

    /// 400: a paging or other parameter out of range or repeated.
    pub(crate) fn invalid_parameter(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_parameter", detail)
    }

    /// 400: a cursor this API did not hand out.
    pub(crate) fn invalid_cursor(cursor: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_cursor",
            format!("cursor {cursor:?} is not one this API handed out"),
        )
    }

    /// 400: a path segment that could not be decoded.
    pub(crate) fn invalid_path(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_path", detail)
    }

    /// 503: every `/events` stream is taken.
    pub(crate) fn too_many_subscribers(limit: usize) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_subscribers",
            format!("at most {limit} event streams at once; close one and retry"),
        )
    }

    /// 400: a body that is not JSON.
    pub(crate) fn malformed_json(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed_json", detail)
    }

    /// 400: a body that could not be read.
    pub(crate) fn invalid_body(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_body", detail)
    }

    /// 401: a missing or wrong bearer token.
    pub(crate) fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send the admin token as `Authorization: Bearer <token>`",
        )
    }

    /// 404: no connected client has this key or id.
    pub(crate) fn unknown_client(who: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "unknown_client",
            format!("no connected client has the key or id {who:?}"),
        )
    }

    /// 404: no open session has this id.
    pub(crate) fn unknown_session(session: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "unknown_session",
            format!("no open session {session:?}"),
        )
    }

    /// 404: no such endpoint.
    pub(crate) fn not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no endpoint at {path}"),
        )
    }

    /// 405: the endpoint exists but not with this method.
    pub(crate) fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{path} does not accept {method}"),
        )
    }

    /// 413: a body over the configured limit.
    pub(crate) fn body_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body exceeds the limit of {limit} bytes"),
        )
    }

    /// 408: a body that had not wholly arrived within the configured timeout. The
    /// answer closes the connection (`Connection: close`): the rest of the body
    /// is never read.
    pub(crate) fn body_timeout(timeout: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!("the body did not arrive within {timeout:?}"),
        )
    }

    /// 415: a body that does not say it is JSON.
    pub(crate) fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body with `Content-Type: application/json`",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            error: &'a str,
            detail: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            kind: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            local: Option<crate::BroadcastReport>,
        }
        let body = Body {
            error: self.code,
            detail: &self.detail,
            kind: self.kind,
            local: self.local,
        };
        let mut response = (self.status, Json(&body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"switchboard\""),
            );
        }
        if self.status == StatusCode::REQUEST_TIMEOUT {
            // The unread rest of the body is still on the way; hyper closes the
            // connection after this answer instead of waiting for it.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}
