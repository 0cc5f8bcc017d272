//! The public HTTP contract, status by status, against a broker: the mock cluster always,
//! the real broker of `PUSHRELAY_TEST_BROKERS` when one is provided.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pushrelay_ingress::IngressArgs;
use pushrelay_kafka::KafkaArgs;
use pushrelay_proto::Message;
use pushrelay_proto::v1::{MailboxChange, Notification, NotificationBatch, SubscriptionChange};
use pushrelay_telemetry::Health;
use pushrelay_testkit::{TestBroker, TestTenant, read_topic};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const LIMIT: usize = 64 * 1024;

struct Ingress {
    url: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), pushrelay_ingress::IngressError>>,
}

impl Ingress {
    async fn start(kafka: &KafkaArgs) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let mut args = IngressArgs::new(kafka.clone(), addr);
        args.max_body_bytes = LIMIT;
        let shutdown = CancellationToken::new();
        let health = Health::new();
        let task = tokio::spawn(pushrelay_ingress::serve(
            args,
            listener,
            health.clone(),
            shutdown.clone(),
        ));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !health.is_ready() {
            assert!(
                Instant::now() < deadline,
                "ingress never became ready: {:?}",
                health.not_ready()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            url: format!("http://{addr}"),
            shutdown,
            task,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("ingress stops")
            .expect("task");
        assert!(result.is_ok(), "{result:?}");
    }
}

async fn error_code(response: reqwest::Response) -> (StatusCode, String, String) {
    let status = response.status();
    let body: Value = response.json().await.expect("JSON error body");
    (
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_status_of_the_contract() {
    pushrelay_testkit::init_test_logging();
    let tenant = TestTenant::generate("fabrikam.com");
    let token = tenant.token();
    let client = reqwest::Client::new();
    for broker in TestBroker::all() {
        let kafka = broker.kafka_args("http", 4);
        broker.create_all_topics(&kafka).await;
        let ingress = Ingress::start(&kafka).await;
        let notifications = format!("{}/v1/notifications", ingress.url);
        let subscriptions = format!("{}/v1/subscriptions", ingress.url);
        let kind = broker.kind;

        // 202 after the broker acknowledged every record; JSON and protobuf.
        let body = json!({"notifications": [
            {"mailbox": "alice@fabrikam.com", "unreadCount": 3, "sequence": 17},
            {"mailbox": "bob@fabrikam.com", "unreadCount": 0, "sequence": 4},
        ]});
        let response = client
            .post(&notifications)
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .expect("send");
        let status = response.status();
        if status != StatusCode::ACCEPTED {
            panic!(
                "[{kind}] {status}: {}",
                response.text().await.unwrap_or_default()
            );
        }
        assert_eq!(
            response.json::<Value>().await.expect("json"),
            json!({"accepted": 2})
        );
        let batch = NotificationBatch {
            notifications: vec![Notification {
                mailbox: "carol@fabrikam.com".into(),
                unread_count: 9,
                sequence: Some(1),
                source_time_ms: 0,
            }],
        };
        let response = client
            .post(&notifications)
            .bearer_auth(&token)
            .header("content-type", "application/x-protobuf")
            .body(batch.encode_to_vec())
            .send()
            .await
            .expect("send");
        assert_eq!(
            response.status(),
            StatusCode::ACCEPTED,
            "[{kind}] protobuf body"
        );
        let records = read_topic(&kafka, &kafka.topics().mailbox_changes).await;
        let mut keys: Vec<String> = records
            .iter()
            .map(|r| String::from_utf8(r.key.clone().unwrap_or_default()).expect("utf-8"))
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "fabrikam.com/alice@fabrikam.com",
                "fabrikam.com/bob@fabrikam.com",
                "fabrikam.com/carol@fabrikam.com"
            ]
        );
        for record in &records {
            let change = MailboxChange::decode(record.payload.as_deref().unwrap_or_default())
                .expect("MailboxChange");
            assert_eq!(change.token, token, "the token travels with the change");
            assert!(change.ingress_time_ms > 0 && !change.event_id.is_empty());
        }

        // 400 with a reason.
        for (body, needle) in [
            ("not json", "not JSON"),
            (
                r#"{"notifications":[{"mailbox":"a@x","unreadCount":1}]}"#,
                "sequence",
            ),
            (
                r#"{"notifications":[{"mailbox":"a@x","unreadCount":-2,"sequence":1}]}"#,
                "unreadCount",
            ),
            (
                r#"{"notifications":[{"mailbox":"","unreadCount":2,"sequence":1}]}"#,
                "mailbox",
            ),
        ] {
            let response = client
                .post(&notifications)
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("send");
            let (status, _, message) = error_code(response).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "[{kind}] {body}");
            assert!(message.contains(needle), "[{kind}] {body}: {message}");
        }

        // 401 without a usable token.
        let response = client
            .post(&notifications)
            .json(&body)
            .send()
            .await
            .expect("send");
        assert_eq!(error_code(response).await.1, "missing_token");
        let response = client
            .post(&notifications)
            .bearer_auth("not-a-jwt")
            .json(&body)
            .send()
            .await
            .expect("send");
        let (status, code, _) = error_code(response).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::UNAUTHORIZED, "invalid_token")
        );

        // 415 for other content types.
        let response = client
            .post(&notifications)
            .bearer_auth(&token)
            .header("content-type", "text/plain")
            .body("x")
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

        // 413 for ten times the limit, without the body being buffered.
        // 10 MiB: ten times the default 1 MiB limit, 160 times this test's 64 KiB one.
        let huge = vec![b' '; 10 * LIMIT * 16];
        let before = rss_bytes();
        for _ in 0..10 {
            let response = client
                .post(&notifications)
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(huge.clone())
                .send()
                .await;
            // The server may close the connection before the client finished sending.
            if let Ok(response) = response {
                let (status, code, _) = error_code(response).await;
                assert_eq!(
                    (status, code.as_str()),
                    (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
                );
            }
        }
        let grown = rss_bytes().saturating_sub(before);
        assert!(
            grown < 32 * 1024 * 1024,
            "[{kind}] 10 bodies of 10 MiB grew memory by {grown} bytes"
        );

        // Subscriptions: 202, then 400 for a bad platform; DELETE takes the same body.
        let sub = json!({"mailbox": "alice@fabrikam.com", "platform": "apns", "deviceToken": "ab12", "appId": "com.example.mail"});
        let response = client
            .post(&subscriptions)
            .bearer_auth(&token)
            .json(&sub)
            .send()
            .await
            .expect("send");
        assert_eq!(
            response.status(),
            StatusCode::ACCEPTED,
            "[{kind}] subscribe"
        );
        let response = client
            .delete(&subscriptions)
            .bearer_auth(&token)
            .json(&sub)
            .send()
            .await
            .expect("send");
        assert_eq!(
            response.status(),
            StatusCode::ACCEPTED,
            "[{kind}] unsubscribe"
        );
        let mut bad = sub.clone();
        bad["platform"] = json!("sms");
        let response = client
            .post(&subscriptions)
            .bearer_auth(&token)
            .json(&bad)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let changes = read_topic(&kafka, &kafka.topics().subscription_changes).await;
        assert_eq!(
            changes.len(),
            2,
            "[{kind}] one record per accepted subscription request"
        );
        let first = SubscriptionChange::decode(changes[0].payload.as_deref().unwrap_or_default())
            .expect("decodes");
        assert_eq!(first.device_token, "ab12");
        ingress.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_gives_503_within_a_second_and_recovers() {
    pushrelay_testkit::init_test_logging();
    let broker = TestBroker::mock();
    let mock = broker.mock_cluster().expect("mock");
    let kafka = broker.kafka_args("down", 2);
    broker.create_all_topics(&kafka).await;
    let ingress = Ingress::start(&kafka).await;
    let tenant = TestTenant::generate("fabrikam.com");
    let token = tenant.token();
    let client = reqwest::Client::new();
    let url = format!("{}/v1/notifications", ingress.url);
    let post = |sequence: u64| {
        client
            .post(&url)
            .bearer_auth(&token)
            .json(&json!({"notifications": [{"mailbox": "a@fabrikam.com", "unreadCount": 1, "sequence": sequence}]}))
            .send()
    };
    assert_eq!(post(1).await.expect("send").status(), StatusCode::ACCEPTED);

    mock.broker_down(1).expect("broker down");
    let mut accepted_while_down = 0;
    for sequence in 2..12 {
        let started = Instant::now();
        let response = post(sequence).await.expect("send");
        let elapsed = started.elapsed();
        if response.status() == StatusCode::ACCEPTED {
            accepted_while_down += 1;
            continue;
        }
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().contains_key("retry-after"));
        eprintln!("broker down: 503 after {elapsed:?}");
        assert!(elapsed < Duration::from_secs(1), "503 took {elapsed:?}");
    }
    assert_eq!(accepted_while_down, 0, "no 202 while the broker is down");

    mock.broker_up(1).expect("broker up");
    let up = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut sequence = 100;
    loop {
        sequence += 1;
        if post(sequence).await.expect("send").status() == StatusCode::ACCEPTED {
            eprintln!("broker up: 202 again after {:?}", up.elapsed());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the ingress did not recover after the broker came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ingress.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_http2_and_http1() {
    pushrelay_testkit::init_test_logging();
    let broker = TestBroker::mock();
    let kafka = broker.kafka_args("tls", 2);
    broker.create_all_topics(&kafka).await;
    // A certificate for localhost, trusted by the test client only.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let dir = std::env::temp_dir().join(pushrelay_testkit::unique_prefix("tls"));
    std::fs::create_dir_all(&dir).expect("dir");
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).expect("write cert");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut args = IngressArgs::new(kafka.clone(), listener.local_addr().expect("addr"));
    args.tls_cert = Some(cert_path);
    args.tls_key = Some(key_path);
    let shutdown = CancellationToken::new();
    let health = Health::new();
    let task = tokio::spawn(pushrelay_ingress::serve(
        args,
        listener,
        health.clone(),
        shutdown.clone(),
    ));
    while !health.is_ready() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let token = TestTenant::generate("fabrikam.com").token();
    let root = reqwest::Certificate::from_pem(cert.pem().as_bytes()).expect("root");
    for http1_only in [false, true] {
        let mut builder = reqwest::Client::builder().tls_certs_only([root.clone()]);
        if http1_only {
            builder = builder.http1_only();
        }
        let client = builder.build().expect("client");
        let response = client
            .post(format!("https://localhost:{port}/v1/notifications"))
            .bearer_auth(&token)
            .json(&json!({"notifications": [{"mailbox": "a@fabrikam.com", "unreadCount": 1, "sequence": 1}]}))
            .send()
            .await
            .expect("HTTPS request");
        let expected = if http1_only {
            reqwest::Version::HTTP_11
        } else {
            reqwest::Version::HTTP_2
        };
        assert_eq!(response.version(), expected);
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    shutdown.cancel();
    assert!(task.await.expect("task").is_ok());
    let _ = std::fs::remove_dir_all(dir);
}
