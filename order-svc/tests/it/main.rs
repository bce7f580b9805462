//! order-svc's API in process (its router via `oneshot`) on a real MongoDB:
//! every 4xx it can answer, and that a refused request changes nothing.
//! The flow and contention are tested end to end in `tests/`.

#![allow(clippy::unwrap_used)]

use axum::{body::Body, http::Method};
use contract::streams::Namespace;
use order_svc::{AppState, settings::Limits, store::Store};
use serde_json::{Value, json};
use testkit::http::{Answer, Client};

const GOOD_ID: &str = "65f1a2b3c4d5e6f708192a3b";

/// order-svc's router on a database of its own; every answer is checked
/// against its OpenAPI document.
struct Api {
    app: Client,
    db: mongodb::Database,
}

impl Api {
    async fn new() -> Self {
        let url = testkit::shared_mongo().await.url();
        let client = common::mongo::connect(&url, "order-svc-tests")
            .await
            .unwrap();
        let name = testkit::unique_db("order_api");
        let ns = Namespace::new(&format!("{}:", testkit::unique("order-api")));
        let store = Store::new(client.clone(), &name, ns);
        let app = Client::new(
            order_svc::api::router(AppState {
                store,
                limits: Limits::default(),
            }),
            &order_svc::api::openapi(),
        );
        Self {
            app,
            db: client.database(&name),
        }
    }

    async fn add_item(&self, name: &str, price_cents: i64, stock: i64) -> String {
        let id = bson::oid::ObjectId::new();
        self.db
            .collection::<bson::Document>("menu")
            .insert_one(bson::doc! {
                "_id": id, "slug": name.to_lowercase(), "name": name, "description": "test item",
                "category": "test", "price_cents": price_cents, "stock": stock,
            })
            .await
            .unwrap();
        id.to_hex()
    }

    async fn post_order(&self, body: &Value) -> (u16, Value) {
        let a = self.app.post_json("/api/v1/orders", body).await;
        (a.status, a.json)
    }

    async fn post_raw(&self, content_type: Option<&str>, body: &str) -> (u16, Value) {
        let Answer { status, json, .. } = self
            .app
            .send(
                Method::POST,
                "/api/v1/orders",
                content_type,
                Body::from(body.to_owned()),
            )
            .await;
        (status, json)
    }

    async fn count(&self, collection: &str, filter: bson::Document) -> u64 {
        self.db
            .collection::<bson::Document>(collection)
            .count_documents(filter)
            .await
            .unwrap()
    }
}

fn order_body(items: &[(&str, u32)]) -> Value {
    json!({
        "customer": {"name": "Ada Lovelace", "address": "12 Analytical Row", "phone": "+44 20 7946 0958"},
        "items": items.iter().map(|(id, q)| json!({"item_id": id, "quantity": q})).collect::<Vec<_>>(),
    })
}

fn fields(body: &Value) -> Vec<String> {
    body["fields"]
        .as_object()
        .map(|f| f.keys().cloned().collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn every_invalid_input_is_a_422_naming_the_field() {
    let api = Api::new().await;
    let item = api.add_item("Tea", 300, 50).await;
    let valid = order_body(&[(&item, 1)]);
    let with = |path: &[&str], value: Value| {
        let mut b = valid.clone();
        let mut at = &mut b;
        for p in &path[..path.len() - 1] {
            at = if let Ok(i) = p.parse::<usize>() {
                &mut at[i]
            } else {
                &mut at[*p]
            };
        }
        at[path[path.len() - 1]] = value;
        b
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        ("empty items", with(&["items"], json!([])), "items"),
        (
            "quantity 0",
            with(&["items", "0", "quantity"], json!(0)),
            "items[0].quantity",
        ),
        (
            "negative quantity",
            with(&["items", "0", "quantity"], json!(-2)),
            "items[0].quantity",
        ),
        (
            "quantity above max",
            with(&["items", "0", "quantity"], json!(21)),
            "items[0].quantity",
        ),
        (
            "fractional quantity",
            with(&["items", "0", "quantity"], json!(1.5)),
            "items[0].quantity",
        ),
        (
            "duplicate item",
            with(
                &["items"],
                json!([{"item_id": item, "quantity": 1}, {"item_id": item, "quantity": 2}]),
            ),
            "items[1].item_id",
        ),
        (
            "empty name",
            with(&["customer", "name"], json!("")),
            "customer.name",
        ),
        (
            "blank address",
            with(&["customer", "address"], json!("   ")),
            "customer.address",
        ),
        (
            "empty phone",
            with(&["customer", "phone"], json!("")),
            "customer.phone",
        ),
        (
            "bad phone",
            with(&["customer", "phone"], json!("call me maybe")),
            "customer.phone",
        ),
        (
            "unknown top-level field",
            with(&["coupon"], json!("FREE")),
            "coupon",
        ),
        (
            "unknown nested field",
            with(&["customer", "email"], json!("a@b")),
            "customer.email",
        ),
        (
            "malformed item id",
            with(&["items", "0", "item_id"], json!("pizza")),
            "items[0].item_id",
        ),
        (
            "item id of wrong type",
            with(&["items", "0", "item_id"], json!(42)),
            "items[0].item_id",
        ),
        (
            "missing customer",
            json!({"items": valid["items"]}),
            "customer",
        ),
        ("not an object", json!([1, 2]), "body"),
    ];
    for (name, body, field) in cases {
        let (status, resp) = api.post_order(&body).await;
        assert_eq!(status, 422, "{name}: {resp}");
        assert_eq!(resp["error"], "validation_failed", "{name}");
        assert!(
            fields(&resp).contains(&field.to_owned()),
            "{name}: expected field {field} in {resp}"
        );
    }
    // Several problems at once are all reported.
    let (_, resp) = api
        .post_order(&json!({"customer": {"name": ""}, "items": [{"item_id": "x", "quantity": 0}]}))
        .await;
    assert_eq!(
        fields(&resp),
        [
            "customer.address",
            "customer.name",
            "customer.phone",
            "items[0].item_id",
            "items[0].quantity"
        ]
    );

    let (status, resp) = api
        .post_raw(Some("application/json"), "{\"customer\": ")
        .await;
    assert_eq!(
        (status, resp["error"].as_str()),
        (422, Some("invalid_json"))
    );
    let (status, resp) = api.post_raw(None, &valid.to_string()).await;
    assert_eq!(
        (status, resp["error"].as_str()),
        (415, Some("unsupported_media_type"))
    );
    let (status, _) = api
        .post_raw(Some("application/json"), &"x".repeat(100_000))
        .await;
    assert_eq!(status, 413);
    assert_eq!(
        api.count("orders", bson::doc! {}).await,
        0,
        "nothing invalid was stored"
    );
}

#[tokio::test]
async fn unknown_items_404_short_stock_409_and_nothing_changes() {
    let api = Api::new().await;
    let plenty = api.add_item("Rice", 400, 100).await;
    let scarce = api.add_item("Truffle", 9900, 1).await;

    let (status, resp) = api
        .post_order(&order_body(&[(&plenty, 1), (GOOD_ID, 1)]))
        .await;
    assert_eq!(
        (status, resp["error"].as_str()),
        (404, Some("item_not_found"))
    );
    assert_eq!(fields(&resp), ["items[1].item_id"]);

    let (status, resp) = api
        .post_order(&order_body(&[(&plenty, 5), (&scarce, 2)]))
        .await;
    assert_eq!(
        (status, resp["error"].as_str()),
        (409, Some("insufficient_stock"))
    );
    assert_eq!(fields(&resp), ["items[1].quantity"]);
    assert!(resp["message"].as_str().unwrap().contains("Truffle"));

    for (id, stock) in [(&plenty, 100), (&scarce, 1)] {
        let item = api.app.get(&format!("/api/v1/menu/{id}")).await;
        assert_eq!(
            item.json["stock"], stock,
            "an order that fails reserves nothing"
        );
    }
    assert_eq!(api.count("orders", bson::doc! {}).await, 0);
}

#[tokio::test]
async fn lookups_validate_ids() {
    let api = Api::new().await;
    for (path, status, code) in [
        ("/api/v1/orders/not-an-id", 422, "invalid_id"),
        (
            &format!("/api/v1/orders/{GOOD_ID}") as &str,
            404,
            "not_found",
        ),
        ("/api/v1/menu/zzz", 422, "invalid_id"),
        (&format!("/api/v1/menu/{GOOD_ID}"), 404, "not_found"),
    ] {
        let a = api.app.get(path).await;
        assert_eq!(a.status, status, "{path}");
        assert_eq!(a.json["error"], code, "{path}");
    }
}

#[tokio::test]
async fn no_input_however_malformed_is_a_5xx() {
    let api = Api::new().await;
    let item = api.add_item("Pho", 1100, 10).await;
    let bodies = [
        "",
        "null",
        "0",
        "\"x\"",
        "[]",
        "{}",
        "{\"items\": null}",
        "{\"items\": [null]}",
        "{\"items\": [[]]}",
        "{\"customer\": [], \"items\": {}}",
        "{\"customer\": {\"name\": {}}}",
        "\u{0}",
        "{\"a\":1,\"a\":2}",
        "{\"items\": [{\"item_id\": \"\", \"quantity\": 1e999}]}",
        "{\"items\": [{\"quantity\": 18446744073709551616}]}",
        &format!(
            "{{\"customer\": {{\"name\": \"\\u0000\", \"address\": \"x\", \"phone\": \"12345\"}}, \"items\": [{{\"item_id\": \"{item}\", \"quantity\": 1}}]}}"
        ),
    ];
    for body in bodies {
        let (status, resp) = api.post_raw(Some("application/json"), body).await;
        assert!(
            (400..500).contains(&status),
            "{body:?} gave {status}: {resp}"
        );
        assert!(
            resp["error"].is_string() && resp["message"].is_string(),
            "{body:?}: {resp}"
        );
    }
}
