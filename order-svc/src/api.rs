//! The REST API: `/api/v1/menu`, `/api/v1/orders`.

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, FromRequest, Path, Request, State, rejection::PathRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::IntoResponse,
    routing::{get, post},
};
use chrono::{DateTime, Utc};
use common::events::{Customer, OrderStatus};
use serde::Serialize;
use serde_json::Value;

use crate::{
    AppState,
    domain::{parse_id, parse_new_order},
    error::ApiError,
    store::{MenuItem, Order, PlaceError},
};

/// Largest accepted request body.
const BODY_LIMIT: usize = 64 * 1024;
/// Header carrying the id that ties a request to the events it causes.
pub const CORRELATION_HEADER: &str = "x-correlation-id";

/// The REST routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/menu", get(list_menu))
        .route("/api/v1/menu/{id}", get(get_menu_item))
        .route("/api/v1/orders", post(create_order))
        .route("/api/v1/orders/{id}", get(get_order))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// A menu item as the API shows it.
#[derive(Debug, Serialize)]
pub struct MenuItemView {
    id: String,
    name: String,
    description: String,
    category: String,
    price_cents: i64,
    stock: i64,
}

impl From<MenuItem> for MenuItemView {
    fn from(i: MenuItem) -> Self {
        Self {
            id: i.id.to_hex(),
            name: i.name,
            description: i.description,
            category: i.category,
            price_cents: i.price_cents,
            stock: i.stock,
        }
    }
}

/// An order as the API shows it.
#[derive(Debug, Serialize)]
pub struct OrderView {
    id: String,
    status: OrderStatus,
    version: u32,
    customer: Customer,
    items: Vec<LineView>,
    total_cents: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize)]
struct LineView {
    item_id: String,
    name: String,
    quantity: u32,
    unit_price_cents: i64,
    line_total_cents: i64,
}

impl From<Order> for OrderView {
    fn from(o: Order) -> Self {
        Self {
            id: o.id.to_hex(),
            status: o.status,
            version: o.version,
            customer: o.customer,
            items: o
                .items
                .into_iter()
                .map(|l| LineView {
                    line_total_cents: l.unit_price_cents * i64::from(l.quantity),
                    item_id: l.item_id,
                    name: l.name,
                    quantity: l.quantity,
                    unit_price_cents: l.unit_price_cents,
                })
                .collect(),
            total_cents: o.total_cents,
            created_at: o.created_at,
            updated_at: o.updated_at,
        }
    }
}

async fn list_menu(State(st): State<AppState>) -> Result<Json<Vec<MenuItemView>>, ApiError> {
    let items = st.store.menu().await.map_err(db_error)?;
    Ok(Json(items.into_iter().map(Into::into).collect()))
}

async fn get_menu_item(
    State(st): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<MenuItemView>, ApiError> {
    let id = path_id(id, "menu item")?;
    let item = st
        .store
        .menu_item(id)
        .await
        .map_err(db_error)?
        .ok_or(ApiError::NotFound("menu item"))?;
    Ok(Json(item.into()))
}

async fn get_order(
    State(st): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<OrderView>, ApiError> {
    let id = path_id(id, "order")?;
    let order = st
        .store
        .order(id)
        .await
        .map_err(db_error)?
        .ok_or(ApiError::NotFound("order"))?;
    Ok(Json(order.into()))
}

async fn create_order(
    State(st): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<impl IntoResponse, ApiError> {
    let new = parse_new_order(&body, st.limits).map_err(ApiError::Validation)?;
    let correlation_id = correlation_id(&headers);
    let order = st
        .store
        .place_order(&new, &correlation_id)
        .await
        .map_err(|e| match e {
            PlaceError::UnknownItems(f) => ApiError::UnknownItems(f),
            PlaceError::InsufficientStock { fields, names } => {
                ApiError::InsufficientStock { fields, names }
            }
            PlaceError::Mongo(e) => db_error(e),
        })?;
    st.events.order_created(&order).await;
    let location = format!("/api/v1/orders/{}", order.id.to_hex());
    let mut response_headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&location) {
        response_headers.insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&correlation_id) {
        response_headers.insert(CORRELATION_HEADER, v);
    }
    Ok((
        StatusCode::CREATED,
        response_headers,
        Json(OrderView::from(order)),
    ))
}

fn path_id(
    id: Result<Path<String>, PathRejection>,
    what: &'static str,
) -> Result<bson::oid::ObjectId, ApiError> {
    let value = id
        .map_err(|r| ApiError::InvalidId {
            what,
            value: r.body_text(),
        })?
        .0;
    parse_id(&value).ok_or(ApiError::InvalidId { what, value })
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
