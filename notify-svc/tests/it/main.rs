//! notify-svc's routes in process (its router via `oneshot`) on a real
//! MongoDB: input validation and the tracker page. Live tracking over real
//! sockets is tested end to end in `tests/`.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use common::settings::Env;
use notify_svc::{
    Settings, api,
    hub::Hub,
    timeline::{Fact, TimelineStore},
};
use testkit::http::Client;
use tokio_util::sync::CancellationToken;

async fn app() -> Client {
    app_with(&[]).await
}

async fn app_with(vars: &[(&str, &str)]) -> Client {
    let url = testkit::shared_mongo().await.url();
    let settings = Settings::from_env(Env::from_map(
        [("MONGO_URL", url.as_str())]
            .into_iter()
            .chain(vars.iter().copied()),
    ))
    .unwrap();
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
async fn the_pages_are_served_with_their_settings_and_security_headers() {
    let app = app_with(&[
        ("ORDER_API_URL", "http://127.0.0.1:8001/"),
        ("CURRENCY", "GBP"),
    ])
    .await;
    for path in ["/", "/orders", "/track/65f1a2b3c4d5e6f708192a3b", "/ops"] {
        let a = app.get(path).await;
        assert_eq!(a.status, 200, "{path}");
        assert_eq!(a.headers["content-type"], "text/html; charset=utf-8");
        assert_eq!(a.headers["cache-control"], "no-cache", "{path}");
        assert_eq!(a.headers["x-content-type-options"], "nosniff");
        let csp = a.headers["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("default-src 'none'")
                && csp.contains("script-src 'self';")
                && csp.contains("connect-src 'self' http://127.0.0.1:8001;")
                && csp.contains("frame-ancestors 'none'"),
            "{csp}"
        );
        let page = &a.text;
        assert!(
            !page.contains("__"),
            "{path}: a placeholder is left: {page}"
        );
        assert!(
            page.contains(r#"<meta name="foodchain-order-api" content="http://127.0.0.1:8001">"#)
        );
        assert!(page.contains(r#"<meta name="foodchain-currency" content="GBP">"#));
        // Revalidation: the same ETag answers 304 with no body.
        let etag = a.headers["etag"].to_str().unwrap().to_owned();
        let again = app
            .request(
                axum::http::Request::get(path)
                    .header("if-none-match", &etag)
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!((again.status, again.text.as_str()), (304, ""), "{path}");
    }
}

#[tokio::test]
async fn every_asset_a_page_names_is_served_immutable_under_its_version() {
    let app = app().await;
    let mut linked = Vec::new();
    for path in ["/", "/ops"] {
        let page = app.get(path).await.text;
        for part in page.split("\"/assets/").skip(1) {
            linked.push(format!("/assets/{}", &part[..part.find('"').unwrap()]));
        }
    }
    assert!(linked.len() >= 4, "{linked:?}");
    for url in &linked {
        let a = app.get(url).await;
        assert_eq!(a.status, 200, "{url}");
        let ct = a.headers["content-type"].to_str().unwrap();
        assert!(
            (url.ends_with(".js") && ct == "text/javascript; charset=utf-8")
                || (url.ends_with(".css") && ct == "text/css; charset=utf-8"),
            "{url}: {ct}"
        );
        assert_eq!(
            a.headers["cache-control"], "public, max-age=31536000, immutable",
            "{url}"
        );
        assert_eq!(a.headers["x-content-type-options"], "nosniff");
    }
    // Another build's URL still works, but is not kept.
    let file = linked[0].rsplit('/').next().unwrap();
    let other = app.get(&format!("/assets/0123456789abcdef/{file}")).await;
    assert_eq!(other.status, 200);
    assert_eq!(other.headers["cache-control"], "no-cache");
    for missing in [
        "/assets/x/nope.js",
        "/assets/x/..%2Fsrc%2Flib.rs",
        "/assets/x/index.html",
    ] {
        let a = app.get(missing).await;
        assert_eq!(
            (a.status, a.json["error"].as_str()),
            (404, Some("not_found")),
            "{missing}"
        );
    }
}

#[test]
fn bad_page_settings_stop_start_up() {
    for (var, value) in [
        ("ORDER_API_URL", "127.0.0.1:8001"),
        ("ORDER_API_URL", "javascript:alert(1)"),
        ("CURRENCY", "euro"),
    ] {
        let e = Settings::from_env(Env::from_map([(var, value)])).unwrap_err();
        assert!(e.to_string().contains(var), "{e}");
    }
    let ok = Settings::from_env(Env::from_map([(
        "ORDER_API_URL",
        "https://api.example.com/x/",
    )]))
    .unwrap();
    assert_eq!(ok.order_api_url, "https://api.example.com/x");
    assert_eq!(ok.currency, "EUR");
}

/// Appends `facts` as one run; whether each was new.
async fn appended(store: &TimelineStore, facts: &[Fact]) -> Vec<bool> {
    store
        .append_all(facts)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test]
async fn a_run_of_one_orders_events_is_appended_whole_by_one_command_each_once() {
    use contract::{
        Envelope,
        events::{Event, OrderCreated, OrderStatusUpdated, OrdersEvent},
        status::OrderStatus,
    };
    use notify_svc::timeline::order_fact;
    let client = common::mongo::connect(&testkit::shared_mongo().await.url(), "notify-svc-tests")
        .await
        .unwrap();
    let store = TimelineStore::new(&client, &testkit::unique_db("notify_run"));
    // A new order's whole kitchen in one run: the first statement creates
    // its timeline, each later one appends to it.
    let created = OrderCreated::example();
    let id = created.order_id;
    let mut events = vec![(
        Envelope::of(&created, "c", "test"),
        OrdersEvent::Created(created),
    )];
    for (version, (previous, status)) in [
        (OrderStatus::Created, OrderStatus::Confirmed),
        (OrderStatus::Confirmed, OrderStatus::Preparing),
        (OrderStatus::Preparing, OrderStatus::OutForDelivery),
    ]
    .into_iter()
    .enumerate()
    {
        let p = OrderStatusUpdated {
            order_id: id,
            status,
            previous,
            version: u32::try_from(version).unwrap() + 2,
            customer: None,
        };
        events.push((Envelope::of(&p, "c", "test"), OrdersEvent::StatusUpdated(p)));
    }
    let facts: Vec<_> = events
        .iter()
        .map(|(e, event)| order_fact(e, event))
        .collect();
    let first = appended(&store, &facts).await;
    assert_eq!(first, [true; 4]);
    assert_eq!(store.load(id).await.unwrap().entries.len(), 4);
    // The same run again (a redelivery) appends nothing.
    let again = appended(&store, &facts[1..]).await;
    assert_eq!(again, [false; 3]);
    let stored = store.load(id).await.unwrap();
    assert_eq!(stored.entries.len(), 4);
    assert!(stored.token_hash.is_some());
    // A run of which one event is already there: that one is skipped, the
    // other appended.
    let status_fact = |previous, status, version| {
        let p = OrderStatusUpdated {
            order_id: id,
            status,
            previous,
            version,
            customer: None,
        };
        order_fact(
            &Envelope::of(&p, "c", "test"),
            &OrdersEvent::StatusUpdated(p),
        )
    };
    let delivered = status_fact(OrderStatus::OutForDelivery, OrderStatus::Delivered, 5);
    let mixed = appended(&store, &[facts[3].clone(), delivered]).await;
    assert_eq!(mixed, [false, true]);
    let stored = store.load(id).await.unwrap();
    assert_eq!(stored.entries.len(), 5);
    // A run that holds one new event twice (republished, read next to its
    // first copy): appended once.
    let twice = status_fact(OrderStatus::Delivered, OrderStatus::Cancelled, 6);
    let doubled = appended(&store, &[twice.clone(), twice]).await;
    assert_eq!(doubled, [true, false]);
    let stored = store.load(id).await.unwrap();
    let ids: Vec<&str> = stored.entries.iter().map(|e| e.event_id.as_str()).collect();
    let unique: std::collections::HashSet<&str> = ids.iter().copied().collect();
    assert_eq!((ids.len(), unique.len()), (6, 6), "no entry twice: {ids:?}");
}
