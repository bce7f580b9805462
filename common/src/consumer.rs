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
//!    → `XACK`. [`HandlerError::Reject`] → dead letters at once (`rejected`).
//!    [`HandlerError::Retry`] → the error text is saved in a hash next to the
//!    stream (so whoever dead-letters it later can say why), and the message
//!    is retried, or dead-lettered if this was attempt `max_attempts`.
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

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    panic::AssertUnwindSafe,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{FutureExt, StreamExt};
use metrics::{Counter, Histogram};
use redis::{RedisError, Script, Value, aio::ConnectionManager};
use tokio::sync::Notify;
use tokio_util::{sync::CancellationToken, task::AbortOnDropHandle};
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::{
    Envelope, StreamEntry,
    dead_letter::{self, MoveRequest, Reason},
    redis_conn,
    settings::{CommonSettings, ConsumerSettings},
    stream_entry::{self, ReplyError},
    streams::{Namespace, Stream},
};

/// Any error a handler may return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A message handed to a [`Handler`].
#[derive(Debug, Clone)]
pub struct Message {
    /// Full key of the stream it was read from.
    pub stream: String,
    /// Its entry id.
    pub id: String,
    /// The parsed envelope.
    pub envelope: Envelope,
    /// 1 on the first delivery, then 2, 3, ... (the delivery count in Redis).
    pub attempt: u32,
}

impl Message {
    /// The payload as `T`; a payload that does not fit is rejected (dead-lettered
    /// at once: retrying cannot fix it).
    pub fn payload<T: serde::de::DeserializeOwned>(&self) -> Result<T, HandlerError> {
        self.envelope.payload_as().map_err(|e| {
            HandlerError::reject(format!("invalid {} payload: {e}", self.envelope.event_type))
        })
    }
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

/// Handles the messages of one stream.
pub trait Handler: Send + Sync + 'static {
    /// Handles one message. Must be idempotent: a message can be delivered
    /// more than once (redelivery after a crash before its acknowledgement).
    fn handle(&self, msg: &Message) -> impl Future<Output = Result<Outcome, HandlerError>> + Send;
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
    /// The consumer of `group` on `stream` for a service with these settings.
    pub fn new(common: &CommonSettings, stream: Stream, group: &str) -> Self {
        let ns = common.namespace();
        Self {
            stream: ns.stream(stream),
            label: stream.name().to_owned(),
            group: group.to_owned(),
            consumer: common.consumer_name.clone(),
            dead_letters: ns.stream(Stream::DeadLetters),
            settings: common.consumer.clone(),
            namespace: ns,
        }
    }
}

/// Whether a consumer loop is up, for readiness probes.
#[derive(Debug, Clone)]
pub struct LoopStatus(Arc<LoopStatusInner>);

#[derive(Debug)]
struct LoopStatusInner {
    name: String,
    running: AtomicBool,
    reading: AtomicBool,
}

impl LoopStatus {
    fn new(name: String) -> Self {
        Self(Arc::new(LoopStatusInner {
            name,
            running: AtomicBool::new(false),
            reading: AtomicBool::new(false),
        }))
    }

    /// `<stream>/<group>`.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The loop has its group and its last read succeeded.
    pub fn is_ready(&self) -> bool {
        self.0.running.load(Ordering::Relaxed) && self.0.reading.load(Ordering::Relaxed)
    }
}

/// A consumer-group member; see the module docs.
pub struct Consumer<H> {
    inner: Arc<Inner<H>>,
}

impl<H> std::fmt::Debug for Consumer<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("cfg", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

struct Inner<H> {
    cfg: ConsumerConfig,
    /// Hash of `entry id -> last error`, next to the stream.
    errors_key: String,
    handler: H,
    /// Acks, claims, dead letters.
    conn: ConnectionManager,
    /// Blocking reads only.
    read_conn: ConnectionManager,
    /// Own failed or deferred messages waiting for their time.
    retries: Mutex<Vec<Pending>>,
    retry_added: Notify,
    /// Entry ids a handler of this process is working on.
    in_flight: Mutex<HashSet<String>>,
    status: LoopStatus,
    metrics: LoopMetrics,
}

struct LoopMetrics {
    done: Counter,
    skipped: Counter,
    failed: Counter,
    reclaimed: Counter,
    /// Indexed by `Reason as usize`.
    dead_lettered: Vec<Counter>,
    duration: Histogram,
}

impl LoopMetrics {
    fn new(cfg: &ConsumerConfig) -> Self {
        let (s, g) = (cfg.label.clone(), cfg.group.clone());
        let handled = |outcome: &'static str| metrics::counter!("events_handled_total", "stream" => s.clone(), "group" => g.clone(), "outcome" => outcome);
        let dead = |reason: Reason| metrics::counter!("events_dead_lettered_total", "stream" => s.clone(), "group" => g.clone(), "reason" => reason.as_str());
        Self {
            done: handled("done"),
            skipped: handled("skipped"),
            failed: metrics::counter!("events_failed_total", "stream" => s.clone(), "group" => g.clone()),
            reclaimed: metrics::counter!("events_reclaimed_total", "stream" => s.clone(), "group" => g.clone()),
            dead_lettered: Reason::ALL.into_iter().map(dead).collect(),
            duration: metrics::histogram!("handler_duration_seconds", "stream" => s.clone(), "group" => g.clone()),
        }
    }

    fn dead_lettered(&self, reason: Reason) -> &Counter {
        &self.dead_lettered[reason as usize]
    }
}

/// How long the last-error hash lives after its last write.
const ERRORS_TTL_SECS: u64 = 7 * 24 * 3600;
/// Consumers holding nothing and idle this long are removed from the group.
const FORGET_IDLE_CONSUMERS_AFTER: Duration = Duration::from_secs(3600);
/// Takeover scans between two clean-ups of idle consumers.
const SCANS_PER_CLEANUP: u64 = 300;

/// Claims messages this consumer still owns, for a retry. Checking the owner
/// and claiming in one script keeps a retry from stealing a message another
/// consumer took over meanwhile. A retry counts as a delivery (the count goes
/// up); a deferral does not (`RETRYCOUNT` keeps it). KEYS: stream.
/// ARGV: group, consumer, then pairs of (id, `1` to keep the count or `0`).
/// Returns `[[entry, delivery_count], ...]`.
const CLAIM_OWN_SCRIPT: &str = r"
local out = {}
for i = 3, #ARGV, 2 do
  local id, keep = ARGV[i], ARGV[i + 1]
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if #p == 1 and p[1][2] == ARGV[2] then
    local count = p[1][4] + 1
    if keep == '1' then count = p[1][4] end
    local c = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'RETRYCOUNT', count)
    if c[1] then
      table.insert(out, {c[1], count})
    end
  end
end
return out
";

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

impl<H: Handler> Consumer<H> {
    /// A consumer on `cfg.stream` for `cfg.group`, using `client` for its two
    /// connections (no I/O until [`Consumer::run`]).
    pub fn new(
        client: &redis::Client,
        cfg: ConsumerConfig,
        handler: H,
    ) -> redis::RedisResult<Self> {
        let conn = redis_conn::commands(client)?;
        let read_conn = redis_conn::blocking(client, cfg.settings.block)?;
        let status = LoopStatus::new(format!("{}/{}", cfg.label, cfg.group));
        Ok(Self {
            inner: Arc::new(Inner {
                errors_key: format!("{}:last-errors:{}", cfg.stream, cfg.group),
                metrics: LoopMetrics::new(&cfg),
                cfg,
                handler,
                conn,
                read_conn,
                retries: Mutex::new(Vec::new()),
                retry_added: Notify::new(),
                in_flight: Mutex::new(HashSet::new()),
                status,
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
            inner.status.0.running.store(true, Ordering::Relaxed);
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
            inner.status.0.running.store(false, Ordering::Relaxed);
            info!("consumer stopped");
        }
        .instrument(span)
        .await;
    }
}

impl<H: Handler> Inner<H> {
    fn settings(&self) -> &ConsumerSettings {
        &self.cfg.settings
    }

    async fn ensure_group(&self) -> redis::RedisResult<()> {
        let created = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.cfg.stream)
            .arg(&self.cfg.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async::<()>(&mut self.conn.clone())
            .await;
        match created {
            Err(e) if e.code() != Some("BUSYGROUP") => Err(e),
            _ => Ok(()),
        }
    }

    async fn ensure_group_until_ok(&self, shutdown: &CancellationToken) -> bool {
        let mut backoff = Backoff::default();
        loop {
            match self.ensure_group().await {
                Ok(()) => return true,
                Err(e) => warn!(error = %e, "cannot create consumer group yet; retrying"),
            }
            if !backoff.sleep(shutdown).await {
                return false;
            }
        }
    }

    async fn read_loop(&self, shutdown: &CancellationToken) {
        let mut backoff = Backoff::default();
        while !shutdown.is_cancelled() {
            match self.read_new().await {
                Ok(entries) => {
                    backoff.reset();
                    self.status.0.reading.store(true, Ordering::Relaxed);
                    if !entries.is_empty() {
                        self.process_batch(entries.into_iter().map(|e| (e, 1)).collect())
                            .await;
                    }
                }
                Err(e) => {
                    self.status.0.reading.store(false, Ordering::Relaxed);
                    if matches!(&e, LoopError::Redis(r) if r.code() == Some("NOGROUP")) {
                        warn!("consumer group vanished (Redis lost its data?); recreating it");
                        if let Err(e) = self.ensure_group().await {
                            warn!(error = %e, "recreating the group failed");
                        }
                    } else {
                        warn!(error = %e, "reading the stream failed; retrying");
                    }
                    backoff.sleep(shutdown).await;
                }
            }
        }
    }

    async fn read_new(&self) -> Result<Vec<StreamEntry>, LoopError> {
        let s = self.settings();
        let reply: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.cfg.group)
            .arg(&self.cfg.consumer)
            .arg("COUNT")
            .arg(s.batch_size)
            .arg("BLOCK")
            .arg(duration_ms(s.block))
            .arg("STREAMS")
            .arg(&self.cfg.stream)
            .arg(">")
            .query_async(&mut self.read_conn.clone())
            .await?;
        Ok(stream_entry::xread(reply)?
            .into_iter()
            .flat_map(|(_, entries)| entries)
            .collect())
    }

    /// Handles a batch: lanes by ordering key, lanes concurrently.
    async fn process_batch(&self, items: Vec<(StreamEntry, u32)>) {
        let mut lanes: Vec<Vec<(StreamEntry, u32)>> = Vec::new();
        let mut lane_of: HashMap<String, usize> = HashMap::new();
        for (entry, count) in items {
            let key = match entry.get_str("key") {
                Some(k) if !k.is_empty() => k.to_owned(),
                _ => entry.id.clone(),
            };
            let lane = *lane_of.entry(key).or_insert_with(|| {
                lanes.push(Vec::new());
                lanes.len() - 1
            });
            lanes[lane].push((entry, count));
        }
        futures::stream::iter(lanes)
            .for_each_concurrent(self.settings().concurrency, |lane| async move {
                for (entry, count) in lane {
                    self.process_one(entry, count).await;
                }
            })
            .await;
    }

    async fn process_one(&self, entry: StreamEntry, delivery_count: u32) {
        let Some(_in_flight) = InFlight::enter(&self.in_flight, &entry.id) else {
            // Taken over from ourselves while a handler here still runs it.
            return;
        };
        let envelope = match Envelope::from_entry(&entry) {
            Ok(e) => e,
            Err(e) => {
                let error = format!("not a valid envelope: {e}");
                return self
                    .dead_letter(&entry, Reason::Malformed, &error, delivery_count)
                    .await;
            }
        };
        let span = info_span!(
            "event",
            stream = %self.cfg.label,
            group = %self.cfg.group,
            event_id = %envelope.event_id,
            event_type = %envelope.event_type,
            correlation_id = %envelope.correlation_id,
            key = %envelope.key,
            entry_id = %entry.id,
            attempt = delivery_count,
        );
        self.handle_envelope(entry, envelope, delivery_count)
            .instrument(span)
            .await;
    }

    async fn handle_envelope(&self, entry: StreamEntry, envelope: Envelope, attempt: u32) {
        let max = self.settings().max_attempts;
        if attempt > max {
            // Delivered more often than handled: earlier attempts died with
            // their process (or timed out) before they could record a result.
            let error = self.last_error(&entry.id).await.unwrap_or_else(|| {
                "the consumer stopped during the attempt (crash, kill or timeout)".to_owned()
            });
            return self
                .dead_letter(&entry, Reason::MaxAttempts, &error, attempt - 1)
                .await;
        }
        let msg = Message {
            stream: self.cfg.stream.clone(),
            id: entry.id.clone(),
            envelope,
            attempt,
        };
        let timeout = self.settings().handler_timeout;
        let started = Instant::now();
        let guarded = AssertUnwindSafe(self.handler.handle(&msg)).catch_unwind();
        let result = match tokio::time::timeout(timeout, guarded).await {
            Err(_) => Err(HandlerError::retry(format!(
                "handler timed out after {timeout:?}"
            ))),
            Ok(Err(panic)) => Err(HandlerError::retry(format!(
                "handler panicked: {}",
                panic_text(&*panic)
            ))),
            Ok(Ok(result)) => result,
        };
        self.metrics.duration.record(started.elapsed());
        match result {
            Ok(outcome) => {
                match outcome {
                    Outcome::Done => {
                        self.metrics.done.increment(1);
                        let point = format!("{}.before_ack", self.cfg.group);
                        crate::failpoint::hit(&self.cfg.namespace, &point).await;
                    }
                    Outcome::Skipped => self.metrics.skipped.increment(1),
                }
                if let Err(e) = self.ack(&msg.id, attempt > 1).await {
                    warn!(error = %e, "acknowledgement failed; the message will be redelivered");
                } else {
                    debug!(?outcome, "handled");
                }
            }
            Err(HandlerError::Reject(e)) => {
                self.metrics.failed.increment(1);
                let error = error_chain(&*e);
                self.dead_letter(&entry, Reason::Rejected, &error, attempt)
                    .await;
            }
            Err(HandlerError::Retry(e)) => {
                self.metrics.failed.increment(1);
                let error = error_chain(&*e);
                if attempt >= max {
                    self.dead_letter(&entry, Reason::MaxAttempts, &error, attempt)
                        .await;
                } else {
                    warn!(error = %error, "handler failed; will retry");
                    if let Err(e) = self.record_error(&msg.id, &error).await {
                        warn!(error = %e, "could not record the error text");
                    }
                    self.schedule_retry(msg.id, attempt);
                }
            }
            Err(HandlerError::Unavailable(e)) => {
                self.metrics.failed.increment(1);
                let error = error_chain(&*e);
                warn!(error = %error, "a dependency is unavailable; will retry without using up an attempt");
                self.schedule_deferral(msg.id, entry_age(&entry));
            }
            Err(HandlerError::Defer(e)) => {
                let error = error_chain(&*e);
                let age = entry_age(&entry);
                if age > self.settings().max_defer {
                    self.dead_letter(&entry, Reason::DeferredTooLong, &error, attempt)
                        .await;
                } else {
                    debug!(error = %error, ?age, "deferred; will look again");
                    if let Err(e) = self.record_error(&msg.id, &error).await {
                        warn!(error = %e, "could not record the error text");
                    }
                    self.schedule_deferral(msg.id, age);
                }
            }
        }
    }

    async fn ack(&self, id: &str, had_failed: bool) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        pipe.cmd("XACK")
            .arg(&self.cfg.stream)
            .arg(&self.cfg.group)
            .arg(id)
            .ignore();
        if had_failed {
            pipe.cmd("HDEL").arg(&self.errors_key).arg(id).ignore();
        }
        pipe.query_async::<()>(&mut self.conn.clone()).await
    }

    async fn record_error(&self, id: &str, error: &str) -> redis::RedisResult<()> {
        redis::pipe()
            .cmd("HSET")
            .arg(&self.errors_key)
            .arg(id)
            .arg(error)
            .ignore()
            .cmd("EXPIRE")
            .arg(&self.errors_key)
            .arg(ERRORS_TTL_SECS)
            .ignore()
            .query_async::<()>(&mut self.conn.clone())
            .await
    }

    async fn last_error(&self, id: &str) -> Option<String> {
        redis::cmd("HGET")
            .arg(&self.errors_key)
            .arg(id)
            .query_async::<Option<String>>(&mut self.conn.clone())
            .await
            .ok()
            .flatten()
    }

    async fn dead_letter(&self, entry: &StreamEntry, reason: Reason, error: &str, attempts: u32) {
        let req = MoveRequest {
            stream: &self.cfg.stream,
            group: &self.cfg.group,
            consumer: &self.cfg.consumer,
            dead_letters: &self.cfg.dead_letters,
            errors_key: &self.errors_key,
            entry,
            reason,
            error,
            attempts,
        };
        match dead_letter::move_and_ack(&mut self.conn.clone(), req).await {
            Ok(true) => {
                self.metrics.dead_lettered(reason).increment(1);
                error!(entry_id = %entry.id, %reason, attempts, error, "message moved to the dead letters");
            }
            Ok(false) => debug!(entry_id = %entry.id, "already acknowledged elsewhere"),
            Err(e) => warn!(
                entry_id = %entry.id,
                error = %e,
                "could not dead-letter; the message stays pending and will be taken over"
            ),
        }
    }

    fn schedule_retry(&self, id: String, attempt: u32) {
        let s = self.settings();
        let exp = s
            .retry_backoff
            .saturating_mul(1 << attempt.saturating_sub(1).min(16));
        let delay = exp.min(s.reclaim_min_idle / 2);
        lock(&self.retries).push(Pending {
            due: Instant::now() + delay,
            id,
            keep_count: false,
        });
        self.retry_added.notify_one();
    }

    /// Young deferred messages are looked at again soon, old ones less often.
    fn schedule_deferral(&self, id: String, age: Duration) {
        let s = self.settings();
        let delay = (age / 10).clamp(s.retry_backoff, s.reclaim_min_idle / 2);
        lock(&self.retries).push(Pending {
            due: Instant::now() + delay,
            id,
            keep_count: true,
        });
        self.retry_added.notify_one();
    }

    async fn reclaim_loop(&self, shutdown: CancellationToken) {
        let interval = self.settings().reclaim_interval;
        // Scan at once: messages of consumers that died before we started.
        let mut next_scan = Instant::now();
        let mut scans = 0u64;
        loop {
            let next_retry = lock(&self.retries).iter().map(|p| p.due).min();
            let wake = next_retry.map_or(next_scan, |t| t.min(next_scan));
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.retry_added.notified() => continue,
                () = tokio::time::sleep_until(wake.into()) => {}
            }
            let now = Instant::now();
            let due: Vec<Pending> = {
                let mut retries = lock(&self.retries);
                let (due, later) = retries.drain(..).partition(|p| p.due <= now);
                *retries = later;
                due
            };
            if !due.is_empty()
                && let Err(e) = self.retry_own(due).await
            {
                warn!(error = %e, "retry claim failed; the messages will be taken over when idle");
            }
            if now >= next_scan {
                if let Err(e) = self.take_over_idle(&shutdown).await {
                    warn!(error = %e, "XAUTOCLAIM scan failed");
                }
                next_scan = Instant::now() + interval;
                scans += 1;
                if scans.is_multiple_of(SCANS_PER_CLEANUP)
                    && let Err(e) = self.forget_idle_consumers().await
                {
                    debug!(error = %e, "consumer clean-up failed");
                }
            }
        }
    }

    async fn retry_own(&self, due: Vec<Pending>) -> Result<(), LoopError> {
        static SCRIPT: std::sync::LazyLock<Script> =
            std::sync::LazyLock::new(|| Script::new(CLAIM_OWN_SCRIPT));
        let mut inv = SCRIPT.key(&self.cfg.stream);
        inv.arg(&self.cfg.group).arg(&self.cfg.consumer);
        for p in &due {
            inv.arg(&p.id).arg(if p.keep_count { "1" } else { "0" });
        }
        let reply: Value = inv.invoke_async(&mut self.conn.clone()).await?;
        let mut items = Vec::new();
        for pair in stream_entry::array(reply)? {
            let mut pair = stream_entry::array(pair)?.into_iter();
            let (Some(entry), Some(count)) = (pair.next(), pair.next()) else {
                return Err(ReplyError("claim reply without delivery count".into()).into());
            };
            let count = u32::try_from(stream_entry::int(&count)?).unwrap_or(u32::MAX);
            items.push((stream_entry::entry(entry)?, count));
        }
        if !items.is_empty() {
            self.process_batch(items).await;
        }
        Ok(())
    }

    async fn take_over_idle(&self, shutdown: &CancellationToken) -> Result<(), LoopError> {
        let s = self.settings();
        let mut cursor = "0-0".to_owned();
        loop {
            let reply: Value = redis::cmd("XAUTOCLAIM")
                .arg(&self.cfg.stream)
                .arg(&self.cfg.group)
                .arg(&self.cfg.consumer)
                .arg(duration_ms(s.reclaim_min_idle))
                .arg(&cursor)
                .arg("COUNT")
                .arg(s.batch_size)
                .query_async(&mut self.conn.clone())
                .await?;
            let mut parts = stream_entry::array(reply)?.into_iter();
            let next = stream_entry::text(&parts.next().unwrap_or(Value::Nil))?;
            let (busy, claimed): (Vec<StreamEntry>, Vec<StreamEntry>) =
                stream_entry::entries(parts.next().unwrap_or(Value::Nil))?
                    .into_iter()
                    .partition(|e| lock(&self.in_flight).contains(&e.id));
            if !busy.is_empty() {
                // A handler here is still on these (it ran past the min-idle):
                // the claim counted a delivery that did not happen; undo it.
                self.restore_counts(&busy).await?;
            }
            if !claimed.is_empty() {
                let counts = self.delivery_counts(&claimed).await?;
                info!(count = claimed.len(), "took over idle pending messages");
                self.metrics.reclaimed.increment(claimed.len() as u64);
                let items = claimed
                    .into_iter()
                    .map(|e| {
                        let count = counts.get(&e.id).copied().unwrap_or(2);
                        (e, count)
                    })
                    .collect();
                self.process_batch(items).await;
            }
            if next == "0-0" || shutdown.is_cancelled() {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// Sets the delivery count of entries this consumer holds back by one.
    async fn restore_counts(&self, entries: &[StreamEntry]) -> Result<(), LoopError> {
        let counts = self.delivery_counts(entries).await?;
        let mut pipe = redis::pipe();
        for e in entries {
            let Some(count) = counts.get(&e.id) else {
                continue;
            };
            pipe.cmd("XCLAIM")
                .arg(&self.cfg.stream)
                .arg(&self.cfg.group)
                .arg(&self.cfg.consumer)
                .arg(0)
                .arg(&e.id)
                .arg("RETRYCOUNT")
                .arg(count.saturating_sub(1))
                .arg("JUSTID")
                .ignore();
        }
        pipe.query_async::<()>(&mut self.conn.clone()).await?;
        Ok(())
    }

    /// Delivery counts of entries this consumer just claimed, from the PEL.
    async fn delivery_counts(
        &self,
        claimed: &[StreamEntry],
    ) -> Result<HashMap<String, u32>, LoopError> {
        let (Some(first), Some(last)) = (claimed.first(), claimed.last()) else {
            return Ok(HashMap::new());
        };
        let room = claimed.len() + lock(&self.in_flight).len() + lock(&self.retries).len() + 16;
        let reply: Value = redis::cmd("XPENDING")
            .arg(&self.cfg.stream)
            .arg(&self.cfg.group)
            .arg(&first.id)
            .arg(&last.id)
            .arg(room)
            .arg(&self.cfg.consumer)
            .query_async(&mut self.conn.clone())
            .await?;
        let mut counts = HashMap::new();
        for row in stream_entry::array(reply)? {
            let row = stream_entry::array(row)?;
            if let [id, _, _, count] = row.as_slice() {
                let count = u32::try_from(stream_entry::int(count)?).unwrap_or(u32::MAX);
                counts.insert(stream_entry::text(id)?, count);
            }
        }
        Ok(counts)
    }

    async fn forget_idle_consumers(&self) -> Result<(), LoopError> {
        let reply: Value = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&self.cfg.stream)
            .arg(&self.cfg.group)
            .query_async(&mut self.conn.clone())
            .await?;
        for info in stream_entry::array(reply)? {
            let fields = stream_entry::fields_of(info);
            let (Some(name), Some(pending), Some(idle)) = (
                fields.get("name"),
                fields.get("pending"),
                fields.get("idle"),
            ) else {
                continue;
            };
            let idle = Duration::from_millis(idle.parse().unwrap_or(0));
            let pending: u64 = pending.parse().unwrap_or(1);
            if *name != self.cfg.consumer && pending == 0 && idle > FORGET_IDLE_CONSUMERS_AFTER {
                redis::cmd("XGROUP")
                    .arg("DELCONSUMER")
                    .arg(&self.cfg.stream)
                    .arg(&self.cfg.group)
                    .arg(name)
                    .query_async::<()>(&mut self.conn.clone())
                    .await?;
                info!(consumer = %name, "forgot an idle consumer");
            }
        }
        Ok(())
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

/// Exponential backoff for reconnecting: 100 ms doubling to 5 s.
#[derive(Debug)]
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(Duration::from_millis(100))
    }
}

impl Backoff {
    fn reset(&mut self) {
        *self = Self::default();
    }

    /// Sleeps; `false` if cancelled meanwhile.
    async fn sleep(&mut self, shutdown: &CancellationToken) -> bool {
        let d = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
        tokio::select! {
            () = shutdown.cancelled() => false,
            () = tokio::time::sleep(d) => true,
        }
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
