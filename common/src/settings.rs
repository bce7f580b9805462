//! Settings shared by every service, read once from environment variables.
//!
//! Every variable has a documented default, so a service starts with no
//! configuration at all against a local Redis and MongoDB. Invalid values stop
//! start-up with one message that lists *every* bad variable, not just the
//! first.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `SERVICE_NAME` | the binary's name | `source` of published events, `service` label in logs |
//! | `APP_ENV` | `local` | `env` label in logs |
//! | `REDIS_URL` | `redis://127.0.0.1:16379` | Redis holding the streams (the default is where `make run` / `scripts/infra.sh up` start it); a comma-separated list of node URLs is a Redis Cluster (`redis://h1:p1,redis://h2:p2,...`; with one partition the key prefix then becomes one hash tag, with several each partition has its own, see `contract::streams`) |
//! | `MONGO_URL` | `mongodb://127.0.0.1:37017/?directConnection=true` | MongoDB replica set (transactions need one; the default is `make run`'s) |
//! | `MONGO_DB` | `foodchain` | database name |
//! | `REDIS_MIN_REPLICAS_ACKED` | `1` on a cluster, `0` on one Redis | the outbox relay's publish waits (`WAIT`) until this many replicas have its events, and keeps them for another try if fewer did (docs/delivery-guarantees.md) |
//! | `REDIS_WAIT_TIMEOUT_MS` | `1000` | longest such wait |
//! | `STREAM_PREFIX` | empty | prefix of every Redis key (isolates deployments and tests sharing a Redis) |
//! | `STREAM_PARTITIONS` | `1` | each stream is this many Redis keys, an event going to the partition of its order id (1–1024; fixed for the life of the data: every service, `dlq` and `chaos` must use the same, and a service with another count than the one recorded in Redis does not start; docs/scaling.md) |
//! | `PARTITION_LEASE_MS` | `5000` | with several partitions, each replica of a service reads the partitions whose lease it holds (about `P / replicas` each); a dead replica's partitions move to the survivors within this |
//! | `STREAM_TRIM_INTERVAL_MS` | `5000` | how often each service trims the streams it consumes below what every consumer group of them has acknowledged (never an unread entry; see `common::trim`) |
//! | `STREAM_ALARM_ENTRIES` | `100000` | a stream holding more entries than this after its trim logs a warning naming the group holding it back (gauge `stream_entries`) |
//! | `STREAM_MAXLEN` | retired | refused at start-up: it dropped entries no group had read (docs/scaling.md) |
//! | `CONSUMER_NAME` | `<hostname>-<random>` | this process' consumer name inside each group |
//! | `CONSUMER_BATCH_SIZE` | `64` | XREADGROUP COUNT |
//! | `CONSUMER_BLOCK_MS` | `1000` | XREADGROUP BLOCK; also bounds how long shutdown waits for a read |
//! | `CONSUMER_CONCURRENCY` | `16` | handlers running at once (different ordering keys) |
//! | `HANDLER_TIMEOUT_MS` | `2500` | a handler running longer is abandoned and its message looked at again later, without using up an attempt (bounded by `CONSUMER_MAX_DEFER_MS`); must stay below `RECLAIM_MIN_IDLE_MS` |
//! | `MAX_ATTEMPTS` | `5` | attempts before a message is dead-lettered |
//! | `RETRY_BACKOFF_MS` | `200` | first retry delay; doubles per attempt, capped at half the min-idle |
//! | `RECLAIM_MIN_IDLE_MS` | `5000` | a pending message idle this long is taken over (XAUTOCLAIM) |
//! | `RECLAIM_INTERVAL_MS` | `1000` | how often each consumer looks for such messages |
//! | `CONSUMER_MAX_DEFER_MS` | `300000` | how long a message may wait for an earlier event (deferral) before it is dead-lettered; keep it well above MongoDB's `transactionLifetimeLimitSeconds` |
//! | `OUTBOX_POLL_MS` | `250` | longest sleep of the outbox relay when nothing wakes it |
//! | `OUTBOX_BATCH` | `500` | events published per relay round (whole commits, so a round may go over by one commit) |
//! | `OUTBOX_LEASE_MS` | `5000` | relay lease TTL: a dead relay is replaced within this |
//! | `OUTBOX_RETENTION_SECS` | `0` | keep published outbox entries this long (marked published); 0 deletes them once published |
//! | `WORKER_THREADS` | `1` | Tokio worker threads of the process; `0` is one per core (`common::runtime`: on a shared host one is faster; scale out with replicas) |
//! | `SHUTDOWN_TIMEOUT_MS` | `10000` | on SIGTERM, how long in-flight requests, consumer batches and background tasks get to finish before they are abandoned (keep it below the orchestrator's grace period: 30 s in Kubernetes) |
//! | `LOKI_URL` | unset | when set, logs are also pushed to this Loki |
//! | `LOG_FORMAT` | `json` | `json` or `pretty` (stdout) |
//! | `RUST_LOG` | `info` | log filter (tracing-subscriber `EnvFilter` syntax) |

use std::{collections::HashMap, fmt::Display, str::FromStr, time::Duration};

use url::Url;

/// How often retention sweeps run: published outbox entries (when kept) and
/// idempotency keys older than their retention are deleted this often.
/// Retentions are hours to days, so a minute between sweeps keeps each
/// sweep small without mattering to anyone.
pub const RETENTION_SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Where `make run` (`scripts/infra.sh up`) starts Redis: every binary of the
/// workspace (services, `dlq`, `chaos check`) finds it with no configuration.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:16379";
/// Where `make run` starts MongoDB.
pub const DEFAULT_MONGO_URL: &str = "mongodb://127.0.0.1:37017/?directConnection=true";

/// A secret setting (a token, a password): shown as `***` by `Debug` and
/// `Display`, so that printing a settings struct or logging it never shows
/// it; [`Secret::expose`] is the one way to read it.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "***" })
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// A connection URL that may carry credentials (`redis://user:pass@host`,
/// `mongodb://user:pass@host`): `Debug` and `Display` show it with the
/// password replaced by `***`; [`SecretUrl::expose`] gives the real one.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL with its credentials, to connect with.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL as it may be shown: password masked. A comma-separated list
    /// of URLs (a Redis Cluster's nodes) has each one masked.
    pub fn redacted(&self) -> String {
        fn one(raw: &str) -> Option<String> {
            let mut url = Url::parse(raw).ok()?;
            if url.password().is_some() {
                let _ = url.set_password(Some("***"));
                return Some(url.to_string());
            }
            Some(raw.to_owned())
        }
        one(&self.0)
            .or_else(|| {
                let parts: Option<Vec<String>> = self.0.split(',').map(one).collect();
                parts.map(|p| p.join(","))
            })
            .unwrap_or_else(|| "<unparsable URL>".to_owned())
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl std::fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// A secret from `<KEY>` or, for Kubernetes Secrets mounted as files, from the
/// file named by `<KEY>_FILE` (trimmed). Setting both is an error.
pub fn secret(env: &mut Env, key: &str) -> Option<Secret> {
    let file_key = format!("{key}_FILE");
    match (env.raw(key), env.raw(&file_key)) {
        (Some(_), Some(_)) => {
            env.check(false, format!("set {key} or {file_key}, not both"));
            None
        }
        (Some(v), None) => Some(Secret::new(v.trim())),
        (None, Some(path)) => match std::fs::read_to_string(&path) {
            Ok(v) if !v.trim().is_empty() => Some(Secret::new(v.trim())),
            Ok(_) => {
                env.check(false, format!("{file_key}={path:?}: the file is empty"));
                None
            }
            Err(e) => {
                env.check(false, format!("{file_key}={path:?}: {e}"));
                None
            }
        },
        (None, None) => None,
    }
}

/// Settings of a service that browsers and other clients reach directly.
#[derive(Debug, Clone, Default)]
pub struct EdgeSettings {
    /// Origins allowed to call cross-origin (`CORS_ALLOWED_ORIGINS`); none:
    /// same-origin only.
    pub cors_allowed_origins: Vec<String>,
    /// Take the client address from `X-Forwarded-For` (`TRUST_FORWARDED_FOR`):
    /// only behind a proxy that sets it (an Ingress), since a client can.
    pub trust_forwarded_for: bool,
}

impl EdgeSettings {
    /// Reads `CORS_ALLOWED_ORIGINS` and `TRUST_FORWARDED_FOR`.
    pub fn from_env(env: &mut Env) -> Self {
        let origins: Vec<String> = env
            .string("CORS_ALLOWED_ORIGINS", "")
            .split(',')
            .map(|o| o.trim().trim_end_matches('/').to_owned())
            .filter(|o| !o.is_empty())
            .collect();
        for o in &origins {
            let ok = o == "*"
                || Url::parse(o).is_ok_and(|u| {
                    matches!(u.scheme(), "http" | "https") && u.host().is_some() && u.path() == "/"
                });
            env.check(
                ok,
                format!(
                    "CORS_ALLOWED_ORIGINS: `{o}` is not an origin (scheme://host[:port]) or `*`"
                ),
            );
        }
        Self {
            cors_allowed_origins: origins,
            trust_forwarded_for: env.parse("TRUST_FORWARDED_FOR", false),
        }
    }
}

/// Why settings could not be loaded: every offending variable, one per line.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct SettingsError(pub Vec<String>);

type Lookup = dyn Fn(&str) -> Option<String> + Send + Sync;

/// Typed reads from a key/value source that remember every failure.
///
/// Production code reads the process environment ([`Env::from_process`]);
/// tests pass a map ([`Env::from_map`]) instead of mutating global state.
pub struct Env {
    lookup: Box<Lookup>,
    errors: Vec<String>,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env")
            .field("errors", &self.errors)
            .finish_non_exhaustive()
    }
}

impl Env {
    /// Reads the process environment. Empty values count as unset.
    pub fn from_process() -> Self {
        Self {
            lookup: Box::new(|key| std::env::var(key).ok().filter(|v| !v.is_empty())),
            errors: Vec::new(),
        }
    }

    /// The names of every variable `read` asks for (with no environment at
    /// all, so with every default): what a binary's `--list-env` prints, and
    /// what deployment checks compare their `env:` lists against.
    pub fn names_read<T>(read: impl FnOnce(Env) -> T) -> Vec<String> {
        let asked = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
        let record = asked.clone();
        let env = Self {
            lookup: Box::new(move |key| {
                record
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(key.to_owned());
                None
            }),
            errors: Vec::new(),
        };
        let _ = read(env);
        asked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// With `--list-env` among the process arguments: prints the name of every
    /// environment variable `read` takes, one per line, and exits.
    pub fn list_if_asked<T>(read: impl FnOnce(Env) -> T) {
        if std::env::args().any(|a| a == "--list-env") {
            for name in Self::names_read(read) {
                println!("{name}");
            }
            std::process::exit(0);
        }
    }

    /// Reads from a map (tests, embedding).
    pub fn from_map<K: Into<String>, V: Into<String>>(
        map: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        let map: HashMap<String, String> =
            map.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        Self {
            lookup: Box::new(move |key| map.get(key).cloned()),
            errors: Vec::new(),
        }
    }

    /// The raw value, if set.
    pub fn raw(&self, key: &str) -> Option<String> {
        (self.lookup)(key)
    }

    /// A string with a default.
    pub fn string(&mut self, key: &str, default: &str) -> String {
        self.raw(key).unwrap_or_else(|| default.to_owned())
    }

    /// A parsed value with a default; an unparsable value is recorded as an error.
    pub fn parse<T>(&mut self, key: &str, default: T) -> T
    where
        T: FromStr,
        T::Err: Display,
    {
        match self.raw(key) {
            None => default,
            Some(raw) => match raw.trim().parse() {
                Ok(v) => v,
                Err(e) => {
                    self.errors.push(format!("{key}={raw:?}: {e}"));
                    default
                }
            },
        }
    }

    /// An optional parsed value.
    pub fn optional<T>(&mut self, key: &str) -> Option<T>
    where
        T: FromStr,
        T::Err: Display,
    {
        let raw = self.raw(key)?;
        match raw.trim().parse() {
            Ok(v) => Some(v),
            Err(e) => {
                self.errors.push(format!("{key}={raw:?}: {e}"));
                None
            }
        }
    }

    /// A duration given in milliseconds.
    pub fn millis(&mut self, key: &str, default_ms: u64) -> Duration {
        Duration::from_millis(self.parse(key, default_ms))
    }

    /// Records an error unless `ok` holds.
    pub fn check(&mut self, ok: bool, message: impl Into<String>) {
        if !ok {
            self.errors.push(message.into());
        }
    }

    /// Ends reading: `Err` with every recorded problem, if any.
    pub fn finish(self) -> Result<(), SettingsError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(SettingsError(self.errors))
        }
    }
}

/// How log lines are written to stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (the default: what log shippers expect).
    Json,
    /// Human-readable, for a terminal.
    Pretty,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "json" => Ok(Self::Json),
            "pretty" | "text" => Ok(Self::Pretty),
            other => Err(format!("expected `json` or `pretty`, got `{other}`")),
        }
    }
}

/// Tuning of the consumer-group loop (see [`crate::consumer`]).
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// Messages fetched per XREADGROUP.
    pub batch_size: usize,
    /// How long one XREADGROUP blocks waiting for messages; also the longest a
    /// shutdown waits for a read in progress.
    pub block: Duration,
    /// Handlers running at once within a batch (distinct ordering keys only).
    pub concurrency: usize,
    /// A handler still running after this long counts as failed.
    pub handler_timeout: Duration,
    /// Attempts before a message goes to the dead letters.
    pub max_attempts: u32,
    /// Delay before the first retry of a failed message; doubles per attempt.
    pub retry_backoff: Duration,
    /// Idle time after which any consumer may take over a pending message.
    pub reclaim_min_idle: Duration,
    /// Period of the XAUTOCLAIM scan.
    pub reclaim_interval: Duration,
    /// Longest a message may be deferred (by its age in the stream).
    pub max_defer: Duration,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        Self {
            batch_size: 64,
            block: Duration::from_millis(1000),
            concurrency: 16,
            handler_timeout: Duration::from_millis(2500),
            max_attempts: 5,
            retry_backoff: Duration::from_millis(200),
            reclaim_min_idle: Duration::from_millis(5000),
            reclaim_interval: Duration::from_millis(1000),
            max_defer: Duration::from_secs(300),
        }
    }
}

impl ConsumerSettings {
    /// Reads the `CONSUMER_*`, `MAX_ATTEMPTS`, `RETRY_*` and `RECLAIM_*` variables.
    pub fn from_env(env: &mut Env) -> Self {
        let d = Self::default();
        let s = Self {
            batch_size: env.parse("CONSUMER_BATCH_SIZE", d.batch_size),
            block: env.millis("CONSUMER_BLOCK_MS", millis(d.block)),
            concurrency: env.parse("CONSUMER_CONCURRENCY", d.concurrency),
            handler_timeout: env.millis("HANDLER_TIMEOUT_MS", millis(d.handler_timeout)),
            max_attempts: env.parse("MAX_ATTEMPTS", d.max_attempts),
            retry_backoff: env.millis("RETRY_BACKOFF_MS", millis(d.retry_backoff)),
            reclaim_min_idle: env.millis("RECLAIM_MIN_IDLE_MS", millis(d.reclaim_min_idle)),
            reclaim_interval: env.millis("RECLAIM_INTERVAL_MS", millis(d.reclaim_interval)),
            max_defer: env.millis("CONSUMER_MAX_DEFER_MS", millis(d.max_defer)),
        };
        env.check(s.batch_size >= 1, "CONSUMER_BATCH_SIZE must be at least 1");
        env.check(
            s.concurrency >= 1,
            "CONSUMER_CONCURRENCY must be at least 1",
        );
        env.check(s.max_attempts >= 1, "MAX_ATTEMPTS must be at least 1");
        env.check(
            !s.block.is_zero(),
            "CONSUMER_BLOCK_MS must be at least 1 (0 blocks forever)",
        );
        env.check(
            !s.reclaim_interval.is_zero(),
            "RECLAIM_INTERVAL_MS must be at least 1",
        );
        env.check(
            s.handler_timeout < s.reclaim_min_idle,
            "HANDLER_TIMEOUT_MS must be below RECLAIM_MIN_IDLE_MS, or a slow handler's message \
             would be taken over while it still runs",
        );
        s
    }
}

/// A duration in whole milliseconds (for defaults of [`Env::millis`]).
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Settings every service reads.
#[derive(Debug, Clone)]
pub struct CommonSettings {
    /// Name of this service: the `source` of its events and a log label.
    pub service_name: String,
    /// Deployment environment (`local`, `staging`, ...), a log label.
    pub app_env: String,
    /// Redis holding the streams (may carry a user and password; redacted
    /// when printed).
    pub redis_url: SecretUrl,
    /// MongoDB connection string; must reach a replica set (transactions).
    /// May carry credentials; redacted when printed.
    pub mongo_url: SecretUrl,
    /// Database name.
    pub mongo_db: String,
    /// Prefix of every Redis key this deployment uses.
    pub stream_prefix: String,
    /// Partitions of every stream (`STREAM_PARTITIONS`).
    pub stream_partitions: u16,
    /// TTL of a replica's lease on a partition (`PARTITION_LEASE_MS`).
    pub partition_lease: Duration,
    /// Replicas that must acknowledge a publish (`REDIS_MIN_REPLICAS_ACKED`,
    /// `REDIS_WAIT_TIMEOUT_MS`).
    pub replication: crate::publisher::Replication,
    /// Stream trimming (below what every group is done with).
    pub trim: crate::trim::TrimSettings,
    /// This process' consumer name in each group; unique per process.
    pub consumer_name: String,
    /// Consumer-loop tuning.
    pub consumer: ConsumerSettings,
    /// Outbox relay tuning.
    pub outbox: crate::outbox::OutboxSettings,
    /// Tokio worker threads of the process (`WORKER_THREADS`, see
    /// [`crate::runtime`]); `main` builds the runtime with them.
    pub worker_threads: usize,
    /// How long a shutdown waits for in-flight work.
    pub shutdown_timeout: Duration,
    /// Loki base URL; logs are shipped there when set.
    pub loki_url: Option<Url>,
    /// Stdout log format.
    pub log_format: LogFormat,
    /// Log filter directive.
    pub log_filter: String,
}

impl CommonSettings {
    /// Reads the common variables; `service_name` is the default of `SERVICE_NAME`.
    pub fn from_env(env: &mut Env, service_name: &str) -> Self {
        let redis_url = env.string("REDIS_URL", DEFAULT_REDIS_URL);
        // One URL, or a Redis Cluster's nodes as a comma-separated list.
        for url in redis_url.split(',') {
            check_url(
                env,
                "REDIS_URL",
                url.trim(),
                &["redis", "rediss", "redis+unix", "unix"],
            );
        }
        let mongo_url = env.string("MONGO_URL", DEFAULT_MONGO_URL);
        check_url(env, "MONGO_URL", &mongo_url, &["mongodb", "mongodb+srv"]);
        let mongo_db = env.string("MONGO_DB", "foodchain");
        env.check(
            !mongo_db.is_empty() && !mongo_db.contains(['/', '.', ' ', '"', '$']),
            format!("MONGO_DB={mongo_db:?}: not a valid database name"),
        );
        let service_name = env.string("SERVICE_NAME", service_name);
        let replication = crate::publisher::Replication {
            min_replicas: env.parse(
                "REDIS_MIN_REPLICAS_ACKED",
                u32::from(contract::redis::is_cluster_url(&redis_url)),
            ),
            timeout: env.millis("REDIS_WAIT_TIMEOUT_MS", 1000),
        };
        env.check(
            replication.timeout + Duration::from_secs(1) < contract::redis::COMMAND_TIMEOUT,
            format!(
                "REDIS_WAIT_TIMEOUT_MS={}: keep it at least a second below the {:?} reply timeout",
                replication.timeout.as_millis(),
                contract::redis::COMMAND_TIMEOUT
            ),
        );
        let stream_partitions: u16 = env.parse("STREAM_PARTITIONS", 1);
        env.check(
            (1..=contract::streams::MAX_PARTITIONS).contains(&stream_partitions),
            format!(
                "STREAM_PARTITIONS={stream_partitions}: must be between 1 and {}",
                contract::streams::MAX_PARTITIONS
            ),
        );
        let partition_lease = env.millis("PARTITION_LEASE_MS", 5000);
        env.check(
            partition_lease >= Duration::from_millis(300),
            "PARTITION_LEASE_MS must be at least 300 (it is renewed at a third of it)",
        );
        Self {
            stream_partitions,
            partition_lease,
            consumer_name: env
                .raw("CONSUMER_NAME")
                .unwrap_or_else(default_consumer_name),
            app_env: env.string("APP_ENV", "local"),
            redis_url: SecretUrl::new(redis_url),
            mongo_url: SecretUrl::new(mongo_url),
            mongo_db,
            stream_prefix: env.string("STREAM_PREFIX", ""),
            replication,
            trim: crate::trim::TrimSettings::from_env(env),
            consumer: ConsumerSettings::from_env(env),
            outbox: crate::outbox::OutboxSettings::from_env(env),
            worker_threads: crate::runtime::from_env(env),
            shutdown_timeout: env.millis("SHUTDOWN_TIMEOUT_MS", 10_000),
            loki_url: env.optional("LOKI_URL"),
            log_format: env.parse("LOG_FORMAT", LogFormat::Json),
            log_filter: env.string("RUST_LOG", "info"),
            service_name,
        }
    }

    /// Key namespace of this deployment (see [`contract::streams`]).
    pub fn namespace(&self) -> contract::streams::Namespace {
        contract::streams::Namespace::for_redis(
            &self.stream_prefix,
            self.redis_url.expose(),
            self.stream_partitions,
        )
    }
}

fn check_url(env: &mut Env, key: &str, value: &str, schemes: &[&str]) {
    match Url::parse(value) {
        Ok(url) if schemes.contains(&url.scheme()) => {}
        Ok(url) => env.check(
            false,
            format!(
                "{key}: scheme `{}` is not one of {}",
                url.scheme(),
                schemes.join(", ")
            ),
        ),
        Err(e) => env.check(false, format!("{key}: not a URL ({e})")),
    }
}

/// `<hostname>-<6 random hex digits>`: stable enough to read in `XINFO CONSUMERS`,
/// unique per process so two replicas never share a pending-entries list.
pub fn default_consumer_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "consumer".to_owned());
    format!("{host}-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// An HTTP listen address from `<PREFIX>HTTP_ADDR` or `PORT`, with a default port.
///
/// `HTTP_ADDR` (e.g. `0.0.0.0:8001`) wins; `PORT` alone binds `0.0.0.0:<PORT>`.
pub fn http_addr(env: &mut Env, default_port: u16) -> std::net::SocketAddr {
    let port: u16 = env.parse("PORT", default_port);
    env.parse(
        "HTTP_ADDR",
        std::net::SocketAddr::from(([0, 0, 0, 0], port)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_no_environment() {
        let mut env = Env::from_map::<&str, &str>([]);
        let s = CommonSettings::from_env(&mut env, "order-svc");
        env.finish().unwrap();
        assert_eq!(s.service_name, "order-svc");
        assert_eq!(s.redis_url.expose(), "redis://127.0.0.1:16379");
        assert_eq!(
            s.mongo_url.expose(),
            "mongodb://127.0.0.1:37017/?directConnection=true"
        );
        assert_eq!(s.mongo_db, "foodchain");
        assert_eq!(s.trim.alarm_entries, 100_000);
        assert_eq!(s.consumer.max_attempts, 5);
        assert_eq!(s.consumer.reclaim_min_idle, Duration::from_secs(5));
        assert_eq!(s.log_format, LogFormat::Json);
        assert!(s.loki_url.is_none());
    }

    #[test]
    fn every_bad_variable_is_reported_at_once() {
        let mut env = Env::from_map([
            ("REDIS_URL", "http://x"),
            ("MAX_ATTEMPTS", "many"),
            ("CONSUMER_BLOCK_MS", "0"),
            ("HANDLER_TIMEOUT_MS", "9000"),
            ("LOG_FORMAT", "xml"),
            ("MONGO_DB", "a/b"),
        ]);
        let _ = CommonSettings::from_env(&mut env, "x");
        let err = env.finish().unwrap_err().to_string();
        for needle in [
            "REDIS_URL",
            "MAX_ATTEMPTS",
            "CONSUMER_BLOCK_MS",
            "HANDLER_TIMEOUT_MS",
            "LOG_FORMAT",
            "MONGO_DB",
        ] {
            assert!(err.contains(needle), "{needle} missing from: {err}");
        }
    }

    #[test]
    fn the_retired_maxlen_is_refused_and_names_are_unique() {
        let mut env = Env::from_map([("STREAM_MAXLEN", "100000")]);
        let _ = CommonSettings::from_env(&mut env, "x");
        let err = env.finish().unwrap_err().to_string();
        assert!(
            err.contains("STREAM_MAXLEN is no longer supported"),
            "{err}"
        );
        assert_ne!(default_consumer_name(), default_consumer_name());
    }

    #[test]
    fn the_variables_read_are_listed() {
        let names = Env::names_read(|mut env| CommonSettings::from_env(&mut env, "x"));
        for n in [
            "REDIS_URL",
            "MONGO_URL",
            "STREAM_PREFIX",
            "CONSUMER_BATCH_SIZE",
            "OUTBOX_LEASE_MS",
            "SHUTDOWN_TIMEOUT_MS",
            "WORKER_THREADS",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
        }
    }

    #[test]
    fn secrets_never_print() {
        let mut env = Env::from_map([
            ("REDIS_URL", "redis://foodchain:s3cret-pass@redis:6379/0"),
            (
                "MONGO_URL",
                "mongodb://app:m0ngo-pass@mongo:27017/?replicaSet=rs0",
            ),
        ]);
        let s = CommonSettings::from_env(&mut env, "x");
        env.finish().unwrap();
        let printed = format!("{s:?} {} {}", s.redis_url, s.mongo_url);
        assert!(
            !printed.contains("s3cret-pass") && !printed.contains("m0ngo-pass"),
            "{printed}"
        );
        assert!(
            printed.contains("redis://foodchain:***@redis:6379/0"),
            "{printed}"
        );
        assert_eq!(
            s.redis_url.expose(),
            "redis://foodchain:s3cret-pass@redis:6379/0"
        );
        assert_eq!(format!("{:?}", Secret::new("tok")), "***");

        // A cluster's node list: every node's password masked, and a
        // namespace that is one hash tag.
        let mut env = Env::from_map([(
            "REDIS_URL",
            "redis://:s3cret-pass@r1:7000,redis://:s3cret-pass@r2:7001",
        )]);
        let s = CommonSettings::from_env(&mut env, "x");
        env.finish().unwrap();
        assert_eq!(
            s.redis_url.to_string(),
            "redis://:***@r1:7000,redis://:***@r2:7001"
        );
        assert_eq!(s.namespace().prefix(), "{foodchain}");
        // With partitions, each partition's keys carry its own tag instead.
        let mut env = Env::from_map([
            ("REDIS_URL", "redis://r1:7000,redis://r2:7001"),
            ("STREAM_PARTITIONS", "8"),
        ]);
        let s = CommonSettings::from_env(&mut env, "x");
        env.finish().unwrap();
        assert_eq!(s.namespace().prefix(), "");
        assert_eq!(s.namespace().partitions(), 8);
        let mut env = Env::from_map([("STREAM_PARTITIONS", "0")]);
        let _ = CommonSettings::from_env(&mut env, "x");
        assert!(
            env.finish()
                .unwrap_err()
                .to_string()
                .contains("STREAM_PARTITIONS")
        );
        let mut env = Env::from_map([("REDIS_URL", "redis://r1:7000,http://r2:7001")]);
        let _ = CommonSettings::from_env(&mut env, "x");
        assert!(env.finish().unwrap_err().to_string().contains("http"));
    }

    #[test]
    fn secrets_come_from_the_variable_or_a_file_not_both() {
        let dir = std::env::temp_dir().join(format!("secret-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "from-file\n").unwrap();
        let path = file.to_string_lossy().into_owned();
        let mut env = Env::from_map([("ADMIN_TOKEN_FILE", path.as_str())]);
        assert_eq!(
            secret(&mut env, "ADMIN_TOKEN").unwrap().expose(),
            "from-file"
        );
        env.finish().unwrap();
        let mut env = Env::from_map([("ADMIN_TOKEN", "a"), ("ADMIN_TOKEN_FILE", path.as_str())]);
        assert!(secret(&mut env, "ADMIN_TOKEN").is_none());
        assert!(env.finish().is_err());
        let mut env = Env::from_map([("ADMIN_TOKEN_FILE", "/nonexistent/x")]);
        secret(&mut env, "ADMIN_TOKEN");
        assert!(env.finish().is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn cors_origins_are_checked() {
        let mut env = Env::from_map([(
            "CORS_ALLOWED_ORIGINS",
            "http://127.0.0.1:8003, https://shop.example/",
        )]);
        let e = EdgeSettings::from_env(&mut env);
        env.finish().unwrap();
        assert_eq!(
            e.cors_allowed_origins,
            ["http://127.0.0.1:8003", "https://shop.example"]
        );
        let mut env = Env::from_map([("CORS_ALLOWED_ORIGINS", "shop.example/path")]);
        EdgeSettings::from_env(&mut env);
        assert!(env.finish().is_err());
        let mut env = Env::from_map::<&str, &str>([]);
        assert!(
            EdgeSettings::from_env(&mut env)
                .cors_allowed_origins
                .is_empty()
        );
    }
}
