//! Publishing waits for a replica (`REDIS_MIN_REPLICAS_ACKED`): without one,
//! the outbox keeps every event (it was written, but a failover could lose
//! it) and publishes it again, at a bounded rate; once a replica follows,
//! the outbox empties and the flow completes, each effect once.

use std::time::Duration;

use contract::{
    events::{Event, OrderCreated},
    streams::Stream,
};
use foodchain_tests::{FULL_FLOW, System, eventually, labels};
use testkit::RedisServer;

const T: Duration = Duration::from_secs(30);

/// Copies of the order's `order.created` on `orders-stream`.
async fn created(sys: &System, id: &str) -> usize {
    sys.events_of(Stream::Orders, id)
        .await
        .iter()
        .filter(|e| e.event_type == OrderCreated::TYPE)
        .count()
}

#[tokio::test]
async fn without_a_replica_the_outbox_keeps_its_events_and_empties_once_one_follows() {
    let primary = RedisServer::start().await;
    let sys = System::start_with(&[
        ("REDIS_URL", &primary.url()),
        ("REDIS_MIN_REPLICAS_ACKED", "1"),
        ("REDIS_WAIT_TIMEOUT_MS", "50"),
    ])
    .await;
    let menu = sys.seed_menu().await;
    let order = sys
        .place_order(&[(menu[0]["id"].as_str().unwrap(), 1)])
        .await;
    let id = order["id"].as_str().unwrap().to_owned();
    // Written, and written again: no replica said it has them.
    eventually("order.created published again", T, || async {
        (created(&sys, &id).await >= 2).then_some(())
    })
    .await;
    assert!(
        sys.count("outbox_order_svc", bson::doc! {}).await >= 1,
        "the outbox keeps what no replica acknowledged"
    );
    // The retries back off (200 ms doubling, capped at a third of the
    // 1 s test lease): over two seconds, a handful, not one per poll.
    let before = created(&sys, &id).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = created(&sys, &id).await - before;
    assert!(
        during <= 8,
        "{during} copies in 2 s: the retries do not back off"
    );

    // A replica follows: the outbox empties and the order is delivered.
    let replica = RedisServer::start().await;
    let mut conn =
        contract::redis::commands(&contract::redis::client(&replica.url()).unwrap()).unwrap();
    let () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(primary.port())
        .query_async(&mut conn)
        .await
        .unwrap();
    eventually("the outboxes empty", T, || async {
        let left = sys.count("outbox_order_svc", bson::doc! {}).await
            + sys.count("outbox_delivery_svc", bson::doc! {}).await;
        (left == 0).then_some(())
    })
    .await;
    sys.wait_order_status(&id, "delivered", T).await;
    let snapshot = sys.track(&id).await.next(T).await;
    assert_eq!(
        labels(&snapshot["timeline"]),
        FULL_FLOW,
        "every status once, in order"
    );
    let settled = created(&sys, &id).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        created(&sys, &id).await,
        settled,
        "no copies once replicated"
    );
    sys.shutdown().await;
    drop(replica);
}
