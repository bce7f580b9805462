//! The `dead-letters` stream: its entry format.
//!
//! A dead letter is one entry of the `dead-letters` stream with these fields:
//!
//! | field | meaning |
//! |---|---|
//! | `origin_stream` | the full key of the stream the message came from |
//! | `origin_id` | its entry id there |
//! | `group` | the consumer group that gave up on it |
//! | `consumer` | the consumer that moved it |
//! | `reason` | `malformed` (not an envelope), `unknown_event` (an event type its stream does not carry), `invalid_payload` (a payload that does not fit its event type), `rejected` (the handler said it can never succeed), `max_attempts`, or `deferred_too_long` (it waited for an earlier event that never came) |
//! | `error` | the last error text |
//! | `attempts` | handler runs it went through |
//! | `first_seen_ms` | when it entered its origin stream (ms since the epoch, from `origin_id`) |
//! | `dead_lettered_ms` | when it was moved here |
//! | `f:<name>` | each original field, byte for byte |
//!
//! Keeping the original fields flat and verbatim means a replay writes exactly
//! what was first published (same `event_id`, so consumers still dedupe), and
//! even bytes that were never an envelope survive for inspection.
//!
//! The consumer loop moves a message here and acknowledges it in one Lua
//! script (in `common::dead_letter`); the `dlq` CLI reads, replays and purges
//! these entries.

use std::fmt;

use crate::{entry::StreamEntry, envelope::Envelope};

/// Field names of a dead-letter entry.
pub mod fields {
    /// Full key of the origin stream.
    pub const ORIGIN_STREAM: &str = "origin_stream";
    /// Entry id in the origin stream.
    pub const ORIGIN_ID: &str = "origin_id";
    /// Consumer group that gave up.
    pub const GROUP: &str = "group";
    /// Consumer that moved the message.
    pub const CONSUMER: &str = "consumer";
    /// Why it was dead-lettered.
    pub const REASON: &str = "reason";
    /// Last error text.
    pub const ERROR: &str = "error";
    /// Handler runs.
    pub const ATTEMPTS: &str = "attempts";
    /// When the message entered its origin stream.
    pub const FIRST_SEEN_MS: &str = "first_seen_ms";
    /// When it was dead-lettered.
    pub const DEAD_LETTERED_MS: &str = "dead_lettered_ms";
    /// Prefix of the original fields.
    pub const ORIGINAL_PREFIX: &str = "f:";
}

/// Why a message was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The entry is not a valid envelope.
    Malformed,
    /// An event type its stream does not carry.
    UnknownEvent,
    /// A payload that does not fit its event type.
    InvalidPayload,
    /// The handler reported that it can never succeed.
    Rejected,
    /// Every allowed attempt failed.
    MaxAttempts,
    /// It waited for an earlier event for longer than allowed.
    DeferredTooLong,
}

impl Reason {
    /// Every reason, in declaration order.
    pub const ALL: [Reason; 6] = [
        Reason::Malformed,
        Reason::UnknownEvent,
        Reason::InvalidPayload,
        Reason::Rejected,
        Reason::MaxAttempts,
        Reason::DeferredTooLong,
    ];

    /// The value stored in the `reason` field.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::UnknownEvent => "unknown_event",
            Reason::InvalidPayload => "invalid_payload",
            Reason::Rejected => "rejected",
            Reason::MaxAttempts => "max_attempts",
            Reason::DeferredTooLong => "deferred_too_long",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its id in the dead-letter stream.
    pub id: String,
    /// Full key of the origin stream.
    pub origin_stream: String,
    /// Entry id in the origin stream.
    pub origin_id: String,
    /// Consumer group that gave up.
    pub group: String,
    /// Consumer that moved it.
    pub consumer: String,
    /// A [`Reason`], as stored.
    pub reason: String,
    /// Last error text.
    pub error: String,
    /// Handler runs.
    pub attempts: u32,
    /// When it entered the origin stream (ms since the epoch).
    pub first_seen_ms: u64,
    /// When it was dead-lettered (ms since the epoch).
    pub dead_lettered_ms: u64,
    /// The original fields, verbatim.
    pub original: Vec<(String, Vec<u8>)>,
}

/// A dead-letter entry that lacks a required field.
#[derive(Debug, thiserror::Error)]
#[error("dead letter {id} is malformed: {problem}")]
pub struct MalformedDeadLetter {
    /// The entry id.
    pub id: String,
    /// What is wrong.
    pub problem: String,
}

impl DeadLetter {
    /// Parses an entry of the dead-letter stream.
    pub fn from_entry(entry: &StreamEntry) -> Result<Self, MalformedDeadLetter> {
        let bad = |problem: String| MalformedDeadLetter {
            id: entry.id.clone(),
            problem,
        };
        let text = |name: &str| {
            entry
                .get_str(name)
                .map(str::to_owned)
                .ok_or_else(|| bad(format!("no `{name}`")))
        };
        let number = |name: &str| -> Result<u64, MalformedDeadLetter> {
            text(name)?
                .parse()
                .map_err(|_| bad(format!("`{name}` is not a number")))
        };
        let original: Vec<_> = entry
            .fields
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix(fields::ORIGINAL_PREFIX)
                    .map(|k| (k.to_owned(), v.clone()))
            })
            .collect();
        Ok(Self {
            id: entry.id.clone(),
            origin_stream: text(fields::ORIGIN_STREAM)?,
            origin_id: text(fields::ORIGIN_ID)?,
            group: text(fields::GROUP)?,
            consumer: text(fields::CONSUMER)?,
            reason: text(fields::REASON)?,
            error: text(fields::ERROR)?,
            attempts: u32::try_from(number(fields::ATTEMPTS)?)
                .map_err(|_| bad("`attempts` out of range".into()))?,
            first_seen_ms: number(fields::FIRST_SEEN_MS)?,
            dead_lettered_ms: number(fields::DEAD_LETTERED_MS)?,
            original,
        })
    }

    /// One original field as text.
    pub fn original_str(&self, name: &str) -> Option<&str> {
        self.original
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// The original message as an envelope, if it was one.
    pub fn envelope(&self) -> Result<Envelope, crate::envelope::EnvelopeError> {
        Envelope::from_entry(&StreamEntry {
            id: self.origin_id.clone(),
            fields: self.original.clone(),
        })
    }
}
