//! End-to-end load harness of the fan-out stage.
//!
//! Against `PUSHRELAY_TEST_BROKERS` (else the mock cluster): subscribes 2 devices to each
//! of `PUSHRELAY_LOAD_MAILBOXES` mailboxes (default 10,000), starts the stage, produces
//! `PUSHRELAY_LOAD_RECORDS` unread counts (default 100,000) and reports the time until every
//! input offset is committed (every push request acknowledged). The producer shares the
//! machine, so the rate is a floor.
//!
//! `cargo bench -p pushrelay-benches --bench fanout_load`

use std::time::{Duration, Instant};

use pushrelay_fanout::{FanoutArgs, run};
use pushrelay_kafka::murmur2_partition;
use pushrelay_proto::Message;
use pushrelay_proto::v1::{Subscription, UnreadCount};
use pushrelay_telemetry::Health;
use pushrelay_testkit::{TestBroker, TestRecord, produce_records, producer, wait_for_records};
use tokio_util::sync::CancellationToken;

use pushrelay_benches::env_or;

const PARTITIONS: i32 = 12;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let records = env_or("PUSHRELAY_LOAD_RECORDS", 100_000);
    let mailboxes = env_or("PUSHRELAY_LOAD_MAILBOXES", 10_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let broker = TestBroker::real().unwrap_or_else(TestBroker::mock);
        let kafka = broker.kafka_args("fanload", PARTITIONS);
        let topics = kafka.topics();
        broker.create_all_topics(&kafka).await;
        let producer = producer(&kafka);
        let key_of = |i: usize| format!("fabrikam.com/user{i}@fabrikam.com");
        let partition_of = |i: usize| murmur2_partition(key_of(i).as_bytes(), PARTITIONS as usize);
        let subs: Vec<TestRecord> = (0..mailboxes * 2)
            .map(|n| {
                let i = n / 2;
                let device = format!("{n:064x}");
                let value = Subscription {
                    tenant: "fabrikam.com".into(),
                    mailbox: format!("user{i}@fabrikam.com"),
                    platform: 1,
                    device_token: device.clone(),
                    app_id: "com.example.mail".into(),
                    environment: 1,
                    created_time_ms: 1,
                    expires_time_ms: i64::MAX / 2,
                };
                TestRecord {
                    key: format!("{}/apns/{device}", key_of(i)).into_bytes(),
                    partition: Some(partition_of(i)),
                    value: Some(value.encode_to_vec()),
                }
            })
            .collect();
        produce_records(&producer, &topics.subscriptions, &subs).await;
        let count = |i: usize, sequence: u64| {
            let value = UnreadCount {
                tenant: "fabrikam.com".into(),
                mailbox: format!("user{}@fabrikam.com", i % mailboxes),
                count: (sequence % 50) as u32,
                sequence,
                ..UnreadCount::default()
            };
            TestRecord {
                key: key_of(i % mailboxes).into_bytes(),
                partition: Some(partition_of(i % mailboxes)),
                value: Some(value.encode_to_vec()),
            }
        };
        let mut args = FanoutArgs::new(kafka.clone());
        args.group = format!("{}fanout", kafka.topic_prefix);
        let group = args.group.clone();
        let health = Health::new();
        let shutdown = CancellationToken::new();
        let stage = tokio::spawn(run(args, health.clone(), shutdown.clone()));
        produce_records(&producer, &topics.unread_counts, &[count(0, 1)]).await;
        wait_for_records(&kafka, &topics.push_requests, Duration::from_secs(60), |r| !r.is_empty()).await;

        let batch: Vec<TestRecord> = (0..records).map(|i| count(i, 2 + (i / mailboxes) as u64)).collect();
        let started = Instant::now();
        produce_records(&producer, &topics.unread_counts, &batch).await;
        let produced = started.elapsed();
        let total = records as i64 + 1;
        loop {
            let (brokers, group, topic) = (kafka.brokers.clone(), group.clone(), topics.unread_counts.clone());
            let done = tokio::task::spawn_blocking(move || pushrelay_testkit::committed_offsets(&brokers, &group, &topic, PARTITIONS)).await.expect("thread");
            if done >= total {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let elapsed = started.elapsed();
        println!(
            "fanout_load on the {} broker: {records} counts over {mailboxes} mailboxes x 2 devices, {PARTITIONS} partitions",
            broker.kind
        );
        println!(
            "  produced in {:.2} s; all offsets committed after {:.2} s => {:.0} counts/s, {:.0} push requests/s",
            produced.as_secs_f64(),
            elapsed.as_secs_f64(),
            records as f64 / elapsed.as_secs_f64(),
            2.0 * records as f64 / elapsed.as_secs_f64()
        );
        shutdown.cancel();
        let _ = stage.await;
    });
}
