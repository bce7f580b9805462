use foodchain_tests::{Service, System, order_body};
use futures::future::join_all;
use serde_json::{Value, json};

const GOOD_ID: &str = "65f1a2b3c4d5e6f708192a3b";

async fn post_raw(sys: &System, content_type: Option<&str>, body: &str) -> (u16, Value) {
    let mut req = sys
        .http
        .post(format!("{}/api/v1/orders", sys.url(Service::Order)))
        .body(body.to_owned());
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

fn fields(body: &Value) -> Vec<String> {
    body["fields"]
        .as_object()
        .map(|f| f.keys().cloned().collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_orders_for_ten_in_stock_sell_exactly_ten() {
    let sys = System::start().await;
    let item = sys.add_item("Last Pie", 1200, 10).await;
    let body = order_body(&[(&item, 1)]);
    let results = join_all((0..50).map(|_| sys.post_order(&body))).await;
    let created = results.iter().filter(|(s, _)| *s == 201).count();
    let conflicts: Vec<&Value> = results
        .iter()
        .filter(|(s, _)| *s == 409)
        .map(|(_, b)| b)
        .collect();
    let others: Vec<u16> = results
        .iter()
        .map(|(s, _)| *s)
        .filter(|s| *s != 201 && *s != 409)
        .collect();
    assert_eq!(created, 10, "exactly the stock is sold");
    assert_eq!(conflicts.len(), 40);
    assert!(
        others.is_empty(),
        "no other status (no 500, no 503): {others:?}"
    );
    assert_eq!(conflicts[0]["error"], "insufficient_stock");
    assert!(
        conflicts[0]["message"]
            .as_str()
            .unwrap()
            .contains("Last Pie"),
        "{}",
        conflicts[0]
    );
    let left = sys
        .get_json(Service::Order, &format!("/api/v1/menu/{item}"))
        .await["stock"]
        .as_i64()
        .unwrap();
    assert_eq!(left, 0);
    assert_eq!(sys.count("orders", bson::doc! {}).await, 10);
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_quantities_under_contention_never_oversell() {
    let sys = System::start().await;
    let a = sys.add_item("Soup", 500, 25).await;
    let b = sys.add_item("Bread", 200, 25).await;
    let attempts = (0..40u32).map(|i| {
        let items = [(a.as_str(), 1 + i % 3), (b.as_str(), 1 + (i / 3) % 2)];
        let body = order_body(&items);
        let sys = &sys;
        async move { (sys.post_order(&body).await, items) }
    });
    let results = join_all(attempts).await;
    let (mut sold_a, mut sold_b) = (0, 0);
    for ((status, _), items) in &results {
        assert!([201, 409].contains(status), "status {status}");
        if *status == 201 {
            sold_a += i64::from(items[0].1);
            sold_b += i64::from(items[1].1);
        }
    }
    let stock = |id: String| {
        let sys = &sys;
        async move {
            sys.get_json(Service::Order, &format!("/api/v1/menu/{id}"))
                .await["stock"]
                .as_i64()
                .unwrap()
        }
    };
    let (left_a, left_b) = (stock(a.clone()).await, stock(b.clone()).await);
    assert!(left_a >= 0 && left_b >= 0);
    assert_eq!(
        (left_a + sold_a, left_b + sold_b),
        (25, 25),
        "stock is conserved"
    );
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invalid_input_is_a_422_naming_the_field() {
    let sys = System::start().await;
    let item = sys.add_item("Tea", 300, 50).await;
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
        let (status, resp) = sys.post_order(&body).await;
        assert_eq!(status, 422, "{name}: {resp}");
        assert_eq!(resp["error"], "validation_failed", "{name}");
        assert!(
            fields(&resp).contains(&field.to_owned()),
            "{name}: expected field {field} in {resp}"
        );
    }
    // Several problems at once are all reported.
    let (_, resp) = sys
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

    let (status, resp) = post_raw(&sys, Some("application/json"), "{\"customer\": ").await;
    assert_eq!(
        (status, resp["error"].as_str()),
        (422, Some("invalid_json"))
    );
    let (status, resp) = post_raw(&sys, None, &valid.to_string()).await;
    assert_eq!(
        (status, resp["error"].as_str()),
        (415, Some("unsupported_media_type"))
    );
    let (status, _) = post_raw(&sys, Some("application/json"), &"x".repeat(100_000)).await;
    assert_eq!(status, 413);
    assert_eq!(
        sys.count("orders", bson::doc! {}).await,
        0,
        "nothing invalid was stored"
    );
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_items_404_short_stock_409_and_nothing_changes() {
    let sys = System::start().await;
    let plenty = sys.add_item("Rice", 400, 100).await;
    let scarce = sys.add_item("Truffle", 9900, 1).await;

    let (status, resp) = sys
        .post_order(&order_body(&[(&plenty, 1), (GOOD_ID, 1)]))
        .await;
    assert_eq!(
        (status, resp["error"].as_str()),
        (404, Some("item_not_found"))
    );
    assert_eq!(fields(&resp), ["items[1].item_id"]);

    let (status, resp) = sys
        .post_order(&order_body(&[(&plenty, 5), (&scarce, 2)]))
        .await;
    assert_eq!(
        (status, resp["error"].as_str()),
        (409, Some("insufficient_stock"))
    );
    assert_eq!(fields(&resp), ["items[1].quantity"]);
    assert!(resp["message"].as_str().unwrap().contains("Truffle"));

    for (id, stock) in [(&plenty, 100), (&scarce, 1)] {
        let item = sys
            .get_json(Service::Order, &format!("/api/v1/menu/{id}"))
            .await;
        assert_eq!(item["stock"], stock, "an order that fails reserves nothing");
    }
    assert_eq!(sys.count("orders", bson::doc! {}).await, 0);
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_validate_ids_and_orders_carry_prices_totals_and_location() {
    let sys = System::start().await;
    let a = sys.add_item("Dumplings", 650, 10).await;
    let b = sys.add_item("Kimchi", 300, 10).await;
    let r = sys
        .http
        .post(format!("{}/api/v1/orders", sys.url(Service::Order)))
        .json(&order_body(&[(&a, 2), (&b, 3)]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let order: Value = r.json().await.unwrap();
    assert_eq!(
        location,
        format!("/api/v1/orders/{}", order["id"].as_str().unwrap())
    );
    assert_eq!(
        order["total_cents"],
        2 * 650 + 3 * 300,
        "the server computes the total"
    );
    assert_eq!(order["items"][0]["unit_price_cents"], 650);
    assert_eq!(order["items"][1]["line_total_cents"], 900);
    assert_eq!(order["customer"]["name"], "Ada Lovelace");

    let fetched = sys.get_json(Service::Order, &location).await;
    assert_eq!(fetched["id"], order["id"]);

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
        let r = sys
            .http
            .get(format!("{}{path}", sys.url(Service::Order)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], code, "{path}");
    }
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_input_however_malformed_is_a_500() {
    let sys = System::start().await;
    let item = sys.add_item("Pho", 1100, 10).await;
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
        let (status, resp) = post_raw(&sys, Some("application/json"), body).await;
        assert!(
            (400..500).contains(&status),
            "{body:?} gave {status}: {resp}"
        );
        assert!(
            resp["error"].is_string() && resp["message"].is_string(),
            "{body:?}: {resp}"
        );
    }
    sys.shutdown().await;
}
