//! The AsyncAPI 3.0 document of the streams, generated from the contract.
//!
//! One channel per stream (its address is the unprefixed stream name), every
//! message with its envelope (as headers), its payload schema and an
//! example; one `send` operation for the service that publishes each stream
//! and one `receive` operation per consumer group. `cargo run -p apidocs`
//! writes it to `docs/asyncapi.yaml`; a test fails when the committed file
//! differs from what this code generates.

use serde_json::{Map, Value, json};

use crate::{
    dead_letter::{Reason, fields},
    events::catalog,
    schema,
    streams::Stream,
};

/// The document, as JSON (the generator writes it as YAML).
pub fn document(version: &str) -> Value {
    let events = catalog();
    let mut schemas = Map::new();
    schemas.insert("Envelope".into(), schema::envelope_headers(None));
    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut messages = Map::new();
    for stream in Stream::ALL {
        let name = stream.name();
        let mut channel_messages = Map::new();
        let mut refs = Vec::new();
        if stream == Stream::DeadLetters {
            messages.insert("dead_letter".into(), dead_letter_message());
            channel_messages.insert(
                "dead_letter".into(),
                json!({"$ref": "#/components/messages/dead_letter"}),
            );
            refs.push(json!({"$ref": format!("#/channels/{name}/messages/dead_letter")}));
        }
        for e in events.iter().filter(|e| e.stream == stream) {
            let id = e.event_type.replace('.', "_");
            messages.insert(
                id.clone(),
                json!({
                    "name": e.event_type,
                    "title": e.event_type,
                    "summary": e.summary,
                    "contentType": "application/json",
                    "headers": {
                        "schemaFormat": schema::FORMAT,
                        "schema": schema::envelope_headers(Some(e.event_type)),
                    },
                    "payload": {"schemaFormat": schema::FORMAT, "schema": hoist(&e.schema, &mut schemas)},
                    "examples": [{
                        "name": "example",
                        "headers": {
                            "event_id": "0192f3c4-5b6a-7c8d-9e0f-a1b2c3d4e5f6",
                            "event_type": e.event_type,
                            "key": e.example.get("order_id").cloned().unwrap_or(Value::Null),
                            "correlation_id": "0192f3c4-5b6a-7c8d-9e0f-000000000001",
                            "source": stream.producer().unwrap_or_default(),
                            "occurred_at": "2026-11-23T10:00:00.000000Z",
                        },
                        "payload": e.example,
                    }],
                }),
            );
            channel_messages.insert(
                id.clone(),
                json!({"$ref": format!("#/components/messages/{id}")}),
            );
            refs.push(json!({"$ref": format!("#/channels/{name}/messages/{id}")}));
        }
        channels.insert(
            name.into(),
            json!({
                "address": name,
                "title": name,
                "description": format!(
                    "{} Redis stream `<STREAM_PREFIX>{name}` (with `STREAM_PARTITIONS` = P > 1, the P streams `<STREAM_PREFIX>{name}:{{p<i>}}`, an event in the partition of its order id: FNV-1a 64 of the key mod P); each entry is one envelope (flat text fields) whose `payload` field holds the JSON payload.",
                    stream.description()
                ),
                "messages": channel_messages,
            }),
        );
        let publisher = stream.producer().unwrap_or("every consumer loop");
        operations.insert(
            format!("{}.send.{name}", stream.producer().unwrap_or("consumers")),
            json!({
                "action": "send",
                "title": format!("{publisher} publishes to {name}"),
                "summary": publish_summary(stream),
                "channel": {"$ref": format!("#/channels/{name}")},
                "messages": refs,
            }),
        );
        for group in stream.groups() {
            operations.insert(
                format!("{group}.receive.{name}"),
                json!({
                    "action": "receive",
                    "title": format!("consumer group `{group}` reads {name}"),
                    "summary": "XREADGROUP as a member of the group; XACK after the effect committed; retried, taken over with XAUTOCLAIM, dead-lettered after MAX_ATTEMPTS (see docs/delivery-guarantees.md).",
                    "channel": {"$ref": format!("#/channels/{name}")},
                    "messages": refs,
                }),
            );
        }
    }
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "foodchain events",
            "version": version,
            "description": "Every event that crosses foodchain's Redis Streams: the services talk only through these. Generated from the contract crate (contract/src/events.rs); do not edit by hand, run `cargo run -p apidocs`. A readable overview: docs/events.md; guarantees per stream: docs/delivery-guarantees.md.",
            "license": {"name": "MIT OR Apache-2.0"},
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": "127.0.0.1:16379",
                "protocol": "redis",
                "description": "The Redis `make run` starts; stream keys carry the deployment's STREAM_PREFIX (empty by default).",
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages,
            "schemas": schemas,
        },
    })
}

/// A standalone schema made part of the document: its `definitions` move to
/// `components.schemas` (shared by every message that uses them) and its
/// references follow, since a `$ref` in an AsyncAPI document is resolved
/// against the document, not against the schema it sits in.
fn hoist(standalone: &Value, schemas: &mut Map<String, Value>) -> Value {
    let mut schema = standalone.clone();
    if let Some(obj) = schema.as_object_mut() {
        obj.remove("$schema");
        if let Some(Value::Object(defs)) = obj.remove("definitions") {
            for (name, def) in defs {
                let def = rewrite_refs(def);
                schemas.entry(name).or_insert(def);
            }
        }
    }
    rewrite_refs(schema)
}

fn rewrite_refs(v: Value) -> Value {
    match v {
        Value::Object(obj) => Value::Object(
            obj.into_iter()
                .map(|(k, v)| match (k.as_str(), &v) {
                    ("$ref", Value::String(r)) => (
                        k,
                        Value::String(r.replace("#/definitions/", "#/components/schemas/")),
                    ),
                    _ => (k, rewrite_refs(v)),
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(rewrite_refs).collect()),
        other => other,
    }
}

fn publish_summary(stream: Stream) -> &'static str {
    match stream {
        Stream::OrderStatus | Stream::DeliveryStatus => {
            "XADD from a durable timer, in the same Lua script that removes the timer and schedules the next one."
        }
        Stream::DeadLetters => {
            "Moved here with XACK of the original in one Lua script, after MAX_ATTEMPTS failed attempts, or at once when undecodable."
        }
        _ => {
            "Written to the service's transactional outbox in the transaction of the state change, then XADDed by the outbox relay (at least once; consumers dedupe by event_id)."
        }
    }
}

fn dead_letter_message() -> Value {
    let text = |d: &str| json!({"type": "string", "description": d});
    json!({
        "name": "dead_letter",
        "title": "dead letter",
        "summary": "A message a consumer group gave up on, with its full context and its original fields verbatim (`f:<name>`).",
        "contentType": "text/plain",
        "payload": {
            "schemaFormat": schema::FORMAT,
            "schema": {
                "$schema": "http://json-schema.org/draft-07/schema#",
                "type": "object",
                "required": [
                    fields::ORIGIN_STREAM, fields::ORIGIN_ID, fields::GROUP, fields::CONSUMER,
                    fields::REASON, fields::ERROR, fields::ATTEMPTS, fields::FIRST_SEEN_MS,
                    fields::DEAD_LETTERED_MS,
                ],
                "properties": {
                    fields::ORIGIN_STREAM: text("Full key of the stream the message came from."),
                    fields::ORIGIN_ID: text("Its entry id there."),
                    fields::GROUP: text("The consumer group that gave up on it."),
                    fields::CONSUMER: text("The consumer that moved it."),
                    fields::REASON: {
                        "type": "string",
                        "enum": Reason::ALL.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
                    },
                    fields::ERROR: text("The last error text."),
                    fields::ATTEMPTS: text("Handler runs it went through (a number)."),
                    fields::FIRST_SEEN_MS: text("When it entered its origin stream (ms since the epoch)."),
                    fields::DEAD_LETTERED_MS: text("When it was moved here (ms since the epoch)."),
                },
                "patternProperties": {"^f:": text("An original field, byte for byte.")},
            },
        },
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn one_channel_per_stream_every_message_with_schema_example_and_operations() {
        let doc = document("0.0.0");
        assert_eq!(doc["asyncapi"], "3.0.0");
        let channels = doc["channels"].as_object().unwrap();
        assert_eq!(channels.len(), Stream::ALL.len());
        let messages = doc["components"]["messages"].as_object().unwrap();
        let text = doc.to_string();
        assert!(
            !text.contains("#/definitions/"),
            "every ref resolves in the document"
        );
        for e in catalog() {
            let m = &messages[&e.event_type.replace('.', "_")];
            assert_eq!(m["payload"]["schema"]["title"], e.schema["title"]);
            assert_eq!(m["examples"][0]["payload"], e.example);
        }
        assert!(doc["components"]["schemas"]["Customer"].is_object());
        let ops = doc["operations"].as_object().unwrap();
        assert!(ops.contains_key("order-svc.send.orders-stream"));
        assert!(ops.contains_key("delivery-svc.receive.orders-stream"));
        assert!(ops.contains_key("notify-svc.receive.deliveries-stream"));
    }
}
