//! Abuse limits: body size (413), lines and quantities (422), the order rate
//! per client (429 with Retry-After), and CORS only for allowed origins.

use axum::{
    body::Body,
    http::{Method, Request, header},
};
use serde_json::json;

use crate::{Api, fields, order_body};

#[tokio::test]
async fn bodies_over_the_limit_are_413_and_too_many_lines_or_units_422() {
    let api = Api::with(&[
        ("MAX_BODY_BYTES", "2048"),
        ("MAX_ORDER_LINES", "3"),
        ("MAX_ITEM_QUANTITY", "4"),
    ])
    .await;
    let (status, body) = api
        .post_raw(
            Some("application/json"),
            &format!("{{\"pad\": \"{}\"}}", "x".repeat(4000)),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("payload_too_large"))
    );
    let item = api.add_item("Tea", 300, 100).await;
    let ids: Vec<String> = (0..4)
        .map(|_| bson::oid::ObjectId::new().to_hex())
        .collect();
    let lines: Vec<(&str, u32)> = ids.iter().map(|i| (i.as_str(), 1)).collect();
    let (status, body) = api.post_order(&order_body(&lines)).await;
    assert_eq!(status, 422);
    assert_eq!(fields(&body), ["items"]);
    let (status, body) = api.post_order(&order_body(&[(&item, 5)])).await;
    assert_eq!(status, 422);
    assert_eq!(fields(&body), ["items[0].quantity"]);
    let (status, _) = api.post_order(&order_body(&[(&item, 4)])).await;
    assert_eq!(status, 201);
}

#[tokio::test]
async fn a_client_over_its_order_rate_gets_429_with_retry_after() {
    let api = Api::with(&[("ORDER_RATE_PER_SEC", "1"), ("ORDER_RATE_BURST", "3")]).await;
    let item = api.add_item("Soba", 800, 100).await;
    let body = order_body(&[(&item, 1)]);
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(api.post_order(&body).await.0);
    }
    assert_eq!(
        statuses,
        [201, 201, 201, 429, 429],
        "a burst of 3, then the rate"
    );
    let limited = api
        .app
        .request(
            Request::post("/api/v1/orders")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.json["error"], "rate_limited");
    let wait: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    // Reading is not limited.
    assert_eq!(api.app.get("/api/v1/menu").await.status, 200);
    assert_eq!(api.count("orders", bson::doc! {}).await, 3);
}

async fn preflight(api: &Api, origin: &str) -> Option<String> {
    let a = api
        .app
        .request(
            Request::builder()
                .method(Method::OPTIONS)
                .uri("/api/v1/orders")
                .header(header::ORIGIN, origin)
                .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
                .header(
                    header::ACCESS_CONTROL_REQUEST_HEADERS,
                    "content-type,idempotency-key,authorization",
                )
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    a.headers
        .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        .map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn cors_allows_exactly_the_configured_origins_and_none_by_default() {
    let closed = Api::new().await;
    assert_eq!(
        preflight(&closed, "http://127.0.0.1:8003").await,
        None,
        "same-origin only by default"
    );
    let open = Api::with(&[("CORS_ALLOWED_ORIGINS", "http://127.0.0.1:8003")]).await;
    assert_eq!(
        preflight(&open, "http://127.0.0.1:8003").await.as_deref(),
        Some("http://127.0.0.1:8003")
    );
    assert_eq!(preflight(&open, "https://evil.example").await, None);
    let _ = json!({});
}
