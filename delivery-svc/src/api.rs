//! `GET /api/v1/deliveries/{id}` and `GET /api/v1/deliveries?order_id=<id>`.

use axum::{
    Json, Router,
    extract::{
        Path, Query, State,
        rejection::{PathRejection, QueryRejection},
    },
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use bson::oid::ObjectId;
use chrono::{DateTime, Utc};
use common::http::ErrorBody;
use contract::{DeliveryId, OrderId, status::DeliveryStatus};
use serde::{Deserialize, Serialize};

use crate::store::{Delivery, Store};

/// The delivery-svc API error.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Bad id or query.
    #[error("{0}")]
    Invalid(String),
    /// No such delivery.
    #[error("delivery not found")]
    NotFound,
    /// Database unreachable.
    #[error("the service is busy; retry shortly")]
    Unavailable(#[source] mongodb::error::Error),
    /// Anything else.
    #[error("internal error")]
    Internal(#[source] mongodb::error::Error),
}

impl From<mongodb::error::Error> for ApiError {
    fn from(e: mongodb::error::Error) -> Self {
        if common::mongo::is_unavailable(&e) {
            Self::Unavailable(e)
        } else {
            Self::Internal(e)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            Self::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
            Self::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            Self::Unavailable(e) => {
                tracing::warn!(error = %e, "database unavailable");
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            Self::Internal(e) => {
                tracing::error!(error = %e, "request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        common::http::error_response(status, code, &self.to_string(), None)
    }
}

/// The OpenAPI document of delivery-svc (served at `/api/v1/openapi.json`).
#[derive(Debug, utoipa::OpenApi)]
#[openapi(
    info(title = "foodchain delivery-svc", description = "Deliveries: one per order that went out for delivery. Generated from the handlers; do not edit docs/openapi/delivery-svc.json by hand (`cargo run -p apidocs`)."),
    paths(find, get_one),
    tags((name = "deliveries", description = "Reading deliveries"))
)]
pub struct ApiDoc;

/// delivery-svc's OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    common::http::openapi_document(<ApiDoc as utoipa::OpenApi>::openapi())
}

/// The routes.
pub fn router(store: Store) -> Router {
    Router::new()
        .route("/api/v1/deliveries", get(find))
        .route("/api/v1/deliveries/{id}", get(get_one))
        .with_state(store)
        .merge(common::http::openapi_route(openapi()))
}

/// A delivery as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryView {
    /// Id.
    id: DeliveryId,
    /// The order it delivers.
    order_id: OrderId,
    /// Current status.
    status: DeliveryStatus,
    /// Incremented by every status change.
    version: u32,
    /// Where to.
    address: String,
    /// When it was created.
    created_at: DateTime<Utc>,
    /// Last change.
    updated_at: DateTime<Utc>,
}

impl From<Delivery> for DeliveryView {
    fn from(d: Delivery) -> Self {
        Self {
            id: DeliveryId::from_bytes(d.id.bytes()),
            order_id: d.order_id,
            status: d.status,
            version: d.version,
            address: d.address,
            created_at: d.created_at,
            updated_at: d.updated_at,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FindQuery {
    order_id: String,
}

/// One delivery.
#[utoipa::path(get, path = "/api/v1/deliveries/{id}", tag = "deliveries",
    params(("id" = DeliveryId, Path, description = "Delivery id")),
    responses(
        (status = 200, description = "The delivery", body = DeliveryView),
        (status = 404, description = "`not_found`: no such delivery", body = ErrorBody),
        (status = 422, description = "`invalid_request`: not a delivery id", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry (`Retry-After`)", body = ErrorBody),
    ))]
async fn get_one(
    State(store): State<Store>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<DeliveryView>, ApiError> {
    let raw = id.map_err(|r| ApiError::Invalid(r.body_text()))?.0;
    let id = DeliveryId::parse(&raw).map_err(|e| ApiError::Invalid(e.to_string()))?;
    store
        .get(ObjectId::from_bytes(id.bytes()))
        .await?
        .map(|d| Json(d.into()))
        .ok_or(ApiError::NotFound)
}

/// The delivery of an order.
#[utoipa::path(get, path = "/api/v1/deliveries", tag = "deliveries",
    params(("order_id" = OrderId, Query, description = "The order")),
    responses(
        (status = 200, description = "The order's delivery", body = DeliveryView),
        (status = 404, description = "`not_found`: the order has no delivery (yet)", body = ErrorBody),
        (status = 422, description = "`invalid_request`: `order_id` missing, not an order id, or other query parameters", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry (`Retry-After`)", body = ErrorBody),
    ))]
async fn find(
    State(store): State<Store>,
    q: Result<Query<FindQuery>, QueryRejection>,
) -> Result<Json<DeliveryView>, ApiError> {
    let q = q
        .map_err(|r| ApiError::Invalid(format!("expected ?order_id=<id>: {}", r.body_text())))?
        .0;
    let order_id = OrderId::parse(&q.order_id).map_err(|e| ApiError::Invalid(e.to_string()))?;
    store
        .for_order(order_id)
        .await?
        .map(|d| Json(d.into()))
        .ok_or(ApiError::NotFound)
}
