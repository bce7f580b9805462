//! Routes: the tracker page, the WebSocket and the timeline snapshot.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{
        Path, State, WebSocketUpgrade, rejection::PathRejection,
        ws::rejection::WebSocketUpgradeRejection,
    },
    http::{StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use futures::{SinkExt, StreamExt};
use tokio_util::sync::CancellationToken;

use common::http::ErrorBody;
use contract::OrderId;

use crate::{
    Settings,
    hub::Hub,
    timeline::{Snapshot, TimelineStore},
    ws::{self, KeepAlive},
};

/// What the routes share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Stored timelines.
    pub store: TimelineStore,
    /// This replica's live feed.
    pub hub: Arc<Hub>,
    /// Socket keep-alive.
    pub keep_alive: KeepAlive,
    /// The tracker page, with the order API URL filled in.
    pub page: Arc<str>,
    /// Closes sockets on shutdown.
    pub shutdown: CancellationToken,
}

impl AppState {
    /// The state of a service with `settings`.
    pub fn new(
        settings: &Settings,
        store: TimelineStore,
        hub: Arc<Hub>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            store,
            hub,
            keep_alive: KeepAlive {
                ping_interval: settings.ping_interval,
                pong_timeout: settings.pong_timeout,
            },
            page: PAGE
                .replace("__ORDER_API__", &settings.order_api_url)
                .into(),
            shutdown,
        }
    }
}

/// The tracker page template (`__ORDER_API__` is replaced at start-up).
pub const PAGE: &str = include_str!("../static/index.html");

/// The OpenAPI document of notify-svc (served at `/api/v1/openapi.json`).
#[derive(Debug, utoipa::OpenApi)]
#[openapi(
    info(title = "foodchain notify-svc", description = "Order timelines and live tracking over WebSocket. Generated from the handlers; do not edit docs/openapi/notify-svc.json by hand (`cargo run -p apidocs`)."),
    paths(page, track, timeline),
    tags((name = "tracking", description = "An order's timeline, as a snapshot or live"))
)]
pub struct ApiDoc;

/// notify-svc's OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    common::http::openapi_document(<ApiDoc as utoipa::OpenApi>::openapi())
}

/// The routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/ws/orders/{id}", get(track))
        .route("/api/v1/orders/{id}/timeline", get(timeline))
        .with_state(state)
        .merge(common::http::openapi_route(openapi()))
}

/// The tracker page.
#[utoipa::path(get, path = "/", tag = "tracking",
    responses((status = 200, description = "The tracker web page", content_type = "text/html", body = String)))]
async fn page(State(st): State<AppState>) -> Html<String> {
    Html(st.page.to_string())
}

/// notify-svc's API error.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed order id.
    #[error("`{0}` is not a valid order id")]
    InvalidId(String),
    /// Nothing known about the order.
    #[error("no timeline for this order (yet)")]
    NotFound,
    /// Plain HTTP where a WebSocket was expected.
    #[error("this endpoint speaks WebSocket: {0}")]
    NotWebSocket(String),
    /// The timeline store is down.
    #[error("the timeline store is unavailable; retry shortly")]
    Unavailable(#[source] mongodb::error::Error),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            Self::InvalidId(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_id"),
            Self::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            Self::NotWebSocket(_) => (StatusCode::UPGRADE_REQUIRED, "websocket_required"),
            Self::Unavailable(e) => {
                tracing::warn!(error = %e, "loading a timeline failed");
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
        };
        common::http::error_response(status, code, &self.to_string(), None)
    }
}

/// The order id from the path.
fn order_id(id: Result<Path<String>, PathRejection>) -> Result<OrderId, ApiError> {
    let id = id.map_err(|r| ApiError::InvalidId(r.body_text()))?.0;
    OrderId::parse(&id).map_err(|_| ApiError::InvalidId(id))
}

impl AppState {
    /// Stored timeline plus what this replica saw live recently.
    async fn snapshot(&self, order_id: OrderId) -> mongodb::error::Result<Snapshot> {
        let stored = self.store.entries(order_id).await?;
        Ok(Snapshot::from_entries(
            order_id,
            stored.into_iter().chain(self.hub.recent(order_id)),
        ))
    }
}

/// An order's timeline: every status it and its delivery reached, in flow order.
#[utoipa::path(get, path = "/api/v1/orders/{id}/timeline", tag = "tracking",
    params(("id" = OrderId, Path, description = "Order id")),
    responses(
        (status = 200, description = "The timeline", body = Snapshot),
        (status = 404, description = "`not_found`: nothing is known about this order (yet)", body = ErrorBody),
        (status = 422, description = "`invalid_id`: not an order id", body = ErrorBody),
        (status = 503, description = "The timeline store is unavailable; retry (`Retry-After`)", body = ErrorBody),
    ))]
async fn timeline(
    State(st): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = order_id(id)?;
    let snapshot = st.snapshot(id).await.map_err(ApiError::Unavailable)?;
    if snapshot.timeline.is_empty() {
        return Err(ApiError::NotFound);
    }
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(snapshot)).into_response())
}

/// Live tracking over WebSocket: a `snapshot` message on connect, then one
/// `update` message per new status, in flow order; the server pings, and
/// closes with 1001 on shutdown, 1011 when the timeline cannot be loaded,
/// 1013 when the client fell behind (reconnect for a fresh snapshot).
#[utoipa::path(get, path = "/ws/orders/{id}", tag = "tracking",
    params(("id" = OrderId, Path, description = "Order id")),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 422, description = "`invalid_id`: not an order id", body = ErrorBody),
        (status = 426, description = "`websocket_required`: a plain HTTP request", body = ErrorBody),
    ))]
async fn track(
    State(st): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let id = order_id(id)?;
    let upgrade = upgrade.map_err(|r| ApiError::NotWebSocket(r.body_text()))?;
    Ok(upgrade.on_upgrade(move |socket| async move {
        // Subscribe before loading: nothing published meanwhile is missed.
        let mut subscription = st.hub.subscribe(id);
        let (mut tx, rx) = socket.split();
        match st.snapshot(id).await {
            Ok(snapshot) => {
                let updates = &mut subscription.updates;
                // While a status is missing, the stored timeline is read again.
                let refresh = || async { st.store.entries(id).await.unwrap_or_default() };
                let (keep_alive, gaps) = (st.keep_alive, ws::Gaps::default());
                let shutdown = st.shutdown.clone();
                ws::session(
                    tx, rx, snapshot, updates, keep_alive, gaps, refresh, shutdown,
                )
                .await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "loading a timeline failed; closing the socket");
                let _ = tx
                    .send(ws::close(1011, "timeline unavailable; retry"))
                    .await;
            }
        }
    }))
}
