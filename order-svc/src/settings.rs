//! order-svc settings: the common ones plus these.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `PORT` / `HTTP_ADDR` | `8001` / `0.0.0.0:$PORT` | where the REST API listens |
//! | `CPU_NICE` | `0` | normal priority: customers wait on it (`common::priority`) |
//! | `MAX_ITEM_QUANTITY` | `20` | most of one item per order line |
//! | `MAX_ORDER_LINES` | `50` | most lines per order |
//! | `IDEMPOTENCY_TTL_SECS` | `86400` | how long an `Idempotency-Key` and its response are kept |
//! | `MAX_BODY_BYTES` | `16384` | larger request bodies are refused with 413 |
//! | `ORDER_RATE_PER_SEC` | `2` | orders a client may place per second, sustained (429 with `Retry-After` beyond); `0` turns the limit off |
//! | `ORDER_RATE_BURST` | `10` | orders a client may place at once before the rate applies |
//! | `TRACKER_BASE_URL` | empty | base of the `tracking_url` returned with a new order (`<base>/track/<id>#token=<token>`); empty: a relative URL, right behind an Ingress serving the page on the same host (`make run` sets `http://127.0.0.1:8003`) |
//! | `ADMIN_TOKEN` / `ADMIN_TOKEN_FILE` | unset | the bearer token of the admin API (`/api/v1/admin/...`), or a file holding it (Kubernetes Secrets); unset: every admin request is refused (401) |
//! | `CORS_ALLOWED_ORIGINS` | empty | browser origins allowed to call cross-origin, comma-separated; empty: same-origin only (never `*` by default) |
//! | `TRUST_FORWARDED_FOR` | `false` | take the client address (rate limits) from `X-Forwarded-For`; only behind a proxy that sets it |

use std::net::SocketAddr;

use common::settings::{
    CommonSettings, EdgeSettings, Env, Secret, SettingsError, http_addr, secret,
};

/// Everything order-svc reads at start-up.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Shared settings.
    pub common: CommonSettings,
    /// Listen address.
    pub http_addr: SocketAddr,
    /// Nice value of the process (`CPU_NICE`, see `common::priority`).
    pub nice: i32,
    /// Validation limits.
    pub limits: Limits,
    /// CORS and client addresses.
    pub edge: EdgeSettings,
    /// Lifetime of idempotency keys.
    pub idempotency_ttl: std::time::Duration,
    /// The per-client limit on order creation.
    pub order_rate: OrderRate,
    /// Base of tracking URLs (may be empty: relative).
    pub tracker_base_url: String,
    /// The admin API's bearer token (`None`: the admin API refuses everything).
    pub admin_token: Option<Secret>,
}

/// How many orders one client may place: `burst` at once, then `per_sec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderRate {
    /// Sustained orders per second (0: no limit).
    pub per_sec: u32,
    /// Orders at once.
    pub burst: u32,
}

/// Input limits that keep requests sane.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most of one item per line.
    pub max_quantity: u32,
    /// Most lines per order.
    pub max_lines: usize,
    /// Largest request body.
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_quantity: 20,
            max_lines: 50,
            max_body_bytes: 16 * 1024,
        }
    }
}

impl Settings {
    /// Reads the environment through `env`.
    pub fn from_env(mut env: Env) -> Result<Self, SettingsError> {
        let common = CommonSettings::from_env(&mut env, "order-svc");
        let d = Limits::default();
        let limits = Limits {
            max_quantity: env.parse("MAX_ITEM_QUANTITY", d.max_quantity),
            max_lines: env.parse("MAX_ORDER_LINES", d.max_lines),
            max_body_bytes: env.parse("MAX_BODY_BYTES", d.max_body_bytes),
        };
        env.check(
            limits.max_body_bytes >= 1024,
            "MAX_BODY_BYTES must be at least 1024",
        );
        let order_rate = OrderRate {
            per_sec: env.parse("ORDER_RATE_PER_SEC", 2),
            burst: env.parse("ORDER_RATE_BURST", 10),
        };
        env.check(order_rate.burst >= 1, "ORDER_RATE_BURST must be at least 1");
        let admin_token = secret(&mut env, "ADMIN_TOKEN").filter(|t| !t.is_empty());
        env.check(
            admin_token.as_ref().is_none_or(|t| t.expose().len() >= 16),
            "ADMIN_TOKEN must be at least 16 characters (e.g. openssl rand -hex 24)",
        );
        env.check(
            limits.max_quantity >= 1,
            "MAX_ITEM_QUANTITY must be at least 1",
        );
        env.check(limits.max_lines >= 1, "MAX_ORDER_LINES must be at least 1");
        let s = Self {
            http_addr: http_addr(&mut env, 8001),
            nice: common::priority::from_env(&mut env, 0),
            edge: EdgeSettings::from_env(&mut env),
            order_rate,
            tracker_base_url: env
                .string("TRACKER_BASE_URL", "")
                .trim_end_matches('/')
                .to_owned(),
            admin_token,
            idempotency_ttl: std::time::Duration::from_secs(
                env.parse("IDEMPOTENCY_TTL_SECS", 86_400),
            ),
            common,
            limits,
        };
        env.finish()?;
        Ok(s)
    }
}
