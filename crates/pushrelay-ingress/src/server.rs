//! Serving the router over plain TCP (HTTP/1.1 and h2c) or TLS (HTTP/1.1 and HTTP/2 by ALPN).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_util::sync::CancellationToken;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file could not be read.
    #[error("cannot read the TLS certificate chain {path}: {detail}")]
    Certificate {
        /// The file.
        path: String,
        /// Why.
        detail: String,
    },
    /// The key file could not be read.
    #[error("cannot read the TLS private key {path}: {detail}")]
    Key {
        /// The file.
        path: String,
        /// Why.
        detail: String,
    },
    /// rustls refused the pair.
    #[error("the TLS certificate and key do not form a usable pair: {0}")]
    Config(String),
}

/// A rustls server configuration from PEM files, offering HTTP/2 and HTTP/1.1.
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|err| TlsError::Certificate {
            path: cert.display().to_string(),
            detail: err.to_string(),
        })?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|err| TlsError::Key {
        path: key.display().to_string(),
        detail: err.to_string(),
    })?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| TlsError::Config(err.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|err| TlsError::Config(err.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `app` on `listener` until `shutdown`, then lets open connections finish for up
/// to `drain`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<ServerConfig>>,
    shutdown: CancellationToken,
    drain: Duration,
) -> std::io::Result<()> {
    let acceptor = tls.map(TlsAcceptor::from);
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
        let service = TowerToHyperService::new(app.clone());
        let acceptor = acceptor.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            // Serve one connection; on shutdown ask it to finish its requests and close.
            macro_rules! drive {
                ($conn:expr) => {{
                    let mut conn = std::pin::pin!($conn);
                    tokio::select! {
                        result = conn.as_mut() => result,
                        _ = shutdown.cancelled() => {
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    }
                }};
            }
            let builder = Builder::new(TokioExecutor::new());
            let result = match acceptor {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(tls) => drive!(builder.serve_connection(TokioIo::new(tls), service)),
                    Err(err) => {
                        tracing::debug!(%peer, error = %err, "TLS handshake failed");
                        return;
                    }
                },
                None => drive!(builder.serve_connection(TokioIo::new(stream), service)),
            };
            if let Err(err) = result {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
        });
    }
    let drained = tokio::time::timeout(drain, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("open connections did not finish within the drain timeout");
        connections.abort_all();
    }
    Ok(())
}
