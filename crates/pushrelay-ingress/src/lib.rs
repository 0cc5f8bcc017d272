//! The ingress: the tenant-facing HTTP API.
//!
//! `POST /v1/notifications` and `POST`/`DELETE /v1/subscriptions` check syntax only (body
//! schema, a bearer token that is structurally a JWT naming a tenant) and write
//! `MailboxChange` / `SubscriptionChange` records keyed `{tenant}/{mailbox}`. A request is
//! answered 202 only after the broker acknowledged every one of its records; 503 with
//! `Retry-After` when it cannot. Tokens are validated by the auth-coalesce stage.
//!
//! Layout: [`config`], [`request`] (pure), `routes` (handlers), `sink` (Kafka),
//! [`server`] (TCP/TLS).

pub mod config;
mod error;
pub mod request;
mod routes;
pub mod server;
mod sink;

use std::sync::Arc;
use std::time::Duration;

pub use config::IngressArgs;
pub use error::ApiError;
pub use routes::{AppState, router};
pub use sink::RecordSink;

use pushrelay_kafka::{TopicSpec, ensure_topics};
use pushrelay_telemetry::Health;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Why the ingress stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    /// Kafka setup failed.
    #[error(transparent)]
    Kafka(#[from] pushrelay_kafka::Error),
    /// TLS files are unusable.
    #[error(transparent)]
    Tls(#[from] server::TlsError),
    /// The listen address cannot be bound or served.
    #[error("cannot serve on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Binds `args.listen` and serves until `shutdown`.
pub async fn run(
    args: IngressArgs,
    health: Health,
    shutdown: CancellationToken,
) -> Result<(), IngressError> {
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|source| IngressError::Listen {
            addr: args.listen.to_string(),
            source,
        })?;
    serve(args, listener, health, shutdown).await
}

/// Serves on an already bound listener until `shutdown` (tests bind port 0).
pub async fn serve(
    args: IngressArgs,
    listener: TcpListener,
    health: Health,
    shutdown: CancellationToken,
) -> Result<(), IngressError> {
    let broker_ready = health.flag("broker");
    health.mark_started();
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(server::tls_config(cert, key)?),
        _ => None,
    };
    let topics = args.kafka.topics();
    let retention = args.kafka.token_topic_retention();
    ensure_topics(
        &args.kafka,
        &[
            TopicSpec::with_retention(&topics.mailbox_changes, retention),
            TopicSpec::with_retention(&topics.subscription_changes, retention),
        ],
    )
    .await?;
    let sink = Arc::new(RecordSink::new(
        &args.kafka,
        Duration::from_millis(args.ack_timeout_ms),
    )?);
    sink.warm_up(&[
        topics.mailbox_changes.clone(),
        topics.subscription_changes.clone(),
    ])
    .await?;
    tokio::spawn(Arc::clone(&sink).watch_broker(broker_ready, shutdown.clone()));
    let app = router(AppState {
        sink: Arc::clone(&sink),
        topics,
        max_body_bytes: args.max_body_bytes,
        max_notifications: args.max_notifications,
    });
    let addr = listener
        .local_addr()
        .map_or_else(|_| args.listen.to_string(), |a| a.to_string());
    tracing::info!(addr = %addr, tls = tls.is_some(), "ingress listening");
    server::serve(
        listener,
        app,
        tls,
        shutdown,
        Duration::from_secs(args.drain_timeout_secs),
    )
    .await
    .map_err(|source| IngressError::Listen { addr, source })?;
    sink.flush(Duration::from_secs(args.drain_timeout_secs))
        .await;
    tracing::info!("ingress stopped");
    Ok(())
}
