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
            spawn_upkeep(handle.clone());
            handle
        })
        .clone()
}

/// How often histogram samples are folded into their summaries.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The recorder keeps every histogram sample until upkeep folds it into its summary. A
/// `/metrics` scrape runs upkeep, but a relay nobody scrapes would keep every latency
/// sample it ever recorded (measured before this: the delivery stage's resident memory grew
/// ~2 MiB a minute at 1,400 pushes/s). So upkeep also runs on a timer, on a thread of its
/// own (stages and tests may run on any runtime, or none).
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                handle.run_upkeep();
            }
        });
    if let Err(err) = spawned {
        tracing::warn!(error = %err, "cannot start the metrics upkeep thread; only scrapes fold histogram samples");
    }
}

/// Why a service stopped: its own error, or the admin server could not start.
#[derive(Debug)]
pub enum ServiceError<E> {
    /// The admin server could not bind.
    Admin(std::net::SocketAddr, std::io::Error),
    /// The service failed.
    Service(E),
}

impl<E: std::fmt::Display> std::fmt::Display for ServiceError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Admin(addr, err) => write!(f, "cannot bind the admin server to {addr}: {err}"),
            Self::Service(err) => err.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for ServiceError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Admin(_, err) => Some(err),
            Self::Service(err) => Some(err),
        }
    }
}

/// What every stage binary does around its `run`: serves `/metrics`, `/healthz` and
/// `/readyz` on `admin`, cancels the shutdown token on the first SIGTERM/SIGINT (calling
/// `on_second_signal`, typically `std::process::exit`, on the second), runs the service,
/// and marks the process failed when the service fails.
pub async fn run_service<F, Fut, E>(
    admin: &AdminArgs,
    on_second_signal: fn(),
    service: F,
) -> Result<(), ServiceError<E>>
where
    F: FnOnce(Health, tokio_util::sync::CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let health = Health::new();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (_, admin_task) = serve_admin(
        admin.admin_addr,
        health.clone(),
        metrics_handle(),
        shutdown.clone(),
    )
    .await
    .map_err(|err| ServiceError::Admin(admin.admin_addr, err))?;
    let signals = cancel_on_signal(shutdown.clone());
    tokio::spawn(async move {
        signals.await;
        on_second_signal();
    });
    let result = service(health.clone(), shutdown.clone()).await;
    if let Err(err) = &result {
        health.fail(err.to_string());
    }
    shutdown.cancel();
    let _ = admin_task.await;
    result.map_err(ServiceError::Service)
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
