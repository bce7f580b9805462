//! The durable timers on a real Redis: a round fires every due step once,
//! in one pipeline, and each chain advances in order; steps due at once go
//! out together; at Redis's memory ceiling a round fails loudly, its steps
//! stay due, and once there is room every step fires exactly once.

// Test code fails by panicking.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use contract::redis::Conn;
use contract::{
    OrderId,
    redis::{array, text},
    streams::{Namespace, Stream},
};
use simulator::{
    settings::Delays,
    timers::{Kind, Timers},
};

/// No delay at all: a chain is published whole by its start.
const ZERO: Delays = Delays {
    scale: 1.0,
    jitter: 0.0,
    order: [Duration::ZERO; 3],
    delivery: [Duration::ZERO; 2],
};

/// The first step at once, each later one a millisecond after the one
/// before: one step per round.
const STEPPED: Delays = Delays {
    scale: 1.0,
    jitter: 0.0,
    order: [
        Duration::ZERO,
        Duration::from_millis(1),
        Duration::from_millis(1),
    ],
    delivery: [Duration::ZERO, Duration::from_millis(1)],
};

async fn timers(url: &str) -> (Timers, Conn, Namespace) {
    timers_with(url, STEPPED).await
}

async fn timers_with(url: &str, delays: Delays) -> (Timers, Conn, Namespace) {
    let conn = contract::redis::commands(&contract::redis::client(url).unwrap()).unwrap();
    let ns = Namespace::for_redis(
        &format!("{}:", testkit::unique("sim")),
        url,
        testkit::partitions(),
    );
    (
        Timers::new(conn.clone(), ns.clone(), delays, "test"),
        conn,
        ns,
    )
}

async fn start(t: &Timers, n: usize) -> Vec<OrderId> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let id = OrderId::parse(&format!("{:024x}", rand::random::<u128>() >> 32)).unwrap();
        assert!(
            t.start(Kind::Order, &id.to_string(), id, "c")
                .await
                .unwrap()
        );
        ids.push(id);
    }
    ids
}

/// One round in every partition (after the millisecond a step waits):
/// how many steps fired, and in how many partitions any did.
async fn fire_all(t: &Timers, ns: &Namespace) -> redis::RedisResult<(usize, usize)> {
    tokio::time::sleep(Duration::from_millis(2)).await;
    let (mut fired, mut rounds) = (0, 0);
    for p in ns.partition_range() {
        let n = t.fire_due(p).await?;
        fired += n;
        rounds += usize::from(n > 0);
    }
    Ok((fired, rounds))
}

/// The statuses published for each order, in stream order (each order's
/// events are in its partition).
async fn published(conn: &mut Conn, ns: &Namespace) -> Vec<(String, String)> {
    let mut entries = Vec::new();
    for key in ns.stream_keys(Stream::OrderStatus) {
        let reply: redis::Value = redis::cmd("XRANGE")
            .arg(key)
            .arg("-")
            .arg("+")
            .query_async(conn)
            .await
            .unwrap();
        entries.extend(array(reply).unwrap());
    }
    let mut out = Vec::new();
    for entry in entries {
        let fields = array(array(entry).unwrap().pop().unwrap()).unwrap();
        let mut map = std::collections::HashMap::new();
        for kv in fields.chunks(2) {
            map.insert(text(&kv[0]).unwrap(), text(&kv[1]).unwrap());
        }
        let payload: serde_json::Value = serde_json::from_str(&map["payload"]).unwrap();
        out.push((
            payload["order_id"].as_str().unwrap().to_owned(),
            payload["status"].as_str().unwrap().to_owned(),
        ));
    }
    out
}

/// Every order has exactly its three kitchen steps, in order.
fn assert_chains(ids: &[OrderId], got: &[(String, String)]) {
    assert_eq!(got.len(), ids.len() * 3, "one event per step");
    for id in ids {
        let statuses: Vec<&str> = got
            .iter()
            .filter(|(o, _)| *o == id.to_string())
            .map(|(_, s)| s.as_str())
            .collect();
        assert_eq!(
            statuses,
            ["confirmed", "preparing", "out_for_delivery"],
            "{id}"
        );
    }
}

#[tokio::test]
async fn a_round_fires_every_due_step_once_and_each_chain_advances_in_order() {
    let (t, mut conn, ns) = timers(&testkit::redis_url().await).await;
    // More due steps than one round takes (200).
    let ids = start(&t, 300).await;
    // The first step has no delay: it fired with its start.
    let first = published(&mut conn, &ns).await;
    assert_eq!(first.len(), 300, "one first step per start");
    assert!(first.iter().all(|(_, s)| s == "confirmed"), "{first:?}");
    let (mut rounds, mut passes) = (0, 0);
    while t.pending().await.unwrap() > 0 {
        rounds += fire_all(&t, &ns).await.unwrap().1;
        passes += 1;
        assert!(passes < 100, "the timers never drained");
    }
    assert!(
        rounds >= 3,
        "a round takes at most 200 of the 600 steps left: {rounds} rounds"
    );
    assert_chains(&ids, &published(&mut conn, &ns).await);
    // Nothing is left to fire, and firing again publishes nothing.
    assert_eq!(fire_all(&t, &ns).await.unwrap().0, 0);
    assert_eq!(published(&mut conn, &ns).await.len(), 900);
}

#[tokio::test]
async fn at_the_memory_ceiling_a_round_fails_and_its_steps_fire_once_there_is_room() {
    let redis = testkit::RedisServer::start().await;
    let (t, mut conn, ns) = timers(&redis.url()).await;
    let ids = start(&t, 150).await;
    redis.memory_ceiling(Some(32 * 1024)).await;
    let refusal = loop {
        match fire_all(&t, &ns).await.map(|(fired, _)| fired) {
            Ok(0) => panic!("the timers drained below the ceiling"),
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    assert!(refusal.to_string().contains("OOM"), "{refusal}");
    // A refused step is still due: every chain that has not published its
    // last step still has exactly one pending timer.
    let so_far = published(&mut conn, &ns).await;
    assert!(so_far.len() < 450, "the ceiling never bit");
    let done = ids
        .iter()
        .filter(|id| so_far.iter().filter(|(o, _)| *o == id.to_string()).count() == 3)
        .count();
    assert_eq!(
        t.pending().await.unwrap(),
        ids.len() - done,
        "a chain lost its pending step"
    );
    redis.memory_ceiling(None).await;
    while t.pending().await.unwrap() > 0 {
        fire_all(&t, &ns).await.unwrap();
    }
    assert_chains(&ids, &published(&mut conn, &ns).await);
}

#[tokio::test]
async fn scripts_flushed_from_redis_are_loaded_again_and_every_step_fires_once() {
    let (t, mut conn, ns) = timers(&testkit::redis_url().await).await;
    let mut ids = start(&t, 5).await;
    // Redis forgets every script (as after a restart without them, or a
    // failover to a node that never ran them) while this process thinks
    // they are loaded.
    let flush = |mut conn: Conn| async move {
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut conn)
            .await
            .unwrap();
    };
    flush(conn.clone()).await;
    ids.extend(start(&t, 5).await);
    flush(conn.clone()).await;
    while t.pending().await.unwrap() > 0 {
        fire_all(&t, &ns).await.unwrap();
    }
    assert_chains(&ids, &published(&mut conn, &ns).await);
}

#[tokio::test]
async fn steps_due_at_once_go_out_together_in_order_and_the_first_that_waits_stays_pending() {
    let url = testkit::redis_url().await;
    // No delay anywhere: the start publishes the whole chain.
    let (t, mut conn, ns) = timers_with(&url, ZERO).await;
    let ids = start(&t, 20).await;
    assert_eq!(t.pending().await.unwrap(), 0, "nothing left to fire");
    assert_chains(&ids, &published(&mut conn, &ns).await);
    assert_eq!(fire_all(&t, &ns).await.unwrap().0, 0);
    assert_eq!(published(&mut conn, &ns).await.len(), 60);

    // Confirm and prepare at once, dispatch after a while: the start
    // publishes two steps and leaves the third pending.
    let later = Delays {
        order: [Duration::ZERO, Duration::ZERO, Duration::from_millis(300)],
        ..ZERO
    };
    let (t, mut conn, ns) = timers_with(&url, later).await;
    let ids = start(&t, 10).await;
    let so_far = published(&mut conn, &ns).await;
    assert_eq!(so_far.len(), 20, "{so_far:?}");
    for id in &ids {
        let statuses: Vec<&str> = so_far
            .iter()
            .filter(|(o, _)| *o == id.to_string())
            .map(|(_, s)| s.as_str())
            .collect();
        assert_eq!(statuses, ["confirmed", "preparing"], "{id}");
    }
    assert_eq!(t.pending().await.unwrap(), 10);
    assert_eq!(fire_all(&t, &ns).await.unwrap().0, 0, "not due yet");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fire_all(&t, &ns).await.unwrap().0, 10);
    assert_chains(&ids, &published(&mut conn, &ns).await);

    // A rejection ends the chain there, even with the later steps due.
    let (t, mut conn, ns) = timers_with(&url, ZERO).await;
    let t = t.with_kitchen(simulator::settings::Kitchen {
        reject_rate: 1.0,
        seed: 7,
    });
    start(&t, 5).await;
    let got = published(&mut conn, &ns).await;
    assert_eq!(got.len(), 5, "{got:?}");
    assert!(got.iter().all(|(_, s)| s == "rejected"), "{got:?}");
    assert_eq!(t.pending().await.unwrap(), 0);
}
