//! How menu items and orders look in the API (and in stored idempotent responses).

use chrono::{DateTime, Utc};
use contract::{MenuItemId, events::Customer, status::OrderStatus};
use serde::Serialize;

use crate::store::{MenuItem, Order};

/// A menu item as the API shows it.
#[derive(Debug, Serialize)]
pub struct MenuItemView {
    id: String,
    name: String,
    description: String,
    category: String,
    price_cents: i64,
    stock: i64,
}

impl From<MenuItem> for MenuItemView {
    fn from(i: MenuItem) -> Self {
        Self {
            id: i.id.to_hex(),
            name: i.name,
            description: i.description,
            category: i.category,
            price_cents: i.price_cents,
            stock: i.stock,
        }
    }
}

/// An order as the API shows it.
#[derive(Debug, Serialize)]
pub struct OrderView {
    id: String,
    status: OrderStatus,
    version: u32,
    customer: Customer,
    items: Vec<LineView>,
    total_cents: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize)]
struct LineView {
    item_id: MenuItemId,
    name: String,
    quantity: u32,
    unit_price_cents: i64,
    line_total_cents: i64,
}

impl From<Order> for OrderView {
    fn from(o: Order) -> Self {
        Self {
            id: o.id.to_hex(),
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
