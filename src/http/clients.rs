//! `/clients`: list with filters, show one profile, kick.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::error::ApiError;
use super::params::{self, Page, Query};
use super::Shared;
use crate::{CancelledTask, ClientId, ClientInfo, Registry, SessionId, Task};

/// A client as listed: its id, then its profile's fields.
#[derive(Serialize)]
struct ClientView<'a> {
    id: ClientId,
    #[serde(flatten)]
    profile: &'a ClientInfo,
}

#[derive(Serialize)]
struct ClientPage<'a> {
    clients: Vec<ClientView<'a>>,
    next_cursor: Option<String>,
}

#[derive(Serialize)]
struct ClientDetail<'a> {
    id: ClientId,
    #[serde(flatten)]
    profile: &'a ClientInfo,
    sessions: Vec<SessionId>,
    tasks: Vec<Task>,
}

#[derive(Serialize)]
struct Kicked<'a> {
    id: ClientId,
    key: Option<&'a str>,
    reason: &'a str,
    sessions: Vec<SessionId>,
    cancelled_tasks: Vec<CancelledTask>,
}

/// `GET /clients`.
pub(crate) async fn list<M>(
    State(admin): State<Shared<M>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut query = Query::parse(raw.as_deref());
    let filter = params::client_filter(&mut query)?;
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
    let mut ids = admin.registry.list(&filter);
    ids.sort_unstable();
    let (ids, next) = page.apply(ids, |id| *id, after);
    // A client may leave between the query and this read; it is left out.
    let infos: Vec<(ClientId, Arc<ClientInfo>)> = ids
        .into_iter()
        .filter_map(|id| Some((id, admin.registry.info(id).ok()?)))
        .collect();
    let body = ClientPage {
        clients: infos
            .iter()
            .map(|(id, info)| ClientView {
                id: *id,
                profile: info,
            })
            .collect(),
        next_cursor: next.map(|id| id.to_string()),
    };
    Ok(Json(&body).into_response())
}

/// `GET /clients/{key}`.
pub(crate) async fn show<M>(
    State(admin): State<Shared<M>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let who = segment(path)?;
    let registry = &admin.registry;
    let id = resolve(registry, &who)?;
    let gone = |_| ApiError::unknown_client(&who);
    let info = registry.info(id).map_err(gone)?;
    let sessions = registry.sessions_of(id).map_err(gone)?;
    let mut tasks = registry.tasks_of_orchestrator(id).map_err(gone)?;
    tasks.extend(registry.tasks_of_device(id).map_err(gone)?);
    let body = ClientDetail {
        id,
        profile: &info,
        sessions,
        tasks,
    };
    Ok(Json(&body).into_response())
}

/// `DELETE /clients/{key}?reason=...`.
pub(crate) async fn kick<M>(
    State(admin): State<Shared<M>>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let who = segment(path)?;
    let mut query = Query::parse(raw.as_deref());
    let reason = params::kick_reason(&mut query)?;
    query.finish()?;
    let registry = &admin.registry;
    let id = resolve(registry, &who)?;
    let info = registry.info(id).ok();
    let gone = registry
        .kick(id, reason.as_str())
        .map_err(|_| ApiError::unknown_client(&who))?;
    let body = Kicked {
        id: gone.id,
        key: info.as_ref().and_then(|i| i.key.as_deref()),
        reason: &reason,
        sessions: gone.sessions,
        cancelled_tasks: gone.cancelled_tasks,
    };
    Ok(Json(&body).into_response())
}

pub(crate) fn segment(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(segment)| segment)
        .map_err(|e| ApiError::invalid_path(e.body_text()))
}

/// The client a path segment names: the connection holding that key, or else the
/// client with that id (`c{shard}.{index}.{generation}`), if online.
fn resolve<M>(registry: &Registry<M>, who: &str) -> Result<ClientId, ApiError> {
    if let Some(id) = registry.id_of(who) {
        return Ok(id);
    }
    match who.parse::<ClientId>() {
        Ok(id) if registry.is_online(id) => Ok(id),
        _ => Err(ApiError::unknown_client(who)),
    }
}
