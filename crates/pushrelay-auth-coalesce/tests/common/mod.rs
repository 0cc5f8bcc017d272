//! Shared pieces of the stage's integration tests.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::time::Duration;

use pushrelay_auth_coalesce::{StageArgs, StageError, run};
use pushrelay_kafka::{KafkaArgs, Record};
use pushrelay_proto::Message;
use pushrelay_proto::v1::{MailboxChange, UnreadCount};
use pushrelay_telemetry::Health;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const PARTITIONS: i32 = 4;

pub fn stage_args(kafka: &KafkaArgs) -> StageArgs {
    let mut args = StageArgs::new(kafka.clone());
    args.group = format!("{}auth", kafka.topic_prefix);
    args.quiet_period_ms = 500;
    args.max_delay_ms = 3000;
    args
}

#[derive(Debug)]
pub struct RunningStage {
    pub shutdown: CancellationToken,
    pub health: Health,
    handle: JoinHandle<Result<(), StageError>>,
}

impl RunningStage {
    pub async fn start(args: StageArgs) -> Self {
        let shutdown = CancellationToken::new();
        let health = Health::new();
        let handle = tokio::spawn(run(args, health.clone(), shutdown.clone()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !health.is_ready() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "stage never became ready"
            );
            assert!(!handle.is_finished(), "stage stopped while starting");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            shutdown,
            health,
            handle,
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("stage stops within 30 s")
            .expect("stage task");
        assert!(result.is_ok(), "stage stopped with an error: {result:?}");
    }
}

pub fn change(mailbox: &str, count: u32, sequence: u64, token: &str) -> Vec<u8> {
    MailboxChange {
        event_id: format!("{mailbox}#{sequence}"),
        mailbox: mailbox.to_owned(),
        unread_count: count,
        sequence,
        source_time_ms: 0,
        ingress_time_ms: pushrelay_kafka::now_ms(),
        token: token.to_owned(),
    }
    .encode_to_vec()
}

/// Round `round` of changes for mailboxes `user0..user{mailboxes}` of `tenant` (keys and
/// values for `produce_many`), each with a count derived from the round; records each
/// mailbox's expected final count in `expected`.
pub fn round_of_changes(
    tenant: &str,
    token: &str,
    mailboxes: usize,
    round: u64,
    expected: &mut HashMap<String, u32>,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    (0..mailboxes)
        .map(|i| {
            let mailbox = format!("user{i}@{tenant}");
            let count = ((round as usize * 7 + i) % 50) as u32;
            expected.insert(format!("{tenant}/{mailbox}"), count);
            (key(tenant, &mailbox), change(&mailbox, count, round, token))
        })
        .collect()
}

pub fn key(tenant: &str, mailbox: &str) -> Vec<u8> {
    format!("{tenant}/{mailbox}").into_bytes()
}

/// Unread counts by key, in log order.
pub fn counts_by_key(records: &[Record]) -> HashMap<String, Vec<UnreadCount>> {
    let mut sorted: Vec<&Record> = records.iter().collect();
    sorted.sort_by_key(|r| (r.partition, r.offset));
    let mut out: HashMap<String, Vec<UnreadCount>> = HashMap::new();
    for record in sorted {
        let key = String::from_utf8(record.key.clone().unwrap_or_default()).expect("utf-8 key");
        let value = UnreadCount::decode(record.payload.as_deref().unwrap_or_default())
            .expect("unread-counts holds UnreadCount records");
        out.entry(key).or_default().push(value);
    }
    out
}

/// Waits until every expected key's last count is the expected one (fails the test after
/// `timeout`), then `settle` more for anything that should not come, and returns the
/// counts by key.
pub async fn settled_counts(
    kafka: &KafkaArgs,
    expected: &HashMap<String, u32>,
    timeout: Duration,
    settle: Duration,
    broker: &str,
) -> HashMap<String, Vec<UnreadCount>> {
    let topic = kafka.topics().unread_counts;
    let counts =
        pushrelay_testkit::wait_for_records(kafka, &topic, timeout, |r| all_final(r, expected))
            .await;
    assert!(
        all_final(&counts, expected),
        "[{broker}] not every mailbox reached its last count"
    );
    tokio::time::sleep(settle).await;
    counts_by_key(&pushrelay_testkit::read_topic(kafka, &topic).await)
}

/// Whether every expected key's last count is the expected one.
pub fn all_final(records: &[Record], expected: &HashMap<String, u32>) -> bool {
    let by_key = counts_by_key(records);
    expected.iter().all(|(key, count)| {
        by_key
            .get(key)
            .and_then(|counts| counts.last())
            .is_some_and(|last| last.count == *count)
    })
}
