//! `common::writes` against the real server, in both modes: what one
//! `bulkWrite` does must be what the per-collection commands do.

use common::{
    mongo::{self, RetryPolicy, is_duplicate_key, run_transaction},
    writes::{Mode, Support, Writes},
};
use futures::future::join_all;
use mongodb::{
    Client, Collection, Database,
    bson::{Document, doc},
};

const MODES: [Mode; 2] = [Mode::Bulk, Mode::PerCollection];

async fn db(name: &str) -> (Client, Database) {
    let server = testkit::shared_mongo().await;
    let client = mongo::connect(&server.url(), "common-tests").await.unwrap();
    let db = client.database(&testkit::unique_db(name));
    for coll in ["stock", "orders", "outbox"] {
        db.create_collection(coll).await.unwrap();
    }
    (client, db)
}

fn colls(db: &Database) -> [Collection<Document>; 3] {
    ["stock", "orders", "outbox"].map(|c| db.collection(c))
}

/// Starts a transaction and reads in it, as every caller does before it
/// writes (a `bulkWrite` may not open a transaction: see common::writes).
async fn begin(client: &Client, stock: &Collection<Document>) -> mongodb::ClientSession {
    let mut s = client.start_session().await.unwrap();
    s.start_transaction().await.unwrap();
    stock.find_one(doc! {}).session(&mut s).await.unwrap();
    s
}

/// Whether the server answers a `bulkWrite` (what `Support` predicts).
async fn server_has_bulk_write(client: &Client, db: &Database) -> bool {
    let ns = format!("{}.stock", db.name());
    client
        .database("admin")
        .run_command(doc! {
            "bulkWrite": 1,
            "ops": [{ "insert": 0, "document": { "_id": "probe" } }],
            "nsInfo": [{ "ns": ns }],
        })
        .await
        .is_ok()
}

#[tokio::test]
async fn support_predicts_whether_the_server_takes_bulk_writes() {
    let (client, db) = db("writes_support").await;
    let mode = Support::default().mode(&client).await;
    let has = server_has_bulk_write(&client, &db).await;
    assert_eq!(mode == Mode::Bulk, has, "{mode:?}");
}

#[tokio::test]
async fn writes_across_collections_commit_or_abort_together_in_both_modes() {
    let (client, db) = db("writes_commit").await;
    if !server_has_bulk_write(&client, &db).await {
        eprintln!("this server has no bulkWrite: only the per-collection mode is tested");
    }
    let [stock, orders, outbox] = colls(&db);
    stock.delete_many(doc! {}).await.unwrap();
    stock
        .insert_one(doc! { "_id": "pizza", "n": 10 })
        .await
        .unwrap();
    for (i, mode) in MODES.into_iter().enumerate() {
        if mode == Mode::Bulk && !server_has_bulk_write(&client, &db).await {
            continue;
        }
        let writes = || {
            let mut w = Writes::new();
            w.update(
                &stock,
                doc! { "_id": "pizza", "n": { "$gte": 2 } },
                doc! { "$inc": { "n": -2 } },
            );
            w.insert(&orders, doc! { "_id": format!("o{i}a") });
            w.insert(&orders, doc! { "_id": format!("o{i}b") });
            w.upsert(
                &outbox,
                doc! { "_id": format!("e{i}") },
                doc! { "$setOnInsert": { "events": ["x"] } },
            );
            w
        };
        // Aborted: nothing of it stays.
        let mut s = begin(&client, &stock).await;
        writes().run(&client, &mut s, mode).await.unwrap();
        s.abort_transaction().await.unwrap();
        assert_eq!(
            orders.count_documents(doc! {}).await.unwrap(),
            2 * i as u64,
            "{mode:?}"
        );
        // Committed: all of it.
        let mut s = begin(&client, &stock).await;
        writes().run(&client, &mut s, mode).await.unwrap();
        s.commit_transaction().await.unwrap();
        let left = stock
            .find_one(doc! { "_id": "pizza" })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(left.get_i32("n").unwrap(), 8 - 2 * i as i32, "{mode:?}");
        assert_eq!(
            orders.count_documents(doc! {}).await.unwrap(),
            2 * (i as u64 + 1)
        );
        assert!(
            outbox
                .find_one(doc! { "_id": format!("e{i}") })
                .await
                .unwrap()
                .is_some()
        );
    }
}

#[tokio::test]
async fn a_guard_that_does_not_hold_or_a_duplicate_fails_the_writes_in_both_modes() {
    let (client, db) = db("writes_fail").await;
    let has_bulk = server_has_bulk_write(&client, &db).await;
    let [stock, orders, _] = colls(&db);
    stock.delete_many(doc! {}).await.unwrap();
    stock
        .insert_one(doc! { "_id": "pizza", "n": 1 })
        .await
        .unwrap();
    orders.insert_one(doc! { "_id": "taken" }).await.unwrap();
    for mode in MODES {
        if mode == Mode::Bulk && !has_bulk {
            continue;
        }
        // Not enough stock: the guard matches nothing, and the insert
        // before it goes with the aborted transaction.
        let mut s = begin(&client, &stock).await;
        let mut w = Writes::new();
        w.insert(&orders, doc! { "_id": "new" });
        w.update(
            &stock,
            doc! { "_id": "pizza", "n": { "$gte": 2 } },
            doc! { "$inc": { "n": -2 } },
        );
        let e = w.run(&client, &mut s, mode).await.unwrap_err();
        assert!(!is_duplicate_key(&e), "{mode:?}: {e}");
        let _ = s.abort_transaction().await;
        assert!(
            orders
                .find_one(doc! { "_id": "new" })
                .await
                .unwrap()
                .is_none()
        );
        // A duplicate is told apart.
        let mut s = begin(&client, &stock).await;
        let mut w = Writes::new();
        w.insert(&orders, doc! { "_id": "taken" });
        let e = w.run(&client, &mut s, mode).await.unwrap_err();
        assert!(is_duplicate_key(&e), "{mode:?}: {e}");
        let _ = s.abort_transaction().await;
    }
}

/// Sixteen transactions that all read and write one document: every one
/// conflicts with the others, and each must still commit once (a write
/// conflict inside a `bulkWrite` is a statement error, not a labelled one).
#[tokio::test]
async fn conflicting_writes_are_run_again_until_each_commits_in_both_modes() {
    let (client, db) = db("writes_conflict").await;
    let has_bulk = server_has_bulk_write(&client, &db).await;
    let [stock, orders, _] = colls(&db);
    for mode in MODES {
        if mode == Mode::Bulk && !has_bulk {
            continue;
        }
        stock.delete_many(doc! {}).await.unwrap();
        orders.delete_many(doc! {}).await.unwrap();
        stock
            .insert_one(doc! { "_id": "pizza", "n": 0 })
            .await
            .unwrap();
        let policy = RetryPolicy {
            max_attempts: 200,
            max_elapsed: std::time::Duration::from_secs(30),
            ..RetryPolicy::default()
        };
        let results = join_all((0..16).map(|i| {
            let (client, stock, orders) = (client.clone(), stock.clone(), orders.clone());
            async move {
                let ctx = (client.clone(), stock, orders, i);
                run_transaction(&client, policy, &ctx, |s, (client, stock, orders, i)| {
                    Box::pin(async move {
                        let n = stock
                            .find_one(doc! { "_id": "pizza" })
                            .session(&mut *s)
                            .await?
                            .and_then(|d| d.get_i32("n").ok())
                            .unwrap_or_default();
                        let mut w = Writes::new();
                        w.update(
                            stock,
                            doc! { "_id": "pizza", "n": n },
                            doc! { "$inc": { "n": 1 } },
                        );
                        w.insert(orders, doc! { "_id": *i, "saw": n });
                        w.run(client, s, mode).await
                    })
                })
                .await
            }
        }))
        .await;
        for r in results {
            r.unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        }
        let n = stock
            .find_one(doc! { "_id": "pizza" })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n.get_i32("n").unwrap(), 16, "{mode:?}");
        assert_eq!(orders.count_documents(doc! {}).await.unwrap(), 16);
    }
}
