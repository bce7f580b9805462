//! The `dlq` binary against real Redis, on dead letters made by the real
//! consumer loop.

// Test code fails by panicking.
#![allow(clippy::unwrap_used)]

use std::{
    collections::HashSet,
    process::{Command, Output, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{
    consumer::{Consumer, ConsumerConfig, Handler, HandlerError, Message, Outcome},
    publisher::Publisher,
    settings::{CommonSettings, Env},
};
use contract::{
    Envelope,
    events::{DeliveryCreated, Event, OrderCreated},
    redis as redis_conn,
    streams::{Stream, groups},
};
use testkit::AnyEvent;

const ORDER_CREATED_V1: &str = OrderCreated::TYPE;
const DELIVERY_CREATED_V1: &str = DeliveryCreated::TYPE;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// Fails every message whose key is in `failing`; records what succeeded.
#[derive(Clone, Default)]
struct Switchable {
    failing: Arc<Mutex<HashSet<String>>>,
    /// (key, event id, attempt) of each success.
    handled: Arc<Mutex<Vec<(String, String, u32)>>>,
}

impl Handler<AnyEvent> for Switchable {
    async fn handle(&self, msg: &Message<AnyEvent>) -> Result<Outcome, HandlerError> {
        let key = msg.envelope.key.clone();
        if self.failing.lock().unwrap().contains(&key) {
            let error = if key == "a" {
                "kitchen on FIRE"
            } else {
                "no such order"
            };
            return Err(HandlerError::retry(error));
        }
        self.handled
            .lock()
            .unwrap()
            .push((key, msg.envelope.event_id.to_string(), msg.attempt));
        Ok(Outcome::Done)
    }
}

struct World {
    settings: CommonSettings,
    conn: redis_conn::Conn,
    publisher: Publisher,
    handlers: [Switchable; 2],
    token: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl World {
    async fn new() -> Self {
        Self::partitioned(testkit::partitions()).await
    }

    /// With the streams in `partitions` partitions.
    async fn partitioned(partitions: u16) -> Self {
        let prefix = format!("{}:", testkit::unique("dlq"));
        let mut env = Env::from_map([
            ("REDIS_URL", testkit::redis_url().await),
            ("STREAM_PREFIX", prefix),
            ("STREAM_PARTITIONS", partitions.to_string()),
            ("CONSUMER_BLOCK_MS", "100".into()),
            ("RECLAIM_MIN_IDLE_MS", "400".into()),
            ("RECLAIM_INTERVAL_MS", "50".into()),
            ("RETRY_BACKOFF_MS", "10".into()),
            ("HANDLER_TIMEOUT_MS", "300".into()),
            ("MAX_ATTEMPTS", "3".into()),
        ]);
        let settings = CommonSettings::from_env(&mut env, "dlq-test");
        env.finish().unwrap();
        let client = redis_conn::client(settings.redis_url.expose()).unwrap();
        let conn = redis_conn::commands(&client).unwrap();
        let publisher = Publisher::new(conn.clone(), settings.namespace());
        let handlers = [Switchable::default(), Switchable::default()];
        let token = CancellationToken::new();
        let mut tasks = Vec::new();
        for (stream, group, h) in [
            (Stream::Orders, groups::DELIVERY_SVC, &handlers[0]),
            (Stream::Deliveries, groups::NOTIFY_SVC, &handlers[1]),
        ] {
            for p in settings.namespace().partition_range() {
                let cfg = ConsumerConfig::new(&settings, stream, group, p);
                let consumer = Consumer::new(&client, cfg, h.clone()).unwrap();
                tasks.push(tokio::spawn(consumer.run(token.clone())));
            }
        }
        Self {
            settings,
            conn,
            publisher,
            handlers,
            token,
            tasks,
        }
    }

    async fn publish(&self, stream: Stream, key: &str, event_type: &str) -> Envelope {
        testkit::publish(&self.publisher, stream, key, event_type).await
    }

    fn dlq(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_dlq"))
            .args([
                "--redis-url",
                self.settings.redis_url.expose(),
                "--prefix",
                &self.settings.stream_prefix,
                "--partitions",
                &self.settings.stream_partitions.to_string(),
            ])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `dlq list --json` with extra args, parsed.
    fn list(&self, args: &[&str]) -> Vec<Value> {
        let mut all = vec!["list", "--json"];
        all.extend_from_slice(args);
        let out = self.dlq(&all);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON lines"))
            .collect()
    }

    async fn wait_dead_letters(&self, n: usize) {
        for _ in 0..500 {
            let mut len = 0;
            for key in self.settings.namespace().stream_keys(Stream::DeadLetters) {
                len += redis::cmd("XLEN")
                    .arg(&key)
                    .query_async::<usize>(&mut self.conn.clone())
                    .await
                    .unwrap();
            }
            if len >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("fewer than {n} dead letters");
    }

    /// Every entry of a stream (all partitions, by id).
    async fn range(&self, stream: Stream) -> Vec<contract::StreamEntry> {
        testkit::stream_entries(&self.conn, &self.settings.namespace(), stream).await
    }

    /// The last partition (the only one, with one partition).
    fn last_partition(&self) -> u16 {
        self.settings.stream_partitions - 1
    }

    /// Dead letters of a poison order event (a), a malformed message (b) and
    /// a poison delivery event (c), in that order.
    async fn with_three_dead_letters() -> (Self, [Envelope; 2]) {
        Self::three_dead_letters(Self::new().await).await
    }

    async fn three_dead_letters(w: Self) -> (Self, [Envelope; 2]) {
        w.handlers[0].failing.lock().unwrap().insert("a".into());
        w.handlers[1].failing.lock().unwrap().insert("c".into());
        let a = w.publish(Stream::Orders, "a", ORDER_CREATED_V1).await;
        w.wait_dead_letters(1).await;
        w.publisher
            .publish_fields(
                &w.settings
                    .namespace()
                    .stream_at(Stream::Orders, w.last_partition()),
                &[("garbage", "x")],
            )
            .await
            .unwrap();
        w.wait_dead_letters(2).await;
        let c = w
            .publish(Stream::Deliveries, "c", DELIVERY_CREATED_V1)
            .await;
        w.wait_dead_letters(3).await;
        (w, [a, c])
    }

    async fn stop(self) {
        self.token.cancel();
        for t in self.tasks {
            t.await.unwrap();
        }
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filter_show_and_json() {
    let (w, [a, c]) = World::with_three_dead_letters().await;

    let all = w.list(&[]);
    assert_eq!(all.len(), 3);
    // Newest first, by the time in the id (`p<i>/` names the partition).
    let ids: Vec<(u64, u64)> = all
        .iter()
        .map(|d| {
            let id = d["id"].as_str().unwrap();
            contract::entry::id_parts(id.rsplit('/').next().unwrap()).unwrap()
        })
        .collect();
    assert!(ids[0] > ids[1] && ids[1] > ids[2], "newest first: {ids:?}");
    assert_eq!(all[0]["event_id"], c.event_id.to_string());
    assert_eq!(all[2]["event_id"], a.event_id.to_string());
    assert_eq!(
        all[2]["envelope"]["payload"]["key"], "a",
        "the original envelope is included"
    );
    assert_eq!(
        (all[2]["reason"].as_str(), all[2]["attempts"].as_u64()),
        (Some("max_attempts"), Some(3))
    );

    let only = |args: &[&str]| -> Vec<String> {
        w.list(args)
            .iter()
            .map(|d| d["origin_id"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    let origin = |d: &Value| d["origin_id"].as_str().unwrap().to_owned();
    assert_eq!(only(&["--stream", "deliveries-stream"]), [origin(&all[0])]);
    assert_eq!(
        only(&["--group", "delivery-svc"]),
        [origin(&all[1]), origin(&all[2])]
    );
    assert_eq!(only(&["--event-type", ORDER_CREATED_V1]), [origin(&all[2])]);
    assert_eq!(only(&["--error", "fire"]), [origin(&all[2])]);
    assert_eq!(only(&["--reason", "malformed"]), [origin(&all[1])]);
    assert_eq!(only(&["--since", "1h"]).len(), 3);
    assert!(only(&["--until", "1h"]).is_empty());
    assert_eq!(only(&["--limit", "1"]), [origin(&all[0])]);

    let table = stdout(&w.dlq(&["list"]));
    assert!(
        table.starts_with("ID")
            && table.contains("max_attempts")
            && table.contains("kitchen on FIRE"),
        "{table}"
    );

    let a_id = all[2]["id"].as_str().unwrap();
    let shown = w.dlq(&["show", a_id]);
    assert!(shown.status.success());
    let text = stdout(&shown);
    for needle in [
        "orders-stream",
        "delivery-svc",
        "max_attempts after 3 attempt(s)",
        "kitchen on FIRE",
        &a.event_id.to_string(),
        "\"correlation_id\": \"corr-a\"",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    let json: Value = serde_json::from_slice(&w.dlq(&["show", a_id, "--json"]).stdout).unwrap();
    assert_eq!(json["group"], "delivery-svc");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_clear_and_exit_codes_distinct() {
    let w = World::new().await;
    let unknown = w.dlq(&["show", "1-1"]);
    assert_eq!(unknown.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no dead letter with id 1-1"));

    let down = Command::new(env!("CARGO_BIN_EXE_dlq"))
        .args([
            "--redis-url",
            &format!("redis://:hunter2@127.0.0.1:{}", testkit::free_port()),
            "list",
        ])
        .output()
        .unwrap();
    assert_eq!(down.status.code(), Some(1));
    let err = String::from_utf8_lossy(&down.stderr);
    assert!(err.contains("Redis at redis://***@127.0.0.1"), "{err}");
    assert!(!err.contains("hunter2"), "passwords are never printed");

    // An entry of the dead-letter stream that is not a dead letter.
    let ns = w.settings.namespace();
    let key = ns.stream_at(Stream::DeadLetters, w.last_partition());
    let id: String = redis::cmd("XADD")
        .arg(&key)
        .arg("*")
        .arg("junk")
        .arg("\u{1}")
        .query_async(&mut w.conn.clone())
        .await
        .unwrap();
    // As the CLI names it (`p<i>/<id>` with several partitions).
    let id = ns.entry_ref(w.last_partition(), &id);
    let table = stdout(&w.dlq(&["list"]));
    assert!(table.contains("MALFORMED"), "{table}");
    let shown = w.dlq(&["show", &id]);
    assert_eq!(shown.status.code(), Some(4));
    assert!(stdout(&shown).contains("junk"), "shown raw");
    assert_eq!(w.dlq(&["list", "--wrong-flag"]).status.code(), Some(2));
    for sub in ["list", "show", "replay", "purge", "stats"] {
        let help = w.dlq(&[sub, "--help"]);
        assert!(
            help.status.success() && stdout(&help).contains("Usage"),
            "{sub} --help"
        );
    }
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_message_is_consumed_once_its_handler_works() {
    let (w, [a, c]) = World::with_three_dead_letters().await;
    let a_dl = w.list(&["--event-type", ORDER_CREATED_V1]).remove(0);
    let a_id = a_dl["id"].as_str().unwrap().to_owned();

    // Dry run: nothing changes.
    let dry = stdout(&w.dlq(&["replay", "--all", "--dry-run"]));
    assert!(dry.contains("would replay 3 of 3"), "{dry}");
    assert_eq!(w.list(&[]).len(), 3);

    // The cause is fixed; the message goes back and is handled.
    w.handlers[0].failing.lock().unwrap().clear();
    let out = w.dlq(&["replay", &a_id]);
    assert!(
        out.status.success() && stdout(&out).contains("replayed 1 of 1"),
        "{}",
        stdout(&out)
    );
    for _ in 0..250 {
        if !w.handlers[0].handled.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let handled = w.handlers[0].handled.lock().unwrap().clone();
    assert_eq!(
        handled,
        [("a".to_owned(), a.event_id.to_string(), 1)],
        "same event id, handled once"
    );
    assert!(
        w.list(&[]).iter().all(|d| d["id"] != a_id.as_str()),
        "removed from the dead letters"
    );
    let copies: Vec<_> = w
        .range(Stream::Orders)
        .await
        .into_iter()
        .filter(|e| e.get_str("replay_count").is_some())
        .collect();
    assert_eq!(copies.len(), 1);
    assert_eq!(
        copies[0].get_str("event_id"),
        Some(a.event_id.to_string().as_str())
    );

    // Replaying it again does nothing.
    assert_eq!(w.dlq(&["replay", &a_id]).status.code(), Some(3));
    assert_eq!(
        w.range(Stream::Orders)
            .await
            .iter()
            .filter(|e| e.get_str("replay_count").is_some())
            .count(),
        1
    );

    // Replayed while still broken: it dies again, and says it was replayed.
    let c_id = w.list(&["--stream", "deliveries-stream"])[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(w.dlq(&["replay", &c_id]).status.success());
    w.wait_dead_letters(2).await;
    let again = w.list(&["--stream", "deliveries-stream"]).remove(0);
    assert_ne!(again["id"], c_id.as_str());
    assert_eq!(again["event_id"], c.event_id.to_string());
    assert_eq!(again["fields"]["replay_count"], "1");
    assert_eq!(
        again["replays"],
        Value::Null,
        "list does not look replays up"
    );
    let shown: Value = serde_json::from_slice(
        &w.dlq(&["show", again["id"].as_str().unwrap(), "--json"])
            .stdout,
    )
    .unwrap();
    assert_eq!(shown["replays"]["count"], 1);

    // The malformed one cannot go back.
    let b_id = w.list(&["--reason", "malformed"])[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = stdout(&w.dlq(&["replay", &b_id]));
    assert!(
        b.contains("replayed 1 of 1"),
        "a dead-lettered malformed message is replayed verbatim: {b}"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_asks_first_and_stats_count() {
    let (w, _) = World::with_three_dead_letters().await;
    let stats: Value = serde_json::from_slice(&w.dlq(&["stats", "--json"]).stdout).unwrap();
    assert_eq!(stats["total"], 3);
    assert_eq!(
        stats["by_stream"],
        serde_json::json!([["orders-stream", 2], ["deliveries-stream", 1]])
    );
    assert_eq!(
        stats["by_group"],
        serde_json::json!([["delivery-svc", 2], ["notify-svc", 1]])
    );
    assert_eq!(
        stats["by_reason"],
        serde_json::json!([["max_attempts", 2], ["malformed", 1]])
    );
    assert!(
        stats["by_event_type"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!([ORDER_CREATED_V1, 1]))
    );
    assert!(stats["top_errors"][0][0].as_str().is_some());
    assert!(stats["oldest_ms"].as_u64() <= stats["newest_ms"].as_u64());
    assert!(stdout(&w.dlq(&["stats"])).contains("by event type:"));

    let first = w.list(&[]).remove(0);
    let id = first["id"].as_str().unwrap();
    let refused = w.dlq(&["purge", id]);
    assert_eq!(
        refused.status.code(),
        Some(5),
        "no --yes and no terminal: nothing deleted"
    );
    assert_eq!(w.list(&[]).len(), 3);
    assert!(stdout(&w.dlq(&["purge", id, "--yes"])).contains("purged 1"));
    assert_eq!(w.list(&[]).len(), 2);
    assert!(stdout(&w.dlq(&["purge", "--older-than", "1h", "--yes"])).contains("nothing to purge"));
    let purged = stdout(&w.dlq(&[
        "purge",
        "--older-than",
        "0s",
        "--reason",
        "malformed",
        "--yes",
    ]));
    assert!(purged.contains("purged 1"), "{purged}");
    assert_eq!(w.list(&[]).len(), 1);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_partition_count_it_reads_the_one_the_services_recorded() {
    let (w, _) = World::three_dead_letters(World::partitioned(3).await).await;
    let (url, prefix) = (w.settings.redis_url.expose(), &w.settings.stream_prefix);
    let list = || {
        let out = Command::new(env!("CARGO_BIN_EXE_dlq"))
            .args(["--redis-url", url, "--prefix", prefix, "list", "--json"])
            .env_remove("STREAM_PARTITIONS")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        stdout(&out).lines().count()
    };
    // Nothing recorded: one partition, where none of the three letters is.
    assert_eq!(list(), 0);
    common::partition::check_recorded(&mut w.conn.clone(), prefix, 3)
        .await
        .unwrap();
    assert_eq!(list(), 3, "every partition's dead letters");
    w.stop().await;
}
