//! Publishing events: XADD, without trimming.
//!
//! Streams are trimmed only below what every consumer group is done with
//! (see [`crate::trim`]), never by the publisher: a `MAXLEN` here would drop
//! entries a group that is down has not read yet. Memory is bounded by
//! Redis's `maxmemory` with `noeviction`: at the ceiling every `XADD` fails
//! (`OOM command not allowed`), the caller (the outbox relay) keeps the
//! event and tries again, and nothing is dropped.
//!
//! # Replication
//!
//! Redis replicates asynchronously: an `XADD` a primary acknowledged is lost
//! if that primary dies before its replica has it and the replica is
//! promoted. With [`Replication::min_replicas`] above zero, every
//! [`Publisher::publish_all`] pipeline ends with `WAIT <n> <timeout>` (in the
//! same pipeline, so on the same connection and, in a cluster, on the node
//! that took the writes), and fails with [`NOT_REPLICATED`] when fewer
//! replicas acknowledged: the outbox relay then keeps the events and
//! publishes them again later (a duplicate message, never a lost one).

use std::time::Duration;

use contract::redis::Conn;
use redis::ToRedisArgs;

use contract::{
    Envelope,
    streams::{Namespace, Stream},
};

/// How many replicas must have a pipeline's writes before it counts as
/// published (`REDIS_MIN_REPLICAS_ACKED`, `REDIS_WAIT_TIMEOUT_MS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replication {
    /// Replicas that must acknowledge (0: do not wait).
    pub min_replicas: u32,
    /// Longest wait for them.
    pub timeout: Duration,
}

impl Default for Replication {
    fn default() -> Self {
        Self {
            min_replicas: 0,
            timeout: Duration::from_millis(1000),
        }
    }
}

/// The detail of the error [`Publisher::publish_all`] returns when fewer
/// replicas than required acknowledged its writes.
pub const NOT_REPLICATED: &str = "not replicated";

/// Whether `e` says a publish was not replicated (see [`NOT_REPLICATED`]).
pub fn is_not_replicated(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::Client && e.to_string().contains(NOT_REPLICATED)
}

/// Publishes envelopes to the streams of one namespace.
#[derive(Clone)]
pub struct Publisher {
    conn: Conn,
    ns: Namespace,
    replication: Replication,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").field("ns", &self.ns).finish()
    }
}

impl Publisher {
    /// A publisher to the streams of `ns`.
    pub fn new(conn: Conn, ns: Namespace) -> Self {
        Self {
            conn,
            ns,
            replication: Replication::default(),
        }
    }

    /// The same publisher, with [`Publisher::publish_all`] waiting for
    /// replicas as `replication` says.
    #[must_use]
    pub fn with_replication(mut self, replication: Replication) -> Self {
        self.replication = replication;
        self
    }

    /// The namespace events are published in.
    pub fn namespace(&self) -> &Namespace {
        &self.ns
    }

    /// Appends one event to its partition of `stream`; returns the new
    /// entry id.
    pub async fn publish(&self, stream: Stream, event: &Envelope) -> redis::RedisResult<String> {
        let key = self.ns.stream_for(stream, &event.key);
        let id = self
            .xadd(&key, &event.to_fields())
            .query_async(&mut self.conn.clone())
            .await?;
        metrics::counter!("events_published_total", "stream" => stream.name()).increment(1);
        Ok(id)
    }

    /// Appends several events, each to its partition, in the given order
    /// within each partition; returns their ids. One round trip on one
    /// Redis; on a cluster one pipeline per partition (a pipeline must stay
    /// in one slot), sent together. Not atomic: on error some may have been
    /// written. With a [`Replication`], each pipeline waits for the
    /// replicas of the node that took it, and too few is an error
    /// ([`is_not_replicated`]) although the events were written.
    pub async fn publish_all(
        &self,
        events: &[(Stream, &Envelope)],
    ) -> redis::RedisResult<Vec<String>> {
        let keyed: Vec<(String, &Envelope)> = events
            .iter()
            .map(|(stream, e)| (self.ns.stream_for(*stream, &e.key), *e))
            .collect();
        let ids = if matches!(self.conn, Conn::Cluster(_)) && self.ns.partitions() > 1 {
            // Indexes of the events of each partition, in order.
            let mut parts: Vec<(u16, Vec<usize>)> = Vec::new();
            for (i, (_, e)) in keyed.iter().enumerate() {
                let p = self.ns.partition_of(&e.key);
                match parts.iter_mut().find(|(q, _)| *q == p) {
                    Some((_, idx)) => idx.push(i),
                    None => parts.push((p, vec![i])),
                }
            }
            let sent = futures::future::join_all(parts.iter().map(|(_, idx)| {
                let part: Vec<(String, &Envelope)> =
                    idx.iter().map(|i| keyed[*i].clone()).collect();
                async move { self.pipeline(&part).await }
            }))
            .await;
            let mut ids = vec![String::new(); keyed.len()];
            for ((_, idx), result) in parts.iter().zip(sent) {
                for (i, id) in idx.iter().zip(result?) {
                    ids[*i] = id;
                }
            }
            ids
        } else {
            self.pipeline(&keyed).await?
        };
        for (stream, _) in events {
            metrics::counter!("events_published_total", "stream" => stream.name()).increment(1);
        }
        Ok(ids)
    }

    /// One pipeline of `XADD`s (and the `WAIT`, if any).
    async fn pipeline(&self, events: &[(String, &Envelope)]) -> redis::RedisResult<Vec<String>> {
        let mut pipe = redis::pipe();
        for (key, event) in events {
            pipe.add_command(self.xadd(key, &event.to_fields()));
        }
        let Replication {
            min_replicas,
            timeout,
        } = self.replication;
        if min_replicas == 0 || events.is_empty() {
            return pipe.query_async(&mut self.conn.clone()).await;
        }
        pipe.cmd("WAIT")
            .arg(min_replicas)
            .arg(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        let mut replies: Vec<redis::Value> = pipe.query_async(&mut self.conn.clone()).await?;
        let acked = replies
            .pop()
            .and_then(|v| contract::redis::int(&v).ok())
            .unwrap_or(0);
        if acked < i64::from(min_replicas) {
            metrics::counter!("publish_unreplicated_total").increment(1);
            return Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                NOT_REPLICATED,
                format!("WAIT: {acked} of {min_replicas} replicas acknowledged within {timeout:?}"),
            )));
        }
        replies
            .iter()
            .map(|v| {
                contract::redis::text(v).map_err(|e| {
                    redis::RedisError::from((redis::ErrorKind::Parse, "XADD reply", e.to_string()))
                })
            })
            .collect()
    }

    /// Appends raw fields to any key of this namespace (replays, tests).
    pub async fn publish_fields<K: ToRedisArgs, V: ToRedisArgs>(
        &self,
        key: &str,
        fields: &[(K, V)],
    ) -> redis::RedisResult<String> {
        self.xadd(key, fields)
            .query_async(&mut self.conn.clone())
            .await
    }

    fn xadd<K: ToRedisArgs, V: ToRedisArgs>(&self, key: &str, fields: &[(K, V)]) -> redis::Cmd {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(key).arg("*");
        for (k, v) in fields {
            cmd.arg(k).arg(v);
        }
        cmd
    }
}
