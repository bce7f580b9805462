//! One cancellation token carries shutdown to every task.
//!
//! `main` creates it with [`on_signals`]; everything long-running takes a
//! clone and stops when it is cancelled (HTTP servers stop accepting and let
//! open requests finish, consumer loops stop reading and drain). Tests cancel
//! the token themselves instead of sending signals.

use tokio_util::sync::CancellationToken;
use tracing::info;

/// A token cancelled on the first SIGINT (Ctrl-C) or SIGTERM.
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let signal = wait_for_signal().await;
        info!(signal, "shutdown requested; draining");
        cancel.cancel();
    });
    token
}

async fn wait_for_signal() -> &'static str {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => "SIGINT",
        () = term => "SIGTERM",
    }
}
