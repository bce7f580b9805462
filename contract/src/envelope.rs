//! The envelope every event travels in.
//!
//! On a stream an envelope is one entry with these fields, all UTF-8 text:
//!
//! | field | example | meaning |
//! |---|---|---|
//! | `event_id` | `0192f3c4-...` (UUIDv7) | unique per event; consumers dedupe on it |
//! | `event_type` | `order.created.v1` | `<aggregate>.<fact>.v<version>` |
//! | `key` | an order id | ordering key: events with the same key are handled in order |
//! | `correlation_id` | a request id | ties every event of one user action together in logs |
//! | `source` | `order-svc` | the service that produced the event |
//! | `occurred_at` | `2026-11-23T10:00:00.123Z` | when the fact happened (RFC 3339, UTC) |
//! | `payload` | `{"order_id": ...}` | the event's data, JSON |
//!
//! Flat fields rather than one JSON blob let operators filter with
//! `XRANGE` + grep, and the dead-letter CLI filter on `event_type`, without
//! parsing payloads. Each stream carries the event types of its
//! [`crate::events::StreamEvent`] enum; a consumer decodes an envelope into
//! that enum once, and an entry that is not an envelope, has a type its
//! stream does not carry, or a payload that does not fit its type, is
//! dead-lettered with the reason (a producer that adds an event type to a
//! stream therefore ships it in the contract first, so that every consumer
//! of the stream knows it).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use uuid::Uuid;

use crate::{entry::StreamEntry, events::Event};

/// An event with its metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Unique id of this event (UUIDv7: unique and time-ordered).
    pub event_id: Uuid,
    /// Versioned type, e.g. `order.created.v1`.
    pub event_type: String,
    /// Ordering key (the aggregate id, e.g. the order id).
    pub key: String,
    /// Id shared by every event caused by one user action.
    pub correlation_id: String,
    /// Producing service.
    pub source: String,
    /// When the fact happened.
    pub occurred_at: DateTime<Utc>,
    /// The event data.
    pub payload: serde_json::Value,
}

/// Why a stream entry is not a valid envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// A required field is absent.
    #[error("field `{0}` is missing")]
    Missing(&'static str),
    /// A field is present but invalid.
    #[error("field `{field}` is invalid: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// The stream-entry field names, in the order they are written.
pub const FIELDS: [&str; 7] = [
    "event_id",
    "event_type",
    "key",
    "correlation_id",
    "source",
    "occurred_at",
    "payload",
];

impl Envelope {
    /// A new event with a fresh id, occurring now.
    pub fn new(
        event_type: &str,
        key: impl Into<String>,
        correlation_id: impl Into<String>,
        source: impl Into<String>,
        payload: &impl Serialize,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self {
            event_id: Uuid::now_v7(),
            event_type: event_type.to_owned(),
            key: key.into(),
            correlation_id: correlation_id.into(),
            source: source.into(),
            occurred_at: Utc::now(),
            payload: serde_json::to_value(payload)?,
        })
    }

    /// `event` in a fresh envelope: its type name, its ordering key, now.
    pub fn of<E: Event>(
        event: &E,
        correlation_id: impl Into<String>,
        source: impl Into<String>,
    ) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            event_type: E::TYPE.to_owned(),
            key: event.key(),
            correlation_id: correlation_id.into(),
            source: source.into(),
            occurred_at: Utc::now(),
            payload: serde_json::to_value(event)
                .expect("event payloads are plain structs and always serialise"),
        }
    }

    /// The payload as a typed value.
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.payload)
    }

    /// The stream-entry fields, in [`FIELDS`] order.
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("event_id", self.event_id.to_string()),
            ("event_type", self.event_type.clone()),
            ("key", self.key.clone()),
            ("correlation_id", self.correlation_id.clone()),
            ("source", self.source.clone()),
            (
                "occurred_at",
                self.occurred_at
                    .to_rfc3339_opts(SecondsFormat::Micros, true),
            ),
            ("payload", self.payload.to_string()),
        ]
    }

    /// Parses a stream entry; extra fields are ignored (forward compatibility).
    pub fn from_entry(entry: &StreamEntry) -> Result<Self, EnvelopeError> {
        let field = |name: &'static str| -> Result<&str, EnvelopeError> {
            let raw = entry.get(name).ok_or(EnvelopeError::Missing(name))?;
            std::str::from_utf8(raw).map_err(|_| EnvelopeError::Invalid {
                field: name,
                reason: "not UTF-8".into(),
            })
        };
        let invalid =
            |field: &'static str, reason: String| EnvelopeError::Invalid { field, reason };

        let event_id =
            Uuid::parse_str(field("event_id")?).map_err(|e| invalid("event_id", e.to_string()))?;
        let event_type = field("event_type")?;
        validate_event_type(event_type).map_err(|r| invalid("event_type", r))?;
        let key = field("key")?;
        if key.is_empty() {
            return Err(invalid("key", "empty".into()));
        }
        let occurred_at = DateTime::parse_from_rfc3339(field("occurred_at")?)
            .map_err(|e| invalid("occurred_at", e.to_string()))?
            .with_timezone(&Utc);
        let payload = serde_json::from_str(field("payload")?)
            .map_err(|e| invalid("payload", e.to_string()))?;
        Ok(Self {
            event_id,
            event_type: event_type.to_owned(),
            key: key.to_owned(),
            correlation_id: field("correlation_id")?.to_owned(),
            source: field("source")?.to_owned(),
            occurred_at,
            payload,
        })
    }
}

/// Checks the `<name>.<name>[...].v<N>` shape of an event type.
pub fn validate_event_type(t: &str) -> Result<(), String> {
    let parts: Vec<&str> = t.split('.').collect();
    let (version, names) = parts.split_last().ok_or("empty")?;
    let version_ok = version
        .strip_prefix('v')
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    let names_ok = names.len() >= 2
        && names.iter().all(|n| {
            !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit())
        });
    if version_ok && names_ok {
        Ok(())
    } else {
        Err(format!("`{t}` is not of the form `aggregate.fact.v1`"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope::new(
            "order.created.v1",
            "o-1",
            "c-1",
            "order-svc",
            &serde_json::json!({"a": 1}),
        )
        .unwrap()
    }

    fn entry_of(fields: Vec<(&str, String)>) -> StreamEntry {
        StreamEntry {
            id: "1-0".into(),
            fields: fields
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.into_bytes()))
                .collect(),
        }
    }

    #[test]
    fn serde_and_stream_round_trips_are_lossless() {
        let e = sample();
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<Envelope>(&json).unwrap(), e);
        // The stream encoding keeps microseconds, which is what `Utc::now` gives on Linux.
        let back = Envelope::from_entry(&entry_of(e.to_fields())).unwrap();
        assert_eq!(back.event_id, e.event_id);
        assert_eq!(back.payload, e.payload);
        assert_eq!(
            back.occurred_at.timestamp_micros(),
            e.occurred_at.timestamp_micros()
        );
    }

    #[test]
    fn ids_are_unique_and_time_ordered() {
        let a = sample();
        let b = sample();
        assert_ne!(a.event_id, b.event_id);
        assert!(a.event_id < b.event_id);
    }

    #[test]
    fn malformed_entries_say_what_is_wrong() {
        let mut f = sample().to_fields();
        f.retain(|(k, _)| *k != "event_id");
        assert_eq!(
            Envelope::from_entry(&entry_of(f)),
            Err(EnvelopeError::Missing("event_id"))
        );

        let mut f = sample().to_fields();
        f[6].1 = "{not json".into();
        assert!(matches!(
            Envelope::from_entry(&entry_of(f)),
            Err(EnvelopeError::Invalid {
                field: "payload",
                ..
            })
        ));

        let mut f = sample().to_fields();
        f[1].1 = "OrderCreated".into();
        assert!(matches!(
            Envelope::from_entry(&entry_of(f)),
            Err(EnvelopeError::Invalid {
                field: "event_type",
                ..
            })
        ));
    }

    #[test]
    fn event_type_shape() {
        for ok in [
            "order.created.v1",
            "delivery.status_updated.v12",
            "simulation.order_requested.v1",
        ] {
            assert!(validate_event_type(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "order",
            "order.v1",
            "order.created",
            "Order.created.v1",
            "order..v1",
            "a.b.v",
        ] {
            assert!(validate_event_type(bad).is_err(), "{bad}");
        }
    }
}
