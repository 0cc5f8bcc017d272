//! The provider clients against local HTTP/2 TLS servers (certificates from a generated
//! CA): a fake APNs that verifies the provider token's signature and the headers, and a
//! fake FCM with its token endpoint.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use pushrelay_deliver::apns::ProviderToken;
use pushrelay_deliver::client::{ApnsClient, FcmClient};
use pushrelay_deliver::fcm::Credentials;
use pushrelay_deliver::outcome::Outcome;
use pushrelay_proto::v1::PushRequest;

mod common;
use common::Pki;

#[derive(Clone)]
struct FakeApns {
    public_key: Arc<Vec<u8>>,
    tokens_seen: Arc<std::sync::Mutex<Vec<String>>>,
}

async fn apns_handler(
    State(fake): State<FakeApns>,
    Path(device): Path<String>,
    request: Request,
) -> Response {
    if request.version() != Version::HTTP_2 {
        return (StatusCode::HTTP_VERSION_NOT_SUPPORTED, "HTTP/2 only").into_response();
    }
    let headers: HeaderMap = request.headers().clone();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let token = header("authorization")
        .trim_start_matches("bearer ")
        .to_owned();
    let Some((signing_input, signature)) = token.rsplit_once('.') else {
        return (
            StatusCode::FORBIDDEN,
            r#"{"reason":"MissingProviderToken"}"#,
        )
            .into_response();
    };
    let key = jsonwebtoken::DecodingKey::from_ec_der(&fake.public_key);
    let valid = jsonwebtoken::crypto::verify(
        signature,
        signing_input.as_bytes(),
        &key,
        jsonwebtoken::Algorithm::ES256,
    )
    .unwrap_or(false);
    if !valid {
        return (
            StatusCode::FORBIDDEN,
            r#"{"reason":"InvalidProviderToken"}"#,
        )
            .into_response();
    }
    fake.tokens_seen.lock().expect("lock").push(token);
    if header("apns-topic") != "com.example.mail"
        || header("apns-push-type") != "alert"
        || header("apns-priority") != "5"
    {
        return (StatusCode::BAD_REQUEST, r#"{"reason":"BadTopic"}"#).into_response();
    }
    match device.as_str() {
        "gone" => (
            StatusCode::GONE,
            r#"{"reason":"Unregistered","timestamp":1}"#,
        )
            .into_response(),
        "bad" => (StatusCode::BAD_REQUEST, r#"{"reason":"BadDeviceToken"}"#).into_response(),
        "busy" => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "3")],
            r#"{"reason":"TooManyRequests"}"#,
        )
            .into_response(),
        _ => StatusCode::OK.into_response(),
    }
}

fn push(device: &str) -> PushRequest {
    PushRequest {
        device_token: device.into(),
        app_id: "com.example.mail".into(),
        push_type: "alert".into(),
        priority: 5,
        collapse_id: "c0ffee".into(),
        expires_time_ms: 1_900_000_000_000,
        payload: br#"{"aps":{"badge":3}}"#.to_vec(),
        ..PushRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apns_over_http2_with_a_verified_provider_token() {
    let pki = Pki::new("apns");
    let p8 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("p8");
    let fake = FakeApns {
        public_key: Arc::new(p8.public_key_raw().to_vec()),
        tokens_seen: Arc::default(),
    };
    let app = Router::new()
        .route("/3/device/{device}", post(apns_handler))
        .with_state(fake.clone());
    let (addr, shutdown) = pki.serve(app).await;
    let token = ProviderToken::from_p8(
        p8.serialize_pem().as_bytes(),
        "KEYID12345",
        "TEAM123456",
        Duration::from_secs(40 * 60),
    )
    .expect("p8");
    let client = ApnsClient::new(
        token,
        Some(format!("https://localhost:{}", addr.port())),
        Some(pki.ca_pem.as_bytes()),
        Duration::from_secs(5),
    )
    .expect("client");

    assert_eq!(client.send(&push("ok1")).await.outcome, Outcome::Delivered);
    assert_eq!(client.send(&push("ok2")).await.outcome, Outcome::Delivered);
    assert!(matches!(
        client.send(&push("gone")).await.outcome,
        Outcome::Unregistered { .. }
    ));
    assert_eq!(
        client.send(&push("bad")).await.outcome,
        Outcome::Final {
            reason: "400 BadDeviceToken".into()
        }
    );
    assert_eq!(
        client.send(&push("busy")).await.outcome,
        Outcome::Retry {
            reason: "429 TooManyRequests".into(),
            after: Some(Duration::from_secs(3))
        }
    );
    let seen = fake.tokens_seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 5);
    assert!(
        seen.windows(2).all(|w| w[0] == w[1]),
        "one provider token reused, not re-minted per push"
    );
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_provider_is_a_retry() {
    let p8 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("p8");
    let token = ProviderToken::from_p8(
        p8.serialize_pem().as_bytes(),
        "K",
        "T",
        Duration::from_secs(40 * 60),
    )
    .expect("p8");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let client = ApnsClient::new(
        token,
        Some(format!("https://localhost:{port}")),
        None,
        Duration::from_secs(2),
    )
    .expect("client");
    assert!(matches!(
        client.send(&push("x")).await.outcome,
        Outcome::Retry { .. }
    ));
}

#[derive(Clone, Default)]
struct FakeFcm {
    token_requests: Arc<AtomicUsize>,
}

async fn fcm_token(State(fake): State<FakeFcm>, body: String) -> Response {
    fake.token_requests.fetch_add(1, Ordering::SeqCst);
    if !body.starts_with(
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=ey",
    ) {
        return (StatusCode::BAD_REQUEST, r#"{"error":"invalid_grant"}"#).into_response();
    }
    (
        StatusCode::OK,
        r#"{"access_token":"ya29.test","expires_in":3599,"token_type":"Bearer"}"#,
    )
        .into_response()
}

async fn fcm_send(headers: HeaderMap, body: String) -> Response {
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer ya29.test") {
        return (
            StatusCode::UNAUTHORIZED,
            r#"{"error":{"code":401,"status":"UNAUTHENTICATED"}}"#,
        )
            .into_response();
    }
    let message: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    match message.pointer("/message/token").and_then(|v| v.as_str()) {
        Some("gone") => (
            StatusCode::NOT_FOUND,
            r#"{"error":{"code":404,"status":"NOT_FOUND","details":[{"errorCode":"UNREGISTERED"}]}}"#,
        )
            .into_response(),
        Some(_) => (StatusCode::OK, r#"{"name":"projects/mail-badges/messages/1"}"#).into_response(),
        None => (StatusCode::BAD_REQUEST, r#"{"error":{"code":400,"status":"INVALID_ARGUMENT"}}"#).into_response(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fcm_exchanges_its_assertion_once_and_classifies_answers() {
    let pki = Pki::new("fcm");
    let fake = FakeFcm::default();
    let app = Router::new()
        .route("/token", post(fcm_token))
        .with_state(fake.clone())
        .route("/v1/projects/mail-badges/messages:send", post(fcm_send));
    let (addr, shutdown) = pki.serve(app).await;
    let base = format!("https://localhost:{}", addr.port());
    let key = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .expect("rsa");
    let account = serde_json::json!({
        "type": "service_account",
        "project_id": "mail-badges",
        "private_key": key.serialize_pem(),
        "client_email": "relay@mail-badges.iam.gserviceaccount.com",
        "token_uri": "https://oauth2.googleapis.com/token",
    });
    let credentials = Credentials::from_json(
        account.to_string().as_bytes(),
        Some(&format!("{base}/token")),
    )
    .expect("account");
    let client = FcmClient::new(
        credentials,
        Some(base),
        Some(pki.ca_pem.as_bytes()),
        Duration::from_secs(5),
    )
    .expect("client");
    let message = |token: &str| PushRequest {
        payload: serde_json::json!({"message": {"token": token, "data": {"unreadCount": "3"}}})
            .to_string()
            .into_bytes(),
        ..PushRequest::default()
    };
    for i in 0..5 {
        assert_eq!(
            client.send(&message(&format!("device{i}"))).await.outcome,
            Outcome::Delivered
        );
    }
    assert!(matches!(
        client.send(&message("gone")).await.outcome,
        Outcome::Unregistered { .. }
    ));
    assert_eq!(
        fake.token_requests.load(Ordering::SeqCst),
        1,
        "one token exchange for all sends"
    );
    shutdown.cancel();
}
