//! delivery-svc's API in process (its router via `oneshot`) on a real
//! MongoDB: every 4xx it answers. Deliveries being created and moved are
//! tested end to end in `tests/`.

#![allow(clippy::unwrap_used)]

use contract::streams::Namespace;
use delivery_svc::{api, store::Store};
use testkit::http::Client;

#[tokio::test]
async fn lookups_validate_ids_and_queries() {
    let url = testkit::shared_mongo().await.url();
    let client = common::mongo::connect(&url, "delivery-svc-tests")
        .await
        .unwrap();
    let ns = Namespace::new(&format!("{}:", testkit::unique("delivery-api")));
    let app = Client::new(
        api::router(Store::new(client, &testkit::unique_db("delivery_api"), ns)),
        &api::openapi(),
    );
    for (path, status, code) in [
        ("/api/v1/deliveries/nope", 422, "invalid_request"),
        (
            "/api/v1/deliveries/65f1a2b3c4d5e6f708192a3b",
            404,
            "not_found",
        ),
        ("/api/v1/deliveries", 422, "invalid_request"),
        (
            "/api/v1/deliveries?order=65f1a2b3c4d5e6f708192a3b",
            422,
            "invalid_request",
        ),
        ("/api/v1/deliveries?order_id=xyz", 422, "invalid_request"),
        (
            "/api/v1/deliveries?order_id=65f1a2b3c4d5e6f708192a3b",
            404,
            "not_found",
        ),
    ] {
        let a = app.get(path).await;
        assert_eq!(a.status, status, "{path}");
        assert_eq!(a.json["error"], code, "{path}");
        assert!(a.json["message"].is_string(), "{path}");
    }
}
