//! `pushrelay-ingress`: the tenant-facing HTTP API.

use anyhow::Context;
use clap::Parser;
use pushrelay_ingress::IngressArgs;
use pushrelay_telemetry::{AdminArgs, Health, LogArgs};
use tokio_util::sync::CancellationToken;

/// Accepts tenants' notifications and subscriptions and writes them to Kafka, answering
/// 202 only after the broker acknowledged. Every flag also reads an environment variable.
#[derive(Debug, Parser)]
#[command(name = "pushrelay-ingress", version)]
struct Cli {
    #[command(flatten)]
    ingress: IngressArgs,
    #[command(flatten)]
    admin: AdminArgs,
    #[command(flatten)]
    log: LogArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    pushrelay_telemetry::init_logging(&cli.log).map_err(anyhow::Error::msg)?;
    let health = Health::new();
    let shutdown = CancellationToken::new();
    let (_, admin) = pushrelay_telemetry::serve_admin(
        cli.admin.admin_addr,
        health.clone(),
        pushrelay_telemetry::metrics_handle(),
        shutdown.clone(),
    )
    .await
    .with_context(|| format!("cannot bind the admin server to {}", cli.admin.admin_addr))?;
    let signals = pushrelay_telemetry::cancel_on_signal(shutdown.clone());
    tokio::spawn(async move {
        signals.await;
        std::process::exit(130);
    });
    let result = pushrelay_ingress::run(cli.ingress, health.clone(), shutdown.clone()).await;
    if let Err(err) = &result {
        health.fail(err.to_string());
    }
    shutdown.cancel();
    let _ = admin.await;
    result.context("ingress failed")
}
