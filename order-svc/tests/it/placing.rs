//! The placement writer's known dishes (`order_svc::placing`, "Known
//! dishes"): a batch whose dishes the writer already saw is written without
//! reading them, and still never prices or accepts an order on a menu that
//! changed meanwhile (another replica, an operator, a cancel).

use bson::{Bson, doc};
use serde_json::Value;

use crate::{Api, fields, order_body};

/// `find`s the server counted on this test's `menu` collection (`top`).
async fn menu_reads(api: &Api) -> i64 {
    let top = api
        .db
        .client()
        .database("admin")
        .run_command(doc! { "top": 1 })
        .await
        .unwrap();
    let ns = format!("{}.menu", api.db.name());
    match top.get_document("totals").unwrap().get_document(&ns) {
        Ok(sections) => match sections.get_document("queries").unwrap().get("count") {
            Some(Bson::Int32(n)) => i64::from(*n),
            Some(Bson::Int64(n)) => *n,
            _ => 0,
        },
        Err(_) => 0,
    }
}

/// Changes a dish behind the writer's back, as another replica would.
async fn set_dish(api: &Api, id: &str, set: bson::Document) {
    let id = bson::oid::ObjectId::parse_str(id).unwrap();
    api.db
        .collection::<bson::Document>("menu")
        .update_one(doc! { "_id": id }, doc! { "$set": set })
        .await
        .unwrap();
}

async fn stock(api: &Api, id: &str) -> Value {
    api.app.get(&format!("/api/v1/menu/{id}")).await.json["stock"].clone()
}

#[tokio::test]
async fn a_known_dish_is_not_read_again_yet_a_changed_price_or_name_is_used() {
    let api = Api::new().await;
    let tea = api.add_item("Tea", 300, 50).await;

    let (status, first) = api.post_order(&order_body(&[(&tea, 1)])).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["items"][0]["unit_price_cents"], 300);

    // The writer knows the dish now: the next order does not read it.
    let reads = menu_reads(&api).await;
    let (status, second) = api.post_order(&order_body(&[(&tea, 2)])).await;
    assert_eq!(status, 201, "{second}");
    assert_eq!(menu_reads(&api).await, reads, "a known dish is not read");
    assert_eq!(stock(&api, &tea).await, 47);

    // Changed elsewhere: the guard fails, the batch reads and decides again.
    set_dish(
        &api,
        &tea,
        doc! { "price_cents": 350_i64, "name": "Green tea" },
    )
    .await;
    let (status, third) = api.post_order(&order_body(&[(&tea, 1)])).await;
    assert_eq!(status, 201, "{third}");
    assert_eq!(
        (
            &third["items"][0]["unit_price_cents"],
            &third["items"][0]["name"],
            &third["total_cents"]
        ),
        (
            &Value::from(350),
            &Value::from("Green tea"),
            &Value::from(350)
        ),
        "priced on the menu as it is, not as the writer last saw it"
    );
    assert_eq!(stock(&api, &tea).await, 46);
    assert_eq!(api.count("orders", doc! {}).await, 3);
}

#[tokio::test]
async fn stock_taken_elsewhere_is_refused_with_what_is_left_and_restock_is_seen() {
    let api = Api::new().await;
    let cake = api.add_item("Cake", 500, 100).await;
    let (status, _) = api.post_order(&order_body(&[(&cake, 1)])).await;
    assert_eq!(status, 201);

    // The writer believes 99 are left; another replica sold all but one.
    set_dish(&api, &cake, doc! { "stock": 1_i64 }).await;
    let (status, refused) = api.post_order(&order_body(&[(&cake, 2)])).await;
    assert_eq!(
        (status, refused["error"].as_str()),
        (409, Some("insufficient_stock")),
        "{refused}"
    );
    assert_eq!(fields(&refused), ["items[0].quantity"]);
    assert!(
        refused["fields"]["items[0].quantity"]
            .to_string()
            .contains("only 1 of Cake left"),
        "{refused}"
    );
    assert_eq!(stock(&api, &cake).await, 1, "a refused order takes nothing");

    // It now knows one is left; a restock elsewhere is read, not guessed.
    set_dish(&api, &cake, doc! { "stock": 10_i64 }).await;
    let (status, placed) = api.post_order(&order_body(&[(&cake, 3)])).await;
    assert_eq!(status, 201, "{placed}");
    assert_eq!(stock(&api, &cake).await, 7);
    assert_eq!(api.count("orders", doc! {}).await, 2);
}
