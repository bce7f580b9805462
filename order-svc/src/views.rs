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
        }
    }
}
