//! `pushrelay-auth`: the auth-and-coalesce stage.

use anyhow::Context;
use clap::Parser;
use pushrelay_auth_coalesce::StageArgs;
use pushrelay_telemetry::{AdminArgs, LogArgs};

/// mimalloc, as in every relay binary: the stages allocate and free a few small strings
/// per record across threads, which glibc's allocator serves markedly slower.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Validates tenants' S2S tokens on `mailbox-changes` and emits debounced unread counts
/// to `unread-counts`. Every flag also reads an environment variable (shown in brackets).
#[derive(Debug, Parser)]
#[command(name = "pushrelay-auth", version)]
struct Cli {
    #[command(flatten)]
    stage: StageArgs,
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
        pushrelay_auth_coalesce::run(cli.stage, health, shutdown)
    })
    .await
    .context("auth-coalesce stage failed")
}

/// A second signal: stop draining and exit.
fn exit_at_once() {
    std::process::exit(130);
}
