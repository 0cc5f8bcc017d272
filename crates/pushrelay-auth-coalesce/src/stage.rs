//! The stage's event loop: Kafka events in, acknowledged outputs out.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pushrelay_auth::{Authenticator, TenantRegistry};
use pushrelay_coalesce::{Coalescer, Flush, Offer};
use pushrelay_kafka::{
    Ack, AckProducer, GroupConsumer, KafkaEvent, OffsetTracker, Record, RevokeAck, TopicPartition,
    TopicSpec, Topics, dead_letter, ensure_topics, now_ms, read_to_end, verify_copartitioned,
};
use pushrelay_proto::Message;
use pushrelay_proto::v1::UnreadCount;
use pushrelay_telemetry::{Health, ReadyFlag};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::request::{
    Invalid, check_placement, decode_change, placement_feedback, rejection_feedback, to_change,
    unread_count,
};
use crate::tenants::{self, RefusedTenant};
use crate::{STAGE, StageArgs, metrics};

/// Why the stage stopped with an error. All of them are the environment's (broker,
/// configuration); bad input never stops the stage.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// Kafka setup or a broker request failed.
    #[error(transparent)]
    Kafka(#[from] pushrelay_kafka::Error),
    /// The broker did not acknowledge an output after librdkafka's retries. Its input's
    /// offset was not stored, so a restarted stage redoes it.
    #[error("the broker did not acknowledge a record for {topic}: {source}")]
    Produce {
        /// Output topic.
        topic: String,
        /// librdkafka's error.
        source: pushrelay_kafka::rdkafka::error::KafkaError,
    },
    /// The tenant registry did not catch up in time.
    #[error("the tenant registry ({topic}) did not catch up within {seconds} s")]
    TenantsTimeout {
        /// Tenants topic.
        topic: String,
        /// The deadline.
        seconds: u64,
    },
    /// The consumer's event channel closed unexpectedly.
    #[error("the Kafka consumer stopped")]
    ConsumerStopped,
}

/// What an output record derives from, carried through the producer to its ack.
#[derive(Debug, Clone, Copy)]
struct Tag {
    /// Input partition and offset, or `None` for outputs with no input offset.
    input: Option<(i32, i64)>,
    output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    UnreadCount,
    Feedback,
    DeadLetter,
}

impl Output {
    fn topic(self, topics: &Topics) -> &str {
        match self {
            Self::UnreadCount => &topics.unread_counts,
            Self::Feedback => &topics.tenant_feedback,
            Self::DeadLetter => &topics.dead_letters,
        }
    }
}

/// Runs the stage until `shutdown` is cancelled (then drains and commits) or a fatal
/// error. `health` gets the readiness flags `tenants` and `partitions`.
pub async fn run(
    args: StageArgs,
    health: Health,
    shutdown: CancellationToken,
) -> Result<(), StageError> {
    metrics::describe();
    let tenants_ready = health.flag("tenants");
    let partitions_ready = health.flag("partitions");
    health.mark_started();
    let kafka = &args.kafka;
    let topics = kafka.topics();
    ensure_topics(
        kafka,
        &[
            TopicSpec::with_retention(&topics.mailbox_changes, kafka.token_topic_retention()),
            TopicSpec::compacted(&topics.unread_counts),
            TopicSpec::compacted(&topics.tenants),
            TopicSpec::plain(&topics.tenant_feedback),
            TopicSpec::plain(&topics.dead_letters),
        ],
    )
    .await?;
    let partitions =
        verify_copartitioned(kafka, &[&topics.mailbox_changes, &topics.unread_counts]).await?;
    tracing::info!(
        partitions,
        "mailbox-changes and unread-counts are co-partitioned"
    );

    let registry = Arc::new(TenantRegistry::new());
    let (follower, refused) = tenants::follow(
        kafka,
        &topics.tenants,
        Arc::clone(&registry),
        tenants_ready.clone(),
    )?;
    let result = async {
        wait_for_tenants(&args, &topics, &tenants_ready, &shutdown).await?;
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let (producer, acks) = AckProducer::new(kafka)?;
        let (consumer, events) = GroupConsumer::start(
            kafka,
            &args.group,
            &[&topics.mailbox_changes],
            args.event_buffer,
            Duration::from_secs(args.drain_timeout_secs + 5),
        )?;
        partitions_ready.set(true);
        let mut stage = Stage {
            authenticator: Authenticator::new(registry, args.auth_config()),
            coalescer: Coalescer::new(args.coalesce_config()),
            tracker: OffsetTracker::new(),
            partitions,
            topics: topics.clone(),
            producer,
            acks,
            consumer,
            partitions_ready,
            args: args.clone(),
        };
        let result = stage.serve(events, refused, &shutdown).await;
        if let Err(err) = &result {
            tracing::error!(error = %err, "stage failed; draining what can be drained");
        }
        stage.drain_and_close().await;
        result
    }
    .await;
    let _ = tokio::task::spawn_blocking(move || follower.stop()).await;
    result
}

async fn wait_for_tenants(
    args: &StageArgs,
    topics: &Topics,
    ready: &ReadyFlag,
    shutdown: &CancellationToken,
) -> Result<(), StageError> {
    let deadline = Instant::now() + Duration::from_secs(args.restore_timeout_secs);
    while !ready.get() && !shutdown.is_cancelled() {
        if Instant::now() > deadline {
            return Err(StageError::TenantsTimeout {
                topic: topics.tenants.clone(),
                seconds: args.restore_timeout_secs,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

struct Stage {
    args: StageArgs,
    topics: Topics,
    partitions: usize,
    authenticator: Authenticator,
    coalescer: Coalescer,
    tracker: OffsetTracker,
    producer: AckProducer<Tag>,
    acks: mpsc::UnboundedReceiver<Ack<Tag>>,
    consumer: GroupConsumer,
    partitions_ready: ReadyFlag,
}

/// How many queued events one wake-up handles before looking at timers and acks again.
const EVENT_BATCH: usize = 256;

async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

impl Stage {
    async fn serve(
        &mut self,
        mut events: mpsc::Receiver<KafkaEvent>,
        mut refused: mpsc::UnboundedReceiver<RefusedTenant>,
        shutdown: &CancellationToken,
    ) -> Result<(), StageError> {
        let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            let deadline = self.coalescer.next_deadline();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Ok(()),
                Some(ack) = self.acks.recv() => self.on_ack(ack)?,
                _ = sleep_until(deadline) => self.flush_due().await?,
                _ = housekeeping.tick() => self.housekeeping(),
                event = events.recv() => {
                    let Some(event) = event else { break Err(StageError::ConsumerStopped) };
                    self.on_event(event).await?;
                    for _ in 0..EVENT_BATCH {
                        match events.try_recv() {
                            Ok(event) => self.on_event(event).await?,
                            Err(_) => break,
                        }
                    }
                }
                Some(tenant) = refused.recv() => self.dead_letter_tenant(tenant).await?,
            }
        };
        // Stop polling and drop queued events: their offsets were never stored, so they
        // are read again by whoever owns the partitions next.
        self.consumer.stop();
        drop(events);
        result
    }

    async fn on_event(&mut self, event: KafkaEvent) -> Result<(), StageError> {
        match event {
            KafkaEvent::Message(record) => self.on_record(record).await,
            KafkaEvent::Assigned(partitions) => self.on_assigned(partitions).await,
            KafkaEvent::Revoked { partitions, done } => self.on_revoked(partitions, done).await,
        }
    }

    async fn on_record(&mut self, record: Record) -> Result<(), StageError> {
        let (partition, offset) = (record.partition, record.offset);
        self.tracker.begin(partition, offset);
        let change = match decode_change(&record) {
            Ok(change) => change,
            Err(invalid) => return self.dead_letter(&record, invalid).await,
        };
        let authenticated = match self.authenticator.authenticate(&change.token).await {
            Ok(authenticated) => authenticated,
            Err(rejection) => {
                ::metrics::counter!(metrics::RECORDS, "outcome" => "rejected").increment(1);
                tracing::debug!(
                    reason = rejection.reason.code(),
                    partition,
                    offset,
                    "token rejected"
                );
                let feedback = rejection_feedback(&rejection, &change, now_ms());
                let key = feedback.tenant.clone();
                return self
                    .send(
                        Output::Feedback,
                        None,
                        key.as_bytes(),
                        &feedback.encode_to_vec(),
                        Some((partition, offset)),
                    )
                    .await;
            }
        };
        if let Err(invalid) = check_placement(
            &record,
            &authenticated.tenant,
            &change.mailbox,
            self.partitions,
        ) {
            if invalid.reason == "misrouted" {
                return self.dead_letter(&record, invalid).await;
            }
            ::metrics::counter!(metrics::RECORDS, "outcome" => "rejected").increment(1);
            let feedback = placement_feedback(&authenticated.tenant, &invalid, &change, now_ms());
            return self
                .send(
                    Output::Feedback,
                    None,
                    authenticated.tenant.as_bytes(),
                    &feedback.encode_to_vec(),
                    Some((partition, offset)),
                )
                .await;
        }
        let now = Instant::now().into_std();
        let offer = self
            .coalescer
            .offer(to_change(&record, &authenticated.tenant, change), now);
        let outcome = match offer {
            Offer::Pending => "pending",
            Offer::Merged => "merged",
            Offer::Stale { .. } => "stale",
        };
        ::metrics::counter!(metrics::RECORDS, "outcome" => outcome).increment(1);
        if offer != Offer::Pending {
            self.tracker.finish(partition, offset);
        }
        Ok(())
    }

    async fn on_assigned(&mut self, partitions: Vec<TopicPartition>) -> Result<(), StageError> {
        let numbers: Vec<i32> = partitions.iter().map(|tp| tp.partition).collect();
        self.partitions_ready.set(false);
        let started = Instant::now();
        let args = self.args.kafka.clone();
        let topic = self.topics.unread_counts.clone();
        let timeout = Duration::from_secs(self.args.restore_timeout_secs);
        let wanted = numbers.clone();
        let fences = tokio::task::spawn_blocking(move || {
            let mut fences: HashMap<(i32, Vec<u8>), (u64, u32)> = HashMap::new();
            let mut undecodable = 0u64;
            read_to_end(&args, &topic, &wanted, timeout, |record| {
                let (Some(key), Some(value)) = (record.key, record.payload) else {
                    return;
                };
                match UnreadCount::decode(value.as_slice()) {
                    Ok(count) => {
                        let slot = fences.entry((record.partition, key)).or_insert((0, 0));
                        if count.sequence >= slot.0 {
                            *slot = (count.sequence, count.count);
                        }
                    }
                    Err(_) => undecodable += 1,
                }
            })
            .map(|_| (fences, undecodable))
        })
        .await
        .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))?;
        let (fences, undecodable) = fences;
        let now = Instant::now().into_std();
        let restored = fences.len();
        for ((partition, key), (sequence, count)) in fences {
            let Ok(key) = String::from_utf8(key) else {
                continue;
            };
            if let Some((tenant, mailbox)) = key.split_once('/') {
                self.coalescer
                    .restore(partition, tenant, mailbox, sequence, count, now);
            }
        }
        ::metrics::counter!(metrics::RESTORED).increment(restored as u64);
        tracing::info!(partitions = ?numbers, mailboxes = restored, undecodable,
            elapsed_ms = started.elapsed().as_millis() as u64, "restored fences from unread-counts");
        self.partitions_ready.set(true);
        Ok(())
    }

    async fn on_revoked(
        &mut self,
        partitions: Vec<TopicPartition>,
        done: RevokeAck,
    ) -> Result<(), StageError> {
        let numbers: Vec<i32> = partitions.iter().map(|tp| tp.partition).collect();
        for &partition in &numbers {
            let flushes = self.coalescer.revoke(partition);
            self.send_flushes(flushes).await?;
        }
        let drained = self
            .wait_for_acks(|tracker| numbers.iter().all(|p| tracker.outstanding(*p) == 0))
            .await?;
        if !drained {
            tracing::warn!(partitions = ?numbers,
                "in-flight outputs not acknowledged before the drain timeout; their inputs will be redone");
        }
        let offsets: Vec<(i32, i64)> = numbers
            .iter()
            .filter_map(|p| self.tracker.take_committable(*p).map(|o| (*p, o)))
            .collect();
        self.consumer
            .store_offsets(&self.topics.mailbox_changes, &offsets);
        for partition in &numbers {
            self.tracker.remove(*partition);
        }
        done.done();
        Ok(())
    }

    /// Processes acks until `settled` holds or the drain timeout passes; returns whether
    /// it settled.
    async fn wait_for_acks(
        &mut self,
        settled: impl Fn(&OffsetTracker) -> bool,
    ) -> Result<bool, StageError> {
        let deadline = Instant::now() + Duration::from_secs(self.args.drain_timeout_secs);
        while !settled(&self.tracker) {
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

    fn on_ack(&mut self, ack: Ack<Tag>) -> Result<(), StageError> {
        match ack.result {
            Ok(_) => {
                if let Some((partition, offset)) = ack.tag.input {
                    self.tracker.finish(partition, offset);
                }
                Ok(())
            }
            Err(source) => Err(StageError::Produce {
                topic: ack.tag.output.topic(&self.topics).to_owned(),
                source,
            }),
        }
    }

    async fn flush_due(&mut self) -> Result<(), StageError> {
        let flushes = self.coalescer.poll_due(Instant::now().into_std());
        self.send_flushes(flushes).await
    }

    async fn send_flushes(&mut self, flushes: Vec<Flush>) -> Result<(), StageError> {
        let now = now_ms();
        for flush in flushes {
            match flush {
                Flush::Emit(emission) => {
                    ::metrics::counter!(metrics::EMITTED, "kind" => "changed").increment(1);
                    let delay = (now - emission.first_ingress_time_ms).max(0) as f64 / 1000.0;
                    ::metrics::histogram!(metrics::EMIT_DELAY).record(delay);
                    let record = unread_count(&emission, now);
                    self.send(
                        Output::UnreadCount,
                        Some(emission.partition),
                        emission.key().as_bytes(),
                        &record.encode_to_vec(),
                        Some((emission.partition, emission.offset)),
                    )
                    .await?;
                }
                Flush::Unchanged { partition, offset } => {
                    ::metrics::counter!(metrics::EMITTED, "kind" => "unchanged").increment(1);
                    self.tracker.finish(partition, offset);
                }
            }
        }
        Ok(())
    }

    async fn dead_letter(&mut self, record: &Record, invalid: Invalid) -> Result<(), StageError> {
        ::metrics::counter!(metrics::RECORDS, "outcome" => "dead_lettered").increment(1);
        tracing::warn!(partition = record.partition, offset = record.offset,
            reason = invalid.reason, message = %invalid.message, "dead-lettering input record");
        let carries_tokens = self.topics.carries_tokens(&record.topic);
        let letter = dead_letter(
            STAGE,
            record,
            invalid.reason,
            invalid.message,
            carries_tokens,
        );
        let key = record.key.clone().unwrap_or_default();
        self.send(
            Output::DeadLetter,
            None,
            &key,
            &letter.encode_to_vec(),
            Some((record.partition, record.offset)),
        )
        .await
    }

    async fn dead_letter_tenant(&mut self, refused: RefusedTenant) -> Result<(), StageError> {
        let letter = dead_letter(
            STAGE,
            &refused.record,
            refused.reason,
            refused.message,
            false,
        );
        let key = refused.record.key.clone().unwrap_or_default();
        self.send(
            Output::DeadLetter,
            None,
            &key,
            &letter.encode_to_vec(),
            None,
        )
        .await
    }

    async fn send(
        &mut self,
        output: Output,
        partition: Option<i32>,
        key: &[u8],
        payload: &[u8],
        input: Option<(i32, i64)>,
    ) -> Result<(), StageError> {
        let topic = output.topic(&self.topics).to_owned();
        self.producer
            .send(&topic, partition, key, Some(payload), Tag { input, output })
            .await
            .map_err(|source| StageError::Produce { topic, source })
    }

    fn housekeeping(&mut self) {
        let committable = self.tracker.take_all_committable();
        self.consumer
            .store_offsets(&self.topics.mailbox_changes, &committable);
        self.coalescer.evict_idle(Instant::now().into_std());
        let stats = self.coalescer.stats();
        ::metrics::gauge!(metrics::TRACKED).set(stats.tracked as f64);
        ::metrics::gauge!(metrics::PENDING).set(stats.pending as f64);
        ::metrics::gauge!(metrics::OUTSTANDING).set(self.tracker.total_outstanding() as f64);
    }

    /// Shutdown: flush every pending count, wait for the acks (bounded), store what is
    /// safe, commit and leave the group.
    async fn drain_and_close(mut self) {
        let flushes = self.coalescer.flush_all();
        let pending = flushes.len();
        if let Err(err) = self.send_flushes(flushes).await {
            tracing::error!(error = %err, "could not flush pending counts at shutdown");
        }
        match self
            .wait_for_acks(|tracker| tracker.total_outstanding() == 0)
            .await
        {
            Ok(true) => tracing::info!(flushed = pending, "drained pending counts"),
            Ok(false) => tracing::warn!(
                outstanding = self.tracker.total_outstanding(),
                "drain timeout: unacknowledged inputs will be redone after restart"
            ),
            Err(err) => tracing::error!(error = %err, "output failed while draining"),
        }
        let committable = self.tracker.take_all_committable();
        self.consumer
            .store_offsets(&self.topics.mailbox_changes, &committable);
        self.consumer.close().await;
        if let Err(err) = self
            .producer
            .flush(Duration::from_secs(self.args.drain_timeout_secs))
            .await
        {
            tracing::warn!(error = %err, "producer flush at shutdown");
        }
        tracing::info!("auth-coalesce stage stopped");
    }
}
