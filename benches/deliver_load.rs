//! End-to-end load harness of the delivery stage, without a provider.
//!
//! Against `PUSHRELAY_TEST_BROKERS` (else the mock cluster): starts the stage, produces
//! `PUSHRELAY_LOAD_RECORDS` push requests (default 100,000) for `PROBE` devices, which need no
//! provider (one device each, so none is superseded), and reports the time until every input
//! offset is committed, i.e. every receipt acknowledged: the stage's own cost per push
//! (Kafka in and out, scheduling, receipts) with the network to APNs/FCM taken out. The
//! producer shares the machine, so the rate is a floor.
//!
//! `cargo bench -p pushrelay-benches --bench deliver_load`

use std::time::{Duration, Instant};

use pushrelay_deliver::{DeliverArgs, run};
use pushrelay_proto::Message;
use pushrelay_proto::keys::push_key;
use pushrelay_proto::v1::{Platform, PushRequest};
use pushrelay_telemetry::Health;
use pushrelay_testkit::{TestBroker, TestRecord, produce_records, producer, wait_for_records};
use tokio_util::sync::CancellationToken;

use pushrelay_benches::env_or;

const PARTITIONS: i32 = 12;

fn push(i: usize) -> TestRecord {
    let device = format!("probe-{i:060x}");
    let value = PushRequest {
        push_id: format!("{i:032x}"),
        tenant: "fabrikam.com".into(),
        mailbox: format!("user{}@fabrikam.com", i % 10_000),
        platform: Platform::Probe as i32,
        device_token: device.clone(),
        app_id: "pushrelay.probe".into(),
        badge: (i % 50) as u32,
        expires_time_ms: i64::MAX / 2,
        ingress_time_ms: 1,
        sequence: 1,
        ..PushRequest::default()
    };
    TestRecord {
        key: push_key(Platform::Probe as i32, &device).into_bytes(),
        partition: None,
        value: Some(value.encode_to_vec()),
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let records = env_or("PUSHRELAY_LOAD_RECORDS", 100_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let broker = TestBroker::real().unwrap_or_else(TestBroker::mock);
        let kafka = broker.kafka_args("deliverload", PARTITIONS);
        let topics = kafka.topics();
        broker.create_all_topics(&kafka).await;
        let producer = producer(&kafka);
        let mut args = DeliverArgs::new(kafka.clone());
        args.group = format!("{}deliver", kafka.topic_prefix);
        let group = args.group.clone();
        let shutdown = CancellationToken::new();
        let stage = tokio::spawn(run(args, Health::new(), shutdown.clone()));
        produce_records(&producer, &topics.push_requests, &[push(records)]).await;
        wait_for_records(&kafka, &topics.delivery_receipts, Duration::from_secs(60), |r| !r.is_empty()).await;

        let batch: Vec<TestRecord> = (0..records).map(push).collect();
        let started = Instant::now();
        produce_records(&producer, &topics.push_requests, &batch).await;
        let produced = started.elapsed();
        let total = records as i64 + 1;
        loop {
            let (brokers, group, topic) = (kafka.brokers.clone(), group.clone(), topics.push_requests.clone());
            let done = tokio::task::spawn_blocking(move || pushrelay_testkit::committed_offsets(&brokers, &group, &topic, PARTITIONS)).await.expect("thread");
            if done >= total {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let elapsed = started.elapsed();
        println!("deliver_load on the {} broker: {records} PROBE pushes, {PARTITIONS} partitions", broker.kind);
        println!(
            "  produced in {:.2} s; all offsets committed after {:.2} s => {:.0} pushes/s (receipts written and acknowledged)",
            produced.as_secs_f64(),
            elapsed.as_secs_f64(),
            records as f64 / elapsed.as_secs_f64(),
        );
        shutdown.cancel();
        let _ = stage.await;
    });
}
