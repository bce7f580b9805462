//! The outbox relay on real servers, reading what nobody handed to it: the
//! events documents keep (moves written while no relay ran) and an entry of
//! the outbox collection (the earlier place, read first), published once
//! each, each key's in `seq` order, and cleared from where they were kept.

use std::time::Duration;

use bson::{Document, doc, oid::ObjectId};
use common::{
    mongo,
    outbox::{Outbox, OutboxSettings},
    transition::{Cause, Guarded, Spec, Versioned},
};
use contract::{Envelope, status::DeliveryStatus, streams::Stream};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::helpers::Ctx;

#[derive(Debug, Serialize, Deserialize)]
struct Parcel {
    #[serde(rename = "_id")]
    id: ObjectId,
    status: DeliveryStatus,
    version: u32,
}

impl Versioned for Parcel {
    type Status = DeliveryStatus;
    fn status(&self) -> DeliveryStatus {
        self.status
    }
    fn version(&self) -> u32 {
        self.version
    }
    fn id(&self) -> ObjectId {
        self.id
    }
}

fn moved(p: &Parcel, _: DeliveryStatus, correlation_id: &str) -> Envelope {
    Envelope::new(
        "parcel.moved.v1",
        p.id.to_hex(),
        correlation_id,
        "test",
        &serde_json::json!({ "version": p.version }),
    )
    .unwrap()
}

#[tokio::test]
async fn the_relay_publishes_what_documents_and_the_outbox_collection_keep_in_seq_order() {
    let ctx = Ctx::new().await;
    let client = mongo::connect(&testkit::shared_mongo().await.url(), "common-tests")
        .await
        .unwrap();
    let db = client.database(&testkit::unique_db("outbox_relay"));
    let parcels = db.collection::<Parcel>("parcels");
    let outbox = Outbox::new(&db, ctx.ns.clone(), "test").in_documents_of("parcels");
    outbox.ensure_indexes().await.unwrap();
    let g = Guarded::new(
        "relay_test_moves",
        Spec {
            client: client.clone(),
            collection: parcels.clone(),
            outbox: outbox.clone(),
            stream: Stream::Deliveries,
            event: moved,
            effect: None,
        },
    );

    // 40 parcels moved twice each while no relay runs, concurrently (so
    // both the lone write and the group transaction write them).
    let ids: Vec<ObjectId> = (0..40).map(|_| ObjectId::new()).collect();
    parcels
        .insert_many(ids.iter().map(|&id| Parcel {
            id,
            status: DeliveryStatus::WaitingForPickup,
            version: 1,
        }))
        .await
        .unwrap();
    let cause = Envelope::new("t.v1", "k", "corr", "test", &serde_json::json!({})).unwrap();
    futures::future::join_all(ids.iter().map(|&id| {
        let (g, cause) = (g.clone(), &cause);
        async move {
            for to in [DeliveryStatus::OnTheWay, DeliveryStatus::Delivered] {
                g.apply(id, to, Cause::Event(cause), Document::new())
                    .await
                    .unwrap();
            }
        }
    }))
    .await;
    // And one entry in the outbox collection, as the earlier version wrote.
    let legacy = Envelope::new(
        "parcel.moved.v1",
        "legacy",
        "corr",
        "test",
        &serde_json::json!({ "version": 1 }),
    )
    .unwrap();
    let mut s = client.start_session().await.unwrap();
    s.start_transaction().await.unwrap();
    outbox
        .add(&mut s, Stream::Deliveries, &legacy, 1)
        .await
        .unwrap();
    s.commit_transaction().await.unwrap();
    assert_eq!(outbox.backlog().await.unwrap(), 81);
    assert!(ctx.range(Stream::Deliveries).await.is_empty());

    let settings = OutboxSettings {
        poll: Duration::from_millis(50),
        ..OutboxSettings::default()
    };
    let relay = outbox.relay(
        ctx.client.clone(),
        ctx.conn.clone(),
        ctx.publisher.clone(),
        "relay-1",
        settings,
    );
    let stop = CancellationToken::new();
    let running = tokio::spawn(relay.run(stop.clone()));
    testkit::eventually(
        "the backlog published and cleared",
        Duration::from_secs(20),
        || {
            let outbox = outbox.clone();
            async move { (outbox.backlog().await.unwrap() == 0).then_some(()) }
        },
    )
    .await;
    stop.cancel();
    running.await.unwrap();

    let published = ctx.range(Stream::Deliveries).await;
    assert_eq!(published.len(), 81, "each event once");
    let mut versions: std::collections::HashMap<String, Vec<u64>> = Default::default();
    for entry in &published {
        let e = Envelope::from_entry(entry).unwrap();
        versions
            .entry(e.key.clone())
            .or_default()
            .push(e.payload["version"].as_u64().unwrap());
    }
    assert_eq!(versions["legacy"], [1]);
    for id in &ids {
        assert_eq!(versions[&id.to_hex()], [2, 3], "parcel {id} in seq order");
    }
    // Nothing is kept: the documents' outboxes are empty, the entry gone.
    let kept: Vec<Document> = db
        .collection::<Document>("parcels")
        .find(doc! { "outbox.0": { "$exists": true } })
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert!(kept.is_empty(), "{kept:?}");
    assert_eq!(outbox.len().await.unwrap(), 0);
}
