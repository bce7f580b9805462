//! Placing orders in batches: one writer per replica, group commit.
//!
//! Every order decrements the stock of its dishes, and a menu has few dishes,
//! so concurrent orders write the same documents. Run as one transaction
//! each, they conflict (`WriteConflict`) and retry until some give up: at 32
//! clients that was seconds of tail latency and, in the end, 503s. Instead,
//! every request of a replica hands its order to one writer task
//! ([`Placer::place`]) and waits for the answer. The writer takes whatever
//! is queued (up to [`MAX_BATCH`]) and places it in **one** transaction:
//!
//! 1. read every dish the batch names (one query; skipped when the writer
//!    already knows every dish, see "Known dishes" below);
//! 2. decide each order in arrival order against the running stock: unknown
//!    dishes and short stock are refused exactly as a lone transaction would
//!    refuse them, and an accepted order takes its units, so no order is
//!    overtaken and none oversells;
//! 3. write, all in one command where the server has `bulkWrite`
//!    (`common::writes`; otherwise one command per collection): one guarded
//!    `$inc` per dish for the whole batch's units, the orders, their
//!    idempotency records, and one outbox entry holding their events; then
//!    commit. Three round trips for the batch: read, write, commit (two
//!    when the dishes are known).
//!
//! Orders of one replica therefore never conflict with each other: a batch
//! conflicts only with another replica's batch (or a cancel putting stock
//! back), and is then run again as a whole, in the same order, with jittered
//! backoff (fair: nobody is overtaken). A batch of one costs the same round
//! trips as the single transaction did; a batch of 32 costs about what two
//! orders did. The batch grows by itself with the load: while a transaction
//! runs, the next requests queue.
//!
//! Known dishes: most batches name dishes an earlier batch of this writer
//! read, so the writer keeps what it last saw of each (name, price, and the
//! stock its own writes left) and, when every dish of a batch is known with
//! enough stock for it, skips the read: the decrements carry the known name
//! and price in their guards (`{_id, stock ≥ units, name, price_cents}`),
//! and the transaction only writes ([`run_write_transaction`], no read
//! concern, so the `bulkWrite` may come first). Two round trips instead of
//! three. If any guard fails (a price or name changed, another replica or a
//! cancel moved the stock, the dish is gone), the write takes no effect
//! ([`is_not_applied`]), the transaction is aborted and the batch is decided
//! again on a read, exactly as before, which also refreshes what the writer
//! knows. So an order is never priced or accepted on a stale menu: what it
//! was decided on is what the database held when it committed. A dish the
//! writer believes short goes straight to the read (a refusal is decided on
//! what was read, with the number left), so a sold-out dish does not pay a
//! failed write per order.
//!
//! Idempotency keys: the writer looks up every key of a batch in one query
//! before its transaction; a request whose key is already stored (a retry,
//! a replay) answers [`PlaceError::KeyTaken`], and the API replays the
//! stored answer. Two requests with one key in the same batch: the first is
//! placed, the second answers [`PlaceError::KeyTaken`] too. A key stored meanwhile by another
//! replica makes the insert fail with a duplicate key: the writer finds which
//! keys exist, answers those requests `KeyTaken`, and places the rest.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
    time::Duration,
};

use bson::{doc, oid::ObjectId};
use chrono::Utc;
use common::{
    batch::{Batch, Batcher},
    mongo::{
        MaybeMongoError, RetryPolicy, is_duplicate_key, run_transaction, run_write_transaction,
    },
    outbox::{Outbox, Written},
    writes::{Writes, is_not_applied},
};
use contract::{MenuItemId, auth::TrackingToken, events::OrderLine, status::OrderStatus};
use futures::TryStreamExt;
use mongodb::{ClientSession, Collection};

use crate::{
    domain::NewOrder,
    error::FieldErrors,
    events,
    idempotency::{Key, Keys, Reply},
    store::{MenuItem, Order, PlaceError, Placed},
};

/// Most orders in one transaction.
pub const MAX_BATCH: usize = 64;

/// One order to place.
struct Request {
    new: NewOrder,
    correlation_id: String,
    key: Option<Key>,
    token: TrackingToken,
    reply: fn(&Order) -> Reply,
}

/// What the writer writes to.
#[derive(Debug, Clone)]
pub struct Collections {
    /// The client (for sessions).
    pub client: mongodb::Client,
    /// The database (for raw write commands).
    pub db: mongodb::Database,
    /// The menu.
    pub menu: Collection<MenuItem>,
    /// The orders.
    pub orders: Collection<Order>,
    /// The events.
    pub outbox: Outbox,
    /// The idempotency records.
    pub keys: Keys,
}

/// The handle requests place their orders through (cheap to clone).
#[derive(Debug, Clone)]
pub struct Placer {
    writer: Batcher<Writer>,
}

impl Placer {
    /// A placer writing to `collections` (the writer, `common::batch`,
    /// starts with the first order).
    pub fn new(collections: Collections) -> Self {
        let writer = Writer {
            c: collections,
            known: Mutex::default(),
        };
        Self {
            writer: Batcher::new("order_placements", MAX_BATCH, writer),
        }
    }

    /// Places an order (see the module docs): all of its stock is reserved
    /// and the order, its events and its idempotency record with
    /// `reply(order)` are stored, or nothing changes.
    pub async fn place(
        &self,
        new: &NewOrder,
        correlation_id: &str,
        key: Option<&Key>,
        token: &TrackingToken,
        reply: fn(&Order) -> Reply,
    ) -> Result<Placed, PlaceError> {
        let request = Request {
            new: new.clone(),
            correlation_id: correlation_id.to_owned(),
            key: key.cloned(),
            token: token.clone(),
            reply,
        };
        self.writer
            .submit(request)
            .await
            .map_err(|e| PlaceError::Mongo(mongodb::error::Error::custom(e)))?
    }
}

/// The writer's side of [`Placer`].
#[derive(Debug)]
struct Writer {
    c: Collections,
    /// What this writer last saw of each dish (see "Known dishes" in the
    /// module docs). Only the writer's task uses it.
    known: Mutex<HashMap<ObjectId, Dish>>,
}

/// A dish as a batch decides on it.
#[derive(Debug, Clone)]
struct Dish {
    name: String,
    price_cents: i64,
    /// Units left: as read, less what the batch took so far; as known, what
    /// this writer's last write left (a guess: others write too).
    left: i64,
    /// Units the batch takes.
    units: i64,
}

impl Dish {
    fn read(item: &MenuItem) -> Self {
        Self {
            name: item.name.clone(),
            price_cents: item.price_cents,
            left: item.stock,
            units: 0,
        }
    }
}

impl Batch for Writer {
    type Job = Request;
    type Output = Result<Placed, PlaceError>;

    async fn run(&self, requests: &[Request]) -> Vec<Result<Placed, PlaceError>> {
        place_batch(self, requests).await
    }

    fn failed(&self, _: &Request) -> Result<Placed, PlaceError> {
        Err(PlaceError::Mongo(mongodb::error::Error::custom(
            "placing the order failed",
        )))
    }
}

/// A shopper waits for contention to resolve longer than a consumer does.
const POLICY: RetryPolicy = RetryPolicy {
    max_attempts: 40,
    base_backoff: Duration::from_millis(5),
    max_backoff: Duration::from_millis(250),
    max_elapsed: Duration::from_secs(5),
};

/// Places a batch; one result per request, in order.
async fn place_batch(w: &Writer, requests: &[Request]) -> Vec<Result<Placed, PlaceError>> {
    let c = &w.c;
    // Keys taken before the batch started: by an earlier request of the
    // batch, or (found after a duplicate-key failure) by another replica.
    let mut taken = vec![false; requests.len()];
    let mut seen = std::collections::HashSet::new();
    for (i, r) in requests.iter().enumerate() {
        if let Some(k) = &r.key
            && !seen.insert(k.id.clone())
        {
            taken[i] = true;
        }
    }
    // Keys stored before: replays. One query for the whole batch (the API
    // sends every request here), so a batch of 64 pays one. A lone request
    // skips it: its record's unique `_id` turns a replay into a duplicate
    // key, and the loop below then looks the key up and decides again, so
    // the common case (a new order) saves a round trip and a replay costs
    // one aborted transaction.
    if requests.len() > 1 && requests.iter().any(|r| r.key.is_some()) {
        match stored_keys(&c.keys, requests).await {
            Ok(stored) => mark_taken(requests, &stored, &mut taken),
            Err(e) => return fail_all(requests, &e),
        }
    }
    let mut known = w.known_for(requests);
    for _ in 0..4 {
        let ctx = (c, requests, taken.as_slice(), known.as_ref());
        let outcome = if known.is_some() {
            run_write_transaction(&c.client, POLICY, &ctx, |s, (c, requests, taken, known)| {
                Box::pin(place_in(s, c, requests, taken, *known))
            })
            .await
        } else {
            run_transaction(&c.client, POLICY, &ctx, |s, (c, requests, taken, known)| {
                Box::pin(place_in(s, c, requests, taken, *known))
            })
            .await
        };
        match outcome {
            Ok((decided, written, dishes)) => {
                // Handed to the relay before anyone is answered, so a
                // cancel of one of these orders is handed after it.
                c.outbox.committed(written);
                w.learn(dishes);
                return decided;
            }
            Err(BatchError::Mongo(e)) if known.is_some() && is_not_applied(&e) => {
                // A guard failed: decide again on what the database holds.
                metrics::counter!("order_placement_rereads_total").increment(1);
                known = None;
            }
            Err(BatchError::Mongo(e)) if is_duplicate_key(&e) => {
                // Another replica stored one of the keys meanwhile.
                match stored_keys(&c.keys, requests).await {
                    Ok(stored) => mark_taken(requests, &stored, &mut taken),
                    Err(e) => return fail_all(requests, &e),
                }
            }
            Err(BatchError::Mongo(e)) => return fail_all(requests, &e),
        }
    }
    fail_all(
        requests,
        &mongodb::error::Error::custom("idempotency keys kept colliding"),
    )
}

impl Writer {
    /// The dishes of the batch, if this writer knows every one of them with
    /// enough stock for the whole batch; otherwise the batch reads them.
    fn known_for(&self, requests: &[Request]) -> Option<HashMap<ObjectId, Dish>> {
        let known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        let mut dishes: HashMap<ObjectId, Dish> = HashMap::new();
        for line in requests.iter().flat_map(|r| &r.new.lines) {
            let dish = match dishes.entry(line.item_id) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(known.get(&line.item_id)?.clone())
                }
            };
            dish.units += i64::from(line.quantity.get());
            if dish.units > dish.left {
                return None;
            }
        }
        for dish in dishes.values_mut() {
            dish.units = 0;
        }
        Some(dishes)
    }

    /// Remembers the dishes a committed batch decided on, with what it left.
    fn learn(&self, dishes: HashMap<ObjectId, Dish>) {
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        for (id, dish) in dishes {
            known.insert(id, Dish { units: 0, ..dish });
        }
    }
}

fn mark_taken(
    requests: &[Request],
    stored: &std::collections::HashSet<String>,
    taken: &mut [bool],
) {
    for (r, t) in requests.iter().zip(taken) {
        if r.key.as_ref().is_some_and(|k| stored.contains(&k.id)) {
            *t = true;
        }
    }
}

fn fail_all(requests: &[Request], e: &mongodb::error::Error) -> Vec<Result<Placed, PlaceError>> {
    requests
        .iter()
        .map(|_| Err(PlaceError::Mongo(e.clone())))
        .collect()
}

async fn stored_keys(
    keys: &Keys,
    requests: &[Request],
) -> mongodb::error::Result<std::collections::HashSet<String>> {
    let ids: Vec<&str> = requests
        .iter()
        .filter_map(|r| r.key.as_ref().map(|k| k.id.as_str()))
        .collect();
    keys.existing(&ids).await
}

/// The batch transaction's own error: only the database's.
#[derive(Debug)]
enum BatchError {
    Mongo(mongodb::error::Error),
}

impl From<mongodb::error::Error> for BatchError {
    fn from(e: mongodb::error::Error) -> Self {
        Self::Mongo(e)
    }
}

impl MaybeMongoError for BatchError {
    fn as_mongo(&self) -> Option<&mongodb::error::Error> {
        let Self::Mongo(e) = self;
        Some(e)
    }
}

/// What a committed batch decided, what it handed to the relay, and the
/// dishes it decided on (with what it left of each).
type Decided = (
    Vec<Result<Placed, PlaceError>>,
    Option<Written>,
    HashMap<ObjectId, Dish>,
);

/// One run of the batch's transaction: on the dishes as read, or, with
/// `known`, as the writer knows them (then every decrement is guarded by
/// the name and price it was decided on).
async fn place_in(
    s: &mut ClientSession,
    c: &Collections,
    requests: &[Request],
    taken: &[bool],
    known: Option<&HashMap<ObjectId, Dish>>,
) -> Result<Decided, BatchError> {
    let mut stock = match known {
        Some(known) => known.clone(),
        None => read_dishes(s, c, requests).await?,
    };

    let now = Utc::now();
    let mut decided = Vec::with_capacity(requests.len());
    for (r, taken) in requests.iter().zip(taken) {
        if *taken {
            decided.push(Err(PlaceError::KeyTaken));
            continue;
        }
        match decide(r, &stock) {
            Err(refusal) => decided.push(Err(refusal)),
            Ok(lines) => {
                for line in &lines {
                    if let Some(dish) = stock.get_mut(&ObjectId::from_bytes(line.item_id.bytes())) {
                        dish.left -= i64::from(line.quantity);
                        dish.units += i64::from(line.quantity);
                    }
                }
                let order = Order {
                    id: ObjectId::new(),
                    status: OrderStatus::Created,
                    version: 1,
                    customer: r.new.customer.clone(),
                    total_cents: lines
                        .iter()
                        .map(|l| l.unit_price_cents * i64::from(l.quantity))
                        .sum(),
                    items: lines,
                    correlation_id: r.correlation_id.clone(),
                    tracking_token_hash: r.token.hash(),
                    created_at: now,
                    updated_at: now,
                    end_reason: None,
                };
                let reply = (r.reply)(&order);
                decided.push(Ok(Placed { order, reply }));
            }
        }
    }

    let placed: Vec<(&Request, &Placed)> = requests
        .iter()
        .zip(&decided)
        .filter_map(|(r, d)| Some((r, d.as_ref().ok()?)))
        .collect();
    if placed.is_empty() {
        return Ok((decided, None, stock));
    }
    // Every write of the batch, in one round trip (see common::writes).
    let mut writes = Writes::new();
    // 1. Stock: one guarded decrement per dish for the whole batch. After a
    //    read, the read is this transaction's snapshot: a concurrent change
    //    of a dish is a write conflict, so every guard holds. On known
    //    dishes the guard also holds what the orders were priced on.
    for (id, dish) in stock.iter().filter(|(_, d)| d.units > 0) {
        let units = dish.units;
        let guard = match known {
            None => doc! { "_id": id, "stock": { "$gte": units } },
            Some(_) => doc! {
                "_id": id,
                "stock": { "$gte": units },
                "name": &dish.name,
                "price_cents": dish.price_cents,
            },
        };
        writes.update(&c.menu, guard, doc! { "$inc": { "stock": -units } });
    }
    // 2. The orders.
    for (_, p) in &placed {
        let order = bson::to_document(&p.order).map_err(mongodb::error::Error::custom)?;
        writes.insert(&c.orders, order);
    }
    // 3. Their idempotency records.
    for (r, p) in &placed {
        if let Some(key) = r.key.as_ref() {
            c.keys
                .stage(&mut writes, Keys::document(key, &p.reply, Some(&r.token)));
        }
    }
    // 4. Their events, last.
    let events: Vec<_> = placed
        .iter()
        .flat_map(|(_, p)| events::order_created(&p.order).map(|e| (e, p.order.version)))
        .collect();
    let refs: Vec<_> = events
        .iter()
        .map(|((stream, event), seq)| (*stream, event, *seq))
        .collect();
    let written = c.outbox.write_with(&mut *s, writes, &refs).await?;
    Ok((decided, written, stock))
}

/// Every dish the batch names, read in the transaction (its snapshot).
async fn read_dishes(
    s: &mut ClientSession,
    c: &Collections,
    requests: &[Request],
) -> Result<HashMap<ObjectId, Dish>, BatchError> {
    let mut ids: Vec<ObjectId> = requests
        .iter()
        .flat_map(|r| r.new.lines.iter().map(|l| l.item_id))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let found: Vec<MenuItem> = c
        .menu
        .find(doc! { "_id": { "$in": &ids } })
        .session(&mut *s)
        .await?
        .stream(&mut *s)
        .try_collect()
        .await?;
    Ok(found.iter().map(|i| (i.id, Dish::read(i))).collect())
}

/// The lines of a request, priced, if every dish exists and has enough
/// left; the same refusals a lone transaction gives.
fn decide(r: &Request, stock: &HashMap<ObjectId, Dish>) -> Result<Vec<OrderLine>, PlaceError> {
    let mut unknown = FieldErrors::default();
    let mut short = FieldErrors::default();
    let mut short_names = Vec::new();
    for (i, line) in r.new.lines.iter().enumerate() {
        match stock.get(&line.item_id) {
            None => unknown.add(format!("items[{i}].item_id"), "no such menu item"),
            Some(dish) if dish.left < i64::from(line.quantity.get()) => {
                short.add(
                    format!("items[{i}].quantity"),
                    format!("only {} of {} left", dish.left.max(0), dish.name),
                );
                short_names.push(dish.name.clone());
            }
            Some(_) => {}
        }
    }
    if !unknown.is_empty() {
        return Err(PlaceError::UnknownItems(unknown));
    }
    if !short.is_empty() {
        return Err(PlaceError::InsufficientStock {
            fields: short,
            names: short_names,
        });
    }
    Ok(r.new
        .lines
        .iter()
        .map(|line| {
            let dish = &stock[&line.item_id];
            OrderLine {
                item_id: MenuItemId::from_bytes(line.item_id.bytes()),
                name: dish.name.clone(),
                quantity: line.quantity.get(),
                unit_price_cents: dish.price_cents,
            }
        })
        .collect())
}
