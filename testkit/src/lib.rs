//! Real servers for the test suite: Redis and MongoDB, started on free ports
//! by the tests themselves. Nothing is mocked and nothing already running is
//! assumed.
//!
//! * [`shared_redis`] / [`shared_mongo`]: one server of each per test process,
//!   started on first use. Tests isolate themselves with [`unique`] names (a
//!   stream prefix, a database name), not with servers.
//! * [`RedisServer::start`] / [`MongoServer::start`]: a private server, for
//!   tests that stop, kill or restart it. It is killed when dropped.
//! * [`publish`]: a test event on a stream, for the tests of the consumer
//!   loop and of the dead-letter CLI.
//! * [`http`]: a service's router called in process, for its 4xx behaviour.
//! * [`schemas`]: what the system sends, checked against the documents
//!   generated from the code (OpenAPI per service, the contract's schemas).
//!
//! Both servers are one child-process type, [`Server`] ([`process`]):
//! spawned with `PR_SET_PDEATHSIG` from one long-lived thread, so the kernel
//! kills them when the test process exits, however it ends; every wait is
//! asynchronous. Data lives under `$TMPDIR/foodchain-tests/<pid>-<n>`;
//! directories of dead test processes are removed on the next run. MongoDB is
//! a real `mongod` when one is on `PATH`, otherwise SecantusDB (see [`mongo`]);
//! `scripts/infra.sh deps` installs both servers.

#![allow(unsafe_code)] // one `prctl` call in `pre_exec` and `kill(2)`, see `process`

pub mod http;
pub mod mongo;
pub mod process;
pub mod redis;
pub mod schemas;

use std::{
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use common::publisher::Publisher;
use contract::{
    Envelope, StreamEntry,
    events::{DecodeError, StreamEvent},
    streams::{Namespace, Stream},
};
use tokio::sync::OnceCell;

pub use crate::{
    mongo::{MongoImpl, MongoOptions, MongoServer, find_mongo},
    process::{Launch, Server, free_port},
    redis::{RedisCluster, RedisOptions, RedisServer},
};

/// The whole flow of one order as a tracker sees it, `kind:status` labels in
/// order: what every end-to-end test and the chaos checker expect a complete
/// timeline to be. The contract's tracking flow spelled out (a test keeps
/// them equal), so that tests compare against literal text.
pub const FULL_FLOW: [&str; 8] = [
    "order:created",
    "order:confirmed",
    "order:preparing",
    "order:out_for_delivery",
    "delivery:waiting_for_pickup",
    "delivery:on_the_way",
    "delivery:delivered",
    "order:delivered",
];

/// Whether `labels` (`kind:status`, in order) is a whole timeline: the full
/// flow, or the start of it ended by one of the order's exits at a status it
/// may leave from (`created → confirmed → cancelled`, `created → rejected`).
/// Derived from the contract's exits, so a new exit is accepted everywhere.
pub fn is_complete_timeline<S: AsRef<str>>(labels: &[S]) -> bool {
    use contract::status::{Lifecycle, OrderStatus};
    let labels: Vec<&str> = labels.iter().map(AsRef::as_ref).collect();
    if labels == FULL_FLOW {
        return true;
    }
    let Some((last, before)) = labels.split_last() else {
        return false;
    };
    OrderStatus::EXITS.iter().any(|(exit, from)| {
        *last == format!("order:{}", exit.as_str())
            && from.iter().any(|f| {
                FULL_FLOW
                    .iter()
                    .position(|l| *l == format!("order:{}", f.as_str()))
                    .is_some_and(|at| before == &FULL_FLOW[..=at])
            })
    })
}

/// Polls `check` every 20 ms until it returns `Some`, or fails the test
/// (panics) naming `what`: how tests wait for a condition instead of sleeping.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A name no other test (in this run or a concurrent one) uses: `<prefix>-<pid>-<n>-<rand>`.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}-{:04x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        rand::random::<u16>()
    )
}

/// A unique database name (MongoDB forbids `-` nowhere, but `_` reads better).
pub fn unique_db(prefix: &str) -> String {
    unique(prefix).replace('-', "_")
}

/// The per-process Redis.
pub async fn shared_redis() -> &'static RedisServer {
    static S: OnceCell<RedisServer> = OnceCell::const_new();
    S.get_or_init(RedisServer::start).await
}

/// The per-process Redis Cluster: 3 primaries with a replica each (the
/// services wait for one replica per publish on a cluster by default).
pub async fn shared_redis_cluster() -> &'static redis::RedisCluster {
    static S: OnceCell<redis::RedisCluster> = OnceCell::const_new();
    S.get_or_init(|| redis::RedisCluster::start(3, 1)).await
}

/// The variable that puts the suite on a Redis Cluster: with
/// `FOODCHAIN_TEST_REDIS=cluster`, [`redis_url`] is the shared cluster's.
pub const TEST_REDIS_VAR: &str = "FOODCHAIN_TEST_REDIS";

/// Whether this run puts the tests on a Redis Cluster ([`TEST_REDIS_VAR`]).
pub fn on_cluster() -> bool {
    std::env::var(TEST_REDIS_VAR).is_ok_and(|v| v == "cluster")
}

/// The Redis the tests that share one use: the per-process Redis, or with
/// `FOODCHAIN_TEST_REDIS=cluster` the per-process Redis Cluster (a list of
/// node URLs), so that the same tests run on both.
pub async fn redis_url() -> String {
    if on_cluster() {
        shared_redis_cluster().await.url()
    } else {
        shared_redis().await.url()
    }
}

/// Every entry of every partition of `stream` in `ns`, in the order of
/// their ids (each order's events are in one partition, in order).
pub async fn stream_entries(
    conn: &contract::redis::Conn,
    ns: &Namespace,
    stream: Stream,
) -> Vec<StreamEntry> {
    let mut all = Vec::new();
    for key in ns.stream_keys(stream) {
        all.extend(stream_entries_at(conn, &key).await);
    }
    all.sort_by_key(|e| contract::entry::id_parts(&e.id));
    all
}

/// Every entry of the stream at `key`, in order.
pub async fn stream_entries_at(conn: &contract::redis::Conn, key: &str) -> Vec<StreamEntry> {
    let v: ::redis::Value = ::redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(&mut conn.clone())
        .await
        .expect("XRANGE");
    contract::redis::entries(v).expect("stream entries")
}

/// `FOODCHAIN_TEST_PARTITIONS`: partitions of every stream in the tests
/// that honour it (the end-to-end suite; default 1).
pub const TEST_PARTITIONS_VAR: &str = "FOODCHAIN_TEST_PARTITIONS";

/// The partitions the tests run their systems with (see
/// [`TEST_PARTITIONS_VAR`]).
pub fn partitions() -> u16 {
    std::env::var(TEST_PARTITIONS_VAR)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// The per-process MongoDB.
pub async fn shared_mongo() -> &'static MongoServer {
    static S: OnceCell<MongoServer> = OnceCell::const_new();
    S.get_or_init(MongoServer::start).await
}

/// Publishes a test event of `event_type` with ordering key `key` (payload
/// `{"key": key}`, correlation id `corr-<key>`, source `test`) to `stream`.
pub async fn publish(
    publisher: &Publisher,
    stream: Stream,
    key: &str,
    event_type: &str,
) -> Envelope {
    let e = Envelope::new(
        event_type,
        key,
        format!("corr-{key}"),
        "test",
        &serde_json::json!({ "key": key }),
    )
    .expect("a test payload serialises");
    publisher
        .publish(stream, &e)
        .await
        .expect("publish a test event");
    e
}

/// An event of any type, for tests of the consumer loop itself (which build
/// their consumers by hand, on any stream): decoding always succeeds, and the
/// handler reads what it needs from the envelope. Real consumers decode into
/// their stream's enum instead (`contract::events`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnyEvent;

impl StreamEvent for AnyEvent {
    const STREAM: Stream = Stream::Orders;

    fn types() -> Vec<&'static str> {
        Vec::new()
    }

    fn decode(_: &Envelope) -> Result<Self, DecodeError> {
        Ok(Self)
    }

    fn event_type(&self) -> &'static str {
        "any"
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn full_flow_is_the_contracts_tracking_flow() {
        let labels: Vec<String> = contract::status::tracking_flow()
            .iter()
            .map(|s| s.label())
            .collect();
        assert_eq!(labels, super::FULL_FLOW);
    }

    #[test]
    fn complete_timelines_are_the_flow_or_an_allowed_exit() {
        use super::is_complete_timeline as complete;
        assert!(complete(&super::FULL_FLOW));
        assert!(complete(&["order:created", "order:cancelled"]));
        assert!(complete(&[
            "order:created",
            "order:confirmed",
            "order:preparing",
            "order:cancelled"
        ]));
        assert!(complete(&["order:created", "order:rejected"]));
        assert!(!complete(&[
            "order:created",
            "order:confirmed",
            "order:rejected"
        ]));
        assert!(!complete(&["order:confirmed", "order:cancelled"]));
        assert!(!complete(&super::FULL_FLOW[..4]));
        assert!(!complete(&[
            "order:created",
            "order:confirmed",
            "order:preparing",
            "order:out_for_delivery",
            "order:cancelled"
        ]));
        assert!(!complete::<&str>(&[]));
    }
}
