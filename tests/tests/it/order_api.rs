//! order-svc end to end: contention on real stock, and what an order carries.
//! (Its 4xx behaviour is tested in process: order-svc/tests/it.)

use foodchain_tests::{Service, System, order_body};
use futures::future::join_all;
use serde_json::Value;

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
async fn orders_carry_prices_totals_and_location() {
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
    sys.remember_token(&order);
    let token = order["tracking_token"].as_str().unwrap();
    assert_eq!(token.len(), 43, "256 random bits, base64url");
    assert_eq!(
        order["tracking_url"],
        format!("/track/{}#token={token}", order["id"].as_str().unwrap())
    );
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

    sys.shutdown().await;
}
