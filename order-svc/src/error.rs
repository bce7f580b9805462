//! The one error type of the REST API, mapped to HTTP once.
//!
//! Every error body is `{"error": <code>, "message": <text>, "fields"?: {<path>: <problem>}}`.
//! 4xx bodies say exactly what to fix; 5xx details are logged, never sent.

use std::collections::BTreeMap;

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};

/// Problems keyed by the JSON path of the offending field (`items[1].quantity`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FieldErrors(pub BTreeMap<String, String>);

impl FieldErrors {
    /// Records a problem (the first one per field wins).
    pub fn add(&mut self, field: impl Into<String>, problem: impl Into<String>) {
        self.0.entry(field.into()).or_insert_with(|| problem.into());
    }

    /// No problems recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What can go wrong while serving a request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON at all.
    #[error("the request body is not valid JSON: {0}")]
    InvalidJson(String),
    /// The body is not `application/json`.
    #[error("expected a JSON body (Content-Type: application/json)")]
    UnsupportedMediaType,
    /// The body is too large.
    #[error("the request body is too large")]
    PayloadTooLarge,
    /// Fields are missing or invalid.
    #[error("the request is invalid")]
    Validation(FieldErrors),
    /// A path parameter is malformed.
    #[error("`{value}` is not a valid {what} id")]
    InvalidId {
        /// What kind of id.
        what: &'static str,
        /// The value given.
        value: String,
    },
    /// The addressed resource does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// Ordered items do not exist.
    #[error("some ordered items are not on the menu")]
    UnknownItems(FieldErrors),
    /// Not enough stock; nothing was reserved.
    #[error("not enough stock for: {}", .names.join(", "))]
    InsufficientStock {
        /// Per line.
        fields: FieldErrors,
        /// Item names.
        names: Vec<String>,
    },
    /// A conflict with the current state (`code`, what is wrong).
    #[error("{1}")]
    Conflict(&'static str, &'static str),
    /// The order is past the point where it can be cancelled.
    #[error("the order is {} and can no longer be cancelled", .0.as_str())]
    NotCancellable(contract::status::OrderStatus),
    /// Too many requests from this client.
    #[error("too many orders from this client; retry in {0} s")]
    RateLimited(u64),
    /// The `Idempotency-Key` header is malformed.
    #[error("Idempotency-Key must be 1 to 255 visible ASCII characters")]
    InvalidIdempotencyKey,
    /// The key was used before with a different body.
    #[error("this Idempotency-Key was used with a different request body")]
    IdempotencyKeyReused,
    /// The database stayed contended or unreachable through every retry.
    #[error("the service is busy; retry shortly")]
    Unavailable(#[source] anyhow::Error),
    /// A bug or an unexpected failure.
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            Self::InvalidJson(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_json"),
            Self::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Self::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::Validation(_) => (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
            Self::InvalidId { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_id"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::UnknownItems(_) => (StatusCode::NOT_FOUND, "item_not_found"),
            Self::InsufficientStock { .. } => (StatusCode::CONFLICT, "insufficient_stock"),
            Self::Conflict(code, _) => (StatusCode::CONFLICT, code),
            Self::NotCancellable(_) => (StatusCode::CONFLICT, "not_cancellable"),
            Self::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::InvalidIdempotencyKey => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_idempotency_key")
            }
            Self::IdempotencyKeyReused => {
                (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
            }
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl ApiError {
    /// Status and JSON body, exactly as [`IntoResponse`] sends them (and as
    /// idempotency keys store refusals).
    pub fn status_and_body(&self) -> (StatusCode, serde_json::Value) {
        let (status, code) = self.parts();
        let mut body = common::http::error_body(code, &self.to_string(), self.fields());
        if let Self::NotCancellable(current) = self {
            body["status"] = current.as_str().into();
        }
        (status, body)
    }

    fn fields(&self) -> Option<&std::collections::BTreeMap<String, String>> {
        match self {
            Self::Validation(f)
            | Self::UnknownItems(f)
            | Self::InsufficientStock { fields: f, .. } => Some(&f.0),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _) = self.parts();
        match &self {
            Self::Internal(e) => tracing::error!(error = ?e, "request failed"),
            Self::Unavailable(e) => {
                tracing::warn!(error = ?e, "request failed: dependency unavailable")
            }
            _ => tracing::debug!(error = %self, "request rejected"),
        }
        let (_, body) = self.status_and_body();
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        if let Self::RateLimited(secs) = self
            && let Ok(v) = axum::http::HeaderValue::from_str(&secs.max(1).to_string())
        {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, v);
        }
        response
    }
}
