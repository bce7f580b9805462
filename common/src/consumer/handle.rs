//! Handling one message: the envelope, the attempt count, the handler with its
//! timeout and panic guard, then acknowledge, retry, defer or dead-letter.

use std::{
    panic::AssertUnwindSafe,
    time::{Duration, Instant},
};

use futures::FutureExt;
use tracing::{Instrument, debug, error, info_span, warn};

use contract::{
    Envelope, StreamEntry,
    dead_letter::Reason,
    events::{DecodeError, StreamEvent},
};

use super::{
    Handler, HandlerError, InFlight, Inner, Message, Outcome, Pending, entry_age, error_chain,
    lock, panic_text,
};
use crate::dead_letter::{self, MoveRequest};

/// The acknowledgements of one consumer, coalesced: the messages handled
/// while an `XACK` was on its way are acknowledged together by the next one
/// (one `XACK` of many ids, and one `HDEL` of the error texts of those that
/// had failed before), in one round trip. See [`crate::batch`].
pub(super) struct Acks {
    pub(super) conn: contract::redis::Conn,
    pub(super) stream: String,
    pub(super) group: String,
    pub(super) errors_key: String,
}

/// Most ids in one `XACK`.
pub(super) const MAX_ACKS: usize = 256;

impl crate::batch::Batch for Acks {
    /// Entry id, and whether an earlier attempt failed (its error text is kept).
    type Job = (String, bool);
    type Output = redis::RedisResult<()>;

    async fn run(&self, jobs: &[(String, bool)]) -> Vec<redis::RedisResult<()>> {
        let mut pipe = redis::pipe();
        let xack = pipe.cmd("XACK").arg(&self.stream).arg(&self.group);
        for (id, _) in jobs {
            xack.arg(id);
        }
        xack.ignore();
        let failed: Vec<&str> = jobs
            .iter()
            .filter(|(_, f)| *f)
            .map(|(id, _)| id.as_str())
            .collect();
        if !failed.is_empty() {
            pipe.cmd("HDEL").arg(&self.errors_key).arg(&failed).ignore();
        }
        let result = pipe.query_async::<()>(&mut self.conn.clone()).await;
        jobs.iter().map(|_| result.clone()).collect()
    }

    fn failed(&self, _: &(String, bool)) -> redis::RedisResult<()> {
        Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "acknowledging failed",
        )))
    }
}

/// How long the last-error hash lives after its last write.
const ERRORS_TTL_SECS: u64 = 7 * 24 * 3600;

/// A message ready for its handler: marked in flight, its envelope parsed
/// and its event decoded, with the span of its log lines.
struct Ready<'a, E> {
    _in_flight: InFlight<'a>,
    entry: StreamEntry,
    span: tracing::Span,
    msg: Message<E>,
}

/// Why a handler call ended without its result.
enum Cut {
    TimedOut(Duration),
    Panicked(String),
}

impl Cut {
    /// The error each message of the call gets: a timeout is looked at
    /// again later without using up an attempt (on a starved machine, or
    /// behind a slow database, every handler times out, and counting those
    /// would dead-letter good events; a handler that always hangs still
    /// ends in the dead letters, once the message is older than
    /// CONSUMER_MAX_DEFER_MS: deferred_too_long); a panic uses one up.
    fn error(&self) -> HandlerError {
        match self {
            Cut::TimedOut(t) => {
                HandlerError::Defer(format!("handler timed out after {t:?}").into())
            }
            Cut::Panicked(text) => HandlerError::retry(format!("handler panicked: {text}")),
        }
    }
}

impl<E: StreamEvent, H: Handler<E>> Inner<E, H> {
    pub(super) async fn process_one(&self, entry: StreamEntry, delivery_count: u32) {
        if let Some(ready) = self.prepare(entry, delivery_count).await {
            self.handle_one(ready).await;
        }
    }

    async fn handle_one(&self, ready: Ready<'_, E>) {
        let started = Instant::now();
        let span = ready.span.clone();
        // Called inside the async block, so that even the part of the
        // handler that runs when it is called is in the message's span.
        let result = async { self.guard(self.handler.handle(&ready.msg)).await }
            .instrument(span.clone())
            .await
            .unwrap_or_else(|cut| Err(cut.error()));
        self.finish(ready, result, started.elapsed())
            .instrument(span)
            .await;
    }

    /// A lane of several messages of one key: every message that is ready
    /// goes to the handler's [`Handler::handle_run`] at once, then each is
    /// acknowledged, retried, deferred or dead-lettered by its own result.
    pub(super) async fn process_run(&self, lane: Vec<(StreamEntry, u32)>) {
        let mut ready = Vec::with_capacity(lane.len());
        for (entry, count) in lane {
            if let Some(r) = self.prepare(entry, count).await {
                ready.push(r);
            }
        }
        if ready.len() < 2 {
            for r in ready {
                self.handle_one(r).await;
            }
            return;
        }
        let (rest, msgs): (Vec<_>, Vec<_>) = ready
            .into_iter()
            .map(|r| ((r._in_flight, r.entry, r.span), r.msg))
            .unzip();
        let span = info_span!(
            "events",
            stream = %self.cfg.label,
            group = %self.cfg.group,
            key = %msgs[0].envelope.key,
            count = msgs.len(),
        );
        let started = Instant::now();
        let results = match async { self.guard(self.handler.handle_run(&msgs)).await }
            .instrument(span)
            .await
        {
            Ok(results) if results.len() == msgs.len() => results,
            Ok(_) => msgs
                .iter()
                .map(|_| Err(HandlerError::retry("the handler lost answers of a run")))
                .collect(),
            Err(cut) => msgs.iter().map(|_| Err(cut.error())).collect(),
        };
        let elapsed = started.elapsed();
        for (((in_flight, entry, span), msg), result) in rest.into_iter().zip(msgs).zip(results) {
            let r = Ready {
                _in_flight: in_flight,
                entry,
                span: span.clone(),
                msg,
            };
            self.finish(r, result, elapsed).instrument(span).await;
        }
    }

    /// Marks the entry in flight, parses and decodes it; `None` if it is
    /// already in flight here, or went to the dead letters (malformed, not
    /// an event of this stream, or out of attempts).
    async fn prepare(&self, entry: StreamEntry, attempt: u32) -> Option<Ready<'_, E>> {
        // `None`: taken over from ourselves while a handler here still runs it.
        let in_flight = InFlight::enter(&self.in_flight, &entry.id)?;
        let envelope = match Envelope::from_entry(&entry) {
            Ok(e) => e,
            Err(e) => {
                let error = format!("not a valid envelope: {e}");
                self.dead_letter(&entry, Reason::Malformed, &error, attempt)
                    .await;
                return None;
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
            attempt,
        );
        let event = self
            .decode(&entry, &envelope, attempt)
            .instrument(span.clone())
            .await?;
        let msg = Message {
            stream: self.cfg.stream.clone(),
            id: entry.id.clone(),
            envelope,
            event,
            attempt,
        };
        Some(Ready {
            _in_flight: in_flight,
            entry,
            span,
            msg,
        })
    }

    /// The event, unless the entry goes to the dead letters: one code path
    /// for everything that is not an event of this stream (retrying cannot
    /// fix it), and for an entry delivered more often than handled (earlier
    /// attempts died with their process, or timed out, before they could
    /// record a result).
    async fn decode(&self, entry: &StreamEntry, envelope: &Envelope, attempt: u32) -> Option<E> {
        let event = match E::decode(envelope) {
            Ok(event) => event,
            Err(e) => {
                let reason = match e {
                    DecodeError::UnknownType { .. } => Reason::UnknownEvent,
                    DecodeError::Payload { .. } => Reason::InvalidPayload,
                };
                self.dead_letter(entry, reason, &e.to_string(), attempt)
                    .await;
                return None;
            }
        };
        if attempt > self.settings().max_attempts {
            let error = self.last_error(&entry.id).await.unwrap_or_else(|| {
                "the consumer stopped during the attempt (crash, kill or timeout)".to_owned()
            });
            self.dead_letter(entry, Reason::MaxAttempts, &error, attempt - 1)
                .await;
            return None;
        }
        Some(event)
    }

    /// Runs a handler call with the handler timeout and a panic guard.
    async fn guard<T>(&self, call: impl Future<Output = T>) -> Result<T, Cut> {
        let timeout = self.settings().handler_timeout;
        match tokio::time::timeout(timeout, AssertUnwindSafe(call).catch_unwind()).await {
            Err(_) => Err(Cut::TimedOut(timeout)),
            Ok(Err(panic)) => Err(Cut::Panicked(panic_text(&*panic))),
            Ok(Ok(value)) => Ok(value),
        }
    }

    /// Acknowledges, retries, defers or dead-letters a handled message by
    /// its result.
    async fn finish(
        &self,
        ready: Ready<'_, E>,
        result: Result<Outcome, HandlerError>,
        elapsed: Duration,
    ) {
        let Ready {
            _in_flight,
            entry,
            msg,
            ..
        } = ready;
        let attempt = msg.attempt;
        let max = self.settings().max_attempts;
        self.metrics.duration.record(elapsed);
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
                self.ack(msg.id, attempt > 1, outcome);
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

    /// Acknowledges in the background (see [`Inner::acking`]): a lost
    /// acknowledgement only means a redelivery.
    fn ack(&self, id: String, had_failed: bool, outcome: Outcome) {
        let acks = self.acks.clone();
        self.acking.spawn(
            async move {
                let acked = match acks.submit((id, had_failed)).await {
                    Ok(result) => result.map_err(|e| e.to_string()),
                    Err(stopped) => Err(stopped.to_string()),
                };
                match acked {
                    Ok(()) => debug!(?outcome, "handled"),
                    Err(e) => {
                        warn!(error = %e, "acknowledgement failed; the message will be redelivered");
                    }
                }
            }
            .in_current_span(),
        );
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

    /// Young deferred messages are looked at again soon, old ones less often,
    /// but always soon enough that a handler that ran its whole timeout plus
    /// this wait stays below the takeover idle time (a takeover would count
    /// as a delivery, and so as an attempt).
    fn schedule_deferral(&self, id: String, age: Duration) {
        let s = self.settings();
        let longest =
            (s.reclaim_min_idle.saturating_sub(s.handler_timeout) / 2).max(s.retry_backoff);
        let delay = (age / 10).clamp(s.retry_backoff, longest);
        lock(&self.retries).push(Pending {
            due: Instant::now() + delay,
            id,
            keep_count: true,
        });
        self.retry_added.notify_one();
    }
}
