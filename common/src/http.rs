//! HTTP pieces every service mounts: `/healthz`, `/readyz`, the error body,
//! and the OpenAPI description of both (merged into each service's document).
//!
//! * `GET /healthz` answers 200 while the process can serve HTTP at all
//!   (liveness: restart me if this fails).
//! * `GET /readyz` answers 200 only while Redis and MongoDB answer a ping and
//!   every consumer loop of the service is running and reading; otherwise 503
//!   with a JSON body naming what is wrong (readiness: send me no traffic).

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use contract::redis::Conn;
use serde_json::{Map, Value, json};

use crate::consumer::LoopStatus;

/// The error body every service answers with (the OpenAPI schema of
/// [`error_body`]).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// A stable machine-readable code (`validation_failed`, `not_found`, ...).
    pub error: String,
    /// What is wrong, for people.
    pub message: String,
    /// For validation errors: the JSON path of each bad field (`items[1].quantity`) and what is wrong with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<std::collections::BTreeMap<String, String>>,
    /// For a change the resource's state no longer allows (a cancel once the
    /// order is out for delivery): its current status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// The error body every service answers with:
/// `{"error": <code>, "message": <text>, "fields"?: {<path>: <problem>}}`.
pub fn error_body(
    code: &str,
    message: &str,
    fields: Option<&std::collections::BTreeMap<String, String>>,
) -> Value {
    let mut body = json!({ "error": code, "message": message });
    if let Some(f) = fields {
        body["fields"] = json!(f);
    }
    body
}

/// An error response with [`error_body`]; a 503 also carries `Retry-After: 1`.
pub fn error_response(
    status: StatusCode,
    code: &str,
    message: &str,
    fields: Option<&std::collections::BTreeMap<String, String>>,
) -> Response {
    let mut response = (status, Json(error_body(code, message, fields))).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// How long one dependency check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What readiness depends on.
#[derive(Debug)]
pub struct Health {
    service: String,
    redis: Conn,
    mongo: std::sync::OnceLock<(mongodb::Client, String)>,
    loops: Mutex<Vec<LoopStatus>>,
    initialised: AtomicBool,
}

impl Health {
    /// Readiness of `service`, which depends on Redis.
    pub fn new(service: &str, redis: Conn) -> Arc<Self> {
        Arc::new(Self {
            service: service.to_owned(),
            redis,
            mongo: std::sync::OnceLock::new(),
            loops: Mutex::new(Vec::new()),
            initialised: AtomicBool::new(false),
        })
    }

    /// Makes readiness depend on MongoDB database `db` too.
    pub fn watch_mongo(&self, client: mongodb::Client, db: &str) {
        let _ = self.mongo.set((client, db.to_owned()));
    }

    /// Adds a consumer loop that must run for the service to be ready.
    pub fn watch(&self, status: LoopStatus) {
        self.loops
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(status);
    }

    /// Marks start-up work (indexes, ...) as done.
    pub fn set_initialised(&self) {
        self.initialised.store(true, Ordering::Relaxed);
    }

    /// Checks everything; `(ready, details)`.
    pub async fn check(&self) -> (bool, Value) {
        let redis = async {
            match tokio::time::timeout(
                CHECK_TIMEOUT,
                contract::redis::ping(&mut self.redis.clone()),
            )
            .await
            {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("timed out".to_owned()),
            }
        };
        let mongo = async {
            let Some((client, db)) = self.mongo.get() else {
                return Ok(());
            };
            match tokio::time::timeout(CHECK_TIMEOUT, crate::mongo::ping(client, db)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("timed out".to_owned()),
            }
        };
        let (redis, mongo) = tokio::join!(redis, mongo);
        let mut checks = Map::new();
        let mut ready = true;
        let mut record = |name: &str, result: Result<(), String>| {
            ready &= result.is_ok();
            checks.insert(
                name.to_owned(),
                result.map_or_else(Value::String, |()| json!("ok")),
            );
        };
        record("redis", redis);
        if self.mongo.get().is_some() {
            record("mongo", mongo);
        }
        let initialised = self.initialised.load(Ordering::Relaxed);
        record(
            "startup",
            if initialised {
                Ok(())
            } else {
                Err("initialising".into())
            },
        );
        let loops = self
            .loops
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for l in loops {
            let result = if l.is_ready() {
                Ok(())
            } else {
                Err("not running".into())
            };
            record(&format!("consumer:{}", l.name()), result);
        }
        (
            ready,
            json!({ "service": self.service, "ready": ready, "checks": checks }),
        )
    }
}

/// Liveness: 200 while the process serves HTTP at all.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process serves HTTP", body = Object, example = json!({"status": "ok"}))))]
async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `/healthz` and `/readyz`.
pub fn health_routes(health: Arc<Health>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(health)
}

/// Readiness: 200 only while Redis (and MongoDB, for services that use it)
/// answer, start-up work is done and every consumer loop runs; 503 with the
/// failing checks otherwise.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Object,
            example = json!({"service": "order-svc", "ready": true, "checks": {"redis": "ok", "mongo": "ok", "startup": "ok"}})),
        (status = 503, description = "Not ready; `checks` names what is wrong", body = Object,
            example = json!({"service": "order-svc", "ready": false, "checks": {"redis": "connection refused", "mongo": "ok", "startup": "ok"}})),
    ))]
async fn readyz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    let (ready, body) = health.check().await;
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

/// Prometheus metrics in the text exposition format (served by the runtime).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String)))]
#[allow(dead_code)] // documents the route the runtime serves
fn metrics_doc() {}

/// The OpenAPI document of the routes every service serves, to merge into a
/// service's own.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(healthz, readyz, metrics_doc),
    components(schemas(ErrorBody)),
    tags((name = "operations", description = "Health, readiness and metrics (every service)"))
)]
#[derive(Debug)]
pub struct OperationsApi;

/// A service's OpenAPI document: its own routes plus [`OperationsApi`], with
/// the workspace's version.
pub fn openapi_document(mut own: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi as _;
    own.merge(OperationsApi::openapi());
    own.info.version = env!("CARGO_PKG_VERSION").to_owned();
    own
}

/// `GET /api/v1/openapi.json`: the document, as served by the service.
pub fn openapi_route(doc: utoipa::openapi::OpenApi) -> Router {
    let doc = Arc::new(doc);
    Router::new().route(
        "/api/v1/openapi.json",
        get(move || {
            let doc = doc.clone();
            async move { Json(doc.as_ref().clone()) }
        }),
    )
}

/// The credential of `Authorization: Bearer <credential>` (scheme matched
/// case-insensitively), if the request sent one.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credential) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credential.trim())
        .filter(|c| !c.is_empty())
}

/// The client's address: the peer, or (with `trust_forwarded_for`, behind a
/// proxy that sets it) the first address of `X-Forwarded-For`.
pub fn client_ip(
    headers: &axum::http::HeaderMap,
    peer: Option<std::net::IpAddr>,
    trust_forwarded_for: bool,
) -> Option<std::net::IpAddr> {
    if trust_forwarded_for
        && let Some(ip) = headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|first| first.trim().parse().ok())
    {
        return Some(ip);
    }
    peer
}

/// The peer address axum recorded for a request (`ConnectInfo`), which the
/// runtime always provides.
pub fn peer_ip<B>(req: &axum::http::Request<B>) -> Option<std::net::IpAddr> {
    req.extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
}

/// A CORS layer allowing exactly `origins` (none: no cross-origin calls; a
/// lone `*`: any origin, which deployments should not need), with the
/// methods and headers the foodchain APIs use.
pub fn cors(origins: &[String]) -> tower_http::cors::CorsLayer {
    use axum::http::{HeaderName, Method};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST, Method::PATCH])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            HeaderName::from_static("idempotency-key"),
            HeaderName::from_static("x-correlation-id"),
        ])
        .expose_headers([
            header::LOCATION,
            header::RETRY_AFTER,
            HeaderName::from_static("x-correlation-id"),
            HeaderName::from_static("idempotent-replayed"),
        ])
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderMap;

    use super::*;

    #[test]
    fn bearer_credentials_and_client_addresses() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  x "),
        );
        assert_eq!(bearer(&h), Some("x"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);

        let peer = Some(
            "10.0.0.1"
                .parse()
                .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
        );
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("203.0.113.7, 10.0.0.2"),
        );
        assert_eq!(client_ip(&h, peer, false), peer, "not trusted: the peer");
        assert_eq!(
            client_ip(&h, peer, true)
                .map(|ip| ip.to_string())
                .as_deref(),
            Some("203.0.113.7")
        );
    }
}
