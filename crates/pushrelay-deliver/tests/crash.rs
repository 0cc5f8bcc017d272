//! The delivery binary under churn (mock cluster, then the real broker): SIGKILLed mid-stream
//! with a second instance taking over, and scaled 1 → 3 → 1 while pushes flow. Every
//! device's newest push reaches the (fake) provider and gets a DELIVERED receipt, and a device
//! never receives an older badge after a newer one.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use pushrelay_kafka::{KafkaArgs, now_ms};
use pushrelay_proto::Message;
use pushrelay_proto::keys::push_key;
use pushrelay_proto::v1::{DeliveryOutcome, DeliveryReceipt, Platform, PushRequest};
use pushrelay_testkit::{
    StageProcess, TestBroker, TestRecord, produce_records, producer, read_topic,
};
use tokio::time::Instant;

mod common;
use common::Pki;

const PARTITIONS: i32 = 4;
const DEVICES: usize = 400;
const ROUNDS: u64 = 3;

/// Badges each device received, in arrival order.
type Seen = Arc<Mutex<HashMap<String, Vec<u64>>>>;

async fn apns(State(seen): State<Seen>, Path(device): Path<String>, body: String) -> StatusCode {
    // A little provider latency, so sends are in flight when the stage is killed.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let badge = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.pointer("/aps/badge").and_then(serde_json::Value::as_u64))
        .unwrap_or(0);
    seen.lock()
        .expect("lock")
        .entry(device)
        .or_default()
        .push(badge);
    StatusCode::OK
}

fn push(device: usize, round: u64) -> TestRecord {
    let token = format!("{device:064x}");
    let now = now_ms();
    let value = PushRequest {
        push_id: format!("{device}/{round}"),
        tenant: "fabrikam.com".into(),
        mailbox: format!("user{device}@fabrikam.com"),
        platform: Platform::Apns as i32,
        device_token: token.clone(),
        app_id: "com.example.mail".into(),
        environment: 1,
        badge: round as u32,
        collapse_id: "c0ffee".into(),
        expires_time_ms: now + 3_600_000,
        priority: 5,
        payload: format!(r#"{{"aps":{{"badge":{round}}}}}"#).into_bytes(),
        push_type: "alert".into(),
        ingress_time_ms: now,
        sequence: round,
    };
    TestRecord {
        key: push_key(Platform::Apns as i32, &token).into_bytes(),
        partition: None,
        value: Some(value.encode_to_vec()),
    }
}

fn spawn(kafka: &KafkaArgs, pki: &Pki, p8: &std::path::Path, base: &str) -> StageProcess {
    StageProcess::spawn(
        env!("CARGO_BIN_EXE_pushrelay-deliver"),
        kafka,
        &[
            ("PUSHRELAY_GROUP", format!("{}deliver", kafka.topic_prefix)),
            ("PUSHRELAY_APNS_KEY_FILE", p8.display().to_string()),
            ("PUSHRELAY_APNS_KEY_ID", "KEYID12345".to_owned()),
            ("PUSHRELAY_APNS_TEAM_ID", "TEAM123456".to_owned()),
            ("PUSHRELAY_APNS_BASE_URL", base.to_owned()),
            (
                "PUSHRELAY_PROVIDER_CA_FILE",
                pki.ca_file().display().to_string(),
            ),
            ("PUSHRELAY_MAX_IN_FLIGHT", "16".to_owned()),
            ("PUSHRELAY_LOG", "warn".to_owned()),
        ],
    )
}

fn delivered(records: &[pushrelay_kafka::Record]) -> HashSet<String> {
    records
        .iter()
        .filter_map(|r| DeliveryReceipt::decode(r.payload.as_deref()?).ok())
        .filter(|r| r.outcome == DeliveryOutcome::Delivered as i32)
        .map(|r| r.push_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_no_push_and_never_sends_an_older_badge_after_a_newer_one() {
    pushrelay_testkit::init_test_logging();
    for broker in TestBroker::all() {
        eprintln!("-- on the {} broker {}", broker.kind, broker.brokers);
        scenario(&broker).await;
    }
}

async fn scenario(broker: &TestBroker) {
    let kind = broker.kind;
    let kafka = broker.kafka_args("delivercrash", PARTITIONS);
    let topics = kafka.topics();
    broker.create_all_topics(&kafka).await;
    let pki = Pki::new(&format!("delivercrash-{kind}"));
    let p8 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("p8");
    let p8_file = pki.write("AuthKey.p8", p8.serialize_pem().as_bytes());
    let seen: Seen = Arc::default();
    let app = Router::new()
        .route("/3/device/{device}", post(apns))
        .with_state(Arc::clone(&seen));
    let (addr, server) = pki.serve(app).await;
    let base = format!("https://localhost:{}", addr.port());
    let producer = producer(&kafka);

    let mut first = spawn(&kafka, &pki, &p8_file, &base);
    for round in 1..=ROUNDS {
        let records: Vec<TestRecord> = (0..DEVICES).map(|d| push(d, round)).collect();
        produce_records(&producer, &topics.push_requests, &records).await;
    }
    // Kill it once it is well into the stream.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let sent: usize = seen.lock().expect("lock").values().map(Vec::len).sum();
        if sent >= DEVICES / 2 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.sigkill();
    let killed_at: usize = seen.lock().expect("lock").values().map(Vec::len).sum();
    let second = spawn(&kafka, &pki, &p8_file, &base);

    // Every device's newest push ends DELIVERED (older ones may be superseded).
    let newest: Vec<String> = (0..DEVICES).map(|d| format!("{d}/{ROUNDS}")).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    let receipts = loop {
        let receipts = delivered(&read_topic(&kafka, &topics.delivery_receipts).await);
        if newest.iter().all(|id| receipts.contains(id)) || Instant::now() > deadline {
            break receipts;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let missing: Vec<&String> = newest.iter().filter(|id| !receipts.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "[{kind}] {} newest pushes without a DELIVERED receipt, e.g. {:?}",
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>()
    );
    let seen = seen.lock().expect("lock").clone();
    let mut sends = 0;
    for d in 0..DEVICES {
        let token = format!("{d:064x}");
        let badges = seen.get(&token).cloned().unwrap_or_default();
        sends += badges.len();
        assert_eq!(
            badges.last(),
            Some(&ROUNDS),
            "[{kind}] device {d} ends on the newest badge: {badges:?}"
        );
        assert!(
            badges.windows(2).all(|w| w[0] <= w[1]),
            "[{kind}] device {d} got an older badge after a newer one: {badges:?}"
        );
    }
    eprintln!(
        "[{kind}] {} pushes produced, {killed_at} sent before the SIGKILL, {sends} sends in all ({} beyond one per device)",
        DEVICES as u64 * ROUNDS,
        sends.saturating_sub(DEVICES)
    );
    drop(second);
    server.cancel();
}

/// Sends seen so far.
fn sent(seen: &Seen) -> usize {
    seen.lock().expect("lock").values().map(Vec::len).sum()
}

async fn wait_sent(seen: &Seen, at_least: usize) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while sent(seen) < at_least && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_one_to_three_to_one_loses_no_push_and_keeps_badges_in_order() {
    pushrelay_testkit::init_test_logging();
    for broker in TestBroker::all() {
        let kind = broker.kind;
        eprintln!("-- on the {kind} broker {}", broker.brokers);
        let kafka = broker.kafka_args("deliverscale", PARTITIONS);
        let topics = kafka.topics();
        broker.create_all_topics(&kafka).await;
        let pki = Pki::new(&format!("deliverscale-{kind}"));
        let p8 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("p8");
        let p8_file = pki.write("AuthKey.p8", p8.serialize_pem().as_bytes());
        let seen: Seen = Arc::default();
        let app = Router::new()
            .route("/3/device/{device}", post(apns))
            .with_state(Arc::clone(&seen));
        let (addr, server) = pki.serve(app).await;
        let base = format!("https://localhost:{}", addr.port());
        let producer = producer(&kafka);
        let round = |r: u64| (0..DEVICES).map(|d| push(d, r)).collect::<Vec<_>>();

        let first = spawn(&kafka, &pki, &p8_file, &base);
        produce_records(&producer, &topics.push_requests, &round(1)).await;
        wait_sent(&seen, DEVICES / 2).await;
        // Scale out to three while round 2 flows.
        let second = spawn(&kafka, &pki, &p8_file, &base);
        let third = spawn(&kafka, &pki, &p8_file, &base);
        produce_records(&producer, &topics.push_requests, &round(2)).await;
        wait_sent(&seen, DEVICES + DEVICES / 2).await;
        // Back to one: the two leave gracefully (drain, commit) while round 3 flows.
        produce_records(&producer, &topics.push_requests, &round(3)).await;
        for instance in [second, third] {
            let exit = tokio::task::spawn_blocking(move || instance.terminate())
                .await
                .expect("thread");
            assert!(exit.success(), "[{kind}] a scaled-in instance exits 0");
        }

        let newest: Vec<String> = (0..DEVICES).map(|d| format!("{d}/{ROUNDS}")).collect();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let receipts = delivered(&read_topic(&kafka, &topics.delivery_receipts).await);
            let missing = newest.iter().filter(|id| !receipts.contains(*id)).count();
            if missing == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "[{kind}] {missing} newest pushes without a DELIVERED receipt"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let seen = seen.lock().expect("lock").clone();
        for d in 0..DEVICES {
            let badges = seen.get(&format!("{d:064x}")).cloned().unwrap_or_default();
            assert_eq!(
                badges.last(),
                Some(&ROUNDS),
                "[{kind}] device {d}: {badges:?}"
            );
            assert!(
                badges.windows(2).all(|w| w[0] <= w[1]),
                "[{kind}] device {d} got an older badge after a newer one: {badges:?}"
            );
        }
        let sends: usize = seen.values().map(Vec::len).sum();
        eprintln!(
            "[{kind}] scaled 1 -> 3 -> 1: {} pushes, {sends} sends",
            DEVICES as u64 * ROUNDS
        );
        let exit = tokio::task::spawn_blocking(move || first.terminate())
            .await
            .expect("thread");
        assert!(exit.success(), "[{kind}] the remaining instance exits 0");
        server.cancel();
    }
}
