//! Publishing events: XADD with approximate MAXLEN trimming.
//!
//! `MAXLEN ~ N` lets Redis trim whole radix-tree nodes lazily, which is much
//! cheaper than exact trimming; a stream may hold a few more than N entries.
//! Trimming bounds memory, so N must exceed what a consumer group can lag
//! behind by: an entry trimmed before a group read it is lost to that group
//! (the `consumer_group_lag` metric shows how close a group gets). The
//! dead-letter stream is never trimmed.

use redis::{ToRedisArgs, aio::ConnectionManager};

use contract::{
    Envelope,
    streams::{Namespace, Stream},
};

/// Publishes envelopes to the streams of one namespace.
#[derive(Clone)]
pub struct Publisher {
    conn: ConnectionManager,
    ns: Namespace,
    maxlen: Option<usize>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("ns", &self.ns)
            .field("maxlen", &self.maxlen)
            .finish()
    }
}

impl Publisher {
    /// A publisher trimming each stream to about `maxlen` entries (`None`: never).
    pub fn new(conn: ConnectionManager, ns: Namespace, maxlen: Option<usize>) -> Self {
        Self { conn, ns, maxlen }
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
        cmd.arg(key);
        if let Some(n) = self.maxlen {
            cmd.arg("MAXLEN").arg("~").arg(n);
        }
        cmd.arg("*");
        for (k, v) in fields {
            cmd.arg(k).arg(v);
        }
        cmd
    }
}
