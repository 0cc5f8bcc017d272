//! The fan-out event loop: Kafka events in, acknowledged push requests out.

use std::collections::HashMap;
use std::time::Duration;

use pushrelay_kafka::{
    Ack, AckProducer, EventReceiver, FollowEvent, GroupConsumer, KafkaArgs, KafkaEvent,
    OffsetTracker, Record, RevokeAck, TopicFollower, TopicPartition, TopicSpec, Topics,
    dead_letter, ensure_topics, now_ms, read_to_end, verify_copartitioned,
};
use pushrelay_proto::Message;
use pushrelay_proto::checks::{check_subscription, check_unread_count};
use pushrelay_proto::v1::{Subscription, UnreadCount};
use pushrelay_telemetry::{Health, ReadyFlag};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::payload::{PushConfig, push_key, push_request};
use crate::table::SubscriptionTable;
use crate::{FanoutArgs, STAGE};

/// Why the stage stopped with an error: the environment's, never an input's.
#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    /// Kafka setup or a broker request failed.
    #[error(transparent)]
    Kafka(#[from] pushrelay_kafka::Error),
    /// The broker did not acknowledge an output after librdkafka's retries; its input's
    /// offset was not stored, so a restarted stage redoes it.
    #[error("the broker did not acknowledge a record for {topic}: {source}")]
    Produce {
        /// Output topic.
        topic: String,
        /// librdkafka's error.
        source: pushrelay_kafka::rdkafka::error::KafkaError,
    },
    /// The consumer's event channel closed unexpectedly.
    #[error("the Kafka consumer stopped")]
    ConsumerStopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    Push,
    Tombstone,
    DeadLetter,
}

impl Output {
    fn topic(self, topics: &Topics) -> &str {
        match self {
            Self::Push => &topics.push_requests,
            Self::Tombstone => &topics.subscriptions,
            Self::DeadLetter => &topics.dead_letters,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Tag {
    /// The group of inputs this output belongs to, if any.
    group: Option<u64>,
    output: Output,
}

/// One record to produce.
#[derive(Debug)]
struct Outgoing {
    output: Output,
    partition: Option<i32>,
    key: String,
    value: Option<Vec<u8>>,
}

/// Inputs whose offsets are done once `remaining` outputs are acknowledged.
#[derive(Debug)]
struct Group {
    remaining: usize,
    partition: i32,
    offsets: Vec<i64>,
}

/// The fold of a partition's backlog after an assignment.
#[derive(Debug)]
struct CatchUp {
    /// High watermark at assignment: records below it are folded.
    until: i64,
    latest: HashMap<String, UnreadCount>,
    offsets: Vec<i64>,
    started: Instant,
}

/// A subscription record from a partition follower.
#[derive(Debug)]
struct SubscriptionUpdate(Record);

/// Runs the stage until `shutdown` (then drains and commits) or a fatal error. `health`
/// gets the readiness flag `partitions` (false while subscriptions load).
pub async fn run(
    args: FanoutArgs,
    health: Health,
    shutdown: CancellationToken,
) -> Result<(), FanoutError> {
    describe_metrics();
    let partitions_ready = health.flag("partitions");
    health.mark_started();
    let kafka = &args.kafka;
    let topics = kafka.topics();
    ensure_topics(
        kafka,
        &[
            TopicSpec::compacted(&topics.unread_counts),
            TopicSpec::compacted(&topics.subscriptions),
            TopicSpec::plain(&topics.push_requests),
            TopicSpec::plain(&topics.dead_letters),
        ],
    )
    .await?;
    let partitions =
        verify_copartitioned(kafka, &[&topics.unread_counts, &topics.subscriptions]).await?;
    tracing::info!(
        partitions,
        "unread-counts and subscriptions are co-partitioned"
    );
    let (producer, acks) = AckProducer::new(kafka)?;
    let (consumer, events) = GroupConsumer::start(
        kafka,
        &args.group,
        &[&topics.unread_counts],
        args.event_buffer,
        Duration::from_secs(args.drain_timeout_secs + 5),
    )?;
    partitions_ready.set(true);
    let (updates_tx, updates) = mpsc::unbounded_channel();
    let mut stage = Stage {
        table: SubscriptionTable::new(args.max_devices_per_mailbox),
        push: args.push_config(),
        tracker: OffsetTracker::new(),
        groups: HashMap::new(),
        next_group: 0,
        catch_up: HashMap::new(),
        followers: HashMap::new(),
        updates_tx,
        topics,
        producer,
        acks,
        consumer,
        partitions_ready,
        args: args.clone(),
    };
    let result = stage.serve(events, updates, &shutdown).await;
    if let Err(err) = &result {
        tracing::error!(error = %err, "fanout failed; draining what can be drained");
    }
    stage.drain_and_close().await;
    result
}

struct Stage {
    args: FanoutArgs,
    topics: Topics,
    table: SubscriptionTable,
    push: PushConfig,
    tracker: OffsetTracker,
    groups: HashMap<u64, Group>,
    next_group: u64,
    catch_up: HashMap<i32, CatchUp>,
    followers: HashMap<i32, TopicFollower>,
    updates_tx: mpsc::UnboundedSender<SubscriptionUpdate>,
    producer: AckProducer<Tag>,
    acks: mpsc::UnboundedReceiver<Ack<Tag>>,
    consumer: GroupConsumer,
    partitions_ready: ReadyFlag,
}

const EVENT_BATCH: usize = 256;
/// A catch-up that saw no record for this long is flushed anyway.
const CATCH_UP_STALL: Duration = Duration::from_secs(5);

impl Stage {
    async fn serve(
        &mut self,
        mut events: EventReceiver,
        mut updates: mpsc::UnboundedReceiver<SubscriptionUpdate>,
        shutdown: &CancellationToken,
    ) -> Result<(), FanoutError> {
        let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Ok(()),
                Some(ack) = self.acks.recv() => self.on_ack(ack)?,
                Some(update) = updates.recv() => self.on_subscription(update.0).await?,
                _ = housekeeping.tick() => self.housekeeping().await?,
                event = events.recv() => {
                    let Some(event) = event else { break Err(FanoutError::ConsumerStopped) };
                    self.on_event(event).await?;
                    for _ in 0..EVENT_BATCH {
                        match events.try_recv() {
                            Some(event) => self.on_event(event).await?,
                            None => break,
                        }
                    }
                }
            }
        };
        self.consumer.stop();
        drop(events);
        result
    }

    async fn on_event(&mut self, event: KafkaEvent) -> Result<(), FanoutError> {
        match event {
            KafkaEvent::Message(record) => self.on_count(record).await,
            KafkaEvent::Assigned(partitions) => self.on_assigned(partitions).await,
            KafkaEvent::Revoked { partitions, done } => self.on_revoked(partitions, done).await,
        }
    }

    async fn on_count(&mut self, record: Record) -> Result<(), FanoutError> {
        let (partition, offset) = (record.partition, record.offset);
        self.tracker.begin(partition, offset);
        let decoded = record.payload.as_deref().map(|bytes| {
            UnreadCount::decode(bytes)
                .map_err(|err| ("undecodable", format!("not an UnreadCount: {err}")))
                .and_then(|count| {
                    check_unread_count(record.key.as_deref(), &count)
                        .map(|()| count)
                        .map_err(|message| ("invalid_record", message))
                })
        });
        let count = match decoded {
            Some(Ok(count)) => count,
            // A tombstone in the compacted changelog carries no count: nothing to push.
            None => {
                self.tracker.finish(partition, offset);
                return Ok(());
            }
            Some(Err((reason, message))) => {
                ::metrics::counter!(COUNTS, "outcome" => "dead_lettered").increment(1);
                tracing::warn!(partition, offset, reason, %message, "unread count dead-lettered");
                let letter = dead_letter(STAGE, &record, reason, message, false);
                let key = record.key.clone().unwrap_or_default();
                let group = self.open_group(partition, vec![offset], 1);
                return self
                    .send(
                        Output::DeadLetter,
                        None,
                        &key,
                        Some(&letter.encode_to_vec()),
                        group,
                    )
                    .await;
            }
        };
        if let Some(catch_up) = self.catch_up.get_mut(&partition) {
            if offset < catch_up.until {
                let key = format!("{}/{}", count.tenant, count.mailbox);
                let newer = catch_up
                    .latest
                    .get(&key)
                    .is_none_or(|old| old.sequence < count.sequence);
                // Each input is counted once: `folded` when a newer count of its mailbox
                // replaces it, `fanned_out` when the catch-up flushes it.
                let superseded = !newer || catch_up.latest.insert(key, count).is_some();
                catch_up.offsets.push(offset);
                catch_up.started = Instant::now();
                if superseded {
                    ::metrics::counter!(COUNTS, "outcome" => "folded").increment(1);
                }
                if offset + 1 >= catch_up.until {
                    self.flush_catch_up(partition).await?;
                }
                return Ok(());
            }
            self.flush_catch_up(partition).await?;
        }
        self.fan_out(partition, vec![offset], vec![count]).await
    }

    /// Pushes `counts` to their mailboxes' live devices; `offsets` are done once every
    /// output is acknowledged.
    async fn fan_out(
        &mut self,
        partition: i32,
        offsets: Vec<i64>,
        counts: Vec<UnreadCount>,
    ) -> Result<(), FanoutError> {
        let now = now_ms();
        let mut outputs: Vec<Outgoing> = Vec::new();
        for count in &counts {
            let mailbox = format!("{}/{}", count.tenant, count.mailbox);
            let (live, expired) = self.table.devices(partition, &mailbox, now);
            ::metrics::counter!(EXPIRED).increment(expired.len() as u64);
            for key in expired {
                outputs.push(Outgoing {
                    output: Output::Tombstone,
                    partition: Some(partition),
                    key,
                    value: None,
                });
            }
            for device in &live {
                let push = push_request(count, device, &self.push, now);
                outputs.push(Outgoing {
                    output: Output::Push,
                    partition: None,
                    key: push_key(device),
                    value: Some(push.encode_to_vec()),
                });
            }
            ::metrics::counter!(PUSHES).increment(live.len() as u64);
        }
        ::metrics::counter!(COUNTS, "outcome" => "fanned_out").increment(counts.len() as u64);
        if outputs.is_empty() {
            for offset in offsets {
                self.tracker.finish(partition, offset);
            }
            return Ok(());
        }
        let group = self.open_group(partition, offsets, outputs.len());
        for out in outputs {
            let value = out.value.as_deref();
            self.send(out.output, out.partition, out.key.as_bytes(), value, group)
                .await?;
        }
        Ok(())
    }

    async fn flush_catch_up(&mut self, partition: i32) -> Result<(), FanoutError> {
        let Some(catch_up) = self.catch_up.remove(&partition) else {
            return Ok(());
        };
        tracing::info!(
            partition,
            folded = catch_up.offsets.len(),
            mailboxes = catch_up.latest.len(),
            "caught up: backlog folded to the latest count per mailbox"
        );
        let counts: Vec<UnreadCount> = catch_up.latest.into_values().collect();
        self.fan_out(partition, catch_up.offsets, counts).await
    }

    fn open_group(&mut self, partition: i32, offsets: Vec<i64>, outputs: usize) -> Option<u64> {
        let id = self.next_group;
        self.next_group += 1;
        self.groups.insert(
            id,
            Group {
                remaining: outputs,
                partition,
                offsets,
            },
        );
        Some(id)
    }

    async fn on_subscription(&mut self, record: Record) -> Result<(), FanoutError> {
        if !self.followers.contains_key(&record.partition) {
            return Ok(()); // revoked since
        }
        let key = record
            .key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
            .map(str::to_owned);
        let checked = match (key, record.payload.as_deref()) {
            (None, _) => Err(("invalid_record", "no UTF-8 key".to_owned())),
            // A tombstone removes the subscription of its key.
            (Some(key), None) => Ok((key, None)),
            (Some(key), Some(bytes)) => Subscription::decode(bytes)
                .map_err(|err| ("undecodable", format!("not a Subscription: {err}")))
                .and_then(|sub| {
                    check_subscription(record.key.as_deref(), &sub)
                        .map(|()| (key, Some(sub)))
                        .map_err(|message| ("invalid_record", message))
                }),
        };
        let (key, value) = match checked {
            Ok(checked) => checked,
            Err((reason, message)) => {
                tracing::warn!(partition = record.partition, offset = record.offset, reason,
                    %message, "subscription dead-lettered");
                let letter = dead_letter(STAGE, &record, reason, message, false);
                let key = record.key.clone().unwrap_or_default();
                return self
                    .send(
                        Output::DeadLetter,
                        None,
                        &key,
                        Some(&letter.encode_to_vec()),
                        None,
                    )
                    .await;
            }
        };
        let applied = self.table.apply(record.partition, &key, value.as_ref());
        ::metrics::counter!(EVICTED).increment(applied.evicted.len() as u64);
        for evicted in applied.evicted {
            self.send(
                Output::Tombstone,
                Some(record.partition),
                evicted.as_bytes(),
                None,
                None,
            )
            .await?;
        }
        Ok(())
    }

    async fn on_assigned(&mut self, partitions: Vec<TopicPartition>) -> Result<(), FanoutError> {
        let numbers: Vec<i32> = partitions.iter().map(|tp| tp.partition).collect();
        self.partitions_ready.set(false);
        let started = Instant::now();
        let kafka = self.args.kafka.clone();
        let topics = self.topics.clone();
        let timeout = Duration::from_secs(self.args.restore_timeout_secs);
        let wanted = numbers.clone();
        let (records, ends, backlog) =
            tokio::task::spawn_blocking(move || load(&kafka, &topics, &wanted, timeout))
                .await
                .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))?;
        let loaded = records.len();
        let mut skipped = 0_usize;
        for record in records {
            if let Some(key) = record
                .key
                .as_deref()
                .and_then(|k| std::str::from_utf8(k).ok())
            {
                // Records the live path dead-letters are skipped here too (they were
                // dead-lettered when they first arrived).
                let value = match record.payload.as_deref().map(Subscription::decode) {
                    None => None,
                    Some(Ok(sub)) if check_subscription(record.key.as_deref(), &sub).is_ok() => {
                        Some(sub)
                    }
                    Some(_) => {
                        skipped += 1;
                        continue;
                    }
                };
                let key = key.to_owned();
                self.table.apply(record.partition, &key, value.as_ref());
            }
        }
        if skipped > 0 {
            tracing::warn!(
                skipped,
                "invalid subscription records skipped while restoring"
            );
        }
        for (partition, end) in ends {
            let tx = self.updates_tx.clone();
            let follower = TopicFollower::start_at(
                &self.args.kafka,
                &self.topics.subscriptions,
                Some(&[(partition, end)]),
                move |event| {
                    if let FollowEvent::Record(record) = event {
                        let _ = tx.send(SubscriptionUpdate(record));
                    }
                },
            )?;
            self.followers.insert(partition, follower);
        }
        for (partition, until) in backlog {
            if until > 0 {
                self.catch_up.insert(
                    partition,
                    CatchUp {
                        until,
                        latest: HashMap::new(),
                        offsets: Vec::new(),
                        started: Instant::now(),
                    },
                );
            }
        }
        ::metrics::gauge!(SUBSCRIPTIONS).set(self.table.len() as f64);
        tracing::info!(partitions = ?numbers, subscriptions = loaded,
            elapsed_ms = started.elapsed().as_millis() as u64, "loaded subscriptions");
        self.partitions_ready.set(true);
        Ok(())
    }

    async fn on_revoked(
        &mut self,
        partitions: Vec<TopicPartition>,
        done: RevokeAck,
    ) -> Result<(), FanoutError> {
        let numbers: Vec<i32> = partitions.iter().map(|tp| tp.partition).collect();
        for partition in &numbers {
            // A backlog not yet pushed is redone by the next owner (its offsets were not stored).
            self.catch_up.remove(partition);
            if let Some(follower) = self.followers.remove(partition) {
                let _ = tokio::task::spawn_blocking(move || follower.stop()).await;
            }
        }
        let drained = self
            .wait_for_acks(|stage| numbers.iter().all(|p| stage.tracker.outstanding(*p) == 0))
            .await?;
        if !drained {
            tracing::warn!(partitions = ?numbers, "outputs not acknowledged before the drain timeout; their inputs will be redone");
        }
        let offsets: Vec<(i32, i64)> = numbers
            .iter()
            .filter_map(|p| self.tracker.take_committable(*p).map(|o| (*p, o)))
            .collect();
        self.consumer
            .store_offsets(&self.topics.unread_counts, &offsets);
        for partition in &numbers {
            self.tracker.remove(*partition);
            self.table.drop_partition(*partition);
        }
        ::metrics::gauge!(SUBSCRIPTIONS).set(self.table.len() as f64);
        done.done();
        Ok(())
    }

    async fn wait_for_acks(
        &mut self,
        settled: impl Fn(&Self) -> bool,
    ) -> Result<bool, FanoutError> {
        let deadline = Instant::now() + Duration::from_secs(self.args.drain_timeout_secs);
        while !settled(self) {
            tokio::select! {
                ack = self.acks.recv() => match ack {
                    Some(ack) => self.on_ack(ack)?,
                    None => return Ok(false),
                },
                _ = tokio::time::sleep_until(deadline) => return Ok(false),
            }
        }
        Ok(true)
    }

    fn on_ack(&mut self, ack: Ack<Tag>) -> Result<(), FanoutError> {
        if let Err(source) = ack.result {
            return Err(FanoutError::Produce {
                topic: ack.tag.output.topic(&self.topics).to_owned(),
                source,
            });
        }
        if let Some(id) = ack.tag.group
            && let Some(group) = self.groups.get_mut(&id)
        {
            group.remaining -= 1;
            if group.remaining == 0
                && let Some(group) = self.groups.remove(&id)
            {
                for offset in group.offsets {
                    self.tracker.finish(group.partition, offset);
                }
            }
        }
        Ok(())
    }

    async fn send(
        &mut self,
        output: Output,
        partition: Option<i32>,
        key: &[u8],
        payload: Option<&[u8]>,
        group: Option<u64>,
    ) -> Result<(), FanoutError> {
        let topic = output.topic(&self.topics).to_owned();
        self.producer
            .send(&topic, partition, key, payload, Tag { group, output })
            .await
            .map_err(|source| FanoutError::Produce { topic, source })
    }

    async fn housekeeping(&mut self) -> Result<(), FanoutError> {
        let stalled: Vec<i32> = self
            .catch_up
            .iter()
            .filter(|(_, c)| c.started.elapsed() >= CATCH_UP_STALL)
            .map(|(p, _)| *p)
            .collect();
        for partition in stalled {
            self.flush_catch_up(partition).await?;
        }
        let committable = self.tracker.take_all_committable();
        self.consumer
            .store_offsets(&self.topics.unread_counts, &committable);
        ::metrics::gauge!(SUBSCRIPTIONS).set(self.table.len() as f64);
        ::metrics::gauge!(OUTSTANDING).set(self.tracker.total_outstanding() as f64);
        Ok(())
    }

    async fn drain_and_close(mut self) {
        match self
            .wait_for_acks(|stage| stage.tracker.total_outstanding() == 0)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!("drain timeout: unacknowledged inputs will be redone after restart")
            }
            Err(err) => tracing::error!(error = %err, "output failed while draining"),
        }
        let committable = self.tracker.take_all_committable();
        self.consumer
            .store_offsets(&self.topics.unread_counts, &committable);
        self.consumer.close().await;
        for (_, follower) in self.followers.drain() {
            let _ = tokio::task::spawn_blocking(move || follower.stop()).await;
        }
        if let Err(err) = self
            .producer
            .flush(Duration::from_secs(self.args.drain_timeout_secs))
            .await
        {
            tracing::warn!(error = %err, "producer flush at shutdown");
        }
        tracing::info!("fanout stage stopped");
    }
}

/// Blocking: a partition's subscriptions (read to their end), where to follow them from,
/// and the high watermark of its unread counts (the catch-up backlog's end).
#[allow(clippy::type_complexity)]
fn load(
    kafka: &KafkaArgs,
    topics: &Topics,
    partitions: &[i32],
    timeout: Duration,
) -> Result<(Vec<Record>, Vec<(i32, i64)>, Vec<(i32, i64)>), pushrelay_kafka::Error> {
    let mut records = Vec::new();
    let ends = read_to_end(kafka, &topics.subscriptions, partitions, timeout, |r| {
        records.push(r)
    })?;
    let backlog = pushrelay_kafka::high_watermarks(kafka, &topics.unread_counts, partitions)?;
    Ok((records, ends, backlog))
}

const COUNTS: &str = "pushrelay_fanout_counts_total";
const PUSHES: &str = "pushrelay_fanout_push_requests_total";
const EXPIRED: &str = "pushrelay_fanout_expired_subscriptions_total";
const EVICTED: &str = "pushrelay_fanout_evicted_subscriptions_total";
const SUBSCRIPTIONS: &str = "pushrelay_fanout_subscriptions";
const OUTSTANDING: &str = "pushrelay_fanout_outstanding_records";

pub(crate) fn describe_metrics() {
    metrics::describe_counter!(
        COUNTS,
        "Unread counts by outcome: fanned_out, folded (replaced by a newer count of the mailbox during catch-up), dead_lettered; each count is counted once"
    );
    metrics::describe_counter!(PUSHES, "Push requests produced");
    metrics::describe_counter!(EXPIRED, "Expired subscriptions removed");
    metrics::describe_counter!(
        EVICTED,
        "Subscriptions removed by the per-mailbox device limit"
    );
    metrics::describe_gauge!(
        SUBSCRIPTIONS,
        "Subscriptions held for the assigned partitions"
    );
    metrics::describe_gauge!(
        OUTSTANDING,
        "Input records whose outputs are not acknowledged"
    );
}
