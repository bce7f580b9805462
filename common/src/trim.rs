//! Trimming that never removes an entry some consumer group still needs.
//!
//! Publishing does not trim (no `MAXLEN`). Instead every service runs a
//! [`Trimmer`] over the streams it consumes (so every stream that has a
//! group is trimmed by its readers, one or two services, not by all four)
//! that, every `STREAM_TRIM_INTERVAL_MS`, computes the *floor* of each of
//! them, the oldest entry *any* of its groups is not done with, and removes
//! what is below it with `XTRIM <stream> MINID ~ <floor>`. Per group:
//!
//! * anything pending (delivered, not acknowledged) → its oldest pending id
//!   (`XPENDING` summary);
//! * nothing pending → the id right after its `last-delivered-id`.
//!
//! The floor is the smallest of those. A stream without groups, and the
//! dead-letter stream, are never trimmed. The floor only moves forward (a
//! group's last-delivered id only grows, and new pending entries are above
//! it), so replicas and services trimming at once need no lease: a trim
//! computed a moment ago is still safe. The `~` trims whole radix-tree nodes
//! only: never more than asked, often a little less, at almost no cost.
//!
//! Each round sets the `stream_entries{stream}` gauge (the length after the
//! trim) and counts `stream_trimmed_total{stream}`; a stream longer than
//! `STREAM_ALARM_ENTRIES` logs a warning naming the group that holds it back
//! (the chart's `StreamBacklogGrowing` alert fires on the gauge). Memory has a
//! ceiling (Redis `maxmemory` with `noeviction`): there, publishing fails
//! loudly and the outbox keeps the events, nothing is dropped. See
//! docs/scaling.md.

use std::time::Duration;

use contract::redis::Conn;
use contract::{
    redis as wire,
    streams::{Namespace, Stream},
};
use redis::Value;
use tracing::{debug, warn};

/// Trimming settings.
#[derive(Debug, Clone, Copy)]
pub struct TrimSettings {
    /// How often each stream is trimmed.
    pub interval: Duration,
    /// A stream longer than this after its trim raises the alarm.
    pub alarm_entries: u64,
}

impl Default for TrimSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            alarm_entries: 100_000,
        }
    }
}

impl TrimSettings {
    /// Reads `STREAM_TRIM_INTERVAL_MS` and `STREAM_ALARM_ENTRIES`; refuses
    /// the retired `STREAM_MAXLEN`, which silently dropped unread entries.
    pub fn from_env(env: &mut crate::settings::Env) -> Self {
        let d = Self::default();
        let s = Self {
            interval: env.millis(
                "STREAM_TRIM_INTERVAL_MS",
                crate::settings::millis(d.interval),
            ),
            alarm_entries: env.parse("STREAM_ALARM_ENTRIES", d.alarm_entries),
        };
        env.check(
            !s.interval.is_zero(),
            "STREAM_TRIM_INTERVAL_MS must be at least 1",
        );
        env.check(
            env.raw("STREAM_MAXLEN").is_none(),
            "STREAM_MAXLEN is no longer supported: streams are trimmed only below what every \
             consumer group has acknowledged (STREAM_TRIM_INTERVAL_MS), with an alarm at \
             STREAM_ALARM_ENTRIES; bound memory with Redis maxmemory (docs/scaling.md)",
        );
        s
    }
}

/// One stream's trim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trimmed {
    /// The floor trimmed below (`None`: nothing may be trimmed: no groups,
    /// or no stream).
    pub floor: Option<String>,
    /// The group whose progress set the floor.
    pub held_by: Option<String>,
    /// Entries removed.
    pub removed: u64,
    /// Entries left.
    pub length: u64,
}

/// Trims the event streams of one namespace; see the module docs.
#[derive(Debug, Clone)]
pub struct Trimmer {
    conn: Conn,
    streams: Vec<(String, &'static str)>,
    settings: TrimSettings,
}

impl Trimmer {
    /// Trims every partition of `streams` of `ns` (never the dead letters).
    pub fn new(conn: Conn, ns: &Namespace, streams: &[Stream], settings: TrimSettings) -> Self {
        let streams = streams
            .iter()
            .filter(|s| **s != Stream::DeadLetters)
            .flat_map(|s| ns.stream_keys(*s).into_iter().map(|k| (k, s.name())))
            .collect();
        Self {
            conn,
            streams,
            settings,
        }
    }

    /// How often [`Trimmer::round`] should run.
    pub fn interval(&self) -> Duration {
        self.settings.interval
    }

    /// Trims every stream (every partition) once, sets the gauges (summed
    /// over a stream's partitions), warns about long partitions.
    pub async fn round(&self) {
        let mut lengths: Vec<(&'static str, u64)> = Vec::new();
        for (key, label) in &self.streams {
            match self.trim(key).await {
                Ok(t) => {
                    metrics::counter!("stream_trimmed_total", "stream" => *label)
                        .increment(t.removed);
                    match lengths.iter_mut().find(|(l, _)| l == label) {
                        Some((_, n)) => *n += t.length,
                        None => lengths.push((label, t.length)),
                    }
                    if t.length > self.settings.alarm_entries {
                        warn!(
                            stream = %key,
                            group = t.held_by.as_deref().unwrap_or("(none: no group reads it)"),
                            entries = t.length,
                            alarm = self.settings.alarm_entries,
                            "stream held back by a group: its entries are kept until it reads and acknowledges them"
                        );
                    } else {
                        debug!(
                            stream = %key,
                            removed = t.removed,
                            length = t.length,
                            "stream trimmed"
                        );
                    }
                }
                Err(e) => warn!(stream = %key, error = %e, "could not trim the stream"),
            }
        }
        for (label, length) in lengths {
            #[allow(clippy::cast_precision_loss)]
            metrics::gauge!("stream_entries", "stream" => label).set(length as f64);
        }
    }

    /// Trims one stream below what every group is done with.
    pub async fn trim(&self, key: &str) -> redis::RedisResult<Trimmed> {
        let mut conn = self.conn.clone();
        let groups: Value = match redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(key)
            .query_async(&mut conn)
            .await
        {
            Ok(v) => v,
            // No such stream: nothing to trim.
            Err(e) if e.to_string().contains("no such key") => {
                return Ok(Trimmed {
                    floor: None,
                    held_by: None,
                    removed: 0,
                    length: 0,
                });
            }
            Err(e) => return Err(e),
        };
        let mut floor: Option<(EntryId, String)> = None;
        for g in groups_of(groups) {
            let at = if g.pending > 0 {
                let summary: Value = redis::cmd("XPENDING")
                    .arg(key)
                    .arg(&g.name)
                    .query_async(&mut conn)
                    .await?;
                match oldest_pending(summary) {
                    Some(id) => id,
                    // Acknowledged meanwhile: everything it read is done.
                    None => g.last_delivered.next(),
                }
            } else {
                g.last_delivered.next()
            };
            if floor.as_ref().is_none_or(|(f, _)| at < *f) {
                floor = Some((at, g.name));
            }
        }
        let removed = match &floor {
            Some((id, _)) => {
                redis::cmd("XTRIM")
                    .arg(key)
                    .arg("MINID")
                    .arg("~")
                    .arg(id.to_string())
                    .query_async(&mut conn)
                    .await?
            }
            None => 0,
        };
        let length: u64 = redis::cmd("XLEN").arg(key).query_async(&mut conn).await?;
        Ok(Trimmed {
            floor: floor.as_ref().map(|(id, _)| id.to_string()),
            held_by: floor.map(|(_, g)| g),
            removed,
            length,
        })
    }
}

/// A stream entry id, `ms-seq`, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct EntryId(u64, u64);

impl EntryId {
    fn parse(s: &str) -> Option<Self> {
        let (ms, seq) = s.split_once('-')?;
        Some(Self(ms.parse().ok()?, seq.parse().ok()?))
    }

    /// The smallest id after this one.
    fn next(self) -> Self {
        match self.1.checked_add(1) {
            Some(seq) => Self(self.0, seq),
            None => Self(self.0.saturating_add(1), 0),
        }
    }
}

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

struct Group {
    name: String,
    pending: u64,
    last_delivered: EntryId,
}

/// The groups of an `XINFO GROUPS` reply.
fn groups_of(reply: Value) -> Vec<Group> {
    wire::array(reply)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|g| {
            let fields = wire::fields_of(g);
            Some(Group {
                name: fields.get("name")?.clone(),
                pending: fields
                    .get("pending")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0),
                last_delivered: EntryId::parse(fields.get("last-delivered-id")?)?,
            })
        })
        .collect()
}

/// `[count, smallest id, greatest id, consumers]`: the smallest id.
fn oldest_pending(summary: Value) -> Option<EntryId> {
    let parts = wire::array(summary).ok()?;
    EntryId::parse(&wire::text(parts.get(1)?).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_order_and_step_like_redis() {
        let a = EntryId::parse("1700000000000-5");
        let b = EntryId::parse("1700000000001-0");
        assert!(a < b);
        assert_eq!(a.map(EntryId::next), EntryId::parse("1700000000000-6"));
        assert_eq!(EntryId(7, u64::MAX).next().to_string(), "8-0");
        assert_eq!(EntryId::parse("nope"), None);
    }
}
