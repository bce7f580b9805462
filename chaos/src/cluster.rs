//! A local deployment as real processes: Redis (AOF) and MongoDB from
//! `testkit`, and two replicas of every service, each a child process with
//! its log in the run directory.
//!
//! A replica is killed with SIGKILL, paused with SIGSTOP / SIGCONT, and
//! restarted as a new process with a new consumer name (as a replaced pod
//! would be), so takeovers through XAUTOCLAIM are exercised.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use testkit::{MongoServer, RedisCluster, RedisOptions, RedisServer};
use tokio::process::{Child, Command};

/// A service of the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Svc {
    /// order-svc
    OrderSvc,
    /// delivery-svc
    DeliverySvc,
    /// notify-svc
    NotifySvc,
    /// simulator
    Simulator,
}

impl Svc {
    /// All of them.
    pub const ALL: [Svc; 4] = [
        Svc::OrderSvc,
        Svc::DeliverySvc,
        Svc::NotifySvc,
        Svc::Simulator,
    ];

    /// Binary name.
    pub fn name(self) -> &'static str {
        match self {
            Svc::OrderSvc => "order-svc",
            Svc::DeliverySvc => "delivery-svc",
            Svc::NotifySvc => "notify-svc",
            Svc::Simulator => "simulator",
        }
    }
}

/// How to start a [`Cluster`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Redis `appendfsync` policy.
    pub fsync: &'static str,
    /// Replicas per service.
    pub replicas: usize,
    /// Environment for every service, over the cluster's own (later wins).
    pub env: Vec<(String, String)>,
    /// Run the streams on a local Redis Cluster (3 primaries, 3 replicas,
    /// each node with the same AOF as the single Redis).
    pub redis_cluster: bool,
    /// Partitions of every stream (`STREAM_PARTITIONS`).
    pub partitions: u16,
}

/// Where the streams live in a chaos run.
#[derive(Debug)]
pub enum Bus {
    /// One Redis (with AOF).
    Single(RedisServer),
    /// A Redis Cluster.
    Cluster(RedisCluster),
}

impl Bus {
    /// `REDIS_URL` of the services: one URL, or the nodes' list.
    pub fn url(&self) -> String {
        match self {
            Bus::Single(r) => r.url(),
            Bus::Cluster(c) => c.url(),
        }
    }

    /// Process ids of the Redis server(s), by name (`redis`, or
    /// `redis-<i>` per cluster node).
    pub fn pids(&self) -> Vec<(String, Option<u32>)> {
        match self {
            Bus::Single(r) => vec![("redis".to_owned(), r.pid())],
            Bus::Cluster(c) => c
                .nodes()
                .iter()
                .enumerate()
                .map(|(i, n)| (format!("redis-{i}"), n.pid()))
                .collect(),
        }
    }

    /// The single Redis, for the faults that need one.
    pub fn single(&self) -> anyhow::Result<&RedisServer> {
        match self {
            Bus::Single(r) => Ok(r),
            Bus::Cluster(_) => bail!("this fault needs a single Redis, not --redis-cluster"),
        }
    }

    /// The cluster, for the faults that need one.
    pub fn cluster(&self) -> anyhow::Result<&RedisCluster> {
        match self {
            Bus::Cluster(c) => Ok(c),
            Bus::Single(_) => bail!("this fault needs --redis-cluster"),
        }
    }
}

impl Default for Options {
    /// Two replicas of everything, `appendfsync always`: what the chaos runs use.
    fn default() -> Self {
        Self {
            fsync: "always",
            replicas: 2,
            env: Vec::new(),
            redis_cluster: false,
            partitions: 1,
        }
    }
}

#[derive(Debug)]
struct Proc {
    child: Child,
    port: u16,
    name: String,
}

/// The running system.
#[derive(Debug)]
pub struct Cluster {
    /// Redis (with AOF), or a Redis Cluster.
    pub redis: Bus,
    /// MongoDB (replica set).
    pub mongo: MongoServer,
    /// Stream prefix.
    pub prefix: String,
    /// Database name.
    pub db: String,
    /// Where logs go.
    pub dir: PathBuf,
    bin_dir: PathBuf,
    procs: Mutex<HashMap<(Svc, usize), Proc>>,
    generation: Mutex<HashMap<(Svc, usize), u32>>,
    /// HTTP client.
    pub http: reqwest::Client,
    /// Replicas per service.
    pub replicas: usize,
    /// Partitions of every stream.
    pub partitions: u16,
    env: Vec<(String, String)>,
}

impl Cluster {
    /// Starts infrastructure and `opts.replicas` of each service; waits until all are ready.
    pub async fn start(bin_dir: PathBuf, dir: PathBuf, opts: Options) -> anyhow::Result<Self> {
        let Options {
            fsync,
            replicas,
            env,
            redis_cluster,
            partitions,
        } = opts;
        for svc in Svc::ALL {
            let bin = bin_dir.join(svc.name());
            if !bin.is_file() {
                bail!(
                    "{} not found: build the services first (cargo build -p {})",
                    bin.display(),
                    svc.name()
                );
            }
        }
        std::fs::create_dir_all(&dir)?;
        let redis = if redis_cluster {
            Bus::Cluster(
                RedisCluster::start_with(
                    3,
                    1,
                    RedisOptions {
                        appendfsync: Some(fsync),
                        ..RedisOptions::default()
                    },
                )
                .await,
            )
        } else {
            Bus::Single(
                RedisServer::start_with(RedisOptions {
                    appendfsync: Some(fsync),
                    acl_user: None,
                    cluster: false,
                })
                .await,
            )
        };
        let mongo = MongoServer::start().await;
        let cluster = Self {
            redis,
            mongo,
            prefix: String::new(),
            db: "foodchain".into(),
            dir,
            bin_dir,
            procs: Mutex::new(HashMap::new()),
            generation: Mutex::new(HashMap::new()),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()?,
            replicas,
            partitions,
            env,
        };
        cluster.seed().await?;
        for svc in Svc::ALL {
            for r in 0..cluster.replicas {
                cluster.spawn(svc, r)?;
            }
        }
        for svc in Svc::ALL {
            for r in 0..cluster.replicas {
                cluster.wait_ready(svc, r, Duration::from_secs(60)).await?;
            }
        }
        Ok(cluster)
    }

    /// The services' key namespace (on a cluster one hash tag, or one per
    /// partition).
    pub fn namespace(&self) -> contract::streams::Namespace {
        contract::streams::Namespace::for_redis(&self.prefix, &self.redis.url(), self.partitions)
    }

    /// Environment of every service process.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("REDIS_URL", self.redis.url()),
            ("MONGO_URL", self.mongo.url()),
            ("MONGO_DB", self.db.clone()),
            ("STREAM_PREFIX", self.prefix.clone()),
            ("STREAM_PARTITIONS", self.partitions.to_string()),
            ("PARTITION_LEASE_MS", "2000".into()),
            ("LOG_FORMAT", "json".into()),
            ("RUST_LOG", "info".into()),
            ("CONSUMER_BLOCK_MS", "200".into()),
            ("RECLAIM_MIN_IDLE_MS", "2000".into()),
            ("RECLAIM_INTERVAL_MS", "250".into()),
            ("RETRY_BACKOFF_MS", "50".into()),
            ("HANDLER_TIMEOUT_MS", "1500".into()),
            ("OUTBOX_LEASE_MS", "2000".into()),
            ("OUTBOX_POLL_MS", "100".into()),
            ("SIMULATOR_DELAY_SCALE", "0.05".into()),
            ("SIM_POLL_MS", "20".into()),
            // The load comes from one address: no per-client order rate.
            ("ORDER_RATE_PER_SEC", "0".into()),
            // Trim often, so that faults meet trimming (it must never take
            // an entry a group still needs; the checker would see the loss).
            ("STREAM_TRIM_INTERVAL_MS", "500".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .chain(self.env.iter().cloned())
        .collect()
    }

    /// Process ids of the running replicas, by replica name.
    pub fn pids(&self) -> Vec<(String, u32)> {
        let procs = self
            .procs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out: Vec<_> = procs
            .values()
            .filter_map(|p| Some((p.name.clone(), p.child.id()?)))
            .collect();
        out.sort();
        out
    }

    async fn seed(&self) -> anyhow::Result<()> {
        let status = Command::new(self.bin_dir.join("order-svc"))
            .arg("seed-menu")
            .envs(self.env())
            .stdout(log(&self.dir, "seed-menu.log")?)
            .stderr(log(&self.dir, "seed-menu.log")?)
            .status()
            .await?;
        if !status.success() {
            bail!(
                "order-svc seed-menu failed; see {}",
                self.dir.join("seed-menu.log").display()
            );
        }
        Ok(())
    }

    fn spawn(&self, svc: Svc, replica: usize) -> anyhow::Result<()> {
        let generation = {
            let mut g = self
                .generation
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let e = g.entry((svc, replica)).or_default();
            *e += 1;
            *e
        };
        let name = format!("{}-{replica}-g{generation}", svc.name());
        let port = testkit::free_port();
        let file = format!("{name}.log");
        let mut cmd = Command::new(self.bin_dir.join(svc.name()));
        testkit::process::die_with_parent(cmd.as_std_mut());
        let child = cmd
            .envs(self.env())
            .env("PORT", port.to_string())
            .env("CONSUMER_NAME", &name)
            .stdout(log(&self.dir, &file)?)
            .stderr(log(&self.dir, &file)?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        self.procs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert((svc, replica), Proc { child, port, name });
        Ok(())
    }

    /// Base URL of a replica (if running).
    pub fn url(&self, svc: Svc, replica: usize) -> Option<String> {
        self.procs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&(svc, replica))
            .map(|p| format!("http://127.0.0.1:{}", p.port))
    }

    /// Consumer name of a replica (if running).
    pub fn name(&self, svc: Svc, replica: usize) -> Option<String> {
        self.procs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&(svc, replica))
            .map(|p| p.name.clone())
    }

    /// URLs of the running replicas of a service.
    pub fn urls(&self, svc: Svc) -> Vec<String> {
        (0..self.replicas)
            .filter_map(|r| self.url(svc, r))
            .collect()
    }

    /// Polls `/readyz` until 200.
    pub async fn wait_ready(
        &self,
        svc: Svc,
        replica: usize,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let url = self.url(svc, replica).context("not running")?;
        while started.elapsed() < timeout {
            if let Ok(r) = self
                .http
                .get(format!("{url}/readyz"))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                && r.status().is_success()
            {
                return Ok(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "{}/{replica} not ready after {timeout:?}; see {}",
            svc.name(),
            self.dir.display()
        )
    }

    /// Waits until every running replica is ready.
    pub async fn wait_all_ready(&self, timeout: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        for svc in Svc::ALL {
            for r in 0..self.replicas {
                if self.url(svc, r).is_some() {
                    self.wait_ready(svc, r, timeout.saturating_sub(started.elapsed()))
                        .await?;
                }
            }
        }
        Ok(started.elapsed())
    }

    fn signal(&self, svc: Svc, replica: usize, signal: i32) -> anyhow::Result<()> {
        let procs = self
            .procs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let p = procs.get(&(svc, replica)).context("not running")?;
        let pid = p.child.id().context("already exited")?;
        // SAFETY: kill(2) on our own child.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::kill(i32::try_from(pid)?, signal) };
        if rc != 0 {
            bail!("kill({pid}, {signal}) failed");
        }
        Ok(())
    }

    /// `kill -9` a replica and reap it.
    pub async fn kill(&self, svc: Svc, replica: usize) -> anyhow::Result<()> {
        self.signal(svc, replica, libc::SIGKILL)?;
        let proc = self
            .procs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&(svc, replica));
        if let Some(mut p) = proc {
            let _ = p.child.wait().await;
        }
        Ok(())
    }

    /// SIGSTOP a replica.
    pub fn pause(&self, svc: Svc, replica: usize) -> anyhow::Result<()> {
        self.signal(svc, replica, libc::SIGSTOP)
    }

    /// SIGCONT a replica.
    pub fn resume(&self, svc: Svc, replica: usize) -> anyhow::Result<()> {
        self.signal(svc, replica, libc::SIGCONT)
    }

    /// Starts a (killed) replica again and waits until it is ready.
    pub async fn restart(&self, svc: Svc, replica: usize) -> anyhow::Result<Duration> {
        self.spawn(svc, replica)?;
        self.wait_ready(svc, replica, Duration::from_secs(60)).await
    }

    /// Which replica of `svc` holds its outbox relay lease.
    pub async fn lease_holder(&self, conn: &mut contract::redis::Conn, svc: Svc) -> Option<usize> {
        let holder: Option<String> = redis::cmd("GET")
            .arg(
                self.namespace()
                    .key(&format!("outbox-lease:{}", svc.name())),
            )
            .query_async(conn)
            .await
            .ok()?;
        let holder = holder?;
        (0..self.replicas).find(|r| self.name(svc, *r).as_deref() == Some(holder.as_str()))
    }

    /// Graceful stop of every service (SIGTERM), waiting for each.
    pub async fn shutdown(&self) {
        let procs: Vec<Proc> = self
            .procs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain()
            .map(|(_, p)| p)
            .collect();
        for p in &procs {
            if let Some(pid) = p.child.id().and_then(|p| i32::try_from(p).ok()) {
                // SAFETY: kill(2) on our own child (resume first, in case it is stopped).
                #[allow(unsafe_code)]
                unsafe {
                    libc::kill(pid, libc::SIGCONT);
                    libc::kill(pid, libc::SIGTERM);
                }
            }
        }
        for mut p in procs {
            let _ = tokio::time::timeout(Duration::from_secs(20), p.child.wait()).await;
        }
    }
}

fn log(dir: &std::path::Path, name: &str) -> anyhow::Result<std::process::Stdio> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))?;
    Ok(f.into())
}
