//! Checking what the system really sends against the documents generated from
//! the code: every REST answer against its service's OpenAPI document, and
//! every stream entry against the contract's schemas (the envelope, and the
//! payload of its event type).

use std::collections::HashMap;

use contract::{Envelope, StreamEntry, events::catalog, schema::envelope_headers};
use jsonschema::Validator;
use serde_json::{Value, json};

/// Compiles `schema` (draft-07, as the contract writes them).
fn draft7(schema: &Value) -> Validator {
    jsonschema::draft7::new(schema).expect("the contract's schemas compile")
}

fn first_errors(v: &Validator, instance: &Value) -> Result<(), String> {
    let errors: Vec<String> = v
        .iter_errors(instance)
        .take(5)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// The contract's schemas, compiled once.
pub struct Events {
    headers: Validator,
    payloads: HashMap<&'static str, Validator>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

impl Default for Events {
    fn default() -> Self {
        Self {
            headers: draft7(&envelope_headers(None)),
            payloads: catalog()
                .into_iter()
                .map(|e| (e.event_type, draft7(&e.schema)))
                .collect(),
        }
    }
}

impl Events {
    /// Checks one entry of an event stream: an envelope whose type the
    /// contract knows and whose payload fits that type's schema.
    pub fn check(&self, entry: &StreamEntry) -> Result<(), String> {
        let envelope = Envelope::from_entry(entry).map_err(|e| format!("not an envelope: {e}"))?;
        let headers: serde_json::Map<String, Value> = entry
            .fields
            .iter()
            .filter(|(k, _)| k != "payload")
            .map(|(k, v)| {
                (
                    k.clone(),
                    Value::String(String::from_utf8_lossy(v).into_owned()),
                )
            })
            .collect();
        first_errors(&self.headers, &Value::Object(headers))
            .map_err(|e| format!("envelope of {}: {e}", entry.id))?;
        let payload = self
            .payloads
            .get(envelope.event_type.as_str())
            .ok_or_else(|| format!("{}: no schema for {}", entry.id, envelope.event_type))?;
        first_errors(payload, &envelope.payload)
            .map_err(|e| format!("{} payload of {}: {e}", envelope.event_type, entry.id))
    }
}

/// One service's OpenAPI document, ready to check answers against.
#[derive(Debug, Clone)]
pub struct Spec {
    doc: Value,
}

impl Spec {
    /// The document (as the service serves it at `/api/v1/openapi.json`).
    pub fn new(doc: Value) -> Self {
        Self { doc }
    }

    /// The path template of the document that `path` (no query) matches.
    fn template(&self, path: &str) -> Option<&str> {
        let paths = self.doc["paths"].as_object()?;
        let segments: Vec<&str> = path.split('/').collect();
        paths.keys().map(String::as_str).find(|t| {
            let ts: Vec<&str> = t.split('/').collect();
            ts.len() == segments.len()
                && ts.iter().zip(&segments).all(|(t, s)| {
                    (t.starts_with('{') && t.ends_with('}') && !s.is_empty()) || t == s
                })
        })
    }

    /// Whether an answer is one the document describes: the status is listed
    /// for the operation, and a JSON body fits the response's schema.
    /// Requests to paths or methods the document does not have are not
    /// checked (the router answers them with its own 404 / 405).
    pub fn check(&self, method: &str, path: &str, status: u16, body: &Value) -> Result<(), String> {
        let path = path.split('?').next().unwrap_or(path);
        let Some(template) = self.template(path) else {
            return Ok(());
        };
        let Some(op) = self.doc["paths"][template].get(method.to_ascii_lowercase()) else {
            return Ok(());
        };
        let what = format!("{method} {template} answered {status}");
        let response = op["responses"]
            .get(status.to_string())
            .or_else(|| op["responses"].get("default"))
            .ok_or_else(|| format!("{what}: a status the document does not list"))?;
        let Some(schema) = response["content"]["application/json"].get("schema") else {
            return Ok(());
        };
        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": self.doc["components"],
            "allOf": [schema],
        });
        let validator = jsonschema::draft202012::new(&root)
            .map_err(|e| format!("{what}: the document's schema does not compile: {e}"))?;
        first_errors(&validator, body)
            .map_err(|e| format!("{what}: body does not fit: {e}; body: {body}"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use contract::events::{Event, OrderCreated};

    use super::*;

    #[test]
    fn answers_are_checked_against_status_and_schema() {
        let spec = Spec::new(json!({
            "openapi": "3.1.0",
            "paths": {"/things/{id}": {"get": {"responses": {
                "200": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Thing"}}}},
                "404": {"description": "none"},
            }}}},
            "components": {"schemas": {"Thing": {"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}}}},
        }));
        assert!(
            spec.check("GET", "/things/1", 200, &json!({"id": "1"}))
                .is_ok()
        );
        let err = spec
            .check("GET", "/things/1", 200, &json!({"id": 1}))
            .unwrap_err();
        assert!(err.contains("body does not fit"), "{err}");
        let err = spec
            .check("GET", "/things/1?x=1", 500, &json!({}))
            .unwrap_err();
        assert!(err.contains("does not list"), "{err}");
        assert!(spec.check("GET", "/things/1", 404, &Value::Null).is_ok());
        assert!(
            spec.check("GET", "/elsewhere", 500, &Value::Null).is_ok(),
            "not ours"
        );
    }

    #[test]
    fn entries_are_checked_against_the_contract() {
        let events = Events::default();
        let entry = |e: &Envelope| StreamEntry {
            id: "1-0".into(),
            fields: e
                .to_fields()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.into_bytes()))
                .collect(),
        };
        let good = Envelope::of(&OrderCreated::example(), "c", "order-svc");
        events.check(&entry(&good)).unwrap();
        let mut bad = good.clone();
        bad.payload["total_cents"] = json!("lots");
        let err = events.check(&entry(&bad)).unwrap_err();
        assert!(
            err.contains(OrderCreated::TYPE) && err.contains("total_cents"),
            "{err}"
        );
        let mut unknown = good;
        unknown.event_type = "order.teleported.v1".into();
        assert!(
            events
                .check(&entry(&unknown))
                .unwrap_err()
                .contains("no schema")
        );
    }
}
