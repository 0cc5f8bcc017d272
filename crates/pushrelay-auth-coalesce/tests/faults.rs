//! Kafka faults injected with the mock cluster while the stage runs, without restarting it:
//! produce and fetch request errors, a slow broker, the broker down for three seconds. Every
//! mailbox still ends on its latest count, counts never go backwards, and the stage is still
//! running at the end.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{PARTITIONS, RunningStage, round_of_changes, settled_counts, stage_args};
use pushrelay_kafka::rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use pushrelay_testkit::{TestBroker, TestTenant, produce_many, producer, register_tenant};

const MAILBOXES: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_faults_lose_no_count_and_need_no_restart() {
    pushrelay_testkit::init_test_logging();
    let broker = TestBroker::mock();
    let mock = broker.mock_cluster().expect("mock cluster");
    let kafka = broker.kafka_args("authfaults", PARTITIONS);
    let topics = kafka.topics();
    broker.create_all_topics(&kafka).await;
    let tenant = TestTenant::generate("fabrikam.com");
    let producer = producer(&kafka);
    register_tenant(&producer, &kafka, &tenant).await;
    let stage = RunningStage::start(stage_args(&kafka)).await;
    let token = tenant.token();
    let mut expected: HashMap<String, u32> = HashMap::new();
    let mut round =
        |round: u64| round_of_changes(&tenant.id, &token, MAILBOXES, round, &mut expected);
    produce_many(&producer, &topics.mailbox_changes, &round(1)).await;

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
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT],
    );
    produce_many(&producer, &topics.mailbox_changes, &round(2)).await;

    mock.broker_round_trip_time(1, Duration::from_millis(300))
        .expect("round-trip time");
    produce_many(&producer, &topics.mailbox_changes, &round(3)).await;
    mock.broker_round_trip_time(1, Duration::ZERO)
        .expect("round-trip time");

    mock.broker_down(1).expect("broker down");
    let batch = round(4);
    let writer = {
        let (producer, topic) = (producer.clone(), topics.mailbox_changes.clone());
        tokio::spawn(async move { produce_many(&producer, &topic, &batch).await })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    mock.broker_up(1).expect("broker up");
    writer.await.expect("writer");

    let by_key = settled_counts(
        &kafka,
        &expected,
        Duration::from_secs(120),
        Duration::from_millis(500),
        broker.kind,
    )
    .await;
    for (key, values) in by_key {
        let sequences: Vec<u64> = values.iter().map(|v| v.sequence).collect();
        assert!(
            sequences.windows(2).all(|w| w[0] < w[1]),
            "{key}: an older count followed a newer one: {sequences:?}"
        );
        assert_eq!(
            values.last().map(|v| v.count),
            expected.get(&key).copied(),
            "{key}"
        );
    }
    assert!(
        stage.health.is_ready(),
        "the stage kept running through the faults"
    );
    stage.stop().await;
}
