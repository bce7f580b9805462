use common::mongo::{self, RetryPolicy};
use futures::future::join_all;
use mongodb::{
    bson::{Document, doc},
    error::TRANSIENT_TRANSACTION_ERROR,
};

async fn db() -> (mongodb::Client, mongodb::Database) {
    let server = testkit::shared_mongo().await;
    let client = mongo::connect(&server.url(), "common-tests").await.unwrap();
    let db = client.database(&testkit::unique_db("tx"));
    (client, db)
}

#[tokio::test]
async fn the_harness_mongo_runs_multi_document_transactions() {
    let (client, db) = db().await;
    db.create_collection("stock").await.unwrap();
    db.create_collection("orders").await.unwrap();
    let (stock, orders) = (
        db.collection::<Document>("stock"),
        db.collection::<Document>("orders"),
    );
    stock
        .insert_one(doc! { "_id": "pizza", "n": 5 })
        .await
        .unwrap();

    let mut s = client.start_session().await.unwrap();
    s.start_transaction().await.unwrap();
    stock
        .update_one(doc! { "_id": "pizza" }, doc! { "$inc": { "n": -2 } })
        .session(&mut s)
        .await
        .unwrap();
    orders
        .insert_one(doc! { "_id": "o1" })
        .session(&mut s)
        .await
        .unwrap();
    assert!(
        orders
            .find_one(doc! { "_id": "o1" })
            .await
            .unwrap()
            .is_none(),
        "invisible before commit"
    );
    s.commit_transaction().await.unwrap();
    assert!(
        orders
            .find_one(doc! { "_id": "o1" })
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        stock
            .find_one(doc! { "_id": "pizza" })
            .await
            .unwrap()
            .unwrap()
            .get_i32("n")
            .unwrap(),
        3
    );

    s.start_transaction().await.unwrap();
    stock
        .update_one(doc! { "_id": "pizza" }, doc! { "$inc": { "n": -3 } })
        .session(&mut s)
        .await
        .unwrap();
    orders
        .insert_one(doc! { "_id": "o2" })
        .session(&mut s)
        .await
        .unwrap();
    s.abort_transaction().await.unwrap();
    assert!(
        orders
            .find_one(doc! { "_id": "o2" })
            .await
            .unwrap()
            .is_none(),
        "abort leaves nothing"
    );
    assert_eq!(
        stock
            .find_one(doc! { "_id": "pizza" })
            .await
            .unwrap()
            .unwrap()
            .get_i32("n")
            .unwrap(),
        3
    );
}

#[tokio::test]
async fn concurrent_transactions_on_one_document_report_a_write_conflict() {
    let (client, db) = db().await;
    let stock = db.collection::<Document>("stock");
    stock
        .insert_one(doc! { "_id": "pizza", "n": 5 })
        .await
        .unwrap();
    let (mut s1, mut s2) = (
        client.start_session().await.unwrap(),
        client.start_session().await.unwrap(),
    );
    s1.start_transaction().await.unwrap();
    s2.start_transaction().await.unwrap();
    stock
        .update_one(doc! { "_id": "pizza" }, doc! { "$inc": { "n": -1 } })
        .session(&mut s1)
        .await
        .unwrap();
    let err = stock
        .update_one(doc! { "_id": "pizza" }, doc! { "$inc": { "n": -1 } })
        .session(&mut s2)
        .await
        .expect_err("the second writer conflicts");
    assert!(err.contains_label(TRANSIENT_TRANSACTION_ERROR), "{err}");
    let code = match &*err.kind {
        mongodb::error::ErrorKind::Command(c) => Some(c.code),
        _ => None,
    };
    assert_eq!(code, Some(112), "WriteConflict: {err}");
    s1.commit_transaction().await.unwrap();
    let _ = s2.abort_transaction().await;
    assert_eq!(
        stock
            .find_one(doc! { "_id": "pizza" })
            .await
            .unwrap()
            .unwrap()
            .get_i32("n")
            .unwrap(),
        4
    );
}

#[tokio::test]
async fn run_transaction_turns_contention_into_success() {
    let (client, db) = db().await;
    let counter = db.collection::<Document>("counter");
    counter
        .insert_one(doc! { "_id": "c", "n": 0 })
        .await
        .unwrap();
    let writers = (0..20).map(|_| {
        let (client, counter) = (client.clone(), counter.clone());
        async move {
            mongo::run_transaction(
                &client,
                RetryPolicy {
                    max_attempts: 50,
                    // Attempts, not the clock, bound this test: a loaded
                    // machine must not fail it.
                    max_elapsed: std::time::Duration::from_secs(60),
                    ..RetryPolicy::default()
                },
                &counter,
                |s, c| {
                    Box::pin(async move {
                        c.update_one(doc! { "_id": "c" }, doc! { "$inc": { "n": 1 } })
                            .session(s)
                            .await?;
                        Ok::<_, mongodb::error::Error>(())
                    })
                },
            )
            .await
        }
    });
    for r in join_all(writers).await {
        r.expect("every writer eventually commits");
    }
    assert_eq!(
        counter
            .find_one(doc! { "_id": "c" })
            .await
            .unwrap()
            .unwrap()
            .get_i32("n")
            .unwrap(),
        20
    );
}
