//! One tracker's WebSocket session.
//!
//! Protocol (server → client, JSON text frames):
//!
//! ```json
//! {"type": "snapshot", "order_id": "...", "status": "preparing", "delivery": null, "timeline": [entry, ...]}
//! {"type": "update",   "order_id": "...", "status": "out_for_delivery", "delivery": null, "entry": entry}
//! ```
//!
//! where an entry is `{"event_id", "kind": "order"|"delivery", "status", "version", "at", "delivery_id"?}`.
//! The snapshot comes first, then one update per new status, in order, never
//! one the client already has. The server pings every `WS_PING_INTERVAL_MS`
//! and closes a socket whose pong has not come within `WS_PONG_TIMEOUT_MS`.
//! Close codes: 1001 when the server shuts down, 1011 when the timeline cannot
//! be loaded, 1013 when the client fell behind (reconnect for a fresh snapshot).
//!
//! The session is written against any `Sink` / `Stream` of messages, so it is
//! tested with channels as well as with real sockets.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures::{Sink, SinkExt, Stream, StreamExt};
use serde_json::json;
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::timeline::{Entry, Snapshot};

/// Keep-alive timing.
#[derive(Debug, Clone, Copy)]
pub struct KeepAlive {
    /// Ping period.
    pub ping_interval: Duration,
    /// Longest wait for a pong.
    pub pong_timeout: Duration,
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client closed or vanished.
    ClientGone,
    /// No pong in time.
    PongTimeout,
    /// The client could not keep up.
    Lagging,
    /// The server is shutting down.
    Shutdown,
}

fn text(value: &serde_json::Value) -> Message {
    Message::Text(Utf8Bytes::from(value.to_string()))
}

/// A close frame.
pub fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }))
}

/// The snapshot message.
pub fn snapshot_message(s: &Snapshot) -> serde_json::Value {
    json!({ "type": "snapshot", "order_id": s.order_id, "status": s.status, "delivery": s.delivery, "timeline": s.timeline })
}

/// Runs a session: snapshot, then updates and keep-alive until it ends.
pub async fn session<S, R, E>(
    mut tx: S,
    mut rx: R,
    mut snapshot: Snapshot,
    updates: &mut mpsc::Receiver<Entry>,
    keep_alive: KeepAlive,
    shutdown: CancellationToken,
) -> End
where
    S: Sink<Message> + Unpin,
    R: Stream<Item = Result<Message, E>> + Unpin,
{
    if tx.send(text(&snapshot_message(&snapshot))).await.is_err() {
        return End::ClientGone;
    }
    let mut next_ping = Instant::now() + keep_alive.ping_interval;
    let mut pong_due: Option<Instant> = None;
    let end = loop {
        let deadline = pong_due.map_or(next_ping, |due| due.min(next_ping));
        tokio::select! {
            () = shutdown.cancelled() => {
                let _ = tx.send(close(1001, "server shutting down")).await;
                break End::Shutdown;
            }
            update = updates.recv() => {
                let Some(entry) = update else {
                    let _ = tx.send(close(1013, "too slow: reconnect for a fresh snapshot")).await;
                    break End::Lagging;
                };
                if !snapshot.add(entry.clone()) {
                    continue;
                }
                let msg = json!({
                    "type": "update",
                    "order_id": snapshot.order_id,
                    "status": snapshot.status,
                    "delivery": snapshot.delivery,
                    "entry": entry,
                });
                if tx.send(text(&msg)).await.is_err() {
                    break End::ClientGone;
                }
            }
            incoming = rx.next() => match incoming {
                Some(Ok(Message::Pong(_))) => pong_due = None,
                Some(Ok(Message::Close(_)) | Err(_)) | None => break End::ClientGone,
                Some(Ok(_)) => {}
            },
            () = tokio::time::sleep_until(deadline) => {
                let now = Instant::now();
                if pong_due.is_some_and(|due| now >= due) {
                    let _ = tx.send(close(1001, "ping timeout")).await;
                    break End::PongTimeout;
                }
                if now >= next_ping {
                    if tx.send(Message::Ping(Default::default())).await.is_err() {
                        break End::ClientGone;
                    }
                    pong_due.get_or_insert(now + keep_alive.pong_timeout);
                    next_ping = now + keep_alive.ping_interval;
                }
            }
        }
    };
    debug!(?end, order_id = %snapshot.order_id, "tracker session ended");
    end
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use futures::channel::mpsc as fmpsc;

    use super::*;
    use crate::timeline::Kind;

    fn entry(id: &str, status: &str, version: u32) -> Entry {
        Entry {
            event_id: id.into(),
            kind: Kind::Order,
            status: status.into(),
            version,
            at: Utc::now(),
            delivery_id: None,
        }
    }

    fn parse(m: Message) -> serde_json::Value {
        match m {
            Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
            other => panic!("expected text, got {other:?}"),
        }
    }

    const KA: KeepAlive = KeepAlive {
        ping_interval: Duration::from_secs(20),
        pong_timeout: Duration::from_secs(10),
    };

    #[tokio::test(start_paused = true)]
    async fn snapshot_first_then_only_new_updates_in_order() {
        let (out_tx, mut out_rx) = fmpsc::unbounded::<Message>();
        let (_in_tx, in_rx) = fmpsc::unbounded::<Result<Message, ()>>();
        let (up_tx, up_rx) = mpsc::channel(8);
        let snap = Snapshot::from_entries("o1", [entry("a", "created", 1)]);
        let token = CancellationToken::new();
        let token2 = token.clone();
        let task =
            tokio::spawn(
                async move { session(out_tx, in_rx, snap, &mut { up_rx }, KA, token2).await },
            );
        up_tx.send(entry("a", "created", 1)).await.unwrap(); // already in the snapshot
        up_tx.send(entry("b", "confirmed", 2)).await.unwrap();
        let first = parse(out_rx.next().await.unwrap());
        assert_eq!(first["type"], "snapshot");
        assert_eq!(first["timeline"].as_array().unwrap().len(), 1);
        let second = parse(out_rx.next().await.unwrap());
        assert_eq!(
            (
                second["type"].as_str(),
                second["entry"]["event_id"].as_str()
            ),
            (Some("update"), Some("b"))
        );
        assert_eq!(second["status"], "confirmed");
        token.cancel();
        assert_eq!(task.await.unwrap(), End::Shutdown);
        assert!(matches!(out_rx.next().await, Some(Message::Close(Some(f))) if f.code == 1001));
    }

    #[tokio::test(start_paused = true)]
    async fn pings_and_drops_a_peer_that_stops_answering() {
        let (out_tx, mut out_rx) = fmpsc::unbounded::<Message>();
        let (in_tx, in_rx) = fmpsc::unbounded::<Result<Message, ()>>();
        let (_up_tx, up_rx) = mpsc::channel(8);
        let task = tokio::spawn(async move {
            session(
                out_tx,
                in_rx,
                Snapshot::empty("o1"),
                &mut { up_rx },
                KA,
                CancellationToken::new(),
            )
            .await
        });
        assert_eq!(parse(out_rx.next().await.unwrap())["type"], "snapshot");
        // First ping after the interval; answering it keeps the session.
        assert!(matches!(out_rx.next().await, Some(Message::Ping(_))));
        in_tx
            .unbounded_send(Ok(Message::Pong(Default::default())))
            .unwrap();
        assert!(matches!(out_rx.next().await, Some(Message::Ping(_))));
        // Not answering this one: dropped after the pong timeout.
        let started = Instant::now();
        assert!(matches!(out_rx.next().await, Some(Message::Close(Some(f))) if f.code == 1001));
        assert_eq!(task.await.unwrap(), End::PongTimeout);
        assert_eq!(started.elapsed(), KA.pong_timeout);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lagging_subscription_closes_with_1013() {
        let (out_tx, mut out_rx) = fmpsc::unbounded::<Message>();
        let (_in_tx, in_rx) = fmpsc::unbounded::<Result<Message, ()>>();
        let (up_tx, up_rx) = mpsc::channel(8);
        drop(up_tx); // what the hub does to a subscriber that fell behind
        let end = session(
            out_tx,
            in_rx,
            Snapshot::empty("o1"),
            &mut { up_rx },
            KA,
            CancellationToken::new(),
        )
        .await;
        assert_eq!(end, End::Lagging);
        let _snapshot = out_rx.next().await;
        assert!(matches!(out_rx.next().await, Some(Message::Close(Some(f))) if f.code == 1013));
    }
}
