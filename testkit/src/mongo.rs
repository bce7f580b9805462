//! MongoDB for tests: a real `mongod` when one is on `PATH` (started as a
//! single-node replica set and initiated), otherwise SecantusDB's
//! `secantusd-rs` (a MongoDB-wire server born a one-node replica set), found
//! through `SECANTUSD_BIN`, `$SECANTUS_ROOT/bin`, the project's cache
//! (`${XDG_CACHE_HOME:-~/.cache}/foodchain/secantus/bin`) or `PATH`.
//! `MONGO_IMPL=secantus|mongod` forces one.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use mongodb::bson::doc;

use crate::process::{Launch, Server};

/// Which MongoDB server is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MongoImpl {
    /// A real `mongod` (single-node replica set `rs0`).
    Mongod(PathBuf),
    /// SecantusDB's `secantusd-rs`.
    Secantus(PathBuf),
}

/// How a test MongoDB runs: which server, and whether it requires
/// authentication (SCRAM-SHA-256; `root` gets the root role, created through
/// the localhost exception).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MongoOptions {
    /// The server.
    pub imp: MongoImpl,
    /// `Some((user, password))`: auth on, with this root user.
    pub root: Option<(String, String)>,
}

/// A MongoDB server process (replica set, transactions available).
pub type MongoServer = Server<MongoOptions>;

/// `transactionLifetimeLimitSeconds` of test servers: a transaction whose
/// client died mid-commit keeps its documents locked this long (60 s by
/// default, in mongod and SecantusDB alike); tests kill services
/// mid-transaction and should recover in seconds.
pub const TRANSACTION_LIFETIME_SECS: i32 = 5;

impl Launch for MongoOptions {
    const NAME: &'static str = "mongo";
    const START_TIMEOUT: Duration = Duration::from_secs(20);
    const STOP_GRACE: Duration = Duration::from_secs(15);

    fn command(&self, port: u16, dir: &Path) -> Command {
        let data = dir.join("data");
        std::fs::create_dir_all(&data).expect("create mongo data dir");
        let port = port.to_string();
        match &self.imp {
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
                if self.root.is_some() {
                    c.arg("--auth");
                }
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
                if self.root.is_some() {
                    // A replica set with auth needs a key file (which implies --auth).
                    let key = dir.join("keyfile");
                    if !key.exists() {
                        let bytes: [u8; 48] = rand::random();
                        std::fs::write(&key, hex_text(&bytes)).expect("write the key file");
                        use std::os::unix::fs::PermissionsExt;
                        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
                            .expect("chmod the key file");
                    }
                    c.arg("--keyFile").arg(key);
                }
                c
            }
        }
    }

    async fn ready(&self, port: u16) -> bool {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    }

    async fn configure(&self, port: u16) {
        let mongod = matches!(self.imp, MongoImpl::Mongod(_));
        match &self.root {
            None => prepare(&mongo_url(port), port, mongod, TRANSACTION_LIFETIME_SECS).await,
            Some((user, password)) => {
                // First start: the localhost exception lets the root user be
                // created; after a restart it exists. Then everything else
                // as that user.
                create_root(port, user, password).await;
                let url = format!(
                    "mongodb://{user}:{password}@127.0.0.1:{port}/?directConnection=true&authSource=admin"
                );
                prepare(&url, port, mongod, TRANSACTION_LIFETIME_SECS).await;
            }
        }
    }
}

fn hex_text(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Creates the root user through the localhost exception (no user exists
/// yet); on a restart it exists already, which is fine.
async fn create_root(port: u16, user: &str, password: &str) {
    let client = mongodb::Client::with_uri_str(mongo_url(port))
        .await
        .expect("mongo client");
    let created = client
        .database("admin")
        .run_command(doc! { "createUser": user, "pwd": password, "roles": ["root"] })
        .await;
    if let Err(e) = created {
        let text = e.to_string();
        assert!(
            text.contains("already exists")
                || text.contains("requires authentication")
                || text.contains("Unauthorized"),
            "createUser {user}: {e}"
        );
    }
}

/// Prepares a freshly started MongoDB on `port` for foodchain: initiates a
/// `mongod`'s single-node replica set, then lowers
/// `transactionLifetimeLimitSeconds` (also used by `scripts/infra.sh`
/// through the `mongo-setup` binary).
pub async fn prepare(url: &str, port: u16, mongod: bool, transaction_lifetime_secs: i32) {
    let client = mongodb::Client::with_uri_str(url)
        .await
        .expect("mongo client");
    if mongod {
        initiate_replica_set(&client, port).await;
    }
    client
        .database("admin")
        .run_command(doc! {
            "setParameter": 1,
            "transactionLifetimeLimitSeconds": transaction_lifetime_secs,
        })
        .await
        .expect("setParameter transactionLifetimeLimitSeconds");
}

fn mongo_url(port: u16) -> String {
    format!("mongodb://127.0.0.1:{port}/?directConnection=true")
}

impl MongoServer {
    /// A private server.
    pub async fn start() -> Self {
        let imp = find_mongo().unwrap_or_else(|e| panic!("{e}"));
        Self::start_with(MongoOptions { imp, root: None }).await
    }

    /// A private server that requires authentication, with this root user.
    pub async fn start_with_auth(user: &str, password: &str) -> Self {
        let imp = find_mongo().unwrap_or_else(|e| panic!("{e}"));
        let root = Some((user.to_owned(), password.to_owned()));
        Self::start_with(MongoOptions { imp, root }).await
    }

    /// `mongodb://127.0.0.1:<port>/?directConnection=true` (no credentials).
    pub fn url(&self) -> String {
        mongo_url(self.port())
    }

    /// Which implementation runs.
    pub fn implementation(&self) -> &MongoImpl {
        &self.launch().imp
    }
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

/// `replSetInitiate` for a fresh single-node `mongod`, then waits for it to be
/// primary. (SecantusDB needs none: it is born initiated.)
async fn initiate_replica_set(client: &mongodb::Client, port: u16) {
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
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let hello = admin.run_command(doc! { "hello": 1 }).await.expect("hello");
        if hello.get_bool("isWritablePrimary").unwrap_or(false) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "mongod did not become primary"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
