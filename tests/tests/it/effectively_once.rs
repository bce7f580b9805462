//! Every effect happens once and every committed change reaches its
//! consumers, whatever crashes in between (failpoints + killed services).

use std::{collections::HashMap, time::Duration};

use common::failpoint;
use contract::{
    Envelope,
    dead_letter::DeadLetter,
    events::{DeliveryCreated, Event, OrderCreated, OrderStatusUpdated},
    status::OrderStatus,
    streams::{Stream, groups},
};

const ORDER_CREATED_V1: &str = OrderCreated::TYPE;
const ORDER_STATUS_UPDATED_V1: &str = OrderStatusUpdated::TYPE;
use foodchain_tests::{FULL_FLOW, Service, System, eventually, labels, order_body};
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

async fn post_with_key(
    sys: &System,
    replica: usize,
    key: &str,
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = sys
        .http
        .post(format!(
            "{}/api/v1/orders",
            sys.replica_url(Service::Order, replica)
        ))
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .unwrap();
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    let body = r.json().await.unwrap_or(Value::Null);
    sys.remember_token(&body);
    (status, headers, body)
}

fn count_type(events: &[Envelope], event_type: &str) -> usize {
    events.iter().filter(|e| e.event_type == event_type).count()
}

async fn timeline_labels(sys: &System, order_id: &str) -> Vec<String> {
    let t = sys
        .get_json(
            Service::Notify,
            &format!("/api/v1/orders/{order_id}/timeline"),
        )
        .await;
    labels(&t["timeline"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_commit_and_publish_loses_nothing_and_the_retry_replays() {
    let mut sys = System::start().await;
    let menu = sys.seed_menu().await;
    let ns = sys.namespace();
    failpoint::arm(&ns, "order-svc.after_commit");
    failpoint::arm(&ns, "outbox.before_publish");
    let body = order_body(&[(menu[0]["id"].as_str().unwrap(), 1)]);
    let request = {
        let (url, http, body) = (sys.url(Service::Order), sys.http.clone(), body.clone());
        tokio::spawn(async move {
            let _ = http
                .post(format!("{url}/api/v1/orders"))
                .header("idempotency-key", "k-crash")
                .json(&body)
                .send()
                .await;
        })
    };
    failpoint::wait_hit(&ns, "order-svc.after_commit").await;
    // Committed, never published, never answered: then the process dies.
    assert_eq!(sys.count("orders", bson::doc! {}).await, 1);
    sys.kill_replica(Service::Order, 0).await;
    request.abort();
    assert!(
        sys.stream(Stream::Orders).await.is_empty(),
        "nothing was published before the crash"
    );
    failpoint::disarm(&ns, "order-svc.after_commit");
    failpoint::disarm(&ns, "outbox.before_publish");

    sys.start_service(Service::Order).await;
    // The careful client retries with the same key: the original order.
    let (status, headers, order) = post_with_key(&sys, 0, "k-crash", &body).await;
    assert_eq!(status, 201, "{order}");
    assert_eq!(headers["idempotent-replayed"], "true");
    let id = order["id"].as_str().unwrap();
    assert_eq!(
        sys.count("orders", bson::doc! {}).await,
        1,
        "no second order"
    );

    sys.wait_order_status(id, "delivered", T).await;
    assert_eq!(
        sys.count("deliveries", bson::doc! { "order_id": id }).await,
        1
    );
    assert_eq!(
        count_type(&sys.events_of(Stream::Orders, id).await, ORDER_CREATED_V1),
        1
    );
    assert_eq!(timeline_labels(&sys, id).await, FULL_FLOW);
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_xadd_and_marking_republishes_but_applies_once() {
    let mut sys = System::start().await;
    let menu = sys.seed_menu().await;
    let ns = sys.namespace();
    failpoint::arm(&ns, "outbox.after_publish");
    let order = sys
        .place_order(&[(menu[1]["id"].as_str().unwrap(), 1)])
        .await;
    let id = order["id"].as_str().unwrap().to_owned();
    failpoint::wait_hit(&ns, "outbox.after_publish").await;
    sys.kill_replica(Service::Order, 0).await;
    failpoint::disarm(&ns, "outbox.after_publish");
    sys.start_service(Service::Order).await;

    sys.wait_order_status(&id, "delivered", T).await;
    // The relay published order.created twice (same event id) ...
    let events = sys.events_of(Stream::Orders, &id).await;
    let created: Vec<&Envelope> = events
        .iter()
        .filter(|e| e.event_type == ORDER_CREATED_V1)
        .collect();
    assert_eq!(created.len(), 2, "republished after the crash");
    assert_eq!(created[0].event_id, created[1].event_id);
    assert_eq!(sys.events_of(Stream::SimulateOrder, &id).await.len(), 2);
    // ... and everything downstream happened once.
    let order = sys
        .get_json(Service::Order, &format!("/api/v1/orders/{id}"))
        .await;
    assert_eq!(order["version"], 5, "each status applied once");
    // (The relay publishes the last update a moment after its commit.)
    let updates = eventually("the last update is published", T, || async {
        let n = count_type(
            &sys.events_of(Stream::Orders, &id).await,
            ORDER_STATUS_UPDATED_V1,
        );
        (n >= 4).then_some(n)
    })
    .await;
    assert_eq!(updates, 4, "one update per status");
    assert_eq!(
        sys.count("deliveries", bson::doc! { "order_id": &id })
            .await,
        1
    );
    assert_eq!(timeline_labels(&sys, &id).await, FULL_FLOW);
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_effect_before_xack_is_not_applied_twice_after_reclaim() {
    let mut sys = System::start().await;
    let menu = sys.seed_menu().await;
    let ns = sys.namespace();
    failpoint::arm(&ns, "delivery-svc.before_ack");
    let order = sys
        .place_order(&[(menu[2]["id"].as_str().unwrap(), 1)])
        .await;
    let id = order["id"].as_str().unwrap().to_owned();
    failpoint::wait_hit(&ns, "delivery-svc.before_ack").await;
    // The delivery exists, the message that caused it is still pending.
    assert_eq!(
        sys.count("deliveries", bson::doc! { "order_id": &id })
            .await,
        1
    );
    assert_eq!(sys.pending(Stream::Orders, groups::DELIVERY_SVC).await, 1);
    sys.kill_replica(Service::Delivery, 0).await;
    failpoint::disarm(&ns, "delivery-svc.before_ack");
    sys.start_service(Service::Delivery).await;

    sys.wait_order_status(&id, "delivered", T).await;
    eventually(
        "the orphaned message is reclaimed and acknowledged",
        T,
        || async { (sys.pending(Stream::Orders, groups::DELIVERY_SVC).await == 0).then_some(()) },
    )
    .await;
    assert_eq!(
        sys.count("deliveries", bson::doc! { "order_id": &id })
            .await,
        1,
        "one delivery"
    );
    let created: Vec<_> = sys
        .events_of(Stream::Deliveries, &id)
        .await
        .into_iter()
        .filter(|e| e.event_type == DeliveryCreated::TYPE)
        .map(|e| e.event_id)
        .collect();
    assert!(
        !created.is_empty() && created.iter().all(|e| *e == created[0]),
        "one delivery.created event: {created:?}"
    );
    assert_eq!(timeline_labels(&sys, &id).await, FULL_FLOW);
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_added_twice_has_one_effect() {
    let mut sys = System::start().await;
    let menu = sys.seed_menu().await;
    sys.stop_service(Service::Simulator).await;
    let order = sys
        .place_order(&[(menu[3]["id"].as_str().unwrap(), 1)])
        .await;
    let id = order["id"].as_str().unwrap().to_owned();
    let confirmed = foodchain_tests::kitchen(&id, OrderStatus::Confirmed);
    sys.xadd(Stream::OrderStatus, &confirmed).await;
    sys.xadd(Stream::OrderStatus, &confirmed).await;
    // The order's own creation event, duplicated, reaches notify-svc twice too.
    let created = eventually("order.created published", T, || async {
        sys.events_of(Stream::Orders, &id).await.into_iter().next()
    })
    .await;
    sys.xadd(Stream::Orders, &created).await;

    sys.wait_order_status(&id, "confirmed", T).await;
    eventually("both copies handled", T, || async {
        (sys.pending(Stream::OrderStatus, groups::ORDER_SVC).await == 0
            && sys.pending(Stream::Orders, groups::NOTIFY_SVC).await == 0)
            .then_some(())
    })
    .await;
    let order = sys
        .get_json(Service::Order, &format!("/api/v1/orders/{id}"))
        .await;
    assert_eq!(order["version"], 2, "confirmed once");
    eventually("the update was published", T, || async {
        let events = sys.events_of(Stream::Orders, &id).await;
        (count_type(&events, ORDER_STATUS_UPDATED_V1) == 1).then_some(())
    })
    .await;
    eventually("timeline", T, || async {
        (timeline_labels(&sys, &id).await == ["order:created", "order:confirmed"]).then_some(())
    })
    .await;
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_publish_each_entry_once_and_the_survivor_takes_over() {
    let mut sys = System::start().await;
    let second = sys.add_replica(Service::Order).await;
    let menu = sys.seed_menu().await;
    let item = menu[4]["id"].as_str().unwrap();
    let mut ids = Vec::new();
    for i in 0..20 {
        let (status, _, order) = post_with_key(
            &sys,
            if i % 2 == 0 { 0 } else { second },
            &format!("two-{i}"),
            &order_body(&[(item, 1)]),
        )
        .await;
        assert_eq!(status, 201);
        ids.push(order["id"].as_str().unwrap().to_owned());
    }
    eventually("all 20 published", T, || async {
        let created = sys
            .stream(Stream::Orders)
            .await
            .iter()
            .filter(|e| e.get_str("event_type") == Some(ORDER_CREATED_V1))
            .count();
        (created == 20).then_some(())
    })
    .await;
    let mut per_event: HashMap<String, usize> = HashMap::new();
    for e in sys.stream(Stream::Orders).await {
        *per_event
            .entry(e.get_str("event_id").unwrap().to_owned())
            .or_default() += 1;
    }
    assert!(
        per_event.values().all(|n| *n == 1),
        "with two relays running, each entry is published once"
    );

    let holder = sys
        .lease_holder(Service::Order)
        .await
        .expect("one relay holds the lease");
    let survivor = if holder == 0 { second } else { 0 };
    sys.kill_replica(Service::Order, holder).await;
    for i in 0..5 {
        let (status, _, order) = post_with_key(
            &sys,
            survivor,
            &format!("after-{i}"),
            &order_body(&[(item, 1)]),
        )
        .await;
        assert_eq!(status, 201);
        ids.push(order["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        sys.wait_order_status(id, "delivered", T).await;
    }
    assert_eq!(
        sys.lease_holder(Service::Order).await,
        Some(survivor),
        "the survivor took the lease over"
    );
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_paused_past_its_lease_does_not_publish_when_it_wakes() {
    let mut sys = System::start().await;
    let second = sys.add_replica(Service::Order).await;
    sys.stop_service(Service::Simulator).await;
    let menu = sys.seed_menu().await;
    let item = menu[3]["id"].as_str().unwrap();
    let holder = sys
        .lease_holder(Service::Order)
        .await
        .expect("one relay holds the lease");
    let other = if holder == 0 { second } else { 0 };
    // The holder's relay stops right before it publishes (before it checks
    // its lease): a pause, as a long stall of that process would be.
    let ns = sys.namespace();
    failpoint::arm_once(&ns, "outbox.before_publish");
    let (status, _, order) =
        post_with_key(&sys, holder, "k-paused", &order_body(&[(item, 1)])).await;
    assert_eq!(status, 201, "{order}");
    let id = order["id"].as_str().unwrap().to_owned();
    failpoint::wait_hit(&ns, "outbox.before_publish").await;
    // Its lease runs out (1 s in tests); the other replica takes it over and
    // publishes the order from the outbox.
    eventually("the other relay published the order", T, || async {
        let events = sys.events_of(Stream::Orders, &id).await;
        (count_type(&events, ORDER_CREATED_V1) == 1).then_some(())
    })
    .await;
    assert_eq!(sys.lease_holder(Service::Order).await, Some(other));
    // The paused relay goes on: it must see that the lease is gone.
    failpoint::disarm(&ns, "outbox.before_publish");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let events = sys.events_of(Stream::Orders, &id).await;
    assert_eq!(
        count_type(&events, ORDER_CREATED_V1),
        1,
        "the woken relay published nothing"
    );
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_replay_refuse_reuse_and_serialise_twins() {
    let mut sys = System::start().await;
    let second = sys.add_replica(Service::Order).await;
    let sys = sys;
    let item = sys.add_item("Bao", 450, 5).await;
    let body = order_body(&[(&item, 1)]);
    let stock = || async {
        sys.get_json(Service::Order, &format!("/api/v1/menu/{item}"))
            .await["stock"]
            .as_i64()
            .unwrap()
    };

    let (s1, h1, first) = post_with_key(&sys, 0, "k1", &body).await;
    assert_eq!(s1, 201);
    assert!(h1.get("idempotent-replayed").is_none());
    let (s2, h2, again) = post_with_key(&sys, 0, "k1", &body).await;
    assert_eq!(s2, 201);
    assert_eq!(h2["idempotent-replayed"], "true");
    assert_eq!(again, first, "the original response, byte for byte");
    assert_eq!(h2["location"], h1["location"]);
    assert_eq!(
        (stock().await, sys.count("orders", bson::doc! {}).await),
        (4, 1),
        "one order, one reservation"
    );

    let (s3, _, reused) = post_with_key(&sys, 0, "k1", &order_body(&[(&item, 2)])).await;
    assert_eq!(
        (s3, reused["error"].as_str()),
        (422, Some("idempotency_key_reused"))
    );

    // Ten identical requests at once: one order, ten identical answers.
    let twins =
        futures::future::join_all((0..10).map(|_| post_with_key(&sys, 0, "k2", &body))).await;
    let ids: Vec<&str> = twins
        .iter()
        .map(|(s, _, b)| {
            assert_eq!(*s, 201, "{b}");
            b["id"].as_str().unwrap()
        })
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]));
    assert_eq!(
        (stock().await, sys.count("orders", bson::doc! {}).await),
        (3, 2)
    );

    // The same, spread over two replicas (each batches its own requests;
    // their batches race for the key): still one order.
    let twins = futures::future::join_all(
        (0..10).map(|i| post_with_key(&sys, if i % 2 == 0 { 0 } else { second }, "k2b", &body)),
    )
    .await;
    let ids: Vec<&str> = twins
        .iter()
        .map(|(s, _, b)| {
            assert_eq!(*s, 201, "{b}");
            b["id"].as_str().unwrap()
        })
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    assert_eq!(
        (stock().await, sys.count("orders", bson::doc! {}).await),
        (2, 3)
    );

    // A refusal is remembered too, even once stock is back.
    let (s4, _, refused) = post_with_key(&sys, 0, "k3", &order_body(&[(&item, 10)])).await;
    assert_eq!(s4, 409);
    sys.mongo
        .database(&sys.db)
        .collection::<bson::Document>("menu")
        .update_one(
            bson::doc! { "_id": bson::oid::ObjectId::parse_str(&item).unwrap() },
            bson::doc! { "$set": { "stock": 100 } },
        )
        .await
        .unwrap();
    let (s5, h5, replayed) = post_with_key(&sys, 0, "k3", &order_body(&[(&item, 10)])).await;
    assert_eq!(
        (s5, &replayed, &h5["idempotent-replayed"]),
        (
            409,
            &refused,
            &reqwest::header::HeaderValue::from_static("true")
        )
    );
    let (s6, _, _) = post_with_key(&sys, 0, "k4", &order_body(&[(&item, 10)])).await;
    assert_eq!(s6, 201, "a new key is a new request");

    let (s7, _, bad) = post_with_key(&sys, 0, "has space", &body).await;
    assert_eq!(
        (s7, bad["error"].as_str()),
        (422, Some("invalid_idempotency_key"))
    );
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_and_duplicate_statuses_never_move_an_order_backwards() {
    let mut sys = System::start_with(&[("CONSUMER_MAX_DEFER_MS", "3000")]).await;
    let menu = sys.seed_menu().await;
    sys.stop_service(Service::Simulator).await;
    let order = sys
        .place_order(&[(menu[5]["id"].as_str().unwrap(), 1)])
        .await;
    let id = order["id"].as_str().unwrap().to_owned();

    // "preparing" overtakes "confirmed": it waits (retries) for it.
    sys.xadd(
        Stream::OrderStatus,
        &foodchain_tests::kitchen(&id, OrderStatus::Preparing),
    )
    .await;
    sys.xadd(
        Stream::OrderStatus,
        &foodchain_tests::kitchen(&id, OrderStatus::Confirmed),
    )
    .await;
    sys.wait_order_status(&id, "preparing", T).await;
    // Late duplicates and stale statuses are acknowledged and ignored.
    sys.xadd(
        Stream::OrderStatus,
        &foodchain_tests::kitchen(&id, OrderStatus::Confirmed),
    )
    .await;
    sys.xadd(
        Stream::OrderStatus,
        &foodchain_tests::kitchen(&id, OrderStatus::Created),
    )
    .await;
    eventually("all handled", T, || async {
        (sys.pending(Stream::OrderStatus, groups::ORDER_SVC).await == 0).then_some(())
    })
    .await;
    let order = sys
        .get_json(Service::Order, &format!("/api/v1/orders/{id}"))
        .await;
    assert_eq!(
        (order["status"].as_str(), order["version"].as_u64()),
        (Some("preparing"), Some(3))
    );
    let updates: Vec<String> = sys
        .events_of(Stream::Orders, &id)
        .await
        .iter()
        .filter(|e| e.event_type == ORDER_STATUS_UPDATED_V1)
        .map(|e| e.payload["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        updates,
        ["confirmed", "preparing"],
        "published once each, in order"
    );

    // A status whose predecessor never comes waits (CONSUMER_MAX_DEFER_MS, 3 s
    // here) without using up attempts, then is dead-lettered, with the reason.
    let other = sys
        .place_order(&[(menu[5]["id"].as_str().unwrap(), 1)])
        .await;
    let other_id = other["id"].as_str().unwrap();
    sys.xadd(
        Stream::OrderStatus,
        &foodchain_tests::kitchen(other_id, OrderStatus::OutForDelivery),
    )
    .await;
    let dead = eventually("dead letter", T, || async {
        sys.stream(Stream::DeadLetters)
            .await
            .first()
            .map(|e| DeadLetter::from_entry(e).unwrap())
    })
    .await;
    assert_eq!(
        (dead.reason.as_str(), dead.attempts, dead.group.as_str()),
        ("deferred_too_long", 1, groups::ORDER_SVC)
    );
    assert!(dead.error.contains("must wait"), "{}", dead.error);
    let other = sys
        .get_json(Service::Order, &format!("/api/v1/orders/{other_id}"))
        .await;
    assert_eq!(other["status"], "created", "never applied");
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_for_an_unknown_order_is_dead_lettered_not_swallowed() {
    // Regression: the inbox claim used to commit with "no such order", so
    // the retry found the event "already processed" and acknowledged it.
    let sys = System::start().await;
    let ghost = "65f1a2b3c4d5e6f708192a3b";
    sys.xadd(
        Stream::OrderStatus,
        &foodchain_tests::kitchen(ghost, OrderStatus::Confirmed),
    )
    .await;
    let dead = eventually("dead letter", T, || async {
        sys.stream(Stream::DeadLetters)
            .await
            .first()
            .map(|e| DeadLetter::from_entry(e).unwrap())
    })
    .await;
    assert_eq!((dead.reason.as_str(), dead.attempts), ("max_attempts", 5));
    assert!(dead.error.contains("does not exist"), "{}", dead.error);
    sys.shutdown().await;
}
