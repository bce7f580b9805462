//! The floor: what the servers themselves do for the work one order needs,
//! on the same Redis and MongoDB as the system, without any service code.
//!
//! * **MongoDB**: one replica-set transaction with exactly the writes a
//!   placement needs (two guarded stock decrements of two dishes out of
//!   seven, the order, one outbox entry, the idempotency record), from
//!   `concurrency` tasks for a fixed time, each retrying its write conflicts
//!   until it commits. Its rate is what one-order-per-transaction can reach.
//!   Measured twice where the server has `bulkWrite`: with one command per
//!   write, and as the services write since (common::writes): a read of the
//!   two dishes, then every write in one `bulkWrite`. Ours is divided by the
//!   faster of the two.
//! * **MongoDB, one status move**, two ways, each task moving its own
//!   document (so nothing conflicts): as the services write a lone move
//!   today (a transaction: guarded `findAndModify`, an outbox entry, the
//!   commit), and as one guarded single-document `findAndModify` that
//!   `$push`es the event into the document itself, without a transaction
//!   (the array is kept to its last 8 events here, where a relay would
//!   have to `$pull` them). The ratio bounds what that design saves per
//!   move; built in full it did not pay (docs/performance.md, 13).
//! * **Redis**: raw `XADD` of an envelope-sized entry, then `XREADGROUP`
//!   (one entry per call) and `XACK` of every entry, from `concurrency`
//!   tasks. Their rates bound what the relays and the consumer loops can do.
//!
//! The report divides ours by these.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bson::{Document, doc, oid::ObjectId};
use futures::{FutureExt, future::join_all};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::Serialize;

use common::writes::{Mode, Writes};

use super::Percentiles;

/// Rates measured on the bare servers.
#[derive(Debug, Clone, Serialize)]
pub struct Floor {
    /// Concurrent tasks.
    pub concurrency: usize,
    /// Committed order transactions per second.
    pub mongo_txn_per_sec: f64,
    /// Their latency, retries included.
    pub mongo_txn_latency: Percentiles,
    /// Transaction runs that hit a write conflict and ran again.
    pub mongo_conflicts: u64,
    /// The same transaction as a read of the dishes and one `bulkWrite`,
    /// per second (none: the server has no `bulkWrite`).
    pub mongo_bulk_txn_per_sec: Option<f64>,
    /// Status moves per second, each a transaction with its outbox entry.
    pub move_txn_per_sec: f64,
    /// Status moves per second, each one single-document `findAndModify`
    /// carrying its event.
    pub move_single_per_sec: f64,
    /// `XADD` per second.
    pub xadd_per_sec: f64,
    /// Entries read (`XREADGROUP COUNT 1`) and acknowledged per second.
    pub read_ack_per_sec: f64,
}

impl Floor {
    /// The faster of the two order transactions.
    pub fn order_txn_per_sec(&self) -> f64 {
        self.mongo_txn_per_sec
            .max(self.mongo_bulk_txn_per_sec.unwrap_or_default())
    }
}

impl std::fmt::Display for Floor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "floor, c={}: MongoDB order transaction {:.0}/s ({}; {} conflicts retried), {}; status move as a transaction {:.0}/s, as one document write {:.0}/s ({:.1}×); Redis XADD {:.0}/s, XREADGROUP+XACK {:.0}/s",
            self.concurrency,
            self.mongo_txn_per_sec,
            self.mongo_txn_latency,
            self.mongo_conflicts,
            self.mongo_bulk_txn_per_sec.map_or_else(
                || "no bulkWrite on this server".to_owned(),
                |r| format!("as a read and one bulkWrite {r:.0}/s")
            ),
            self.move_txn_per_sec,
            self.move_single_per_sec,
            self.move_single_per_sec / self.move_txn_per_sec.max(f64::MIN_POSITIVE),
            self.xadd_per_sec,
            self.read_ack_per_sec
        )
    }
}

/// Runs `task` from `concurrency` workers until `duration` has passed (or
/// a worker's task says there is no more work, `Ok(false)`); returns how
/// many times it succeeded, per second, and its latencies.
async fn closed_loop<F, Fut>(concurrency: usize, duration: Duration, task: F) -> (f64, Vec<f64>)
where
    F: Fn(usize, u64) -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers = (0..concurrency.max(1)).map(|w| {
        let stop = stop.clone();
        let task = &task;
        async move {
            let mut latencies = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                match task(w, n).await {
                    Ok(true) => latencies.push(t.elapsed().as_secs_f64() * 1e3),
                    Ok(false) => break,
                    Err(_) => {}
                }
                n += 1;
                if started.elapsed() >= duration {
                    stop.store(true, Ordering::Relaxed);
                }
            }
            latencies
        }
        .boxed_local()
    });
    let all: Vec<f64> = join_all(workers).await.into_iter().flatten().collect();
    (all.len() as f64 / started.elapsed().as_secs_f64(), all)
}

/// Measures the floor at `concurrency` for `duration` per server.
pub async fn measure(
    mongo_url: &str,
    redis_url: &str,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Floor> {
    let (mongo_txn_per_sec, latencies, mongo_conflicts) =
        mongo_floor(mongo_url, concurrency, duration, Mode::PerCollection).await?;
    let bulk = {
        let client = common::mongo::connect(mongo_url, "bench-floor").await?;
        common::writes::Support::default().mode(&client).await == Mode::Bulk
    };
    let mongo_bulk_txn_per_sec = if bulk {
        Some(
            mongo_floor(mongo_url, concurrency, duration, Mode::Bulk)
                .await?
                .0,
        )
    } else {
        None
    };
    let (move_txn_per_sec, move_single_per_sec) =
        move_floor(mongo_url, concurrency, duration).await?;
    let (xadd_per_sec, read_ack_per_sec) = redis_floor(redis_url, concurrency, duration).await?;
    Ok(Floor {
        concurrency,
        mongo_txn_per_sec,
        mongo_txn_latency: Percentiles::of(latencies),
        mongo_conflicts,
        mongo_bulk_txn_per_sec,
        move_txn_per_sec,
        move_single_per_sec,
        xadd_per_sec,
        read_ack_per_sec,
    })
}

async fn mongo_floor(
    url: &str,
    concurrency: usize,
    duration: Duration,
    mode: Mode,
) -> anyhow::Result<(f64, Vec<f64>, u64)> {
    let client = common::mongo::connect(url, "bench-floor").await?;
    let db = client.database("bench_floor");
    db.drop().await?;
    let menu = db.collection::<Document>("menu");
    let dishes: Vec<ObjectId> = (0..7).map(|_| ObjectId::new()).collect();
    menu.insert_many(
        dishes
            .iter()
            .map(|id| doc! { "_id": id, "name": "dish", "price_cents": 1250_i64, "stock": 1_000_000_000_i64 }),
    )
    .await?;
    // The collections and indexes a placement writes to.
    db.collection::<Document>("orders")
        .insert_one(doc! { "_id": ObjectId::new() })
        .await?;
    // The outbox collection exists before the first transaction writes it.
    db.collection::<Document>("outbox")
        .insert_one(doc! { "_id": ObjectId::new() })
        .await?;
    db.collection::<Document>("keys")
        .insert_one(doc! { "_id": "warm" })
        .await?;
    let conflicts = AtomicU64::new(0);
    let policy = common::mongo::RetryPolicy {
        max_attempts: 1000,
        max_elapsed: Duration::from_secs(30),
        ..Default::default()
    };
    let (rate, latencies) = closed_loop(concurrency, duration, |w, n| {
        let (client, db, dishes, conflicts) = (&client, &db, &dishes, &conflicts);
        async move {
            let mut rng = StdRng::seed_from_u64((w as u64) << 32 | n);
            let a = rng.random_range(0..7);
            let b = (a + rng.random_range(1..7)) % 7;
            let lines = [(dishes[a], rng.random_range(1..=2_i64)), (dishes[b], rng.random_range(1..=2_i64))];
            let ctx = (db.clone(), lines, format!("floor-{w}-{n}"));
            let runs = AtomicU64::new(0);
            common::mongo::run_transaction(client, policy, &ctx, |s, (db, lines, key)| {
                runs.fetch_add(1, Ordering::Relaxed);
                async move {
                    let menu = db.collection::<Document>("menu");
                    let order_id = ObjectId::new();
                    let items: Vec<Document> = lines
                        .iter()
                        .map(|(id, q)| doc! { "item_id": id, "name": "dish", "quantity": q, "price_cents": 1250_i64 })
                        .collect();
                    let order = doc! {
                        "_id": order_id, "status": "created", "version": 1_i64,
                        "customer": { "name": "Bench Mark", "address": "1 Fast Lane", "phone": "+1 555 0199" },
                        "items": items, "total_cents": 5000_i64,
                        "created_at": bson::DateTime::now(), "token_hash": "0123456789abcdef0123456789abcdef",
                    };
                    let entry = doc! {
                        "stream": "orders-stream", "key": order_id.to_hex(), "seq": 1_i64,
                        "published": false, "written_at": bson::DateTime::now(),
                        "fields": { "event_type": "order.created.v1", "payload": "x".repeat(400) },
                    };
                    let record = doc! { "_id": key.as_str(), "order_id": order_id, "fingerprint": "f".repeat(64) };
                    if mode == Mode::Bulk {
                        // As a placement writes: read the dishes, then
                        // every write in one command.
                        let ids: Vec<ObjectId> = lines.iter().map(|(id, _)| *id).collect();
                        let mut found = menu.find(doc! { "_id": { "$in": ids } }).session(&mut *s).await?;
                        while let Some(d) = found.next(&mut *s).await {
                            d?;
                        }
                        let mut writes = Writes::new();
                        for (id, q) in lines {
                            writes.update(
                                &menu,
                                doc! { "_id": id, "stock": { "$gte": q } },
                                doc! { "$inc": { "stock": -q } },
                            );
                        }
                        writes.insert(&db.collection::<Document>("orders"), order);
                        writes.insert(&db.collection::<Document>("outbox"), entry);
                        writes.insert(&db.collection::<Document>("keys"), record);
                        return writes.run(db.client(), s, Mode::Bulk).await;
                    }
                    for (id, q) in lines {
                        let r = menu
                            .update_one(
                                doc! { "_id": id, "stock": { "$gte": q } },
                                doc! { "$inc": { "stock": -q } },
                            )
                            .session(&mut *s)
                            .await?;
                        if r.modified_count != 1 {
                            return Err(mongodb::error::Error::custom("out of stock"));
                        }
                    }
                    db.collection::<Document>("orders")
                        .insert_one(order)
                        .session(&mut *s)
                        .await?;
                    db.collection::<Document>("outbox")
                        .insert_one(entry)
                        .session(&mut *s)
                        .await?;
                    db.collection::<Document>("keys")
                        .insert_one(record)
                        .session(&mut *s)
                        .await?;
                    Ok::<(), mongodb::error::Error>(())
                }
                .boxed()
            })
            .await?;
            conflicts.fetch_add(runs.load(Ordering::Relaxed) - 1, Ordering::Relaxed);
            Ok(true)
        }
    })
    .await;
    db.drop().await?;
    Ok((rate, latencies, conflicts.load(Ordering::Relaxed)))
}

/// A status move of one document per task, as a transaction with an outbox
/// entry and as one single-document write carrying its event: the rate of
/// each, measured one after the other for `duration` each.
async fn move_floor(
    url: &str,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<(f64, f64)> {
    let client = common::mongo::connect(url, "bench-floor").await?;
    let db = client.database("bench_floor_moves");
    db.drop().await?;
    let orders = db.collection::<Document>("orders");
    let docs: Vec<ObjectId> = (0..concurrency.max(1)).map(|_| ObjectId::new()).collect();
    orders
        .insert_many(docs.iter().map(
            |id| doc! { "_id": id, "status": "created", "version": 1_i64, "pad": "x".repeat(300) },
        ))
        .await?;
    // The outbox collection exists before the first transaction writes it.
    db.collection::<Document>("outbox")
        .insert_one(doc! { "_id": ObjectId::new() })
        .await?;
    let event = |id: &ObjectId, seq: i64| {
        doc! {
            "stream": "order-status-stream", "key": id.to_hex(), "seq": seq,
            "fields": { "event_type": "order.status_updated.v1", "payload": "x".repeat(300) },
        }
    };
    let policy = common::mongo::RetryPolicy::default();
    // Each task's document's version, which guards its next move.
    let versions: Vec<AtomicU64> = docs.iter().map(|_| AtomicU64::new(1)).collect();
    let (txn, _) = closed_loop(concurrency, duration, |w, _| {
        let (client, db, docs, versions, event) = (&client, &db, &docs, &versions, &event);
        async move {
            let (id, v) = (docs[w], versions[w].load(Ordering::Relaxed) as i64);
            let ctx = (db.clone(), id, v, event(&id, v + 1));
            common::mongo::run_transaction(client, policy, &ctx, |s, (db, id, v, ev)| {
                async move {
                    let moved = db
                        .collection::<Document>("orders")
                        .find_one_and_update(
                            doc! { "_id": id, "version": v },
                            doc! { "$set": { "status": "preparing" }, "$inc": { "version": 1_i64 } },
                        )
                        .session(&mut *s)
                        .await?;
                    if moved.is_none() {
                        return Err(mongodb::error::Error::custom("not moved"));
                    }
                    db.collection::<Document>("outbox")
                        .insert_one(doc! { "written_at": bson::DateTime::now(), "published": false, "events": [ev] })
                        .session(&mut *s)
                        .await?;
                    Ok::<(), mongodb::error::Error>(())
                }
                .boxed()
            })
            .await?;
            versions[w].fetch_add(1, Ordering::Relaxed);
            Ok(true)
        }
    })
    .await;
    let (single, _) = closed_loop(concurrency, duration, |w, _| {
        let (orders, docs, versions, event) = (&orders, &docs, &versions, &event);
        async move {
            let (id, v) = (docs[w], versions[w].load(Ordering::Relaxed) as i64);
            let moved = orders
                .find_one_and_update(
                    doc! { "_id": id, "version": v },
                    doc! {
                        "$set": { "status": "preparing" },
                        "$inc": { "version": 1_i64 },
                        "$push": { "outbox": { "$each": [event(&id, v + 1)], "$slice": -8 } },
                    },
                )
                // As durable as a transaction's commit.
                .write_concern(mongodb::options::WriteConcern::majority())
                .await?;
            anyhow::ensure!(moved.is_some(), "not moved");
            versions[w].fetch_add(1, Ordering::Relaxed);
            Ok(true)
        }
    })
    .await;
    db.drop().await?;
    Ok((txn, single))
}

async fn redis_floor(
    url: &str,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<(f64, f64)> {
    // One key: on a cluster, the primary that serves its slot.
    let conn = contract::redis::commands(&contract::redis::client(url)?)?;
    let stream = "bench-floor-stream";
    let _: () = redis::cmd("DEL")
        .arg(stream)
        .query_async(&mut conn.clone())
        .await?;
    let payload = "x".repeat(400);
    let (xadd, _) = closed_loop(concurrency, duration, |_, _| {
        let (mut conn, payload) = (conn.clone(), &payload);
        async move {
            let _: String = redis::cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("event_id")
                .arg(uuid::Uuid::now_v7().to_string())
                .arg("event_type")
                .arg("order.status_updated.v1")
                .arg("key")
                .arg("65f1a2b3c4d5e6f708192a3b")
                .arg("occurred_at")
                .arg("2026-12-01T00:00:00.000000Z")
                .arg("payload")
                .arg(payload)
                .query_async(&mut conn)
                .await?;
            Ok(true)
        }
    })
    .await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg("floor")
        .arg("0")
        .query_async(&mut conn.clone())
        .await?;
    // Reads what the XADDs wrote, until it is all read or the time is up.
    let (read_ack, _) = closed_loop(concurrency, duration, |w, _| {
        let mut conn = conn.clone();
        async move {
            let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg("floor")
                .arg(format!("c{w}"))
                .arg("COUNT")
                .arg(1)
                .arg("STREAMS")
                .arg(stream)
                .arg(">")
                .query_async(&mut conn)
                .await?;
            let Some(id) = reply.keys.first().and_then(|k| k.ids.first()) else {
                return Ok(false);
            };
            let _: i64 = redis::cmd("XACK")
                .arg(stream)
                .arg("floor")
                .arg(&id.id)
                .query_async(&mut conn)
                .await?;
            Ok(true)
        }
    })
    .await;
    let _: () = redis::cmd("DEL")
        .arg(stream)
        .query_async(&mut conn.clone())
        .await?;
    Ok((xadd, read_ack))
}
