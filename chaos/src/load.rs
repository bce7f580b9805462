//! The load driver: a careful client.
//!
//! It places `orders` orders at `rate` per second over random menu items and
//! quantities. Every order carries an `Idempotency-Key`, and a connection
//! error, timeout or 5xx is retried with the same key (exponential backoff,
//! another replica when one is down) until an answer comes: 201 (accepted,
//! recorded with its quantities) or 409 (refused: out of stock). Anything else
//! is recorded as an error. A share of accepted orders is cancelled a moment
//! later (the same retries, with an Idempotency-Key of its own), racing the
//! kitchen; the answer (200, or 409 with the status) is recorded. A sample of
//! accepted orders gets a WebSocket tracker ([`track`]).

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

pub use testkit::{FULL_FLOW, is_complete_timeline};

/// An accepted order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Accepted {
    /// Order id.
    pub order_id: String,
    /// The Idempotency-Key used.
    pub key: String,
    /// Its tracking token (trackers need it).
    #[serde(default)]
    pub token: String,
    /// `(item id, quantity)`.
    pub items: Vec<(String, u32)>,
    /// Attempts it took.
    pub attempts: u32,
    /// What its cancel got, if the driver cancelled it.
    #[serde(default)]
    pub cancel: Option<CancelAnswer>,
}

/// The answer to a cancel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CancelAnswer {
    /// 200: the order is cancelled.
    Cancelled,
    /// 409: no longer cancellable; its status then.
    Refused(String),
}

/// What the driver did.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct LoadResult {
    /// Orders answered 201.
    pub accepted: Vec<Accepted>,
    /// Orders answered 409.
    pub refused: usize,
    /// Orders that got another answer (a bug).
    pub errors: Vec<String>,
    /// Requests retried (connection errors, timeouts, 5xx).
    pub retries: usize,
    /// Tracker outcomes.
    pub trackers: Vec<TrackerResult>,
}

impl std::fmt::Display for LoadResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} accepted, {} refused, {} errors, {} retries",
            self.accepted.len(),
            self.refused,
            self.errors.len(),
            self.retries
        )
    }
}

/// Where to send requests: the currently running replicas.
pub trait Targets: Send + Sync + 'static {
    /// order-svc base URLs.
    fn orders(&self) -> Vec<String>;
    /// notify-svc base URLs.
    fn notify(&self) -> Vec<String>;
}

/// Load parameters.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// How many orders.
    pub orders: usize,
    /// Orders per second.
    pub rate: f64,
    /// Fraction of accepted orders that get a tracker.
    pub track: f64,
    /// RNG seed.
    pub seed: u64,
    /// How long a tracker waits for the full flow.
    pub tracker_deadline: Duration,
    /// Fraction of accepted orders the driver cancels.
    pub cancel: f64,
    /// A cancel comes after a random wait up to this.
    pub cancel_within: Duration,
}

/// An order was accepted by a replica (for "kill it right after").
#[derive(Debug, Clone)]
pub struct AcceptedBy {
    /// Base URL of the replica that answered 201.
    pub url: String,
}

/// Runs the load; `accepted_tx` hears of every 201.
pub async fn run(
    targets: Arc<dyn Targets>,
    menu: Vec<String>,
    cfg: LoadConfig,
    accepted_tx: mpsc::UnboundedSender<AcceptedBy>,
) -> LoadResult {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default();
    let retries = Arc::new(AtomicUsize::new(0));
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let gap = Duration::from_secs_f64(1.0 / cfg.rate.max(0.01));
    let started = Instant::now();
    let mut orders = Vec::with_capacity(cfg.orders);
    for i in 0..cfg.orders {
        tokio::time::sleep_until((started + gap.mul_f64(i as f64)).into()).await;
        let n = rng.random_range(1..=2usize);
        let items: Vec<(String, u32)> = menu
            .choose_multiple(&mut rng, n)
            .map(|id| (id.clone(), rng.random_range(1..=3)))
            .collect();
        let tracked = rng.random_bool(cfg.track.clamp(0.0, 1.0));
        let cancel_after = rng
            .random_bool(cfg.cancel.clamp(0.0, 1.0))
            .then(|| cfg.cancel_within.mul_f64(rng.random_range(0.0..1.0)));
        let (http, targets, retries, tx) = (
            http.clone(),
            targets.clone(),
            retries.clone(),
            accepted_tx.clone(),
        );
        let deadline = cfg.tracker_deadline;
        let key = format!("chaos-{}-{i}", cfg.seed);
        orders.push(tokio::spawn(async move {
            let mut outcome = place(&http, &*targets, &key, &items, &retries, &tx).await;
            let tracker = match (&outcome, tracked) {
                (Outcome::Accepted(a), true) => Some(tokio::spawn(track(
                    targets.clone(),
                    a.order_id.clone(),
                    a.token.clone(),
                    deadline,
                ))),
                _ => None,
            };
            if let (Outcome::Accepted(a), Some(after)) = (&mut outcome, cancel_after) {
                tokio::time::sleep(after).await;
                match cancel(&http, &*targets, a, &retries).await {
                    Ok(answer) => a.cancel = Some(answer),
                    Err(e) => outcome = Outcome::Error(e),
                }
            }
            let tracker = match tracker {
                Some(t) => t.await.ok(),
                None => None,
            };
            (outcome, tracker)
        }));
    }
    let mut result = LoadResult::default();
    for o in orders {
        match o.await {
            Ok((outcome, tracker)) => {
                match outcome {
                    Outcome::Accepted(a) => result.accepted.push(a),
                    Outcome::Refused => result.refused += 1,
                    Outcome::Error(e) => result.errors.push(e),
                }
                result.trackers.extend(tracker);
            }
            Err(e) => result.errors.push(format!("order task failed: {e}")),
        }
    }
    result.retries = retries.load(Ordering::Relaxed);
    result
}

enum Outcome {
    Accepted(Accepted),
    Refused,
    Error(String),
}

async fn place(
    http: &reqwest::Client,
    targets: &dyn Targets,
    key: &str,
    items: &[(String, u32)],
    retries: &AtomicUsize,
    accepted: &mpsc::UnboundedSender<AcceptedBy>,
) -> Outcome {
    let body = json!({
        "customer": {"name": "Chaos Monkey", "address": "1 Fault Line", "phone": "+1 555 0100"},
        "items": items.iter().map(|(id, q)| json!({"item_id": id, "quantity": q})).collect::<Vec<_>>(),
    });
    let give_up = Instant::now() + Duration::from_secs(300);
    let mut backoff = Duration::from_millis(100);
    for attempt in 1.. {
        let urls = targets.orders();
        if let Some(url) = urls.get(attempt as usize % urls.len().max(1)) {
            let sent = http
                .post(format!("{url}/api/v1/orders"))
                .header("idempotency-key", key)
                .json(&body)
                .send()
                .await;
            match sent {
                Ok(r) if r.status().as_u16() == 201 => {
                    let order: Value = r.json().await.unwrap_or_default();
                    let _ = accepted.send(AcceptedBy { url: url.clone() });
                    return match order["id"].as_str() {
                        Some(id) => Outcome::Accepted(Accepted {
                            order_id: id.to_owned(),
                            key: key.to_owned(),
                            token: order["tracking_token"]
                                .as_str()
                                .unwrap_or_default()
                                .to_owned(),
                            items: items.to_vec(),
                            attempts: attempt,
                            cancel: None,
                        }),
                        None => Outcome::Error(format!("{key}: 201 without an id: {order}")),
                    };
                }
                Ok(r) if r.status().as_u16() == 409 => return Outcome::Refused,
                Ok(r) if r.status().is_server_error() => {}
                Ok(r) => {
                    let status = r.status();
                    return Outcome::Error(format!(
                        "{key}: unexpected {status}: {}",
                        r.text().await.unwrap_or_default()
                    ));
                }
                Err(_) => {} // connection refused / reset / timeout: retry
            }
        }
        if Instant::now() > give_up {
            return Outcome::Error(format!("{key}: no answer after {attempt} attempts"));
        }
        retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
    unreachable!("the loop only ends by returning")
}

/// Cancels an accepted order, retrying connection errors, timeouts and 5xx
/// with the same Idempotency-Key; `Err` for any answer but 200 or 409.
async fn cancel(
    http: &reqwest::Client,
    targets: &dyn Targets,
    order: &Accepted,
    retries: &AtomicUsize,
) -> Result<CancelAnswer, String> {
    let key = format!("cancel-{}", order.key);
    let give_up = Instant::now() + Duration::from_secs(300);
    let mut backoff = Duration::from_millis(100);
    for attempt in 1usize.. {
        let urls = targets.orders();
        if let Some(url) = urls.get(attempt % urls.len().max(1)) {
            let sent = http
                .post(format!("{url}/api/v1/orders/{}/cancel", order.order_id))
                .bearer_auth(&order.token)
                .header("idempotency-key", &key)
                .json(&json!({"reason": "chaos"}))
                .send()
                .await;
            match sent {
                Ok(r) if r.status().as_u16() == 200 => return Ok(CancelAnswer::Cancelled),
                Ok(r) if r.status().as_u16() == 409 => {
                    let body: Value = r.json().await.unwrap_or_default();
                    return Ok(CancelAnswer::Refused(
                        body["status"].as_str().unwrap_or("?").to_owned(),
                    ));
                }
                Ok(r) if r.status().is_server_error() => {}
                Ok(r) => {
                    let status = r.status();
                    return Err(format!(
                        "cancel of {}: unexpected {status}: {}",
                        order.order_id,
                        r.text().await.unwrap_or_default()
                    ));
                }
                Err(_) => {}
            }
        }
        if Instant::now() > give_up {
            return Err(format!(
                "cancel of {}: no answer after {attempt} attempts",
                order.order_id
            ));
        }
        retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
    unreachable!("the loop only ends by returning")
}

/// What one tracker saw.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrackerResult {
    /// Order id.
    pub order_id: String,
    /// The final view: snapshot plus updates, as labels.
    pub seen: Vec<String>,
    /// How often it had to reconnect.
    pub reconnects: usize,
    /// What went wrong: lost, duplicated or out-of-order statuses.
    pub violations: Vec<String>,
}

impl TrackerResult {
    /// The tracker ended with a whole timeline (the full flow, or an exit)
    /// and saw nothing wrong.
    pub fn ok(&self) -> bool {
        self.violations.is_empty() && is_complete_timeline(&self.seen)
    }
}

fn stage(label: &str) -> usize {
    FULL_FLOW
        .iter()
        .position(|l| *l == label)
        .unwrap_or(usize::MAX)
}

fn label(entry: &Value) -> String {
    format!(
        "{}:{}",
        entry["kind"].as_str().unwrap_or("?"),
        entry["status"].as_str().unwrap_or("?")
    )
}

/// Follows one order over WebSocket, reconnecting (to any notify replica)
/// whenever the connection drops, until it has seen a whole timeline (the
/// server closes the socket then).
pub async fn track(
    targets: Arc<dyn Targets>,
    order_id: String,
    token: String,
    deadline: Duration,
) -> TrackerResult {
    let mut r = TrackerResult {
        order_id: order_id.clone(),
        seen: Vec::new(),
        reconnects: 0,
        violations: Vec::new(),
    };
    let until = Instant::now() + deadline;
    let mut connection = 0usize;
    while Instant::now() < until && !is_complete_timeline(&r.seen) {
        let urls = targets.notify();
        let Some(base) = urls.get(connection % urls.len().max(1)) else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        connection += 1;
        let url = format!("{}/ws/orders/{order_id}", base.replacen("http", "ws", 1));
        let Ok(mut req) =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
        else {
            break;
        };
        // As a browser sends it: the token as a second offered subprotocol.
        if let Ok(v) = format!("foodchain.v1, bearer.{token}").parse() {
            req.headers_mut().insert("sec-websocket-protocol", v);
        }
        let Ok(Ok((mut socket, _))) = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(req),
        )
        .await
        else {
            r.reconnects += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let Ok(Some(Ok(msg))) = tokio::time::timeout(left, socket.next()).await else {
                break;
            };
            let Message::Text(text) = msg else { continue };
            let Ok(m) = serde_json::from_str::<Value>(text.as_str()) else {
                continue;
            };
            match m["type"].as_str() {
                Some("snapshot") => {
                    let view: Vec<String> = m["timeline"]
                        .as_array()
                        .map(|t| t.iter().map(label).collect())
                        .unwrap_or_default();
                    if let Some(lost) = r.seen.iter().find(|l| !view.contains(l)) {
                        r.violations
                            .push(format!("a snapshot after reconnecting lacks {lost}"));
                    }
                    r.seen = view;
                }
                Some("update") => {
                    let l = label(&m["entry"]);
                    if r.seen.contains(&l) {
                        r.violations.push(format!("duplicate update {l}"));
                    } else if r.seen.last().is_some_and(|last| stage(last) > stage(&l)) {
                        r.violations.push(format!(
                            "{l} arrived after {}",
                            r.seen.last().map_or("", String::as_str)
                        ));
                        r.seen.push(l);
                    } else {
                        r.seen.push(l);
                    }
                }
                _ => {}
            }
            if is_complete_timeline(&r.seen) {
                let _ = socket.close(None).await;
                return r;
            }
        }
        r.reconnects += 1;
    }
    if !is_complete_timeline(&r.seen) {
        r.violations
            .push(format!("incomplete after {deadline:?}: {:?}", r.seen));
    }
    r
}

/// The menu as the API shows it: id → stock.
pub async fn menu(
    http: &reqwest::Client,
    order_url: &str,
) -> anyhow::Result<std::collections::HashMap<String, i64>> {
    let items: Vec<Value> = http
        .get(format!("{order_url}/api/v1/menu"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(items
        .iter()
        .filter_map(|i| Some((i["id"].as_str()?.to_owned(), i["stock"].as_i64()?)))
        .collect())
}
