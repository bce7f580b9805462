//! Id newtypes: an order, a delivery, a menu item.
//!
//! Every id is 12 bytes (a MongoDB ObjectId where the service stores one),
//! written as 24 lowercase hex digits on the wire. Parsing accepts either
//! case and normalises, so one id has exactly one text form, and a value that
//! is not an id cannot exist past the edge that parsed it.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a text is not an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not a valid {what} id (24 hex digits)")]
pub struct InvalidId {
    /// What kind of id was expected (`order`, `delivery`, `menu item`).
    pub what: &'static str,
    /// The text given (cut to 64 characters).
    pub value: String,
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; 12]);

        impl $name {
            /// What this id names, in messages.
            pub const WHAT: &'static str = $what;

            /// The id of these 12 bytes.
            pub const fn from_bytes(bytes: [u8; 12]) -> Self {
                Self(bytes)
            }

            /// Its 12 bytes.
            pub const fn bytes(self) -> [u8; 12] {
                self.0
            }

            /// Parses 24 hex digits (either case).
            pub fn parse(s: &str) -> Result<Self, InvalidId> {
                let invalid = || InvalidId {
                    what: $what,
                    value: s.chars().take(64).collect(),
                };
                if s.len() != 24 {
                    return Err(invalid());
                }
                let mut bytes = [0u8; 12];
                hex::decode_to_slice(s, &mut bytes).map_err(|_| invalid())?;
                Ok(Self(bytes))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({self})", stringify!($name))
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }

        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "type": "string",
                    "pattern": "^[0-9a-f]{24}$",
                    "description": concat!("A ", $what, " id: 24 lowercase hex digits."),
                    "examples": ["65f1a2b3c4d5e6f708192a3b"],
                })
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .pattern(Some("^[0-9a-f]{24}$"))
                    .description(Some(concat!("A ", $what, " id: 24 lowercase hex digits.")))
                    .examples(["65f1a2b3c4d5e6f708192a3b"])
                    .into()
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $name {}
    };
}

id_type!(
    /// An order.
    OrderId,
    "order"
);
id_type!(
    /// A delivery (one per order).
    DeliveryId,
    "delivery"
);
id_type!(
    /// A menu item.
    MenuItemId,
    "menu item"
);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn one_text_form_per_id() {
        let id = OrderId::parse("65F1A2B3C4D5E6F708192A3B").unwrap();
        assert_eq!(id.to_string(), "65f1a2b3c4d5e6f708192a3b");
        assert_eq!(OrderId::parse(&id.to_string()).unwrap(), id);
        assert_eq!(
            serde_json::to_value(id).unwrap(),
            "65f1a2b3c4d5e6f708192a3b"
        );
        assert_eq!(
            serde_json::from_value::<OrderId>("65f1a2b3c4d5e6f708192a3b".into()).unwrap(),
            id
        );
        for bad in [
            "",
            "65f1",
            "65f1a2b3c4d5e6f708192a3g",
            "65f1a2b3c4d5e6f708192a3b0",
        ] {
            let e = OrderId::parse(bad).unwrap_err();
            assert_eq!(e.what, "order");
        }
        assert!(serde_json::from_value::<DeliveryId>("x".into()).is_err());
    }
}
