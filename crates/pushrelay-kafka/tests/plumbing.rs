//! The Kafka plumbing against a broker: the mock cluster always, the real broker of
//! `PUSHRELAY_TEST_BROKERS` when one is provided.

use std::sync::mpsc;
use std::time::Duration;

use pushrelay_kafka::{FollowEvent, TopicFollower, murmur2_partition, read_to_end};
use pushrelay_testkit::{TestBroker, produce, producer, read_topic};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_to_the_end_and_following() {
    pushrelay_testkit::init_test_logging();
    for broker in TestBroker::all() {
        let args = broker.kafka_args("read", 3);
        broker.create_all_topics(&args).await;
        let topic = args.topics().tenants;
        let producer = producer(&args);
        for i in 0..10 {
            let key = format!("k{i}");
            produce(&producer, &topic, key.as_bytes(), None, Some(b"v")).await;
        }
        let records = read_topic(&args, &topic).await;
        assert_eq!(
            records.len(),
            10,
            "[{}] every record read back",
            broker.kind
        );

        let (tx, rx) = mpsc::channel();
        let follower = TopicFollower::start(&args, &topic, move |event| {
            let _ = tx.send(event);
        })
        .expect("follower starts");
        let mut seen = 0;
        while let FollowEvent::Record(_) = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("follower reports")
        {
            seen += 1;
        }
        assert_eq!(
            seen, 10,
            "[{}] caught up after every existing record",
            broker.kind
        );
        produce(&producer, &topic, b"later", None, Some(b"v")).await;
        match rx
            .recv_timeout(Duration::from_secs(30))
            .expect("follower keeps following")
        {
            FollowEvent::Record(record) => assert_eq!(record.key.as_deref(), Some(&b"later"[..])),
            FollowEvent::CaughtUp => panic!("caught up twice"),
        }
        tokio::task::spawn_blocking(move || follower.stop())
            .await
            .expect("stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn murmur2_agrees_with_librdkafka_partitioner() {
    for broker in TestBroker::all() {
        let partitions = 7;
        let args = broker.kafka_args("murmur", partitions);
        broker.create_all_topics(&args).await;
        let topic = args.topics().unread_counts;
        let producer = producer(&args);
        let keys: Vec<String> = (0..200)
            .map(|i| format!("tenant{}.com/user{i}@x", i % 3))
            .collect();
        for key in &keys {
            produce(&producer, &topic, key.as_bytes(), None, Some(b"v")).await;
        }
        let args2 = args.clone();
        let records = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            read_to_end(
                &args2,
                &topic,
                &(0..partitions).collect::<Vec<_>>(),
                Duration::from_secs(30),
                |r| out.push(r),
            )
            .expect("read");
            out
        })
        .await
        .expect("reader");
        assert_eq!(records.len(), keys.len());
        for record in records {
            let key = record.key.expect("key");
            assert_eq!(
                record.partition,
                murmur2_partition(&key, partitions as usize),
                "[{}] librdkafka's murmur2_random and ours agree",
                broker.kind
            );
        }
    }
}
