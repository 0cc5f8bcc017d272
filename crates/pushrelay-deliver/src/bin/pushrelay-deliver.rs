//! `pushrelay-deliver`: the delivery stage.

use anyhow::Context;
use clap::Parser;
use pushrelay_deliver::DeliverArgs;
use pushrelay_telemetry::{AdminArgs, LogArgs};

/// mimalloc, as in every relay binary: the stages allocate and free a few small strings
/// per record across threads, which glibc's allocator serves markedly slower.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Sends push requests to APNs (HTTP/2, token auth) and FCM (HTTP v1) and records every
/// push's outcome in `pushrelay.delivery-receipts`. Every flag also reads an environment
/// variable.
#[derive(Debug, Parser)]
#[command(name = "pushrelay-deliver", version)]
struct Cli {
    #[command(flatten)]
    deliver: DeliverArgs,
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
        pushrelay_deliver::run(cli.deliver, health, shutdown)
    })
    .await
    .context("delivery stage failed")
}

/// A second signal: stop draining and exit.
fn exit_at_once() {
    std::process::exit(130);
}
