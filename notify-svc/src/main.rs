//! `notify-svc`: configuration from environment variables (see `settings.rs`).

use anyhow::Context;
use common::settings::Env;
use notify_svc::Settings;

fn main() -> anyhow::Result<()> {
    Env::list_if_asked(Settings::from_env);
    let settings = Settings::from_env(Env::from_process())?;
    common::runtime::build(settings.common.worker_threads)?.block_on(serve(settings))
}

/// Runs the service until SIGINT or SIGTERM.
async fn serve(settings: Settings) -> anyhow::Result<()> {
    let telemetry = common::telemetry::init(&(&settings.common).into())?;
    if let Err(e) = common::priority::apply(settings.nice) {
        tracing::warn!(error = %e, nice = settings.nice, "could not lower the CPU priority");
    }
    let listener = tokio::net::TcpListener::bind(settings.http_addr)
        .await
        .with_context(|| format!("cannot listen on {}", settings.http_addr))?;
    let result = notify_svc::run(settings, listener, common::shutdown::on_signals()).await;
    telemetry.shutdown().await;
    Ok(result?)
}
