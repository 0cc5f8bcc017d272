//! Kafka faults injected with librdkafka's mock cluster while the delivery stage runs,
//! without restarting it: produce requests failing (not leader, timeouts), fetches failing,
//! a slow broker, and the broker down for three seconds. Every push still gets exactly its
//! DELIVERED receipt, nothing is dead-lettered, and the stage is still running at the end.

use std::collections::HashSet;
use std::time::Duration;

use pushrelay_deliver::DeliverArgs;
use pushrelay_kafka::rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use pushrelay_kafka::{KafkaArgs, now_ms};
use pushrelay_proto::Message;
use pushrelay_proto::keys::push_key;
use pushrelay_proto::v1::{DeliveryOutcome, DeliveryReceipt, Platform, PushRequest};
use pushrelay_telemetry::Health;
use pushrelay_testkit::{TestBroker, TestRecord, produce_records, producer, read_topic};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const PARTITIONS: i32 = 4;

fn probe_push(n: usize) -> TestRecord {
    let device = format!("probe-{n}");
    let value = PushRequest {
        push_id: format!("push-{n}"),
        tenant: "fabrikam.com".into(),
        mailbox: format!("user{n}@fabrikam.com"),
        platform: Platform::Probe as i32,
        device_token: device.clone(),
        app_id: "pushrelay.probe".into(),
        badge: 1,
        expires_time_ms: now_ms() + 3_600_000,
        ingress_time_ms: now_ms(),
        sequence: 1,
        ..PushRequest::default()
    };
    TestRecord {
        key: push_key(Platform::Probe as i32, &device).into_bytes(),
        partition: None,
        value: Some(value.encode_to_vec()),
    }
}

/// Delivered receipts by push id, and how many receipts there are in all.
async fn receipts(kafka: &KafkaArgs) -> (HashSet<String>, usize) {
    let records = read_topic(kafka, &kafka.topics().delivery_receipts).await;
    let total = records.len();
    let delivered = records
        .iter()
        .filter_map(|r| DeliveryReceipt::decode(r.payload.as_deref()?).ok())
        .filter(|r| r.outcome == DeliveryOutcome::Delivered as i32)
        .map(|r| r.push_id)
        .collect();
    (delivered, total)
}

async fn wait_for(kafka: &KafkaArgs, upto: usize, what: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (delivered, total) = receipts(kafka).await;
        if (0..upto).all(|n| delivered.contains(&format!("push-{n}"))) {
            return total;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} of {upto} pushes delivered",
            delivered.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_rides_out_kafka_faults_without_a_restart() {
    pushrelay_testkit::init_test_logging();
    let broker = TestBroker::mock();
    let mock = broker.mock_cluster().expect("mock cluster");
    let kafka = broker.kafka_args("deliverfaults", PARTITIONS);
    broker.create_all_topics(&kafka).await;
    let topics = kafka.topics();
    let producer = producer(&kafka);
    let mut args = DeliverArgs::new(kafka.clone());
    args.group = format!("{}deliver", kafka.topic_prefix);
    let shutdown = CancellationToken::new();
    let stage = tokio::spawn(pushrelay_deliver::run(
        args,
        Health::new(),
        shutdown.clone(),
    ));
    let batch = |from: usize, to: usize| (from..to).map(probe_push).collect::<Vec<_>>();

    produce_records(&producer, &topics.push_requests, &batch(0, 200)).await;
    wait_for(&kafka, 200, "before any fault").await;

    // Produce requests fail a few times (the stage's receipts, retried by the idempotent
    // producer), and so do fetches.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        ],
    );
    mock.request_errors(
        RDKafkaApiKey::Fetch,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        ],
    );
    produce_records(&producer, &topics.push_requests, &batch(200, 400)).await;
    wait_for(&kafka, 400, "with request errors").await;

    // A slow broker: 300 ms per request.
    mock.broker_round_trip_time(1, Duration::from_millis(300))
        .expect("round-trip time");
    produce_records(&producer, &topics.push_requests, &batch(400, 500)).await;
    wait_for(&kafka, 500, "with a slow broker").await;
    mock.broker_round_trip_time(1, Duration::ZERO)
        .expect("round-trip time");

    // The broker down for three seconds while pushes are being written.
    mock.broker_down(1).expect("broker down");
    let down = Instant::now();
    let writer = {
        let producer = producer.clone();
        let topic = topics.push_requests.clone();
        tokio::spawn(async move { produce_records(&producer, &topic, &batch(500, 700)).await })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    mock.broker_up(1).expect("broker up");
    writer.await.expect("writer");
    assert!(
        down.elapsed() >= Duration::from_millis(2900),
        "the writes waited for the broker: it really was down"
    );
    let total = wait_for(&kafka, 700, "after the broker came back").await;

    assert!(
        !stage.is_finished(),
        "the stage kept running through the faults"
    );
    let letters = read_topic(&kafka, &topics.dead_letters).await;
    assert!(
        letters.is_empty(),
        "nothing dead-lettered: {} letters",
        letters.len()
    );
    assert_eq!(total, 700, "exactly one receipt per push");
    shutdown.cancel();
    stage
        .await
        .expect("stage task")
        .expect("the stage stops cleanly");
}
