//! Partitioned streams at the level of `common`: events go to the partition
//! of their key, in order, in one round trip per partition (one pipeline
//! per slot on a cluster); the partition count a deployment recorded is
//! checked by every service that starts.

use common::partition::check_recorded;
use contract::{Envelope, streams::Stream};

use crate::helpers::Ctx;

#[tokio::test]
async fn publish_all_puts_each_event_in_its_keys_partition_in_order() {
    let ctx = Ctx::with(&[("STREAM_PARTITIONS", "4")]).await;
    let keys: Vec<String> = (0..40).map(|i| format!("order-{}", i % 10)).collect();
    let events: Vec<Envelope> = keys
        .iter()
        .map(|k| {
            Envelope::new(
                "order.created.v1",
                k.clone(),
                "c",
                "test",
                &serde_json::json!({}),
            )
            .unwrap()
        })
        .collect();
    let batch: Vec<_> = events.iter().map(|e| (Stream::Orders, e)).collect();
    let ids = ctx.publisher.publish_all(&batch).await.unwrap();
    assert_eq!(ids.len(), 40);
    let mut used = std::collections::BTreeSet::new();
    for p in ctx.ns.partition_range() {
        let entries =
            testkit::stream_entries_at(&ctx.conn, &ctx.ns.stream_at(Stream::Orders, p)).await;
        let got: Vec<(String, String)> = entries
            .iter()
            .map(|e| {
                let env = Envelope::from_entry(e).unwrap();
                (env.key, env.event_id.to_string())
            })
            .collect();
        // Exactly the events of this partition's keys, in publishing order.
        let want: Vec<(String, String)> = events
            .iter()
            .filter(|e| ctx.ns.partition_of(&e.key) == p)
            .map(|e| (e.key.clone(), e.event_id.to_string()))
            .collect();
        assert_eq!(got, want, "partition {p}");
        if !got.is_empty() {
            used.insert(p);
        }
    }
    assert!(used.len() > 1, "ten keys over four partitions: {used:?}");
}

#[tokio::test]
async fn a_service_with_another_partition_count_is_refused() {
    let ctx = Ctx::new().await;
    let prefix = ctx.settings.stream_prefix.clone();
    let mut conn = ctx.conn.clone();
    assert_eq!(
        contract::redis::recorded_partitions(&mut conn, &prefix)
            .await
            .unwrap(),
        None
    );
    check_recorded(&mut conn, &prefix, 4).await.unwrap();
    check_recorded(&mut conn, &prefix, 4).await.unwrap();
    let refused = check_recorded(&mut conn, &prefix, 2).await.unwrap_err();
    assert!(
        refused.contains("STREAM_PARTITIONS=2") && refused.contains("split into 4"),
        "{refused}"
    );
    assert_eq!(
        contract::redis::recorded_partitions(&mut conn, &prefix)
            .await
            .unwrap(),
        Some(4)
    );
}
