//! notify-svc settings: the common ones plus these.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `PORT` / `HTTP_ADDR` | `8003` | WebSocket, timeline API and the tracker page |
//! | `CPU_NICE` | `0` | normal priority: customers wait on it (`common::priority`) |
//! | `WS_PING_INTERVAL_MS` | `20000` | how often each socket is pinged |
//! | `WS_PONG_TIMEOUT_MS` | `10000` | a peer that has not answered a ping by then is dropped |
//! | `TIMELINE_LINGER_MS` | `10` | how long the timeline writer waits after an append for more to write with it (one write command for all), until it holds 16 runs; the live pushes do not wait for it |
//! | `RECENT_EVENTS_TTL_SECS` | `120` | how long this replica remembers the events it saw live (closes the gap between a snapshot and the live feed) |
//! | `CORS_ALLOWED_ORIGINS` | empty | browser origins allowed to read timelines cross-origin (comma-separated); empty: same-origin only |
//! | `TRUST_FORWARDED_FOR` | `false` | take the client address (session caps) from `X-Forwarded-For`; only behind a proxy that sets it |
//! | `WS_MAX_SESSIONS_PER_CLIENT` | `20` | open trackers one client address may hold; more are refused with 429 |
//! | `WS_MAX_FRAME_BYTES` | `4096` | largest frame or message a client may send (clients send nothing but pongs and closes) |
//! | `WS_IDLE_TIMEOUT_SECS` | `3600` | a tracker that received no update for this long is closed (1000, "idle"); it reconnects if it still cares |
//! | `ORDER_API_URL` | unset = same origin | base URL (`http(s)://host[:port][/prefix]`) of order-svc for the web app and the operator console (menu, orders, admin overview); leave it unset behind an ingress serving both services on one host (`make run` sets `http://127.0.0.1:8001`); its origin is the only other one the pages' Content-Security-Policy lets them connect to |
//! | `CURRENCY` | `EUR` | ISO 4217 code the web app shows prices in (the API's prices are integer cents of it: a currency with two decimals) |

use std::{net::SocketAddr, time::Duration};

use common::settings::{CommonSettings, EdgeSettings, Env, SettingsError, http_addr};

/// Everything notify-svc reads at start-up.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Shared settings.
    pub common: CommonSettings,
    /// Listen address.
    pub http_addr: SocketAddr,
    /// Nice value of the process (`CPU_NICE`, see `common::priority`).
    pub nice: i32,
    /// Ping period of each socket.
    pub ping_interval: Duration,
    /// Longest wait for a pong.
    pub pong_timeout: Duration,
    /// Memory of live events per order.
    pub recent_ttl: Duration,
    /// Wait of the timeline writer for more appends.
    pub timeline_linger: Duration,
    /// Order API base URL for the pages (empty: same origin), without a
    /// trailing `/`.
    pub order_api_url: String,
    /// Currency code of the prices the web app shows.
    pub currency: String,
    /// CORS and client addresses.
    pub edge: EdgeSettings,
    /// WebSocket abuse limits.
    pub ws_limits: WsLimits,
}

/// What one client may do with WebSockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsLimits {
    /// Open sessions per client address.
    pub max_sessions_per_client: usize,
    /// Largest frame / message a client may send.
    pub max_frame_bytes: usize,
    /// A session without an update for this long is closed.
    pub idle_timeout: Duration,
}

impl Settings {
    /// Reads the environment through `env`.
    pub fn from_env(mut env: Env) -> Result<Self, SettingsError> {
        let common = CommonSettings::from_env(&mut env, "notify-svc");
        let s = Self {
            common,
            http_addr: http_addr(&mut env, 8003),
            nice: common::priority::from_env(&mut env, 0),
            ping_interval: env.millis("WS_PING_INTERVAL_MS", 20_000),
            pong_timeout: env.millis("WS_PONG_TIMEOUT_MS", 10_000),
            recent_ttl: Duration::from_secs(env.parse("RECENT_EVENTS_TTL_SECS", 120)),
            timeline_linger: env.millis("TIMELINE_LINGER_MS", 10),
            order_api_url: env
                .raw("ORDER_API_URL")
                .map(|u| u.trim().trim_end_matches('/').to_owned())
                .unwrap_or_default(),
            currency: env.string("CURRENCY", "EUR").trim().to_owned(),
            edge: EdgeSettings::from_env(&mut env),
            ws_limits: WsLimits {
                max_sessions_per_client: env.parse("WS_MAX_SESSIONS_PER_CLIENT", 20),
                max_frame_bytes: env.parse("WS_MAX_FRAME_BYTES", 4096),
                idle_timeout: Duration::from_secs(env.parse("WS_IDLE_TIMEOUT_SECS", 3600)),
            },
        };
        env.check(
            s.ws_limits.max_sessions_per_client >= 1,
            "WS_MAX_SESSIONS_PER_CLIENT must be at least 1",
        );
        env.check(
            s.ws_limits.max_frame_bytes >= 256,
            "WS_MAX_FRAME_BYTES must be at least 256",
        );
        env.check(
            !s.ws_limits.idle_timeout.is_zero(),
            "WS_IDLE_TIMEOUT_SECS must be at least 1",
        );
        env.check(
            s.order_api_url.is_empty() || crate::web::origin_of(&s.order_api_url).is_some(),
            format!(
                "ORDER_API_URL: `{}` is not an http(s) URL (scheme://host[:port][/prefix]); leave it unset for same origin",
                s.order_api_url
            ),
        );
        env.check(
            s.currency.len() == 3 && s.currency.bytes().all(|b| b.is_ascii_uppercase()),
            format!(
                "CURRENCY: `{}` is not an ISO 4217 code (three capital letters, e.g. EUR)",
                s.currency
            ),
        );
        env.check(
            !s.ping_interval.is_zero(),
            "WS_PING_INTERVAL_MS must be at least 1",
        );
        env.check(
            !s.pong_timeout.is_zero(),
            "WS_PONG_TIMEOUT_MS must be at least 1",
        );
        env.finish()?;
        Ok(s)
    }
}
