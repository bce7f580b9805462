//! delivery-svc settings: the common ones plus `PORT` / `HTTP_ADDR`
//! (default `8002` / `0.0.0.0:$PORT`).

use std::net::SocketAddr;

use common::settings::{CommonSettings, Env, SettingsError, http_addr};

/// Everything delivery-svc reads at start-up.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Shared settings.
    pub common: CommonSettings,
    /// Listen address.
    pub http_addr: SocketAddr,
}

impl Settings {
    /// Reads the environment through `env`.
    pub fn from_env(mut env: Env) -> Result<Self, SettingsError> {
        let common = CommonSettings::from_env(&mut env, "delivery-svc");
        let s = Self {
            common,
            http_addr: http_addr(&mut env, 8002),
        };
        env.finish()?;
        Ok(s)
    }
}
