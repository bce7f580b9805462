//! Prometheus metrics: one recorder per process, `/metrics` in text format.
//!
//! Counters and histograms are recorded where things happen (the consumer
//! loop, the publisher, the outbox relay, the HTTP middleware). Gauges that
//! describe state elsewhere (consumer-group lag and pending count, outbox
//! backlog, dead letters, open WebSockets) are *sampled when scraped*, by the
//! samplers each service registers with its [`crate::service::Runtime`].
//!
//! HTTP metrics are labelled with the **route template** (`/api/v1/orders/{id}`),
//! never the raw path, so the label set stays bounded whatever clients send;
//! requests that match no route are labelled `unmatched`.

use std::{sync::OnceLock, time::Instant};

use axum::{
    extract::{MatchedPath, Request},
    middleware::Next,
    response::Response,
};
use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Latency buckets (seconds) of every histogram.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process-wide recorder, installed on first use.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets(&BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let handle = match builder.install_recorder() {
            Ok(h) => h,
            // Someone else installed a recorder first: render our own (empty) one.
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        };
        describe();
        handle
    })
}

fn describe() {
    describe_counter!(
        "http_requests_total",
        "HTTP requests by method, route template and status."
    );
    describe_histogram!(
        "http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency by method, route template and status."
    );
    describe_histogram!(
        "write_batch_size",
        "Jobs per round of a group-commit writer (label writer: order_placements, order_moves, delivery_moves, delivery_creations, timeline_appends, acks)."
    );
    describe_counter!(
        "events_published_total",
        "Events appended to a stream by this process."
    );
    describe_counter!(
        "events_handled_total",
        "Messages handled successfully (outcome done or skipped) per stream and group."
    );
    describe_counter!(
        "events_failed_total",
        "Handler failures (retried, deferred or dead-lettered) per stream and group."
    );
    describe_counter!(
        "events_dead_lettered_total",
        "Messages moved to the dead letters per stream, group and reason."
    );
    describe_counter!(
        "events_reclaimed_total",
        "Messages taken over from idle consumers with XAUTOCLAIM."
    );
    describe_histogram!(
        "handler_duration_seconds",
        Unit::Seconds,
        "Handler latency per stream and group."
    );
    describe_histogram!(
        "stream_wait_seconds",
        Unit::Seconds,
        "Time a new event waited in its stream before the group read it (from the entry id's time; first reads only)."
    );
    describe_gauge!(
        "consumer_group_lag",
        "Entries not yet delivered to the group (XINFO GROUPS lag)."
    );
    describe_gauge!(
        "consumer_group_pending",
        "Entries delivered to the group but not acknowledged."
    );
    describe_gauge!("outbox_backlog", "Outbox entries not yet published.");
    describe_counter!(
        "transaction_retries_total",
        "MongoDB transactions run again after a transient error (mostly write conflicts)."
    );
    describe_counter!(
        "order_placement_rereads_total",
        "Batches of orders decided again on a read because a dish changed since the writer last saw it (order-svc)."
    );
    describe_counter!(
        "outbox_published_total",
        "Outbox entries published by this process' relay."
    );
    describe_counter!(
        "publish_unreplicated_total",
        "Publishes that fewer than REDIS_MIN_REPLICAS_ACKED replicas acknowledged in time (the outbox keeps those events and publishes them again)."
    );
    describe_gauge!(
        "outbox_relay_active",
        "1 while this process holds its service's outbox lease."
    );
    describe_gauge!(
        "partitions_held",
        "Stream partitions whose lease this process holds, by consumer group (with STREAM_PARTITIONS above 1)."
    );
    describe_gauge!(
        "dead_letters",
        "Entries in the dead-letter stream (all its partitions)."
    );
    describe_gauge!(
        "stream_entries",
        "Entries in the stream (all its partitions) after its last trim: what some consumer group has not read and acknowledged yet (alarm above STREAM_ALARM_ENTRIES in a partition)."
    );
    describe_counter!(
        "stream_trimmed_total",
        "Entries trimmed because every group of the stream was done with them."
    );
    describe_gauge!(
        "websocket_sessions",
        "Open tracker WebSockets on this replica."
    );
    describe_gauge!(
        "simulator_timers_pending",
        "Simulated steps waiting for their time."
    );
}

/// Axum middleware recording `http_requests_total` and
/// `http_request_duration_seconds`.
pub async fn track_http(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    let labels = [("method", method), ("route", route), ("status", status)];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels).record(started.elapsed());
    response
}
