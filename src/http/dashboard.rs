//! `GET /dashboard`: the operations page, embedded in the binary.
//!
//! One HTML page, its script and style, and the vendored chart library
//! ([uPlot](https://github.com/leeoniya/uPlot), MIT, see
//! `src/http/assets/vendor/uplot/`). No build step and no request beyond this
//! router: the page reads everything from [`/events`](super::events).
//!
//! These routes serve no data, so they need no token; the page asks for the token
//! when `/events` answers 401 and sends it as a bearer header, never in a URL.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const PAGE: &str = include_str!("assets/dashboard.html");
const SCRIPT: &str = include_str!("assets/dashboard.js");
const STYLE: &str = include_str!("assets/dashboard.css");
const UPLOT: &str = include_str!("assets/vendor/uplot/uPlot.iife.min.js");
const UPLOT_STYLE: &str = include_str!("assets/vendor/uplot/uPlot.min.css");
const UPLOT_LICENSE: &str = include_str!("assets/vendor/uplot/LICENSE");

/// Only this origin's script, style and connections; no framing. uPlot sizes
/// its elements through inline styles, hence `style-src 'unsafe-inline'`.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                      connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; \
                      base-uri 'none'; form-action 'none'";

/// The dashboard's routes, for any router state.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/dashboard",
            get(|| asset("text/html; charset=utf-8", PAGE)),
        )
        .route(
            "/dashboard/app.js",
            get(|| asset("text/javascript; charset=utf-8", SCRIPT)),
        )
        .route(
            "/dashboard/style.css",
            get(|| asset("text/css; charset=utf-8", STYLE)),
        )
        .route(
            "/dashboard/uplot.min.js",
            get(|| asset("text/javascript; charset=utf-8", UPLOT)),
        )
        .route(
            "/dashboard/uplot.min.css",
            get(|| asset("text/css; charset=utf-8", UPLOT_STYLE)),
        )
        .route(
            "/dashboard/uplot-license.txt",
            get(|| asset("text/plain; charset=utf-8", UPLOT_LICENSE)),
        )
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            // The assets change only with the binary; revalidating is cheap.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
