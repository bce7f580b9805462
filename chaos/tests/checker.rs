//! The invariant checker must be able to fail: a checker that always passes
//! would make every chaos run green. These tests write a healthy end state
//! into a real MongoDB and Redis, check that every invariant passes, then
//! break one thing at a time and check that exactly its invariant fails.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::{collections::HashMap, time::Duration};

use bson::{Document, doc, oid::ObjectId};
use chaos::{
    check::{Record, Target, Verdict, check, groups},
    load::{Accepted, CancelAnswer, FULL_FLOW, TrackerResult},
};
use contract::streams::{Namespace, Stream};

/// A small finished run: two items, three delivered orders, one cancelled
/// by its customer at `confirmed`, one rejected by the kitchen.
struct World {
    target: Target,
    record: Record,
    orders: Vec<ObjectId>,
    items: Vec<ObjectId>,
}

fn timeline(order: &str, labels: &[&str]) -> Document {
    let entries: Vec<Document> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let (kind, status) = l.split_once(':').unwrap();
            doc! { "event_id": format!("{order}-{i}"), "kind": kind, "status": status }
        })
        .collect();
    doc! { "_id": order, "entries": entries }
}

async fn world() -> World {
    let redis_url = testkit::redis_url().await;
    let mongo = mongodb::Client::with_uri_str(testkit::shared_mongo().await.url())
        .await
        .unwrap();
    let db = mongo.database(&testkit::unique_db("checker"));
    let ns = Namespace::for_redis(
        &format!("{}:", testkit::unique("checker")),
        &redis_url,
        testkit::partitions(),
    );
    let conn = contract::redis::commands(&contract::redis::client(&redis_url).unwrap()).unwrap();
    // Every consuming group exists and has nothing pending.
    for (key, group) in groups()
        .into_iter()
        .flat_map(|(stream, group)| ns.stream_keys(stream).into_iter().map(move |k| (k, group)))
    {
        let _: () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(key)
            .arg(group)
            .arg("$")
            .arg("MKSTREAM")
            .query_async(&mut conn.clone())
            .await
            .unwrap();
    }

    let items = vec![ObjectId::new(), ObjectId::new()];
    // Initial stock 10 and 5; the three delivered orders bought 2+1 of the
    // first, 3 of the second; the cancelled (4 of the first) and the
    // rejected (1 of the second) ones were restocked.
    db.collection::<Document>("menu")
        .insert_many([
            doc! { "_id": items[0], "stock": 7_i64 },
            doc! { "_id": items[1], "stock": 2_i64 },
        ])
        .await
        .unwrap();
    let orders: Vec<ObjectId> = (0..5).map(|_| ObjectId::new()).collect();
    let bought = [(0, 2), (0, 1), (1, 3), (0, 4), (1, 1)];
    let ends = [
        "delivered",
        "delivered",
        "delivered",
        "cancelled",
        "rejected",
    ];
    let mut accepted = Vec::new();
    for ((o, (item, q)), end) in orders.iter().zip(bought).zip(ends) {
        let id = o.to_hex();
        db.collection::<Document>("orders")
            .insert_one(doc! { "_id": o, "status": end })
            .await
            .unwrap();
        let flow: &[&str] = match end {
            "cancelled" => &[FULL_FLOW[0], FULL_FLOW[1], "order:cancelled"],
            "rejected" => &[FULL_FLOW[0], "order:rejected"],
            _ => {
                db.collection::<Document>("deliveries")
                    .insert_one(doc! { "_id": ObjectId::new(), "order_id": &id })
                    .await
                    .unwrap();
                &FULL_FLOW
            }
        };
        db.collection::<Document>("timelines")
            .insert_one(timeline(&id, flow))
            .await
            .unwrap();
        accepted.push(Accepted {
            order_id: id,
            key: format!("k-{o}"),
            token: String::new(),
            items: vec![(items[item].to_hex(), q)],
            attempts: 1,
            cancel: match end {
                "cancelled" => Some(CancelAnswer::Cancelled),
                _ if *o == orders[2] => Some(CancelAnswer::Refused("out_for_delivery".into())),
                _ => None,
            },
        });
    }
    for svc in ["order_svc", "delivery_svc"] {
        db.collection::<Document>(&format!("outbox_{svc}"))
            .insert_one(doc! { "published": true })
            .await
            .unwrap();
    }
    let trackers = vec![
        TrackerResult {
            order_id: orders[0].to_hex(),
            seen: FULL_FLOW.iter().map(|s| (*s).to_owned()).collect(),
            reconnects: 1,
            violations: vec![],
        },
        TrackerResult {
            order_id: orders[3].to_hex(),
            seen: vec![
                "order:created".into(),
                "order:confirmed".into(),
                "order:cancelled".into(),
            ],
            reconnects: 0,
            violations: vec![],
        },
    ];
    let record = Record {
        accepted: Some(accepted),
        initial_stock: Some(HashMap::from([
            (items[0].to_hex(), 10),
            (items[1].to_hex(), 5),
        ])),
        poison: Some(vec![]),
        trackers: Some(trackers),
    };
    World {
        target: Target { conn, db, ns },
        record,
        orders,
        items,
    }
}

async fn failing(w: &World) -> Vec<String> {
    let verdicts: Vec<Verdict> = check(&w.target, &w.record, Duration::ZERO).await.unwrap();
    assert_eq!(verdicts.len(), 10, "{verdicts:#?}");
    verdicts
        .into_iter()
        .filter(|v| !v.passed)
        .map(|v| format!("{}: {}", v.invariant, v.detail))
        .collect()
}

fn only(failed: &[String], invariant: &str) {
    assert_eq!(
        failed.len(),
        1,
        "expected only '{invariant}' to fail: {failed:#?}"
    );
    assert!(failed[0].starts_with(invariant), "{failed:#?}");
}

#[tokio::test]
async fn a_healthy_end_state_passes_every_invariant() {
    let w = world().await;
    assert_eq!(failing(&w).await, Vec::<String>::new());
}

#[tokio::test]
async fn an_order_stuck_before_delivered_fails() {
    let w = world().await;
    w.target
        .db
        .collection::<Document>("orders")
        .update_one(
            doc! { "_id": w.orders[1] },
            doc! { "$set": { "status": "preparing" } },
        )
        .await
        .unwrap();
    only(&failing(&w).await, "every order ends");
}

#[tokio::test]
async fn a_lost_or_extra_order_fails() {
    let mut w = world().await;
    w.record.accepted.as_mut().unwrap().remove(0);
    let failed = failing(&w).await;
    // The order nobody accepted exists, and the stock it took is unaccounted for.
    assert!(
        failed
            .iter()
            .any(|f| f.starts_with("every accepted order exists exactly once")),
        "{failed:#?}"
    );
    assert!(
        failed.iter().any(|f| f.starts_with("stock is conserved")),
        "{failed:#?}"
    );
}

#[tokio::test]
async fn oversold_or_negative_stock_fails() {
    let w = world().await;
    w.target
        .db
        .collection::<Document>("menu")
        .update_one(
            doc! { "_id": w.items[1] },
            doc! { "$set": { "stock": -1_i64 } },
        )
        .await
        .unwrap();
    only(&failing(&w).await, "stock is conserved");
}

#[tokio::test]
async fn a_second_delivery_fails() {
    let w = world().await;
    w.target
        .db
        .collection::<Document>("deliveries")
        .insert_one(doc! { "_id": ObjectId::new(), "order_id": w.orders[2].to_hex() })
        .await
        .unwrap();
    only(&failing(&w).await, "one delivery per delivered order");
}

#[tokio::test]
async fn a_timeline_with_a_hole_or_a_duplicate_fails() {
    let w = world().await;
    let timelines = w.target.db.collection::<Document>("timelines");
    let mut holed = FULL_FLOW.to_vec();
    holed.remove(2);
    timelines
        .replace_one(
            doc! { "_id": w.orders[0].to_hex() },
            timeline(&w.orders[0].to_hex(), &holed),
        )
        .await
        .unwrap();
    only(&failing(&w).await, "every timeline is complete");
    let mut doubled = FULL_FLOW.to_vec();
    doubled.push("order:delivered");
    timelines
        .replace_one(
            doc! { "_id": w.orders[0].to_hex() },
            timeline(&w.orders[0].to_hex(), &doubled),
        )
        .await
        .unwrap();
    only(&failing(&w).await, "every timeline is complete");
}

#[tokio::test]
async fn a_tracker_that_missed_a_status_fails() {
    let mut w = world().await;
    w.record.trackers.as_mut().unwrap()[0].seen.remove(3);
    only(&failing(&w).await, "every tracker saw a whole timeline");
}

#[tokio::test]
async fn a_pending_entry_and_an_unpublished_event_fail() {
    let w = world().await;
    // The last partition (the only one, with one).
    let ns = &w.target.ns;
    let stream = ns.stream_at(Stream::Orders, ns.partitions() - 1);
    let mut conn = w.target.conn.clone();
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("k")
        .arg("v")
        .query_async(&mut conn)
        .await
        .unwrap();
    // Read but never acknowledged.
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(groups()[0].1)
        .arg("c1")
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();
    only(&failing(&w).await, "no pending entries once quiet");

    let w = world().await;
    w.target
        .db
        .collection::<Document>("outbox_delivery_svc")
        .insert_one(doc! { "published": false })
        .await
        .unwrap();
    only(&failing(&w).await, "the outbox is drained");
}

#[tokio::test]
async fn poison_that_was_not_dead_lettered_fails() {
    let mut w = world().await;
    w.record.poison = Some(vec![(Stream::Deliveries, "1-1".into())]);
    let failed = failing(&w).await;
    only(&failed, "the dead letters hold exactly the injected poison");
    // Once per consuming group of that stream.
    assert!(
        failed[0].contains("order-svc") && failed[0].contains("notify-svc"),
        "{failed:#?}"
    );
}

#[tokio::test]
async fn a_dead_letter_nobody_injected_fails() {
    let w = world().await;
    let _: String = redis::cmd("XADD")
        .arg(
            w.target
                .ns
                .stream_at(Stream::DeadLetters, w.target.ns.partitions() - 1),
        )
        .arg("*")
        .arg("junk")
        .arg("1")
        .query_async(&mut w.target.conn.clone())
        .await
        .unwrap();
    only(
        &failing(&w).await,
        "the dead letters hold exactly the injected poison",
    );
}

#[tokio::test]
async fn a_delivery_for_a_cancelled_or_rejected_order_fails() {
    for ended in [3, 4] {
        let w = world().await;
        w.target
            .db
            .collection::<Document>("deliveries")
            .insert_one(doc! { "_id": ObjectId::new(), "order_id": w.orders[ended].to_hex() })
            .await
            .unwrap();
        only(&failing(&w).await, "one delivery per delivered order");
    }
}

#[tokio::test]
async fn a_cancellation_that_did_not_restock_fails() {
    let w = world().await;
    // The cancelled order's 4 units never came back.
    w.target
        .db
        .collection::<Document>("menu")
        .update_one(
            doc! { "_id": w.items[0] },
            doc! { "$set": { "stock": 3_i64 } },
        )
        .await
        .unwrap();
    only(&failing(&w).await, "stock is conserved");
}

#[tokio::test]
async fn a_cancel_answer_the_order_contradicts_fails() {
    // Answered 200, but the order went on and was delivered.
    let mut w = world().await;
    w.record.accepted.as_mut().unwrap()[0].cancel = Some(CancelAnswer::Cancelled);
    only(&failing(&w).await, "every cancel's answer holds");
    // Answered 409, but the order is cancelled.
    let mut w = world().await;
    w.record.accepted.as_mut().unwrap()[3].cancel = Some(CancelAnswer::Refused("delivered".into()));
    only(&failing(&w).await, "every cancel's answer holds");
}

#[tokio::test]
async fn a_timeline_that_does_not_end_in_the_orders_end_fails() {
    let w = world().await;
    let timelines = w.target.db.collection::<Document>("timelines");
    let cancelled = w.orders[3].to_hex();
    // Cancelled, but the timeline stops before the last step.
    timelines
        .replace_one(
            doc! { "_id": &cancelled },
            timeline(&cancelled, &FULL_FLOW[..2]),
        )
        .await
        .unwrap();
    only(&failing(&w).await, "every timeline is complete");
    // A delivered order whose timeline says cancelled.
    timelines
        .replace_one(
            doc! { "_id": &cancelled },
            timeline(&cancelled, &[FULL_FLOW[0], FULL_FLOW[1], "order:cancelled"]),
        )
        .await
        .unwrap();
    let delivered = w.orders[0].to_hex();
    timelines
        .replace_one(
            doc! { "_id": &delivered },
            timeline(&delivered, &[FULL_FLOW[0], "order:cancelled"]),
        )
        .await
        .unwrap();
    only(&failing(&w).await, "every timeline is complete");
    // Rejected after confirmed: not a rejection the kitchen can make.
    let w = world().await;
    let rejected = w.orders[4].to_hex();
    w.target
        .db
        .collection::<Document>("timelines")
        .replace_one(
            doc! { "_id": &rejected },
            timeline(&rejected, &[FULL_FLOW[0], FULL_FLOW[1], "order:rejected"]),
        )
        .await
        .unwrap();
    only(&failing(&w).await, "every timeline is complete");
}
