//! Streams are trimmed only below what every consumer group has read and
//! acknowledged: a group whose service was down while the streams grew far
//! past the alarm threshold gets every event when it comes back, and the
//! streams shrink again once it has caught up (docs/scaling.md).

use std::time::Duration;

use contract::streams::Stream;
use foodchain_tests::{Service, System, eventually};
use futures::{StreamExt, stream};

const ORDERS: usize = 400;
const T: Duration = Duration::from_secs(120);

/// Entries of a stream, over all its partitions.
async fn xlen(sys: &System, stream: Stream) -> u64 {
    let mut total = 0;
    for key in sys.namespace().stream_keys(stream) {
        total += redis::cmd("XLEN")
            .arg(key)
            .query_async::<u64>(&mut sys.redis.clone())
            .await
            .unwrap();
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_that_was_down_gets_every_event_however_long_the_streams_grew() {
    let mut sys = System::start_with(&[
        ("STREAM_TRIM_INTERVAL_MS", "200"),
        ("STREAM_ALARM_ENTRIES", "200"),
    ])
    .await;
    let item = sys.add_item("Trim soup", 500, 1_000_000).await;
    sys.place_order(&[(&item, 1)]).await;
    // notify-svc's group exists and is up to date; then notify-svc goes away.
    eventually("the first timeline", T, || async {
        (sys.count("timelines", bson::doc! {}).await == 1).then_some(())
    })
    .await;
    sys.stop_service(Service::Notify).await;

    let placed: Vec<serde_json::Value> = stream::iter(0..ORDERS)
        .map(|_| {
            let (sys, item) = (&sys, item.as_str());
            async move { sys.place_order(&[(item, 1)]).await }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    assert_eq!(placed.len(), ORDERS);
    eventually("every order delivered without notify-svc", T, || async {
        (sys.count("orders", bson::doc! { "status": "delivered" })
            .await
            == ORDERS as u64 + 1)
            .then_some(())
    })
    .await;

    // The streams only the others read were trimmed as they went...
    eventually("simulate-order-stream trimmed", T, || async {
        (xlen(&sys, Stream::SimulateOrder).await < 200).then_some(())
    })
    .await;
    // ... while orders-stream kept every entry notify-svc has not read: five
    // per order, far above the 200 the alarm is set to (and a MAXLEN of that
    // size would have cut).
    let kept = xlen(&sys, Stream::Orders).await;
    assert!(kept >= 5 * ORDERS as u64, "orders-stream kept {kept}");
    // The alarm gauge says so (set each round by the trimmer of a service
    // that reads orders-stream: delivery-svc, with notify-svc away).
    eventually("the stream_entries gauge", T, || async {
        let metrics = sys
            .http
            .get(format!("{}/metrics", sys.url(Service::Delivery)))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let gauge = metrics
            .lines()
            .find(|l| l.starts_with(r#"stream_entries{stream="orders-stream"}"#))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())?;
        (gauge >= 5.0 * ORDERS as f64).then_some(())
    })
    .await;

    // notify-svc comes back and writes every timeline in full.
    sys.start_service(Service::Notify).await;
    eventually("every timeline complete", T, || async {
        let complete = sys
            .count("timelines", bson::doc! { "entries": { "$size": 8 } })
            .await;
        (complete == ORDERS as u64 + 1).then_some(())
    })
    .await;
    // Then nobody needs orders-stream's entries any more.
    eventually("orders-stream trimmed once read", T, || async {
        (xlen(&sys, Stream::Orders).await < 200).then_some(())
    })
    .await;
    sys.shutdown().await;
}
