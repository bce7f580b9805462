//! The dead-letter toolkit behind the `dlq` command.
//!
//! Dead letters are entries of the `dead-letters` stream written by the
//! consumer loop (format: [`contract::dead_letter`]); with several
//! partitions (`STREAM_PARTITIONS`), of each partition's `dead-letters:{p<i>}`,
//! whose letters are then named `p<i>/<entry id>`. This crate lists and
//! filters them (across partitions, newest first), computes statistics,
//! replays them and purges them.
//!
//! **Replaying** an entry is one Lua script: if the dead letter still exists,
//! XADD its original fields to its original stream (a new entry id, the same
//! `event_id`, plus a `replay_count` field), count the replay in the hash
//! `<prefix>dead-letters:replays` (per partition, in its slot), and XDEL the
//! dead letter. Publishing and
//! removing happen together or not at all, and replaying an entry a second
//! time finds nothing to do. Every consumer group of the origin stream sees
//! the replayed message (a stream has no per-group delivery), which is safe:
//! consumers dedupe by `event_id`.

use std::{collections::HashMap, time::Duration};

use contract::redis::Conn;
use contract::{
    StreamEntry,
    dead_letter::DeadLetter,
    redis::{self as redis_conn, self as stream_entry},
    streams::{Namespace, Stream},
};
use redis::{Script, Value};
use serde::Serialize;

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// Redis cannot be reached or failed.
    #[error("Redis at {url}: {source}")]
    Redis {
        /// The URL, password redacted.
        url: String,
        /// The cause.
        #[source]
        source: redis::RedisError,
    },
    /// Redis answered something unexpected.
    #[error(transparent)]
    Reply(#[from] stream_entry::ReplyError),
}

/// A dead letter, or an entry of the dead-letter stream that is not one.
#[derive(Debug, Clone)]
pub enum Letter {
    /// A well-formed dead letter.
    Dead(Box<DeadLetter>),
    /// An entry missing required fields, kept raw.
    Malformed {
        /// The raw entry.
        entry: StreamEntry,
        /// What is wrong with it.
        problem: String,
    },
}

impl Letter {
    fn parse(entry: StreamEntry) -> Self {
        match DeadLetter::from_entry(&entry) {
            Ok(d) => Self::Dead(Box::new(d)),
            Err(e) => Self::Malformed {
                problem: e.problem,
                entry,
            },
        }
    }

    /// The same letter, its id named as `ns` names entries of partition
    /// `p` ([`Namespace::entry_ref`]).
    fn named(mut self, ns: &Namespace, p: u16) -> Self {
        let id = match &mut self {
            Self::Dead(d) => &mut d.id,
            Self::Malformed { entry, .. } => &mut entry.id,
        };
        *id = ns.entry_ref(p, id);
        self
    }

    /// Its id: the entry id in the dead-letter stream, `p<i>/<id>` with
    /// several partitions.
    pub fn id(&self) -> &str {
        match self {
            Self::Dead(d) => &d.id,
            Self::Malformed { entry, .. } => &entry.id,
        }
    }

    /// When it was dead-lettered (from its id).
    pub fn dead_lettered_ms(&self) -> u64 {
        let id = self.id();
        contract::entry::id_millis(id.rsplit_once('/').map_or(id, |(_, id)| id)).unwrap_or(0)
    }
}

/// Which dead letters a command applies to.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Origin stream (short name like `orders-stream`, or full key).
    pub stream: Option<String>,
    /// Consumer group.
    pub group: Option<String>,
    /// Event type of the original message.
    pub event_type: Option<String>,
    /// `malformed`, `rejected`, `max_attempts`, `deferred_too_long`.
    pub reason: Option<String>,
    /// Substring of the error text (case-insensitive).
    pub error: Option<String>,
    /// Dead-lettered at or after (ms since the epoch).
    pub since_ms: Option<u64>,
    /// Dead-lettered at or before (ms since the epoch).
    pub until_ms: Option<u64>,
}

impl Filter {
    /// Whether the filter selects nothing in particular.
    pub fn is_empty(&self) -> bool {
        self.stream.is_none()
            && self.group.is_none()
            && self.event_type.is_none()
            && self.reason.is_none()
            && self.error.is_none()
            && self.since_ms.is_none()
            && self.until_ms.is_none()
    }

    fn matches(&self, ns: &Namespace, l: &Letter) -> bool {
        let Letter::Dead(d) = l else {
            // Malformed entries have no fields to filter on: they show up only
            // when no field filter is set.
            return self.stream.is_none()
                && self.group.is_none()
                && self.event_type.is_none()
                && self.reason.is_none()
                && self.error.is_none();
        };
        let stream_ok = self.stream.as_deref().is_none_or(|s| {
            d.origin_stream == s
                || ns
                    .stream_of_key(&d.origin_stream)
                    .is_some_and(|k| k.name() == s)
        });
        stream_ok
            && self.group.as_deref().is_none_or(|g| d.group == g)
            && self
                .event_type
                .as_deref()
                .is_none_or(|t| d.original_str("event_type") == Some(t))
            && self.reason.as_deref().is_none_or(|r| d.reason == r)
            && self
                .error
                .as_deref()
                .is_none_or(|e| d.error.to_lowercase().contains(&e.to_lowercase()))
    }
}

/// The outcome of replaying one entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Replay {
    /// Published again and removed from the dead letters.
    Replayed {
        /// Dead-letter id.
        id: String,
        /// The stream it went back to.
        stream: String,
        /// Its new id there.
        new_id: String,
        /// How many times this event has been replayed, this time included.
        replay_count: u64,
    },
    /// What would happen (`--dry-run`).
    WouldReplay {
        /// Dead-letter id.
        id: String,
        /// The stream it would go back to.
        stream: String,
    },
    /// The entry no longer exists (replayed or purged meanwhile).
    Gone {
        /// Dead-letter id.
        id: String,
    },
    /// Malformed entries have no origin to go back to.
    NotReplayable {
        /// Dead-letter id.
        id: String,
        /// Why.
        problem: String,
    },
}

static REPLAY: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r"
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then return {0} end
local n = redis.call('HINCRBY', KEYS[3], ARGV[2] .. ':count', 1)
redis.call('HSET', KEYS[3], ARGV[2] .. ':last_ms', ARGV[3])
local fields = {unpack(ARGV, 4)}
table.insert(fields, 'replay_count')
table.insert(fields, tostring(n))
local id = redis.call('XADD', KEYS[2], '*', unpack(fields))
redis.call('XDEL', KEYS[1], ARGV[1])
return {1, id, n}
",
    )
});

/// Field added to replayed messages.
pub const REPLAY_COUNT_FIELD: &str = "replay_count";

/// Statistics over the dead letters.
#[derive(Debug, Default, Serialize)]
pub struct Stats {
    /// All entries.
    pub total: usize,
    /// Entries that are not well-formed dead letters.
    pub malformed: usize,
    /// Per origin stream.
    pub by_stream: Vec<(String, usize)>,
    /// Per consumer group.
    pub by_group: Vec<(String, usize)>,
    /// Per event type.
    pub by_event_type: Vec<(String, usize)>,
    /// Per reason.
    pub by_reason: Vec<(String, usize)>,
    /// The most frequent errors.
    pub top_errors: Vec<(String, usize)>,
    /// Oldest dead-lettering time (ms).
    pub oldest_ms: Option<u64>,
    /// Newest dead-lettering time (ms).
    pub newest_ms: Option<u64>,
}

/// Connection to one deployment's dead letters.
#[derive(Clone)]
pub struct Dlq {
    conn: Conn,
    ns: Namespace,
    url: String,
}

impl std::fmt::Debug for Dlq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dlq")
            .field("url", &self.url)
            .field("ns", &self.ns)
            .finish()
    }
}

/// `redis://user:secret@host` → `redis://***@host`.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme + 3 => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

impl Dlq {
    /// Connects (and checks the connection with PING) to the deployment
    /// whose keys start with `prefix` and whose streams have `partitions`
    /// (its services' `STREAM_PREFIX` and `STREAM_PARTITIONS`; `None`: the
    /// count its services recorded in Redis, else 1).
    pub async fn connect(
        url: &str,
        prefix: &str,
        partitions: Option<u16>,
    ) -> Result<Self, DlqError> {
        let redacted = redact(url);
        let err = |source| DlqError::Redis {
            url: redacted.clone(),
            source,
        };
        let client = redis_conn::client(url).map_err(err)?;
        let mut conn = redis_conn::commands(&client).map_err(err)?;
        redis_conn::ping(&mut conn).await.map_err(err)?;
        let partitions = match partitions {
            Some(p) => p,
            None => redis_conn::recorded_partitions(&mut conn, prefix)
                .await
                .map_err(err)?
                .unwrap_or(1),
        };
        Ok(Self {
            conn,
            ns: Namespace::for_redis(prefix, url, partitions),
            url: redacted,
        })
    }

    fn redis_err(&self, source: redis::RedisError) -> DlqError {
        DlqError::Redis {
            url: self.url.clone(),
            source,
        }
    }

    /// The namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.ns
    }

    /// The dead letters of partition `p`.
    fn key(&self, p: u16) -> String {
        self.ns.stream_at(Stream::DeadLetters, p)
    }

    /// Replay counts of the events of partition `p` (in its slot, so the
    /// replay script may touch it).
    fn replays_key(&self, p: u16) -> String {
        self.ns.key_at("dead-letters:replays", p)
    }

    /// Up to `limit` matching dead letters, newest first, from every
    /// partition (each named by [`Namespace::entry_ref`]).
    pub async fn list(&self, filter: &Filter, limit: usize) -> Result<Vec<Letter>, DlqError> {
        let mut out: Vec<(u64, u64, Letter)> = Vec::new();
        for p in self.ns.partition_range() {
            for l in self.list_partition(p, filter, limit).await? {
                let (ms, seq) = contract::entry::id_parts(l.id()).unwrap_or((0, 0));
                out.push((ms, seq, l.named(&self.ns, p)));
            }
        }
        // Newest first across partitions (ids are per partition: by time).
        out.sort_by_key(|l| std::cmp::Reverse((l.0, l.1)));
        out.truncate(limit);
        Ok(out.into_iter().map(|(_, _, l)| l).collect())
    }

    /// Up to `limit` matching dead letters of partition `p`, newest first,
    /// with their entry ids.
    async fn list_partition(
        &self,
        p: u16,
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<Letter>, DlqError> {
        let mut out = Vec::new();
        let mut end = filter
            .until_ms
            .map_or_else(|| "+".to_owned(), |ms| format!("{ms}-18446744073709551615"));
        let start = filter
            .since_ms
            .map_or_else(|| "-".to_owned(), |ms| format!("{ms}-0"));
        while out.len() < limit {
            let v: Value = redis::cmd("XREVRANGE")
                .arg(self.key(p))
                .arg(&end)
                .arg(&start)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut self.conn.clone())
                .await
                .map_err(|e| self.redis_err(e))?;
            let page = stream_entry::entries(v)?;
            let Some(last) = page.last() else { break };
            end = format!("({}", last.id);
            let done = page.len() < 500;
            for entry in page {
                let l = Letter::parse(entry);
                if filter.matches(&self.ns, &l) && out.len() < limit {
                    out.push(l);
                }
            }
            if done {
                break;
            }
        }
        Ok(out)
    }

    /// Every matching dead letter, newest first.
    pub async fn all(&self, filter: &Filter) -> Result<Vec<Letter>, DlqError> {
        self.list(filter, usize::MAX).await
    }

    /// One entry by its id (as [`Letter::id`] names it: `p<i>/<id>` with
    /// several partitions); `None` when there is no such entry.
    pub async fn get(&self, reference: &str) -> Result<Option<Letter>, DlqError> {
        let Some((p, id)) = self.ns.parse_entry_ref(reference) else {
            return Ok(None);
        };
        let v: Value = redis::cmd("XRANGE")
            .arg(self.key(p))
            .arg(&id)
            .arg(&id)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.redis_err(e))?;
        Ok(stream_entry::entries(v)?
            .into_iter()
            .next()
            .map(|e| Letter::parse(e).named(&self.ns, p)))
    }

    /// Replay count and last replay time (ms) of an event.
    pub async fn replays(&self, d: &DeadLetter) -> Result<Option<(u64, u64)>, DlqError> {
        let key = replay_key(d);
        let Some((p, _)) = self.ns.parse_entry_ref(&d.id) else {
            return Ok(None);
        };
        let v: Vec<Option<u64>> = redis::cmd("HMGET")
            .arg(self.replays_key(p))
            .arg(format!("{key}:count"))
            .arg(format!("{key}:last_ms"))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.redis_err(e))?;
        Ok(match v.as_slice() {
            [Some(count), last] => Some((*count, last.unwrap_or(0))),
            _ => None,
        })
    }

    /// Replays one entry (see the module docs).
    pub async fn replay(&self, letter: &Letter, dry_run: bool) -> Result<Replay, DlqError> {
        let d = match letter {
            Letter::Dead(d) => d,
            Letter::Malformed { entry, problem } => {
                return Ok(Replay::NotReplayable {
                    id: entry.id.clone(),
                    problem: problem.clone(),
                });
            }
        };
        let stream = self.display_stream(&d.origin_stream);
        if dry_run {
            return Ok(Replay::WouldReplay {
                id: d.id.clone(),
                stream,
            });
        }
        let Some((p, id)) = self.ns.parse_entry_ref(&d.id) else {
            return Ok(Replay::Gone { id: d.id.clone() });
        };
        let now = chrono::Utc::now().timestamp_millis();
        let mut inv = REPLAY.key(self.key(p));
        inv.key(&d.origin_stream)
            .key(self.replays_key(p))
            .arg(&id)
            .arg(replay_key(d))
            .arg(now);
        for (k, v) in d.original.iter().filter(|(k, _)| k != REPLAY_COUNT_FIELD) {
            inv.arg(k).arg(v.as_slice());
        }
        let reply: Value = inv
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.redis_err(e))?;
        let parts = stream_entry::array(reply)?;
        match parts.as_slice() {
            [done, new_id, count] if stream_entry::int(done)? == 1 => Ok(Replay::Replayed {
                id: d.id.clone(),
                stream,
                new_id: stream_entry::text(new_id)?,
                replay_count: u64::try_from(stream_entry::int(count)?).unwrap_or(0),
            }),
            _ => Ok(Replay::Gone { id: d.id.clone() }),
        }
    }

    /// Deletes entries (named as [`Letter::id`] names them); returns how
    /// many existed.
    pub async fn purge(&self, ids: &[String]) -> Result<usize, DlqError> {
        let mut deleted = 0;
        for p in self.ns.partition_range() {
            let here: Vec<String> = ids
                .iter()
                .filter_map(|r| self.ns.parse_entry_ref(r))
                .filter(|(q, _)| *q == p)
                .map(|(_, id)| id)
                .collect();
            for chunk in here.chunks(500) {
                let n: usize = redis::cmd("XDEL")
                    .arg(self.key(p))
                    .arg(chunk)
                    .query_async(&mut self.conn.clone())
                    .await
                    .map_err(|e| self.redis_err(e))?;
                deleted += n;
            }
        }
        Ok(deleted)
    }

    /// Statistics over the matching dead letters.
    pub async fn stats(&self, filter: &Filter, top: usize) -> Result<Stats, DlqError> {
        let letters = self.all(filter).await?;
        let mut s = Stats {
            total: letters.len(),
            ..Stats::default()
        };
        let (mut streams, mut groups, mut types, mut reasons, mut errors) = Default::default();
        for l in &letters {
            let ms = l.dead_lettered_ms();
            s.oldest_ms = Some(s.oldest_ms.map_or(ms, |o| o.min(ms)));
            s.newest_ms = Some(s.newest_ms.map_or(ms, |n| n.max(ms)));
            let Letter::Dead(d) = l else {
                s.malformed += 1;
                continue;
            };
            bump(&mut streams, self.display_stream(&d.origin_stream));
            bump(&mut groups, d.group.clone());
            bump(
                &mut types,
                d.original_str("event_type").unwrap_or("(none)").to_owned(),
            );
            bump(&mut reasons, d.reason.clone());
            bump(&mut errors, truncate(&d.error, 100));
        }
        s.by_stream = sorted(streams, usize::MAX);
        s.by_group = sorted(groups, usize::MAX);
        s.by_event_type = sorted(types, usize::MAX);
        s.by_reason = sorted(reasons, usize::MAX);
        s.top_errors = sorted(errors, top);
        Ok(s)
    }

    /// A stream key without this deployment's prefix, if it has it.
    pub fn display_stream(&self, key: &str) -> String {
        self.ns
            .stream_of_key(key)
            .map_or_else(|| key.to_owned(), |s| s.name().to_owned())
    }
}

fn replay_key(d: &DeadLetter) -> String {
    d.original_str("event_id").map_or_else(
        || format!("{}/{}", d.origin_stream, d.origin_id),
        str::to_owned,
    )
}

fn bump(map: &mut HashMap<String, usize>, key: String) {
    *map.entry(key).or_default() += 1;
}

fn sorted(map: HashMap<String, usize>, top: usize) -> Vec<(String, usize)> {
    let mut v: Vec<_> = map.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.truncate(top);
    v
}

/// `text` cut to `max` characters, with an ellipsis.
pub fn truncate(text: &str, max: usize) -> String {
    let one_line = text.replace(['\n', '\r'], " ");
    if one_line.chars().count() <= max {
        one_line
    } else {
        format!(
            "{}…",
            one_line
                .chars()
                .take(max.saturating_sub(1))
                .collect::<String>()
        )
    }
}

/// Parses `--since`/`--until`: a duration ago (`90s`, `10m`, `2h`, `7d`) or an
/// RFC 3339 time; milliseconds since the epoch.
pub fn parse_time(s: &str) -> Result<u64, String> {
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(ms_ago(d));
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| u64::try_from(t.timestamp_millis()).unwrap_or(0))
        .map_err(|_| format!("`{s}` is neither a duration ago (30m, 2h, 7d) nor an RFC 3339 time"))
}

/// Milliseconds since the epoch, `d` ago.
pub fn ms_ago(d: Duration) -> u64 {
    let now = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
    now.saturating_sub(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Parses a duration (`--older-than 7d`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e}"))
}

/// `12s ago`, `3m ago`, `2h ago`, `4d ago`.
pub fn ago(ms: u64) -> String {
    let now = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
    let secs = now.saturating_sub(ms) / 1000;
    match secs {
        s if s < 120 => format!("{s}s ago"),
        s if s < 7200 => format!("{}m ago", s / 60),
        s if s < 172_800 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86_400),
    }
}

/// RFC 3339 (UTC, milliseconds).
pub fn rfc3339(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(i64::try_from(ms).unwrap_or(0)).map_or_else(
        || ms.to_string(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted_and_times_parse() {
        assert_eq!(
            redact("redis://:s3cret@redis:6379/0"),
            "redis://***@redis:6379/0"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        let now = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap();
        let hour_ago = parse_time("1h").unwrap();
        assert!((now - hour_ago).abs_diff(3_600_000) < 5_000);
        assert_eq!(
            parse_time("2026-11-23T10:00:00Z").unwrap(),
            1_795_428_000_000
        );
        assert!(parse_time("yesterday-ish").is_err());
        assert_eq!(truncate("abcdef", 4), "abc…");
    }
}
