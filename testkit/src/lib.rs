//! Real servers for the test suite: Redis and MongoDB, started on free ports
//! by the tests themselves. Nothing is mocked and nothing already running is
//! assumed.
//!
//! * [`shared_redis`] / [`shared_mongo`]: one server of each per test process,
//!   started on first use. Tests isolate themselves with [`unique`] names (a
//!   stream prefix, a database name), not with servers.
//! * [`RedisServer::start`] / [`MongoServer::start`]: a private server, for
//!   tests that stop, kill or restart it. It stops when dropped.
//!
//! MongoDB is a real `mongod` when one is on `PATH` (started as a single-node
//! replica set and initiated), otherwise SecantusDB's `secantusd-rs` (a
//! MongoDB-wire server that reports itself as a replica set), found through
//! `SECANTUSD_BIN`, `$SECANTUS_ROOT/bin`, the project's cache
//! (`${XDG_CACHE_HOME:-~/.cache}/foodchain/secantus/bin`) or `PATH`.
//! `MONGO_IMPL=secantus|mongod` forces one. `scripts/infra.sh deps` installs
//! both servers.
//!
//! Every server is started from one long-lived thread with
//! `PR_SET_PDEATHSIG`, so the kernel kills it when the test process exits,
//! however the process ends. Data lives under
//! `$TMPDIR/foodchain-tests/<pid>-<n>`; directories of dead test processes are
//! removed on the next run.

#![allow(unsafe_code)] // one `prctl` call in `pre_exec`, see `spawn_from_reaper_thread`

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

/// The whole flow of one order as a tracker sees it, `kind:status` labels in
/// order: what every end-to-end test and the chaos checker expect a complete
/// timeline to be.
pub const FULL_FLOW: [&str; 8] = [
    "order:created",
    "order:confirmed",
    "order:preparing",
    "order:out_for_delivery",
    "delivery:waiting_for_pickup",
    "delivery:on_the_way",
    "delivery:delivered",
    "order:delivered",
];

/// Polls `check` every 20 ms until it returns `Some`, or fails the test
/// (panics) naming `what`: how tests wait for a condition instead of sleeping.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A name no other test (in this run or a concurrent one) uses: `<prefix>-<pid>-<n>-<rand>`.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}-{:04x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        rand::random::<u16>()
    )
}

/// A unique database name (MongoDB forbids `-` nowhere, but `_` reads better).
pub fn unique_db(prefix: &str) -> String {
    unique(prefix).replace('-', "_")
}

/// The per-process Redis.
pub fn shared_redis() -> &'static RedisServer {
    static S: OnceLock<RedisServer> = OnceLock::new();
    S.get_or_init(|| RedisServer::start_with(RedisOptions::default()))
}

/// The per-process MongoDB.
pub fn shared_mongo() -> &'static MongoServer {
    static S: OnceLock<MongoServer> = OnceLock::new();
    S.get_or_init(MongoServer::start)
}

fn base_dir() -> PathBuf {
    let dir = std::env::temp_dir().join("foodchain-tests");
    static CLEANED: OnceLock<()> = OnceLock::new();
    CLEANED.get_or_init(|| remove_dirs_of_dead_processes(&dir));
    dir
}

fn remove_dirs_of_dead_processes(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_string_lossy()
            .split('-')
            .next()
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && pid != std::process::id()
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn fresh_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = base_dir().join(format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create test server directory");
    dir
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind port 0")
}

/// Spawns `cmd` from a thread that lives as long as the process, with
/// `PR_SET_PDEATHSIG = SIGKILL`. (The death signal fires when the *thread*
/// that forked exits, so forking from a short-lived test thread would kill
/// the shared servers after the first test.)
fn spawn_from_reaper_thread(mut cmd: Command) -> std::io::Result<Child> {
    type Job = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("testkit-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawn testkit thread");
        Mutex::new(tx)
    });
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl and getppid are async-signal-safe; nothing else runs
    // between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    sender
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .send((cmd, tx))
        .expect("spawner alive");
    rx.recv().expect("spawner replied")
}

fn log_file(dir: &Path, name: &str) -> Stdio {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}

fn stop_child(child: &mut Child, signal: i32, grace: Duration) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(pid, signal) };
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Options of a private Redis.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// `appendonly yes` with this `appendfsync` policy; `None`: no persistence.
    pub appendfsync: Option<&'static str>,
}

/// A `redis-server` process.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    opts: RedisOptions,
    child: Mutex<Option<Child>>,
}

impl RedisServer {
    /// A private Redis without persistence.
    pub fn start() -> Self {
        Self::start_with(RedisOptions::default())
    }

    /// A private Redis with options.
    pub fn start_with(opts: RedisOptions) -> Self {
        let dir = fresh_dir();
        for _ in 0..5 {
            let server = Self {
                port: free_port(),
                dir: dir.clone(),
                opts: opts.clone(),
                child: Mutex::new(None),
            };
            if server.try_launch() {
                return server;
            }
        }
        panic!(
            "could not start redis-server; see {}",
            dir.join("redis.log").display()
        );
    }

    fn try_launch(&self) -> bool {
        let mut cmd = Command::new(
            std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into()),
        );
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(&self.dir)
        .args(["--daemonize", "no", "--protected-mode", "no"]);
        match self.opts.appendfsync {
            Some(policy) => cmd.args(["--appendonly", "yes", "--appendfsync", policy]),
            None => cmd.args(["--appendonly", "no"]),
        };
        cmd.stdout(log_file(&self.dir, "redis.log"))
            .stderr(log_file(&self.dir, "redis.log"));
        let mut child = match spawn_from_reaper_thread(cmd) {
            Ok(c) => c,
            Err(e) => {
                panic!("cannot run redis-server ({e}); install it with `scripts/infra.sh deps`")
            }
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return false; // port taken meanwhile, most likely
            }
            if redis_ping(self.port) {
                *self
                    .child
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        false
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The data directory (the AOF lives in `appendonlydir/` under it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Graceful stop (SIGTERM: Redis writes its AOF and exits).
    pub fn stop(&self) {
        if let Some(mut c) = self
            .child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            stop_child(&mut c, libc::SIGTERM, Duration::from_secs(10));
        }
    }

    /// Abrupt stop (SIGKILL).
    pub fn kill(&self) {
        if let Some(mut c) = self
            .child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            stop_child(&mut c, libc::SIGKILL, Duration::from_secs(5));
        }
    }

    /// Starts again on the same port and data directory.
    pub fn restart(&self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.try_launch() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not restart on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn redis_ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 16];
    s.write_all(b"PING\r\n").is_ok()
        && s.read(&mut buf)
            .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
}

/// Which MongoDB server is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MongoImpl {
    /// A real `mongod` (single-node replica set `rs0`).
    Mongod(PathBuf),
    /// SecantusDB's `secantusd-rs`.
    Secantus(PathBuf),
}

/// Finds the MongoDB server binary as the module docs describe.
pub fn find_mongo() -> Result<MongoImpl, String> {
    let forced = std::env::var("MONGO_IMPL").ok();
    let on_path = |name: &str| -> Option<PathBuf> {
        std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|f| f.is_file())
        })
    };
    if forced.as_deref() != Some("secantus")
        && let Some(p) = std::env::var_os("MONGOD_BIN")
            .map(PathBuf::from)
            .or_else(|| on_path("mongod"))
    {
        return Ok(MongoImpl::Mongod(p));
    }
    if forced.as_deref() == Some("mongod") {
        return Err("MONGO_IMPL=mongod but no mongod on PATH".into());
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|c| c.join("foodchain/secantus"));
    let candidates = [
        std::env::var_os("SECANTUSD_BIN").map(PathBuf::from),
        std::env::var_os("SECANTUS_ROOT").map(|r| PathBuf::from(r).join("bin/secantusd-rs")),
        cache.map(|c| c.join("bin/secantusd-rs")),
        on_path("secantusd-rs"),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .map(MongoImpl::Secantus)
        .ok_or_else(|| "no MongoDB server found: run `scripts/infra.sh deps` (builds SecantusDB once, about 8 minutes)".into())
}

/// A MongoDB server process (replica set, transactions available).
#[derive(Debug)]
pub struct MongoServer {
    port: u16,
    dir: PathBuf,
    imp: MongoImpl,
    child: Mutex<Option<Child>>,
}

impl MongoServer {
    /// A private server.
    pub fn start() -> Self {
        let imp = find_mongo().unwrap_or_else(|e| panic!("{e}"));
        let dir = fresh_dir();
        for _ in 0..5 {
            let server = Self {
                port: free_port(),
                dir: dir.clone(),
                imp: imp.clone(),
                child: Mutex::new(None),
            };
            if server.try_launch() {
                return server;
            }
        }
        panic!(
            "could not start MongoDB; see {}",
            dir.join("mongo.log").display()
        );
    }

    fn try_launch(&self) -> bool {
        let data = self.dir.join("data");
        std::fs::create_dir_all(&data).expect("create mongo data dir");
        let port = self.port.to_string();
        let mut cmd = match &self.imp {
            MongoImpl::Secantus(bin) => {
                let mut c = Command::new(bin);
                c.args(["--host", "127.0.0.1", "--port", &port, "--storage-path"])
                    .arg(&data)
                    .args([
                        "--cache-size",
                        "128M",
                        "--log-file-max",
                        "16MB",
                        "--log-level",
                        "WARNING",
                    ]);
                c
            }
            MongoImpl::Mongod(bin) => {
                let mut c = Command::new(bin);
                c.args([
                    "--replSet",
                    "rs0",
                    "--bind_ip",
                    "127.0.0.1",
                    "--port",
                    &port,
                    "--dbpath",
                ])
                .arg(&data)
                .args(["--quiet", "--wiredTigerCacheSizeGB", "0.25"]);
                c
            }
        };
        cmd.stdout(log_file(&self.dir, "mongo.log"))
            .stderr(log_file(&self.dir, "mongo.log"));
        let mut child = match spawn_from_reaper_thread(cmd) {
            Ok(c) => c,
            Err(e) => panic!("cannot run the MongoDB server {:?}: {e}", self.imp),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return false;
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                *self
                    .child
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(child);
                if let MongoImpl::Mongod(_) = self.imp {
                    initiate_replica_set(&self.url(), self.port);
                }
                // Tests kill services mid-transaction; recover in seconds.
                configure_mongo(&self.url(), 5);
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        false
    }

    /// `mongodb://127.0.0.1:<port>/?directConnection=true`.
    pub fn url(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?directConnection=true", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Which implementation runs.
    pub fn implementation(&self) -> &MongoImpl {
        &self.imp
    }

    /// Graceful stop (SIGTERM).
    pub fn stop(&self) {
        if let Some(mut c) = self
            .child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            stop_child(&mut c, libc::SIGTERM, Duration::from_secs(15));
        }
    }

    /// Starts again on the same port and data directory.
    pub fn restart(&self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.try_launch() {
            assert!(
                Instant::now() < deadline,
                "MongoDB did not restart on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for MongoServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `f` to completion on a runtime of its own, on a thread of its own
/// (callers may be inside an async test's runtime, where blocking is not
/// allowed).
fn on_own_runtime<F>(f: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f);
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
}

/// Server settings foodchain relies on for quick recovery: a transaction
/// whose client died mid-commit keeps its documents locked until
/// `transactionLifetimeLimitSeconds` (60 s by default, in mongod and in
/// SecantusDB alike); this lowers it.
pub fn configure_mongo(url: &str, transaction_lifetime_secs: u32) {
    use mongodb::bson::doc;
    let url = url.to_owned();
    on_own_runtime(async move {
        let client = mongodb::Client::with_uri_str(&url)
            .await
            .expect("mongo client");
        let limit = i32::try_from(transaction_lifetime_secs).unwrap_or(i32::MAX);
        client
            .database("admin")
            .run_command(doc! { "setParameter": 1, "transactionLifetimeLimitSeconds": limit })
            .await
            .expect("setParameter transactionLifetimeLimitSeconds");
    });
}

/// `replSetInitiate` for a fresh single-node `mongod`, then waits for it to be
/// primary. (SecantusDB needs none: it is born initiated.)
pub fn initiate_replica_set(url: &str, port: u16) {
    use mongodb::bson::doc;
    let url = url.to_owned();
    on_own_runtime(async move {
        let client = mongodb::Client::with_uri_str(&url)
            .await
            .expect("mongo client");
        let admin = client.database("admin");
        let config =
            doc! { "_id": "rs0", "members": [{ "_id": 0, "host": format!("127.0.0.1:{port}") }] };
        // 23 = AlreadyInitialized: fine on restarts.
        if let Err(e) = admin.run_command(doc! { "replSetInitiate": config }).await
            && !e.to_string().contains("already initialized")
            && !e.to_string().contains("AlreadyInitialized")
        {
            panic!("replSetInitiate failed: {e}");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let hello = admin.run_command(doc! { "hello": 1 }).await.expect("hello");
            if hello.get_bool("isWritablePrimary").unwrap_or(false) {
                return;
            }
            assert!(Instant::now() < deadline, "mongod did not become primary");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}
