//! delivery-svc settings: the common ones plus these.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `PORT` / `HTTP_ADDR` | `8002` / `0.0.0.0:$PORT` | where the HTTP API listens |
//! | `CPU_NICE` | `0` | normal priority; 1–19 makes the asynchronous work behind an order yield the CPU to order-svc and notify-svc on a shared host (`common::priority`) |

use std::net::SocketAddr;

use common::settings::{CommonSettings, Env, SettingsError, http_addr};

/// Everything delivery-svc reads at start-up.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Shared settings.
    pub common: CommonSettings,
    /// Listen address.
    pub http_addr: SocketAddr,
    /// Nice value of the process (`CPU_NICE`, see `common::priority`).
    pub nice: i32,
}

impl Settings {
    /// Reads the environment through `env`.
    pub fn from_env(mut env: Env) -> Result<Self, SettingsError> {
        let common = CommonSettings::from_env(&mut env, "delivery-svc");
        let s = Self {
            common,
            http_addr: http_addr(&mut env, 8002),
            nice: common::priority::from_env(&mut env, 0),
        };
        env.finish()?;
        Ok(s)
    }
}
