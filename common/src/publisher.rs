//! Publishing events: XADD, without trimming.
//!
//! Streams are trimmed only below what every consumer group is done with
//! (see [`crate::trim`]), never by the publisher: a `MAXLEN` here would drop
//! entries a group that is down has not read yet. Memory is bounded by
//! Redis's `maxmemory` with `noeviction`: at the ceiling every `XADD` fails
//! (`OOM command not allowed`), the caller (the outbox relay) keeps the
//! event and tries again, and nothing is dropped.

use contract::redis::Conn;
use redis::ToRedisArgs;

use contract::{
    Envelope,
    streams::{Namespace, Stream},
};

/// Publishes envelopes to the streams of one namespace.
#[derive(Clone)]
pub struct Publisher {
    conn: Conn,
    ns: Namespace,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").field("ns", &self.ns).finish()
    }
}

impl Publisher {
    /// A publisher to the streams of `ns`.
    pub fn new(conn: Conn, ns: Namespace) -> Self {
        Self { conn, ns }
    }

    /// The namespace events are published in.
    pub fn namespace(&self) -> &Namespace {
        &self.ns
    }

    /// Appends one event to `stream`; returns the new entry id.
    pub async fn publish(&self, stream: Stream, event: &Envelope) -> redis::RedisResult<String> {
        let key = self.ns.stream(stream);
        let id = self
            .xadd(&key, &event.to_fields())
            .query_async(&mut self.conn.clone())
            .await?;
        metrics::counter!("events_published_total", "stream" => stream.name()).increment(1);
        Ok(id)
    }

    /// Appends several events in one round trip, in the given order; returns
    /// their ids. Not atomic: on error a prefix may have been written.
    pub async fn publish_all(
        &self,
        events: &[(Stream, &Envelope)],
    ) -> redis::RedisResult<Vec<String>> {
        let mut pipe = redis::pipe();
        for (stream, event) in events {
            pipe.add_command(self.xadd(&self.ns.stream(*stream), &event.to_fields()));
        }
        let ids: Vec<String> = pipe.query_async(&mut self.conn.clone()).await?;
        for (stream, _) in events {
            metrics::counter!("events_published_total", "stream" => stream.name()).increment(1);
        }
        Ok(ids)
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
