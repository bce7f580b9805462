//! order-svc settings: the common ones plus these.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `PORT` / `HTTP_ADDR` | `8001` / `0.0.0.0:$PORT` | where the REST API listens |
//! | `MAX_ITEM_QUANTITY` | `20` | most of one item per order line |
//! | `MAX_ORDER_LINES` | `50` | most lines per order |
//! | `CORS_ALLOW_ORIGIN` | `*` | origins allowed to call the API from a browser (comma-separated, or `*`) |
//! | `IDEMPOTENCY_TTL_SECS` | `86400` | how long an `Idempotency-Key` and its response are kept |

use std::net::SocketAddr;

use common::settings::{CommonSettings, Env, SettingsError, http_addr};

/// Everything order-svc reads at start-up.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Shared settings.
    pub common: CommonSettings,
    /// Listen address.
    pub http_addr: SocketAddr,
    /// Validation limits.
    pub limits: Limits,
    /// Allowed browser origins (`*` for any).
    pub cors_allow_origin: String,
    /// Lifetime of idempotency keys.
    pub idempotency_ttl: std::time::Duration,
}

/// Input limits that keep requests sane.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most of one item per line.
    pub max_quantity: u32,
    /// Most lines per order.
    pub max_lines: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_quantity: 20,
            max_lines: 50,
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
        };
        env.check(
            limits.max_quantity >= 1,
            "MAX_ITEM_QUANTITY must be at least 1",
        );
        env.check(limits.max_lines >= 1, "MAX_ORDER_LINES must be at least 1");
        let s = Self {
            http_addr: http_addr(&mut env, 8001),
            cors_allow_origin: env.string("CORS_ALLOW_ORIGIN", "*"),
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
