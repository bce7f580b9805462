//! notify-svc's routes in process (its router via `oneshot`) on a real
//! MongoDB: input validation and the tracker page. Live tracking over real
//! sockets is tested end to end in `tests/`.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use common::settings::Env;
use notify_svc::{Settings, api, hub::Hub, timeline::TimelineStore};
use testkit::http::Client;
use tokio_util::sync::CancellationToken;

async fn app() -> Client {
    let url = testkit::shared_mongo().await.url();
    let settings = Settings::from_env(Env::from_map([("MONGO_URL", url.as_str())])).unwrap();
    let client = common::mongo::connect(&url, "notify-svc-tests")
        .await
        .unwrap();
    let store = TimelineStore::new(&client, &testkit::unique_db("notify_api"));
    let hub = Hub::new(Duration::from_secs(60));
    let router = api::router(api::AppState::new(
        &settings,
        store,
        hub,
        CancellationToken::new(),
    ));
    Client::new(router, &api::openapi())
}

#[tokio::test]
async fn tracker_endpoints_validate_their_input() {
    let app = app().await;
    for (path, status, code) in [
        ("/ws/orders/not-an-id", 422, "invalid_id"),
        (
            "/ws/orders/65f1a2b3c4d5e6f708192a3b",
            426,
            "websocket_required",
        ),
        (
            "/api/v1/orders/65f1a2b3c4d5e6f708192a3b/timeline",
            404,
            "not_found",
        ),
        ("/api/v1/orders/xyz/timeline", 422, "invalid_id"),
    ] {
        let a = app.get(path).await;
        assert_eq!(a.status, status, "{path}");
        assert_eq!(a.json["error"], code, "{path}");
    }
}

#[tokio::test]
async fn the_tracker_page_is_served_with_its_api_url_filled_in() {
    let app = app().await;
    let a = app.get("/").await;
    assert_eq!(a.status, 200);
    let page = a.text;
    assert!(page.contains("Order tracker") && !page.contains("__ORDER_API__"));
}
