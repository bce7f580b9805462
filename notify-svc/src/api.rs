//! Routes: the WebSocket, the timeline snapshot, and the web pages ([`crate::web`]).

use std::sync::Arc;

use std::{collections::HashMap, net::IpAddr, sync::Mutex};

use axum::{
    Extension, Json, Router,
    extract::{
        ConnectInfo, Path, Query, State, WebSocketUpgrade,
        rejection::{PathRejection, QueryRejection},
        ws::rejection::WebSocketUpgradeRejection,
    },
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use futures::{SinkExt, StreamExt};
use tokio_util::sync::CancellationToken;

use common::http::ErrorBody;
use contract::{
    OrderId,
    auth::{TokenHash, TrackingToken},
};

use crate::{
    Settings,
    hub::Hub,
    settings::WsLimits,
    timeline::{Snapshot, TimelineStore},
    web,
    ws::{self, KeepAlive},
};

/// What the routes share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Stored timelines.
    pub store: TimelineStore,
    /// This replica's live feed.
    pub hub: Arc<Hub>,
    /// Socket keep-alive and idle timeout.
    pub keep_alive: KeepAlive,
    /// The web app and the operator console, rendered for these settings.
    pub web: Arc<crate::web::Web>,
    /// Closes sockets on shutdown.
    pub shutdown: CancellationToken,
    /// What one client may do with sockets.
    pub ws_limits: WsLimits,
    /// Trust `X-Forwarded-For` for client addresses.
    pub trust_forwarded_for: bool,
    /// Open sessions per client address.
    pub sessions: Arc<Sessions>,
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
                idle_timeout: settings.ws_limits.idle_timeout,
            },
            web: crate::web::Web::new(settings),
            shutdown,
            ws_limits: settings.ws_limits,
            trust_forwarded_for: settings.edge.trust_forwarded_for,
            sessions: Arc::default(),
        }
    }
}

/// Open tracker sessions per client address, for the per-client cap.
#[derive(Debug, Default)]
pub struct Sessions(Mutex<HashMap<IpAddr, usize>>);

/// One open session; counted while it lives.
#[derive(Debug)]
struct SessionSlot {
    sessions: Arc<Sessions>,
    client: IpAddr,
}

impl Sessions {
    /// A slot for `client`, unless it already holds `max` sessions.
    fn take(self: &Arc<Self>, client: IpAddr, max: usize) -> Option<SessionSlot> {
        let mut open = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = open.entry(client).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(SessionSlot {
            sessions: self.clone(),
            client,
        })
    }

    /// Open sessions of all clients.
    pub fn open(&self) -> usize {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .sum()
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut open = self
            .sessions
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.client);
            }
        }
    }
}

/// The OpenAPI document of notify-svc (served at `/api/v1/openapi.json`).
#[derive(Debug, utoipa::OpenApi)]
#[openapi(
    info(title = "foodchain notify-svc", description = "Order timelines and live tracking over WebSocket, and the web app and operator console. Generated from the handlers; do not edit docs/openapi/notify-svc.json by hand (`cargo run -p apidocs`)."),
    paths(web::page, web::orders_page, web::track_page, web::ops_page, web::asset, track, timeline),
    modifiers(&TrackingTokenScheme),
    tags(
        (name = "tracking", description = "An order's timeline, as a snapshot or live"),
        (name = "web", description = "The web app (menu, cart, checkout, live tracker, my orders) and the operator console, compiled into the binary"),
    )
)]
pub struct ApiDoc;

/// The tracking token as a bearer credential.
#[derive(Debug)]
struct TrackingTokenScheme;

impl utoipa::Modify for TrackingTokenScheme {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "tracking_token",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(
                            "The order's tracking token, returned once by order-svc's POST /api/v1/orders",
                        ))
                        .build(),
                ),
            );
    }
}

/// notify-svc's OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    common::http::openapi_document(<ApiDoc as utoipa::OpenApi>::openapi())
}

/// The routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(web::page))
        .route("/orders", get(web::orders_page))
        .route("/track/{id}", get(web::track_page))
        .route("/ops", get(web::ops_page))
        .route("/assets/{version}/{file}", get(web::asset))
        .route("/ws/orders/{id}", get(track))
        .route("/api/v1/orders/{id}/timeline", get(timeline))
        .with_state(state)
        .merge(common::http::openapi_route(openapi()))
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
    /// This client holds too many trackers.
    #[error("too many open trackers from this client; close some first")]
    TooManySessions,
    /// No such file of the web pages.
    #[error("no such file")]
    NoSuchFile,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            Self::InvalidId(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_id"),
            Self::NotFound | Self::NoSuchFile => (StatusCode::NOT_FOUND, "not_found"),
            Self::NotWebSocket(_) => (StatusCode::UPGRADE_REQUIRED, "websocket_required"),
            Self::Unavailable(e) => {
                tracing::warn!(error = %e, "loading a timeline failed");
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            Self::TooManySessions => (StatusCode::TOO_MANY_REQUESTS, "too_many_sessions"),
        };
        let mut response = common::http::error_response(status, code, &self.to_string(), None);
        if status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }
}

/// The order id from the path.
fn order_id(id: Result<Path<String>, PathRejection>) -> Result<OrderId, ApiError> {
    let id = id.map_err(|r| ApiError::InvalidId(r.body_text()))?.0;
    OrderId::parse(&id).map_err(|_| ApiError::InvalidId(id))
}

impl AppState {
    /// The order's snapshot (stored timeline plus what this replica saw live
    /// recently), if `token` is the order's tracking token. An unknown
    /// order, a missing token and a wrong one all give `None`, after the
    /// same constant-time comparison.
    async fn authorized(
        &self,
        order_id: OrderId,
        token: Option<&TrackingToken>,
    ) -> mongodb::error::Result<Option<Snapshot>> {
        let stored = self.store.load(order_id).await?;
        let (recent, live_hash) = self.hub.recent(order_id);
        let hash = stored.token_hash.or(live_hash).unwrap_or(TokenHash::NONE);
        if !hash.matches(token) {
            return Ok(None);
        }
        Ok(Some(Snapshot::from_entries(
            order_id,
            stored.entries.into_iter().chain(recent),
        )))
    }
}

/// The subprotocol trackers speak; a browser sends its token as a second
/// offered protocol, `bearer.<token>` (browsers cannot set headers on a
/// WebSocket, and a protocol, unlike a query string, is never in a URL).
pub const SUBPROTOCOL: &str = "foodchain.v1";

/// The token a tracker presented: `Authorization: Bearer`, a
/// `bearer.<token>` subprotocol, or `?token=` (in that order of preference).
fn presented_token(headers: &HeaderMap, query: &TokenQuery) -> Option<TrackingToken> {
    common::http::bearer(headers)
        .and_then(TrackingToken::parse)
        .or_else(|| {
            headers
                .get_all(header::SEC_WEBSOCKET_PROTOCOL)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .find_map(|p| {
                    p.trim()
                        .strip_prefix("bearer.")
                        .and_then(TrackingToken::parse)
                })
        })
        .or_else(|| query.token.as_deref().and_then(TrackingToken::parse))
}

/// `?token=<tracking token>` (for clients that can set neither a header nor
/// a subprotocol).
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TokenQuery {
    /// The order's tracking token.
    token: Option<String>,
}

/// An order's timeline: every status it and its delivery reached, in flow
/// order. Needs the order's tracking token (`Authorization: Bearer`);
/// without it, or with a wrong one, 404 as for an unknown order.
#[utoipa::path(get, path = "/api/v1/orders/{id}/timeline", tag = "tracking",
    params(("id" = OrderId, Path, description = "Order id")),
    security(("tracking_token" = [])),
    responses(
        (status = 200, description = "The timeline", body = Snapshot),
        (status = 404, description = "`not_found`: nothing is known about this order, or no (or a wrong) tracking token", body = ErrorBody),
        (status = 422, description = "`invalid_id`: not an order id", body = ErrorBody),
        (status = 503, description = "The timeline store is unavailable; retry (`Retry-After`)", body = ErrorBody),
    ))]
async fn timeline(
    State(st): State<AppState>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = order_id(id)?;
    let token = common::http::bearer(&headers).and_then(TrackingToken::parse);
    let snapshot = st
        .authorized(id, token.as_ref())
        .await
        .map_err(ApiError::Unavailable)?
        .ok_or(ApiError::NotFound)?;
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(snapshot)).into_response())
}

/// Read buffer of one WebSocket (grows when a frame needs more).
const WS_READ_BUFFER: usize = 4096;

/// Live tracking over WebSocket: a `snapshot` message on connect, then one
/// `update` message per new status, in flow order; the server pings, and
/// closes with 1000 when idle, 1001 on shutdown, 1011 when the timeline
/// cannot be loaded, 1013 when the client fell behind (reconnect for a fresh
/// snapshot). Needs the order's tracking token: offer the subprotocols
/// `foodchain.v1` and `bearer.<token>` (browsers), or send
/// `Authorization: Bearer <token>`, or `?token=<token>`. Without it, or with
/// a wrong one: 404, as for an unknown order.
#[utoipa::path(get, path = "/ws/orders/{id}", tag = "tracking",
    params(("id" = OrderId, Path, description = "Order id"), TokenQuery),
    security((), ("tracking_token" = [])),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol (subprotocol `foodchain.v1`)"),
        (status = 404, description = "`not_found`: nothing is known about this order, or no (or a wrong) tracking token", body = ErrorBody),
        (status = 422, description = "`invalid_id`: not an order id", body = ErrorBody),
        (status = 426, description = "`websocket_required`: a plain HTTP request", body = ErrorBody),
        (status = 429, description = "`too_many_sessions`: this client holds `WS_MAX_SESSIONS_PER_CLIENT` trackers already", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait"))),
        (status = 503, description = "The timeline store is unavailable; retry (`Retry-After`)", body = ErrorBody),
    ))]
async fn track(
    State(st): State<AppState>,
    peer: Option<Extension<ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
    query: Result<Query<TokenQuery>, QueryRejection>,
    id: Result<Path<String>, PathRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let id = order_id(id)?;
    let token = presented_token(&headers, &query.map(|q| q.0).unwrap_or_default());
    let peer = peer.map(|Extension(ConnectInfo(addr))| addr.ip());
    let upgrade = upgrade.map_err(|r| ApiError::NotWebSocket(r.body_text()))?;
    let snapshot = st
        .authorized(id, token.as_ref())
        .await
        .map_err(ApiError::Unavailable)?
        .ok_or(ApiError::NotFound)?;
    let client = common::http::client_ip(&headers, peer, st.trust_forwarded_for)
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let slot = st
        .sessions
        .take(client, st.ws_limits.max_sessions_per_client)
        .ok_or(ApiError::TooManySessions)?;
    // Small buffers: a client only sends pongs and a close, and every
    // message sent is a few hundred bytes, flushed at once. The defaults
    // (128 KiB each way) would make an idle tracker cost ~140 KB.
    let upgrade = upgrade
        .protocols([SUBPROTOCOL])
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(0)
        .max_frame_size(st.ws_limits.max_frame_bytes)
        .max_message_size(st.ws_limits.max_frame_bytes);
    Ok(upgrade.on_upgrade(move |socket| async move {
        let _slot = slot;
        // Subscribe, then load again: nothing published meanwhile is missed.
        let mut subscription = st.hub.subscribe(id);
        let (mut tx, rx) = socket.split();
        let snapshot = match st.store.load(id).await {
            Ok(stored) => Snapshot::from_entries(
                id,
                snapshot
                    .timeline
                    .into_iter()
                    .chain(stored.entries)
                    .chain(st.hub.recent(id).0),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "loading a timeline failed; closing the socket");
                let _ = tx
                    .send(ws::close(1011, "timeline unavailable; retry"))
                    .await;
                return;
            }
        };
        let updates = &mut subscription.updates;
        // While a status is missing, the stored timeline is read again.
        let refresh = || async {
            st.store
                .load(id)
                .await
                .map(|s| s.entries)
                .unwrap_or_default()
        };
        let (keep_alive, gaps) = (st.keep_alive, ws::Gaps::default());
        let shutdown = st.shutdown.clone();
        ws::session(
            tx, rx, snapshot, updates, keep_alive, gaps, refresh, shutdown,
        )
        .await;
    }))
}
