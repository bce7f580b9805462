use std::time::Duration;

use foodchain_tests::{FULL_FLOW, Service, System, labels};

const FLOW_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_reaches_delivered_and_trackers_see_every_status_in_order() {
    let mut sys = System::start().await;
    let menu = sys.seed_menu().await;
    let (pizza, lemonade) = (
        menu[0]["id"].as_str().unwrap(),
        menu[1]["id"].as_str().unwrap(),
    );
    let stock_before = menu[0]["stock"].as_i64().unwrap();

    // Hold the kitchen back so the tracker is connected before anything moves.
    sys.stop_service(Service::Simulator).await;
    let order = sys.place_order(&[(pizza, 2), (lemonade, 1)]).await;
    let id = order["id"].as_str().unwrap().to_owned();
    assert_eq!(order["status"], "created");
    let mut early = sys.track(&id).await;
    let snapshot = early.next(FLOW_TIMEOUT).await;
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(snapshot["order_id"], id.as_str());
    let mut seen = labels(&snapshot["timeline"]);
    assert!(
        seen.len() <= 1,
        "nothing but creation can have happened: {seen:?}"
    );

    sys.start_service(Service::Simulator).await;
    seen.extend(early.updates_until("order:delivered", FLOW_TIMEOUT).await);
    assert_eq!(seen, FULL_FLOW, "every status, in order, once");

    let order = sys.wait_order_status(&id, "delivered", FLOW_TIMEOUT).await;
    assert_eq!(order["version"], 5);

    // A tracker connecting late gets the whole story as its snapshot.
    let mut late = sys.track(&id).await;
    let snapshot = late.next(FLOW_TIMEOUT).await;
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(labels(&snapshot["timeline"]), FULL_FLOW);
    assert_eq!(snapshot["status"], "delivered");
    assert_eq!(snapshot["delivery"]["status"], "delivered");

    // The same snapshot over REST, and exactly one delivery.
    let rest = sys
        .get_json(Service::Notify, &format!("/api/v1/orders/{id}/timeline"))
        .await;
    assert_eq!(labels(&rest["timeline"]), FULL_FLOW);
    assert_eq!(
        sys.count("deliveries", bson::doc! { "order_id": &id })
            .await,
        1
    );
    let delivery_id = snapshot["delivery"]["id"].as_str().unwrap();
    let delivery = sys
        .get_json(
            Service::Delivery,
            &format!("/api/v1/deliveries/{delivery_id}"),
        )
        .await;
    assert_eq!(
        (delivery["order_id"].as_str(), delivery["status"].as_str()),
        (Some(id.as_str()), Some("delivered"))
    );
    let item = sys
        .get_json(Service::Order, &format!("/api/v1/menu/{pizza}"))
        .await;
    assert_eq!(item["stock"].as_i64().unwrap(), stock_before - 2);
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulator_restart_mid_flow_loses_no_step() {
    // Slower steps (20-50 ms → 200-500 ms), so the restart lands mid-flow.
    let mut sys =
        System::start_with(&[("SIMULATOR_DELAY_SCALE", "0.1"), ("SIM_JITTER", "0")]).await;
    let menu = sys.seed_menu().await;
    let order = sys
        .place_order(&[(menu[2]["id"].as_str().unwrap(), 1)])
        .await;
    let id = order["id"].as_str().unwrap();
    sys.wait_order_status(id, "confirmed", FLOW_TIMEOUT).await;
    sys.stop_service(Service::Simulator).await;

    // Its next steps wait in Redis, not in the dead process.
    let mut redis = sys.redis.clone();
    let pending: usize = redis::cmd("ZCARD")
        .arg(
            sys.namespace()
                .key_at("simulator:timers", sys.namespace().partition_of(id)),
        )
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(pending, 1, "the next kitchen step is a durable timer");
    let status = sys
        .get_json(Service::Order, &format!("/api/v1/orders/{id}"))
        .await["status"]
        .clone();
    assert_ne!(status, "delivered");

    sys.start_service(Service::Simulator).await;
    sys.wait_order_status(id, "delivered", FLOW_TIMEOUT).await;
    assert_eq!(
        sys.count("deliveries", bson::doc! { "order_id": id }).await,
        1
    );
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_orders_all_reach_delivered() {
    let sys = System::start().await;
    let menu = sys.seed_menu().await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let item = menu[i % menu.len()]["id"].as_str().unwrap();
        ids.push(
            sys.place_order(&[(item, 1)]).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    for id in &ids {
        sys.wait_order_status(id, "delivered", FLOW_TIMEOUT).await;
    }
    assert_eq!(sys.count("deliveries", bson::doc! {}).await, 20);
    sys.shutdown().await;
}

/// A new consumer of an existing event needs no change anywhere: a
/// throw-away consumer group on orders-stream, with the contract crate alone,
/// reads and decodes everything the running system published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_consumer_group_decodes_orders_stream_with_the_contract_alone() {
    use contract::{
        Envelope,
        events::{OrdersEvent, StreamEvent},
        streams::Stream,
    };
    let sys = System::start().await;
    let menu = sys.seed_menu().await;
    let order = sys
        .place_order(&[(menu[0]["id"].as_str().unwrap(), 1)])
        .await;
    let id = order["id"].as_str().unwrap().to_owned();
    sys.wait_order_status(&id, "delivered", FLOW_TIMEOUT).await;

    // The order's partition of the stream (all of it with one partition).
    let key = sys.namespace().stream_for(Stream::Orders, &id);
    let mut conn = sys.redis.clone();
    let group = testkit::unique("throwaway");
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg(&group)
        .arg("0")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let reply: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(&group)
        .arg("reader")
        .arg("COUNT")
        .arg(1000)
        .arg("STREAMS")
        .arg(&key)
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();
    let entries: Vec<_> = contract::redis::xread(reply)
        .unwrap()
        .into_iter()
        .flat_map(|(_, e)| e)
        .collect();
    let events: Vec<OrdersEvent> = entries
        .iter()
        .map(|e| OrdersEvent::decode(&Envelope::from_entry(e).unwrap()).unwrap())
        .collect();
    let statuses: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            OrdersEvent::Created(p) if p.order_id.to_string() == id => Some("created".to_owned()),
            OrdersEvent::StatusUpdated(p) if p.order_id.to_string() == id => {
                Some(p.status.as_str().to_owned())
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        statuses,
        [
            "created",
            "confirmed",
            "preparing",
            "out_for_delivery",
            "delivered"
        ]
    );
    sys.shutdown().await;
}
