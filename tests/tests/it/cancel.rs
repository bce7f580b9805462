//! Cancellation by the customer and rejection by the kitchen: the order ends,
//! its stock comes back exactly once (checked in MongoDB), no delivery is
//! created, the kitchen stops and trackers get the last step, then a close.

use std::time::Duration;

use common::failpoint;
use contract::{
    Envelope,
    events::{Event, OrderCancelled, OrderRejected},
    status::OrderStatus,
    streams::{Stream, groups},
};
use foodchain_tests::{Service, System, eventually, kitchen, kitchen_because, labels};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);

async fn timeline(sys: &System, order_id: &str) -> Vec<String> {
    let t = sys
        .get_json(
            Service::Notify,
            &format!("/api/v1/orders/{order_id}/timeline"),
        )
        .await;
    labels(&t["timeline"])
}

fn of_type<'a>(events: &'a [Envelope], event_type: &str) -> Vec<&'a Envelope> {
    events
        .iter()
        .filter(|e| e.event_type == event_type)
        .collect()
}

/// Waits until every consumer of the system has acknowledged everything.
async fn quiet(sys: &System) {
    let groups_of = [
        (Stream::Orders, groups::DELIVERY_SVC),
        (Stream::Orders, groups::NOTIFY_SVC),
        (Stream::Orders, groups::SIMULATOR),
        (Stream::OrderStatus, groups::ORDER_SVC),
        (Stream::Deliveries, groups::ORDER_SVC),
        (Stream::Deliveries, groups::NOTIFY_SVC),
    ];
    eventually("every consumer caught up", T, || async {
        for (stream, group) in groups_of {
            if sys.pending(stream, group).await != 0 {
                return None;
            }
        }
        Some(())
    })
    .await;
}

/// Moves an order (simulator stopped) through the kitchen's steps up to `to`.
async fn drive(sys: &System, id: &str, to: OrderStatus) {
    for status in [
        OrderStatus::Confirmed,
        OrderStatus::Preparing,
        OrderStatus::OutForDelivery,
    ] {
        if to == OrderStatus::Created {
            break;
        }
        sys.xadd(Stream::OrderStatus, &kitchen(id, status)).await;
        sys.wait_order_status(id, status.as_str(), T).await;
        if status == to {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_cancels_while_created_confirmed_or_preparing_and_the_stock_comes_back() {
    let mut sys = System::start().await;
    sys.stop_service(Service::Simulator).await;
    let item = sys.add_item("Cancel Soup", 700, 10).await;
    let steps = ["order:created", "order:confirmed", "order:preparing"];
    for (n, at) in [
        OrderStatus::Created,
        OrderStatus::Confirmed,
        OrderStatus::Preparing,
    ]
    .into_iter()
    .enumerate()
    {
        let order = sys.place_order(&[(&item, 3)]).await;
        let id = order["id"].as_str().unwrap().to_owned();
        assert_eq!(sys.stock(&item).await, 7, "reserved");
        drive(&sys, &id, at).await;
        let mut tracker = sys.track(&id).await;
        assert_eq!(tracker.next(T).await["type"], "snapshot");

        let (status, cancelled) = sys.cancel(&id, None).await;
        assert_eq!(status, 200, "{cancelled}");
        assert_eq!(
            (
                cancelled["status"].as_str(),
                cancelled["reason"].as_str(),
                cancelled["version"].as_u64()
            ),
            (
                Some("cancelled"),
                Some("changed my mind"),
                Some(n as u64 + 2)
            ),
            "cancelled at {at:?}"
        );
        assert_eq!(sys.stock(&item).await, 10, "restocked, in MongoDB");
        let menu_item = sys
            .get_json(Service::Order, &format!("/api/v1/menu/{item}"))
            .await;
        assert_eq!(menu_item["stock"], 10, "the menu shows it");

        // Repeating the cancel answers the same.
        let (again, body) = sys.cancel(&id, None).await;
        assert_eq!((again, &body), (200, &cancelled));
        assert_eq!(sys.stock(&item).await, 10, "restocked once");

        // The tracker gets the last step, then is closed.
        let update = tracker.next(T).await;
        assert_eq!(
            (
                update["entry"]["kind"].as_str(),
                update["entry"]["status"].as_str()
            ),
            (Some("order"), Some("cancelled")),
            "{update}"
        );
        assert_eq!(tracker.closed(T).await.0, 1000);
        let mut expected: Vec<String> = steps[..=n].iter().map(|s| (*s).to_owned()).collect();
        expected.push("order:cancelled".into());
        eventually("the timeline ends cancelled", T, || async {
            (timeline(&sys, &id).await == expected).then_some(())
        })
        .await;

        let events = sys.events_of(Stream::Orders, &id).await;
        let facts = of_type(&events, OrderCancelled::TYPE);
        assert_eq!(facts.len(), 1, "one order.cancelled.v1");
        assert_eq!(facts[0].payload["previous"], at.as_str());
        assert_eq!(
            facts[0].payload["restocked"],
            json!([{"item_id": item, "quantity": 3}])
        );
    }
    quiet(&sys).await;
    assert_eq!(sys.count("deliveries", bson::doc! {}).await, 0);
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_once_the_order_is_out_is_refused_with_its_status() {
    let mut sys = System::start().await;
    let item = sys.add_item("Late Soup", 700, 10).await;
    let delivered = sys.place_order(&[(&item, 1)]).await;
    let delivered_id = delivered["id"].as_str().unwrap();
    sys.wait_order_status(delivered_id, "delivered", T).await;
    let (status, body) = sys.cancel(delivered_id, None).await;
    assert_eq!(
        (status, body["error"].as_str(), body["status"].as_str()),
        (409, Some("not_cancellable"), Some("delivered")),
        "{body}"
    );

    sys.stop_service(Service::Simulator).await;
    let out = sys.place_order(&[(&item, 2)]).await;
    let out_id = out["id"].as_str().unwrap();
    drive(&sys, out_id, OrderStatus::OutForDelivery).await;
    let (status, body) = sys.cancel(out_id, None).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (409, Some("out_for_delivery")),
        "{body}"
    );
    assert_eq!(sys.stock(&item).await, 7, "nothing put back");
    let order = sys
        .get_json(Service::Order, &format!("/api/v1/orders/{out_id}"))
        .await;
    assert_eq!(order["status"], "out_for_delivery");

    // Unknown order, no token, someone else's token: all 404, alike.
    let unknown = "65f1a2b3c4d5e6f708192a3b";
    let url = |id: &str| format!("{}/api/v1/orders/{id}/cancel", sys.url(Service::Order));
    let answers = [
        sys.http
            .post(url(unknown))
            .bearer_auth(sys.token(out_id).unwrap()),
        sys.http.post(url(out_id)),
        sys.http
            .post(url(out_id))
            .bearer_auth(sys.token(delivered_id).unwrap()),
        sys.http.post(url("not-an-id")),
    ];
    let mut codes = Vec::new();
    for req in answers {
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        codes.push((status, body["error"].as_str().unwrap().to_owned()));
    }
    assert_eq!(
        codes,
        [
            (404, "not_found".to_owned()),
            (404, "not_found".to_owned()),
            (404, "not_found".to_owned()),
            (422, "invalid_id".to_owned())
        ]
    );
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_with_an_idempotency_key_replays_its_first_answer() {
    let mut sys = System::start().await;
    sys.stop_service(Service::Simulator).await;
    let item = sys.add_item("Key Soup", 700, 10).await;
    let order = sys.place_order(&[(&item, 1)]).await;
    let id = order["id"].as_str().unwrap();
    let post = |key: &str, body: Value| {
        sys.http
            .post(format!(
                "{}/api/v1/orders/{id}/cancel",
                sys.url(Service::Order)
            ))
            .bearer_auth(sys.token(id).unwrap())
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    let first = post("cancel-1", json!({"reason": "too slow"}))
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["reason"], "too slow");

    let again = post("cancel-1", json!({"reason": "too slow"}))
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first);

    let reused = post("cancel-1", json!({"reason": "other"})).await.unwrap();
    assert_eq!(reused.status(), 422);
    assert_eq!(
        reused.json::<Value>().await.unwrap()["error"],
        "idempotency_key_reused"
    );

    // A body that is not the documented one is refused before anything moves.
    let other = sys.place_order(&[(&item, 1)]).await;
    let other_id = other["id"].as_str().unwrap();
    let bad = sys
        .http
        .post(format!(
            "{}/api/v1/orders/{other_id}/cancel",
            sys.url(Service::Order)
        ))
        .bearer_auth(sys.token(other_id).unwrap())
        .json(&json!({"reason": 7, "why": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
    let bad: Value = bad.json().await.unwrap();
    assert_eq!(bad["error"], "validation_failed");
    assert!(bad["fields"]["reason"].is_string() && bad["fields"]["why"].is_string());
    let other = sys
        .get_json(Service::Order, &format!("/api/v1/orders/{other_id}"))
        .await;
    assert_eq!(other["status"], "created");
    assert_eq!(
        sys.stock(&item).await,
        9,
        "one cancelled, one still reserved"
    );
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kitchen_rejects_every_order_at_rate_one() {
    let sys = System::start_with(&[("SIMULATOR_REJECT_RATE", "1")]).await;
    let item = sys.add_item("Rejected Soup", 700, 5).await;
    let order = sys.place_order(&[(&item, 2)]).await;
    let id = order["id"].as_str().unwrap();
    let mut tracker = sys.track(id).await;
    let rejected = sys.wait_order_status(id, "rejected", T).await;
    assert!(
        !rejected["reason"].as_str().unwrap_or_default().is_empty(),
        "{rejected}"
    );
    assert_eq!(sys.stock(&item).await, 5, "restocked, in MongoDB");

    // The tracker got the last step and was closed.
    let mut last = Value::Null;
    let code = loop {
        match tokio::time::timeout(T, futures::StreamExt::next(&mut tracker.socket))
            .await
            .unwrap()
        {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                last = serde_json::from_str(t.as_str()).unwrap();
            }
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(f)))) => {
                break u16::from(f.code);
            }
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(code, 1000);
    let last_status = match last["type"].as_str() {
        Some("update") => last["entry"]["status"].clone(),
        _ => last["status"].clone(),
    };
    assert_eq!(last_status, "rejected", "{last}");

    let (status, body) = sys.cancel(id, None).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (409, Some("rejected")),
        "{body}"
    );
    eventually("the timeline ends rejected", T, || async {
        (timeline(&sys, id).await == ["order:created", "order:rejected"]).then_some(())
    })
    .await;
    quiet(&sys).await;
    assert_eq!(sys.count("deliveries", bson::doc! {}).await, 0);
    let events = sys.events_of(Stream::Orders, id).await;
    let facts = of_type(&events, OrderRejected::TYPE);
    assert_eq!(facts.len(), 1);
    assert_eq!(facts[0].payload["reason"], rejected["reason"]);
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_stops_the_kitchen() {
    // Real delays (confirm after about 2 s): the timer is pending when the
    // cancel comes, and the simulator removes it.
    let sys = System::start_with(&[("SIMULATOR_DELAY_SCALE", "1"), ("SIM_JITTER", "0")]).await;
    let item = sys.add_item("Slow Soup", 700, 5).await;
    let order = sys.place_order(&[(&item, 1)]).await;
    let id = order["id"].as_str().unwrap();
    let ns = sys.namespace();
    let timers = ns.key_at("simulator:timers", ns.partition_of(id));
    let zcard = |key: String| {
        let mut redis = sys.redis.clone();
        async move {
            redis::cmd("ZCARD")
                .arg(key)
                .query_async::<i64>(&mut redis)
                .await
                .unwrap()
        }
    };
    eventually("the kitchen has a timer", T, || async {
        (zcard(timers.clone()).await == 1).then_some(())
    })
    .await;
    let (status, _) = sys.cancel(id, None).await;
    assert_eq!(status, 200);
    eventually("the kitchen dropped it", T, || async {
        (zcard(timers.clone()).await == 0).then_some(())
    })
    .await;
    quiet(&sys).await;
    assert!(
        sys.events_of(Stream::OrderStatus, id).await.is_empty(),
        "the kitchen never moved it"
    );
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_racing_the_kitchen_has_exactly_one_winner_100_times() {
    let sys = System::start_with(&[("SIMULATOR_DELAY_SCALE", "0")]).await;
    let item = sys.add_item("Race Soup", 700, 1000).await;
    let (mut cancelled, mut delivered) = (Vec::new(), Vec::new());
    for n in 0..100u64 {
        let order = sys.place_order(&[(&item, 1)]).await;
        let id = order["id"].as_str().unwrap().to_owned();
        // Vary the head start so the cancel meets the kitchen at every step.
        tokio::time::sleep(Duration::from_millis(n % 7)).await;
        let (status, body) = sys.cancel(&id, None).await;
        match status {
            200 => {
                assert_eq!(body["status"], "cancelled");
                cancelled.push(id);
            }
            409 => {
                let at = body["status"].as_str().unwrap();
                assert!(["out_for_delivery", "delivered"].contains(&at), "{body}");
                sys.wait_order_status(&id, "delivered", T).await;
                delivered.push(id);
            }
            _ => panic!("cancel answered {status}: {body}"),
        }
    }
    quiet(&sys).await;
    for id in &cancelled {
        let order = sys
            .get_json(Service::Order, &format!("/api/v1/orders/{id}"))
            .await;
        assert_eq!(order["status"], "cancelled", "never delivered");
        assert_eq!(
            sys.count("deliveries", bson::doc! { "order_id": id }).await,
            0,
            "no delivery for cancelled {id}"
        );
    }
    for id in &delivered {
        assert_eq!(
            sys.count("deliveries", bson::doc! { "order_id": id }).await,
            1
        );
    }
    assert_eq!(
        sys.stock(&item).await,
        1000 - delivered.len() as i64,
        "only delivered orders keep their stock"
    );
    println!(
        "race: {} cancelled, {} delivered",
        cancelled.len(),
        delivered.len()
    );
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_the_cancellation_is_published_restocks_once() {
    let mut sys = System::start().await;
    sys.stop_service(Service::Simulator).await;
    let item = sys.add_item("Crash Soup", 700, 10).await;
    let order = sys.place_order(&[(&item, 4)]).await;
    let id = order["id"].as_str().unwrap().to_owned();
    eventually("order.created is out", T, || async {
        (!sys.events_of(Stream::Orders, &id).await.is_empty()).then_some(())
    })
    .await;
    let ns = sys.namespace();
    failpoint::arm(&ns, "outbox.before_publish");
    let (status, first) = sys.cancel(&id, None).await;
    assert_eq!(status, 200, "committed before the relay publishes");
    failpoint::wait_hit(&ns, "outbox.before_publish").await;
    sys.kill_replica(Service::Order, 0).await;
    failpoint::disarm(&ns, "outbox.before_publish");
    assert!(
        of_type(
            &sys.events_of(Stream::Orders, &id).await,
            OrderCancelled::TYPE
        )
        .is_empty(),
        "not published before the crash"
    );
    assert_eq!(sys.stock(&item).await, 10);

    sys.start_service(Service::Order).await;
    eventually("the timeline ends cancelled", T, || async {
        (timeline(&sys, &id).await.last().map(String::as_str) == Some("order:cancelled"))
            .then_some(())
    })
    .await;
    let (again, body) = sys.cancel(&id, None).await;
    assert_eq!((again, &body), (200, &first));
    quiet(&sys).await;
    assert_eq!(sys.stock(&item).await, 10, "restocked once");
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_a_rejection_is_applied_and_duplicated_events_restock_once() {
    let mut sys = System::start().await;
    sys.stop_service(Service::Simulator).await;
    let item = sys.add_item("Twice Soup", 700, 10).await;
    let order = sys.place_order(&[(&item, 4)]).await;
    let id = order["id"].as_str().unwrap().to_owned();
    let ns = sys.namespace();
    let before_ack = format!("{}.before_ack", groups::ORDER_SVC);
    failpoint::arm(&ns, &before_ack);
    let rejection = kitchen_because(&id, OrderStatus::Rejected, Some("out of soup"));
    sys.xadd(Stream::OrderStatus, &rejection).await;
    failpoint::wait_hit(&ns, &before_ack).await;
    // Applied (and restocked) but never acknowledged: then the process dies.
    assert_eq!(sys.stock(&item).await, 10);
    sys.kill_replica(Service::Order, 0).await;
    failpoint::disarm(&ns, &before_ack);
    sys.start_service(Service::Order).await;
    // The rejection comes again (reclaimed), and once more as a duplicate.
    sys.xadd(Stream::OrderStatus, &rejection).await;
    quiet(&sys).await;
    let order = sys
        .get_json(Service::Order, &format!("/api/v1/orders/{id}"))
        .await;
    assert_eq!(
        (
            order["status"].as_str(),
            order["reason"].as_str(),
            order["version"].as_u64()
        ),
        (Some("rejected"), Some("out of soup"), Some(2))
    );
    assert_eq!(sys.stock(&item).await, 10, "restocked once");

    // A duplicated compensation event changes nothing downstream either.
    let rejected = eventually("order.rejected.v1 is out", T, || async {
        of_type(
            &sys.events_of(Stream::Orders, &id).await,
            OrderRejected::TYPE,
        )
        .first()
        .map(|e| (*e).clone())
    })
    .await;
    sys.xadd(Stream::Orders, &rejected).await;
    quiet(&sys).await;
    assert_eq!(
        timeline(&sys, &id).await,
        ["order:created", "order:rejected"]
    );
    assert_eq!(sys.stock(&item).await, 10);
    assert_eq!(sys.count("deliveries", bson::doc! {}).await, 0);
    sys.shutdown().await;
}
