//! Tenants that publish their keys at a JWKS metadata URL, against a local HTTP server:
//! one fetch at a time per URL, a refetch on an unknown key at most once per cooldown,
//! stale keys served while the endpoint fails.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use base64::Engine;
use pushrelay_auth::{
    AuthConfig, Authenticator, JwksConfig, Reason, SigningKey, TenantRegistry, mint_token,
};
use pushrelay_proto::v1;
use serde_json::{Map, Value, json};

#[derive(Clone, Default)]
struct Endpoint {
    hits: Arc<AtomicUsize>,
    body: Arc<Mutex<Option<String>>>,
}

async fn serve_jwks(State(endpoint): State<Endpoint>) -> (StatusCode, String) {
    endpoint.hits.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    match endpoint.body.lock().expect("lock").clone() {
        Some(body) => (StatusCode::OK, body),
        None => (StatusCode::SERVICE_UNAVAILABLE, "down".into()),
    }
}

async fn start_endpoint() -> (String, Endpoint) {
    let endpoint = Endpoint::default();
    let app = Router::new()
        .route("/jwks.json", get(serve_jwks))
        .with_state(endpoint.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/jwks.json"), endpoint)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

struct Server {
    key: SigningKey,
    jwks: String,
}

fn server_key(kid: &str) -> Server {
    let key = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .expect("rsa");
    let cert = rcgen::CertificateParams::new(vec!["jwks.example".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let x5c = base64::engine::general_purpose::STANDARD.encode(cert.der());
    Server {
        key: SigningKey::from_pkcs8(&key.serialize_der()).expect("pkcs8"),
        jwks: json!({"keys": [{"kty": "RSA", "use": "sig", "kid": kid, "x5c": [x5c]}]}).to_string(),
    }
}

fn token(key: &SigningKey, kid: &str, subject: usize) -> String {
    let mut header = Map::new();
    header.insert("kid".into(), Value::String(kid.to_owned()));
    let claims = json!({
        "tid": "jwks.example", "iss": "sts", "aud": "pushrelay",
        "nbf": now() - 60, "exp": now() + 600, "sub": subject,
    });
    mint_token(key, "RS256", &header, &claims).expect("mint")
}

fn registry(url: &str) -> Arc<TenantRegistry> {
    let registry = Arc::new(TenantRegistry::new());
    let record = v1::Tenant {
        id: "jwks.example".into(),
        enabled: true,
        issuer: "sts".into(),
        metadata_url: url.to_owned(),
        ..Default::default()
    };
    registry
        .apply("jwks.example", Some(&record))
        .expect("apply");
    registry
}

fn config(cooldown: Duration, refresh: Duration) -> AuthConfig {
    AuthConfig {
        jwks: JwksConfig {
            cooldown,
            refresh,
            ..JwksConfig::default()
        },
        ..AuthConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_uses_share_one_fetch_and_unknown_kids_wait_for_the_cooldown() {
    let (url, endpoint) = start_endpoint().await;
    let server = server_key("k1");
    *endpoint.body.lock().expect("lock") = Some(server.jwks.clone());
    let auth = Arc::new(Authenticator::new(
        registry(&url),
        config(Duration::from_secs(2), Duration::from_secs(3600)),
    ));
    let key = Arc::new(server.key);
    let mut tasks = Vec::new();
    for i in 0..10 {
        let (auth, key) = (Arc::clone(&auth), Arc::clone(&key));
        tasks.push(tokio::spawn(async move {
            auth.authenticate(&token(&key, "k1", i)).await
        }));
    }
    for task in tasks {
        let result = task.await.expect("task");
        assert_eq!(
            result.map(|a| a.tenant.to_string()),
            Ok("jwks.example".to_owned())
        );
    }
    assert_eq!(
        endpoint.hits.load(Ordering::SeqCst),
        1,
        "one fetch for ten concurrent first uses"
    );

    // An unknown kid inside the cooldown does not refetch.
    let rejected = auth
        .authenticate(&token(&key, "k2", 100))
        .await
        .expect_err("unknown");
    assert_eq!(rejected.reason, Reason::UnknownKey);
    assert_eq!(endpoint.hits.load(Ordering::SeqCst), 1);

    // After the cooldown it refetches once, and finds the rotated key.
    let rotated = server_key("k2");
    *endpoint.body.lock().expect("lock") = Some(rotated.jwks.clone());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(
        auth.authenticate(&token(&rotated.key, "k2", 101))
            .await
            .is_ok()
    );
    assert_eq!(endpoint.hits.load(Ordering::SeqCst), 2);
    let _ = auth.authenticate(&token(&rotated.key, "k3", 102)).await;
    assert_eq!(
        endpoint.hits.load(Ordering::SeqCst),
        2,
        "still inside the new cooldown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_keys_are_served_while_the_endpoint_fails() {
    let (url, endpoint) = start_endpoint().await;
    let server = server_key("k1");
    *endpoint.body.lock().expect("lock") = Some(server.jwks.clone());
    let auth = Authenticator::new(
        registry(&url),
        config(Duration::from_millis(500), Duration::from_millis(500)),
    );
    assert!(
        auth.authenticate(&token(&server.key, "k1", 1))
            .await
            .is_ok()
    );
    *endpoint.body.lock().expect("lock") = None;
    tokio::time::sleep(Duration::from_millis(600)).await;
    // The keys are old enough to refresh; the refresh fails; the old keys still verify.
    assert!(
        auth.authenticate(&token(&server.key, "k1", 2))
            .await
            .is_ok()
    );
    assert_eq!(
        endpoint.hits.load(Ordering::SeqCst),
        2,
        "a refresh was attempted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_never_answered_gives_metadata_unavailable() {
    let (url, endpoint) = start_endpoint().await;
    let server = server_key("k1");
    let auth = Authenticator::new(registry(&url), AuthConfig::default());
    let rejected = auth
        .authenticate(&token(&server.key, "k1", 1))
        .await
        .expect_err("down");
    assert_eq!(rejected.reason.code(), "metadata_unavailable");
    assert!(
        rejected.reason.to_string().contains("503"),
        "{}",
        rejected.reason
    );
    assert_eq!(endpoint.hits.load(Ordering::SeqCst), 1);
}

/// RFC 8725 §3.10: key URLs in a token are never followed. An attacker's token names its
/// own JWKS (`jku`), certificate (`x5u`) and embedded key (`jwk`), all served by a local
/// endpoint: the token is refused and the endpoint never sees a request, both for a tenant
/// with a registered certificate and for one with its own (different) metadata URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_urls_in_tokens_are_never_fetched() {
    let (attacker_url, attacker) = start_endpoint().await;
    let evil = server_key("evil");
    *attacker.body.lock().expect("lock") = Some(evil.jwks.clone());
    let (tenant_url, tenant_endpoint) = start_endpoint().await;
    *tenant_endpoint.body.lock().expect("lock") = Some(server_key("real").jwks);

    let forged = |tid: &str| {
        let mut header = Map::new();
        header.insert("kid".into(), json!("evil"));
        header.insert("jku".into(), json!(attacker_url));
        header.insert(
            "x5u".into(),
            json!(attacker_url.replace("jwks.json", "evil.pem")),
        );
        header.insert(
            "jwk".into(),
            json!({"kty": "RSA", "kid": "evil", "n": "AQAB", "e": "AQAB"}),
        );
        let claims = json!({
            "tid": tid, "iss": "sts", "aud": "pushrelay",
            "nbf": now() - 60, "exp": now() + 600,
        });
        mint_token(&evil.key, "RS256", &header, &claims).expect("mint")
    };

    // A tenant whose keys come from its own metadata URL.
    let auth = Authenticator::new(
        registry(&tenant_url),
        config(Duration::from_secs(60), Duration::from_secs(3600)),
    );
    let refused = auth
        .authenticate(&forged("jwks.example"))
        .await
        .expect_err("a forged token is refused");
    assert_eq!(refused.reason, Reason::UnknownKey, "{refused:?}");

    // A tenant with a registered certificate only.
    let cert_key =
        rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            .expect("rsa");
    let cert = rcgen::CertificateParams::new(vec!["cert.example".to_owned()])
        .expect("params")
        .self_signed(&cert_key)
        .expect("cert");
    let registry = Arc::new(TenantRegistry::new());
    let record = v1::Tenant {
        id: "cert.example".into(),
        enabled: true,
        issuer: "sts".into(),
        keys: vec![
            pushrelay_auth::KeyCredential::from_certificate_der(cert.der())
                .expect("credential")
                .to_proto(),
        ],
        ..Default::default()
    };
    registry
        .apply("cert.example", Some(&record))
        .expect("apply");
    let auth = Authenticator::new(registry, AuthConfig::default());
    assert!(auth.authenticate(&forged("cert.example")).await.is_err());

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        attacker.hits.load(Ordering::SeqCst),
        0,
        "no request to a URL named in a token"
    );
}
