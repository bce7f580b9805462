//! A raw stream entry as Redis returns it, and the reply parsers the loop needs.
//!
//! Field values are kept as bytes: a poison message may hold anything, and it
//! must reach the dead letters byte for byte.

use redis::Value;

/// One entry of a stream: its id and its field/value pairs, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    /// The entry id (`<ms>-<seq>`).
    pub id: String,
    /// Field/value pairs as stored.
    pub fields: Vec<(String, Vec<u8>)>,
}

impl StreamEntry {
    /// The value of a field, if present.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The value of a field as UTF-8 text, if present and valid.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Milliseconds since the epoch at which the entry was added (from its id).
    pub fn millis(&self) -> Option<u64> {
        id_millis(&self.id)
    }
}

/// The millisecond part of a stream id.
pub fn id_millis(id: &str) -> Option<u64> {
    id.split_once('-').map_or(id, |(ms, _)| ms).parse().ok()
}

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
