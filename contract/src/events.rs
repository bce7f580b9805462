//! The events: one Rust type per event, one enum per stream.
//!
//! Every event type implements [`Event`]: its name, version and stream are
//! associated constants next to the type, so the wire name of an event can
//! only be written once (`order.created.v1` is `OrderCreated::TYPE`). A new
//! incompatible payload gets a new version (`.v2`) and both are published
//! until every consumer reads the new one. Every event about an order,
//! delivery events included, uses the order id as envelope `key`, so a
//! consumer handles one order's events in order.
//!
//! Every stream carries the events of one [`StreamEvent`] enum
//! ([`OrdersEvent`] for `orders-stream`, ...). A consumer decodes each
//! envelope into its stream's enum once, at the edge, and then matches on
//! it: the compiler lists every event a handler forgets, and an envelope of a
//! type the stream does not carry, or with a payload that does not fit its
//! type, is one error ([`DecodeError`]) that the consumer loop dead-letters
//! with the reason.
//!
//! [`catalog`] lists every event with its JSON Schema and an example, for the
//! AsyncAPI document and for the tests that validate what crosses the streams.

use std::fmt::Debug;

use chrono::{DateTime, TimeZone, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{
    auth::TokenHash,
    envelope::Envelope,
    ids::{DeliveryId, MenuItemId, OrderId},
    status::{DeliveryStatus, OrderStatus},
    streams::Stream,
};

/// One event type of the contract.
pub trait Event:
    Serialize + DeserializeOwned + JsonSchema + Clone + Debug + PartialEq + Send + Sync + 'static
{
    /// `<aggregate>.<fact>`, e.g. `order.created`.
    const NAME: &'static str;
    /// Payload version.
    const VERSION: u32;
    /// The versioned type name in envelopes: `order.created.v1`.
    const TYPE: &'static str;
    /// The stream it travels on.
    const STREAM: Stream;
    /// What it means, in one line.
    const SUMMARY: &'static str;

    /// The envelope's ordering key: the order id.
    fn key(&self) -> String;

    /// A typical instance (documentation, tests).
    fn example() -> Self;
}

/// Why an envelope is not one of its stream's events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The stream does not carry this event type.
    #[error("`{event_type}` is not an event type of {stream} (it carries: {})", .known.join(", "))]
    UnknownType {
        /// The stream.
        stream: Stream,
        /// The type found.
        event_type: String,
        /// The types the stream carries.
        known: Vec<&'static str>,
    },
    /// The payload does not fit the event type.
    #[error("invalid {event_type} payload: {error}")]
    Payload {
        /// The event type.
        event_type: &'static str,
        /// What serde said.
        error: String,
    },
}

/// The events of one stream, decoded once at the edge.
pub trait StreamEvent: Sized + Debug + Send + Sync + 'static {
    /// The stream.
    const STREAM: Stream;

    /// Every event type the stream carries.
    fn types() -> Vec<&'static str>;

    /// The event in `envelope`.
    fn decode(envelope: &Envelope) -> Result<Self, DecodeError>;

    /// Its type name.
    fn event_type(&self) -> &'static str;
}

fn decode_payload<E: Event>(envelope: &Envelope) -> Result<E, DecodeError> {
    envelope
        .payload_as::<E>()
        .map_err(|e| DecodeError::Payload {
            event_type: E::TYPE,
            error: e.to_string(),
        })
}

/// What [`catalog`] says about one event type.
#[derive(Debug, Clone)]
pub struct EventInfo {
    /// `order.created.v1`.
    pub event_type: &'static str,
    /// `order.created`.
    pub name: &'static str,
    /// Payload version.
    pub version: u32,
    /// Its stream.
    pub stream: Stream,
    /// What it means.
    pub summary: &'static str,
    /// Its payload's JSON Schema (draft-07, definitions inlined under `definitions`).
    pub schema: serde_json::Value,
    /// An example payload.
    pub example: serde_json::Value,
}

fn info<E: Event>() -> EventInfo {
    EventInfo {
        event_type: E::TYPE,
        name: E::NAME,
        version: E::VERSION,
        stream: E::STREAM,
        summary: E::SUMMARY,
        schema: crate::schema::of::<E>(),
        example: serde_json::to_value(E::example()).unwrap_or_default(),
    }
}

macro_rules! event {
    ($ty:ident, $name:literal, $version:literal, $stream:ident, key: $key:ident, $summary:literal, $example:expr) => {
        impl Event for $ty {
            const NAME: &'static str = $name;
            const VERSION: u32 = $version;
            const TYPE: &'static str = concat!($name, ".v", $version);
            const STREAM: Stream = Stream::$stream;
            const SUMMARY: &'static str = $summary;

            fn key(&self) -> String {
                self.$key.to_string()
            }

            fn example() -> Self {
                $example
            }
        }
    };
}

macro_rules! stream_events {
    ($(#[$doc:meta])* $enum:ident on $stream:ident { $($variant:ident($ty:ty)),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq)]
        pub enum $enum {
            $(
                #[doc = concat!("`", stringify!($ty), "`")]
                $variant($ty),
            )+
        }

        impl StreamEvent for $enum {
            const STREAM: Stream = Stream::$stream;

            fn types() -> Vec<&'static str> {
                vec![$(<$ty as Event>::TYPE),+]
            }

            fn decode(envelope: &Envelope) -> Result<Self, DecodeError> {
                $(
                    if envelope.event_type == <$ty as Event>::TYPE {
                        return decode_payload::<$ty>(envelope).map(Self::$variant);
                    }
                )+
                Err(DecodeError::UnknownType {
                    stream: Stream::$stream,
                    event_type: envelope.event_type.clone(),
                    known: Self::types(),
                })
            }

            fn event_type(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => <$ty as Event>::TYPE),+
                }
            }
        }

        impl $enum {
            fn catalog() -> Vec<EventInfo> {
                vec![$(info::<$ty>()),+]
            }
        }
    };
}

/// Who ordered, and where it goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Customer {
    /// Name (1 to 100 characters).
    pub name: String,
    /// Delivery address (1 to 300 characters).
    pub address: String,
    /// Phone number (5 to 20 digits, optionally with `+ - ( ) .` and spaces).
    pub phone: String,
}

/// One line of an order, priced when the order was placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderLine {
    /// Menu item.
    pub item_id: MenuItemId,
    /// Menu item name at order time.
    pub name: String,
    /// How many.
    pub quantity: u32,
    /// Price of one, in cents, at order time.
    pub unit_price_cents: i64,
}

/// `order.created.v1`: an order was accepted and its stock reserved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderCreated {
    /// Order id.
    pub order_id: OrderId,
    /// Always `created`.
    pub status: OrderStatus,
    /// Customer.
    pub customer: Customer,
    /// Lines.
    pub items: Vec<OrderLine>,
    /// Server-computed total.
    pub total_cents: i64,
    /// Version of the order after this event (1).
    pub version: u32,
    /// When it was accepted.
    pub created_at: DateTime<Utc>,
    /// SHA-256 of the order's tracking token: lets notify-svc check the
    /// token of a tracker without asking order-svc (never the token itself).
    pub tracking_token_hash: TokenHash,
}

/// `order.status_updated.v1`: an order moved to a new status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderStatusUpdated {
    /// Order id.
    pub order_id: OrderId,
    /// New status.
    pub status: OrderStatus,
    /// Status before.
    pub previous: OrderStatus,
    /// Version of the order after this event.
    pub version: u32,
    /// Where to deliver; set when the order goes out for delivery, so the
    /// delivery service needs no copy of the order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<Customer>,
}

/// `order.status_changed.v1`: the kitchen moved an order on (or, with
/// status `rejected` and a reason, refused it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderStatusChanged {
    /// Order id.
    pub order_id: OrderId,
    /// Status it should move to.
    pub status: OrderStatus,
    /// Why, for a rejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Units of one menu item put back in stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Restocked {
    /// Menu item.
    pub item_id: MenuItemId,
    /// Units put back.
    pub quantity: u32,
}

/// `order.cancelled.v1`: the customer cancelled an order before it went out
/// for delivery; its stock was put back in the same transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderCancelled {
    /// Order id.
    pub order_id: OrderId,
    /// The status it was cancelled at.
    pub previous: OrderStatus,
    /// Version of the order after this event.
    pub version: u32,
    /// What the customer said, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The stock put back, per line.
    pub restocked: Vec<Restocked>,
}

/// `order.rejected.v1`: the kitchen refused an order; its stock was put back
/// in the same transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderRejected {
    /// Order id.
    pub order_id: OrderId,
    /// The status it was rejected at (`created`).
    pub previous: OrderStatus,
    /// Version of the order after this event.
    pub version: u32,
    /// Why the kitchen refused it.
    pub reason: String,
    /// The stock put back, per line.
    pub restocked: Vec<Restocked>,
}

/// `delivery.created.v1`: a delivery was created for an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DeliveryCreated {
    /// Delivery id.
    pub delivery_id: DeliveryId,
    /// Order it delivers.
    pub order_id: OrderId,
    /// Always `waiting_for_pickup`.
    pub status: DeliveryStatus,
    /// Where to.
    pub address: String,
    /// Version after this event (1).
    pub version: u32,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// `delivery.status_updated.v1`: a delivery moved to a new status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DeliveryStatusUpdated {
    /// Delivery id.
    pub delivery_id: DeliveryId,
    /// Order it delivers.
    pub order_id: OrderId,
    /// New status.
    pub status: DeliveryStatus,
    /// Status before.
    pub previous: DeliveryStatus,
    /// Version after this event.
    pub version: u32,
}

/// `delivery.status_changed.v1`: the courier moved a delivery on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DeliveryStatusChanged {
    /// Delivery id.
    pub delivery_id: DeliveryId,
    /// Order it delivers.
    pub order_id: OrderId,
    /// Status it should move to.
    pub status: DeliveryStatus,
}

/// `simulation.order_requested.v1`: please simulate this order's kitchen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SimulationOrderRequested {
    /// Order to move along.
    pub order_id: OrderId,
}

/// `simulation.delivery_requested.v1`: please simulate this delivery's courier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SimulationDeliveryRequested {
    /// Delivery to move along.
    pub delivery_id: DeliveryId,
    /// Its order.
    pub order_id: OrderId,
}

const EXAMPLE_ORDER: OrderId = OrderId::from_bytes([
    0x65, 0xf1, 0xa2, 0xb3, 0xc4, 0xd5, 0xe6, 0xf7, 0x08, 0x19, 0x2a, 0x3b,
]);
const EXAMPLE_DELIVERY: DeliveryId = DeliveryId::from_bytes([
    0x65, 0xf1, 0xa2, 0xb3, 0xc4, 0xd5, 0xe6, 0xf7, 0x08, 0x19, 0x2a, 0x3c,
]);
const EXAMPLE_ITEM: MenuItemId = MenuItemId::from_bytes([
    0x65, 0xf1, 0xa2, 0xb3, 0xc4, 0xd5, 0xe6, 0xf7, 0x08, 0x19, 0x2a, 0x01,
]);

fn example_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0)
        .single()
        .unwrap_or_default()
}

fn example_customer() -> Customer {
    Customer {
        name: "Ada Lovelace".into(),
        address: "12 Analytical Row".into(),
        phone: "+44 20 7946 0958".into(),
    }
}

event!(OrderCreated, "order.created", 1, Orders, key: order_id,
"An order was accepted and its stock reserved.",
OrderCreated {
    order_id: EXAMPLE_ORDER,
    status: OrderStatus::Created,
    customer: example_customer(),
    items: vec![OrderLine {
        item_id: EXAMPLE_ITEM,
        name: "Margherita".into(),
        quantity: 2,
        unit_price_cents: 950,
    }],
    total_cents: 1900,
    version: 1,
    created_at: example_time(),
    tracking_token_hash: crate::auth::TrackingToken::from_bytes([7; 32]).hash(),
});
event!(OrderStatusUpdated, "order.status_updated", 1, Orders, key: order_id,
"An order moved to a new status (with the customer when it goes out for delivery).",
OrderStatusUpdated {
    order_id: EXAMPLE_ORDER,
    status: OrderStatus::Confirmed,
    previous: OrderStatus::Created,
    version: 2,
    customer: None,
});
event!(OrderStatusChanged, "order.status_changed", 1, OrderStatus, key: order_id,
    "The kitchen moved an order on (or refused it: status rejected, with a reason).",
    OrderStatusChanged { order_id: EXAMPLE_ORDER, status: OrderStatus::Confirmed, reason: None });
event!(OrderCancelled, "order.cancelled", 1, Orders, key: order_id,
"The customer cancelled an order before it went out for delivery; its stock is back.",
OrderCancelled {
    order_id: EXAMPLE_ORDER,
    previous: OrderStatus::Preparing,
    version: 4,
    reason: Some("changed my mind".into()),
    restocked: vec![Restocked { item_id: EXAMPLE_ITEM, quantity: 2 }],
});
event!(OrderRejected, "order.rejected", 1, Orders, key: order_id,
"The kitchen refused an order at the confirm step; its stock is back.",
OrderRejected {
    order_id: EXAMPLE_ORDER,
    previous: OrderStatus::Created,
    version: 2,
    reason: "the kitchen is out of dough".into(),
    restocked: vec![Restocked { item_id: EXAMPLE_ITEM, quantity: 2 }],
});
event!(DeliveryCreated, "delivery.created", 1, Deliveries, key: order_id,
"A delivery was created for an order that went out for delivery.",
DeliveryCreated {
    delivery_id: EXAMPLE_DELIVERY,
    order_id: EXAMPLE_ORDER,
    status: DeliveryStatus::WaitingForPickup,
    address: "12 Analytical Row".into(),
    version: 1,
    created_at: example_time(),
});
event!(DeliveryStatusUpdated, "delivery.status_updated", 1, Deliveries, key: order_id,
"A delivery moved to a new status.",
DeliveryStatusUpdated {
    delivery_id: EXAMPLE_DELIVERY,
    order_id: EXAMPLE_ORDER,
    status: DeliveryStatus::OnTheWay,
    previous: DeliveryStatus::WaitingForPickup,
    version: 2,
});
event!(DeliveryStatusChanged, "delivery.status_changed", 1, DeliveryStatus, key: order_id,
"The courier moved a delivery on.",
DeliveryStatusChanged {
    delivery_id: EXAMPLE_DELIVERY,
    order_id: EXAMPLE_ORDER,
    status: DeliveryStatus::OnTheWay,
});
event!(SimulationOrderRequested, "simulation.order_requested", 1, SimulateOrder, key: order_id,
    "Please simulate this order's kitchen.",
    SimulationOrderRequested { order_id: EXAMPLE_ORDER });
event!(SimulationDeliveryRequested, "simulation.delivery_requested", 1, SimulateDelivery, key: order_id,
    "Please simulate this delivery's courier.",
    SimulationDeliveryRequested { delivery_id: EXAMPLE_DELIVERY, order_id: EXAMPLE_ORDER });

stream_events! {
    /// What `orders-stream` carries.
    OrdersEvent on Orders {
        Created(OrderCreated),
        StatusUpdated(OrderStatusUpdated),
        Cancelled(OrderCancelled),
        Rejected(OrderRejected),
    }
}
stream_events! {
    /// What `deliveries-stream` carries.
    DeliveriesEvent on Deliveries { Created(DeliveryCreated), StatusUpdated(DeliveryStatusUpdated) }
}
stream_events! {
    /// What `order-status-stream` carries.
    OrderStatusEvent on OrderStatus { Changed(OrderStatusChanged) }
}
stream_events! {
    /// What `delivery-status-stream` carries.
    DeliveryStatusEvent on DeliveryStatus { Changed(DeliveryStatusChanged) }
}
stream_events! {
    /// What `simulate-order-stream` carries.
    SimulateOrderEvent on SimulateOrder { Requested(SimulationOrderRequested) }
}
stream_events! {
    /// What `simulate-delivery-stream` carries.
    SimulateDeliveryEvent on SimulateDelivery { Requested(SimulationDeliveryRequested) }
}

/// Every event of the contract, stream by stream.
pub fn catalog() -> Vec<EventInfo> {
    [
        OrdersEvent::catalog(),
        DeliveriesEvent::catalog(),
        OrderStatusEvent::catalog(),
        DeliveryStatusEvent::catalog(),
        SimulateOrderEvent::catalog(),
        SimulateDeliveryEvent::catalog(),
    ]
    .concat()
}

/// The event types a stream carries (none for the dead letters, which carry
/// dead-letter entries, see [`crate::dead_letter`]).
pub fn types_of(stream: Stream) -> Vec<&'static str> {
    match stream {
        Stream::Orders => OrdersEvent::types(),
        Stream::Deliveries => DeliveriesEvent::types(),
        Stream::OrderStatus => OrderStatusEvent::types(),
        Stream::DeliveryStatus => DeliveryStatusEvent::types(),
        Stream::SimulateOrder => SimulateOrderEvent::types(),
        Stream::SimulateDelivery => SimulateDeliveryEvent::types(),
        Stream::DeadLetters => Vec::new(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_event_is_on_the_stream_whose_enum_lists_it_and_round_trips() {
        let catalog = catalog();
        assert_eq!(catalog.len(), 10);
        for e in &catalog {
            assert!(
                types_of(e.stream).contains(&e.event_type),
                "{}",
                e.event_type
            );
            assert_eq!(e.event_type, format!("{}.v{}", e.name, e.version));
            crate::envelope::validate_event_type(e.event_type).unwrap();
        }
        let mut names: Vec<_> = catalog.iter().map(|e| e.event_type).collect();
        names.dedup();
        assert_eq!(names.len(), catalog.len(), "type names are unique");

        let created = OrderCreated::example();
        let env = Envelope::of(&created, "c-1", "order-svc");
        assert_eq!(env.event_type, "order.created.v1");
        assert_eq!(env.key, "65f1a2b3c4d5e6f708192a3b");
        assert_eq!(
            OrdersEvent::decode(&env).unwrap(),
            OrdersEvent::Created(created)
        );
    }

    #[test]
    fn unknown_types_and_bad_payloads_are_decode_errors() {
        let env = Envelope::of(&OrderStatusChanged::example(), "c", "s");
        let err = OrdersEvent::decode(&env).unwrap_err();
        assert!(matches!(err, DecodeError::UnknownType { .. }), "{err}");
        assert!(err.to_string().contains("order.created.v1"), "{err}");
        let mut bad = Envelope::of(&OrderCreated::example(), "c", "s");
        bad.payload["order_id"] = "not-an-id".into();
        assert!(matches!(
            OrdersEvent::decode(&bad),
            Err(DecodeError::Payload {
                event_type: "order.created.v1",
                ..
            })
        ));
    }
}
