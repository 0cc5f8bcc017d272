//! The delivery event loop: push requests in, provider sends, receipts out.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use pushrelay_kafka::{
    Ack, AckProducer, EventReceiver, GroupConsumer, KafkaEvent, OffsetTracker, Record, RevokeAck,
    TopicPartition, TopicSpec, Topics, dead_letter, ensure_topics, murmur2_partition, now_ms,
    partition_count, sha256,
};
use pushrelay_proto::Message;
use pushrelay_proto::checks::check_push_request;
use pushrelay_proto::keys::{mailbox_key, push_key, subscription_key};
use pushrelay_proto::v1::{
    DeadLetter, DeliveryOutcome, DeliveryReceipt, FeedbackKind, PushRequest, TenantFeedback,
};
use pushrelay_telemetry::{Health, ReadyFlag};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::outcome::Answer;
use crate::providers::{Providers, Route, SetupError};
use crate::scheduler::{Action, Finished, Job, Scheduler, Verdict, delivery_key};
use crate::{DeliverArgs, STAGE};

/// Why the stage stopped with an error: the environment's, never an input's.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// Provider credentials or flags are unusable.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// Kafka setup or a broker request failed.
    #[error(transparent)]
    Kafka(#[from] pushrelay_kafka::Error),
    /// The `subscriptions` topic does not exist, so dead devices could not be removed.
    #[error("topic {0} does not exist; create the relay's topics first")]
    MissingTopic(String),
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
    Receipt,
    Tombstone,
    Feedback,
    DeadLetter,
}

impl Output {
    fn topic(self, topics: &Topics) -> &str {
        match self {
            Self::Receipt => &topics.delivery_receipts,
            Self::Tombstone => &topics.subscriptions,
            Self::Feedback => &topics.tenant_feedback,
            Self::DeadLetter => &topics.dead_letters,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Tag {
    group: u64,
    output: Output,
}

/// Inputs settled once `remaining` outputs are acknowledged.
#[derive(Debug)]
struct Group {
    remaining: usize,
    partition: i32,
    offsets: Vec<i64>,
}

/// A record to produce.
#[derive(Debug)]
struct Outgoing {
    output: Output,
    partition: Option<i32>,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
}

/// A provider's answer, back from a send task.
#[derive(Debug)]
struct Answered {
    key: Arc<str>,
    id: u64,
    answer: Answer,
    platform: i32,
}

/// The fold of a partition's backlog after an assignment.
#[derive(Debug)]
struct CatchUp {
    /// High watermark at assignment: records below it are folded.
    until: i64,
    latest: HashMap<Arc<str>, Job>,
    last_record: Instant,
}

/// A catch-up that saw no record for this long is flushed anyway.
const CATCH_UP_STALL: Duration = Duration::from_secs(5);
const EVENT_BATCH: usize = 256;

/// Runs the stage until `shutdown` (then drains and commits) or a fatal error.
pub async fn run(
    args: DeliverArgs,
    health: Health,
    shutdown: CancellationToken,
) -> Result<(), DeliverError> {
    describe_metrics();
    let providers = Arc::new(Providers::from_args(&args)?);
    tracing::info!(providers = %providers.describe(), "delivery providers");
    let ready = health.flag("partitions");
    health.mark_started();
    let kafka = &args.kafka;
    let topics = kafka.topics();
    ensure_topics(
        kafka,
        &[
            TopicSpec::plain(&topics.push_requests),
            TopicSpec::plain(&topics.delivery_receipts),
            TopicSpec::compacted(&topics.subscriptions),
            TopicSpec::plain(&topics.tenant_feedback),
            TopicSpec::plain(&topics.dead_letters),
        ],
    )
    .await?;
    let subscription_partitions = partition_count(kafka, &topics.subscriptions)
        .await?
        .ok_or_else(|| DeliverError::MissingTopic(topics.subscriptions.clone()))?;
    let (producer, acks) = AckProducer::new(kafka)?;
    let (consumer, events) = GroupConsumer::start(
        kafka,
        &args.group,
        &[&topics.push_requests],
        args.event_buffer,
        Duration::from_secs(args.drain_timeout_secs + 5),
    )?;
    ready.set(true);
    let (answers_tx, answers) = mpsc::unbounded_channel();
    let mut stage = Stage {
        scheduler: Scheduler::new(args.retry_policy(), args.max_in_flight),
        tracker: OffsetTracker::new(),
        groups: HashMap::new(),
        next_group: 0,
        catch_up: HashMap::new(),
        assigned: HashSet::new(),
        subscription_partitions,
        providers,
        answers_tx,
        answers,
        topics,
        producer,
        acks,
        consumer,
        ready,
        args,
    };
    let result = stage.serve(events, &shutdown).await;
    if let Err(err) = &result {
        tracing::error!(error = %err, "delivery failed; draining what can be drained");
    }
    stage.drain_and_close().await;
    result
}

struct Stage {
    args: DeliverArgs,
    topics: Topics,
    providers: Arc<Providers>,
    scheduler: Scheduler,
    tracker: OffsetTracker,
    groups: HashMap<u64, Group>,
    next_group: u64,
    catch_up: HashMap<i32, CatchUp>,
    assigned: HashSet<i32>,
    subscription_partitions: usize,
    answers_tx: mpsc::UnboundedSender<Answered>,
    answers: mpsc::UnboundedReceiver<Answered>,
    producer: AckProducer<Tag>,
    acks: mpsc::UnboundedReceiver<Ack<Tag>>,
    consumer: GroupConsumer,
    ready: ReadyFlag,
}

impl Stage {
    async fn serve(
        &mut self,
        mut events: EventReceiver,
        shutdown: &CancellationToken,
    ) -> Result<(), DeliverError> {
        let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            let timer = self.scheduler.next_timer();
            // At the pending limit the stage stops taking records: a slow provider slows
            // consumption instead of growing memory.
            let can_take = self.pending() < self.args.max_pending;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Ok(()),
                Some(ack) = self.acks.recv() => self.on_ack(ack)?,
                Some(answered) = self.answers.recv() => self.on_answer(answered).await?,
                _ = sleep_until(timer), if timer.is_some() => self.on_timer().await?,
                _ = housekeeping.tick() => self.housekeeping().await?,
                event = events.recv(), if can_take => {
                    let Some(event) = event else { break Err(DeliverError::ConsumerStopped) };
                    self.on_event(event).await?;
                    for _ in 0..EVENT_BATCH {
                        if self.pending() >= self.args.max_pending {
                            break;
                        }
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

    /// Pushes in progress or folded, waiting to be submitted.
    fn pending(&self) -> usize {
        self.scheduler.pending()
            + self
                .catch_up
                .values()
                .map(|c| c.latest.len())
                .sum::<usize>()
    }

    async fn on_event(&mut self, event: KafkaEvent) -> Result<(), DeliverError> {
        match event {
            KafkaEvent::Message(record) => self.on_push(record).await,
            KafkaEvent::Assigned(partitions) => self.on_assigned(partitions).await,
            KafkaEvent::Revoked { partitions, done } => self.on_revoked(partitions, done).await,
        }
    }

    async fn on_push(&mut self, record: Record) -> Result<(), DeliverError> {
        let (partition, offset) = (record.partition, record.offset);
        self.tracker.begin(partition, offset);
        let decoded = record.payload.as_deref().map(|bytes| {
            PushRequest::decode(bytes)
                .map_err(|err| ("undecodable", format!("not a PushRequest: {err}")))
                .and_then(|push| {
                    check_push_request(record.key.as_deref(), &push)
                        .map(|()| push)
                        .map_err(|message| ("invalid_record", message))
                })
        });
        let push = match decoded {
            Some(Ok(push)) => push,
            None => {
                self.tracker.finish(partition, offset);
                return Ok(());
            }
            Some(Err((reason, message))) => {
                ::metrics::counter!(DEAD_LETTERS, "reason" => reason).increment(1);
                tracing::warn!(partition, offset, reason, %message, "push request dead-lettered");
                let letter = dead_letter(STAGE, &record, reason, message, false);
                let out = Outgoing {
                    output: Output::DeadLetter,
                    partition: None,
                    key: record.key.clone().unwrap_or_default(),
                    value: Some(letter.encode_to_vec()),
                };
                return self.emit(partition, vec![offset], vec![out]).await;
            }
        };
        let job = Job {
            push: Arc::new(push),
            partition,
            offsets: vec![offset],
        };
        if self.providers.route(job.push.platform) == Route::Unconfigured {
            let finished = Finished {
                job,
                verdict: Verdict::Dropped,
                attempts: 0,
                status: 0,
                reason: "no provider is configured for this platform".to_owned(),
            };
            return self.finish(finished, Some("no_provider")).await;
        }
        if let Some(catch_up) = self.catch_up.get_mut(&partition) {
            if offset < catch_up.until {
                catch_up.last_record = Instant::now();
                let done = offset + 1 >= catch_up.until;
                let key = delivery_key(&job.push);
                let older = match catch_up.latest.get(&key) {
                    Some(held) if held.push.sequence > job.push.sequence => Some(job),
                    _ => catch_up.latest.insert(key, job),
                };
                // Folded pushes count against the pending limit too.
                let full =
                    catch_up.latest.len() + self.scheduler.pending() >= self.args.max_pending;
                ::metrics::counter!(PUSHES_FOLDED).increment(u64::from(older.is_some()));
                if let Some(older) = older {
                    self.finish(superseded_by_catch_up(older), None).await?;
                }
                if done || full {
                    self.flush_catch_up(partition, done).await?;
                }
                return Ok(());
            }
            self.flush_catch_up(partition, true).await?;
        }
        self.submit(job).await
    }

    async fn submit(&mut self, job: Job) -> Result<(), DeliverError> {
        let mut actions = Vec::new();
        self.scheduler.submit(job, now_ms(), &mut actions);
        self.act(actions).await
    }

    async fn act(&mut self, actions: Vec<Action>) -> Result<(), DeliverError> {
        for action in actions {
            match action {
                Action::Send { key, id, push } => {
                    let providers = Arc::clone(&self.providers);
                    let answers = self.answers_tx.clone();
                    tokio::spawn(async move {
                        let answer = providers.send(&push).await;
                        let _ = answers.send(Answered {
                            key,
                            id,
                            answer,
                            platform: push.platform,
                        });
                    });
                }
                Action::Finish(finished) => {
                    let dead_letter =
                        (finished.verdict == Verdict::Exhausted).then_some("retries_exhausted");
                    self.finish(finished, dead_letter).await?;
                }
            }
        }
        ::metrics::gauge!(IN_FLIGHT).set(self.scheduler.sending() as f64);
        ::metrics::gauge!(PENDING).set(self.pending() as f64);
        Ok(())
    }

    async fn on_answer(&mut self, answered: Answered) -> Result<(), DeliverError> {
        let platform = platform_label(answered.platform);
        ::metrics::counter!(ANSWERS, "platform" => platform, "status" => answered.answer.status.to_string())
            .increment(1);
        let mut actions = Vec::new();
        self.scheduler.answered(
            &answered.key,
            answered.id,
            answered.answer,
            (Instant::now(), now_ms()),
            &mut actions,
        );
        self.act(actions).await
    }

    async fn on_timer(&mut self) -> Result<(), DeliverError> {
        let mut actions = Vec::new();
        self.scheduler.due(Instant::now(), now_ms(), &mut actions);
        self.act(actions).await
    }

    /// Records a push's outcome: its receipt, and a tombstone and tenant feedback for a
    /// dead device, or a dead letter (`dead_letter` names the reason).
    async fn finish(
        &mut self,
        finished: Finished,
        dead_letter: Option<&'static str>,
    ) -> Result<(), DeliverError> {
        let now = now_ms();
        let push = &finished.job.push;
        let mailbox = mailbox_key(&push.tenant, &push.mailbox);
        let platform = platform_label(push.platform);
        ::metrics::counter!(PUSHES, "platform" => platform, "outcome" => finished.verdict.as_str())
            .increment(1);
        let reason = match (finished.verdict, self.providers.route(push.platform)) {
            (Verdict::Delivered, Route::Probe) => "probe: recorded, no provider".to_owned(),
            (Verdict::Delivered, Route::Log) => "log provider".to_owned(),
            _ => finished.reason.clone(),
        };
        let receipt = DeliveryReceipt {
            push_id: push.push_id.clone(),
            tenant: push.tenant.clone(),
            mailbox: push.mailbox.clone(),
            platform: push.platform,
            outcome: match finished.verdict {
                Verdict::Delivered => DeliveryOutcome::Delivered,
                Verdict::Unregistered => DeliveryOutcome::Unregistered,
                _ => DeliveryOutcome::Dropped,
            } as i32,
            provider_status: u32::from(finished.status),
            provider_reason: if finished.verdict == Verdict::Superseded
                || finished.verdict == Verdict::Expired
            {
                format!("{}: {reason}", finished.verdict.as_str())
            } else {
                reason.clone()
            },
            attempts: finished.attempts,
            end_to_end_latency_ms: if push.ingress_time_ms > 0 {
                (now - push.ingress_time_ms).max(0)
            } else {
                0
            },
            time_ms: now,
        };
        if finished.verdict == Verdict::Delivered && push.ingress_time_ms > 0 {
            ::metrics::histogram!(LATENCY, "platform" => platform)
                .record(receipt.end_to_end_latency_ms as f64 / 1000.0);
        }
        let mut outputs = vec![Outgoing {
            output: Output::Receipt,
            partition: None,
            key: mailbox.clone().into_bytes(),
            value: Some(receipt.encode_to_vec()),
        }];
        if finished.verdict == Verdict::Unregistered {
            tracing::info!(tenant = %push.tenant, mailbox = %push.mailbox, platform,
                reason = %reason, "device unregistered; removing its subscription");
            outputs.push(Outgoing {
                output: Output::Tombstone,
                partition: Some(murmur2_partition(
                    mailbox.as_bytes(),
                    self.subscription_partitions,
                )),
                key: subscription_key(&mailbox, push.platform, &push.device_token).into_bytes(),
                value: None,
            });
            let feedback = TenantFeedback {
                tenant: push.tenant.clone(),
                kind: FeedbackKind::DeviceUnregistered as i32,
                reason: "unregistered".to_owned(),
                message: format!("the provider answered {reason}; the subscription was removed"),
                mailbox: push.mailbox.clone(),
                device_token: push.device_token.clone(),
                time_ms: now,
                ..TenantFeedback::default()
            };
            outputs.push(Outgoing {
                output: Output::Feedback,
                partition: None,
                key: push.tenant.clone().into_bytes(),
                value: Some(feedback.encode_to_vec()),
            });
        }
        if let Some(why) = dead_letter {
            ::metrics::counter!(DEAD_LETTERS, "reason" => why).increment(1);
            tracing::warn!(tenant = %push.tenant, platform, reason = why,
                attempts = finished.attempts, last = %reason, "push dead-lettered");
            let value = push.encode_to_vec();
            let letter = DeadLetter {
                stage: STAGE.to_owned(),
                source_topic: self.topics.push_requests.clone(),
                source_partition: finished.job.partition,
                source_offset: finished.job.offsets.first().copied().unwrap_or(-1),
                reason: why.to_owned(),
                message: format!("{} attempts; last answer: {reason}", finished.attempts),
                original_key: push_key(push.platform, &push.device_token).into_bytes(),
                original_value_size: value.len() as u32,
                original_value_sha256: sha256(&value),
                original_value: value,
                time_ms: now,
            };
            outputs.push(Outgoing {
                output: Output::DeadLetter,
                partition: None,
                key: letter.original_key.clone(),
                value: Some(letter.encode_to_vec()),
            });
        }
        let Finished { job, .. } = finished;
        self.emit(job.partition, job.offsets, outputs).await
    }

    /// Produces `outputs`; `offsets` of `partition` are settled once all are acknowledged.
    async fn emit(
        &mut self,
        partition: i32,
        offsets: Vec<i64>,
        outputs: Vec<Outgoing>,
    ) -> Result<(), DeliverError> {
        let group = self.next_group;
        self.next_group += 1;
        self.groups.insert(
            group,
            Group {
                remaining: outputs.len(),
                partition,
                offsets,
            },
        );
        for out in outputs {
            let topic = out.output.topic(&self.topics).to_owned();
            self.producer
                .send(
                    &topic,
                    out.partition,
                    &out.key,
                    out.value.as_deref(),
                    Tag {
                        group,
                        output: out.output,
                    },
                )
                .await
                .map_err(|source| DeliverError::Produce { topic, source })?;
        }
        Ok(())
    }

    fn on_ack(&mut self, ack: Ack<Tag>) -> Result<(), DeliverError> {
        if let Err(source) = ack.result {
            return Err(DeliverError::Produce {
                topic: ack.tag.output.topic(&self.topics).to_owned(),
                source,
            });
        }
        if let Some(group) = self.groups.get_mut(&ack.tag.group) {
            group.remaining -= 1;
            if group.remaining == 0
                && let Some(group) = self.groups.remove(&ack.tag.group)
            {
                for offset in group.offsets {
                    self.tracker.finish(group.partition, offset);
                }
            }
        }
        Ok(())
    }

    /// Submits a catch-up's folded pushes; `done` ends the catch-up.
    async fn flush_catch_up(&mut self, partition: i32, done: bool) -> Result<(), DeliverError> {
        let latest = if done {
            match self.catch_up.remove(&partition) {
                Some(catch_up) => catch_up.latest,
                None => return Ok(()),
            }
        } else {
            match self.catch_up.get_mut(&partition) {
                Some(catch_up) => std::mem::take(&mut catch_up.latest),
                None => return Ok(()),
            }
        };
        if done {
            tracing::info!(
                partition,
                pushes = latest.len(),
                "caught up: backlog folded to the latest push per device and mailbox"
            );
        }
        for job in latest.into_values() {
            self.submit(job).await?;
        }
        Ok(())
    }

    async fn on_assigned(&mut self, partitions: Vec<TopicPartition>) -> Result<(), DeliverError> {
        let numbers: Vec<i32> = partitions.iter().map(|tp| tp.partition).collect();
        self.ready.set(false);
        let kafka = self.args.kafka.clone();
        let topic = self.topics.push_requests.clone();
        let wanted = numbers.clone();
        let ends = tokio::task::spawn_blocking(move || {
            pushrelay_kafka::high_watermarks(&kafka, &topic, &wanted)
        })
        .await
        .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))?;
        for (partition, until) in ends {
            if until > 0 {
                self.catch_up.insert(
                    partition,
                    CatchUp {
                        until,
                        latest: HashMap::new(),
                        last_record: Instant::now(),
                    },
                );
            }
        }
        self.assigned.extend(numbers.iter().copied());
        tracing::info!(partitions = ?numbers, "assigned");
        self.ready.set(true);
        Ok(())
    }

    async fn on_revoked(
        &mut self,
        partitions: Vec<TopicPartition>,
        done: RevokeAck,
    ) -> Result<(), DeliverError> {
        let numbers: Vec<i32> = partitions.iter().map(|tp| tp.partition).collect();
        for partition in &numbers {
            // Folded pushes not yet submitted are redone by the next owner.
            self.catch_up.remove(partition);
            self.assigned.remove(partition);
        }
        let dropped = self.scheduler.close(&numbers);
        let settled = self
            .settle(|stage| {
                stage.scheduler.sending_in(&numbers) == 0
                    && !stage
                        .groups
                        .values()
                        .any(|g| numbers.contains(&g.partition))
            })
            .await?;
        if !settled {
            tracing::warn!(partitions = ?numbers, "sends or outputs unfinished at the drain timeout; the next owner redoes them");
        }
        let offsets: Vec<(i32, i64)> = numbers
            .iter()
            .filter_map(|p| self.tracker.take_committable(*p).map(|o| (*p, o)))
            .collect();
        self.consumer
            .store_offsets(&self.topics.push_requests, &offsets);
        self.scheduler.forget(&numbers);
        for partition in &numbers {
            self.tracker.remove(*partition);
        }
        tracing::info!(partitions = ?numbers, handed_over = dropped, "revoked");
        done.done();
        Ok(())
    }

    /// Handles acks and answers until `settled` or the drain timeout.
    async fn settle(&mut self, settled: impl Fn(&Self) -> bool) -> Result<bool, DeliverError> {
        let deadline = Instant::now() + Duration::from_secs(self.args.drain_timeout_secs);
        while !settled(self) {
            tokio::select! {
                ack = self.acks.recv() => match ack {
                    Some(ack) => self.on_ack(ack)?,
                    None => return Ok(false),
                },
                Some(answered) = self.answers.recv() => self.on_answer(answered).await?,
                _ = tokio::time::sleep_until(deadline) => return Ok(false),
            }
        }
        Ok(true)
    }

    async fn housekeeping(&mut self) -> Result<(), DeliverError> {
        let stalled: Vec<i32> = self
            .catch_up
            .iter()
            .filter(|(_, c)| c.last_record.elapsed() >= CATCH_UP_STALL)
            .map(|(p, _)| *p)
            .collect();
        for partition in stalled {
            self.flush_catch_up(partition, true).await?;
        }
        let committable = self.tracker.take_all_committable();
        self.consumer
            .store_offsets(&self.topics.push_requests, &committable);
        ::metrics::gauge!(PENDING).set(self.pending() as f64);
        ::metrics::gauge!(IN_FLIGHT).set(self.scheduler.sending() as f64);
        ::metrics::gauge!(OUTSTANDING).set(self.tracker.total_outstanding() as f64);
        Ok(())
    }

    async fn drain_and_close(mut self) {
        let assigned: Vec<i32> = self.assigned.iter().copied().collect();
        self.catch_up.clear();
        let handed_over = self.scheduler.close(&assigned);
        match self
            .settle(|stage| stage.scheduler.sending() == 0 && stage.groups.is_empty())
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!("drain timeout: unfinished pushes will be redone after restart")
            }
            Err(err) => tracing::error!(error = %err, "output failed while draining"),
        }
        let committable = self.tracker.take_all_committable();
        self.consumer
            .store_offsets(&self.topics.push_requests, &committable);
        self.consumer.close().await;
        if let Err(err) = self
            .producer
            .flush(Duration::from_secs(self.args.drain_timeout_secs))
            .await
        {
            tracing::warn!(error = %err, "producer flush at shutdown");
        }
        tracing::info!(left_for_restart = handed_over, "delivery stage stopped");
    }
}

fn superseded_by_catch_up(job: Job) -> Finished {
    Finished {
        job,
        verdict: Verdict::Superseded,
        attempts: 0,
        status: 0,
        reason: "folded into a newer badge after an assignment".to_owned(),
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn platform_label(platform: i32) -> &'static str {
    pushrelay_proto::keys::platform_name(platform).unwrap_or("unknown")
}

const PUSHES: &str = "pushrelay_deliver_pushes_total";
const PUSHES_FOLDED: &str = "pushrelay_deliver_folded_total";
const ANSWERS: &str = "pushrelay_deliver_provider_answers_total";
const DEAD_LETTERS: &str = "pushrelay_deliver_dead_letters_total";
const LATENCY: &str = "pushrelay_deliver_end_to_end_seconds";
const PENDING: &str = "pushrelay_deliver_pending";
const IN_FLIGHT: &str = "pushrelay_deliver_in_flight";
const OUTSTANDING: &str = "pushrelay_deliver_outstanding_records";

fn describe_metrics() {
    metrics::describe_counter!(
        PUSHES,
        "Pushes by final outcome: delivered, dropped, unregistered, superseded, expired, exhausted"
    );
    metrics::describe_counter!(
        PUSHES_FOLDED,
        "Pushes folded into a newer one during catch-up after an assignment"
    );
    metrics::describe_counter!(
        ANSWERS,
        "Provider answers by HTTP status (0: no answer, log or probe)"
    );
    metrics::describe_counter!(
        DEAD_LETTERS,
        "Pushes dead-lettered: undecodable, no_provider, retries_exhausted"
    );
    metrics::describe_histogram!(
        LATENCY,
        "Ingress to provider acceptance of delivered pushes, seconds"
    );
    metrics::describe_gauge!(
        PENDING,
        "Devices and mailboxes with a push sending, queued or waiting to retry"
    );
    metrics::describe_gauge!(IN_FLIGHT, "Provider requests in flight");
    metrics::describe_gauge!(
        OUTSTANDING,
        "Input records whose outcome is not yet recorded"
    );
}
