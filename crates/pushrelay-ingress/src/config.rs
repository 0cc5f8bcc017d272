//! Flags of the ingress (every one with an environment fallback).

use std::net::SocketAddr;
use std::path::PathBuf;

use pushrelay_kafka::KafkaArgs;

/// `pushrelay-ingress`: the tenant-facing HTTP API.
#[derive(Debug, Clone, clap::Args)]
pub struct IngressArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Address of the public API.
    #[arg(long, env = "PUSHRELAY_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// TLS certificate chain (PEM). With `--tls-key`, the API speaks HTTPS (HTTP/2 and
    /// HTTP/1.1 by ALPN); without both, plain HTTP/1.1 and h2c.
    #[arg(long, env = "PUSHRELAY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "PUSHRELAY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Largest request body accepted, bytes (larger: 413 without reading it).
    #[arg(long, env = "PUSHRELAY_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Most notifications accepted in one request.
    #[arg(long, env = "PUSHRELAY_MAX_NOTIFICATIONS", default_value_t = 1000)]
    pub max_notifications: usize,

    /// How long a request waits for the broker's acknowledgement before answering 503,
    /// milliseconds.
    #[arg(long, env = "PUSHRELAY_ACK_TIMEOUT_MS", default_value_t = 800)]
    pub ack_timeout_ms: u64,

    /// On shutdown, how long open connections may take to finish, seconds.
    #[arg(long, env = "PUSHRELAY_DRAIN_TIMEOUT_SECS", default_value_t = 5)]
    pub drain_timeout_secs: u64,
}

impl IngressArgs {
    /// Defaults for a broker (tests, the dev binary).
    pub fn new(kafka: KafkaArgs, listen: SocketAddr) -> Self {
        Self {
            kafka,
            listen,
            tls_cert: None,
            tls_key: None,
            max_body_bytes: 1024 * 1024,
            max_notifications: 1000,
            ack_timeout_ms: 800,
            drain_timeout_secs: 5,
        }
    }
}
