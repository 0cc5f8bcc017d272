//! `pushrelay-ingress`: the tenant-facing HTTP API.

use anyhow::Context;
use clap::Parser;
use pushrelay_ingress::IngressArgs;
use pushrelay_telemetry::{AdminArgs, LogArgs};

/// mimalloc, as in every relay binary: the stages allocate and free a few small strings
/// per record across threads, which glibc's allocator serves markedly slower.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    pushrelay_telemetry::run_service(&cli.admin, exit_at_once, |health, shutdown| {
        pushrelay_ingress::run(cli.ingress, health, shutdown)
    })
    .await
    .context("ingress failed")
}

/// A second signal: stop draining and exit.
fn exit_at_once() {
    std::process::exit(130);
}
