//! Telemetry shared by every stage: structured logs, the Prometheus recorder, the admin
//! HTTP server (`/metrics`, `/healthz`, `/readyz`) and shutdown signals.

mod admin;
mod health;
mod logging;

pub use admin::{AdminArgs, serve_admin};
pub use health::{Health, ReadyFlag};
pub use logging::{LogArgs, LogFormat, init_logging};

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// The process-wide Prometheus recorder, installed on first use.
///
/// Several stages may run in one process (the dev binary, tests); they share it.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; then ours stays unused
            // and /metrics shows nothing, which the log says.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics stays empty");
            }
            handle
        })
        .clone()
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT, then resolves on the second one:
/// a binary spawns `async { cancel_on_signal(token).await; std::process::exit(130) }` so a
/// second signal stops a drain that takes too long.
pub async fn cancel_on_signal(shutdown: tokio_util::sync::CancellationToken) {
    shutdown_signal().await;
    tracing::info!("shutdown requested: draining (a second signal exits at once)");
    shutdown.cancel();
    shutdown_signal().await;
    tracing::warn!("second signal: exiting without draining");
}

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM; only Ctrl-C stops");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
