//! Redis connections with timeouts that fit how each one is used.
//!
//! redis-rs multiplexes commands over one TCP connection and, by default, times
//! a reply out after 500 ms. That is right for ordinary commands and wrong for
//! `XREADGROUP ... BLOCK`, which legitimately waits for up to its block time,
//! and would also hold up every command queued behind it. So the consumer loop
//! reads on a connection of its own ([`blocking`]) and does everything else on
//! a shared one ([`commands`]). Both are [`ConnectionManager`]s: they reconnect
//! by themselves after Redis restarts, and they are created lazily so a service
//! can start (and report not-ready) while Redis is down.

use std::time::Duration;

use redis::{
    Client, RedisResult,
    aio::{ConnectionManager, ConnectionManagerConfig},
};

/// Reply timeout of ordinary commands.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens a client for `url` (no I/O yet).
pub fn client(url: &str) -> RedisResult<Client> {
    Client::open(url)
}

fn config(response_timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(response_timeout))
        .set_max_delay(Duration::from_secs(2))
}

/// A shared connection for ordinary commands.
pub fn commands(client: &Client) -> RedisResult<ConnectionManager> {
    client.get_connection_manager_lazy(config(COMMAND_TIMEOUT))
}

/// A connection for blocking reads of up to `block`.
pub fn blocking(client: &Client, block: Duration) -> RedisResult<ConnectionManager> {
    client.get_connection_manager_lazy(config(block + COMMAND_TIMEOUT))
}

/// `PING`, for readiness checks.
pub async fn ping(conn: &mut ConnectionManager) -> RedisResult<()> {
    redis::cmd("PING")
        .query_async::<String>(conn)
        .await
        .map(drop)
}
