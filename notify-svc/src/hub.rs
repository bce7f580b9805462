//! The live feed of one replica.
//!
//! The consumer group persists timelines, and a group hands each event to
//! *one* replica; but a tracker may be connected to any replica. So every
//! replica also tails `orders-stream` and `deliveries-stream` itself (plain
//! `XREAD`, no group) and fans each timeline event out to the sockets
//! tracking that order.
//!
//! A tracker subscribes first, then loads the stored timeline. An event the
//! tail saw just before the subscription may not be stored yet either; to
//! close that gap the hub remembers, per order, the events it saw in the last
//! `RECENT_EVENTS_TTL_SECS`, and a new tracker's snapshot includes them.
//! Duplicates between the two sources are dropped by event id.
//!
//! A socket that cannot keep up (its queue of 64 updates is full) is
//! unsubscribed; its session closes the socket so that the browser reconnects
//! and gets a fresh snapshot, rather than silently missing updates.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use common::backoff::Backoff;
use contract::redis::Conn;
use contract::{
    Envelope, OrderId,
    auth::TokenHash,
    events::{DeliveriesEvent, OrdersEvent, StreamEvent},
    redis as stream_entry,
    streams::{Namespace, Stream},
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::timeline::{Entry, Fact, delivery_fact, order_fact};

/// The streams the tail reads.
const STREAMS: [Stream; 2] = [Stream::Orders, Stream::Deliveries];
/// Updates a subscriber may have queued before it counts as too slow.
const QUEUE: usize = 64;
/// Entries the live tail reads per XREAD.
const TAIL_BATCH: usize = 500;
/// How long one XREAD of the tail blocks; the tail's connection must allow it
/// (see `lib.rs`), and a shutdown waits for at most this.
pub const TAIL_BLOCK: Duration = Duration::from_secs(1);
/// How often orders not seen for `RECENT_EVENTS_TTL_SECS` are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct State {
    subscribers: HashMap<OrderId, Vec<(u64, mpsc::Sender<Entry>)>>,
    recent: HashMap<OrderId, Recent>,
}

/// What this replica saw live of one order.
#[derive(Debug)]
struct Recent {
    touched: Instant,
    entries: Vec<Entry>,
    token_hash: Option<TokenHash>,
}

/// Subscribers and recent events of this replica.
#[derive(Debug)]
pub struct Hub {
    state: Mutex<State>,
    next_id: AtomicU64,
    recent_ttl: Duration,
}

/// A tracker's subscription; unsubscribes when dropped.
#[derive(Debug)]
pub struct Subscription {
    hub: Arc<Hub>,
    order_id: OrderId,
    id: u64,
    /// Live entries for the order.
    pub updates: mpsc::Receiver<Entry>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut state = self.hub.lock();
        if let Some(subs) = state.subscribers.get_mut(&self.order_id) {
            subs.retain(|(id, _)| *id != self.id);
            if subs.is_empty() {
                state.subscribers.remove(&self.order_id);
            }
        }
    }
}

impl Hub {
    /// A hub remembering live events for `recent_ttl`.
    pub fn new(recent_ttl: Duration) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::default(),
            next_id: AtomicU64::new(0),
            recent_ttl,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Subscribes to an order's live entries.
    pub fn subscribe(self: &Arc<Self>, order_id: OrderId) -> Subscription {
        let (tx, rx) = mpsc::channel(QUEUE);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock()
            .subscribers
            .entry(order_id)
            .or_default()
            .push((id, tx));
        Subscription {
            hub: self.clone(),
            order_id,
            id,
            updates: rx,
        }
    }

    /// Open subscriptions (all orders).
    pub fn subscribers(&self) -> usize {
        self.lock().subscribers.values().map(Vec::len).sum()
    }

    /// What this replica saw live of an order recently: its entries, and
    /// its token hash if its creation was among them.
    pub fn recent(&self, order_id: OrderId) -> (Vec<Entry>, Option<TokenHash>) {
        self.lock()
            .recent
            .get(&order_id)
            .map(|r| (r.entries.clone(), r.token_hash))
            .unwrap_or_default()
    }

    /// Remembers a fact and hands its entry to the order's subscribers.
    pub fn publish(&self, fact: Fact) {
        let Fact {
            order_id,
            entry,
            token_hash,
        } = fact;
        let mut state = self.lock();
        let recent = state.recent.entry(order_id).or_insert_with(|| Recent {
            touched: Instant::now(),
            entries: Vec::new(),
            token_hash: None,
        });
        recent.touched = Instant::now();
        if token_hash.is_some() {
            recent.token_hash = token_hash;
        }
        if recent.entries.iter().any(|e| e.event_id == entry.event_id) {
            return;
        }
        recent.entries.push(entry.clone());
        if let Some(subs) = state.subscribers.get_mut(&order_id) {
            subs.retain(|(id, tx)| match tx.try_send(entry.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    warn!(
                        %order_id,
                        subscriber = id,
                        "tracker too slow; disconnecting it"
                    );
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
        }
    }

    /// Forgets orders not seen for longer than the TTL.
    pub fn prune(&self) {
        let ttl = self.recent_ttl;
        self.lock().recent.retain(|_, r| r.touched.elapsed() < ttl);
    }
}

/// The keys one tail reads: the order and delivery streams of
/// `partitions`. On one Redis one tail reads every partition; on a cluster
/// a read must stay in one slot, so each partition has its own tail (the
/// two streams of a partition share its slot).
pub fn tail_keys(ns: &Namespace, partitions: &[u16]) -> Vec<(Stream, String)> {
    partitions
        .iter()
        .flat_map(|p| STREAMS.map(|s| (s, ns.stream_at(s, *p))))
        .collect()
}

/// Tails `keys` (see [`tail_keys`]) into `hub` until `shutdown`. `conn` must
/// allow blocking reads of [`TAIL_BLOCK`].
pub async fn tail(
    hub: Arc<Hub>,
    conn: Conn,
    keys: Vec<(Stream, String)>,
    shutdown: CancellationToken,
) {
    let (streams, keys): (Vec<Stream>, Vec<String>) = keys.into_iter().unzip();
    // Start after what each stream holds now, then always continue from the
    // last id seen, so a Redis hiccup loses nothing. (Never pass `$` twice:
    // it means "the end, at the time of *this* call", and would skip whatever
    // arrived between two reads of a stream that was quiet so far.)
    let Some(mut last) = current_ends(&conn, &keys, &shutdown).await else {
        return;
    };
    let mut backoff = Backoff::default();
    info!("live tail started");
    let mut pruned = Instant::now();
    while !shutdown.is_cancelled() {
        let read = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(TAIL_BATCH)
            .arg("BLOCK")
            .arg(u64::try_from(TAIL_BLOCK.as_millis()).unwrap_or(1000))
            .arg("STREAMS")
            .arg(&keys)
            .arg(&last)
            .query_async::<redis::Value>(&mut conn.clone())
            .await;
        let batches = match read
            .map_err(|e| e.to_string())
            .and_then(|v| stream_entry::xread(v).map_err(|e| e.to_string()))
        {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "live tail read failed; retrying");
                if !backoff.sleep(&shutdown).await {
                    break;
                }
                continue;
            }
        };
        backoff.reset();
        let mut entries = Vec::new();
        for (key, batch) in batches {
            let Some(i) = keys.iter().position(|k| *k == key) else {
                continue;
            };
            if let Some(newest) = batch.last() {
                last[i].clone_from(&newest.id);
            }
            entries.extend(batch.into_iter().map(|e| (streams[i], e)));
        }
        // The streams in one causal order: by entry id (time, then
        // sequence); one order's events are all in one partition.
        entries.sort_by_key(|(_, e)| id_key(&e.id));
        for (stream, raw) in entries {
            let Ok(envelope) = Envelope::from_entry(&raw) else {
                continue;
            };
            let decoded = if stream == Stream::Orders {
                OrdersEvent::decode(&envelope).map(|e| order_fact(&envelope, &e))
            } else {
                DeliveriesEvent::decode(&envelope).map(|e| delivery_fact(&envelope, &e))
            };
            match decoded {
                Ok(fact) => hub.publish(fact),
                Err(e) => debug!(error = %e, "live tail skipped an event"),
            }
        }
        if pruned.elapsed() > PRUNE_EVERY {
            hub.prune();
            pruned = Instant::now();
        }
    }
    info!("live tail stopped");
}

/// The id of each stream's newest entry (`0-0` for an empty or missing
/// stream), retried until Redis answers or shutdown.
async fn current_ends(
    conn: &Conn,
    keys: &[String],
    shutdown: &CancellationToken,
) -> Option<Vec<String>> {
    let mut backoff = Backoff::default();
    loop {
        let mut ends = vec![String::new(); keys.len()];
        let mut failed = None;
        for (end, key) in ends.iter_mut().zip(keys) {
            let newest = redis::cmd("XREVRANGE")
                .arg(key)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async::<redis::Value>(&mut conn.clone())
                .await
                .map_err(|e| e.to_string())
                .and_then(|v| stream_entry::entries(v).map_err(|e| e.to_string()));
            match newest {
                Ok(entries) => {
                    *end = entries
                        .first()
                        .map_or_else(|| "0-0".to_owned(), |e| e.id.clone())
                }
                Err(e) => failed = Some(e),
            }
        }
        let Some(e) = failed else { return Some(ends) };
        warn!(error = %e, "live tail cannot start yet; retrying");
        if !backoff.sleep(shutdown).await {
            return None;
        }
    }
}

fn id_key(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}
