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
//! one the client already has. The client only ever holds a contiguous prefix
//! of the flow: a status whose predecessor this replica has not seen yet (it
//! may be pending at a replica that died, until it is taken over) is held
//! back while the stored timeline is read again every 500 ms, and sent, in
//! order, once the hole is filled (or after 30 s regardless). The server pings every `WS_PING_INTERVAL_MS`
//! and closes a socket whose pong has not come within `WS_PONG_TIMEOUT_MS`.
//! Close codes: 1000 once the client has the order's last step (delivered,
//! cancelled, rejected; reason `order finished`) or after
//! `WS_IDLE_TIMEOUT_SECS` without an update (reason `idle`), 1001 when
//! the server shuts down, 1011 when the timeline cannot be loaded, 1013 when
//! the client fell behind (reconnect for a fresh snapshot).
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
    /// A session that sent no update for this long is closed (1000, "idle").
    pub idle_timeout: Duration,
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
    /// No update for the idle timeout.
    Idle,
    /// The order reached its last step (delivered, cancelled, rejected) and
    /// the client has it.
    Finished,
}

/// The reason of the close that ends a finished order's session.
pub const FINISHED: &str = "order finished";

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

/// How a session deals with holes in what it knows.
#[derive(Debug, Clone, Copy)]
pub struct Gaps {
    /// How often the stored timeline is read again while entries are held.
    pub refresh_every: Duration,
    /// After this long with a hole, what is held is sent anyway.
    pub give_up_after: Duration,
}

impl Default for Gaps {
    fn default() -> Self {
        Self {
            refresh_every: Duration::from_millis(500),
            give_up_after: Duration::from_secs(30),
        }
    }
}

/// What the client has been sent, out of what the session knows.
///
/// The client only ever gets a *contiguous prefix* of the flow (created,
/// confirmed, preparing, ...). An entry that would leave a hole (its
/// predecessor is still pending in a dead replica's group, say) is held until
/// the predecessor turns up, so the client sees every status, in order.
#[derive(Debug)]
struct Feed {
    known: Snapshot,
    sent: usize,
    hole_since: Option<Instant>,
}

impl Feed {
    fn new(known: Snapshot) -> Self {
        let mut feed = Self {
            known,
            sent: 0,
            hole_since: None,
        };
        feed.sent = feed.contiguous();
        feed.note_hole();
        feed
    }

    /// Entries at the start of the timeline whose stages have no gap.
    fn contiguous(&self) -> usize {
        self.known
            .timeline
            .iter()
            .enumerate()
            .take_while(|(i, e)| e.stage() == *i)
            .count()
    }

    fn note_hole(&mut self) {
        if self.known.timeline.len() > self.sent {
            self.hole_since.get_or_insert_with(Instant::now);
        } else {
            self.hole_since = None;
        }
    }

    fn prefix(&self, n: usize) -> Snapshot {
        Snapshot::from_entries(
            self.known.order_id,
            self.known.timeline[..n].iter().cloned(),
        )
    }

    /// The client has every known step and the last one ends the order.
    fn finished(&self) -> bool {
        self.sent == self.known.timeline.len()
            && self
                .known
                .timeline
                .last()
                .is_some_and(|e| e.step.is_final())
    }

    fn snapshot(&self) -> serde_json::Value {
        snapshot_message(&self.prefix(self.sent))
    }

    /// Learns entries; returns the update messages now due, in order.
    fn learn(
        &mut self,
        entries: impl IntoIterator<Item = Entry>,
        gaps: Gaps,
    ) -> Vec<serde_json::Value> {
        for e in entries {
            self.known.add(e);
        }
        let give_up = self
            .hole_since
            .is_some_and(|t| t.elapsed() >= gaps.give_up_after);
        let target = if give_up {
            self.known.timeline.len()
        } else {
            self.contiguous()
        };
        if give_up && target > self.contiguous() {
            tracing::warn!(order_id = %self.known.order_id, "a status never arrived; sending the later ones anyway");
        }
        let mut out = Vec::new();
        while self.sent < target {
            self.sent += 1;
            let now = self.prefix(self.sent);
            out.push(json!({
                "type": "update",
                "order_id": now.order_id,
                "status": now.status,
                "delivery": now.delivery,
                "entry": self.known.timeline[self.sent - 1],
            }));
        }
        self.note_hole();
        out
    }
}

/// Runs a session: snapshot, then updates and keep-alive until it ends.
/// `refresh` reads the stored timeline again (used while a hole is open).
#[allow(clippy::too_many_arguments)]
pub async fn session<S, R, E, F, Fut>(
    mut tx: S,
    mut rx: R,
    snapshot: Snapshot,
    updates: &mut mpsc::Receiver<Entry>,
    keep_alive: KeepAlive,
    gaps: Gaps,
    refresh: F,
    shutdown: CancellationToken,
) -> End
where
    S: Sink<Message> + Unpin,
    R: Stream<Item = Result<Message, E>> + Unpin,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Vec<Entry>>,
{
    let mut feed = Feed::new(snapshot);
    if tx.send(text(&feed.snapshot())).await.is_err() {
        return End::ClientGone;
    }
    if feed.finished() {
        let _ = tx.send(close(1000, FINISHED)).await;
        return End::Finished;
    }
    let mut next_ping = Instant::now() + keep_alive.ping_interval;
    let mut pong_due: Option<Instant> = None;
    let mut next_refresh = Instant::now() + gaps.refresh_every;
    let mut idle_at = Instant::now() + keep_alive.idle_timeout;
    let end = 'session: loop {
        let deadline = pong_due.map_or(next_ping, |due| due.min(next_ping));
        let mut due = Vec::new();
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
                due = feed.learn([entry], gaps);
            }
            () = tokio::time::sleep_until(next_refresh), if feed.hole_since.is_some() => {
                due = feed.learn(refresh().await, gaps);
                next_refresh = Instant::now() + gaps.refresh_every;
            }
            incoming = rx.next() => match incoming {
                Some(Ok(Message::Pong(_))) => pong_due = None,
                Some(Ok(Message::Close(_)) | Err(_)) | None => break End::ClientGone,
                Some(Ok(_)) => {}
            },
            () = tokio::time::sleep_until(idle_at) => {
                let _ = tx.send(close(1000, "idle: reconnect for a fresh snapshot")).await;
                break End::Idle;
            }
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
        if !due.is_empty() {
            idle_at = Instant::now() + keep_alive.idle_timeout;
        }
        for msg in due {
            if tx.send(text(&msg)).await.is_err() {
                break 'session End::ClientGone;
            }
        }
        if feed.finished() {
            let _ = tx.send(close(1000, FINISHED)).await;
            break End::Finished;
        }
    };
    debug!(?end, order_id = %feed.known.order_id, "tracker session ended");
    end
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use futures::channel::mpsc as fmpsc;

    use contract::{
        OrderId,
        status::{DeliveryStatus, Step},
    };

    use super::*;

    const O1: OrderId = OrderId::from_bytes([1; 12]);

    /// An order step from its wire name.
    fn order_step(status: &str) -> Step {
        Step::Order(serde_json::from_value(status.into()).unwrap())
    }

    const KA: KeepAlive = KeepAlive {
        ping_interval: Duration::from_secs(20),
        pong_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(3600),
    };

    fn entry(id: &str, status: &str, version: u32) -> Entry {
        entry_of(order_step(status), id, version)
    }

    fn entry_of(step: Step, id: &str, version: u32) -> Entry {
        Entry {
            event_id: id.into(),
            step,
            version,
            at: Utc::now(),
            delivery_id: None,
            after: None,
        }
    }

    fn parse(m: Message) -> serde_json::Value {
        match m {
            Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
            other => panic!("expected text, got {other:?}"),
        }
    }

    async fn no_refresh() -> Vec<Entry> {
        Vec::new()
    }

    /// A session running on in-memory channels: what it sends, what the
    /// peer answers, the live updates it is fed.
    struct Peer {
        sent: fmpsc::UnboundedReceiver<Message>,
        answer: fmpsc::UnboundedSender<Result<Message, ()>>,
        updates: mpsc::Sender<Entry>,
        task: tokio::task::JoinHandle<End>,
    }

    impl Peer {
        fn start<R, F>(snap: Snapshot, gaps: Gaps, refresh: R, token: CancellationToken) -> Self
        where
            R: Fn() -> F + Send + 'static,
            F: Future<Output = Vec<Entry>> + Send,
        {
            let (out_tx, sent) = fmpsc::unbounded();
            let (answer, in_rx) = fmpsc::unbounded();
            let (updates, up_rx) = mpsc::channel(8);
            let task = tokio::spawn(async move {
                session(
                    out_tx,
                    in_rx,
                    snap,
                    &mut { up_rx },
                    KA,
                    gaps,
                    refresh,
                    token,
                )
                .await
            });
            Self {
                sent,
                answer,
                updates,
                task,
            }
        }

        async fn next(&mut self) -> serde_json::Value {
            parse(self.sent.next().await.unwrap())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_hole_is_held_back_until_the_store_fills_it_then_sent_in_order() {
        // Known: created, confirmed, out_for_delivery ("preparing" is missing).
        let snap = Snapshot::from_entries(
            O1,
            [
                entry("a", "created", 1),
                entry("b", "confirmed", 2),
                entry("d", "out_for_delivery", 4),
            ],
        );
        let store_has_it = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = store_has_it.clone();
        let refresh = move || {
            let flag = flag.clone();
            async move {
                if flag.load(std::sync::atomic::Ordering::SeqCst) {
                    vec![entry("c", "preparing", 3)]
                } else {
                    Vec::new()
                }
            }
        };
        let mut peer = Peer::start(snap, Gaps::default(), refresh, CancellationToken::new());
        let first = peer.next().await;
        let statuses: Vec<&str> = first["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["status"].as_str().unwrap())
            .collect();
        assert_eq!(
            statuses,
            ["created", "confirmed"],
            "only the contiguous prefix"
        );
        assert_eq!(first["status"], "confirmed");
        // A later live update is held too.
        peer.updates
            .send(entry_of(
                Step::Delivery(DeliveryStatus::WaitingForPickup),
                "e",
                1,
            ))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        store_has_it.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut order = Vec::new();
        for _ in 0..3 {
            order.push(
                peer.next().await["entry"]["status"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        assert_eq!(
            order,
            ["preparing", "out_for_delivery", "waiting_for_pickup"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_hole_that_never_fills_is_given_up_on() {
        let snap =
            Snapshot::from_entries(O1, [entry("a", "created", 1), entry("c", "preparing", 3)]);
        let gaps = Gaps {
            refresh_every: Duration::from_millis(500),
            give_up_after: Duration::from_secs(5),
        };
        let mut peer = Peer::start(snap, gaps, no_refresh, CancellationToken::new());
        assert_eq!(peer.next().await["timeline"].as_array().unwrap().len(), 1);
        let started = Instant::now();
        let late = peer.next().await;
        assert_eq!(late["entry"]["status"], "preparing");
        assert!(started.elapsed() >= Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn snapshot_first_then_only_new_updates_in_order() {
        let snap = Snapshot::from_entries(O1, [entry("a", "created", 1)]);
        let token = CancellationToken::new();
        let mut peer = Peer::start(snap, Gaps::default(), no_refresh, token.clone());
        peer.updates.send(entry("a", "created", 1)).await.unwrap(); // already in the snapshot
        peer.updates.send(entry("b", "confirmed", 2)).await.unwrap();
        let first = peer.next().await;
        assert_eq!(first["type"], "snapshot");
        assert_eq!(first["timeline"].as_array().unwrap().len(), 1);
        let second = peer.next().await;
        assert_eq!(
            (
                second["type"].as_str(),
                second["entry"]["event_id"].as_str()
            ),
            (Some("update"), Some("b"))
        );
        assert_eq!(second["status"], "confirmed");
        token.cancel();
        assert_eq!(peer.task.await.unwrap(), End::Shutdown);
        assert!(matches!(peer.sent.next().await, Some(Message::Close(Some(f))) if f.code == 1001));
    }

    #[tokio::test(start_paused = true)]
    async fn pings_and_drops_a_peer_that_stops_answering() {
        let mut peer = Peer::start(
            Snapshot::empty(O1),
            Gaps::default(),
            no_refresh,
            CancellationToken::new(),
        );
        assert_eq!(peer.next().await["type"], "snapshot");
        // First ping after the interval; answering it keeps the session.
        assert!(matches!(peer.sent.next().await, Some(Message::Ping(_))));
        peer.answer
            .unbounded_send(Ok(Message::Pong(Default::default())))
            .unwrap();
        assert!(matches!(peer.sent.next().await, Some(Message::Ping(_))));
        // Not answering this one: dropped after the pong timeout.
        let started = Instant::now();
        assert!(matches!(peer.sent.next().await, Some(Message::Close(Some(f))) if f.code == 1001));
        assert_eq!(peer.task.await.unwrap(), End::PongTimeout);
        assert_eq!(started.elapsed(), KA.pong_timeout);
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_without_updates_closes_when_idle() {
        let (out_tx, mut sent) = fmpsc::unbounded();
        let (_answer, in_rx) = fmpsc::unbounded::<Result<Message, ()>>();
        let (_updates, mut up_rx) = mpsc::channel(8);
        let ka = KeepAlive {
            ping_interval: Duration::from_secs(3600 * 24),
            pong_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        };
        let started = Instant::now();
        let end = session(
            out_tx,
            in_rx,
            Snapshot::empty(O1),
            &mut up_rx,
            ka,
            Gaps::default(),
            no_refresh,
            CancellationToken::new(),
        )
        .await;
        assert_eq!(end, End::Idle);
        assert_eq!(started.elapsed(), Duration::from_secs(60));
        let _snapshot = sent.next().await;
        assert!(matches!(sent.next().await, Some(Message::Close(Some(f))) if f.code == 1000));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lagging_subscription_closes_with_1013() {
        let mut peer = Peer::start(
            Snapshot::empty(O1),
            Gaps::default(),
            no_refresh,
            CancellationToken::new(),
        );
        // What the hub does to a subscriber that fell behind: drop its sender.
        let Peer { updates, task, .. } = &mut peer;
        let (dead, _) = mpsc::channel(1);
        drop(std::mem::replace(updates, dead));
        assert_eq!(task.await.unwrap(), End::Lagging);
        let _snapshot = peer.sent.next().await;
        assert!(matches!(peer.sent.next().await, Some(Message::Close(Some(f))) if f.code == 1013));
    }
}
