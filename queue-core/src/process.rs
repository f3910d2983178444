//! What the binaries share as processes: the signal that starts a graceful shutdown.

/// Resolves at SIGINT (Ctrl-C) or SIGTERM, whichever comes first; with no SIGTERM handler
/// to be had, at SIGINT alone.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
        let _ = ctrl_c.await;
        return;
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown signal received");
}
