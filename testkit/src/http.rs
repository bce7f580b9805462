//! Calling a service's router in process (`tower::ServiceExt::oneshot`): the
//! real handlers, extractors and error mapping, without a listener. For the
//! 4xx behaviour of each API; the end-to-end suite covers the flow.

use axum::{
    Router,
    body::Body,
    http::{HeaderMap, Method, Request, header},
};
use serde_json::Value;
use tower::ServiceExt;

use crate::schemas::Spec;

/// A router's answer.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// The body as JSON (`Null` when it is not JSON).
    pub json: Value,
    /// The body as text (lossy UTF-8).
    pub text: String,
}

/// Sends `req` to `app`.
pub async fn call(app: &Router, req: Request<Body>) -> Answer {
    let response = app
        .clone()
        .oneshot(req)
        .await
        .expect("routers are infallible");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 16 << 20)
        .await
        .expect("read the body");
    Answer {
        status,
        headers,
        json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// `GET path`.
pub async fn get(app: &Router, path: &str) -> Answer {
    send(app, Method::GET, path, None, Body::empty()).await
}

/// `POST path` with a JSON body.
pub async fn post_json(app: &Router, path: &str, body: &Value) -> Answer {
    send(
        app,
        Method::POST,
        path,
        Some("application/json"),
        Body::from(body.to_string()),
    )
    .await
}

/// A request with any method, content type and raw body.
pub async fn send(
    app: &Router,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: Body,
) -> Answer {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(ct) = content_type {
        req = req.header(header::CONTENT_TYPE, ct);
    }
    call(app, req.body(body).expect("a valid request")).await
}

/// A router and its OpenAPI document: every answer is checked against the
/// document (a status it does not list, or a body that does not fit its
/// schema, fails the test).
#[derive(Debug, Clone)]
pub struct Client {
    /// The router.
    pub app: Router,
    spec: Spec,
}

impl Client {
    /// `app`, described by `doc` (the service's `openapi()`).
    pub fn new(app: Router, doc: &impl serde::Serialize) -> Self {
        Self {
            app,
            spec: Spec::new(serde_json::to_value(doc).expect("an OpenAPI document serialises")),
        }
    }

    fn checked(&self, method: &Method, path: &str, a: Answer) -> Answer {
        if let Err(e) = self.spec.check(method.as_str(), path, a.status, &a.json) {
            panic!("the answer does not match the OpenAPI document: {e}");
        }
        a
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Answer {
        self.checked(&Method::GET, path, get(&self.app, path).await)
    }

    /// `POST path` with a JSON body.
    pub async fn post_json(&self, path: &str, body: &Value) -> Answer {
        self.checked(&Method::POST, path, post_json(&self.app, path, body).await)
    }

    /// A request built by the caller (headers and all).
    pub async fn request(&self, req: Request<Body>) -> Answer {
        let (method, path) = (req.method().clone(), req.uri().to_string());
        let a = call(&self.app, req).await;
        self.checked(&method, &path, a)
    }

    /// Any request.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Body,
    ) -> Answer {
        let a = send(&self.app, method.clone(), path, content_type, body).await;
        self.checked(&method, path, a)
    }
}
