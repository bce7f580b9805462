//! notify-svc (skeleton: filled in by the order-flow issue).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut env = common::settings::Env::from_process();
    let settings = common::settings::CommonSettings::from_env(&mut env, "notify-svc");
    env.finish()?;
    let telemetry = common::telemetry::init(&(&settings).into())?;
    let shutdown = common::shutdown::on_signals();
    tracing::info!("notify-svc skeleton started; nothing to do yet");
    shutdown.cancelled().await;
    telemetry.shutdown().await;
    Ok(())
}
