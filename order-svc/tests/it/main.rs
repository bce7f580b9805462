//! order-svc's routes in process (its router via `oneshot`) on a real
//! MongoDB and Redis: every 4xx it can answer and that a refused request
//! changes nothing ([`validation`]), tracking tokens ([`access`]), the admin
//! API ([`admin`]), and the abuse limits and CORS ([`limits`]). Every answer
//! is checked against the OpenAPI document. The flow and contention are
//! tested end to end in `tests/`.

#![allow(clippy::unwrap_used)]

mod access;
mod admin;
mod limits;
mod placing;
mod validation;

use axum::{body::Body, http::Method};
use common::settings::Env;
use order_svc::{Settings, store::Store};
use serde_json::{Value, json};
use testkit::http::{Answer, Client};

pub(crate) const GOOD_ID: &str = "65f1a2b3c4d5e6f708192a3b";

/// order-svc's router on a database of its own; every answer is checked
/// against its OpenAPI document.
pub(crate) struct Api {
    pub(crate) app: Client,
    pub(crate) db: mongodb::Database,
}

impl Api {
    pub(crate) async fn new() -> Self {
        Self::with(&[]).await
    }

    /// order-svc's routes with settings from `vars` (over the test's servers).
    pub(crate) async fn with(vars: &[(&str, &str)]) -> Self {
        let url = testkit::shared_mongo().await.url();
        let client = common::mongo::connect(&url, "order-svc-tests")
            .await
            .unwrap();
        let name = testkit::unique_db("order_api");
        let redis = testkit::redis_url().await;
        let prefix = format!("{}:", testkit::unique("order-api"));
        let mut env: Vec<(&str, &str)> = vec![
            ("MONGO_URL", &url),
            ("REDIS_URL", &redis),
            ("STREAM_PREFIX", &prefix),
            ("MONGO_DB", &name),
            ("ORDER_RATE_PER_SEC", "0"),
        ];
        env.extend_from_slice(vars);
        let settings = Settings::from_env(Env::from_map(env)).unwrap();
        let store = Store::new(client.clone(), &name, settings.common.namespace());
        store.ensure_indexes().await.unwrap();
        let conn = contract::redis::commands(&contract::redis::client(&redis).unwrap()).unwrap();
        let app = Client::new(
            order_svc::app(&settings, store, conn).0,
            &order_svc::api::openapi(),
        );
        Self {
            app,
            db: client.database(&name),
        }
    }

    pub(crate) async fn add_item(&self, name: &str, price_cents: i64, stock: i64) -> String {
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

    pub(crate) async fn post_order(&self, body: &Value) -> (u16, Value) {
        let a = self.app.post_json("/api/v1/orders", body).await;
        (a.status, a.json)
    }

    pub(crate) async fn post_raw(&self, content_type: Option<&str>, body: &str) -> (u16, Value) {
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

    pub(crate) async fn count(&self, collection: &str, filter: bson::Document) -> u64 {
        self.db
            .collection::<bson::Document>(collection)
            .count_documents(filter)
            .await
            .unwrap()
    }
}

pub(crate) fn order_body(items: &[(&str, u32)]) -> Value {
    json!({
        "customer": {"name": "Ada Lovelace", "address": "12 Analytical Row", "phone": "+44 20 7946 0958"},
        "items": items.iter().map(|(id, q)| json!({"item_id": id, "quantity": q})).collect::<Vec<_>>(),
    })
}

pub(crate) fn fields(body: &Value) -> Vec<String> {
    body["fields"]
        .as_object()
        .map(|f| f.keys().cloned().collect())
        .unwrap_or_default()
}
