//! `redis-server` for tests.

use std::{path::Path, process::Command, time::Duration};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::process::{Launch, Server};

/// How a private Redis runs.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// `appendonly yes` with this `appendfsync` policy; `None`: no persistence.
    pub appendfsync: Option<&'static str>,
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
        cmd
    }

    async fn ready(&self, port: u16) -> bool {
        let ping = async {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()?;
            s.write_all(b"PING\r\n").await.ok()?;
            let mut buf = [0u8; 16];
            let n = s.read(&mut buf).await.ok()?;
            buf[..n].starts_with(b"+PONG").then_some(())
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

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port())
    }
}
