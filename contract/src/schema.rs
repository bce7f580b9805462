//! JSON Schemas derived from the contract's types (`schemars`).
//!
//! Schemas are JSON Schema draft-07, the dialect AsyncAPI 3.0 documents name
//! as `application/schema+json;version=draft-07`, with the definitions a
//! schema refers to inlined under `definitions` so that each one stands
//! alone: the AsyncAPI document embeds them, and the tests validate every
//! message that crosses a stream against the schema of its type.

use schemars::{JsonSchema, generate::SchemaSettings};
use serde_json::{Value, json};

use crate::envelope::FIELDS;

/// The schema format AsyncAPI documents name for these schemas.
pub const FORMAT: &str = "application/schema+json;version=draft-07";

/// The standalone draft-07 schema of `T`.
pub fn of<T: JsonSchema>() -> Value {
    let schema = SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<T>();
    serde_json::to_value(schema).unwrap_or_default()
}

/// The envelope fields of a stream entry (everything but `payload`), all
/// text, as the schema of AsyncAPI message headers. With `event_type`, the
/// `event_type` field is that constant.
pub fn envelope_headers(event_type: Option<&str>) -> Value {
    let mut event_type_schema = json!({
        "type": "string",
        "pattern": "^[a-z0-9_]+(\\.[a-z0-9_]+)+\\.v[0-9]+$",
        "description": "`<aggregate>.<fact>.v<version>`",
    });
    if let Some(t) = event_type {
        event_type_schema["const"] = json!(t);
    }
    json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "Envelope",
        "description": "The flat text fields of a stream entry around the JSON `payload` field.",
        "type": "object",
        "required": FIELDS.iter().filter(|f| **f != "payload").collect::<Vec<_>>(),
        "properties": {
            "event_id": {"type": "string", "format": "uuid", "description": "Unique per event (UUIDv7); consumers dedupe on it."},
            "event_type": event_type_schema,
            "key": {"type": "string", "minLength": 1, "description": "Ordering key: the order id. One key's events are handled in order."},
            "correlation_id": {"type": "string", "description": "Ties every event of one user action together in logs."},
            "source": {"type": "string", "description": "The service that produced the event."},
            "occurred_at": {"type": "string", "format": "date-time", "description": "When the fact happened (RFC 3339, UTC)."},
        },
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::events::OrderCreated;

    #[test]
    fn schemas_are_draft07_and_standalone() {
        let s = of::<OrderCreated>();
        assert_eq!(s["$schema"], "http://json-schema.org/draft-07/schema#");
        assert_eq!(s["title"], "OrderCreated");
        let required: Vec<&str> = s["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(required.contains(&"order_id") && required.contains(&"items"));
        // Referenced types are inlined under `definitions`.
        let text = s.to_string();
        assert!(text.contains("#/definitions/Customer"), "{text}");
        assert!(s["definitions"]["Customer"].is_object());
    }
}
