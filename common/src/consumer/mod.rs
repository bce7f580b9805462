//! The consumer-group loop.
//!
//! One [`Consumer`] reads one stream as one member of one group. It runs two
//! tasks that share the handler:
//!
//! **The reader** creates the group if needed (`XGROUP CREATE ... 0 MKSTREAM`,
//! so a new group reads the stream's retained history; `BUSYGROUP` is fine),
//! then loops on `XREADGROUP GROUP g c COUNT n BLOCK ms STREAMS s >`. Each batch
//! is split into *lanes* by the envelope's ordering `key`; lanes run
//! concurrently (up to `concurrency`), the messages of one lane one after
//! another. The next batch is read when the whole batch is done.
//!
//! **The reclaimer** does two things:
//! * *retries*: a message whose handler failed stays pending and is retried by
//!   the same consumer after `retry_backoff * 2^(attempt-1)` (capped at half the
//!   min-idle). The retry claims the message again (`XCLAIM` to itself, in a
//!   script that first checks it still owns it), which increments the
//!   delivery count, so the attempt number lives in Redis, not in memory.
//! * *deferrals*: a handler that cannot act *yet* ([`HandlerError::Defer`]:
//!   the event depends on an earlier one that is still being retried, or is
//!   pending at a consumer that died and will only be taken over after the
//!   min-idle) gets its message back later, claimed with `RETRYCOUNT` so that
//!   waiting uses up no attempt. A message deferred for longer than
//!   `max_defer` (by its age in the stream) is dead-lettered
//!   (`deferred_too_long`). A handler whose dependency is unavailable
//!   ([`HandlerError::Unavailable`]: the database is down, or a document is
//!   locked by a transaction that a crashed process left open) is treated the
//!   same way but without a deadline: an outage never dead-letters healthy
//!   messages.
//! * *takeover*: every `reclaim_interval` it runs `XAUTOCLAIM` with
//!   `reclaim_min_idle`, taking over messages that some consumer (a crashed
//!   replica, a paused one, or this one after a lost retry) left pending, and
//!   reads their delivery counts from the pending-entries list with
//!   `XPENDING`. It also forgets consumers idle for over an hour that hold
//!   nothing.
//!
//! For every message, in either task:
//! 1. not an envelope → dead letters at once (`malformed`);
//! 2. delivered more often than `max_attempts` (earlier attempts died with
//!    their process) → dead letters (`max_attempts`);
//! 3. otherwise the handler runs, inside a span carrying `stream`, `group`,
//!    `event_id`, `event_type`, `correlation_id`, `key` and `attempt`, with a
//!    timeout and a panic guard. Success (or "not mine", [`Outcome::Skipped`])
//!    → `XACK` (coalesced: the acknowledgements due while one is on its way
//!    go together in the next, one round trip for many ids). [`HandlerError::Reject`] → dead letters at once (`rejected`).
//!    [`HandlerError::Retry`] → the error text is saved in a hash next to the
//!    stream (so whoever dead-letters it later can say why), and the message
//!    is retried, or dead-lettered if this was attempt `max_attempts`.
//!    [`HandlerError::Defer`], and a handler that outlived its timeout, →
//!    looked at again later without using up an attempt, dead-lettered
//!    (`deferred_too_long`) once older than `max_defer`: an overloaded
//!    machine where every handler is slow dead-letters nothing.
//!    [`HandlerError::Unavailable`] → retried without a deadline.
//!
//! Dead-lettering and acknowledging happen in one Lua script (see
//! [`crate::dead_letter`]). With the defaults a poison message reaches the dead
//! letters about 3 s after it was published (attempts at 0, 0.2, 0.6, 1.4 and
//! 3.0 s).
//!
//! Shutdown: when the token is cancelled the reader stops before its next
//! read (a read in progress returns within `block`), finishes and acknowledges
//! the batch it holds; the reclaimer finishes what it claimed. Messages
//! waiting for a retry stay pending and are taken over by another replica (or
//! this service after a restart) once idle.

mod handle;
mod metrics;
mod read;
mod reclaim;

use std::{
    collections::HashSet,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use contract::redis::Conn;
use contract::{
    Envelope, StreamEntry,
    events::StreamEvent,
    redis::{self as wire, ReplyError},
    streams::{Namespace, Stream},
};
use redis::RedisError;
use tokio::sync::Notify;
use tokio_util::{sync::CancellationToken, task::AbortOnDropHandle};
use tracing::{Instrument, error, info, info_span};

use crate::settings::{CommonSettings, ConsumerSettings};

use self::metrics::LoopMetrics;

/// Any error a handler may return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A message handed to a [`Handler`]: the event of its stream, decoded once,
/// and the envelope it came in (event id, correlation id, ...).
#[derive(Debug, Clone)]
pub struct Message<E> {
    /// Full key of the stream it was read from.
    pub stream: String,
    /// Its entry id.
    pub id: String,
    /// The parsed envelope.
    pub envelope: Envelope,
    /// The decoded event.
    pub event: E,
    /// 1 on the first delivery, then 2, 3, ... (the delivery count in Redis).
    pub attempt: u32,
}

/// What a successful handler did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The message was handled.
    Done,
    /// The message is of a type this handler does not handle; it is
    /// acknowledged and skipped.
    Skipped,
}

/// Why a handler failed.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// May succeed later (database down, write conflict, ...): retried.
    #[error(transparent)]
    Retry(BoxError),
    /// Can never succeed (invalid payload, ...): dead-lettered at once.
    #[error(transparent)]
    Reject(BoxError),
    /// Cannot be handled *yet* (it depends on an event still being retried or
    /// taken over): handled again later without using up an attempt, until
    /// it is older than `CONSUMER_MAX_DEFER_MS`.
    #[error(transparent)]
    Defer(BoxError),
    /// A dependency is unreachable or contended (database down, a write
    /// conflict that outlasted the transaction retries, a lock held by a
    /// transaction a crashed process left open): not the message's fault, so
    /// it is retried without using up attempts and without a deadline.
    #[error(transparent)]
    Unavailable(BoxError),
}

impl HandlerError {
    /// A failure worth retrying.
    pub fn retry(e: impl Into<BoxError>) -> Self {
        Self::Retry(e.into())
    }

    /// A failure that retrying cannot fix.
    pub fn reject(e: impl Into<BoxError>) -> Self {
        Self::Reject(e.into())
    }

    /// Not yet: waiting for something else to happen first.
    pub fn defer(e: impl Into<BoxError>) -> Self {
        Self::Defer(e.into())
    }

    /// A Redis error: [`HandlerError::Unavailable`] when Redis is unreachable
    /// or slow, [`HandlerError::Retry`] otherwise.
    pub fn from_redis(e: RedisError) -> Self {
        if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
        {
            Self::Unavailable(e.into())
        } else {
            Self::Retry(e.into())
        }
    }

    /// A database error: [`HandlerError::Unavailable`] when the database is
    /// unreachable or contended, [`HandlerError::Retry`] otherwise.
    pub fn from_mongo(e: mongodb::error::Error) -> Self {
        if crate::mongo::is_unavailable(&e) {
            Self::Unavailable(e.into())
        } else {
            Self::Retry(e.into())
        }
    }
}

/// Handles the events of one stream (`E`, its [`StreamEvent`] enum). One
/// type may handle several streams by implementing this trait once per
/// stream.
pub trait Handler<E: StreamEvent>: Send + Sync + 'static {
    /// Handles one message. Must be idempotent: a message can be delivered
    /// more than once (redelivery after a crash before its acknowledgement).
    fn handle(
        &self,
        msg: &Message<E>,
    ) -> impl Future<Output = Result<Outcome, HandlerError>> + Send;

    /// Handles a run of messages of one ordering key that were read
    /// together, in stream order: one result per message, in order. The
    /// consumer acknowledges, retries or defers each by its own result.
    ///
    /// The default handles them one by one, each after the one before it
    /// has finished. A handler may do better (one transaction for the run)
    /// if it decides each message on the state the messages before it left,
    /// exactly as one by one would, as [`crate::transition::Guarded::apply_run`]
    /// does.
    fn handle_run(
        &self,
        msgs: &[Message<E>],
    ) -> impl Future<Output = Vec<Result<Outcome, HandlerError>>> + Send {
        async move {
            let mut out = Vec::with_capacity(msgs.len());
            for msg in msgs {
                out.push(self.handle(msg).await);
            }
            out
        }
    }
}

/// Where one consumer reads and how it behaves.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Full key of the stream.
    pub stream: String,
    /// Short stream name for metric labels (no deployment prefix).
    pub label: String,
    /// Consumer group.
    pub group: String,
    /// This consumer's name in the group.
    pub consumer: String,
    /// Full key of the dead-letter stream.
    pub dead_letters: String,
    /// The deployment's key namespace (scopes failpoints).
    pub namespace: Namespace,
    /// Tuning.
    pub settings: ConsumerSettings,
}

impl ConsumerConfig {
    /// The consumer of `group` on partition `p` of `stream` for a service
    /// with these settings (its dead letters go to the same partition of
    /// the dead-letter stream).
    pub fn new(common: &CommonSettings, stream: Stream, group: &str, p: u16) -> Self {
        let ns = common.namespace();
        Self {
            stream: ns.stream_at(stream, p),
            label: stream.name().to_owned(),
            group: group.to_owned(),
            consumer: common.consumer_name.clone(),
            dead_letters: ns.stream_at(Stream::DeadLetters, p),
            settings: common.consumer.clone(),
            namespace: ns,
        }
    }
}

/// Whether a consumer loop is up, for readiness probes: one loop, or all
/// the partitions of one stream that a replica reads (an aggregate, ready
/// while it runs and every loop it holds is ready).
#[derive(Debug, Clone)]
pub struct LoopStatus(Arc<LoopStatusInner>);

#[derive(Debug)]
struct LoopStatusInner {
    name: String,
    running: AtomicBool,
    reading: AtomicBool,
    /// The loops an aggregate holds right now.
    parts: Mutex<Vec<LoopStatus>>,
}

impl LoopStatus {
    pub(crate) fn new(name: String) -> Self {
        Self(Arc::new(LoopStatusInner {
            name,
            running: AtomicBool::new(false),
            reading: AtomicBool::new(false),
            parts: Mutex::new(Vec::new()),
        }))
    }

    /// An aggregate of the loops of `stream` (short name) in `group`: ready
    /// while running, with every loop it holds ready (none held is ready).
    pub(crate) fn aggregate(stream: &str, group: &str) -> Self {
        let status = Self::new(format!("{stream}/{group}"));
        status.0.reading.store(true, Ordering::Relaxed);
        status
    }

    /// `<stream>/<group>`.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The loop has its group and its last read succeeded (an aggregate:
    /// it runs, and so does every loop it holds).
    pub fn is_ready(&self) -> bool {
        self.0.running.load(Ordering::Relaxed)
            && self.0.reading.load(Ordering::Relaxed)
            && lock(&self.0.parts).iter().all(LoopStatus::is_ready)
    }

    pub(crate) fn set_running(&self, running: bool) {
        self.0.running.store(running, Ordering::Relaxed);
    }

    /// Holds `part` until [`LoopStatus::remove`].
    pub(crate) fn add(&self, part: LoopStatus) {
        lock(&self.0.parts).push(part);
    }

    /// Lets go of `part`.
    pub(crate) fn remove(&self, part: &LoopStatus) {
        lock(&self.0.parts).retain(|p| !Arc::ptr_eq(&p.0, &part.0));
    }
}

/// A consumer-group member; see the module docs.
pub struct Consumer<E, H> {
    inner: Arc<Inner<E, H>>,
}

impl<E, H> std::fmt::Debug for Consumer<E, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("cfg", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

struct Inner<E, H> {
    cfg: ConsumerConfig,
    /// Hash of `entry id -> last error`, next to the stream.
    errors_key: String,
    handler: H,
    /// Acks, claims, dead letters.
    conn: Conn,
    /// Coalesced acknowledgements.
    acks: crate::batch::Batcher<handle::Acks>,
    /// Acknowledgements on their way: a handled message does not wait for
    /// its `XACK` (the next message of its lane, and the next read, go on
    /// meanwhile); shutdown waits for them.
    acking: tokio_util::task::TaskTracker,
    /// Blocking reads only.
    read_conn: Conn,
    /// Own failed or deferred messages waiting for their time.
    retries: Mutex<Vec<Pending>>,
    retry_added: Notify,
    /// Entry ids a handler of this process is working on.
    in_flight: Mutex<HashSet<String>>,
    status: LoopStatus,
    metrics: LoopMetrics,
    /// The events this consumer decodes.
    events: std::marker::PhantomData<fn() -> E>,
}

/// A message of this consumer waiting to be handled again.
#[derive(Debug)]
struct Pending {
    due: Instant,
    id: String,
    /// A deferral: claim again without counting a delivery.
    keep_count: bool,
}

#[derive(Debug, thiserror::Error)]
enum LoopError {
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error(transparent)]
    Reply(#[from] ReplyError),
}

impl<E: StreamEvent, H: Handler<E>> Consumer<E, H> {
    /// A consumer on `cfg.stream` for `cfg.group`, using `client` for its two
    /// connections (no I/O until [`Consumer::run`]).
    pub fn new(
        client: &contract::redis::Client,
        cfg: ConsumerConfig,
        handler: H,
    ) -> redis::RedisResult<Self> {
        let conn = wire::commands(client)?;
        let read_conn = wire::blocking(client, cfg.settings.block)?;
        let status = LoopStatus::new(format!("{}/{}", cfg.label, cfg.group));
        let errors_key = format!("{}:last-errors:{}", cfg.stream, cfg.group);
        let acks = crate::batch::Batcher::new(
            "acks",
            handle::MAX_ACKS,
            handle::Acks {
                conn: conn.clone(),
                stream: cfg.stream.clone(),
                group: cfg.group.clone(),
                errors_key: errors_key.clone(),
            },
        );
        Ok(Self {
            inner: Arc::new(Inner {
                acks,
                acking: tokio_util::task::TaskTracker::new(),
                errors_key,
                metrics: LoopMetrics::new(&cfg),
                cfg,
                handler,
                conn,
                read_conn,
                retries: Mutex::new(Vec::new()),
                retry_added: Notify::new(),
                in_flight: Mutex::new(HashSet::new()),
                status,
                events: std::marker::PhantomData,
            }),
        })
    }

    /// A handle telling whether this loop is running and reading.
    pub fn status(&self) -> LoopStatus {
        self.inner.status.clone()
    }

    /// Runs until `shutdown` is cancelled, then drains what it holds.
    pub async fn run(self, shutdown: CancellationToken) {
        let inner = self.inner;
        let span = info_span!("consumer", stream = %inner.cfg.label, group = %inner.cfg.group, consumer = %inner.cfg.consumer);
        async {
            if !inner.ensure_group_until_ok(&shutdown).await {
                return;
            }
            inner.status.set_running(true);
            info!("consumer started");
            // Aborted if this future is dropped: the reclaimer never outlives its reader.
            let reclaimer = AbortOnDropHandle::new(tokio::spawn({
                let inner = inner.clone();
                let shutdown = shutdown.clone();
                async move { inner.reclaim_loop(shutdown).await }.in_current_span()
            }));
            inner.read_loop(&shutdown).await;
            if let Err(e) = reclaimer.await {
                error!(error = %e, "reclaim task failed");
            }
            inner.acking.close();
            inner.acking.wait().await;
            inner.status.set_running(false);
            info!("consumer stopped");
        }
        .instrument(span)
        .await;
    }
}

impl<E: StreamEvent, H: Handler<E>> Inner<E, H> {
    fn settings(&self) -> &ConsumerSettings {
        &self.cfg.settings
    }
}

/// Marks an entry id as being handled by this process while alive.
struct InFlight<'a> {
    set: &'a Mutex<HashSet<String>>,
    id: String,
}

impl<'a> InFlight<'a> {
    fn enter(set: &'a Mutex<HashSet<String>>, id: &str) -> Option<Self> {
        lock(set).insert(id.to_owned()).then(|| Self {
            set,
            id: id.to_owned(),
        })
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        lock(self.set).remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave them inconsistent
    // (single inserts and removals), so poisoning is ignored.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// How long ago the entry was added to its stream.
fn entry_age(entry: &StreamEntry) -> Duration {
    entry.millis().map_or(Duration::ZERO, |ms| {
        let now = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
        Duration::from_millis(now.saturating_sub(ms))
    })
}

/// An error and its sources, `outer: inner: root`.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.ends_with(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic payload".to_owned())
}
