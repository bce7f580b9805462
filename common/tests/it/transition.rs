//! `common::transition` on a real replica set: the next status applies once
//! with its outbox event; duplicates, stale and early events change nothing,
//! an early event applies when it comes back after its predecessor, and the
//! document after the move is what the database holds.

use bson::{Document, doc, oid::ObjectId};
use common::{
    mongo,
    outbox::Outbox,
    transition::{Cause, Guarded, StatusChange, Versioned},
};
use contract::{
    Envelope,
    status::DeliveryStatus,
    streams::{Namespace, Stream},
};
use serde::{Deserialize, Serialize};

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
}

fn moved_event(p: &Parcel, previous: DeliveryStatus, correlation_id: &str) -> Envelope {
    Envelope::new(
        "parcel.moved.v1",
        p.id.to_hex(),
        correlation_id,
        "test",
        &serde_json::json!({ "from": previous, "to": p.status, "version": p.version }),
    )
    .unwrap()
}

fn cause() -> Envelope {
    Envelope::new(
        "courier.said.v1",
        "k",
        "corr-1",
        "test",
        &serde_json::json!({}),
    )
    .unwrap()
}

#[tokio::test]
async fn only_the_next_status_applies_and_only_once() {
    let client = mongo::connect(&testkit::shared_mongo().await.url(), "common-tests")
        .await
        .unwrap();
    let db = client.database(&testkit::unique_db("transition"));
    let parcels = db.collection::<Parcel>("parcels");
    let outbox = Outbox::new(&db, Namespace::new("t:"), "test");
    let id = ObjectId::new();
    parcels
        .insert_one(Parcel {
            id,
            status: DeliveryStatus::WaitingForPickup,
            version: 1,
        })
        .await
        .unwrap();
    let g = Guarded {
        client: &client,
        collection: &parcels,
        outbox: &outbox,
        stream: Stream::Deliveries,
        event: moved_event,
        effect: None,
    };
    let version = || async {
        parcels
            .find_one(doc! { "_id": id })
            .await
            .unwrap()
            .unwrap()
            .version
    };

    // Early: skips on_the_way. Nothing changes.
    let early = cause();
    assert_eq!(
        g.apply(
            id,
            DeliveryStatus::Delivered,
            Cause::Event(&early),
            Document::new()
        )
        .await
        .unwrap(),
        StatusChange::Early(DeliveryStatus::WaitingForPickup)
    );
    assert_eq!((version().await, outbox.len().await.unwrap()), (1, 0));

    // The next status applies, with its event in the outbox.
    let next = cause();
    assert_eq!(
        g.apply(
            id,
            DeliveryStatus::OnTheWay,
            Cause::Event(&next),
            Document::new()
        )
        .await
        .unwrap(),
        StatusChange::Moved {
            previous: DeliveryStatus::WaitingForPickup
        }
    );
    assert_eq!((version().await, outbox.len().await.unwrap()), (2, 1));
    // Its event was built from the document after the move.
    let entry = db
        .collection::<Document>("outbox_test")
        .find_one(doc! {})
        .await
        .unwrap()
        .unwrap();
    let payload: serde_json::Value = serde_json::from_str(
        entry
            .get_document("fields")
            .unwrap()
            .get_str("payload")
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        payload,
        serde_json::json!({"from": "waiting_for_pickup", "to": "on_the_way", "version": 2})
    );

    // The same event again, or the same status in a new event, or an older
    // one: stale, nothing changes.
    assert_eq!(
        g.apply(
            id,
            DeliveryStatus::OnTheWay,
            Cause::Event(&next),
            Document::new()
        )
        .await
        .unwrap(),
        StatusChange::Stale(DeliveryStatus::OnTheWay)
    );
    assert_eq!(
        g.apply(
            id,
            DeliveryStatus::WaitingForPickup,
            Cause::Event(&cause()),
            Document::new()
        )
        .await
        .unwrap(),
        StatusChange::Stale(DeliveryStatus::OnTheWay)
    );
    assert_eq!((version().await, outbox.len().await.unwrap()), (2, 1));

    // The early event, redelivered now that its predecessor is in, applies.
    assert_eq!(
        g.apply(
            id,
            DeliveryStatus::Delivered,
            Cause::Event(&early),
            Document::new()
        )
        .await
        .unwrap(),
        StatusChange::Moved {
            previous: DeliveryStatus::OnTheWay
        }
    );
    let after = parcels.find_one(doc! { "_id": id }).await.unwrap().unwrap();
    assert_eq!(
        (after.status, after.version),
        (DeliveryStatus::Delivered, 3)
    );
    assert_eq!(outbox.len().await.unwrap(), 2);

    assert_eq!(
        g.apply(
            ObjectId::new(),
            DeliveryStatus::OnTheWay,
            Cause::Event(&cause()),
            Document::new()
        )
        .await
        .unwrap(),
        StatusChange::Missing
    );
}
