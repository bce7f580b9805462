//! The runtime every service is built on.
//!
//! A service's `run(settings, listener, shutdown)` creates a [`Runtime`],
//! declares what it needs (start-up work, consumer loops, the outbox relay,
//! periodic sweeps, metric samplers, background tasks), and hands it its
//! router with [`Runtime::serve`]. Declaring starts nothing: everything is
//! started by `serve`, in one place, so a runtime cannot be left
//! half-configured (start-up work that forgot to release the consumers, or
//! consumers started before the indexes exist). `serve`:
//!
//! * connects lazily to Redis (and MongoDB, for services that use it), so the
//!   process starts (and answers `/healthz`, and `/readyz` with 503) while
//!   either is still down;
//! * runs the start-up work in the background, each step retried with
//!   [`Backoff`] until it succeeds, and only then marks the service
//!   initialised and starts the outbox relay and the consumer loops. The
//!   first step is always the check of the partition count
//!   ([`crate::partition::check_recorded`]): a service configured with
//!   another `STREAM_PARTITIONS` than its deployment's stays there, not
//!   ready, publishing and consuming nothing;
//! * serves HTTP with `/healthz`, `/readyz` and `/metrics` merged in and a
//!   request span per request, until the shutdown token is cancelled;
//! * then drains: in-flight requests, consumer batches and background tasks
//!   get `SHUTDOWN_TIMEOUT_MS` (10 s) in all to finish; what is still running
//!   after that is abandoned (what a consumer held stays pending and is taken
//!   over, an unfinished transaction rolls back).
//!
//! Every `state` argument is passed by value and cloned for each run, so a
//! service hands over its store once instead of cloning it into closures.

use std::{
    future::{Future, IntoFuture},
    sync::Arc,
    time::Duration,
};

use axum::{Router, extract::MatchedPath, http::Request};
use contract::redis::Conn;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;
use tracing::{error, info, info_span, warn};

use crate::{
    backoff::Backoff,
    consumer::{Consumer, ConsumerConfig, Handler, LoopStatus},
    http::{Health, health_routes},
    mongo::BoxFuture,
    outbox::Outbox,
    partition::{Assignment, Worker},
    publisher::Publisher,
    settings::CommonSettings,
    trim::Trimmer,
};
use contract::{
    events::StreamEvent,
    redis as wire,
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

/// The partition workers of one consumer group, and the readiness
/// aggregates of its streams.
struct GroupWork {
    group: String,
    workers: Vec<Worker>,
    statuses: Vec<LoopStatus>,
}

/// A task started by [`Runtime::serve`]; it gets the shutdown token.
type Task = Box<dyn FnOnce(CancellationToken) -> BoxFuture<'static, ()> + Send + Sync>;
/// One start-up step: run again until it returns `Ok`.
type Step = Box<dyn FnMut() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;
/// A gauge refreshed on every scrape.
type Sampler = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// Connections, health, background tasks and shutdown of one service.
pub struct Runtime {
    /// The settings it was built from.
    pub settings: CommonSettings,
    /// Redis client (consumers open their own connections from it).
    pub redis: contract::redis::Client,
    /// Shared Redis connection for ordinary commands.
    pub conn: Conn,
    /// Readiness state.
    pub health: Arc<Health>,
    /// Publisher for this deployment's streams.
    pub publisher: Publisher,
    /// Start-up work, in order; the consumers wait for all of it.
    startup: Vec<(&'static str, Step)>,
    /// The partition workers of each consumer group (its consumer loops,
    /// and any other per-partition work), started once start-up is done.
    groups: Vec<GroupWork>,
    /// The streams those loops read (and this service trims).
    consumed: Vec<Stream>,
    /// Other background tasks, started at once.
    tasks: Vec<Task>,
    /// Background tasks that publish (the outbox relay), started once
    /// start-up is done: not before the partition count is checked.
    publishers: Vec<Task>,
    /// Gauges refreshed on every scrape of `/metrics`.
    samplers: Vec<Sampler>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("service", &self.settings.service_name)
            .finish_non_exhaustive()
    }
}

/// First and longest wait between two runs of a failing start-up step.
const STARTUP_BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(5));
/// Longest a metrics scrape waits for its samplers.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(2);

impl Runtime {
    /// Sets up the Redis client (no I/O yet).
    pub fn new(settings: &CommonSettings, shutdown: CancellationToken) -> Result<Self, StartError> {
        let redis = wire::client(settings.redis_url.expose())?;
        let conn = wire::commands(&redis)?;
        // Before anything records a metric.
        crate::metrics::handle();
        let health = Health::new(&settings.service_name, conn.clone());
        let publisher = Publisher::new(conn.clone(), settings.namespace())
            .with_replication(settings.replication);
        let mut rt = Self {
            settings: settings.clone(),
            redis,
            conn: conn.clone(),
            health,
            publisher,
            startup: Vec::new(),
            groups: Vec::new(),
            consumed: Vec::new(),
            tasks: Vec::new(),
            publishers: Vec::new(),
            samplers: Vec::new(),
            shutdown,
        };
        let dead_letters = settings.namespace().stream_keys(Stream::DeadLetters);
        rt.sampler((conn, dead_letters), |(mut conn, keys)| async move {
            let mut total = 0_u64;
            for key in &keys {
                match redis::cmd("XLEN")
                    .arg(key)
                    .query_async::<u64>(&mut conn)
                    .await
                {
                    Ok(n) => total += n,
                    Err(_) => return,
                }
            }
            #[allow(clippy::cast_precision_loss)]
            metrics::gauge!("dead_letters").set(total as f64);
        });
        Ok(rt)
    }

    /// Sets up the MongoDB client and makes readiness depend on it.
    pub async fn mongo(&self) -> Result<mongodb::Client, StartError> {
        let mongo = crate::mongo::connect(
            self.settings.mongo_url.expose(),
            &self.settings.service_name,
        )
        .await?;
        self.health
            .watch_mongo(mongo.clone(), &self.settings.mongo_db);
        Ok(mongo)
    }

    /// The key namespace.
    pub fn namespace(&self) -> Namespace {
        self.settings.namespace()
    }

    /// Start-up work (creating indexes, ...): run by [`Runtime::serve`] in the
    /// background, retried with backoff until it succeeds; the consumer loops
    /// start after every step succeeded.
    pub fn startup<S, F, Fut, E>(&mut self, what: &'static str, state: S, init: F)
    where
        S: Clone + Send + Sync + 'static,
        F: Fn(S) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        self.startup.push((
            what,
            Box::new(move || {
                let run = init(state.clone());
                Box::pin(async move { run.await.map_err(|e| e.to_string()) })
            }),
        ));
    }

    /// A consumer of `group` on the stream of `E` (its events decoded into
    /// `E` for `handler`), one per partition this replica reads (see
    /// [`crate::partition`]), watched by readiness and started (after
    /// start-up) by [`Runtime::serve`].
    pub fn consume<E: StreamEvent, H: Handler<E> + Clone>(
        &mut self,
        group: &str,
        handler: H,
    ) -> Result<(), StartError> {
        let stream = E::STREAM;
        // A bad configuration fails here, not in every partition's worker.
        drop(Consumer::<E, H>::new(
            &self.redis,
            ConsumerConfig::new(&self.settings, stream, group, 0),
            handler.clone(),
        )?);
        let status = LoopStatus::aggregate(stream.name(), group);
        self.health.watch(status.clone());
        self.sample_group(stream, group);
        if !self.consumed.contains(&stream) {
            self.consumed.push(stream);
        }
        let (client, settings, name) =
            (self.redis.clone(), self.settings.clone(), group.to_owned());
        self.group(group).statuses.push(status.clone());
        self.per_partition(group, move |p, token| {
            let consumer = Consumer::new(
                &client,
                ConsumerConfig::new(&settings, stream, &name, p),
                handler.clone(),
            );
            // Held by the stream's readiness from now (not from the task's
            // first poll), so readiness never sees the partition without it.
            let running = consumer.map(|c| {
                let part = c.status();
                status.add(part.clone());
                (c, part)
            });
            let status = status.clone();
            async move {
                match running {
                    Ok((consumer, part)) => {
                        consumer.run(token).await;
                        status.remove(&part);
                    }
                    Err(e) => error!(error = %e, "could not start a consumer"),
                }
            }
        });
        Ok(())
    }

    /// Work `group` runs for every partition this replica reads (started
    /// with the partition, its token cancelled when the partition goes to
    /// another replica or at shutdown): the simulator's timers, say.
    pub fn per_partition<F, Fut>(&mut self, group: &str, work: F)
    where
        F: Fn(u16, CancellationToken) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.group(group)
            .workers
            .push(Arc::new(move |p, token| Box::pin(work(p, token))));
    }

    fn group(&mut self, group: &str) -> &mut GroupWork {
        let i = match self.groups.iter().position(|g| g.group == group) {
            Some(i) => i,
            None => {
                self.groups.push(GroupWork {
                    group: group.to_owned(),
                    workers: Vec::new(),
                    statuses: Vec::new(),
                });
                self.groups.len() - 1
            }
        };
        &mut self.groups[i]
    }

    /// Refreshes gauges on every scrape of `/metrics` (bounded to 2 s).
    pub fn sampler<S, F, Fut>(&mut self, state: S, sample: F)
    where
        S: Clone + Send + Sync + 'static,
        F: Fn(S) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.samplers
            .push(Arc::new(move || Box::pin(sample(state.clone()))));
    }

    /// `consumer_group_lag` and `consumer_group_pending` of one group,
    /// summed over the stream's partitions.
    fn sample_group(&mut self, stream: Stream, group: &str) {
        let state = (
            self.conn.clone(),
            self.namespace().stream_keys(stream),
            group.to_owned(),
        );
        self.sampler(state, move |(mut conn, keys, group)| async move {
            let mut sums = [
                ("lag", "consumer_group_lag", None),
                ("pending", "consumer_group_pending", None),
            ];
            for key in &keys {
                let Ok(reply) = redis::cmd("XINFO")
                    .arg("GROUPS")
                    .arg(key)
                    .query_async::<redis::Value>(&mut conn)
                    .await
                else {
                    continue;
                };
                let groups = contract::redis::array(reply).unwrap_or_default();
                let Some(fields) = groups
                    .into_iter()
                    .map(contract::redis::fields_of)
                    .find(|f| f.get("name") == Some(&group))
                else {
                    continue;
                };
                for (field, _, sum) in &mut sums {
                    // `lag` is unknown (nil) right after some trims; skip it then.
                    if let Some(v) = fields.get(*field).and_then(|v| v.parse::<f64>().ok()) {
                        *sum = Some(sum.unwrap_or(0.0) + v);
                    }
                }
            }
            let labels = [("stream", stream.name().to_owned()), ("group", group)];
            for (_, gauge, sum) in sums {
                if let Some(v) = sum {
                    metrics::gauge!(gauge, &labels).set(v);
                }
            }
        });
    }

    /// A background task, started by [`Runtime::serve`]; it gets the shutdown
    /// token and should return soon after it is cancelled.
    pub fn spawn<F, Fut>(&mut self, task: F)
    where
        F: FnOnce(CancellationToken) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.tasks
            .push(Box::new(move |token| Box::pin(task(token))));
    }

    /// The outbox relay of this service (one active across replicas), and
    /// the `outbox_backlog` gauge.
    pub fn relay(&mut self, outbox: &Outbox) {
        let relay = outbox.relay(
            self.redis.clone(),
            self.conn.clone(),
            self.publisher.clone(),
            &self.settings.consumer_name,
            self.settings.outbox,
        );
        self.publishers
            .push(Box::new(|token| Box::pin(relay.run(token))));
        let state = (outbox.clone(), self.settings.service_name.clone());
        self.sampler(state, |(outbox, service)| async move {
            if let Ok(n) = outbox.backlog().await {
                #[allow(clippy::cast_precision_loss)]
                metrics::gauge!("outbox_backlog", "service" => service).set(n as f64);
            }
        });
    }

    /// Runs `sweep(state)` every `period` until shutdown (retention clean-ups).
    pub fn every<S, F, Fut>(&mut self, period: Duration, state: S, sweep: F)
    where
        S: Clone + Send + Sync + 'static,
        F: Fn(S) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.spawn(move |token| async move {
            loop {
                tokio::select! {
                    () = token.cancelled() => return,
                    () = tokio::time::sleep(period) => sweep(state.clone()).await,
                }
            }
        });
    }

    /// Runs the start-up steps (each until it succeeds), marks the service
    /// initialised, then starts the publishers and each group's partitions.
    async fn start_up(
        mut steps: Vec<(&'static str, Step)>,
        publishers: Vec<Task>,
        groups: Vec<Assignment>,
        health: Arc<Health>,
        shutdown: CancellationToken,
    ) {
        for (what, step) in &mut steps {
            let mut backoff = Backoff::new(STARTUP_BACKOFF.0, STARTUP_BACKOFF.1);
            loop {
                match step().await {
                    Ok(()) => break,
                    Err(e) => warn!(error = %e, "{what} failed; retrying"),
                }
                if !backoff.sleep(&shutdown).await {
                    return;
                }
            }
            info!("{what} done");
        }
        health.set_initialised();
        let mut loops = JoinSet::new();
        for task in publishers {
            loops.spawn(task(shutdown.clone()));
        }
        for group in groups {
            loops.spawn(group.run(shutdown.clone()));
        }
        while loops.join_next().await.is_some() {}
    }

    /// Starts everything declared, serves `router` (plus `/healthz`,
    /// `/readyz`, `/metrics`) on `listener` until shutdown, then drains
    /// within `SHUTDOWN_TIMEOUT_MS` (see the module docs).
    pub async fn serve(mut self, listener: TcpListener, router: Router) -> Result<(), StartError> {
        // Each service trims the streams it reads, below what all of their
        // groups are done with (safe without a lease: see crate::trim).
        if !self.consumed.is_empty() {
            let trimmer = Trimmer::new(
                self.conn.clone(),
                &self.settings.namespace(),
                &self.consumed,
                self.settings.trim,
            );
            self.every(
                trimmer.interval(),
                trimmer,
                |t| async move { t.round().await },
            );
        }
        let groups = self
            .groups
            .drain(..)
            .map(|g| {
                Assignment::new(
                    self.conn.clone(),
                    &self.settings.namespace(),
                    &g.group,
                    &self.settings.consumer_name,
                    self.settings.partition_lease,
                    g.workers,
                    g.statuses,
                )
            })
            .collect();
        // First of all: the partition count is the deployment's (nothing
        // publishes or consumes before this passes).
        let (conn, prefix, partitions) = (
            self.conn.clone(),
            self.settings.stream_prefix.clone(),
            self.settings.stream_partitions,
        );
        self.startup.insert(
            0,
            (
                "checking the stream partitions",
                Box::new(move || {
                    let (mut conn, prefix) = (conn.clone(), prefix.clone());
                    Box::pin(async move {
                        crate::partition::check_recorded(&mut conn, &prefix, partitions).await
                    })
                }),
            ),
        );
        let Self {
            settings,
            health,
            startup,
            publishers,
            tasks: background,
            samplers,
            shutdown,
            ..
        } = self;
        let samplers: Arc<[Sampler]> = samplers.into();
        let metrics = Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let samplers = samplers.clone();
                async move {
                    let refresh = futures::future::join_all(samplers.iter().map(|s| s()));
                    let _ = tokio::time::timeout(SAMPLE_TIMEOUT, refresh).await;
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
            .merge(health_routes(health.clone()))
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
        // Every task of the service. Dropping this set (or the future of a
        // service's `run`) aborts them all, as a killed process would.
        let mut tasks = JoinSet::new();
        tasks.spawn(Self::start_up(
            startup,
            publishers,
            groups,
            health,
            shutdown.clone(),
        ));
        for task in background {
            tasks.spawn(task(shutdown.clone()));
        }
        info!(addr = %listener.local_addr()?, service = %settings.service_name, "listening");
        let drain = settings.shutdown_timeout;
        // Handlers and layers see the peer address (`ConnectInfo`): rate
        // limits and session caps are per client.
        let server = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .into_future();
        tokio::pin!(server);
        // From the moment shutdown starts, requests and then background tasks
        // have `drain` in all to finish.
        let mut deadline: Option<tokio::time::Instant> = None;
        let result = loop {
            tokio::select! {
                r = &mut server => break r,
                () = shutdown.cancelled(), if deadline.is_none() => {
                    deadline = Some(tokio::time::Instant::now() + drain);
                }
                () = sleep_until_some(deadline) => {
                    warn!(?drain, "requests still open at the shutdown timeout; closing them");
                    break Ok(());
                }
            }
        };
        shutdown.cancel();
        let deadline = deadline.unwrap_or_else(|| tokio::time::Instant::now() + drain);
        let drained = tokio::time::timeout_at(deadline, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                ?drain,
                running = tasks.len(),
                "background tasks still running at the shutdown timeout; abandoning them"
            );
            tasks.shutdown().await;
        }
        info!("stopped");
        result.map_err(StartError::Http)
    }
}

/// Sleeps until `deadline`, or forever while there is none.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
