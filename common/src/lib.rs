//! The runtime the four foodchain services share, and nothing service-specific.
//!
//! The services never call one another: they communicate only through Redis
//! Streams. The `contract` crate says what crosses the streams; this crate is
//! the machinery that makes the contract hold: the consumer loop, the outbox,
//! guarded transitions, HTTP, MongoDB, telemetry.
//!
//! | module | what it gives |
//! |---|---|
//! | [`backoff`] | the one exponential backoff of every wait-for-a-dependency loop |
//! | [`service`] | the runtime each service is built on: clients, health, start-up, consumers, graceful HTTP |
//! | [`settings`] | one [`settings::CommonSettings`] from env vars, documented defaults, fail-fast validation |
//! | [`http`] | `/healthz` and `/readyz` every service mounts |
//! | [`outbox`] | the transactional outbox and its single active relay (lease in Redis) |
//! | [`lease`] | a lease in Redis: one holder at a time, taken over when it stops renewing |
//! | [`partition`] | which replica reads which partition of the streams (leases per partition) |
//! | [`transition`] | guarded status transitions of a versioned document, idempotent, with their outbox event, group-committed |
//! | [`batch`] | group commit: one writer task doing every queued job in one round of writes |
//! | [`failpoint`] | test-only crash points (cargo feature `failpoints`) |
//! | [`publisher`] | XADD (never trims) |
//! | [`trim`] | trimming below what every consumer group acknowledged, with the alarm gauge |
//! | [`consumer`] | the consumer-group loop: XREADGROUP, XACK, retries, XAUTOCLAIM, dead letters |
//! | [`dead_letter`] | the atomic move-and-ack script (the entry format is `contract::dead_letter`) |
//! | [`metrics`] | the Prometheus recorder, HTTP metrics by route template |
//! | [`mongo`] | client set-up and the retried multi-document transaction |
//! | [`telemetry`] | tracing: JSON logs on stdout, optional Loki shipping |
//! | [`shutdown`] | one cancellation token cancelled by SIGINT / SIGTERM |
//! | [`runtime`] | `WORKER_THREADS`: the Tokio runtime `main` builds, one worker by default |
//! | [`priority`] | `CPU_NICE`: a service's nice value (default 0), so that asynchronous workers can yield the CPU to the user-facing services on a shared host |
//!
//! # Guarantees of the consumer loop
//!
//! * **At-least-once.** A message is acknowledged (XACK) only after its
//!   handler returned success. Until then it stays in the group's pending
//!   entries list (PEL), whatever happens to the process.
//! * **Bounded retries, counted by Redis.** The attempt number of a message is
//!   its *delivery count* in the PEL, which Redis increments on every
//!   XREADGROUP / XCLAIM / XAUTOCLAIM. A crash therefore cannot reset it, and a
//!   message that crashes the process on every attempt still ends in the dead
//!   letters.
//! * **Fast retries, safe takeover.** A failed message is retried by the same
//!   consumer after an exponential backoff (XCLAIM to itself, which counts as a
//!   delivery). Messages left behind by a consumer that died are taken over by
//!   any live consumer with XAUTOCLAIM once idle for `RECLAIM_MIN_IDLE_MS`.
//! * **Atomic dead-lettering.** After `MAX_ATTEMPTS` failed attempts, or at once
//!   for a message that is not a valid envelope, not an event of its stream
//!   (unknown type, payload that does not fit), or that its handler rejects
//!   as permanently invalid, the message is copied to the `dead-letters` stream
//!   with its full context *and* acknowledged in one Lua script: a crash can
//!   neither lose it nor dead-letter it twice.
//! * **Ordering where it matters.** Within a batch, messages with the same
//!   envelope `key` (the order id) are handled one after another, in stream
//!   order; different keys run concurrently up to `CONSUMER_CONCURRENCY`. A
//!   message that fails and is retried can be overtaken by later messages of
//!   the same key, so handlers must tolerate stale events (the services guard
//!   every state transition).
//! * **Graceful shutdown.** When the shutdown token is cancelled, the loop
//!   stops reading, finishes and acknowledges the batch it holds, and returns.

pub mod backoff;
pub mod batch;
pub mod consumer;
pub mod dead_letter;
pub mod failpoint;
pub mod http;
pub mod lease;
pub mod metrics;
pub mod mongo;
pub mod outbox;
pub mod partition;
pub mod priority;
pub mod publisher;
pub mod runtime;
pub mod service;
pub mod settings;
pub mod shutdown;
pub mod telemetry;
pub mod transition;
pub mod trim;
pub mod writes;
