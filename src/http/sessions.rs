//! `/sessions`: list, show members, broadcast.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::clients::segment;
use super::error::ApiError;
use super::params::{self, Page, Query};
use super::Shared;
use crate::{ClientId, SessionId};

#[derive(Serialize)]
struct SessionSummary {
    id: SessionId,
    members: usize,
}

#[derive(Serialize)]
struct SessionPage {
    sessions: Vec<SessionSummary>,
    next_cursor: Option<String>,
}

#[derive(Serialize)]
struct MemberView {
    id: ClientId,
    key: Option<String>,
}

#[derive(Serialize)]
struct SessionDetail {
    id: SessionId,
    count: usize,
    members: Vec<MemberView>,
    next_cursor: Option<String>,
}

/// `GET /sessions`.
pub(crate) async fn list<M>(
    State(admin): State<Shared<M>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut query = Query::parse(raw.as_deref());
    let page = Page::take(&mut query)?;
    query.finish()?;
    let after = page.cursor.as_deref().map(params::session_id);
    let mut ids = admin.registry.session_ids();
    ids.sort_unstable();
    let (ids, next) = page.apply(ids, Clone::clone, after);
    let sessions = ids
        .into_iter()
        .filter_map(|id| {
            // A session may close between the listing and this read; it is left out.
            let members = admin.registry.member_count(&id).ok()?;
            Some(SessionSummary { id, members })
        })
        .collect();
    let body = SessionPage {
        sessions,
        next_cursor: next.as_ref().map(params::session_segment),
    };
    Ok(Json(&body).into_response())
}

/// `GET /sessions/{id}`.
pub(crate) async fn show<M>(
    State(admin): State<Shared<M>>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let text = segment(path)?;
    let id = params::session_id(&text);
    let mut query = Query::parse(raw.as_deref());
    let page = Page::take(&mut query)?;
    query.finish()?;
    let after = match page.cursor.as_deref() {
        Some(cursor) => Some(
            cursor
                .parse::<ClientId>()
                .map_err(|_| ApiError::invalid_cursor(cursor))?,
        ),
        None => None,
    };
    let mut members = admin
        .registry
        .members(&id)
        .map_err(|_| ApiError::unknown_session(&text))?;
    let count = members.len();
    members.sort_unstable();
    let (members, next) = page.apply(members, |m| *m, after);
    let members = members
        .into_iter()
        .map(|member| MemberView {
            id: member,
            key: admin.registry.info(member).ok().and_then(|i| i.key.clone()),
        })
        .collect();
    let body = SessionDetail {
        id,
        count,
        members,
        next_cursor: next.map(|id| id.to_string()),
    };
    Ok(Json(&body).into_response())
}

/// `POST /sessions/{id}/broadcast`: the JSON body, through the router's encoder, to
/// every member; with a cluster, to this node's members and, published once, to
/// every other node's.
pub(crate) async fn broadcast<M>(
    State(admin): State<Shared<M>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError>
where
    M: Clone + Send + 'static,
{
    let text = segment(path)?;
    let id = params::session_id(&text);
    if !is_json(&headers) {
        return Err(ApiError::unsupported_media_type());
    }
    let body = body.map_err(|rejection| {
        super::body::refused(rejection, admin.body_limit, admin.body_timeout)
    })?;
    let value: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::malformed_json(e.to_string()))?;
    let message = (admin.encode)(&id, value);
    let started = Instant::now();
    if let Some(cluster_broadcast) = &admin.cluster_broadcast {
        let answer = cluster_broadcast(id, message).await;
        admin.metrics.record_fanout(started.elapsed());
        return answer;
    }
    let report = admin
        .registry
        .broadcast(id, message)
        .map_err(|_| ApiError::unknown_session(&text))?;
    admin.metrics.record_fanout(started.elapsed());
    Ok(Json(report).into_response())
}

/// Whether the body says it is JSON: `application/json` or `application/*+json`,
/// with any parameters. Requiring it keeps a browser page from posting a broadcast
/// to a loopback API as a form: such a request would need a CORS preflight, which
/// this API never grants.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}
