//! The admin API: 401 without the admin token, everything with it.

use axum::{
    body::Body,
    http::{Method, Request, header},
};
use serde_json::{Value, json};
use testkit::http::Answer;

use crate::{Api, order_body};

const ADMIN: &str = "an-admin-token-for-tests-0123456789";

async fn admin(
    api: &Api,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let body = match body {
        Some(b) => {
            req = req.header(header::CONTENT_TYPE, "application/json");
            Body::from(b.to_string())
        }
        None => Body::empty(),
    };
    api.app.request(req.body(body).unwrap()).await
}

fn routes(item: &str) -> Vec<(Method, String, Option<Value>)> {
    vec![
        (Method::GET, "/api/v1/admin/menu".into(), None),
        (
            Method::POST,
            "/api/v1/admin/menu".into(),
            Some(json!({"slug": "x", "name": "X", "category": "c", "price_cents": 1})),
        ),
        (
            Method::PATCH,
            format!("/api/v1/admin/menu/{item}"),
            Some(json!({"price_cents": 2})),
        ),
        (
            Method::POST,
            format!("/api/v1/admin/menu/{item}/restock"),
            Some(json!({"quantity": 1})),
        ),
        (Method::GET, "/api/v1/admin/orders".into(), None),
        (Method::GET, "/api/v1/admin/overview".into(), None),
    ]
}

#[tokio::test]
async fn every_admin_route_is_401_without_the_token_or_with_a_wrong_one() {
    let api = Api::with(&[("ADMIN_TOKEN", ADMIN)]).await;
    let closed = Api::new().await; // no ADMIN_TOKEN configured at all
    let item = api.add_item("Pho", 1100, 5).await;
    for (method, path, body) in routes(&item) {
        for token in [None, Some("wrong-token-wrong-token"), Some("")] {
            let a = admin(&api, method.clone(), &path, token, body.clone()).await;
            assert_eq!(a.status, 401, "{method} {path} with {token:?}");
            assert_eq!(a.json["error"], "unauthorized");
            assert!(
                a.headers["www-authenticate"]
                    .to_str()
                    .unwrap()
                    .starts_with("Bearer")
            );
        }
        let a = admin(&closed, method.clone(), &path, Some(ADMIN), body.clone()).await;
        assert_eq!(a.status, 401, "no ADMIN_TOKEN configured: {method} {path}");
    }
    let stock = api.count("menu", bson::doc! {"stock": 5}).await;
    assert_eq!(stock, 1, "nothing changed");
}

#[tokio::test]
async fn with_the_token_operators_manage_the_menu_and_read_orders_and_the_overview() {
    let api = Api::with(&[("ADMIN_TOKEN", ADMIN)]).await;
    let t = Some(ADMIN);
    let created = admin(
        &api,
        Method::POST,
        "/api/v1/admin/menu",
        t,
        Some(json!({"slug": "miso-soup", "name": "Miso soup", "description": "Warm.", "category": "Starters", "price_cents": 450, "stock": 3})),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.json);
    let id = created.json["id"].as_str().unwrap().to_owned();
    let again = admin(
        &api,
        Method::POST,
        "/api/v1/admin/menu",
        t,
        Some(json!({"slug": "miso-soup", "name": "Other", "category": "c", "price_cents": 1})),
    )
    .await;
    assert_eq!(
        (again.status, again.json["error"].as_str()),
        (409, Some("slug_taken"))
    );
    let bad = admin(
        &api,
        Method::POST,
        "/api/v1/admin/menu",
        t,
        Some(json!({"slug": "Bad Slug", "name": "", "category": "c", "price_cents": 0})),
    )
    .await;
    assert_eq!(bad.status, 422);
    let mut f: Vec<&str> = bad.json["fields"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    f.sort_unstable();
    assert_eq!(f, ["name", "price_cents", "slug"]);

    let patched = admin(
        &api,
        Method::PATCH,
        &format!("/api/v1/admin/menu/{id}"),
        t,
        Some(json!({"price_cents": 500, "name": "Miso soup (large)"})),
    )
    .await;
    assert_eq!(patched.status, 200);
    assert_eq!(
        (
            patched.json["price_cents"].as_i64(),
            patched.json["name"].as_str()
        ),
        (Some(500), Some("Miso soup (large)"))
    );
    let restocked = admin(
        &api,
        Method::POST,
        &format!("/api/v1/admin/menu/{id}/restock"),
        t,
        Some(json!({"quantity": 7})),
    )
    .await;
    assert_eq!(
        (restocked.status, restocked.json["stock"].as_i64()),
        (200, Some(10))
    );
    let missing = admin(
        &api,
        Method::POST,
        "/api/v1/admin/menu/65f1a2b3c4d5e6f708192a3b/restock",
        t,
        Some(json!({"quantity": 1})),
    )
    .await;
    assert_eq!(missing.status, 404);
    // The public menu shows it.
    let menu = api.app.get(&format!("/api/v1/menu/{id}")).await;
    assert_eq!(
        (
            menu.json["stock"].as_i64(),
            menu.json["price_cents"].as_i64()
        ),
        (Some(10), Some(500))
    );

    let (status, _) = api.post_order(&order_body(&[(&id, 2)])).await;
    assert_eq!(status, 201);
    let orders = admin(
        &api,
        Method::GET,
        "/api/v1/admin/orders?status=created",
        t,
        None,
    )
    .await;
    assert_eq!(orders.status, 200);
    assert_eq!(orders.json.as_array().unwrap().len(), 1);
    assert_eq!(
        orders.json[0]["customer"]["name"], "Ada Lovelace",
        "operators see the customer"
    );
    let none = admin(
        &api,
        Method::GET,
        "/api/v1/admin/orders?status=delivered",
        t,
        None,
    )
    .await;
    assert_eq!(none.json.as_array().unwrap().len(), 0);
    let bad = admin(
        &api,
        Method::GET,
        "/api/v1/admin/orders?status=teleported",
        t,
        None,
    )
    .await;
    assert_eq!(bad.status, 422);

    let overview = admin(&api, Method::GET, "/api/v1/admin/overview", t, None).await;
    assert_eq!(overview.status, 200, "{}", overview.json);
    let streams: Vec<&str> = overview.json["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(streams.len(), 7, "{streams:?}");
    assert_eq!(overview.json["orders_last_hour"]["created"], 1);
    assert!(
        overview.json["stock"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == id.as_str() && s["stock"] == 8)
    );
    assert_eq!(overview.json["dead_letters"]["total"], 0);
}
