//! SIGKILL of the stage binary mid-stream: a second instance takes over; no mailbox's
//! final count is lost and no count older than an emitted one is emitted after it.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{PARTITIONS, round_of_changes, settled_counts};
use pushrelay_kafka::KafkaArgs;
use pushrelay_testkit::{
    StageProcess, TestBroker, TestTenant, produce_many, producer, register_tenant, wait_for_records,
};

const MAILBOXES: usize = 200;
const ROUNDS: u64 = 30;

fn spawn_stage(kafka: &KafkaArgs, name: &str) -> StageProcess {
    StageProcess::spawn(
        env!("CARGO_BIN_EXE_pushrelay-auth"),
        kafka,
        &[
            ("PUSHRELAY_GROUP", format!("{}auth", kafka.topic_prefix)),
            ("PUSHRELAY_QUIET_PERIOD_MS", "100".to_owned()),
            ("PUSHRELAY_MAX_DELAY_MS", "300".to_owned()),
            (
                "PUSHRELAY_LOG",
                format!("warn,pushrelay_kafka=info,{name}=info"),
            ),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_no_final_count_and_never_goes_back() {
    pushrelay_testkit::init_test_logging();
    let tenant = TestTenant::generate("fabrikam.com");
    for broker in TestBroker::all() {
        eprintln!("-- on the {} broker {}", broker.kind, broker.brokers);
        scenario(&broker, &tenant).await;
    }
}

async fn scenario(broker: &TestBroker, tenant: &TestTenant) {
    let kafka = broker.kafka_args("crash", PARTITIONS);
    let topics = kafka.topics();
    broker.create_all_topics(&kafka).await;
    let producer = producer(&kafka);
    register_tenant(&producer, &kafka, tenant).await;
    let mut first = spawn_stage(&kafka, "first");
    let token = tenant.token();
    let mut expected: HashMap<String, u32> = HashMap::new();
    let mut second = None;
    for round in 1..=ROUNDS {
        let batch = round_of_changes(&tenant.id, &token, MAILBOXES, round, &mut expected);
        produce_many(&producer, &topics.mailbox_changes, &batch).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        if round == ROUNDS / 2 {
            // Make sure the first instance has emitted something, then kill it.
            wait_for_records(
                &kafka,
                &topics.unread_counts,
                Duration::from_secs(60),
                |r| !r.is_empty(),
            )
            .await;
            first.sigkill();
            eprintln!("killed the first instance after round {round}");
            second = Some(spawn_stage(&kafka, "second"));
        }
    }
    let second = second.expect("second instance started");
    let by_key = settled_counts(
        &kafka,
        &expected,
        Duration::from_secs(120),
        Duration::from_millis(500),
        broker.kind,
    )
    .await;
    // The restored fence drops every replayed change, so even a repeat of the latest count
    // (which the design allows) does not happen: sequences strictly grow.
    for (key, values) in by_key {
        let sequences: Vec<u64> = values.iter().map(|v| v.sequence).collect();
        assert!(
            sequences.windows(2).all(|w| w[0] < w[1]),
            "[{}] {key}: an older count followed a newer one: {sequences:?}",
            broker.kind
        );
        assert_eq!(values.last().map(|v| v.count), expected.get(&key).copied());
    }
    // A graceful stop drains, commits and exits 0.
    eprintln!("stopping the second instance (pid {})", second.pid());
    let exit = tokio::task::spawn_blocking(move || second.terminate())
        .await
        .expect("wait thread");
    assert!(
        exit.success(),
        "[{}] graceful stop exits 0, got {exit:?}",
        broker.kind
    );
}
