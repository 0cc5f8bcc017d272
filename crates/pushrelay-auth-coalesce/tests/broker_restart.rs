//! The broker restarted mid-stream: a Nisshi of its own on SQLite storage is killed and
//! started again on the same port and storage while the stage runs. The stage is not
//! restarted; every mailbox still ends on its latest count and counts never go backwards.
//! Needs the `nisshi` binary (`scripts/test` installs it). Without it, under plain `cargo test`
//! (no `PUSHRELAY_TEST_BROKERS`), the test says it is skipped; under `scripts/test` a missing
//! `nisshi` fails it.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{PARTITIONS, RunningStage, round_of_changes, settled_counts, stage_args};
use pushrelay_kafka::KafkaArgs;
use pushrelay_testkit::nisshi::OwnNisshi;
use pushrelay_testkit::{TestTenant, all_topic_specs, produce_many, producer, register_tenant};
use tokio::time::Instant;

const MAILBOXES: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_stream_loses_no_count_and_needs_no_stage_restart() {
    pushrelay_testkit::init_test_logging();
    let Some(mut nisshi) = OwnNisshi::start("restart") else {
        assert!(
            std::env::var("PUSHRELAY_TEST_BROKERS").is_err(),
            "nisshi is not on PATH but the suite runs against a real broker"
        );
        eprintln!(
            "nisshi is not installed: skipping the broker-restart test (scripts/test runs it)"
        );
        return;
    };
    let mut kafka = KafkaArgs::new(nisshi.brokers());
    kafka.bootstrap.partitions = PARTITIONS;
    kafka.topic_prefix = "restart.".into();
    kafka.properties = vec![
        ("session.timeout.ms".into(), "6000".into()),
        ("heartbeat.interval.ms".into(), "500".into()),
        ("topic.metadata.refresh.interval.ms".into(), "1000".into()),
    ];
    pushrelay_kafka::ensure_topics(&kafka, &all_topic_specs(&kafka))
        .await
        .expect("topics");
    let topics = kafka.topics();
    let tenant = TestTenant::generate("fabrikam.com");
    let producer = producer(&kafka);
    register_tenant(&producer, &kafka, &tenant).await;
    let stage = RunningStage::start(stage_args(&kafka)).await;
    let token = tenant.token();
    let mut expected: HashMap<String, u32> = HashMap::new();
    let mut round =
        |round: u64| round_of_changes(&tenant.id, &token, MAILBOXES, round, &mut expected);
    for r in 1..=2 {
        produce_many(&producer, &topics.mailbox_changes, &round(r)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Down for two seconds while round 3 is being written (the producer waits it out).
    let restarted = Instant::now();
    let restart = tokio::task::spawn_blocking(move || {
        nisshi.restart_after(Duration::from_secs(2));
        nisshi
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    produce_many(&producer, &topics.mailbox_changes, &round(3)).await;
    let nisshi = restart.await.expect("restart thread");
    eprintln!("broker back after {:?}", restarted.elapsed());
    produce_many(&producer, &topics.mailbox_changes, &round(4)).await;

    let by_key = settled_counts(
        &kafka,
        &expected,
        Duration::from_secs(120),
        Duration::from_millis(500),
        "restarted nisshi",
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
    assert!(stage.health.is_ready(), "the stage recovered by itself");
    stage.stop().await;
    drop(nisshi);
}
