//! The admin API: `/api/v1/admin/...`, for operators and the operator console.
//!
//! Every route needs `Authorization: Bearer <ADMIN_TOKEN>` (compared in
//! constant time); without it, or with a wrong one, the answer is 401 with
//! `WWW-Authenticate: Bearer`. A service started without an admin token
//! refuses every admin request. Customers' personal data is visible here
//! (orders by status), and only here.
//!
//! * `GET /api/v1/admin/menu`, `POST /api/v1/admin/menu`,
//!   `PATCH /api/v1/admin/menu/{id}`, `POST /api/v1/admin/menu/{id}/restock`:
//!   the menu and its stock;
//! * `GET /api/v1/admin/orders?status=&limit=`: the newest orders;
//! * `GET /api/v1/admin/overview`: what the operator console shows (streams,
//!   consumer groups, dead letters, stock, orders by status in the last hour).

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, Query, Request, State, rejection::PathRejection, rejection::QueryRejection},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::{get, patch, post},
};
use bson::oid::ObjectId;
use chrono::{DateTime, Utc};
use common::{http::ErrorBody, settings::Secret};
use contract::redis::Conn;
use contract::{
    MenuItemId, OrderId,
    dead_letter::DeadLetter,
    events::Customer,
    redis as wire,
    status::OrderStatus,
    streams::{Namespace, Stream},
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

use crate::{
    api::{JsonBody, db_error},
    domain::oid,
    error::{ApiError, FieldErrors},
    store::{MenuItem, Order, Store},
    views::MenuItemView,
};

/// What the admin routes share.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// Menu and orders.
    pub store: Store,
    /// The streams, for the overview.
    pub redis: Conn,
    /// The deployment's key prefix.
    pub ns: Namespace,
    /// The admin token (`None`: every request is refused).
    pub token: Option<Arc<Secret>>,
}

/// The admin routes, behind the token check.
pub fn router(state: AdminState) -> Router {
    let token = state.token.clone();
    Router::new()
        .route(
            "/api/v1/admin/menu",
            get(admin_list_menu).post(admin_add_item),
        )
        .route("/api/v1/admin/menu/{id}", patch(admin_update_item))
        .route("/api/v1/admin/menu/{id}/restock", post(admin_restock))
        .route("/api/v1/admin/orders", get(admin_orders))
        .route("/api/v1/admin/overview", get(admin_overview))
        .with_state(state)
        .layer(axum::middleware::from_fn(
            move |req: Request, next: Next| {
                let token = token.clone();
                async move { require_admin(token.as_deref(), req, next).await }
            },
        ))
}

/// 401 unless the request carries the admin token.
async fn require_admin(token: Option<&Secret>, req: Request, next: Next) -> Response {
    let presented = common::http::bearer(req.headers()).unwrap_or_default();
    // Digests of equal length, compared in constant time.
    let given = Sha256::digest(presented.as_bytes());
    let expected = Sha256::digest(token.map_or("", Secret::expose).as_bytes());
    let ok: bool = given.ct_eq(&expected).into();
    if ok && token.is_some() && !presented.is_empty() {
        return next.run(req).await;
    }
    let mut response = common::http::error_response(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "the admin API needs Authorization: Bearer <admin token>",
        None,
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"foodchain-admin\""),
    );
    response
}

fn item_id(id: Result<Path<String>, PathRejection>) -> Result<ObjectId, ApiError> {
    let value = id
        .map_err(|r| ApiError::InvalidId {
            what: "menu item",
            value: r.body_text(),
        })?
        .0;
    MenuItemId::parse(&value)
        .map(|id| oid(id.bytes()))
        .map_err(|_| ApiError::InvalidId {
            what: "menu item",
            value,
        })
}

/// Every menu item with its stock.
#[utoipa::path(get, path = "/api/v1/admin/menu", tag = "admin", security(("admin_token" = [])),
    responses(
        (status = 200, description = "The menu", body = [MenuItemView]),
        (status = 401, description = "`unauthorized`: no or a wrong admin token", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry (`Retry-After`)", body = ErrorBody),
    ))]
async fn admin_list_menu(
    State(st): State<AdminState>,
) -> Result<Json<Vec<MenuItemView>>, ApiError> {
    let items = st.store.menu().await.map_err(db_error)?;
    Ok(Json(items.into_iter().map(Into::into).collect()))
}

/// A new menu item.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewItem {
    /// Stable key, unique: lowercase letters, digits and `-`.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,63}$")]
    slug: String,
    /// Display name (1 to 100 characters).
    #[schema(min_length = 1, max_length = 100)]
    name: String,
    /// One line about it (up to 300 characters).
    #[schema(max_length = 300)]
    #[serde(default)]
    description: String,
    /// Menu section (1 to 50 characters).
    #[schema(min_length = 1, max_length = 50)]
    category: String,
    /// Price of one, in cents (1 to 1,000,000).
    #[schema(minimum = 1, maximum = 1_000_000)]
    price_cents: i64,
    /// Initial stock (0 to 1,000,000).
    #[schema(minimum = 0, maximum = 1_000_000)]
    #[serde(default)]
    stock: i64,
}

/// Changes to a menu item (any subset).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemChanges {
    /// Display name (1 to 100 characters).
    #[schema(min_length = 1, max_length = 100)]
    name: Option<String>,
    /// One line about it (up to 300 characters).
    #[schema(max_length = 300)]
    description: Option<String>,
    /// Menu section (1 to 50 characters).
    #[schema(min_length = 1, max_length = 50)]
    category: Option<String>,
    /// Price of one, in cents (1 to 1,000,000).
    #[schema(minimum = 1, maximum = 1_000_000)]
    price_cents: Option<i64>,
}

/// Units to add to an item's stock.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Restock {
    /// 1 to 100,000.
    #[schema(minimum = 1, maximum = 100_000)]
    quantity: i64,
}

fn text_field(errs: &mut FieldErrors, field: &str, v: &str, min: usize, max: usize) {
    let n = v.trim().chars().count();
    if n < min || n > max || v.chars().any(char::is_control) {
        errs.add(
            field,
            format!("must be {min} to {max} characters, no control characters"),
        );
    }
}

fn price(errs: &mut FieldErrors, v: i64) {
    if !(1..=1_000_000).contains(&v) {
        errs.add("price_cents", "must be a whole number from 1 to 1000000");
    }
}

/// `T` from a JSON body, with serde's complaint as the one field error.
fn parse<T: serde::de::DeserializeOwned>(body: Value) -> Result<T, ApiError> {
    serde_json::from_value(body).map_err(|e| {
        let mut errs = FieldErrors::default();
        errs.add("body", e.to_string());
        ApiError::Validation(errs)
    })
}

/// Adds a menu item.
#[utoipa::path(post, path = "/api/v1/admin/menu", tag = "admin", security(("admin_token" = [])),
    request_body(content = NewItem, content_type = "application/json"),
    responses(
        (status = 201, description = "Added", body = MenuItemView),
        (status = 401, description = "`unauthorized`: no or a wrong admin token", body = ErrorBody),
        (status = 409, description = "`slug_taken`: an item with this slug exists", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 422, description = "`validation_failed` (with `fields`) or `invalid_json`", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry (`Retry-After`)", body = ErrorBody),
    ))]
async fn admin_add_item(
    State(st): State<AdminState>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let new: NewItem = parse(body)?;
    let mut errs = FieldErrors::default();
    let slug_ok = (1..=64).contains(&new.slug.len())
        && new
            .slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !new.slug.starts_with('-');
    if !slug_ok {
        errs.add("slug", "must be 1 to 64 lowercase letters, digits and `-`");
    }
    text_field(&mut errs, "name", &new.name, 1, 100);
    text_field(&mut errs, "description", &new.description, 0, 300);
    text_field(&mut errs, "category", &new.category, 1, 50);
    price(&mut errs, new.price_cents);
    if !(0..=1_000_000).contains(&new.stock) {
        errs.add("stock", "must be a whole number from 0 to 1000000");
    }
    if !errs.is_empty() {
        return Err(ApiError::Validation(errs));
    }
    let item = MenuItem {
        id: ObjectId::new(),
        slug: new.slug,
        name: new.name.trim().to_owned(),
        description: new.description.trim().to_owned(),
        category: new.category.trim().to_owned(),
        price_cents: new.price_cents,
        stock: new.stock,
    };
    match st.store.add_menu_item(&item).await.map_err(db_error)? {
        Some(()) => Ok((StatusCode::CREATED, Json(MenuItemView::from(item))).into_response()),
        None => Err(ApiError::Conflict(
            "slug_taken",
            "a menu item with this slug exists",
        )),
    }
}

/// Changes a menu item's name, description, category or price.
#[utoipa::path(patch, path = "/api/v1/admin/menu/{id}", tag = "admin", security(("admin_token" = [])),
    params(("id" = MenuItemId, Path, description = "Menu item id")),
    request_body(content = ItemChanges, content_type = "application/json"),
    responses(
        (status = 200, description = "The item after the change", body = MenuItemView),
        (status = 401, description = "`unauthorized`: no or a wrong admin token", body = ErrorBody),
        (status = 404, description = "`not_found`: no such item", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 422, description = "`validation_failed`, `invalid_json` or `invalid_id`", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry (`Retry-After`)", body = ErrorBody),
    ))]
async fn admin_update_item(
    State(st): State<AdminState>,
    id: Result<Path<String>, PathRejection>,
    JsonBody(body): JsonBody,
) -> Result<Json<MenuItemView>, ApiError> {
    let id = item_id(id)?;
    let c: ItemChanges = parse(body)?;
    let mut errs = FieldErrors::default();
    let mut set = bson::Document::new();
    for (field, value, min, max) in [
        ("name", &c.name, 1, 100),
        ("description", &c.description, 0, 300),
        ("category", &c.category, 1, 50),
    ] {
        if let Some(v) = value {
            text_field(&mut errs, field, v, min, max);
            set.insert(field, v.trim());
        }
    }
    if let Some(p) = c.price_cents {
        price(&mut errs, p);
        set.insert("price_cents", p);
    }
    if !errs.is_empty() {
        return Err(ApiError::Validation(errs));
    }
    st.store
        .update_menu_item(id, set)
        .await
        .map_err(db_error)?
        .map(|i| Json(i.into()))
        .ok_or(ApiError::NotFound("menu item"))
}

/// Adds units to a menu item's stock.
#[utoipa::path(post, path = "/api/v1/admin/menu/{id}/restock", tag = "admin", security(("admin_token" = [])),
    params(("id" = MenuItemId, Path, description = "Menu item id")),
    request_body(content = Restock, content_type = "application/json"),
    responses(
        (status = 200, description = "The item after the restock", body = MenuItemView),
        (status = 401, description = "`unauthorized`: no or a wrong admin token", body = ErrorBody),
        (status = 404, description = "`not_found`: no such item", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 422, description = "`validation_failed`, `invalid_json` or `invalid_id`", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry (`Retry-After`)", body = ErrorBody),
    ))]
async fn admin_restock(
    State(st): State<AdminState>,
    id: Result<Path<String>, PathRejection>,
    JsonBody(body): JsonBody,
) -> Result<Json<MenuItemView>, ApiError> {
    let id = item_id(id)?;
    let r: Restock = parse(body)?;
    if !(1..=100_000).contains(&r.quantity) {
        let mut errs = FieldErrors::default();
        errs.add("quantity", "must be a whole number from 1 to 100000");
        return Err(ApiError::Validation(errs));
    }
    st.store
        .restock(id, r.quantity)
        .await
        .map_err(db_error)?
        .map(|i| Json(i.into()))
        .ok_or(ApiError::NotFound("menu item"))
}

/// Filters of the order list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct OrdersQuery {
    /// Only orders at this status.
    status: Option<OrderStatus>,
    /// At most this many, newest first (1 to 500, default 50).
    limit: Option<i64>,
}

/// An order as operators see it (with the customer).
#[derive(Debug, Serialize, ToSchema)]
pub struct AdminOrderView {
    /// Id.
    id: OrderId,
    /// Current status.
    status: OrderStatus,
    /// Who ordered, and where it goes.
    customer: Customer,
    /// Lines.
    lines: usize,
    /// Total, in cents.
    total_cents: i64,
    /// When it was accepted.
    created_at: DateTime<Utc>,
    /// Last change.
    updated_at: DateTime<Utc>,
}

impl From<Order> for AdminOrderView {
    fn from(o: Order) -> Self {
        Self {
            id: OrderId::from_bytes(o.id.bytes()),
            status: o.status,
            customer: o.customer,
            lines: o.items.len(),
            total_cents: o.total_cents,
            created_at: o.created_at,
            updated_at: o.updated_at,
        }
    }
}

/// The newest orders, optionally at one status.
#[utoipa::path(get, path = "/api/v1/admin/orders", tag = "admin", security(("admin_token" = [])),
    params(OrdersQuery),
    responses(
        (status = 200, description = "Orders, newest first", body = [AdminOrderView]),
        (status = 401, description = "`unauthorized`: no or a wrong admin token", body = ErrorBody),
        (status = 422, description = "`validation_failed`: an unknown status, a limit out of range, another parameter", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry (`Retry-After`)", body = ErrorBody),
    ))]
async fn admin_orders(
    State(st): State<AdminState>,
    q: Result<Query<OrdersQuery>, QueryRejection>,
) -> Result<Json<Vec<AdminOrderView>>, ApiError> {
    let q = q
        .map_err(|r| {
            let mut errs = FieldErrors::default();
            errs.add("query", r.body_text());
            ApiError::Validation(errs)
        })?
        .0;
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        let mut errs = FieldErrors::default();
        errs.add("limit", "must be a whole number from 1 to 500");
        return Err(ApiError::Validation(errs));
    }
    let orders = st
        .store
        .orders_by_status(q.status, limit)
        .await
        .map_err(db_error)?;
    Ok(Json(orders.into_iter().map(Into::into).collect()))
}

/// One consumer group of a stream.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupView {
    /// Group name.
    name: String,
    /// Entries not yet delivered to the group (`null` when Redis cannot tell, after some trims).
    lag: Option<i64>,
    /// Entries delivered and not yet acknowledged.
    pending: i64,
    /// Consumers in the group.
    consumers: i64,
}

/// One stream and its groups.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamView {
    /// Stream name (without the deployment prefix).
    name: String,
    /// Entries it holds.
    length: i64,
    /// Its consumer groups.
    groups: Vec<GroupView>,
}

/// Dead letters of one (stream, group, reason).
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterCount {
    /// Origin stream.
    stream: String,
    /// The group that gave up.
    group: String,
    /// Why.
    reason: String,
    /// How many (among the latest examined).
    count: usize,
}

/// One recent dead letter.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterView {
    /// Its id in the dead-letter stream (for `dlq show` / `dlq replay`).
    id: String,
    /// Origin stream.
    stream: String,
    /// The group that gave up.
    group: String,
    /// Why.
    reason: String,
    /// The last error.
    error: String,
    /// The event type, if the message was an envelope.
    event_type: Option<String>,
    /// When it was dead-lettered.
    at: DateTime<Utc>,
}

/// The dead letters.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLettersView {
    /// All of them.
    total: i64,
    /// How many of the latest were examined for `by` (at most 1000).
    examined: usize,
    /// Counts by stream, group and reason.
    by: Vec<DeadLetterCount>,
    /// The 10 newest.
    latest: Vec<DeadLetterView>,
}

/// Stock of one item.
#[derive(Debug, Serialize, ToSchema)]
pub struct StockView {
    /// Item id.
    id: MenuItemId,
    /// Name.
    name: String,
    /// Units left.
    stock: i64,
}

/// What the operator console shows.
#[derive(Debug, Serialize, ToSchema)]
pub struct Overview {
    /// When this was read.
    generated_at: DateTime<Utc>,
    /// Every stream, with its groups.
    streams: Vec<StreamView>,
    /// The dead letters.
    dead_letters: DeadLettersView,
    /// Stock per item.
    stock: Vec<StockView>,
    /// Orders created in the last hour, by their current status.
    orders_last_hour: std::collections::BTreeMap<String, i64>,
}

/// How many of the newest dead letters the overview examines.
const DEAD_LETTERS_EXAMINED: usize = 1000;

/// What the operator console shows, read live.
#[utoipa::path(get, path = "/api/v1/admin/overview", tag = "admin", security(("admin_token" = [])),
    responses(
        (status = 200, description = "Streams, groups, dead letters, stock and recent orders", body = Overview),
        (status = 401, description = "`unauthorized`: no or a wrong admin token", body = ErrorBody),
        (status = 503, description = "Redis or the database is unavailable; retry (`Retry-After`)", body = ErrorBody),
    ))]
async fn admin_overview(State(st): State<AdminState>) -> Result<Json<Overview>, ApiError> {
    let unavailable = |e: redis::RedisError| ApiError::Unavailable(e.into());
    let mut conn = st.redis.clone();
    let mut streams = Vec::new();
    for stream in Stream::ALL {
        // A stream is the sum of its partitions; a group's counts too.
        let mut length = 0;
        let mut groups: Vec<GroupView> = Vec::new();
        for key in st.ns.stream_keys(stream) {
            length += redis::cmd("XLEN")
                .arg(&key)
                .query_async::<i64>(&mut conn)
                .await
                .map_err(unavailable)?;
            let reply = match redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(&key)
                .query_async::<redis::Value>(&mut conn)
                .await
            {
                Ok(reply) => reply,
                // No such stream yet: no groups.
                Err(e) if e.code() == Some("ERR") => continue,
                Err(e) => return Err(unavailable(e)),
            };
            for f in wire::array(reply)
                .unwrap_or_default()
                .into_iter()
                .map(wire::fields_of)
            {
                let name = f.get("name").cloned().unwrap_or_default();
                let lag: Option<i64> = f.get("lag").and_then(|v| v.parse().ok());
                let pending: i64 = f.get("pending").and_then(|v| v.parse().ok()).unwrap_or(0);
                let consumers: i64 = f.get("consumers").and_then(|v| v.parse().ok()).unwrap_or(0);
                match groups.iter_mut().find(|g| g.name == name) {
                    Some(g) => {
                        g.lag = g.lag.zip(lag).map(|(a, b)| a + b);
                        g.pending += pending;
                        g.consumers = g.consumers.max(consumers);
                    }
                    None => groups.push(GroupView {
                        name,
                        lag,
                        pending,
                        consumers,
                    }),
                }
            }
        }
        streams.push(StreamView {
            name: stream.name().to_owned(),
            length,
            groups,
        });
    }
    let total = streams
        .iter()
        .find(|s| s.name == Stream::DeadLetters.name())
        .map_or(0, |s| s.length);
    // The newest of every partition, newest first; ids named per partition.
    let mut letters: Vec<DeadLetter> = Vec::new();
    for p in st.ns.partition_range() {
        let reply: redis::Value = redis::cmd("XREVRANGE")
            .arg(st.ns.stream_at(Stream::DeadLetters, p))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(DEAD_LETTERS_EXAMINED)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        letters.extend(
            wire::entries(reply)
                .unwrap_or_default()
                .iter()
                .filter_map(|e| DeadLetter::from_entry(e).ok())
                .map(|mut d| {
                    d.id = st.ns.entry_ref(p, &d.id);
                    d
                }),
        );
    }
    letters.sort_by_key(|d| std::cmp::Reverse(d.dead_lettered_ms));
    letters.truncate(DEAD_LETTERS_EXAMINED);
    let mut counts: std::collections::BTreeMap<(String, String, String), usize> =
        std::collections::BTreeMap::new();
    let origin = |d: &DeadLetter| {
        st.ns
            .stream_of_key(&d.origin_stream)
            .map_or_else(|| d.origin_stream.clone(), |s| s.name().to_owned())
    };
    for d in &letters {
        *counts
            .entry((origin(d), d.group.clone(), d.reason.clone()))
            .or_default() += 1;
    }
    let latest = letters
        .iter()
        .take(10)
        .map(|d| DeadLetterView {
            id: d.id.clone(),
            stream: origin(d),
            group: d.group.clone(),
            reason: d.reason.clone(),
            error: d.error.clone(),
            event_type: d.original_str("event_type").map(str::to_owned),
            at: i64::try_from(d.dead_lettered_ms)
                .ok()
                .and_then(DateTime::from_timestamp_millis)
                .unwrap_or_default(),
        })
        .collect();
    let stock = st
        .store
        .menu()
        .await
        .map_err(db_error)?
        .into_iter()
        .map(|i| StockView {
            id: MenuItemId::from_bytes(i.id.bytes()),
            name: i.name,
            stock: i.stock,
        })
        .collect();
    let since = Utc::now() - chrono::Duration::hours(1);
    let orders_last_hour = st
        .store
        .status_counts_since(since)
        .await
        .map_err(db_error)?
        .into_iter()
        .collect();
    Ok(Json(Overview {
        generated_at: Utc::now(),
        streams,
        dead_letters: DeadLettersView {
            total,
            examined: letters.len(),
            by: counts
                .into_iter()
                .map(|((stream, group, reason), count)| DeadLetterCount {
                    stream,
                    group,
                    reason,
                    count,
                })
                .collect(),
            latest,
        },
        stock,
        orders_last_hour,
    }))
}

/// The admin routes' OpenAPI description (merged into order-svc's).
#[derive(Debug, utoipa::OpenApi)]
#[openapi(
    paths(admin_list_menu, admin_add_item, admin_update_item, admin_restock, admin_orders, admin_overview),
    tags((name = "admin", description = "Operators only: `Authorization: Bearer <ADMIN_TOKEN>`"))
)]
pub struct AdminApi;
