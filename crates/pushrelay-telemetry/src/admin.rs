use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::Health;

/// Flags of the admin HTTP server.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// Address of the admin HTTP server (`/metrics`, `/healthz`, `/readyz`).
    #[arg(long, env = "PUSHRELAY_ADMIN_ADDR", default_value = "0.0.0.0:9090")]
    pub admin_addr: SocketAddr,
}

#[derive(Clone)]
struct AdminState {
    health: Health,
    metrics: PrometheusHandle,
}

/// Binds the admin server and serves it until `shutdown` is cancelled.
///
/// Returns the bound address (useful with port 0) and the serving task.
pub async fn serve_admin(
    addr: SocketAddr,
    health: Health,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AdminState { health, metrics });
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(err) = served {
            tracing::error!(error = %err, "admin server failed");
        }
    });
    tracing::info!(addr = %bound, "admin server listening");
    Ok((bound, task))
}

async fn render_metrics(State(state): State<AdminState>) -> impl IntoResponse {
    state.metrics.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn healthz(State(state): State<AdminState>) -> impl IntoResponse {
    match state.health.liveness() {
        None => (
            StatusCode::OK,
            json_body(&serde_json::json!({"status": "ok"})),
        ),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            json_body(&serde_json::json!({"status": "failed", "reason": reason})),
        ),
    }
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    let waiting = state.health.not_ready();
    let failed = state.health.liveness();
    if waiting.is_empty() && failed.is_none() {
        (
            StatusCode::OK,
            json_body(&serde_json::json!({"status": "ready"})),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json_body(&serde_json::json!({
                "status": "not_ready",
                "waiting_for": waiting,
                "failed": failed,
            })),
        )
    }
}

fn json_body(value: &serde_json::Value) -> ([(header::HeaderName, &'static str); 1], String) {
    (
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
}
