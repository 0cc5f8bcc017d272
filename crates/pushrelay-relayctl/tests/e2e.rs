//! relayctl round trips and the end-to-end path: relayctl enables a tenant with a
//! generated certificate, mints a token, notifications and subscriptions are POSTed to the
//! ingress, and the auth-coalesce stage emits the counts and the authenticated
//! subscriptions. Mock cluster always; the real broker when `PUSHRELAY_TEST_BROKERS` is set.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use pushrelay_kafka::KafkaArgs;
use pushrelay_proto::Message;
use pushrelay_proto::v1::{TenantFeedback, UnreadCount};
use pushrelay_telemetry::Health;
use pushrelay_testkit::{TestBroker, read_topic, wait_for_records};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const PARTITIONS: i32 = 4;
const ISSUER: &str = "00000002-0000-0ff1-ce00-000000000000@fabrikam.com";

struct Files {
    dir: PathBuf,
}

impl Files {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(pushrelay_testkit::unique_prefix(name));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self { dir }
    }

    fn write(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, contents).expect("write");
        path
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A certificate and its PKCS#8 key, as PEM.
fn certificate(domain: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .expect("rsa");
    let cert = rcgen::CertificateParams::new(vec![domain.to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    (cert.pem(), key.serialize_pem())
}

async fn relayctl(kafka: &KafkaArgs, args: &[&str]) -> Output {
    let properties: Vec<String> = kafka
        .properties
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let mut command = Command::new(env!("CARGO_BIN_EXE_relayctl"));
    command
        .args(args)
        .env("PUSHRELAY_BROKERS", &kafka.brokers)
        .env("PUSHRELAY_TOPIC_PREFIX", &kafka.topic_prefix)
        .env("PUSHRELAY_PARTITIONS", PARTITIONS.to_string())
        .env("PUSHRELAY_KAFKA_PROPERTIES", properties.join(","));
    tokio::task::spawn_blocking(move || command.output().expect("relayctl runs"))
        .await
        .expect("thread")
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "relayctl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn refused(output: &Output) -> String {
    assert_eq!(output.status.code(), Some(1), "relayctl should refuse");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayctl_enables_a_tenant_and_its_notifications_come_out_as_counts() {
    pushrelay_testkit::init_test_logging();
    for broker in TestBroker::all() {
        eprintln!("-- on the {} broker {}", broker.kind, broker.brokers);
        scenario(&broker).await;
    }
}

async fn scenario(broker: &TestBroker) {
    let kind = broker.kind;
    let kafka = broker.kafka_args("ctl", PARTITIONS);
    let topics = kafka.topics();
    broker.create_all_topics(&kafka).await;
    let files = Files::new("relayctl");
    let (cert_pem, key_pem) = certificate("fabrikam.com");
    let cert = files.write("oauth.cer.pem", cert_pem.as_bytes());
    let key = files.write("oauth.key.pem", key_pem.as_bytes());
    let (other_cert_pem, other_key_pem) = certificate("evil.example");
    let other_cert = files.write("other.pem", other_cert_pem.as_bytes());
    let other_key = files.write("other.key.pem", other_key_pem.as_bytes());
    let weak = files.write(
        "weak.der",
        include_bytes!("../../pushrelay-auth/testdata/weak-rsa1024.der"),
    );
    let path = |p: &Path| p.display().to_string();

    // relayctl round trips.
    ok(&relayctl(
        &kafka,
        &[
            "tenant",
            "enable",
            "Fabrikam.com",
            "--issuer",
            ISSUER,
            "--cert",
            &path(&cert),
        ],
    )
    .await);
    let shown: Value = serde_json::from_str(&ok(&relayctl(
        &kafka,
        &["--json", "tenant", "show", "fabrikam.com"],
    )
    .await))
    .expect("JSON");
    assert_eq!(shown["enabled"], json!(true), "[{kind}]");
    assert_eq!(shown["issuer"], json!(ISSUER));
    assert_eq!(shown["keys"].as_array().map(Vec::len), Some(1));
    assert_eq!(shown["keys"][0]["validNow"], json!(true));
    let thumbprint = shown["keys"][0]["thumbprint"]
        .as_str()
        .expect("x5t")
        .to_owned();
    let err = refused(
        &relayctl(
            &kafka,
            &["key", "add", "fabrikam.com", "--cert", &path(&cert)],
        )
        .await,
    );
    assert!(err.contains("already has the key"), "{err}");
    let err = refused(
        &relayctl(
            &kafka,
            &["key", "add", "fabrikam.com", "--cert", &path(&weak)],
        )
        .await,
    );
    assert!(err.contains("1024 bits"), "{err}");
    let err = refused(
        &relayctl(
            &kafka,
            &["key", "add", "unknown.example", "--cert", &path(&cert)],
        )
        .await,
    );
    assert!(err.contains("tenant enable"), "{err}");
    let table = ok(&relayctl(&kafka, &["tenant", "show", "fabrikam.com"]).await);
    assert!(table.contains(&thumbprint), "{table}");

    let token = ok(&relayctl(
        &kafka,
        &[
            "token",
            "mint",
            "--tenant",
            "fabrikam.com",
            "--issuer",
            ISSUER,
            "--key",
            &path(&key),
            "--cert",
            &path(&cert),
        ],
    )
    .await);
    // A forger: a token for fabrikam.com signed with another key.
    let forged = ok(&relayctl(
        &kafka,
        &[
            "token",
            "mint",
            "--tenant",
            "fabrikam.com",
            "--issuer",
            ISSUER,
            "--key",
            &path(&other_key),
            "--cert",
            &path(&other_cert),
        ],
    )
    .await);

    // The stages.
    let shutdown = CancellationToken::new();
    let mut stage_args = pushrelay_auth_coalesce::StageArgs::new(kafka.clone());
    stage_args.group = format!("{}auth", kafka.topic_prefix);
    let stage_health = Health::new();
    let stage = tokio::spawn(pushrelay_auth_coalesce::run(
        stage_args,
        stage_health.clone(),
        shutdown.clone(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let ingress_health = Health::new();
    let ingress = tokio::spawn(pushrelay_ingress::serve(
        pushrelay_ingress::IngressArgs::new(kafka.clone(), addr),
        listener,
        ingress_health.clone(),
        shutdown.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(stage_health.is_ready() && ingress_health.is_ready()) {
        assert!(Instant::now() < deadline, "[{kind}] stages not ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let client = reqwest::Client::new();
    let base = format!("http://{addr}");
    let mut expected: HashMap<String, u32> = HashMap::new();
    for sequence in 1..=2u64 {
        let notifications: Vec<Value> = (0..20)
            .map(|i| {
                let count = i * 2 + sequence as u32;
                expected.insert(format!("fabrikam.com/user{i}@fabrikam.com"), count);
                json!({"mailbox": format!("user{i}@fabrikam.com"), "unreadCount": count, "sequence": sequence})
            })
            .collect();
        let response = client
            .post(format!("{base}/v1/notifications"))
            .bearer_auth(&token)
            .json(&json!({ "notifications": notifications }))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), StatusCode::ACCEPTED, "[{kind}]");
    }
    let subscribe = |token: &str, device: &str| {
        client
            .post(format!("{base}/v1/subscriptions"))
            .bearer_auth(token)
            .json(&json!({"mailbox": "user1@fabrikam.com", "platform": "apns", "deviceToken": device, "appId": "com.example.mail"}))
            .send()
    };
    assert_eq!(
        subscribe(&token, "device-ok").await.expect("send").status(),
        StatusCode::ACCEPTED
    );
    // The ingress checks syntax only; the auth stage must refuse the forger's device.
    assert_eq!(
        subscribe(&forged, "device-forged")
            .await
            .expect("send")
            .status(),
        StatusCode::ACCEPTED
    );

    let counts = wait_for_records(
        &kafka,
        &topics.unread_counts,
        Duration::from_secs(60),
        |records| {
            let mut last: HashMap<String, u32> = HashMap::new();
            for r in records {
                if let (Some(k), Some(v)) = (&r.key, &r.payload)
                    && let Ok(count) = UnreadCount::decode(v.as_slice())
                {
                    last.insert(String::from_utf8_lossy(k).into_owned(), count.count);
                }
            }
            expected.iter().all(|(k, v)| last.get(k) == Some(v))
        },
    )
    .await;
    assert!(!counts.is_empty(), "[{kind}] counts emitted");
    let subscriptions = wait_for_records(
        &kafka,
        &topics.subscriptions,
        Duration::from_secs(30),
        |r| !r.is_empty(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let subscriptions = if subscriptions.len() < 2 {
        read_topic(&kafka, &topics.subscriptions).await
    } else {
        subscriptions
    };
    let keys: Vec<String> = subscriptions
        .iter()
        .map(|r| String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned())
        .collect();
    assert_eq!(
        keys,
        ["fabrikam.com/user1@fabrikam.com/apns/device-ok"],
        "[{kind}] only the authenticated device"
    );

    // Disabling applies without a restart: the next change is refused with feedback.
    ok(&relayctl(&kafka, &["tenant", "disable", "fabrikam.com"]).await);
    let listed: Value =
        serde_json::from_str(&ok(&relayctl(&kafka, &["--json", "tenant", "list"]).await))
            .expect("JSON");
    assert_eq!(listed[0]["enabled"], json!(false));
    let feedback_disabled = |records: &[pushrelay_kafka::Record]| {
        records.iter().any(|r| {
            TenantFeedback::decode(r.payload.as_deref().unwrap_or_default())
                .is_ok_and(|f| f.reason == "tenant_disabled")
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut sequence = 10;
    loop {
        sequence += 1;
        let response = client
            .post(format!("{base}/v1/notifications"))
            .bearer_auth(&token)
            .json(&json!({"notifications": [{"mailbox": "late@fabrikam.com", "unreadCount": 1, "sequence": sequence}]}))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        tokio::time::sleep(Duration::from_millis(500)).await;
        if feedback_disabled(&read_topic(&kafka, &topics.tenant_feedback).await) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "[{kind}] the disabled tenant was never refused"
        );
    }
    // Once the stage has seen the change, nothing of the tenant comes out.
    let response = client
        .post(format!("{base}/v1/notifications"))
        .bearer_auth(&token)
        .json(&json!({"notifications": [{"mailbox": "after@fabrikam.com", "unreadCount": 1, "sequence": 1}]}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = read_topic(&kafka, &topics.unread_counts)
        .await
        .iter()
        .filter(|r| r.key.as_deref() == Some(b"fabrikam.com/after@fabrikam.com".as_slice()))
        .count();
    assert_eq!(after, 0, "[{kind}] no count for a disabled tenant");

    shutdown.cancel();
    assert!(stage.await.expect("stage task").is_ok());
    assert!(ingress.await.expect("ingress task").is_ok());
}
