//! `common::transition` on a real replica set: the next status applies once
//! with its outbox event; duplicates, stale and early events change nothing,
//! an early event applies when it comes back after its predecessor, and the
//! document after the move is what the database holds.

use bson::{Document, doc, oid::ObjectId};
use common::{
    mongo,
    outbox::Outbox,
    transition::{Cause, Guarded, Spec, StatusChange, Versioned},
};
use contract::{
    Envelope,
    status::DeliveryStatus,
    streams::{Namespace, Stream},
};
use futures::TryStreamExt;
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
    fn id(&self) -> ObjectId {
        self.id
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

/// A parcel waiting for pickup, at version 1.
fn waiting(id: ObjectId) -> Parcel {
    Parcel {
        id,
        status: DeliveryStatus::WaitingForPickup,
        version: 1,
    }
}

/// A fresh database with its parcels and outbox.
async fn world(
    name: &str,
) -> (
    mongodb::Client,
    mongodb::Database,
    mongodb::Collection<Parcel>,
    Outbox,
) {
    let client = mongo::connect(&testkit::shared_mongo().await.url(), "common-tests")
        .await
        .unwrap();
    let db = client.database(&testkit::unique_db(name));
    let parcels = db.collection::<Parcel>("parcels");
    let outbox = Outbox::new(&db, Namespace::new("t:"), "test");
    (client, db, parcels, outbox)
}

fn guarded(
    client: &mongodb::Client,
    parcels: &mongodb::Collection<Parcel>,
    outbox: &Outbox,
) -> Guarded<Parcel> {
    Guarded::new(
        "test_moves",
        Spec {
            client: client.clone(),
            collection: parcels.clone(),
            outbox: outbox.clone(),
            stream: Stream::Deliveries,
            event: moved_event,
            effect: None,
        },
    )
}

#[tokio::test]
async fn only_the_next_status_applies_and_only_once() {
    let (client, db, parcels, outbox) = world("transition").await;
    let id = ObjectId::new();
    parcels.insert_one(waiting(id)).await.unwrap();
    let g = guarded(&client, &parcels, &outbox);
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
    let events = entry.get_array("events").unwrap();
    assert_eq!(events.len(), 1, "one commit, one entry: {entry}");
    let payload: serde_json::Value = serde_json::from_str(
        events[0]
            .as_document()
            .unwrap()
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

/// Many moves in flight at once share transactions (group commit), and each
/// still gets its own outcome: the next status moves, a duplicate in the same
/// batch is stale, an early one waits, a missing document is missing, and
/// exactly one event per move is in the outbox.
#[tokio::test]
async fn concurrent_moves_share_transactions_with_their_own_outcomes() {
    let (client, db, parcels, outbox) = world("transition_batch").await;
    let ids: Vec<ObjectId> = (0..60).map(|_| ObjectId::new()).collect();
    parcels
        .insert_many(ids.iter().map(|&id| waiting(id)))
        .await
        .unwrap();
    let g = guarded(&client, &parcels, &outbox);
    let event = cause();
    let apply = |id: ObjectId, to: DeliveryStatus| {
        let (g, event) = (g.clone(), &event);
        async move {
            g.apply(id, to, Cause::Event(event), Document::new())
                .await
                .unwrap()
        }
    };
    // Each parcel moved twice to on_the_way (a duplicate), the first ten
    // also asked to be delivered (early, or moved if its on_the_way went
    // first in the same transaction), and ten parcels that do not exist.
    let mut asks = Vec::new();
    for &id in &ids {
        asks.push((id, DeliveryStatus::OnTheWay));
        asks.push((id, DeliveryStatus::OnTheWay));
    }
    for &id in &ids[..10] {
        asks.push((id, DeliveryStatus::Delivered));
    }
    for _ in 0..10 {
        asks.push((ObjectId::new(), DeliveryStatus::OnTheWay));
    }
    let changes = futures::future::join_all(asks.iter().map(|&(id, to)| apply(id, to))).await;

    let count =
        |f: fn(&StatusChange<DeliveryStatus>) -> bool| changes.iter().filter(|c| f(c)).count();
    let moved = count(|c| matches!(c, StatusChange::Moved { .. }));
    let early = count(|c| matches!(c, StatusChange::Early(_)));
    assert_eq!(count(|c| *c == StatusChange::Missing), 10);
    assert_eq!(
        count(|c| *c == StatusChange::Stale(DeliveryStatus::OnTheWay))
            + count(|c| *c == StatusChange::Stale(DeliveryStatus::Delivered)),
        60,
        "one of each duplicate pair is stale: {changes:?}"
    );
    assert_eq!(moved + early, 70, "{changes:?}");
    // Every move has exactly one event; a parcel's version counts its moves.
    assert_eq!(outbox.len().await.unwrap(), moved as u64);
    // ... in one outbox entry per transaction, not one per move.
    let entries = db
        .collection::<Document>("outbox_test")
        .count_documents(doc! {})
        .await
        .unwrap();
    assert!(
        entries < moved as u64,
        "{entries} entries for {moved} moves"
    );
    let mut versions = 0;
    for p in parcels
        .find(doc! {})
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
    {
        versions += p.version - 1;
    }
    assert_eq!(versions as usize, moved);
}

#[tokio::test]
async fn a_run_is_one_transaction_each_move_decided_on_what_the_ones_before_it_did() {
    let (client, db, parcels, outbox) = world("transition_run").await;
    let (a, b) = (ObjectId::new(), ObjectId::new());
    parcels.insert_many([waiting(a), waiting(b)]).await.unwrap();
    let g = guarded(&client, &parcels, &outbox);
    let event = cause();
    let ask = |id, to| (id, to, Cause::Event(&event), Document::new());
    let changes: Vec<_> = g
        .apply_run(vec![
            ask(a, DeliveryStatus::OnTheWay),
            ask(a, DeliveryStatus::Delivered),
            ask(a, DeliveryStatus::Delivered),
            ask(b, DeliveryStatus::Delivered),
            ask(ObjectId::new(), DeliveryStatus::OnTheWay),
        ])
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        changes,
        [
            StatusChange::Moved {
                previous: DeliveryStatus::WaitingForPickup
            },
            // Decided on the parcel as the move before it left it.
            StatusChange::Moved {
                previous: DeliveryStatus::OnTheWay
            },
            StatusChange::Stale(DeliveryStatus::Delivered),
            StatusChange::Early(DeliveryStatus::WaitingForPickup),
            StatusChange::Missing,
        ]
    );
    let get = |id| {
        let parcels = parcels.clone();
        async move { parcels.find_one(doc! { "_id": id }).await.unwrap().unwrap() }
    };
    let (pa, pb) = (get(a).await, get(b).await);
    assert_eq!((pa.status, pa.version), (DeliveryStatus::Delivered, 3));
    assert_eq!(
        (pb.status, pb.version),
        (DeliveryStatus::WaitingForPickup, 1)
    );
    // Both events in one outbox entry: one transaction for the run.
    assert_eq!(outbox.len().await.unwrap(), 2);
    let entries = db
        .collection::<Document>("outbox_test")
        .count_documents(doc! {})
        .await
        .unwrap();
    assert_eq!(entries, 1);
}
