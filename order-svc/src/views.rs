//! How menu items and orders look in the API (and in stored idempotent responses).

use chrono::{DateTime, Utc};
use contract::{MenuItemId, OrderId, events::Customer, status::OrderStatus};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::{MenuItem, Order};

/// A menu item as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct MenuItemView {
    /// Id.
    id: MenuItemId,
    /// Display name.
    name: String,
    /// One line about it.
    description: String,
    /// Menu section.
    category: String,
    /// Price of one, in cents.
    price_cents: i64,
    /// Units left (0: sold out).
    stock: i64,
}

impl From<MenuItem> for MenuItemView {
    fn from(i: MenuItem) -> Self {
        Self {
            id: MenuItemId::from_bytes(i.id.bytes()),
            name: i.name,
            description: i.description,
            category: i.category,
            price_cents: i.price_cents,
            stock: i.stock,
        }
    }
}

/// An order as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderView {
    /// Id.
    id: OrderId,
    /// Current status.
    status: OrderStatus,
    /// Incremented by every status change.
    version: u32,
    /// Who ordered, and where it goes.
    customer: Customer,
    /// The lines, priced when the order was placed.
    items: Vec<LineView>,
    /// Sum of the lines, in cents, computed by the server.
    total_cents: i64,
    /// When it was accepted.
    created_at: DateTime<Utc>,
    /// Last change.
    updated_at: DateTime<Utc>,
    /// Why it was cancelled or rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// The answer to a new order: the order, and (once) how to track it.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlacedOrderView {
    /// The order.
    #[serde(flatten)]
    pub order: OrderView,
    /// The order's tracking token: 256 random bits, base64url (43
    /// characters). Sent once; only its hash is stored. Reading the order
    /// (`Authorization: Bearer <token>`), its timeline and its live tracker
    /// need it.
    #[schema(min_length = 43, max_length = 43, pattern = "^[A-Za-z0-9_-]{43}$")]
    pub tracking_token: String,
    /// The tracker page of this order (`<TRACKER_BASE_URL>/track/<id>#token=<token>`).
    pub tracking_url: String,
}

/// One line of an order, priced when it was placed.
#[derive(Debug, Serialize, ToSchema)]
struct LineView {
    /// Menu item.
    item_id: MenuItemId,
    /// Its name when the order was placed.
    name: String,
    /// How many.
    quantity: u32,
    /// Price of one, in cents.
    unit_price_cents: i64,
    /// `quantity × unit_price_cents`.
    line_total_cents: i64,
}

impl From<Order> for OrderView {
    fn from(o: Order) -> Self {
        Self {
            id: OrderId::from_bytes(o.id.bytes()),
            status: o.status,
            version: o.version,
            customer: o.customer,
            items: o
                .items
                .into_iter()
                .map(|l| LineView {
                    line_total_cents: l.unit_price_cents * i64::from(l.quantity),
                    item_id: l.item_id,
                    name: l.name,
                    quantity: l.quantity,
                    unit_price_cents: l.unit_price_cents,
                })
                .collect(),
            total_cents: o.total_cents,
            created_at: o.created_at,
            updated_at: o.updated_at,
            reason: o.end_reason,
        }
    }
}
