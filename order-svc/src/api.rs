//! The REST API: `/api/v1/menu`, `/api/v1/orders`.

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, FromRequest, Path, Request, State, rejection::PathRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use common::transition::Cause;
use common::{failpoint, http::ErrorBody};
use contract::{
    MenuItemId, OrderId,
    auth::{TokenHash, TrackingToken},
    status::OrderStatus,
};
use serde_json::Value;
use std::{net::IpAddr, sync::Arc};
use tower_governor::{
    GovernorLayer, errors::GovernorError, governor::GovernorConfigBuilder,
    key_extractor::KeyExtractor,
};

use crate::{
    AppState,
    domain::{NewOrderRequest, oid, parse_new_order},
    error::{ApiError, FieldErrors},
    idempotency::{self, Reply},
    store::{Order, PlaceError, StatusChange},
    views::{MenuItemView, OrderView, PlacedOrderView},
};

/// Header carrying the id that ties a request to the events it causes.
pub const CORRELATION_HEADER: &str = "x-correlation-id";

/// The OpenAPI document of order-svc (served at `/api/v1/openapi.json`).
#[derive(Debug, utoipa::OpenApi)]
#[openapi(
    info(title = "foodchain order-svc", description = "The menu, order creation and order lookup. Generated from the handlers; do not edit docs/openapi/order-svc.json by hand (`cargo run -p apidocs`)."),
    paths(list_menu, get_menu_item, create_order, get_order, cancel_order),
    modifiers(&BearerSchemes),
    tags(
        (name = "menu", description = "The menu with live stock"),
        (name = "orders", description = "Placing and reading orders"),
    )
)]
pub struct ApiDoc;

/// The two bearer credentials of the API.
#[derive(Debug)]
struct BearerSchemes;

impl utoipa::Modify for BearerSchemes {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        for (name, what) in [
            (
                "tracking_token",
                "The order's tracking token, returned once by POST /api/v1/orders",
            ),
            ("admin_token", "The deployment's ADMIN_TOKEN"),
        ] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(what))
                        .build(),
                ),
            );
        }
    }
}

/// order-svc's OpenAPI document (its routes, the admin API, operations).
pub fn openapi() -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi as _;
    let mut doc = ApiDoc::openapi();
    doc.merge(crate::admin::AdminApi::openapi());
    common::http::openapi_document(doc)
}

/// The rate limiter of order creation, for its periodic clean-up.
pub type Limiter = Arc<
    governor::RateLimiter<
        IpAddr,
        governor::state::keyed::DefaultKeyedStateStore<IpAddr>,
        governor::clock::QuantaClock,
        governor::middleware::NoOpMiddleware<governor::clock::QuantaInstant>,
    >,
>;

/// Rate limits are per client address (see [`common::http::client_ip`]);
/// a request with no address at all (in-process tests) shares one bucket.
#[derive(Debug, Clone, Copy)]
struct ClientKey {
    trust_forwarded_for: bool,
}

impl KeyExtractor for ClientKey {
    type Key = IpAddr;

    fn extract<T>(&self, req: &axum::http::Request<T>) -> Result<IpAddr, GovernorError> {
        let peer = common::http::peer_ip(req);
        Ok(
            common::http::client_ip(req.headers(), peer, self.trust_forwarded_for)
                .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
        )
    }
}

/// The REST routes (and the rate limiter of order creation, if limited).
pub fn router(state: AppState) -> (Router, Option<Limiter>) {
    let mut create = post(create_order);
    let mut limiter = None;
    if state.order_rate.per_sec > 0 {
        let config = GovernorConfigBuilder::default()
            .key_extractor(ClientKey {
                trust_forwarded_for: state.trust_forwarded_for,
            })
            .period(std::time::Duration::from_secs(1) / state.order_rate.per_sec)
            .burst_size(state.order_rate.burst)
            .finish()
            .expect("a positive rate and burst make a valid limiter");
        limiter = Some(config.limiter().clone());
        let layer = GovernorLayer::new(config).error_handler(|e: GovernorError| match e {
            GovernorError::TooManyRequests { wait_time, .. } => {
                ApiError::RateLimited(wait_time).into_response()
            }
            other => ApiError::Internal(anyhow::anyhow!("rate limiter: {other}")).into_response(),
        });
        create = create.layer(layer);
    }
    let router = Router::new()
        .route("/api/v1/menu", get(list_menu))
        .route("/api/v1/menu/{id}", get(get_menu_item))
        .route("/api/v1/orders", create)
        .route("/api/v1/orders/{id}", get(get_order))
        .route("/api/v1/orders/{id}/cancel", post(cancel_order))
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
        .with_state(state)
        .merge(common::http::openapi_route(openapi()));
    (router, limiter)
}

/// The whole menu with live stock, by category then name.
#[utoipa::path(get, path = "/api/v1/menu", tag = "menu",
    responses(
        (status = 200, description = "Every menu item", body = [MenuItemView]),
        (status = 503, description = "The database is unavailable; retry (`Retry-After`)", body = ErrorBody),
    ))]
async fn list_menu(State(st): State<AppState>) -> Result<Json<Vec<MenuItemView>>, ApiError> {
    let items = st.store.menu().await.map_err(db_error)?;
    Ok(Json(items.into_iter().map(Into::into).collect()))
}

/// One menu item.
#[utoipa::path(get, path = "/api/v1/menu/{id}", tag = "menu",
    params(("id" = MenuItemId, Path, description = "Menu item id")),
    responses(
        (status = 200, description = "The item", body = MenuItemView),
        (status = 404, description = "`not_found`: no such item", body = ErrorBody),
        (status = 422, description = "`invalid_id`: not 24 hex digits", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry (`Retry-After`)", body = ErrorBody),
    ))]
async fn get_menu_item(
    State(st): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<MenuItemView>, ApiError> {
    let id = path_id(id, "menu item", MenuItemId::parse, MenuItemId::bytes)?;
    let item = st
        .store
        .menu_item(id)
        .await
        .map_err(db_error)?
        .ok_or(ApiError::NotFound("menu item"))?;
    Ok(Json(item.into()))
}

/// An order and its current status, for its owner: the request must carry
/// the order's tracking token (`Authorization: Bearer <token>`). Without it,
/// or with a wrong one, the answer is the same 404 as for an order that does
/// not exist (tokens are compared in constant time), so ids reveal nothing.
#[utoipa::path(get, path = "/api/v1/orders/{id}", tag = "orders",
    params(("id" = OrderId, Path, description = "Order id")),
    security(("tracking_token" = [])),
    responses(
        (status = 200, description = "The order", body = OrderView),
        (status = 404, description = "`not_found`: no such order, or no (or a wrong) tracking token", body = ErrorBody),
        (status = 422, description = "`invalid_id`: not 24 hex digits", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry (`Retry-After`)", body = ErrorBody),
    ))]
async fn get_order(
    State(st): State<AppState>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<OrderView>, ApiError> {
    let id = path_id(id, "order", OrderId::parse, OrderId::bytes)?;
    let token = common::http::bearer(&headers).and_then(TrackingToken::parse);
    let order = st.store.order(id).await.map_err(db_error)?;
    let hash = order
        .as_ref()
        .map_or(TokenHash::NONE, |o| o.tracking_token_hash);
    match order {
        Some(order) if hash.matches(token.as_ref()) => Ok(Json(order.into())),
        _ => Err(ApiError::NotFound("order")),
    }
}

/// Why the customer cancels (optional).
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // a schema: the body is checked by `cancel_body`
pub struct CancelRequest {
    /// Up to 300 characters.
    #[schema(max_length = 300)]
    reason: Option<String>,
}

/// Longest cancellation reason.
const MAX_REASON: usize = 300;

/// Cancels an order for its owner (its tracking token), while it is
/// `created`, `confirmed` or `preparing`: in one transaction the order moves
/// to `cancelled` and the stock of every line is put back, and
/// `order.cancelled.v1` is written to the outbox; the kitchen stops and no
/// delivery is ever created. A cancel that meets the kitchen handing the
/// order to a courier loses or wins as one transition: exactly one applies.
/// Repeating it answers 200 with the same order; `Idempotency-Key` works as
/// for placing an order.
#[utoipa::path(post, path = "/api/v1/orders/{id}/cancel", tag = "orders",
    params(
        ("id" = OrderId, Path, description = "Order id"),
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 visible ASCII characters; the same key with the same body answers the same"),
    ),
    security(("tracking_token" = [])),
    request_body(content = Option<CancelRequest>, content_type = "application/json", description = "Optional; an empty body is fine"),
    responses(
        (status = 200, description = "The order, cancelled (now or before)", body = OrderView),
        (status = 404, description = "`not_found`: no such order, or no (or a wrong) tracking token", body = ErrorBody),
        (status = 409, description = "`not_cancellable`: the order is out for delivery or later, or rejected; `status` is its current status", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: a body that is not `application/json`", body = ErrorBody),
        (status = 422, description = "`validation_failed`, `invalid_json`, `invalid_id`, `invalid_idempotency_key` or `idempotency_key_reused`", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry with the same Idempotency-Key (`Retry-After`)", body = ErrorBody),
    ))]
async fn cancel_order(
    State(st): State<AppState>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let oid_ = path_id(id, "order", OrderId::parse, OrderId::bytes)?;
    let body = cancel_body(&headers, &body)?;
    let token = common::http::bearer(&headers).and_then(TrackingToken::parse);
    let order = st.store.order(oid_).await.map_err(db_error)?;
    let hash = order
        .as_ref()
        .map_or(TokenHash::NONE, |o| o.tracking_token_hash);
    if !hash.matches(token.as_ref()) {
        return Err(ApiError::NotFound("order"));
    }
    let key = idempotency::from_request(
        &headers,
        &body,
        &idempotency::scope_of_cancel(&oid_.to_hex()),
    )?;
    if let Some(key) = &key
        && let Some(stored) = st.store.keys.get(key).await.map_err(db_error)?
    {
        return replay(&st, key, stored);
    }
    let reason = body["reason"]
        .as_str()
        .map(str::trim)
        .filter(|r| !r.is_empty());
    let correlation_id = correlation_id(&headers);
    let change = st
        .store
        .apply_status(
            oid_,
            OrderStatus::Cancelled,
            Cause::Request {
                correlation_id: &correlation_id,
            },
            reason,
        )
        .await
        .map_err(db_error)?;
    let answer = match change {
        StatusChange::Moved { .. } | StatusChange::Stale(OrderStatus::Cancelled) => {
            let order = st
                .store
                .order(oid_)
                .await
                .map_err(db_error)?
                .ok_or(ApiError::NotFound("order"))?;
            Reply {
                status: StatusCode::OK.as_u16(),
                body: serde_json::to_string(&OrderView::from(order))
                    .expect("an order view always serialises"),
                location: None,
            }
        }
        StatusChange::Stale(current)
        | StatusChange::Refused(current)
        | StatusChange::Early(current) => {
            let (status, body) = ApiError::NotCancellable(current).status_and_body();
            Reply {
                status: status.as_u16(),
                body: body.to_string(),
                location: None,
            }
        }
        StatusChange::Missing => return Err(ApiError::NotFound("order")),
    };
    if let Some(key) = &key {
        match st.store.keys.store(None, key, &answer, None).await {
            Ok(()) => {}
            Err(idempotency::StoreError::Taken(_)) => return replay_taken(&st, Some(key)).await,
            Err(idempotency::StoreError::Mongo(e)) => return Err(db_error(e)),
        }
    }
    Ok(respond(answer))
}

/// A cancel's body: empty, or JSON `{"reason"?: string}`.
fn cancel_body(headers: &HeaderMap, body: &Bytes) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::json!({}));
    }
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| {
            m.trim().eq_ignore_ascii_case("application/json") || m.trim().ends_with("+json")
        });
    if !is_json {
        return Err(ApiError::UnsupportedMediaType);
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    let mut errs = FieldErrors::default();
    match value.as_object() {
        None => errs.add("body", "must be a JSON object"),
        Some(obj) => {
            for k in obj.keys().filter(|k| *k != "reason") {
                errs.add(k.clone(), "unknown field (expected: reason)");
            }
            match obj.get("reason") {
                None | Some(Value::Null) => {}
                Some(Value::String(r))
                    if r.chars().count() <= MAX_REASON && !r.chars().any(char::is_control) => {}
                Some(_) => errs.add(
                    "reason",
                    "must be a string of at most 300 characters, no control characters",
                ),
            }
        }
    }
    if errs.is_empty() {
        Ok(value)
    } else {
        Err(ApiError::Validation(errs))
    }
}

/// Places an order: reserves the stock of every line (all or nothing) and
/// stores the order in one transaction. With `Idempotency-Key`, a retry gets
/// the first answer again (`Idempotent-Replayed: true`), never a second order.
#[utoipa::path(post, path = "/api/v1/orders", tag = "orders",
    request_body(content = NewOrderRequest, content_type = "application/json"),
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 visible ASCII characters; the same key with the same body answers the same"),
        ("X-Correlation-Id" = Option<String>, Header, description = "Ties the request to the events it causes (1 to 128 visible ASCII characters); generated when absent"),
    ),
    responses(
        (status = 201, description = "Placed (or its replay). The body carries, once, the order's `tracking_token` (keep it: reading the order, its timeline and its live tracker need it) and a `tracking_url` to the tracker page", body = PlacedOrderView,
            headers(
                ("Location" = String, description = "`/api/v1/orders/<id>`"),
                ("X-Correlation-Id" = String, description = "The request's correlation id"),
                ("Idempotent-Replayed" = String, description = "`true` on a replay of an Idempotency-Key"),
            )),
        (status = 404, description = "`item_not_found`: items not on the menu; `fields` names them", body = ErrorBody),
        (status = 409, description = "`insufficient_stock`: not enough left of some items; `fields` names the lines, `message` the dishes; nothing was reserved", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: the body is over `MAX_BODY_BYTES` (16 KiB)", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not `Content-Type: application/json`", body = ErrorBody),
        (status = 422, description = "`validation_failed` (every bad field in `fields`), `invalid_json`, `invalid_idempotency_key` or `idempotency_key_reused` (the key came with another body)", body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many orders from this client; retry after `Retry-After` seconds", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait"))),
        (status = 503, description = "The database is unavailable; retry with the same Idempotency-Key (`Retry-After`)", body = ErrorBody),
    ))]
async fn create_order(
    State(st): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let key = idempotency::from_request(&headers, &body, idempotency::CREATE)?;
    // A stored key (a replay) is found by the order writer, which looks up
    // the keys of a whole batch at once (see crate::placing), unless the
    // body does not even validate: then the stored answer, if any, wins.
    let new = match parse_new_order(&body, st.limits) {
        Ok(new) => new,
        Err(fields) => {
            if let Some(key) = &key
                && let Some(stored) = st.store.keys.get(key).await.map_err(db_error)?
            {
                return replay(&st, key, stored);
            }
            return Err(ApiError::Validation(fields));
        }
    };
    let correlation_id = correlation_id(&headers);
    let token = TrackingToken::generate();
    let placed = match st
        .store
        .place_order(&new, &correlation_id, key.as_ref(), &token, created)
        .await
    {
        Ok(placed) => placed,
        Err(PlaceError::KeyTaken) => return replay_taken(&st, key.as_ref()).await,
        Err(PlaceError::Mongo(e)) => return Err(db_error(e)),
        Err(refusal) => {
            let error = match refusal {
                PlaceError::UnknownItems(f) => ApiError::UnknownItems(f),
                PlaceError::InsufficientStock { fields, names } => {
                    ApiError::InsufficientStock { fields, names }
                }
                PlaceError::KeyTaken | PlaceError::Mongo(_) => unreachable!("handled above"),
            };
            return refuse(&st, key.as_ref(), error).await;
        }
    };
    failpoint::hit(st.store.outbox.namespace(), "order-svc.after_commit").await;
    let mut response = respond(with_token(placed.reply, &token, &st.tracker_base_url));
    if let Ok(v) = HeaderValue::from_str(&correlation_id) {
        response.headers_mut().insert(CORRELATION_HEADER, v);
    }
    Ok(response)
}

/// The answer to a placed order: `201 Created`, the order, its `Location`.
/// Built here and stored with the order, so that a replay of its
/// Idempotency-Key answers exactly the same (its tracking token is added by
/// [`with_token`], and stored only sealed).
fn created(order: &Order) -> Reply {
    Reply {
        status: StatusCode::CREATED.as_u16(),
        body: serde_json::to_string(&OrderView::from(order.clone()))
            .expect("an order view always serialises"),
        location: Some(format!("/api/v1/orders/{}", order.id.to_hex())),
    }
}

/// `reply` (a placed order's) with its tracking token and tracking URL.
fn with_token(mut reply: Reply, token: &TrackingToken, tracker_base_url: &str) -> Reply {
    if let Ok(serde_json::Value::Object(mut body)) = serde_json::from_str(&reply.body) {
        let id = body
            .get("id")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned();
        body.insert("tracking_token".into(), token.expose().into());
        body.insert(
            "tracking_url".into(),
            format!("{tracker_base_url}/track/{id}#token={}", token.expose()).into(),
        );
        reply.body = serde_json::Value::Object(body).to_string();
    }
    reply
}

/// A [`Reply`] as an HTTP response.
fn respond(reply: Reply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    let mut response = (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        reply.body,
    )
        .into_response();
    if let Some(v) = reply.location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

/// The stored response of `key` (with its tracking token unsealed), or `422`
/// if it came with another body.
fn replay(
    st: &AppState,
    key: &idempotency::Key,
    stored: idempotency::Stored,
) -> Result<Response, ApiError> {
    if stored.body_hash != key.body_hash {
        return Err(ApiError::IdempotencyKeyReused);
    }
    let reply = match stored.sealed_token.as_deref().and_then(|s| key.unseal(s)) {
        Some(token) => with_token(stored.reply, &token, &st.tracker_base_url),
        None => stored.reply,
    };
    let mut response = respond(reply);
    response
        .headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    Ok(response)
}

/// A twin request stored the key first: answer with its response.
async fn replay_taken(st: &AppState, key: Option<&idempotency::Key>) -> Result<Response, ApiError> {
    let key =
        key.ok_or_else(|| ApiError::Internal(anyhow::anyhow!("key conflict without a key")))?;
    let stored = st.store.keys.get(key).await.map_err(db_error)?;
    let stored =
        stored.ok_or_else(|| ApiError::Unavailable(anyhow::anyhow!("idempotency key vanished")))?;
    replay(st, key, stored)
}

/// A business refusal; with a key, stored so that a retry gets the same answer.
async fn refuse(
    st: &AppState,
    key: Option<&idempotency::Key>,
    error: ApiError,
) -> Result<Response, ApiError> {
    let Some(key) = key else { return Err(error) };
    let (status, body) = error.status_and_body();
    let reply = Reply {
        status: status.as_u16(),
        body: body.to_string(),
        location: None,
    };
    match st.store.keys.store(None, key, &reply, None).await {
        Ok(()) => Err(error),
        Err(idempotency::StoreError::Taken(_)) => replay_taken(st, Some(key)).await,
        Err(idempotency::StoreError::Mongo(e)) => Err(db_error(e)),
    }
}

/// A path id of the contract type `I` (its `parse` and 12 bytes), as stored.
fn path_id<I>(
    id: Result<Path<String>, PathRejection>,
    what: &'static str,
    parse: fn(&str) -> Result<I, contract::ids::InvalidId>,
    bytes: fn(I) -> [u8; 12],
) -> Result<bson::oid::ObjectId, ApiError> {
    let value = id
        .map_err(|r| ApiError::InvalidId {
            what,
            value: r.body_text(),
        })?
        .0;
    parse(&value)
        .map(|id| oid(bytes(id)))
        .map_err(|_| ApiError::InvalidId { what, value })
}

/// The caller's correlation id if it sent a sane one, else a fresh one.
fn correlation_id(headers: &HeaderMap) -> String {
    headers
        .get(CORRELATION_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| (1..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned)
}

/// Database errors: unreachable or contended → 503 (retry), anything else → 500.
pub(crate) fn db_error(e: mongodb::error::Error) -> ApiError {
    if common::mongo::is_unavailable(&e) {
        ApiError::Unavailable(e.into())
    } else {
        ApiError::Internal(e.into())
    }
}

/// A JSON body, with every rejection in the API's own error format.
#[derive(Debug)]
pub struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(str::trim)
            .is_some_and(|mime| {
                mime.eq_ignore_ascii_case("application/json") || mime.ends_with("+json")
            });
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::InvalidJson(r.body_text())
            }
        })?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::InvalidJson(e.to_string()))
    }
}
