//! End-to-end load harness of the auth-and-coalesce stage.
//!
//! Starts the stage against a broker (the one of `PUSHRELAY_TEST_BROKERS`, else the
//! in-process mock cluster), produces `PUSHRELAY_LOAD_RECORDS` signed `MailboxChange`
//! records (default 200,000) over `PUSHRELAY_LOAD_MAILBOXES` mailboxes (default 20,000)
//! of two tenants, one token per tenant as in real requests, and measures the time until
//! the stage has committed every input offset (every output acknowledged). The producer
//! runs on the same machine, so the rate is a floor for the stage alone.
//!
//! `cargo bench -p pushrelay-benches --bench stage_load`

use std::time::{Duration, Instant};

use pushrelay_auth_coalesce::{StageArgs, run};
use pushrelay_proto::Message;
use pushrelay_proto::v1::MailboxChange;
use pushrelay_telemetry::Health;
use pushrelay_testkit::{
    TestBroker, TestTenant, produce, produce_many, producer, wait_for_records,
};
use tokio_util::sync::CancellationToken;

use pushrelay_benches::env_or;

const PARTITIONS: i32 = 12;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let records = env_or("PUSHRELAY_LOAD_RECORDS", 200_000);
    let mailboxes = env_or("PUSHRELAY_LOAD_MAILBOXES", 20_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let broker = TestBroker::real().unwrap_or_else(TestBroker::mock);
        let kafka = broker.kafka_args("load", PARTITIONS);
        let topics = kafka.topics();
        broker.create_all_topics(&kafka).await;
        let tenants = [TestTenant::generate("fabrikam.com"), TestTenant::generate("contoso.com")];
        let producer = producer(&kafka);
        for tenant in &tenants {
            produce(&producer, &topics.tenants, tenant.id.as_bytes(), None, Some(&tenant.record().encode_to_vec())).await;
        }
        let mut args = StageArgs::new(kafka.clone());
        args.group = format!("{}auth", kafka.topic_prefix);
        let group = args.group.clone();
        let health = Health::new();
        let shutdown = CancellationToken::new();
        let stage = tokio::spawn(run(args, health.clone(), shutdown.clone()));
        while !health.is_ready() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let tokens: Vec<String> = tenants.iter().map(TestTenant::token).collect();
        let encode = |i: usize, sequence: u64| {
            let t = i % 2;
            let mailbox = format!("user{}@{}", i % mailboxes, tenants[t].id);
            let key = format!("{}/{mailbox}", tenants[t].id).into_bytes();
            let value = MailboxChange {
                event_id: format!("e{i}"),
                mailbox,
                unread_count: (sequence % 100) as u32,
                sequence,
                source_time_ms: 0,
                ingress_time_ms: pushrelay_kafka::now_ms(),
                token: tokens[t].clone(),
            }
            .encode_to_vec();
            (key, value)
        };
        // Warm up: the group is joined and the stage serves once one count comes out.
        produce_many(&producer, &topics.mailbox_changes, &[encode(0, 1)]).await;
        wait_for_records(&kafka, &topics.unread_counts, Duration::from_secs(60), |r| !r.is_empty()).await;

        let batch: Vec<(Vec<u8>, Vec<u8>)> = (0..records)
            .map(|i| encode(i, 2 + (i / mailboxes) as u64))
            .collect();
        let value_size = batch.first().map_or(0, |(_, v)| v.len());
        let started = Instant::now();
        produce_many(&producer, &topics.mailbox_changes, &batch).await;
        let produced = started.elapsed();
        let total = records as i64 + 1;
        loop {
            let brokers = kafka.brokers.clone();
            let (group, topic) = (group.clone(), topics.mailbox_changes.clone());
            let done = tokio::task::spawn_blocking(move || pushrelay_testkit::committed_offsets(&brokers, &group, &topic, PARTITIONS))
                .await
                .expect("offsets thread");
            if done >= total {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let elapsed = started.elapsed();
        println!(
            "stage_load on the {} broker: {records} records ({value_size} B each) over {mailboxes} mailboxes, {PARTITIONS} partitions",
            broker.kind
        );
        println!(
            "  produced in {:.2} s; all input offsets committed after {:.2} s => {:.0} records/s end to end",
            produced.as_secs_f64(),
            elapsed.as_secs_f64(),
            records as f64 / elapsed.as_secs_f64()
        );
        shutdown.cancel();
        let _ = stage.await;
    });
}
