//! TLS for fake provider servers: a CA generated per run and a `localhost` certificate it
//! signed, served by the ingress's own TLS server code.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use tokio_util::sync::CancellationToken;

/// A CA and a `localhost` server certificate it signed, as PEM files in a temp folder.
#[derive(Debug)]
pub struct Pki {
    dir: std::path::PathBuf,
    /// The CA certificate, PEM.
    pub ca_pem: String,
}

impl Pki {
    /// Generates the CA and the server certificate under a temp folder named after `name`.
    pub fn new(name: &str) -> Self {
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ca key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "pushrelay test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("server cert");
        let dir = std::env::temp_dir().join(format!("pushrelay-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("cert.pem"), cert.pem()).expect("cert");
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).expect("key");
        Self {
            dir,
            ca_pem: ca_cert.pem(),
        }
    }

    /// Serves `app` over TLS on a free loopback port; cancel the token to stop it.
    pub async fn serve(&self, app: Router) -> (SocketAddr, CancellationToken) {
        let tls = pushrelay_ingress::server::tls_config(
            &self.dir.join("cert.pem"),
            &self.dir.join("key.pem"),
        )
        .expect("tls");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        tokio::spawn(pushrelay_ingress::server::serve(
            listener,
            app,
            Some(tls),
            shutdown.clone(),
            Duration::from_secs(1),
        ));
        (addr, shutdown)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Pki {
    /// The CA certificate as a file (the stage's `--provider-ca-file`).
    pub fn ca_file(&self) -> std::path::PathBuf {
        let path = self.dir.join("ca.pem");
        std::fs::write(&path, &self.ca_pem).expect("ca file");
        path
    }

    /// A file in the folder (removed with it).
    pub fn write(&self, name: &str, contents: &[u8]) -> std::path::PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, contents).expect("write");
        path
    }
}
