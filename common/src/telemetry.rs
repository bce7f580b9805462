//! Tracing set-up, done once per process.
//!
//! * stdout: one JSON object per line (or human-readable with
//!   `LOG_FORMAT=pretty`), including the fields of every enclosing span, so a
//!   line logged inside a handler carries the `event` span's `correlation_id`,
//!   `event_id`, `event_type` and `stream`;
//! * Loki, when `LOKI_URL` is set: the same events through `tracing-loki`, as
//!   JSON lines with the span fields, in streams labelled `service`, `env` and
//!   `level`. Shipping happens in a background task; call
//!   [`Telemetry::shutdown`] before exiting to flush it.

use tokio::task::JoinHandle;
use tracing_subscriber::{
    EnvFilter, Layer, Registry, layer::SubscriberExt, util::SubscriberInitExt,
};
use url::Url;

use crate::settings::{CommonSettings, LogFormat};

/// What to log, where.
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    /// `service` label.
    pub service: String,
    /// `env` label.
    pub env: String,
    /// Loki base URL (`/loki/api/v1/push` is appended).
    pub loki_url: Option<Url>,
    /// Stdout format.
    pub format: LogFormat,
    /// `EnvFilter` directive.
    pub filter: String,
}

impl From<&CommonSettings> for TelemetrySettings {
    fn from(s: &CommonSettings) -> Self {
        Self {
            service: s.service_name.clone(),
            env: s.app_env.clone(),
            loki_url: s.loki_url.clone(),
            format: s.log_format,
            filter: s.log_filter.clone(),
        }
    }
}

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `RUST_LOG` does not parse.
    #[error("invalid log filter: {0}")]
    Filter(#[from] tracing_subscriber::filter::ParseError),
    /// The Loki layer could not be built.
    #[error("cannot set up Loki shipping: {0}")]
    Loki(#[from] tracing_loki::Error),
    /// A global subscriber was already installed.
    #[error("a tracing subscriber is already installed")]
    AlreadyInstalled(#[from] tracing_subscriber::util::TryInitError),
}

/// Keeps the Loki shipper alive; flush it with [`Telemetry::shutdown`].
#[derive(Default)]
pub struct Telemetry {
    loki: Option<(tracing_loki::BackgroundTaskController, JoinHandle<()>)>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("loki", &self.loki.is_some())
            .finish()
    }
}

impl Telemetry {
    /// Sends what is buffered to Loki (waits at most 3 s).
    pub async fn shutdown(self) {
        if let Some((controller, task)) = self.loki {
            controller.shutdown().await;
            let _ = tokio::time::timeout(std::time::Duration::from_secs(3), task).await;
        }
    }
}

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// Builds the subscriber without installing it; the Loki shipper, if any, is
/// already spawned (so this must run inside a Tokio runtime when Loki is on).
pub fn subscriber<W>(
    s: &TelemetrySettings,
    stdout: W,
) -> Result<(impl tracing::Subscriber + Send + Sync + use<W>, Telemetry), TelemetryError>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(&s.filter)?;
    let mut layers: Vec<BoxedLayer> = vec![match s.format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(stdout)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer().with_writer(stdout).boxed(),
    }];
    let mut telemetry = Telemetry::default();
    if let Some(url) = &s.loki_url {
        let (layer, controller, task) = tracing_loki::builder()
            .label("service", &s.service)?
            .label("env", &s.env)?
            .build_controller_url(url.clone())?;
        layers.push(layer.boxed());
        telemetry.loki = Some((controller, tokio::spawn(task)));
    }
    Ok((Registry::default().with(layers).with(filter), telemetry))
}

/// Installs the global subscriber writing to stdout.
pub fn init(s: &TelemetrySettings) -> Result<Telemetry, TelemetryError> {
    let (subscriber, telemetry) = subscriber(s, std::io::stdout)?;
    subscriber.try_init()?;
    Ok(telemetry)
}
