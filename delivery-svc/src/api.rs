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

/// The routes.
pub fn router(store: Store) -> Router {
    Router::new()
        .route("/api/v1/deliveries", get(find))
        .route("/api/v1/deliveries/{id}", get(get_one))
        .with_state(store)
}

/// A delivery as the API shows it.
#[derive(Debug, Serialize)]
pub struct DeliveryView {
    id: String,
    order_id: OrderId,
    status: DeliveryStatus,
    version: u32,
    address: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<Delivery> for DeliveryView {
    fn from(d: Delivery) -> Self {
        Self {
            id: d.id.to_hex(),
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
