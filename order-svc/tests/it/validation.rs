//! Every 4xx the public API answers, and that a refused request changes nothing.

use serde_json::{Value, json};

use crate::{Api, GOOD_ID, fields, order_body};

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
