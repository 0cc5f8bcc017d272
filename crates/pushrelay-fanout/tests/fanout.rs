//! The fan-out stage against a broker (mock cluster always, the real broker when
//! `PUSHRELAY_TEST_BROKERS` is set): two instances in one group, 500 mailboxes with 1–3
//! devices each; every count gives exactly the pushes of its mailbox's live devices; a
//! SIGKILLed instance's partitions are taken over with nothing missed; a tombstone stops
//! pushes to its device; expired subscriptions get none and are tombstoned.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use pushrelay_kafka::{KafkaArgs, Record, murmur2_partition};
use pushrelay_proto::Message;
use pushrelay_proto::v1::{Platform, PushRequest, Subscription, UnreadCount};
use pushrelay_testkit::{
    StageProcess, TestBroker, TestRecord, produce_records, producer, read_topic, wait_for_records,
};

const PARTITIONS: i32 = 4;
const MAILBOXES: usize = 500;
const TENANT: &str = "fabrikam.com";

fn start_instance(kafka: &KafkaArgs) -> StageProcess {
    StageProcess::spawn(
        env!("CARGO_BIN_EXE_pushrelay-fanout"),
        kafka,
        &[
            ("PUSHRELAY_GROUP", format!("{}fanout", kafka.topic_prefix)),
            ("PUSHRELAY_LOG", "warn".to_owned()),
        ],
    )
}

fn mailbox(i: usize) -> String {
    format!("user{i}@{TENANT}")
}

fn mailbox_key(i: usize) -> String {
    format!("{TENANT}/{}", mailbox(i))
}

fn partition_of(i: usize) -> i32 {
    murmur2_partition(mailbox_key(i).as_bytes(), PARTITIONS as usize)
}

fn subscription(i: usize, device: &str, expires: i64) -> TestRecord {
    let value = Subscription {
        tenant: TENANT.into(),
        mailbox: mailbox(i),
        platform: Platform::Apns as i32,
        device_token: device.into(),
        app_id: "com.example.mail".into(),
        environment: 1,
        created_time_ms: 1,
        expires_time_ms: expires,
    };
    TestRecord {
        key: format!("{}/apns/{device}", mailbox_key(i)).into_bytes(),
        partition: Some(partition_of(i)),
        value: Some(value.encode_to_vec()),
    }
}

fn counts(round: u64) -> Vec<TestRecord> {
    (0..MAILBOXES)
        .map(|i| {
            let value = UnreadCount {
                tenant: TENANT.into(),
                mailbox: mailbox(i),
                count: (i as u32 + round as u32) % 50,
                sequence: round,
                changes_coalesced: 1,
                first_ingress_time_ms: 0,
                last_ingress_time_ms: 0,
                emitted_time_ms: 0,
                last_event_id: String::new(),
            };
            TestRecord {
                key: mailbox_key(i).into_bytes(),
                partition: Some(partition_of(i)),
                value: Some(value.encode_to_vec()),
            }
        })
        .collect()
}

/// Devices pushed per (mailbox, sequence).
fn pushed(records: &[Record]) -> HashMap<(String, u64), BTreeSet<String>> {
    let mut out: HashMap<(String, u64), BTreeSet<String>> = HashMap::new();
    for r in records {
        let push =
            PushRequest::decode(r.payload.as_deref().unwrap_or_default()).expect("PushRequest");
        assert_eq!(
            push.badge,
            (push
                .mailbox
                .trim_start_matches("user")
                .split('@')
                .next()
                .and_then(|n| n.parse::<u32>().ok())
                .unwrap_or(0)
                + push.sequence as u32)
                % 50
        );
        out.entry((push.mailbox.clone(), push.sequence))
            .or_default()
            .insert(push.device_token);
    }
    out
}

fn all_rounds_pushed(
    records: &[Record],
    live: &HashMap<usize, BTreeSet<String>>,
    round: u64,
) -> bool {
    let pushed = pushed(records);
    live.iter()
        .all(|(i, devices)| pushed.get(&(mailbox(*i), round)) == Some(devices))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_push_exactly_the_live_devices_and_survive_a_kill() {
    pushrelay_testkit::init_test_logging();
    for broker in TestBroker::all() {
        eprintln!("-- on the {} broker {}", broker.kind, broker.brokers);
        scenario(&broker).await;
    }
}

async fn scenario(broker: &TestBroker) {
    let kind = broker.kind;
    let kafka = broker.kafka_args("fanout", PARTITIONS);
    let topics = kafka.topics();
    broker.create_all_topics(&kafka).await;
    let producer = producer(&kafka);
    let far = i64::MAX / 2;
    let mut live: HashMap<usize, BTreeSet<String>> = HashMap::new();
    let mut subs = Vec::new();
    for i in 0..MAILBOXES {
        for d in 0..(1 + i % 3) {
            let device = format!("dev{i}-{d}");
            subs.push(subscription(i, &device, far));
            live.entry(i).or_default().insert(device);
        }
        if i % 50 == 0 {
            subs.push(subscription(i, &format!("expired{i}"), 1));
        }
    }
    produce_records(&producer, &topics.subscriptions, &subs).await;

    let mut first = start_instance(&kafka);
    let second = start_instance(&kafka);
    produce_records(&producer, &topics.unread_counts, &counts(1)).await;
    let records = wait_for_records(
        &kafka,
        &topics.push_requests,
        Duration::from_secs(90),
        |r| all_rounds_pushed(r, &live, 1),
    )
    .await;
    assert!(
        all_rounds_pushed(&records, &live, 1),
        "[{kind}] round 1: every live device pushed"
    );

    // One instance dies; the other takes its partitions over.
    first.sigkill();
    produce_records(&producer, &topics.unread_counts, &counts(2)).await;
    let records = wait_for_records(
        &kafka,
        &topics.push_requests,
        Duration::from_secs(90),
        |r| all_rounds_pushed(r, &live, 2),
    )
    .await;
    assert!(
        all_rounds_pushed(&records, &live, 2),
        "[{kind}] round 2 after the kill: nothing missed"
    );

    // A tombstone stops pushes to its device.
    let stopped = "dev7-0".to_owned();
    produce_records(
        &producer,
        &topics.subscriptions,
        &[TestRecord {
            key: format!("{}/apns/{stopped}", mailbox_key(7)).into_bytes(),
            partition: Some(partition_of(7)),
            value: None,
        }],
    )
    .await;
    live.get_mut(&7).expect("mailbox 7").remove(&stopped);
    tokio::time::sleep(Duration::from_secs(1)).await;
    produce_records(&producer, &topics.unread_counts, &counts(3)).await;
    let records = wait_for_records(
        &kafka,
        &topics.push_requests,
        Duration::from_secs(90),
        |r| all_rounds_pushed(r, &live, 3),
    )
    .await;
    assert!(all_rounds_pushed(&records, &live, 3), "[{kind}] round 3");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pushed = pushed(&read_topic(&kafka, &topics.push_requests).await);
    for ((mailbox_name, round), devices) in &pushed {
        let i: usize = mailbox_name
            .trim_start_matches("user")
            .split('@')
            .next()
            .and_then(|n| n.parse().ok())
            .expect("index");
        let mut expected = live[&i].clone();
        if i == 7 && *round < 3 {
            expected.insert(stopped.clone());
        }
        assert_eq!(
            devices, &expected,
            "[{kind}] {mailbox_name} round {round}: exactly the live devices"
        );
    }
    let tombstones: BTreeSet<String> = read_topic(&kafka, &topics.subscriptions)
        .await
        .iter()
        .filter(|r| r.payload.is_none())
        .map(|r| String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned())
        .collect();
    for i in (0..MAILBOXES).step_by(50) {
        assert!(
            tombstones.contains(&format!("{}/apns/expired{i}", mailbox_key(i))),
            "[{kind}] expired subscription of mailbox {i} tombstoned"
        );
    }
    let exit = tokio::task::spawn_blocking(move || second.terminate())
        .await
        .expect("thread");
    assert!(exit.success(), "[{kind}] graceful stop exits 0: {exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mismatched_partition_counts_are_refused_with_both_names() {
    let broker = TestBroker::mock();
    let kafka = broker.kafka_args("mismatch", 4);
    let topics = kafka.topics();
    let mock = broker.mock_cluster().expect("mock");
    mock.create_topic(&topics.unread_counts, 4, 1)
        .expect("topic");
    mock.create_topic(&topics.subscriptions, 3, 1)
        .expect("topic");
    for topic in [&topics.push_requests, &topics.dead_letters] {
        mock.create_topic(topic, 4, 1).expect("topic");
    }
    let result = pushrelay_fanout::run(
        pushrelay_fanout::FanoutArgs::new(kafka.clone()),
        pushrelay_telemetry::Health::new(),
        tokio_util::sync::CancellationToken::new(),
    )
    .await;
    let message = result.expect_err("refused").to_string();
    assert!(
        message.contains(&topics.unread_counts) && message.contains(&topics.subscriptions),
        "{message}"
    );
    assert!(
        message.contains("4 partitions") && message.contains("3 partitions"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_becomes_one_push_per_device_with_the_latest_count() {
    pushrelay_testkit::init_test_logging();
    for broker in TestBroker::all() {
        let kind = broker.kind;
        let kafka = broker.kafka_args("catchup", PARTITIONS);
        let topics = kafka.topics();
        broker.create_all_topics(&kafka).await;
        let producer = producer(&kafka);
        let mut live: HashMap<usize, BTreeSet<String>> = HashMap::new();
        let subs: Vec<TestRecord> = (0..MAILBOXES)
            .map(|i| {
                live.entry(i).or_default().insert(format!("dev{i}"));
                subscription(i, &format!("dev{i}"), i64::MAX / 2)
            })
            .collect();
        produce_records(&producer, &topics.subscriptions, &subs).await;
        // An outage: five rounds of counts pile up while no instance runs.
        for round in 1..=5 {
            produce_records(&producer, &topics.unread_counts, &counts(round)).await;
        }
        let instance = start_instance(&kafka);
        let records = wait_for_records(
            &kafka,
            &topics.push_requests,
            Duration::from_secs(90),
            |r| all_rounds_pushed(r, &live, 5),
        )
        .await;
        assert!(
            all_rounds_pushed(&records, &live, 5),
            "[{kind}] the latest count reached every device"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let records = read_topic(&kafka, &topics.push_requests).await;
        assert_eq!(
            records.len(),
            MAILBOXES,
            "[{kind}] one push per device for the whole backlog"
        );
        let older = pushed(&records)
            .keys()
            .filter(|(_, round)| *round < 5)
            .count();
        assert_eq!(older, 0, "[{kind}] no older count was pushed");
        let exit = tokio::task::spawn_blocking(move || instance.terminate())
            .await
            .expect("thread");
        assert!(exit.success());
    }
}

/// Kafka faults injected with the mock cluster while the stage runs, without restarting it:
/// produce and fetch request errors, then the broker down for three seconds. Every count still
/// reaches every live device, and the instance is still running (and stops cleanly) after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_faults_lose_no_push_and_need_no_restart() {
    use pushrelay_kafka::rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    pushrelay_testkit::init_test_logging();
    let broker = TestBroker::mock();
    let mock = broker.mock_cluster().expect("mock cluster");
    let kafka = broker.kafka_args("fanoutfaults", PARTITIONS);
    let topics = kafka.topics();
    broker.create_all_topics(&kafka).await;
    let producer = producer(&kafka);
    let mut live: HashMap<usize, BTreeSet<String>> = HashMap::new();
    let subs: Vec<TestRecord> = (0..MAILBOXES)
        .map(|i| {
            live.entry(i).or_default().insert(format!("dev{i}"));
            subscription(i, &format!("dev{i}"), i64::MAX / 2)
        })
        .collect();
    produce_records(&producer, &topics.subscriptions, &subs).await;
    let instance = start_instance(&kafka);
    let wait = |round: u64| {
        let (kafka, topics, live) = (kafka.clone(), topics.clone(), live.clone());
        async move {
            let records = wait_for_records(
                &kafka,
                &topics.push_requests,
                Duration::from_secs(90),
                |r| all_rounds_pushed(r, &live, round),
            )
            .await;
            all_rounds_pushed(&records, &live, round)
        }
    };
    produce_records(&producer, &topics.unread_counts, &counts(1)).await;
    assert!(wait(1).await, "round 1 before any fault");

    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        ],
    );
    mock.request_errors(
        RDKafkaApiKey::Fetch,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION],
    );
    produce_records(&producer, &topics.unread_counts, &counts(2)).await;
    assert!(wait(2).await, "round 2 with request errors");

    mock.broker_down(1).expect("broker down");
    let writer = {
        let (producer, topic) = (producer.clone(), topics.unread_counts.clone());
        tokio::spawn(async move { produce_records(&producer, &topic, &counts(3)).await })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    mock.broker_up(1).expect("broker up");
    writer.await.expect("writer");
    assert!(wait(3).await, "round 3 after the broker came back");

    let exit = tokio::task::spawn_blocking(move || instance.terminate())
        .await
        .expect("thread");
    assert!(
        exit.success(),
        "the same instance ran throughout and stops cleanly"
    );
}
