//! Parsing an order request into domain values, once, at the edge.
//!
//! The body is first parsed as plain JSON (so malformed JSON is one clear
//! error), then walked field by field, collecting *every* problem with its
//! JSON path: unknown fields, missing fields, wrong types, out-of-range
//! quantities, duplicate items, malformed ids. Past this module a
//! [`NewOrder`] can only hold valid values.

use std::collections::HashMap;

use bson::oid::ObjectId;
use contract::{MenuItemId, events::Customer};
use serde_json::{Map, Value};

use crate::{error::FieldErrors, settings::Limits};

/// A validated order request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    /// Trimmed, non-empty customer fields.
    pub customer: Customer,
    /// At least one line, distinct items.
    pub lines: Vec<NewLine>,
}

/// One validated line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewLine {
    /// A well-formed menu item id (existence is checked in the transaction).
    pub item_id: ObjectId,
    /// Between 1 and the configured maximum.
    pub quantity: Quantity,
}

/// A positive, bounded quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity(u32);

impl Quantity {
    /// The number.
    pub fn get(self) -> u32 {
        self.0
    }
}

/// The stored id (a MongoDB ObjectId) of a contract id: both are 12 bytes.
pub fn oid(bytes: [u8; 12]) -> ObjectId {
    ObjectId::from_bytes(bytes)
}

const MAX_NAME: usize = 100;
const MAX_ADDRESS: usize = 300;
const MAX_PHONE: usize = 32;

/// A new order (`POST /api/v1/orders`). Unknown fields are refused, text
/// fields are trimmed, and every problem is reported at once (limits shown
/// are the defaults).
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // a schema, not a value: the body is parsed by `parse_new_order`
pub struct NewOrderRequest {
    /// Who orders, and where it goes.
    customer: CustomerRequest,
    /// The lines: distinct items, 1 to `MAX_ORDER_LINES` (50).
    #[schema(min_items = 1, max_items = 50)]
    items: Vec<LineRequest>,
}

/// The customer of a new order.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct CustomerRequest {
    /// 1 to 100 characters after trimming, no control characters.
    #[schema(min_length = 1, max_length = 100, pattern = "\\S")]
    name: String,
    /// 1 to 300 characters after trimming, no control characters.
    #[schema(min_length = 1, max_length = 300, pattern = "\\S")]
    address: String,
    /// 5 to 20 digits, optionally with `+ - ( ) .` and spaces.
    #[schema(max_length = 32, pattern = "^[ +().-]*([0-9][ +().-]*){5,20}$")]
    phone: String,
}

/// One line of a new order.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct LineRequest {
    /// A menu item id.
    item_id: MenuItemId,
    /// 1 to `MAX_ITEM_QUANTITY` (20).
    #[schema(minimum = 1, maximum = 20)]
    quantity: u32,
}

/// Validates an order request body.
pub fn parse_new_order(body: &Value, limits: Limits) -> Result<NewOrder, FieldErrors> {
    let mut errs = FieldErrors::default();
    let Some(obj) = object(body, "", &mut errs) else {
        return Err(errs);
    };
    reject_unknown(obj, &["customer", "items"], "", &mut errs);
    let customer = match obj.get("customer") {
        None => {
            errs.add("customer", "is required");
            None
        }
        Some(c) => parse_customer(c, &mut errs),
    };
    let lines = match obj.get("items") {
        None => {
            errs.add("items", "is required");
            None
        }
        Some(items) => parse_lines(items, limits, &mut errs),
    };
    match (customer, lines) {
        (Some(customer), Some(lines)) if errs.is_empty() => Ok(NewOrder { customer, lines }),
        _ => Err(errs),
    }
}

fn object<'a>(v: &'a Value, path: &str, errs: &mut FieldErrors) -> Option<&'a Map<String, Value>> {
    let o = v.as_object();
    if o.is_none() {
        errs.add(
            if path.is_empty() { "body" } else { path },
            "must be a JSON object",
        );
    }
    o
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

fn reject_unknown(obj: &Map<String, Value>, known: &[&str], path: &str, errs: &mut FieldErrors) {
    for key in obj.keys().filter(|k| !known.contains(&k.as_str())) {
        errs.add(
            join(path, key),
            format!("unknown field (expected one of: {})", known.join(", ")),
        );
    }
}

fn text(
    obj: &Map<String, Value>,
    field: &str,
    path: &str,
    max: usize,
    errs: &mut FieldErrors,
) -> Option<String> {
    let at = join(path, field);
    match obj.get(field) {
        None => errs.add(at, "is required"),
        Some(Value::String(s)) => {
            let t = s.trim();
            if t.is_empty() {
                errs.add(at, "must not be empty");
            } else if t.chars().count() > max {
                errs.add(at, format!("must be at most {max} characters"));
            } else if t.chars().any(char::is_control) {
                errs.add(at, "must not contain control characters");
            } else {
                return Some(t.to_owned());
            }
        }
        Some(_) => errs.add(at, "must be a string"),
    }
    None
}

fn parse_customer(v: &Value, errs: &mut FieldErrors) -> Option<Customer> {
    let obj = object(v, "customer", errs)?;
    reject_unknown(obj, &["name", "address", "phone"], "customer", errs);
    let name = text(obj, "name", "customer", MAX_NAME, errs);
    let address = text(obj, "address", "customer", MAX_ADDRESS, errs);
    let phone = text(obj, "phone", "customer", MAX_PHONE, errs).and_then(|p| {
        let allowed = p
            .chars()
            .all(|c| c.is_ascii_digit() || " +-().".contains(c));
        let digits = p.chars().filter(char::is_ascii_digit).count();
        if allowed && (5..=20).contains(&digits) {
            Some(p)
        } else {
            errs.add(
                "customer.phone",
                "must be a phone number: 5 to 20 digits, optionally with + - ( ) . and spaces",
            );
            None
        }
    });
    Some(Customer {
        name: name?,
        address: address?,
        phone: phone?,
    })
}

fn parse_lines(v: &Value, limits: Limits, errs: &mut FieldErrors) -> Option<Vec<NewLine>> {
    let Some(items) = v.as_array() else {
        errs.add("items", "must be an array");
        return None;
    };
    if items.is_empty() {
        errs.add("items", "must contain at least one item");
        return None;
    }
    if items.len() > limits.max_lines {
        errs.add(
            "items",
            format!("must contain at most {} items", limits.max_lines),
        );
        return None;
    }
    let mut lines = Vec::with_capacity(items.len());
    let mut first_index: HashMap<ObjectId, usize> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("items[{i}]");
        let Some(obj) = object(item, &path, errs) else {
            continue;
        };
        reject_unknown(obj, &["item_id", "quantity"], &path, errs);
        let item_id = match obj.get("item_id") {
            None => {
                errs.add(join(&path, "item_id"), "is required");
                None
            }
            Some(Value::String(s)) => match MenuItemId::parse(s) {
                Ok(id) => Some(oid(id.bytes())),
                Err(e) => {
                    errs.add(join(&path, "item_id"), e.to_string());
                    None
                }
            },
            Some(_) => {
                errs.add(join(&path, "item_id"), "must be a string");
                None
            }
        };
        let quantity = parse_quantity(obj.get("quantity"), &join(&path, "quantity"), limits, errs);
        if let Some(id) = item_id {
            if let Some(first) = first_index.get(&id) {
                errs.add(
                    join(&path, "item_id"),
                    format!("duplicates items[{first}]: order one line per item"),
                );
                continue;
            }
            first_index.insert(id, i);
        }
        if let (Some(item_id), Some(quantity)) = (item_id, quantity) {
            lines.push(NewLine { item_id, quantity });
        }
    }
    Some(lines)
}

fn parse_quantity(
    v: Option<&Value>,
    at: &str,
    limits: Limits,
    errs: &mut FieldErrors,
) -> Option<Quantity> {
    let range = format!("must be a whole number from 1 to {}", limits.max_quantity);
    match v {
        None => errs.add(at, "is required"),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(q) if q >= 1 && q <= i64::from(limits.max_quantity) => {
                return u32::try_from(q).ok().map(Quantity);
            }
            _ => errs.add(at, range),
        },
        Some(_) => errs.add(at, range),
    }
    None
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const ID: &str = "65f1a2b3c4d5e6f708192a3b";
    const ID2: &str = "65f1a2b3c4d5e6f708192a3c";

    fn valid() -> Value {
        json!({
            "customer": {"name": " Ada ", "address": "1 Loop Street", "phone": "+44 20 7946 0958"},
            "items": [{"item_id": ID, "quantity": 2}, {"item_id": ID2, "quantity": 1}]
        })
    }

    fn errors(body: Value) -> Vec<String> {
        parse_new_order(&body, Limits::default())
            .unwrap_err()
            .0
            .into_keys()
            .collect()
    }

    #[test]
    fn a_valid_order_parses_and_trims() {
        let o = parse_new_order(&valid(), Limits::default()).unwrap();
        assert_eq!(o.customer.name, "Ada");
        assert_eq!(o.lines.len(), 2);
        assert_eq!(o.lines[0].quantity.get(), 2);
    }

    #[test]
    fn every_bad_field_is_named() {
        let body = json!({
            "customer": {"name": "", "address": 7, "phone": "call me", "email": "x"},
            "items": [
                {"item_id": "nope", "quantity": 0},
                {"item_id": ID, "quantity": -3},
                {"item_id": ID, "quantity": 1},
                {"item_id": ID2, "quantity": 1.5},
                {"item_id": ID2, "quantity": 21, "note": "x"}
            ],
            "coupon": "FREE"
        });
        assert_eq!(
            errors(body),
            [
                "coupon",
                "customer.address",
                "customer.email",
                "customer.name",
                "customer.phone",
                "items[0].item_id",
                "items[0].quantity",
                "items[1].quantity",
                "items[2].item_id",
                "items[3].quantity",
                "items[4].item_id",
                "items[4].note",
                "items[4].quantity",
            ]
        );
    }

    #[test]
    fn structural_problems() {
        assert_eq!(errors(json!([])), ["body"]);
        assert_eq!(errors(json!({})), ["customer", "items"]);
        let mut b = valid();
        b["items"] = json!([]);
        assert_eq!(errors(b), ["items"]);
        let mut b = valid();
        b["items"] = json!("pizza");
        assert_eq!(errors(b), ["items"]);
        let mut b = valid();
        b["items"] = json!(
            (0..51)
                .map(|_| json!({"item_id": ID, "quantity": 1}))
                .collect::<Vec<_>>()
        );
        assert_eq!(errors(b), ["items"]);
        let mut b = valid();
        b["customer"] = json!("Ada");
        assert_eq!(errors(b), ["customer"]);
        let mut b = valid();
        b["items"][0]["quantity"] = json!(u64::MAX);
        assert_eq!(errors(b), ["items[0].quantity"]);
        let mut b = valid();
        b["items"][0]["quantity"] = json!("2");
        assert_eq!(errors(b), ["items[0].quantity"]);
    }
}
