//! `order-svc` serves the REST API; `order-svc seed-menu` seeds the menu.
//! Configuration comes from environment variables (see `settings.rs`).

use anyhow::Context;
use clap::{Parser, Subcommand};
use common::settings::Env;
use order_svc::Settings;

#[derive(Parser)]
#[command(
    version,
    about = "foodchain order service: menu, order creation, order lookup"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the REST API and the consumers (the default).
    Serve,
    /// Insert the shipped menu's missing items (idempotent), then exit.
    SeedMenu,
}

fn main() -> anyhow::Result<()> {
    Env::list_if_asked(Settings::from_env);
    let cli = Cli::parse();
    let settings = Settings::from_env(Env::from_process())?;
    common::runtime::build(settings.common.worker_threads)?.block_on(serve(cli, settings))
}

/// Runs the command: the service until SIGINT or SIGTERM, or the seeding.
async fn serve(cli: Cli, settings: Settings) -> anyhow::Result<()> {
    let telemetry = common::telemetry::init(&(&settings.common).into())?;
    if let Err(e) = common::priority::apply(settings.nice) {
        tracing::warn!(error = %e, nice = settings.nice, "could not lower the CPU priority");
    }
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let listener = tokio::net::TcpListener::bind(settings.http_addr)
                .await
                .with_context(|| format!("cannot listen on {}", settings.http_addr))?;
            order_svc::run(settings, listener, common::shutdown::on_signals())
                .await
                .map_err(Into::into)
        }
        Command::SeedMenu => order_svc::seed_menu(&settings).await.map(|n| {
            tracing::info!(inserted = n, "menu seeded");
        }),
    };
    telemetry.shutdown().await;
    result
}
