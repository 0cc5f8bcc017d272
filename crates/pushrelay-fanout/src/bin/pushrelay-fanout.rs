//! `pushrelay-fanout`: the fan-out stage.

use anyhow::Context;
use clap::Parser;
use pushrelay_fanout::FanoutArgs;
use pushrelay_telemetry::{AdminArgs, LogArgs};

/// mimalloc, as in every relay binary: the stages allocate and free a few small strings
/// per record across threads, which glibc's allocator serves markedly slower.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns each unread count into one push request per live subscribed device. Every flag
/// also reads an environment variable.
#[derive(Debug, Parser)]
#[command(name = "pushrelay-fanout", version)]
struct Cli {
    #[command(flatten)]
    fanout: FanoutArgs,
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
        pushrelay_fanout::run(cli.fanout, health, shutdown)
    })
    .await
    .context("fanout stage failed")
}

/// A second signal: stop draining and exit.
fn exit_at_once() {
    std::process::exit(130);
}
