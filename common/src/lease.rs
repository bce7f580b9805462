//! A lease in Redis: one holder at a time, lost by a holder that stops
//! renewing it.
//!
//! The key holds the holder's name with a TTL. Taking it is `SET NX PX`;
//! renewing and releasing are scripts that act only if the key still names
//! this holder, so a holder whose lease expired (and was taken by another)
//! can neither extend nor delete the new holder's lease. Holders renew at a
//! third of the TTL, so one missed renewal does not lose it.
//!
//! Used by the outbox relay (one active relay per service) and by the
//! partition assignment (one reader per partition and service, see
//! [`crate::partition`]).

use std::time::Duration;

use contract::redis::Conn;
use redis::Script;

static RENEW: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
",
    )
});

static RELEASE: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
",
    )
});

/// One lease key as seen by one would-be holder.
#[derive(Debug, Clone)]
pub struct Lease {
    key: String,
    holder: String,
    ttl: Duration,
}

impl Lease {
    /// The lease at `key`, taken and renewed as `holder` for `ttl`.
    pub fn new(key: String, holder: &str, ttl: Duration) -> Self {
        Self {
            key,
            holder: holder.to_owned(),
            ttl,
        }
    }

    /// Its Redis key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The holder name it is taken as.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// How long it lasts without a renewal.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// Takes it if nobody holds it; `true` when this call took it.
    pub async fn acquire(&self, conn: &mut Conn) -> redis::RedisResult<bool> {
        let taken: Option<String> = redis::cmd("SET")
            .arg(&self.key)
            .arg(&self.holder)
            .arg("NX")
            .arg("PX")
            .arg(self.ttl_ms())
            .query_async(conn)
            .await?;
        Ok(taken.is_some())
    }

    /// Extends it for another TTL; `false` when this holder no longer has it.
    pub async fn renew(&self, conn: &mut Conn) -> redis::RedisResult<bool> {
        let renewed: i64 = RENEW
            .key(&self.key)
            .arg(&self.holder)
            .arg(self.ttl_ms())
            .invoke_async(conn)
            .await?;
        Ok(renewed == 1)
    }

    /// Renews it when held, else tries to take it; `true` while held.
    pub async fn hold(&self, conn: &mut Conn, held: bool) -> redis::RedisResult<bool> {
        if held && self.renew(conn).await? {
            return Ok(true);
        }
        self.acquire(conn).await
    }

    /// Whether this holder has it right now (one `GET`).
    pub async fn is_held(&self, conn: &mut Conn) -> redis::RedisResult<bool> {
        let holder: Option<String> = redis::cmd("GET").arg(&self.key).query_async(conn).await?;
        Ok(holder.as_deref() == Some(self.holder.as_str()))
    }

    /// Gives it up if this holder has it (so that another takes it at once
    /// instead of after the TTL).
    pub async fn release(&self, conn: &mut Conn) -> redis::RedisResult<bool> {
        let released: i64 = RELEASE
            .key(&self.key)
            .arg(&self.holder)
            .invoke_async(conn)
            .await?;
        Ok(released == 1)
    }
}
