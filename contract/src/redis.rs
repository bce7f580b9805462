//! foodchain on Redis: connections with timeouts that fit how each one is
//! used, and parsers of the replies the stream commands return (feature
//! `redis`).
//!
//! # Connections
//!
//! redis-rs multiplexes commands over one TCP connection and, by default, times
//! a reply out after 500 ms. That is right for ordinary commands and wrong for
//! `XREADGROUP ... BLOCK`, which legitimately waits for up to its block time,
//! and would also hold up every command queued behind it. So the consumer loop
//! reads on a connection of its own ([`blocking`]) and does everything else on
//! a shared one ([`commands`]). Both reconnect by themselves after Redis
//! restarts, and they are created lazily so a service can start (and report
//! not-ready) while Redis is down.
//!
//! # One node or a cluster
//!
//! `REDIS_URL` is either one URL (`redis://host:port`, a single Redis: a
//! [`ConnectionManager`]) or a comma-separated list of node URLs
//! (`redis://h1:p1,redis://h2:p2,...`, a Redis Cluster: redis-rs's cluster
//! client, which follows `MOVED`/`ASK` and the slot map through a failover).
//! [`Conn`] is either, so the code above this module does not know which.
//!
//! In a cluster, a Lua script or a pipeline must touch keys of one hash slot.
//! With one partition every key of a deployment carries one hash tag
//! ([`Namespace::for_redis`] wraps the prefix in `{...}`), so its keys live
//! on one primary (correct, and one primary's worth of speed); with several
//! (`STREAM_PARTITIONS`), every key a script or pipeline touches with a
//! partition's stream carries that partition's tag, and the partitions
//! spread over the primaries (docs/scaling.md §2).
//!
//! Pub/sub (the outbox relay's wake-up ring) needs a connection to one node:
//! in a cluster a `PUBLISH` on any node reaches the subscribers of every
//! node, so [`Client::pubsub`] subscribes on the first node that answers.
//!
//! [`Namespace::for_redis`]: crate::streams::Namespace::for_redis
//!
//! # Replies
//!
//! Stream entries are parsed into [`StreamEntry`] with their field values as
//! bytes, so a poison message reaches the dead letters byte for byte.

use std::time::Duration;

use ::redis::{
    Cmd, Pipeline, RedisFuture, RedisResult, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, PubSub},
    cluster::{ClusterClient, ClusterConfig},
    cluster_async::ClusterConnection,
};

use crate::entry::StreamEntry;

/// Reply timeout of ordinary commands.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Time allowed to open a connection to a node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether `url` names a cluster (a comma-separated list of node URLs).
pub fn is_cluster_url(url: &str) -> bool {
    url.contains(',')
}

/// Where the streams live: one Redis, or a Redis Cluster (no I/O yet).
#[derive(Clone)]
pub enum Client {
    /// One Redis.
    Single(::redis::Client),
    /// A Redis Cluster, and a plain client of each node given (pub/sub).
    Cluster {
        /// The cluster client (boxed: it is much larger than a plain client).
        cluster: Box<ClusterClient>,
        /// One client per node URL given, in order.
        nodes: Vec<::redis::Client>,
    },
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Client::Single(_) => f.write_str("Client::Single"),
            Client::Cluster { nodes, .. } => write!(f, "Client::Cluster({} nodes)", nodes.len()),
        }
    }
}

/// Opens a client for `url`: one URL, or a comma-separated list of a
/// cluster's nodes (no I/O yet).
pub fn client(url: &str) -> RedisResult<Client> {
    if !is_cluster_url(url) {
        return ::redis::Client::open(url).map(Client::Single);
    }
    let urls: Vec<&str> = url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    let nodes = urls
        .iter()
        .map(|u| ::redis::Client::open(*u))
        .collect::<RedisResult<Vec<_>>>()?;
    let cluster = Box::new(ClusterClient::builder(urls).retries(6).build()?);
    Ok(Client::Cluster { cluster, nodes })
}

impl Client {
    /// Whether this is a cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Client::Cluster { .. })
    }

    fn connection(&self, response_timeout: Duration) -> RedisResult<Conn> {
        match self {
            Client::Single(c) => c
                .get_connection_manager_lazy(
                    ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(CONNECT_TIMEOUT))
                        .set_response_timeout(Some(response_timeout))
                        .set_max_delay(Duration::from_secs(2)),
                )
                .map(Conn::Single),
            Client::Cluster { cluster, .. } => Ok(Conn::Cluster(
                cluster.get_pending_async_connection_with_config(
                    ClusterConfig::new()
                        .set_connection_timeout(CONNECT_TIMEOUT)
                        .set_response_timeout(response_timeout),
                ),
            )),
        }
    }

    /// A pub/sub connection: to the one Redis, or to the first node of the
    /// cluster that answers (a cluster's `PUBLISH` reaches every node).
    pub async fn pubsub(&self) -> RedisResult<PubSub> {
        match self {
            Client::Single(c) => c.get_async_pubsub().await,
            Client::Cluster { nodes, .. } => {
                let mut last = None;
                for node in nodes {
                    match node.get_async_pubsub().await {
                        Ok(p) => return Ok(p),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| {
                    ::redis::RedisError::from((
                        ::redis::ErrorKind::InvalidClientConfig,
                        "a cluster URL list without nodes",
                    ))
                }))
            }
        }
    }
}

/// A connection to one Redis or to a cluster; cheap to clone (clones share
/// the connection, commands are multiplexed over it).
#[derive(Clone)]
pub enum Conn {
    /// To one Redis.
    Single(ConnectionManager),
    /// To a cluster.
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Single(_) => "Conn::Single",
            Conn::Cluster(_) => "Conn::Cluster",
        })
    }
}

impl From<ConnectionManager> for Conn {
    fn from(c: ConnectionManager) -> Self {
        Conn::Single(c)
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A shared connection for ordinary commands.
pub fn commands(client: &Client) -> RedisResult<Conn> {
    client.connection(COMMAND_TIMEOUT)
}

/// A connection for blocking reads of up to `block`.
pub fn blocking(client: &Client, block: Duration) -> RedisResult<Conn> {
    client.connection(block + COMMAND_TIMEOUT)
}

/// `PING`, for readiness checks.
pub async fn ping(conn: &mut Conn) -> RedisResult<()> {
    ::redis::cmd("PING")
        .query_async::<String>(conn)
        .await
        .map(drop)
}

/// The partition count the services of the deployment with key prefix
/// `prefix` recorded ([`crate::streams::partitions_key`]), if any: the
/// CLIs' default when not told.
pub async fn recorded_partitions(conn: &mut Conn, prefix: &str) -> RedisResult<Option<u16>> {
    ::redis::cmd("GET")
        .arg(crate::streams::partitions_key(prefix))
        .query_async(conn)
        .await
}

/// Where `make run` (`scripts/infra.sh up`) starts Redis: every binary of the
/// workspace (services, `dlq`, `chaos check`) finds it with no configuration.
pub const DEFAULT_URL: &str = "redis://127.0.0.1:16379";

/// Why a Redis reply did not have the expected shape.
#[derive(Debug, thiserror::Error)]
#[error("unexpected reply from Redis: {0}")]
pub struct ReplyError(pub String);

/// A string-ish reply as text.
pub fn text(v: &Value) -> Result<String, ReplyError> {
    match v {
        Value::BulkString(b) => Ok(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Ok(s.clone()),
        Value::VerbatimString { text, .. } => Ok(text.clone()),
        Value::Int(i) => Ok(i.to_string()),
        Value::Okay => Ok("OK".to_owned()),
        other => Err(ReplyError(format!("expected a string, got {other:?}"))),
    }
}

/// An integer reply (or a string holding one).
pub fn int(v: &Value) -> Result<i64, ReplyError> {
    match v {
        Value::Int(i) => Ok(*i),
        other => text(other)?
            .parse()
            .map_err(|_| ReplyError(format!("expected an integer, got {other:?}"))),
    }
}

/// An array reply (nil parses as empty).
pub fn array(v: Value) -> Result<Vec<Value>, ReplyError> {
    match v {
        Value::Array(a) | Value::Set(a) => Ok(a),
        Value::Nil => Ok(Vec::new()),
        other => Err(ReplyError(format!("expected an array, got {other:?}"))),
    }
}

fn bytes(v: Value) -> Result<Vec<u8>, ReplyError> {
    match v {
        Value::BulkString(b) => Ok(b),
        other => text(&other).map(String::into_bytes),
    }
}

/// Parses one `[id, [field, value, ...]]` entry. A nil field list (an entry
/// deleted while pending) parses as an entry with no fields.
pub fn entry(v: Value) -> Result<StreamEntry, ReplyError> {
    let mut parts = array(v)?.into_iter();
    let id = text(
        &parts
            .next()
            .ok_or_else(|| ReplyError("entry without id".into()))?,
    )?;
    let flat = array(parts.next().unwrap_or(Value::Nil))?;
    let mut fields = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        fields.push((text(&k)?, bytes(v)?));
    }
    Ok(StreamEntry { id, fields })
}

/// Parses a list of entries (XRANGE, XREVRANGE, XCLAIM).
pub fn entries(v: Value) -> Result<Vec<StreamEntry>, ReplyError> {
    array(v)?.into_iter().map(entry).collect()
}

/// Parses an XREAD / XREADGROUP reply into `(stream key, entries)` pairs.
pub fn xread(v: Value) -> Result<Vec<(String, Vec<StreamEntry>)>, ReplyError> {
    let pairs: Vec<(Value, Value)> = match v {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(m) => m,
        other => array(other)?
            .into_iter()
            .map(|kv| {
                let mut kv = array(kv)?.into_iter();
                match (kv.next(), kv.next()) {
                    (Some(k), Some(v)) => Ok((k, v)),
                    _ => Err(ReplyError("stream reply without entries".into())),
                }
            })
            .collect::<Result<_, _>>()?,
    };
    pairs
        .into_iter()
        .map(|(k, v)| Ok((text(&k)?, entries(v)?)))
        .collect()
}

/// A reply that is a field/value map (RESP3 map or RESP2 flat array, as
/// `XINFO` returns), as text.
pub fn fields_of(v: Value) -> std::collections::HashMap<String, String> {
    let pairs: Vec<(Value, Value)> = match v {
        Value::Map(m) => m,
        other => {
            let flat = array(other).unwrap_or_default();
            let mut it = flat.into_iter();
            let mut pairs = Vec::new();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                pairs.push((k, v));
            }
            pairs
        }
    };
    pairs
        .into_iter()
        .filter_map(|(k, v)| Some((text(&k).ok()?, text(&v).ok()?)))
        .collect()
}
