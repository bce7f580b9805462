//! Partitioned streams with several replicas (docs/scaling.md §3): each
//! replica of a service reads the partitions whose lease it holds, about
//! `P / replicas` each; a replica killed with its partitions' messages
//! pending loses nothing (the survivor takes its leases once they expire and
//! its pending messages once idle); one that stops gracefully hands its
//! partitions over at once; one that joins gets its share.

use std::{collections::BTreeMap, time::Duration};

use contract::streams::groups;
use foodchain_tests::{Service, System, eventually};
use futures::{StreamExt, stream};

const PARTITIONS: u16 = 4;
const T: Duration = Duration::from_secs(60);

/// How many partitions of `group` each replica holds (by consumer name).
async fn holders(sys: &System, group: &str) -> BTreeMap<String, u16> {
    let ns = sys.namespace();
    let mut out = BTreeMap::new();
    for p in ns.partition_range() {
        let holder: Option<String> = redis::cmd("GET")
            .arg(ns.key_at(&format!("partitions:{group}:lease"), p))
            .query_async(&mut sys.redis.clone())
            .await
            .unwrap();
        *out.entry(holder.unwrap_or_else(|| "(nobody)".into()))
            .or_default() += 1;
    }
    out
}

/// Waits until the partitions of `group` are held as `want` says.
async fn wait_held(sys: &System, group: &str, want: &[(&str, u16)]) {
    let want: BTreeMap<String, u16> = want.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect();
    eventually(
        &format!("{group}'s partitions held as {want:?}"),
        T,
        || async {
            let got = holders(sys, group).await;
            (got == want).then_some(())
        },
    )
    .await;
}

/// Places `n` orders at once; returns their ids.
async fn place(sys: &System, item: &str, n: usize) -> Vec<String> {
    stream::iter(0..n)
        .map(|_| async {
            sys.place_order(&[(item, 1)]).await["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .buffer_unordered(8)
        .collect()
        .await
}

/// Waits until every order of `ids` is delivered.
async fn delivered(sys: &System, ids: &[String]) {
    for id in ids {
        sys.wait_order_status(id, "delivered", T).await;
    }
}

/// Places `n` orders at once and waits until every one is delivered.
async fn deliver(sys: &System, item: &str, n: usize) {
    delivered(sys, &place(sys, item, n).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_partitions_and_take_over_those_of_one_that_dies() {
    let parts = PARTITIONS.to_string();
    let mut sys = System::start_with(&[("STREAM_PARTITIONS", &parts)]).await;
    let item = sys.add_item("Partition pie", 500, 1_000_000).await;
    for s in [Service::Delivery, Service::Simulator] {
        sys.add_replica(s).await;
    }
    let half = PARTITIONS / 2;
    wait_held(
        &sys,
        groups::DELIVERY_SVC,
        &[("delivery-0", half), ("delivery-1", half)],
    )
    .await;
    wait_held(
        &sys,
        groups::SIMULATOR,
        &[("simulator-0", half), ("simulator-1", half)],
    )
    .await;
    deliver(&sys, &item, 20).await;

    // Orders in flight, then replica 0 of each dies as kill -9 would: what
    // it held is neither acknowledged nor released.
    let in_flight = place(&sys, &item, 20).await;
    sys.kill_replica(Service::Delivery, 0).await;
    sys.kill_replica(Service::Simulator, 0).await;
    wait_held(&sys, groups::DELIVERY_SVC, &[("delivery-1", PARTITIONS)]).await;
    wait_held(&sys, groups::SIMULATOR, &[("simulator-1", PARTITIONS)]).await;
    delivered(&sys, &in_flight).await;
    deliver(&sys, &item, 20).await;
    assert_eq!(
        sys.count("deliveries", bson::doc! {}).await,
        60,
        "one delivery per order"
    );

    // A replica that joins gets its share; one that stops gracefully hands
    // its partitions over, and the orders keep flowing.
    sys.start_replica(Service::Delivery, 0).await;
    wait_held(
        &sys,
        groups::DELIVERY_SVC,
        &[("delivery-0", half), ("delivery-1", half)],
    )
    .await;
    sys.stop_replica(Service::Delivery, 1).await;
    wait_held(&sys, groups::DELIVERY_SVC, &[("delivery-0", PARTITIONS)]).await;
    deliver(&sys, &item, 10).await;
    assert_eq!(sys.count("deliveries", bson::doc! {}).await, 70);
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_another_partition_count_takes_no_part() {
    let parts = PARTITIONS.to_string();
    let mut sys = System::start_with(&[("STREAM_PARTITIONS", &parts)]).await;
    let item = sys.add_item("Mismatch mash", 500, 1_000_000).await;
    // Misconfigured: it would publish to keys nobody reads and read keys
    // nobody writes. It serves HTTP but never gets past its start-up.
    sys.launch_replica(Service::Delivery, 1, &[("STREAM_PARTITIONS", "2")]);
    let url = format!("{}/readyz", sys.replica_url(Service::Delivery, 1));
    let readiness = eventually("the misconfigured replica answers", T, || async {
        let r = sys.http.get(&url).send().await.ok()?;
        Some((
            r.status().as_u16(),
            r.json::<serde_json::Value>().await.ok()?,
        ))
    })
    .await;
    // Several start-up attempts later, it is still refused.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again = sys.http.get(&url).send().await.unwrap();
    assert_eq!((readiness.0, again.status().as_u16()), (503, 503));
    let body: serde_json::Value = again.json().await.unwrap();
    assert_eq!(body["checks"]["startup"], "initialising", "{body}");
    deliver(&sys, &item, 5).await;
    wait_held(&sys, groups::DELIVERY_SVC, &[("delivery-0", PARTITIONS)]).await;
    sys.shutdown().await;
}
