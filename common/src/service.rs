//! The runtime every service is built on.
//!
//! A service's `run(settings, listener, shutdown)` creates a [`Runtime`],
//! registers its start-up work and its consumer loops, and calls
//! [`Runtime::serve`] with its router. The runtime:
//!
//! * connects lazily to Redis (and MongoDB, for services that use it), so the process starts (and answers
//!   `/healthz`, and `/readyz` with 503) while either is still down;
//! * runs the start-up work (creating indexes, ...) in the background, retried
//!   with backoff until it succeeds, and only then starts the consumer loops;
//! * serves HTTP with `/healthz` and `/readyz` merged in and a request span per
//!   request, until the shutdown token is cancelled; then waits for every
//!   consumer loop and background task to drain.

use std::{future::Future, sync::Arc, time::Duration};

use axum::{Router, extract::MatchedPath, http::Request};
use redis::aio::ConnectionManager;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;
use tracing::{info, info_span, warn};

use crate::{
    consumer::{Consumer, ConsumerConfig, Handler},
    http::{Health, health_routes},
    outbox::{Outbox, OutboxSettings},
    publisher::Publisher,
    redis_conn,
    settings::CommonSettings,
    streams::{Namespace, Stream},
};

/// Why a service could not start at all (bad URLs; not unreachable servers).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The Redis URL is unusable.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The MongoDB URL is unusable.
    #[error("MongoDB: {0}")]
    Mongo(#[from] mongodb::error::Error),
    /// Serving HTTP failed.
    #[error("HTTP server: {0}")]
    Http(#[from] std::io::Error),
}

/// Connections, health, background tasks and shutdown of one service.
pub struct Runtime {
    /// The settings it was built from.
    pub settings: CommonSettings,
    /// Redis client (consumers open their own connections from it).
    pub redis: redis::Client,
    /// Shared Redis connection for ordinary commands.
    pub conn: ConnectionManager,
    /// Readiness state.
    pub health: Arc<Health>,
    /// Publisher for this deployment's streams.
    pub publisher: Publisher,
    /// Every background task. Dropping the runtime (or the future of a
    /// service's `run`) aborts them all, as a killed process would.
    tasks: std::sync::Mutex<JoinSet<()>>,
    /// Gauges refreshed on every scrape of `/metrics`.
    samplers: std::sync::Mutex<Vec<Sampler>>,
    shutdown: CancellationToken,
    initialised: CancellationToken,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("service", &self.settings.service_name)
            .finish_non_exhaustive()
    }
}

type Sampler = Arc<dyn Fn() -> crate::mongo::BoxFuture<'static, ()> + Send + Sync>;

impl Runtime {
    /// Sets up the Redis client (no I/O yet).
    pub fn new(settings: &CommonSettings, shutdown: CancellationToken) -> Result<Self, StartError> {
        let redis = redis_conn::client(&settings.redis_url)?;
        let conn = redis_conn::commands(&redis)?;
        // Before anything records a metric.
        crate::metrics::handle();
        let health = Health::new(&settings.service_name, conn.clone());
        let publisher = Publisher::new(conn.clone(), settings.namespace(), settings.stream_maxlen);
        let dead_letters = settings.namespace().stream(Stream::DeadLetters);
        let c = conn.clone();
        let dead_letter_gauge: Sampler = Arc::new(move || {
            let (mut c, key) = (c.clone(), dead_letters.clone());
            Box::pin(async move {
                if let Ok(n) = redis::cmd("XLEN")
                    .arg(&key)
                    .query_async::<u64>(&mut c)
                    .await
                {
                    #[allow(clippy::cast_precision_loss)]
                    metrics::gauge!("dead_letters").set(n as f64);
                }
            })
        });
        Ok(Self {
            settings: settings.clone(),
            redis,
            conn,
            health,
            publisher,
            tasks: std::sync::Mutex::new(JoinSet::new()),
            samplers: std::sync::Mutex::new(vec![dead_letter_gauge]),
            shutdown,
            initialised: CancellationToken::new(),
        })
    }

    /// Sets up the MongoDB client and makes readiness depend on it.
    pub async fn with_mongo(&self) -> Result<mongodb::Client, StartError> {
        let mongo =
            crate::mongo::connect(&self.settings.mongo_url, &self.settings.service_name).await?;
        self.health
            .watch_mongo(mongo.clone(), &self.settings.mongo_db);
        Ok(mongo)
    }

    /// The key namespace.
    pub fn namespace(&self) -> Namespace {
        self.settings.namespace()
    }

    /// The shutdown token.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs `init` in the background until it succeeds (backoff 200 ms → 5 s),
    /// then marks the service initialised and lets the consumers start.
    pub fn initialise<F, Fut, E>(&self, what: &'static str, mut init: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send,
        E: std::fmt::Display,
    {
        let (shutdown, done, health) = (
            self.shutdown.clone(),
            self.initialised.clone(),
            self.health.clone(),
        );
        self.spawn_task(async move {
            let mut delay = Duration::from_millis(200);
            loop {
                match init().await {
                    Ok(()) => break,
                    Err(e) => warn!(error = %e, "{what} failed; retrying in {delay:?}"),
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            info!("{what} done");
            health.set_initialised();
            done.cancel();
        });
    }

    /// Marks the service initialised without start-up work.
    pub fn no_initialisation(&self) {
        self.health.set_initialised();
        self.initialised.cancel();
    }

    /// A consumer of `group` on `stream`, watched by readiness and started
    /// (after initialisation) by this runtime.
    pub fn consume<H: Handler>(
        &self,
        stream: Stream,
        group: &str,
        handler: H,
    ) -> Result<(), StartError> {
        let consumer = Consumer::new(
            &self.redis,
            ConsumerConfig::new(&self.settings, stream, group),
            handler,
        )?;
        self.health.watch(consumer.status());
        self.sample_group(stream, group);
        let (shutdown, initialised) = (self.shutdown.clone(), self.initialised.clone());
        self.spawn_task(async move {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = initialised.cancelled() => {}
            }
            consumer.run(shutdown).await;
        });
        Ok(())
    }

    /// Refreshes a gauge on every scrape of `/metrics` (bounded to 2 s).
    pub fn sampler<F, Fut>(&self, sample: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let sampler: Sampler = Arc::new(move || Box::pin(sample()));
        self.samplers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(sampler);
    }

    /// `consumer_group_lag` and `consumer_group_pending` of one group.
    fn sample_group(&self, stream: Stream, group: &str) {
        let (conn, key, group) = (
            self.conn.clone(),
            self.namespace().stream(stream),
            group.to_owned(),
        );
        self.sampler(move || {
            let (mut conn, key, group) = (conn.clone(), key.clone(), group.clone());
            async move {
                let Ok(reply) = redis::cmd("XINFO")
                    .arg("GROUPS")
                    .arg(&key)
                    .query_async::<redis::Value>(&mut conn)
                    .await
                else {
                    return;
                };
                for info in crate::stream_entry::array(reply).unwrap_or_default() {
                    let fields = crate::stream_entry::fields_of(info);
                    if fields.get("name").map(String::as_str) != Some(group.as_str()) {
                        continue;
                    }
                    let labels = [
                        ("stream", stream.name().to_owned()),
                        ("group", group.clone()),
                    ];
                    for (field, gauge) in [
                        ("lag", "consumer_group_lag"),
                        ("pending", "consumer_group_pending"),
                    ] {
                        // `lag` is unknown (nil) right after some trims; skip it then.
                        if let Some(v) = fields.get(field).and_then(|v| v.parse::<f64>().ok()) {
                            metrics::gauge!(gauge, &labels).set(v);
                        }
                    }
                }
            }
        });
    }

    /// Runs a background task until shutdown (it gets the token).
    pub fn spawn<F, Fut>(&self, task: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.spawn_task(task(self.shutdown.clone()));
    }

    fn spawn_task(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .spawn(task);
    }

    /// Runs the outbox relay of this service (one active across replicas).
    pub fn relay(&self, outbox: &Outbox, settings: OutboxSettings) {
        let relay = outbox.relay(
            self.conn.clone(),
            self.publisher.clone(),
            &self.settings.consumer_name,
            settings,
        );
        self.spawn(|token| relay.run(token));
        let (outbox, service) = (outbox.clone(), self.settings.service_name.clone());
        self.sampler(move || {
            let (outbox, service) = (outbox.clone(), service.clone());
            async move {
                if let Ok(n) = outbox.backlog().await {
                    #[allow(clippy::cast_precision_loss)]
                    metrics::gauge!("outbox_backlog", "service" => service).set(n as f64);
                }
            }
        });
    }

    /// Runs `sweep` every `every` until shutdown (retention clean-ups).
    pub fn every<F, Fut>(&self, every: Duration, mut sweep: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        self.spawn(move |token| async move {
            loop {
                tokio::select! {
                    () = token.cancelled() => return,
                    () = tokio::time::sleep(every) => sweep().await,
                }
            }
        });
    }

    /// Serves `router` (plus `/healthz`, `/readyz`, `/metrics`) on `listener`
    /// until shutdown, then drains every task.
    pub async fn serve(self, listener: TcpListener, router: Router) -> Result<(), StartError> {
        let samplers = self
            .samplers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let metrics = Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let samplers = samplers.clone();
                async move {
                    let refresh = futures::future::join_all(samplers.iter().map(|s| s()));
                    let _ = tokio::time::timeout(Duration::from_secs(2), refresh).await;
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        crate::metrics::handle().render(),
                    )
                }
            }),
        );
        let app = router
            .merge(health_routes(self.health.clone()))
            .merge(metrics)
            .layer(axum::middleware::from_fn(crate::metrics::track_http))
            .layer(
                TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                    let route = req
                        .extensions()
                        .get::<MatchedPath>()
                        .map_or("unmatched", MatchedPath::as_str);
                    info_span!("http", method = %req.method(), route = %route)
                }),
            );
        info!(addr = %listener.local_addr()?, service = %self.settings.service_name, "listening");
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(self.shutdown.clone().cancelled_owned())
            .await;
        self.shutdown.cancel();
        let mut tasks = std::mem::take(
            &mut *self
                .tasks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        while tasks.join_next().await.is_some() {}
        info!("stopped");
        result.map_err(StartError::Http)
    }
}
