//! Tenants that publish their keys at a JWKS metadata URL, against a local HTTP server:
//! one fetch at a time per URL, a refetch on an unknown key at most once per cooldown,
//! stale keys served while the endpoint fails, is slow or answers garbage, and a flood of
//! random `kid`s that costs the endpoint one fetch per cooldown.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use pushrelay_auth::{
    AuthConfig, Authenticator, JwksConfig, Reason, SigningKey, TenantRegistry, mint_token,
};
use pushrelay_proto::v1;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Held by the tests that measure time, so that the flood does not starve the others.
static TIMED: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A non-JWKS answer: status, content type, body.
type Garbage = (StatusCode, &'static str, Vec<u8>);

#[derive(Clone)]
struct Endpoint {
    hits: Arc<AtomicUsize>,
    /// The JWKS document; `None` answers 503.
    body: Arc<Mutex<Option<String>>>,
    /// When set, answered instead of `body`: status, content type, bytes.
    garbage: Arc<Mutex<Option<Garbage>>>,
    /// How long every answer takes (200 ms unless changed).
    delay_ms: Arc<AtomicU64>,
    /// When each request arrived.
    arrivals: Arc<Mutex<Vec<Instant>>>,
}

impl Endpoint {
    fn serve(&self, body: &str) {
        *self.body.lock().expect("lock") = Some(body.to_owned());
        *self.garbage.lock().expect("lock") = None;
    }

    fn answer_garbage(&self, status: StatusCode, content_type: &'static str, body: &[u8]) {
        *self.garbage.lock().expect("lock") = Some((status, content_type, body.to_vec()));
    }

    fn delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn serve_jwks(State(endpoint): State<Endpoint>) -> Response {
    endpoint.hits.fetch_add(1, Ordering::SeqCst);
    endpoint.arrivals.lock().expect("lock").push(Instant::now());
    let delay = endpoint.delay_ms.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(delay)).await;
    if let Some((status, content_type, body)) = endpoint.garbage.lock().expect("lock").clone() {
        return (status, [(header::CONTENT_TYPE, content_type)], body).into_response();
    }
    match endpoint.body.lock().expect("lock").clone() {
        Some(body) => (StatusCode::OK, body).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "down").into_response(),
    }
}

async fn start_endpoint() -> (String, Endpoint) {
    let endpoint = Endpoint {
        hits: Arc::default(),
        body: Arc::default(),
        garbage: Arc::default(),
        delay_ms: Arc::new(AtomicU64::new(200)),
        arrivals: Arc::default(),
    };
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
    tenant_token("jwks.example", key, kid, subject)
}

fn tenant_token(tenant: &str, key: &SigningKey, kid: &str, subject: usize) -> String {
    let mut header = Map::new();
    header.insert("kid".into(), Value::String(kid.to_owned()));
    let claims = json!({
        "tid": tenant, "iss": "sts", "aud": "pushrelay",
        "nbf": now() - 60, "exp": now() + 600, "sub": subject,
    });
    mint_token(key, "RS256", &header, &claims).expect("mint")
}

fn registry(url: &str) -> Arc<TenantRegistry> {
    registry_of(&[("jwks.example", url)])
}

/// JWKS tenants (id, metadata URL), all with issuer `sts`.
fn registry_of(tenants: &[(&str, &str)]) -> Arc<TenantRegistry> {
    let registry = Arc::new(TenantRegistry::new());
    for (id, url) in tenants {
        let record = v1::Tenant {
            id: (*id).to_owned(),
            enabled: true,
            issuer: "sts".into(),
            metadata_url: (*url).to_owned(),
            ..Default::default()
        };
        registry.apply(id, Some(&record)).expect("apply");
    }
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
    // The keys are old enough to refresh: the old keys answer at once (the refresh runs
    // in the background), the refresh fails, and the old keys still verify after it.
    assert!(
        auth.authenticate(&token(&server.key, "k1", 2))
            .await
            .is_ok()
    );
    eventually(
        || endpoint.hits.load(Ordering::SeqCst) == 2,
        "a refresh was attempted",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        auth.authenticate(&token(&server.key, "k1", 3))
            .await
            .is_ok()
    );
    assert_eq!(
        endpoint.hits.load(Ordering::SeqCst),
        2,
        "one refresh per cooldown"
    );
}

/// Waits up to 5 s for `done` (background refreshes).
async fn eventually(done: impl Fn() -> bool, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
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

fn jwks_config(cooldown: Duration, refresh: Duration, timeout: Duration) -> AuthConfig {
    let mut config = config(cooldown, refresh);
    config.jwks.timeout = timeout;
    config
}

/// What a broken endpoint answers, and what the rejection of a tenant that never had keys
/// says about it.
fn garbage_answers() -> Vec<(
    &'static str,
    StatusCode,
    &'static str,
    Vec<u8>,
    &'static str,
)> {
    let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
    let doc = |keys: Value| json!({ "keys": keys }).to_string().into_bytes();
    vec![
        (
            "not JSON",
            StatusCode::OK,
            "application/json",
            b"hello, world".to_vec(),
            "not a JWKS document",
        ),
        (
            "HTML error page with 200",
            StatusCode::OK,
            "text/html",
            b"<html><body><h1>503 Service Unavailable</h1></body></html>".to_vec(),
            "not a JWKS document",
        ),
        (
            "empty body",
            StatusCode::OK,
            "application/json",
            Vec::new(),
            "not a JWKS document",
        ),
        (
            "a JSON array",
            StatusCode::OK,
            "application/json",
            b"[1,2,3]".to_vec(),
            "not a JWKS document",
        ),
        (
            "keys not an array",
            StatusCode::OK,
            "application/json",
            br#"{"keys":"k1"}"#.to_vec(),
            "not a JWKS document",
        ),
        (
            "a key without kty",
            StatusCode::OK,
            "application/json",
            doc(json!([{"kid": "k1"}])),
            "not a JWKS document",
        ),
        (
            "no keys",
            StatusCode::OK,
            "application/json",
            doc(json!([])),
            "no usable signing key",
        ),
        (
            "modulus not base64url",
            StatusCode::OK,
            "application/json",
            doc(json!([{"kty": "RSA", "kid": "k1", "n": "!!not base64!!", "e": "AQAB"}])),
            "no usable signing key",
        ),
        (
            "512-bit modulus",
            StatusCode::OK,
            "application/json",
            doc(json!([{"kty": "RSA", "kid": "k1", "n": b64(&[0xc3; 64]), "e": "AQAB"}])),
            "no usable signing key",
        ),
        (
            "x5c not a certificate",
            StatusCode::OK,
            "application/json",
            doc(json!([{"kty": "RSA", "kid": "k1", "x5c": ["bm90IGEgY2VydGlmaWNhdGU="]}])),
            "no usable signing key",
        ),
        (
            "only an HMAC key",
            StatusCode::OK,
            "application/json",
            doc(json!([{"kty": "oct", "kid": "k1", "k": "c2VjcmV0"}])),
            "no usable signing key",
        ),
        (
            "larger than the limit",
            StatusCode::OK,
            "application/json",
            vec![b' '; 300 * 1024],
            "larger than",
        ),
        (
            "HTTP 500",
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/html",
            b"<html>oops</html>".to_vec(),
            "500",
        ),
    ]
}

/// Garbage from the endpoint never replaces good keys: a tenant that had keys keeps
/// working on them (the failed refresh is attempted once per cooldown), and a tenant that
/// never had any is refused with `metadata_unavailable` saying what was wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_the_endpoint_keeps_stale_keys_and_explains_itself() {
    let _timed = TIMED.lock().await;
    let server = server_key("k1");
    for (i, (what, status, content_type, body, detail)) in garbage_answers().into_iter().enumerate()
    {
        let (url, had_keys) = start_endpoint().await;
        let (new_url, never_had) = start_endpoint().await;
        for endpoint in [&had_keys, &never_had] {
            endpoint.delay(Duration::ZERO);
        }
        had_keys.serve(&server.jwks);
        never_had.answer_garbage(status, content_type, &body);
        let registry = registry_of(&[("jwks.example", &url), ("new.example", &new_url)]);
        let auth = Authenticator::new(
            registry,
            config(Duration::from_millis(100), Duration::from_millis(100)),
        );
        assert!(
            auth.authenticate(&token(&server.key, "k1", i))
                .await
                .is_ok()
        );

        had_keys.answer_garbage(status, content_type, &body);
        tokio::time::sleep(Duration::from_millis(150)).await;
        let stale = auth.authenticate(&token(&server.key, "k1", 1000 + i)).await;
        assert!(stale.is_ok(), "{what}: {stale:?}");
        eventually(
            || had_keys.hits() == 2,
            &format!("{what}: a refresh was attempted"),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Inside the new cooldown the garbage is not asked for again.
        assert!(
            auth.authenticate(&token(&server.key, "k1", 2000 + i))
                .await
                .is_ok()
        );
        assert_eq!(had_keys.hits(), 2, "{what}");

        let refused = auth
            .authenticate(&tenant_token("new.example", &server.key, "k1", i))
            .await
            .expect_err(what);
        assert_eq!(refused.reason.code(), "metadata_unavailable", "{what}");
        assert!(
            refused.reason.to_string().contains(detail),
            "{what}: {}",
            refused.reason
        );
        assert_eq!(never_had.hits(), 1, "{what}");
    }
}

/// An endpoint that streams a body without end is cut off at the size limit, not read
/// until the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_body_is_cut_off_at_the_size_limit() {
    let _timed = TIMED.lock().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/jwks.json", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                            transfer-encoding: chunked\r\n\r\n1\r\n{\r\n";
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = format!("4000\r\n{}\r\n", " ".repeat(0x4000));
                while socket.write_all(chunk.as_bytes()).await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            });
        }
    });
    let server = server_key("k1");
    let auth = Authenticator::new(
        registry(&url),
        jwks_config(
            Duration::from_secs(60),
            Duration::from_secs(3600),
            Duration::from_secs(10),
        ),
    );
    let started = Instant::now();
    let refused = auth
        .authenticate(&token(&server.key, "k1", 1))
        .await
        .expect_err("no keys");
    let elapsed = started.elapsed();
    assert_eq!(refused.reason.code(), "metadata_unavailable");
    assert!(
        refused.reason.to_string().contains("larger than"),
        "{}",
        refused.reason
    );
    assert!(elapsed < Duration::from_secs(5), "read for {elapsed:?}");
}

/// An endpoint slower than the fetch timeout: a refresh gives up at the timeout and the
/// stale keys answer; tokens with known keys are not held up by a fetch in flight; a tenant
/// that never had keys is refused once the timeout passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_costs_at_most_the_fetch_timeout() {
    let _timed = TIMED.lock().await;
    let timeout = Duration::from_millis(600);
    let (url, endpoint) = start_endpoint().await;
    let (new_url, never_had) = start_endpoint().await;
    let server = server_key("k1");
    endpoint.serve(&server.jwks);
    endpoint.delay(Duration::ZERO);
    never_had.serve(&server.jwks);
    never_had.delay(Duration::from_secs(5));
    let registry = registry_of(&[("jwks.example", &url), ("new.example", &new_url)]);
    // Keys fresh for an hour: only unknown kids refetch.
    let auth = Arc::new(Authenticator::new(
        Arc::clone(&registry),
        jwks_config(
            Duration::from_millis(300),
            Duration::from_secs(3600),
            timeout,
        ),
    ));
    let first = auth.authenticate(&token(&server.key, "k1", 0)).await;
    assert!(first.is_ok(), "{first:?}");
    endpoint.delay(Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(350)).await;

    // An unknown kid starts a fetch that hangs until the timeout...
    let started = Instant::now();
    let unknown = {
        let (auth, key) = (Arc::clone(&auth), server_key("k2").key);
        tokio::spawn(async move {
            let result = auth.authenticate(&token(&key, "k2", 1)).await;
            (result, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(endpoint.hits(), 2, "the slow fetch is in flight");
    // ...while tokens with the known kid are answered at once.
    let mut slowest = Duration::ZERO;
    for i in 0..10 {
        let asked = Instant::now();
        assert!(
            auth.authenticate(&token(&server.key, "k1", 10 + i))
                .await
                .is_ok()
        );
        slowest = slowest.max(asked.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(200),
        "a known kid waited {slowest:?}"
    );
    let (result, waited) = unknown.await.expect("task");
    assert_eq!(result.expect_err("unknown").reason, Reason::UnknownKey);
    assert!(
        waited >= timeout && waited < timeout + Duration::from_millis(900),
        "the unknown kid waited {waited:?}"
    );

    // Keys due for refresh: the stale keys answer at once, the refresh runs behind.
    let auth = Authenticator::new(
        registry,
        jwks_config(
            Duration::from_millis(300),
            Duration::from_millis(300),
            timeout,
        ),
    );
    endpoint.delay(Duration::ZERO);
    assert!(
        auth.authenticate(&token(&server.key, "k1", 20))
            .await
            .is_ok()
    );
    endpoint.delay(Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(350)).await;
    let before = endpoint.hits();
    let asked = Instant::now();
    let stale = auth.authenticate(&token(&server.key, "k1", 21)).await;
    let waited = asked.elapsed();
    assert!(stale.is_ok(), "{stale:?}");
    assert!(
        waited < Duration::from_millis(200),
        "the refresh held the token for {waited:?}"
    );
    eventually(
        || endpoint.hits() > before,
        "the refresh reached the endpoint",
    )
    .await;
    // Neither while the refresh hangs nor after it timed out does a token wait, and the
    // cooldown runs from the end of the attempt: no second fetch.
    let fetches = endpoint.hits();
    let asked = Instant::now();
    assert!(
        auth.authenticate(&token(&server.key, "k1", 22))
            .await
            .is_ok()
    );
    assert!(
        asked.elapsed() < Duration::from_millis(200),
        "waited again {:?} inside the cooldown",
        asked.elapsed()
    );
    tokio::time::sleep(timeout + Duration::from_millis(100)).await;
    let asked = Instant::now();
    assert!(
        auth.authenticate(&token(&server.key, "k1", 23))
            .await
            .is_ok()
    );
    assert!(asked.elapsed() < Duration::from_millis(200));
    assert_eq!(endpoint.hits(), fetches);

    // A tenant whose endpoint never answered in time.
    let asked = Instant::now();
    let refused = auth
        .authenticate(&tenant_token("new.example", &server.key, "k1", 30))
        .await
        .expect_err("no keys yet");
    assert_eq!(refused.reason.code(), "metadata_unavailable");
    assert!(asked.elapsed() < timeout + Duration::from_millis(900));
    println!(
        "slow JWKS endpoint (5 s) with a {timeout:?} fetch timeout: known kids answered in \
         at most {slowest:?} during a fetch; with a refresh due, a token was answered in {waited:?}"
    );
}

fn random_kid() -> String {
    let mut bytes = [0u8; 12];
    aws_lc_rs::rand::fill(&mut bytes).expect("random");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// An unsigned-looking token naming a random kid: what an attacker can make in bulk.
fn flood_token(tenant: &str) -> String {
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": random_kid()});
    let claims = json!({
        "tid": tenant, "iss": "sts", "aud": "pushrelay",
        "nbf": now() - 60, "exp": now() + 600,
    });
    let mut signature = [0u8; 256];
    aws_lc_rs::rand::fill(&mut signature).expect("random");
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

/// A flood of tokens with random unknown kids for one JWKS tenant: its endpoint sees at
/// most one fetch per cooldown, every flood token is refused, the tenant's genuine tokens
/// keep being accepted throughout, and another tenant's key rotation is picked up on time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_kid_flood_costs_one_fetch_per_cooldown_and_blocks_nobody() {
    let _timed = TIMED.lock().await;
    let cooldown = Duration::from_millis(500);
    let flood_for = Duration::from_millis(3000);
    let min_flood = 2_000;
    let (url_a, endpoint_a) = start_endpoint().await;
    let (url_b, endpoint_b) = start_endpoint().await;
    let (key_a, key_b) = (server_key("a1"), server_key("b1"));
    endpoint_a.serve(&key_a.jwks);
    endpoint_b.serve(&key_b.jwks);
    let auth = Arc::new(Authenticator::new(
        registry_of(&[("a.example", &url_a), ("b.example", &url_b)]),
        jwks_config(cooldown, Duration::from_secs(3600), Duration::from_secs(5)),
    ));
    assert!(
        auth.authenticate(&tenant_token("a.example", &key_a.key, "a1", 0))
            .await
            .is_ok()
    );
    assert!(
        auth.authenticate(&tenant_token("b.example", &key_b.key, "b1", 0))
            .await
            .is_ok()
    );
    // A's endpoint is slow (each fetch holds A's entry for 1 s); B's answers in 200 ms.
    endpoint_a.delay(Duration::from_secs(1));

    let started = Instant::now();
    let flooders: Vec<_> = (0..4)
        .map(|_| {
            let auth = Arc::clone(&auth);
            tokio::spawn(async move {
                let (mut sent, mut wrong) = (0usize, Vec::new());
                while started.elapsed() < flood_for || sent < min_flood / 4 {
                    match auth.authenticate(&flood_token("a.example")).await {
                        Ok(_) => wrong.push("accepted".to_owned()),
                        Err(r) if r.reason == Reason::UnknownKey => {}
                        Err(r) => wrong.push(r.reason.to_string()),
                    }
                    sent += 1;
                }
                (sent, wrong)
            })
        })
        .collect();

    // A's genuine tokens, each new (no cache), all through the flood.
    let genuine = {
        let (auth, key) = (Arc::clone(&auth), key_a.key);
        tokio::spawn(async move {
            let (mut accepted, mut slowest, mut i) = (0usize, Duration::ZERO, 1);
            while started.elapsed() < flood_for {
                let token = tenant_token("a.example", &key, "a1", i);
                let asked = Instant::now();
                let result = auth.authenticate(&token).await;
                slowest = slowest.max(asked.elapsed());
                assert!(result.is_ok(), "genuine token {i} refused: {result:?}");
                accepted += 1;
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (accepted, slowest)
        })
    };

    // Meanwhile B rotates its key; after B's cooldown its new key is fetched at once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rotated = server_key("b2");
    endpoint_b.serve(&rotated.jwks);
    tokio::time::sleep(cooldown).await;
    // Ask B just after a fetch of A has started, so that it is in flight for ~1 s.
    let seen = endpoint_a.hits();
    while endpoint_a.hits() == seen {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let asked = Instant::now();
    let b = auth
        .authenticate(&tenant_token("b.example", &rotated.key, "b2", 1))
        .await;
    let b_waited = asked.elapsed();
    assert!(b.is_ok(), "{b:?}");
    assert_eq!(endpoint_b.hits(), 2, "B fetched once more, for its new key");
    assert!(
        b_waited < Duration::from_millis(800),
        "B's refresh waited {b_waited:?}: held up by A's fetch in flight?"
    );

    let (mut flood, mut wrong) = (0, Vec::new());
    for flooder in flooders {
        let (sent, w) = flooder.await.expect("flooder");
        flood += sent;
        wrong.extend(w);
    }
    let elapsed = started.elapsed();
    let (accepted, slowest) = genuine.await.expect("genuine");
    assert!(
        wrong.is_empty(),
        "{} flood tokens: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    assert!(flood >= min_flood);
    assert!(accepted > 0);

    // The endpoint's view: the first fetch, then at most one per cooldown.
    let arrivals = endpoint_a.arrivals.lock().expect("lock").clone();
    let fetches = arrivals.len();
    let windows = elapsed.as_millis() as usize / cooldown.as_millis() as usize + 1;
    let mut closest = Duration::MAX;
    for pair in arrivals.windows(2) {
        let gap = pair[1] - pair[0];
        closest = closest.min(gap);
        assert!(
            gap >= cooldown - Duration::from_millis(50),
            "two fetches {gap:?} apart: {arrivals:?}"
        );
    }
    assert!(
        fetches <= windows + 1,
        "{fetches} fetches in {windows} cooldowns"
    );
    println!(
        "random-kid flood: {flood} tokens in {elapsed:.2?} ({:.0} tokens/s), all refused; \
         {fetches} fetches of tenant A's JWKS (1 before the flood) over {windows} cooldown \
         windows of {cooldown:?}, the closest {closest:.0?} apart; {accepted} genuine tokens accepted during it (slowest \
         {slowest:?}); tenant B's rotation picked up in {b_waited:?} during a 1 s fetch of A",
        flood as f64 / elapsed.as_secs_f64()
    );
}
