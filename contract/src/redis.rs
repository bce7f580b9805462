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
//! a shared one ([`commands`]). Both are [`ConnectionManager`]s: they reconnect
//! by themselves after Redis restarts, and they are created lazily so a service
//! can start (and report not-ready) while Redis is down.
//!
//! # Replies
//!
//! Stream entries are parsed into [`StreamEntry`] with their field values as
//! bytes, so a poison message reaches the dead letters byte for byte.

use std::time::Duration;

use ::redis::{
    Client, RedisResult, Value,
    aio::{ConnectionManager, ConnectionManagerConfig},
};

use crate::entry::StreamEntry;

/// Reply timeout of ordinary commands.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens a client for `url` (no I/O yet).
pub fn client(url: &str) -> RedisResult<Client> {
    Client::open(url)
}

fn config(response_timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(response_timeout))
        .set_max_delay(Duration::from_secs(2))
}

/// A shared connection for ordinary commands.
pub fn commands(client: &Client) -> RedisResult<ConnectionManager> {
    client.get_connection_manager_lazy(config(COMMAND_TIMEOUT))
}

/// A connection for blocking reads of up to `block`.
pub fn blocking(client: &Client, block: Duration) -> RedisResult<ConnectionManager> {
    client.get_connection_manager_lazy(config(block + COMMAND_TIMEOUT))
}

/// `PING`, for readiness checks.
pub async fn ping(conn: &mut ConnectionManager) -> RedisResult<()> {
    ::redis::cmd("PING")
        .query_async::<String>(conn)
        .await
        .map(drop)
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
