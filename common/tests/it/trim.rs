//! `common::trim` on a real Redis: a stream is trimmed only below what every
//! group is done with (read and acknowledged); what a lagging group has not
//! read, or holds pending, stays; a stream nobody reads stays whole. And at
//! Redis's memory ceiling publishing fails loudly instead of dropping.

use common::trim::{TrimSettings, Trimmer};
use contract::redis::Conn;
use contract::{Envelope, events::Event, events::OrderCreated, streams::Stream};

use crate::helpers::Ctx;

async fn group(conn: &mut Conn, key: &str, name: &str) {
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(key)
        .arg(name)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await
        .unwrap();
}

/// Reads `n` entries for `group` (they become pending); returns their ids.
async fn read(conn: &mut Conn, key: &str, group: &str, n: usize) -> Vec<String> {
    let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(group)
        .arg("c1")
        .arg("COUNT")
        .arg(n)
        .arg("STREAMS")
        .arg(key)
        .arg(">")
        .query_async(conn)
        .await
        .unwrap();
    reply
        .keys
        .into_iter()
        .flat_map(|k| k.ids.into_iter().map(|e| e.id))
        .collect()
}

async fn ack(conn: &mut Conn, key: &str, group: &str, ids: &[String]) {
    for chunk in ids.chunks(500) {
        let _: i64 = redis::cmd("XACK")
            .arg(key)
            .arg(group)
            .arg(chunk)
            .query_async(conn)
            .await
            .unwrap();
    }
}

async fn len(conn: &mut Conn, key: &str) -> u64 {
    redis::cmd("XLEN").arg(key).query_async(conn).await.unwrap()
}

#[tokio::test]
async fn only_what_every_group_acknowledged_is_trimmed() {
    let ctx = Ctx::new().await;
    let key = ctx.ns.stream_at(Stream::Orders, 0);
    let mut conn = ctx.conn.clone();
    let trimmer = Trimmer::new(
        conn.clone(),
        &ctx.ns,
        &[Stream::Orders],
        TrimSettings::default(),
    );

    // Nobody reads it yet: nothing goes.
    ctx.publish_many(Stream::Orders, 1000).await;
    let t = trimmer.trim(&key).await.unwrap();
    assert_eq!((t.floor, t.removed, t.length), (None, 0, 1000));

    // `fast` reads and acknowledges everything; `slow` read 300, acknowledged
    // the first 200, holds 100 pending, and has 700 unread.
    group(&mut conn, &key, "fast").await;
    group(&mut conn, &key, "slow").await;
    let all = read(&mut conn, &key, "fast", 1000).await;
    ack(&mut conn, &key, "fast", &all).await;
    let slow = read(&mut conn, &key, "slow", 300).await;
    ack(&mut conn, &key, "slow", &slow[..200]).await;

    let t = trimmer.trim(&key).await.unwrap();
    assert_eq!(t.held_by.as_deref(), Some("slow"));
    assert_eq!(t.floor.as_deref(), Some(slow[200].as_str()));
    assert!(
        t.length >= 800,
        "kept {} of the 800 slow still needs",
        t.length
    );
    assert!(t.removed <= 200);

    // Everything `slow` still needs is there: its 100 pending entries can be
    // claimed (none was trimmed from under the PEL) and its 700 unread read.
    let claimed: redis::streams::StreamClaimReply = redis::cmd("XCLAIM")
        .arg(&key)
        .arg("slow")
        .arg("c2")
        .arg(0)
        .arg(&slow[200..])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(claimed.ids.len(), 100);
    let rest = read(&mut conn, &key, "slow", 1000).await;
    assert_eq!(rest.len(), 700);
    assert_eq!(rest.last(), all.last());

    // Once `slow` acknowledged everything, the stream can go (approximately:
    // whole radix-tree nodes only, so a few may stay).
    ack(&mut conn, &key, "slow", &slow[200..]).await;
    ack(&mut conn, &key, "slow", &rest).await;
    let t = trimmer.trim(&key).await.unwrap();
    assert!(t.length < 200, "kept {} acknowledged entries", t.length);
    let left = len(&mut conn, &key).await;
    assert_eq!(left, t.length);
}

#[tokio::test]
async fn at_the_memory_ceiling_publishing_fails_loudly_and_drops_nothing() {
    let redis = testkit::RedisServer::start().await;
    let ctx = Ctx::on(&redis, &[]).await;
    let key = ctx.ns.stream_at(Stream::Orders, 0);
    let mut conn = ctx.conn.clone();
    ctx.publish_many(Stream::Orders, 100).await;
    redis.memory_ceiling(Some(64 * 1024)).await;
    // Publish until Redis refuses: it must refuse, not evict.
    let event = Envelope::new(
        OrderCreated::TYPE,
        "o-x",
        "c",
        "test",
        &serde_json::json!({ "pad": "x".repeat(2000) }),
    )
    .unwrap();
    let mut accepted = 0;
    let refusal = loop {
        match ctx.publisher.publish(Stream::Orders, &event).await {
            Ok(_) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 10_000, "Redis never refused");
    };
    assert!(refusal.to_string().contains("OOM"), "{refusal}");
    assert_eq!(
        len(&mut conn, &key).await,
        100 + accepted,
        "an entry was dropped"
    );
    redis.memory_ceiling(None).await;
    ctx.publisher.publish(Stream::Orders, &event).await.unwrap();
}
