//! `redis-server` for tests.

use std::{path::Path, process::Command, time::Duration};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::process::{Launch, Server};

/// How a private Redis runs.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// `appendonly yes` with this `appendfsync` policy; `None`: no persistence.
    pub appendfsync: Option<&'static str>,
    /// `Some((user, password))`: an ACL user with every permission, and the
    /// `default` user off (so every client must authenticate).
    pub acl_user: Option<(&'static str, &'static str)>,
    /// A node of a Redis Cluster (`cluster-enabled yes`): see [`RedisCluster`].
    pub cluster: bool,
}

/// A `redis-server` process.
pub type RedisServer = Server<RedisOptions>;

impl Launch for RedisOptions {
    const NAME: &'static str = "redis";
    const START_TIMEOUT: Duration = Duration::from_secs(10);
    const STOP_GRACE: Duration = Duration::from_secs(10);

    fn command(&self, port: u16, dir: &Path) -> Command {
        let mut cmd = Command::new(
            std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into()),
        );
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(dir)
        .args(["--daemonize", "no", "--protected-mode", "no"]);
        match self.appendfsync {
            Some(policy) => cmd.args(["--appendonly", "yes", "--appendfsync", policy]),
            None => cmd.args(["--appendonly", "no"]),
        };
        if self.cluster {
            // The cluster bus port, chosen once per data directory so that a
            // restarted node comes back on the port its peers know.
            let file = dir.join("cluster-port");
            let bus = std::fs::read_to_string(&file)
                .ok()
                .and_then(|p| p.trim().parse::<u16>().ok())
                .unwrap_or_else(|| {
                    let p = crate::process::free_port();
                    std::fs::write(&file, p.to_string()).expect("write the cluster port");
                    p
                });
            cmd.args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                .args(["--cluster-port", &bus.to_string()])
                .arg("--cluster-config-file")
                .arg(dir.join("nodes.conf"));
        }
        if let Some((user, password)) = self.acl_user {
            let acl = dir.join("users.acl");
            std::fs::write(
                &acl,
                format!("user default off\nuser {user} on >{password} ~* &* +@all\n"),
            )
            .expect("write the ACL file");
            cmd.arg("--aclfile").arg(acl);
        }
        cmd
    }

    async fn ready(&self, port: u16) -> bool {
        let ping = async {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()?;
            let probe = match self.acl_user {
                Some((user, password)) => format!("AUTH {user} {password}\r\nPING\r\n"),
                None => "PING\r\n".to_owned(),
            };
            s.write_all(probe.as_bytes()).await.ok()?;
            let mut got = Vec::new();
            let mut buf = [0u8; 64];
            while !got.windows(5).any(|w| w == b"+PONG") {
                let n = s.read(&mut buf).await.ok()?;
                if n == 0 || buf[..n].starts_with(b"-") || got.len() > 256 {
                    return None;
                }
                got.extend_from_slice(&buf[..n]);
            }
            Some(())
        };
        matches!(
            tokio::time::timeout(Duration::from_millis(500), ping).await,
            Ok(Some(()))
        )
    }
}

impl RedisServer {
    /// A private Redis without persistence.
    pub async fn start() -> Self {
        Self::start_with(RedisOptions::default()).await
    }

    /// Sets Redis's memory ceiling `headroom` bytes above what it uses now,
    /// or lifts it (`None`). Under `noeviction` a write past the ceiling
    /// fails with `OOM`: the tests of what happens at the ceiling use it.
    pub async fn memory_ceiling(&self, headroom: Option<u64>) {
        let client = redis::Client::open(self.url()).expect("the test Redis URL");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test Redis");
        let limit = match headroom {
            Some(h) => {
                let info: String = redis::cmd("INFO")
                    .arg("memory")
                    .query_async(&mut conn)
                    .await
                    .expect("INFO memory");
                let used: u64 = info
                    .lines()
                    .find_map(|l| l.strip_prefix("used_memory:"))
                    .and_then(|n| n.trim().parse().ok())
                    .expect("INFO memory has used_memory");
                used + h
            }
            None => 0,
        };
        let () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg(limit)
            .query_async(&mut conn)
            .await
            .expect("CONFIG SET maxmemory");
    }

    /// `redis://127.0.0.1:<port>`, with the ACL user's credentials if it has one.
    pub fn url(&self) -> String {
        match self.launch().acl_user {
            Some((user, password)) => {
                format!("redis://{user}:{password}@127.0.0.1:{}", self.port())
            }
            None => format!("redis://127.0.0.1:{}", self.port()),
        }
    }
}

/// A local Redis Cluster: `primaries` nodes holding the slots, each with
/// `replicas` replicas, all on 127.0.0.1, joined by `redis-cli --cluster
/// create`. Its [`url`](Self::url) is the list of the nodes' URLs, which is
/// how the services are given a cluster (`contract::redis`).
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts the nodes (no persistence), creates the cluster, and waits
    /// until every node reports `cluster_state:ok`.
    pub async fn start(primaries: usize, replicas: usize) -> Self {
        Self::start_with(primaries, replicas, RedisOptions::default()).await
    }

    /// The same, every node started with `opts` (its `cluster` forced on).
    pub async fn start_with(primaries: usize, replicas: usize, opts: RedisOptions) -> Self {
        let opts = RedisOptions {
            cluster: true,
            ..opts
        };
        let mut nodes = Vec::new();
        for _ in 0..primaries * (1 + replicas) {
            nodes.push(RedisServer::start_with(opts.clone()).await);
        }
        let cli = std::env::var("REDIS_CLI_BIN").unwrap_or_else(|_| "redis-cli".into());
        let out = tokio::process::Command::new(&cli)
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())))
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .await
            .unwrap_or_else(|e| panic!("cannot run {cli} ({e}); install redis-tools"));
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Self { nodes };
        cluster.wait_ok().await;
        // And until every replica has synced: before that, a `WAIT 1` on
        // its primary answers 0.
        for node in &cluster.nodes {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                let info = node.info("replication").await.unwrap_or_default();
                let synced = info.contains("role:master")
                    && info.contains(&format!("connected_slaves:{replicas}"))
                    || info.contains("master_link_status:up");
                if synced {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "a test cluster node did not sync: {info}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        cluster
    }

    /// Waits until every node that runs says `cluster_state:ok`.
    pub async fn wait_ok(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        for node in &self.nodes {
            loop {
                if node
                    .cluster_info()
                    .await
                    .is_some_and(|i| i.contains("cluster_state:ok"))
                {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the test cluster did not reach cluster_state:ok"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// The nodes' URLs, comma-separated.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The nodes, in the order they were started (the first `primaries`
    /// hold the slots at first).
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }
}

impl RedisServer {
    /// `INFO <section>` of this node, if it answers.
    pub async fn info(&self, section: &str) -> Option<String> {
        self.text(redis::cmd("INFO").arg(section)).await
    }

    /// `CLUSTER NODES` of this node, if it answers.
    pub async fn cluster_nodes(&self) -> Option<String> {
        self.text(redis::cmd("CLUSTER").arg("NODES")).await
    }

    /// `CLUSTER INFO` of this node, if it answers.
    pub async fn cluster_info(&self) -> Option<String> {
        self.text(redis::cmd("CLUSTER").arg("INFO")).await
    }

    /// A command's text reply, on a connection of its own.
    async fn text(&self, cmd: &redis::Cmd) -> Option<String> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        cmd.query_async(&mut conn).await.ok()
    }
}
