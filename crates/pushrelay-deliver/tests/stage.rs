//! The delivery stage against a broker (mock cluster always, the real broker when
//! `PUSHRELAY_TEST_BROKERS` is set) and local HTTP/2 TLS fakes of APNs and FCM (certificates
//! from a generated CA; the fake APNs verifies the provider token's ES256 signature and the
//! headers, the fake FCM has its token endpoint).
//!
//! Scenarios: success; an undecodable record is dead-lettered; 400 BadDeviceToken is not retried; 429 Retry-After is honoured; a 503
//! storm then recovery delivers 100%; an always-failing device is dead-lettered after the
//! budget; a PROBE push is recorded without a provider; a slow server never sees more
//! requests in flight than the limit and the stage's pending set stays bounded; 410 /
//! UNREGISTERED (through the fan-out stage) removes the subscription, tells the tenant and
//! nothing more is sent to the device; after a restart a backlog for one device is folded
//! to its newest badge.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use pushrelay_deliver::DeliverArgs;
use pushrelay_fanout::FanoutArgs;
use pushrelay_kafka::{KafkaArgs, Record, murmur2_partition, now_ms};
use pushrelay_proto::Message;
use pushrelay_proto::keys::{mailbox_key, push_key, subscription_key};
use pushrelay_proto::v1::{
    DeadLetter, DeliveryOutcome, DeliveryReceipt, FeedbackKind, Platform, PushRequest,
    Subscription, TenantFeedback, UnreadCount,
};
use pushrelay_telemetry::Health;
use pushrelay_testkit::{TestBroker, TestRecord, produce_records, producer, read_topic};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod common;
use common::Pki;

const PARTITIONS: i32 = 4;
const TENANT: &str = "fabrikam.com";
const APP: &str = "com.example.mail";
const MAX_IN_FLIGHT: usize = 4;
const MAX_PENDING: usize = 16;
const MAX_ATTEMPTS: u32 = 5;

/// One request a fake provider saw.
#[derive(Debug, Clone)]
struct Seen {
    device: String,
    badge: Option<u64>,
    at: Instant,
    status: u16,
}

/// The fake APNs and FCM, with what they saw.
#[derive(Default)]
struct Fake {
    apns_public_key: Vec<u8>,
    seen: Mutex<Vec<Seen>>,
    storm_until: Mutex<Option<Instant>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    fcm_token_requests: AtomicUsize,
    rejected: Mutex<Vec<String>>,
}

impl Fake {
    fn requests(&self, device: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|s| s.device == device)
            .cloned()
            .collect()
    }

    fn record(&self, device: &str, badge: Option<u64>, at: Instant, status: StatusCode) {
        self.seen.lock().expect("lock").push(Seen {
            device: device.to_owned(),
            badge,
            at,
            status: status.as_u16(),
        });
    }
}

/// Counts a request in flight for as long as it lives.
struct InFlight(Arc<Fake>);

impl InFlight {
    fn new(fake: &Arc<Fake>) -> Self {
        let now = fake.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        fake.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Self(Arc::clone(fake))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn reason(status: StatusCode, reason: &str, retry_after: Option<&str>) -> Response {
    let body = format!(r#"{{"reason":"{reason}"}}"#);
    match retry_after {
        Some(secs) => (status, [("retry-after", secs.to_owned())], body).into_response(),
        None => (status, body).into_response(),
    }
}

async fn apns(
    State(fake): State<Arc<Fake>>,
    Path(device): Path<String>,
    request: Request,
) -> Response {
    let _in_flight = InFlight::new(&fake);
    let at = Instant::now();
    let (parts, body) = request.into_parts();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let token = header("authorization")
        .trim_start_matches("bearer ")
        .to_owned();
    let signed = token.rsplit_once('.').is_some_and(|(input, signature)| {
        jsonwebtoken::crypto::verify(
            signature,
            input.as_bytes(),
            &jsonwebtoken::DecodingKey::from_ec_der(&fake.apns_public_key),
            jsonwebtoken::Algorithm::ES256,
        )
        .unwrap_or(false)
    });
    let problem = if parts.version != Version::HTTP_2 {
        Some("not HTTP/2")
    } else if !signed {
        Some("provider token")
    } else if header("apns-topic") != APP {
        Some("apns-topic")
    } else if header("apns-push-type") != "alert" {
        Some("apns-push-type")
    } else if header("apns-priority") != "5" {
        Some("apns-priority")
    } else if header("apns-collapse-id").is_empty() {
        Some("apns-collapse-id")
    } else if header("apns-expiration").parse::<u64>().is_err() {
        Some("apns-expiration")
    } else {
        None
    };
    if let Some(problem) = problem {
        let note = format!("{device}: {problem}");
        fake.rejected.lock().expect("lock").push(note);
        return reason(StatusCode::BAD_REQUEST, "BadRequest", None);
    }
    let body = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let badge = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.pointer("/aps/badge").and_then(serde_json::Value::as_u64));
    let earlier = fake.requests(&device).len();
    let response = if device.starts_with("slow-") {
        tokio::time::sleep(Duration::from_millis(300)).await;
        StatusCode::OK.into_response()
    } else if device.starts_with("gone-") {
        reason(StatusCode::GONE, "Unregistered", None)
    } else if device.starts_with("bad-") {
        reason(StatusCode::BAD_REQUEST, "BadDeviceToken", None)
    } else if device.starts_with("busy-") && earlier == 0 {
        reason(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", Some("1"))
    } else if device.starts_with("down-") {
        reason(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", None)
    } else if device.starts_with("storm-") {
        let until = *fake
            .storm_until
            .lock()
            .expect("lock")
            .get_or_insert(at + Duration::from_millis(1500));
        if at < until {
            reason(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                Some("1"),
            )
        } else {
            StatusCode::OK.into_response()
        }
    } else {
        StatusCode::OK.into_response()
    };
    fake.record(&device, badge, at, response.status());
    response
}

async fn fcm_token(State(fake): State<Arc<Fake>>) -> Response {
    fake.fcm_token_requests.fetch_add(1, Ordering::SeqCst);
    (
        StatusCode::OK,
        r#"{"access_token":"ya29.stage","expires_in":3599,"token_type":"Bearer"}"#,
    )
        .into_response()
}

async fn fcm_send(State(fake): State<Arc<Fake>>, request: Request) -> Response {
    let at = Instant::now();
    let authorized = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some("Bearer ya29.stage");
    let body = axum::body::to_bytes(request.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let message: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let device = message
        .pointer("/message/token")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned();
    let badge = message
        .pointer("/message/data/unreadCount")
        .and_then(|v| v.as_str())
        .and_then(|v| v.parse().ok());
    let response = if !authorized {
        (
            StatusCode::UNAUTHORIZED,
            r#"{"error":{"code":401,"status":"UNAUTHENTICATED"}}"#,
        )
            .into_response()
    } else if device.starts_with("fcm-gone-") {
        (
            StatusCode::NOT_FOUND,
            r#"{"error":{"code":404,"status":"NOT_FOUND","details":[{"errorCode":"UNREGISTERED"}]}}"#,
        )
            .into_response()
    } else {
        (
            StatusCode::OK,
            r#"{"name":"projects/mail-badges/messages/1"}"#,
        )
            .into_response()
    };
    fake.record(&device, badge, at, response.status());
    response
}

/// The fakes behind one TLS server, and the stage flags pointing at them.
struct Providers {
    fake: Arc<Fake>,
    pki: Pki,
    base: String,
    p8: String,
    shutdown: CancellationToken,
}

impl Providers {
    async fn start(name: &str) -> Self {
        let pki = Pki::new(name);
        let p8 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("p8");
        let fake = Arc::new(Fake {
            apns_public_key: p8.public_key_raw().to_vec(),
            ..Fake::default()
        });
        let app = Router::new()
            .route("/3/device/{device}", post(apns))
            .route("/token", post(fcm_token))
            .route("/v1/projects/mail-badges/messages:send", post(fcm_send))
            .with_state(Arc::clone(&fake));
        let (addr, shutdown) = pki.serve(app).await;
        Self {
            fake,
            base: format!("https://localhost:{}", addr.port()),
            p8: p8.serialize_pem(),
            pki,
            shutdown,
        }
    }

    fn args(&self, kafka: &KafkaArgs) -> DeliverArgs {
        let rsa =
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .expect("rsa");
        let account = serde_json::json!({
            "type": "service_account",
            "project_id": "mail-badges",
            "private_key": rsa.serialize_pem(),
            "client_email": "relay@mail-badges.iam.gserviceaccount.com",
            "token_uri": "https://oauth2.googleapis.com/token",
        });
        let mut args = DeliverArgs::new(kafka.clone());
        args.group = format!("{}deliver", kafka.topic_prefix);
        args.apns_key_file = Some(self.pki.write("apns.p8", self.p8.as_bytes()));
        args.apns_key_id = Some("KEYID12345".into());
        args.apns_team_id = Some("TEAM123456".into());
        args.apns_base_url = Some(self.base.clone());
        args.fcm_service_account_file =
            Some(self.pki.write("fcm.json", account.to_string().as_bytes()));
        args.fcm_base_url = Some(self.base.clone());
        args.fcm_token_uri = Some(format!("{}/token", self.base));
        args.provider_ca_file = Some(self.pki.ca_file());
        args.max_in_flight = MAX_IN_FLIGHT;
        args.max_pending = MAX_PENDING;
        args.max_attempts = MAX_ATTEMPTS;
        args.retry_base_ms = 100;
        args.retry_cap_secs = 1;
        args.drain_timeout_secs = 5;
        args
    }
}

fn start_deliver(args: &DeliverArgs) -> (JoinHandle<()>, CancellationToken) {
    let shutdown = CancellationToken::new();
    let run = pushrelay_deliver::run(args.clone(), Health::new(), shutdown.clone());
    let handle = tokio::spawn(async move { run.await.expect("delivery stage") });
    (handle, shutdown)
}

fn push(platform: Platform, device: &str, mailbox: &str, sequence: u64) -> TestRecord {
    let now = now_ms();
    let value = PushRequest {
        push_id: format!("{device}/{sequence}"),
        tenant: TENANT.into(),
        mailbox: mailbox.into(),
        platform: platform as i32,
        device_token: device.into(),
        app_id: APP.into(),
        environment: 1,
        badge: sequence as u32,
        collapse_id: "c0ffee".into(),
        expires_time_ms: now + 3_600_000,
        priority: 5,
        payload: format!(r#"{{"aps":{{"badge":{sequence}}}}}"#).into_bytes(),
        push_type: "alert".into(),
        ingress_time_ms: now,
        sequence,
    };
    TestRecord {
        key: push_key(platform as i32, device).into_bytes(),
        partition: None,
        value: Some(value.encode_to_vec()),
    }
}

fn decode<M: Message + Default>(records: &[Record]) -> Vec<M> {
    records
        .iter()
        .filter_map(|r| r.payload.as_deref())
        .map(|v| M::decode(v).expect("record decodes"))
        .collect()
}

fn receipts_by_id(records: &[Record]) -> HashMap<String, DeliveryReceipt> {
    decode::<DeliveryReceipt>(records)
        .into_iter()
        .map(|r| (r.push_id.clone(), r))
        .collect()
}

/// Waits until every push id in `ids` has a receipt, sampling the stage's pending gauge;
/// returns the receipts and the largest pending value seen.
async fn wait_for_receipts(
    kafka: &KafkaArgs,
    ids: &[String],
) -> (HashMap<String, DeliveryReceipt>, f64) {
    let topic = kafka.topics().delivery_receipts;
    let metrics = pushrelay_telemetry::metrics_handle();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut max_pending: f64 = 0.0;
    loop {
        for _ in 0..5 {
            max_pending = max_pending.max(gauge(&metrics.render(), "pushrelay_deliver_pending"));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let receipts = receipts_by_id(&read_topic(kafka, &topic).await);
        if ids.iter().all(|id| receipts.contains_key(id)) || Instant::now() > deadline {
            return (receipts, max_pending);
        }
    }
}

fn gauge(rendered: &str, name: &str) -> f64 {
    rendered
        .lines()
        .find(|line| line.starts_with(name) && line[name.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn expect_receipt<'a>(
    receipts: &'a HashMap<String, DeliveryReceipt>,
    id: &str,
    kind: &str,
) -> &'a DeliveryReceipt {
    receipts
        .get(id)
        .unwrap_or_else(|| panic!("[{kind}] no receipt for {id}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_scenarios_against_fake_providers() {
    pushrelay_testkit::init_test_logging();
    for broker in TestBroker::all() {
        eprintln!("-- on the {} broker {}", broker.kind, broker.brokers);
        scenario(&broker).await;
    }
}

async fn scenario(broker: &TestBroker) {
    let kind = broker.kind;
    let kafka = broker.kafka_args("deliver", PARTITIONS);
    let topics = kafka.topics();
    broker.create_all_topics(&kafka).await;
    let providers = Providers::start(&format!("deliver-{kind}")).await;
    let fake = Arc::clone(&providers.fake);
    let args = providers.args(&kafka);
    let (deliver, deliver_stop) = start_deliver(&args);
    let producer = producer(&kafka);
    let mailbox = format!("direct@{TENANT}");

    // Part 1: pushes written straight to push-requests.
    let mut records = vec![
        push(Platform::Apns, "ok-1", &mailbox, 1),
        push(Platform::Apns, "bad-1", &mailbox, 1),
        push(Platform::Apns, "busy-1", &mailbox, 1),
        push(Platform::Apns, "down-1", &mailbox, 1),
        push(Platform::Probe, "probe-1", &mailbox, 1),
    ];
    let storm: Vec<String> = (0..50).map(|i| format!("storm-{i}")).collect();
    let slow: Vec<String> = (0..40).map(|i| format!("slow-{i}")).collect();
    for device in storm.iter().chain(&slow) {
        records.push(push(Platform::Apns, device, &mailbox, 1));
    }
    let ids: Vec<String> = records
        .iter()
        .filter_map(|r| r.value.as_deref())
        .map(|v| PushRequest::decode(v).expect("push").push_id)
        .collect();
    // A poison record among them: dead-lettered, the partition keeps moving.
    records.insert(
        2,
        TestRecord {
            key: b"apns/poison".to_vec(),
            partition: None,
            value: Some(vec![0xff, 0xff, 0xff, 0x0f, 0x01]),
        },
    );
    produce_records(&producer, &topics.push_requests, &records).await;
    let (receipts, max_pending) = wait_for_receipts(&kafka, &ids).await;
    assert!(
        fake.rejected.lock().expect("lock").is_empty(),
        "[{kind}] the fake APNs refused requests: {:?}",
        fake.rejected.lock().expect("lock")
    );

    let ok = expect_receipt(&receipts, "ok-1/1", kind);
    assert_eq!(
        (ok.outcome, ok.provider_status, ok.attempts),
        (DeliveryOutcome::Delivered as i32, 200, 1),
        "[{kind}] success"
    );
    assert_eq!(ok.tenant, TENANT);
    assert!(ok.end_to_end_latency_ms >= 0 && ok.time_ms > 0);

    let bad = expect_receipt(&receipts, "bad-1/1", kind);
    assert_eq!(
        (bad.outcome, bad.provider_status, bad.attempts),
        (DeliveryOutcome::Dropped as i32, 400, 1),
        "[{kind}] 400 BadDeviceToken is final"
    );
    assert!(bad.provider_reason.contains("BadDeviceToken"));

    let busy = expect_receipt(&receipts, "busy-1/1", kind);
    assert_eq!(
        (busy.outcome, busy.attempts),
        (DeliveryOutcome::Delivered as i32, 2),
        "[{kind}] 429 then delivered"
    );
    let tries = fake.requests("busy-1");
    assert_eq!(tries.len(), 2);
    assert!(
        tries[1].at.duration_since(tries[0].at) >= Duration::from_millis(950),
        "[{kind}] Retry-After: 1 honoured (waited {:?})",
        tries[1].at.duration_since(tries[0].at)
    );

    let down = expect_receipt(&receipts, "down-1/1", kind);
    assert_eq!(
        (down.outcome, down.provider_status, down.attempts),
        (DeliveryOutcome::Dropped as i32, 503, MAX_ATTEMPTS),
        "[{kind}] the retry budget ends retries"
    );
    assert_eq!(fake.requests("down-1").len(), MAX_ATTEMPTS as usize);
    let letters = decode::<DeadLetter>(&read_topic(&kafka, &topics.dead_letters).await);
    let letter = letters
        .iter()
        .find(|l| l.original_key == b"apns/down-1")
        .unwrap_or_else(|| panic!("[{kind}] no dead letter for down-1: {letters:?}"));
    assert_eq!(letter.reason, "retries_exhausted");
    assert_eq!(letter.source_topic, topics.push_requests);
    assert_eq!(
        PushRequest::decode(letter.original_value.as_slice())
            .expect("the dead letter keeps the push")
            .device_token,
        "down-1"
    );

    let poison = letters
        .iter()
        .find(|l| l.original_key == b"apns/poison")
        .unwrap_or_else(|| panic!("[{kind}] the poison record is dead-lettered: {letters:?}"));
    assert_eq!(poison.reason, "undecodable");
    assert_eq!(poison.original_value, vec![0xff, 0xff, 0xff, 0x0f, 0x01]);

    let probe = expect_receipt(&receipts, "probe-1/1", kind);
    assert_eq!(probe.outcome, DeliveryOutcome::Delivered as i32);
    assert!(
        fake.requests("probe-1").is_empty(),
        "[{kind}] PROBE needs no provider"
    );

    for device in &storm {
        let receipt = expect_receipt(&receipts, &format!("{device}/1"), kind);
        assert_eq!(
            receipt.outcome,
            DeliveryOutcome::Delivered as i32,
            "[{kind}] {device} delivered after the storm"
        );
    }
    let retried = storm
        .iter()
        .filter(|d| fake.requests(d).iter().any(|s| s.status == 503))
        .count();
    assert!(retried > 0, "[{kind}] the storm answered 503s");

    for device in &slow {
        let receipt = expect_receipt(&receipts, &format!("{device}/1"), kind);
        assert_eq!(receipt.outcome, DeliveryOutcome::Delivered as i32);
    }
    let most = fake.max_in_flight.load(Ordering::SeqCst);
    assert!(
        most <= MAX_IN_FLIGHT,
        "[{kind}] the server saw {most} requests at once; the limit is {MAX_IN_FLIGHT}"
    );
    assert!(
        max_pending <= MAX_PENDING as f64,
        "[{kind}] pending {max_pending} exceeded {MAX_PENDING}"
    );
    eprintln!(
        "[{kind}] most requests in flight {most}, most pending {max_pending}, {retried} devices saw 503"
    );

    // Part 2: through the fan-out stage; dead devices are removed.
    unregistered_devices_are_removed(&kafka, &fake, kind).await;

    // Part 3: a restart folds a device's backlog to its newest badge.
    deliver_stop.cancel();
    deliver.await.expect("stage task");
    let catch_up: Vec<TestRecord> = (1..=3)
        .map(|seq| push(Platform::Apns, "ok-cu", &mailbox, seq))
        .collect();
    produce_records(&producer, &topics.push_requests, &catch_up).await;
    let (deliver, deliver_stop) = start_deliver(&args);
    let ids: Vec<String> = (1..=3).map(|seq| format!("ok-cu/{seq}")).collect();
    let (receipts, _) = wait_for_receipts(&kafka, &ids).await;
    let sent: Vec<Option<u64>> = fake.requests("ok-cu").iter().map(|s| s.badge).collect();
    assert_eq!(
        sent,
        vec![Some(3)],
        "[{kind}] only the newest badge is sent after a restart"
    );
    for seq in 1..=2 {
        let old = expect_receipt(&receipts, &format!("ok-cu/{seq}"), kind);
        assert_eq!(old.outcome, DeliveryOutcome::Dropped as i32);
        assert!(
            old.provider_reason.starts_with("superseded"),
            "{}",
            old.provider_reason
        );
    }
    assert_eq!(
        expect_receipt(&receipts, "ok-cu/3", kind).outcome,
        DeliveryOutcome::Delivered as i32
    );
    deliver_stop.cancel();
    deliver.await.expect("stage task");
    providers.shutdown.cancel();
}

fn subscription(mailbox: &str, platform: Platform, device: &str) -> TestRecord {
    let key = mailbox_key(TENANT, mailbox);
    let value = Subscription {
        tenant: TENANT.into(),
        mailbox: mailbox.into(),
        platform: platform as i32,
        device_token: device.into(),
        app_id: if platform == Platform::Apns {
            APP.into()
        } else {
            "mail-badges".into()
        },
        environment: 1,
        created_time_ms: now_ms(),
        expires_time_ms: now_ms() + 3_600_000,
    };
    TestRecord {
        key: subscription_key(&key, platform as i32, device).into_bytes(),
        partition: Some(murmur2_partition(key.as_bytes(), PARTITIONS as usize)),
        value: Some(value.encode_to_vec()),
    }
}

fn count(mailbox: &str, sequence: u64) -> TestRecord {
    let key = mailbox_key(TENANT, mailbox);
    let value = UnreadCount {
        tenant: TENANT.into(),
        mailbox: mailbox.into(),
        count: sequence as u32 + 10,
        sequence,
        changes_coalesced: 1,
        first_ingress_time_ms: now_ms(),
        last_ingress_time_ms: now_ms(),
        emitted_time_ms: now_ms(),
        last_event_id: String::new(),
    };
    TestRecord {
        partition: Some(murmur2_partition(key.as_bytes(), PARTITIONS as usize)),
        key: key.into_bytes(),
        value: Some(value.encode_to_vec()),
    }
}

/// Receipts of the pushes the fan-out made for `sequence`, by device.
async fn fanned_receipts(
    kafka: &KafkaArgs,
    devices: &[&str],
    sequence: u64,
) -> HashMap<String, DeliveryReceipt> {
    let topics = kafka.topics();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        // Lenient: the poison record of part 1 sits in this topic too.
        let pushes: Vec<PushRequest> = read_topic(kafka, &topics.push_requests)
            .await
            .iter()
            .filter_map(|r| PushRequest::decode(r.payload.as_deref()?).ok())
            .collect();
        let receipts = receipts_by_id(&read_topic(kafka, &topics.delivery_receipts).await);
        let by_device: HashMap<String, DeliveryReceipt> = pushes
            .iter()
            .filter(|p| p.sequence == sequence && p.mailbox.starts_with("fanned"))
            .filter_map(|p| {
                receipts
                    .get(&p.push_id)
                    .map(|r| (p.device_token.clone(), r.clone()))
            })
            .collect();
        if devices.iter().all(|d| by_device.contains_key(*d)) || Instant::now() > deadline {
            return by_device;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn unregistered_devices_are_removed(kafka: &KafkaArgs, fake: &Fake, kind: &str) {
    let topics = kafka.topics();
    let producer = producer(kafka);
    let mailbox = format!("fanned@{TENANT}");
    // Subscriptions first: the fan-out reads them before serving its partitions.
    let subs = [
        subscription(&mailbox, Platform::Apns, "ok-2"),
        subscription(&mailbox, Platform::Apns, "gone-1"),
        subscription(&mailbox, Platform::Fcm, "fcm-ok-1"),
        subscription(&mailbox, Platform::Fcm, "fcm-gone-1"),
    ];
    produce_records(&producer, &topics.subscriptions, &subs).await;
    let stop = CancellationToken::new();
    let mut fanout_args = FanoutArgs::new(kafka.clone());
    fanout_args.group = format!("{}fanout", kafka.topic_prefix);
    let fanout_run = pushrelay_fanout::run(fanout_args, Health::new(), stop.clone());
    let fanout = tokio::spawn(async move { fanout_run.await.expect("fanout stage") });
    produce_records(&producer, &topics.unread_counts, &[count(&mailbox, 1)]).await;
    let all = ["ok-2", "gone-1", "fcm-ok-1", "fcm-gone-1"];
    let first = fanned_receipts(kafka, &all, 1).await;
    for device in ["ok-2", "fcm-ok-1"] {
        assert_eq!(
            first.get(device).map(|r| r.outcome),
            Some(DeliveryOutcome::Delivered as i32),
            "[{kind}] {device} delivered through the fan-out"
        );
    }
    for device in ["gone-1", "fcm-gone-1"] {
        assert_eq!(
            first.get(device).map(|r| r.outcome),
            Some(DeliveryOutcome::Unregistered as i32),
            "[{kind}] {device} unregistered"
        );
    }
    let key = mailbox_key(TENANT, &mailbox);
    let tombstones: Vec<String> = read_topic(kafka, &topics.subscriptions)
        .await
        .into_iter()
        .filter(|r| r.payload.is_none())
        .filter_map(|r| r.key.and_then(|k| String::from_utf8(k).ok()))
        .collect();
    for (platform, device) in [(Platform::Apns, "gone-1"), (Platform::Fcm, "fcm-gone-1")] {
        let expected = subscription_key(&key, platform as i32, device);
        assert!(
            tombstones.contains(&expected),
            "[{kind}] tombstone for {expected}: {tombstones:?}"
        );
    }
    let feedback = decode::<TenantFeedback>(&read_topic(kafka, &topics.tenant_feedback).await);
    for device in ["gone-1", "fcm-gone-1"] {
        assert!(
            feedback
                .iter()
                .any(|f| f.kind == FeedbackKind::DeviceUnregistered as i32
                    && f.device_token == device
                    && f.tenant == TENANT
                    && f.mailbox == mailbox),
            "[{kind}] the tenant is told {device} is gone: {feedback:?}"
        );
    }
    assert_eq!(
        fake.fcm_token_requests.load(Ordering::SeqCst),
        1,
        "[{kind}] one FCM token exchange"
    );

    // The fan-out applies the tombstones; the next count reaches only the live devices.
    tokio::time::sleep(Duration::from_secs(2)).await;
    produce_records(&producer, &topics.unread_counts, &[count(&mailbox, 2)]).await;
    let second = fanned_receipts(kafka, &["ok-2", "fcm-ok-1"], 2).await;
    assert_eq!(
        second.len(),
        2,
        "[{kind}] only the live devices got the second count: {second:?}"
    );
    for device in ["gone-1", "fcm-gone-1"] {
        assert_eq!(
            fake.requests(device).len(),
            1,
            "[{kind}] nothing more sent to {device}"
        );
    }
    assert_eq!(
        fake.requests("ok-2")
            .iter()
            .filter_map(|s| s.badge)
            .collect::<Vec<_>>(),
        vec![11, 12]
    );
    stop.cancel();
    fanout.await.expect("fanout task");
}

#[tokio::test]
async fn missing_credentials_are_named_at_startup() {
    let mut args = DeliverArgs::new(KafkaArgs::new("127.0.0.1:1"));
    args.apns_key_file = Some("/nonexistent/AuthKey_ABC.p8".into());
    args.apns_key_id = Some("ABC".into());
    args.apns_team_id = Some("TEAM".into());
    let err = pushrelay_deliver::run(args, Health::new(), CancellationToken::new())
        .await
        .expect_err("refused");
    let message = err.to_string();
    assert!(
        message.contains("APNs key file") && message.contains("/nonexistent/AuthKey_ABC.p8"),
        "{message}"
    );
}
