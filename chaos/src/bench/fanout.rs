//! WebSocket fan-out: many trackers on one notify-svc.
//!
//! The simulator is stopped first, so the orders stay where they are and the
//! only updates are the ones this phase injects. Then:
//!
//! 1. `orders` orders are placed, and `sockets` trackers connect, spread
//!    evenly over them (each with its order's token), each waiting for its
//!    snapshot;
//! 2. notify-svc's resident memory before and after gives the cost of one
//!    idle session;
//! 3. one status update per order is added to `orders-stream` (spread over
//!    about a second); each tracker notes when its `update` message arrives,
//!    and the latency is from the `XADD` of that order's event (the moment
//!    it reached notify-svc's stream) to the message on every socket;
//! 4. all sockets close, and the memory is read again 8 s later (is it
//!    returned?).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use futures::{SinkExt, StreamExt, future::join_all};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest, http::HeaderValue};
use tokio_util::sync::CancellationToken;

use contract::{
    Envelope, OrderId, events::OrderStatusUpdated, status::OrderStatus, streams::Stream,
};

use super::{Percentiles, memory_of};

/// What the fan-out measured.
#[derive(Debug, Clone, Serialize)]
pub struct Fanout {
    /// Trackers connected (that got their snapshot).
    pub sockets: usize,
    /// Orders they watch.
    pub orders: usize,
    /// Seconds to connect them all.
    pub connect_secs: f64,
    /// notify-svc resident set before the trackers connected, MiB.
    pub rss_before_mib: f64,
    /// ... with every tracker connected and idle, MiB.
    pub rss_connected_mib: f64,
    /// ... after they all closed, MiB.
    pub rss_after_close_mib: f64,
    /// `(connected - before) / sockets`, KiB.
    pub kib_per_idle_session: f64,
    /// `XADD` of an order's update → its message on each of its sockets.
    pub push_latency: Percentiles,
    /// Trackers that never got the update.
    pub missed: usize,
}

impl std::fmt::Display for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "fan-out: {} trackers on {} orders, connected in {:.1} s; notify-svc {:.1} MiB → {:.1} MiB connected ({:.1} KiB per idle session) → {:.1} MiB after they closed",
            self.sockets,
            self.orders,
            self.connect_secs,
            self.rss_before_mib,
            self.rss_connected_mib,
            self.kib_per_idle_session,
            self.rss_after_close_mib
        )?;
        writeln!(
            f,
            "  event in the stream → push on every socket: {}; {} trackers missed it",
            self.push_latency, self.missed
        )
    }
}

/// Placed orders: `(id, token)`.
pub type Orders = Vec<(String, String)>;

/// Runs the fan-out against notify-svc at `ws_base` (`ws://host:port`),
/// process `notify_pid`, for the placed `orders`.
pub async fn measure(
    ws_base: &str,
    notify_pid: u32,
    redis_url: &str,
    ns: &contract::streams::Namespace,
    orders: &Orders,
    sockets: usize,
) -> anyhow::Result<Fanout> {
    let rss = || memory_of(notify_pid).map_or(f64::NAN, |(_, now)| now);
    let rss_before_mib = rss();
    let sent_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let (connected_tx, mut connected_rx) = tokio::sync::mpsc::channel::<()>(sockets.max(1));
    let close = CancellationToken::new();
    let handshakes = Arc::new(Semaphore::new(128));
    let started = Instant::now();
    let trackers: Vec<_> = (0..sockets)
        .map(|i| {
            let (id, token) = orders[i % orders.len()].clone();
            let url = format!("{ws_base}/ws/orders/{id}");
            let (sent_at, connected, close, handshakes) = (
                sent_at.clone(),
                connected_tx.clone(),
                close.clone(),
                handshakes.clone(),
            );
            tokio::spawn(async move {
                track(&url, &id, &token, &sent_at, &connected, &close, &handshakes).await
            })
        })
        .collect();
    drop(connected_tx);
    let mut connected = 0;
    while connected < sockets {
        match tokio::time::timeout(Duration::from_secs(60), connected_rx.recv()).await {
            Ok(Some(())) => connected += 1,
            _ => break,
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_connected_mib = rss();

    // One update per order, spread over about a second.
    let mut conn = contract::redis::commands(&contract::redis::client(redis_url)?)?;
    let gap = Duration::from_secs(1) / u32::try_from(orders.len().max(1)).unwrap_or(u32::MAX);
    for (id, _) in orders {
        let event = OrderStatusUpdated {
            order_id: OrderId::parse(id).context("order id")?,
            status: OrderStatus::Confirmed,
            previous: OrderStatus::Created,
            version: 2,
            customer: None,
        };
        let envelope = Envelope::of(&event, "bench-fanout", "bench");
        sent_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id.clone(), Instant::now());
        let mut cmd = redis::cmd("XADD");
        cmd.arg(ns.stream_for(Stream::Orders, id)).arg("*");
        for (k, v) in envelope.to_fields() {
            cmd.arg(k).arg(v);
        }
        let _: String = cmd.query_async(&mut conn).await?;
        tokio::time::sleep(gap).await;
    }
    // Everyone has had time to hear it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    close.cancel();
    let results = join_all(trackers).await;
    let latencies: Vec<f64> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().copied().flatten())
        .collect();
    let missed = connected - latencies.len().min(connected);
    // notify-svc looks at its session count every 5 s (notify-svc/src/memory.rs).
    tokio::time::sleep(Duration::from_secs(8)).await;
    let rss_after_close_mib = rss();
    Ok(Fanout {
        sockets: connected,
        orders: orders.len(),
        connect_secs,
        rss_before_mib,
        rss_connected_mib,
        rss_after_close_mib,
        kib_per_idle_session: (rss_connected_mib - rss_before_mib) * 1024.0
            / connected.max(1) as f64,
        push_latency: Percentiles::of(latencies),
        missed,
    })
}

/// One tracker: connects, takes its snapshot, waits for the update; returns
/// the update's latency in ms.
async fn track(
    url: &str,
    id: &str,
    token: &str,
    sent_at: &Mutex<HashMap<String, Instant>>,
    connected: &tokio::sync::mpsc::Sender<()>,
    close: &CancellationToken,
    handshakes: &Semaphore,
) -> Option<f64> {
    let mut request = url.into_client_request().ok()?;
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(&format!("foodchain.v1, bearer.{token}")).ok()?,
    );
    let mut socket = {
        let _permit = handshakes.acquire().await.ok()?;
        let (mut socket, _) = tokio_tungstenite::connect_async(request).await.ok()?;
        // The snapshot comes first.
        loop {
            match socket.next().await? {
                Ok(Message::Text(t)) if t.as_str().contains("\"snapshot\"") => break,
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        socket
    };
    connected.send(()).await.ok()?;
    let mut latency = None;
    loop {
        tokio::select! {
            () = close.cancelled() => break,
            msg = socket.next() => match msg {
                Some(Ok(Message::Text(t))) if latency.is_none() && t.as_str().contains("\"update\"") => {
                    let at = Instant::now();
                    let sent = sent_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(id).copied();
                    latency = sent.map(|s| at.duration_since(s).as_secs_f64() * 1e3);
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            }
        }
    }
    let _ = socket.close(None).await;
    let _ = socket.flush().await;
    latency
}
