//! The stage's event loop: Kafka events in, acknowledged outputs out.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use pushrelay_auth::{Authenticated, Authenticator, RecentTokens, Rejection, TenantRegistry};
use pushrelay_coalesce::{Change, Coalescer, Flush, Offer};
use pushrelay_kafka::{
    Ack, AckProducer, EventReceiver, GroupConsumer, KafkaEvent, OffsetTracker, Record, RecordRef,
    RevokeAck, TopicPartition, TopicSpec, Topics, dead_letter, ensure_topics, murmur2_partition,
    now_ms, partition_count, read_to_end, verify_copartitioned,
};
use pushrelay_proto::Message;
use pushrelay_proto::v1::{MailboxChange, SubscriptionChange, UnreadCount};
use pushrelay_telemetry::{Health, ReadyFlag};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::request::{
    Invalid, Subject, check_placement, decode_change, decode_subscription_change,
    placement_feedback, rejection_feedback, subscription_output, to_change, unread_count,
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
    /// A token check was cancelled: the runtime is shutting down.
    #[error("a token check was cancelled (runtime shutting down)")]
    CheckCancelled,
}

/// Which input topic a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    MailboxChanges,
    SubscriptionChanges,
}

/// An input record's place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Input {
    source: Source,
    partition: i32,
    offset: i64,
}

/// What an output record derives from, carried through the producer to its ack.
#[derive(Debug, Clone, Copy)]
struct Tag {
    /// The input, or `None` for outputs with no input offset.
    input: Option<Input>,
    output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    UnreadCount,
    Subscription,
    Feedback,
    DeadLetter,
}

impl Output {
    fn topic(self, topics: &Topics) -> &str {
        match self {
            Self::UnreadCount => &topics.unread_counts,
            Self::Subscription => &topics.subscriptions,
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
            TopicSpec::with_retention(&topics.subscription_changes, kafka.token_topic_retention()),
            TopicSpec::compacted(&topics.subscriptions),
            TopicSpec::compacted(&topics.tenants),
            TopicSpec::plain(&topics.tenant_feedback),
            TopicSpec::plain(&topics.dead_letters),
        ],
    )
    .await?;
    let partitions = verify_copartitioned(
        kafka,
        &[
            &topics.mailbox_changes,
            &topics.unread_counts,
            &topics.subscriptions,
        ],
    )
    .await?;
    let subscription_change_partitions = partition_count(kafka, &topics.subscription_changes)
        .await?
        .ok_or_else(|| pushrelay_kafka::Error::MissingTopic(topics.subscription_changes.clone()))?;
    tracing::info!(
        partitions,
        "mailbox-changes, unread-counts and subscriptions are co-partitioned"
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
        let authenticator = Arc::new(Authenticator::new(registry, args.auth_config()));
        let mut preparer = Preparer {
            authenticator: Arc::clone(&authenticator),
            recent: RecentTokens::new(RECENT_TOKENS),
            mailbox_changes: topics.mailbox_changes.clone(),
            partitions,
        };
        let (consumer, events) = GroupConsumer::start_with(
            kafka,
            &args.group,
            &[&topics.mailbox_changes, &topics.subscription_changes],
            args.event_buffer,
            Duration::from_secs(args.drain_timeout_secs + 5),
            move |record| preparer.prepare(record),
        )?;
        partitions_ready.set(true);
        let mut stage = Stage {
            authenticator,
            admissions: VecDeque::new(),
            counters: metrics::OfferCounters::new(),
            coalescer: Coalescer::new(args.coalesce_config()),
            changes_offsets: OffsetTracker::new(),
            subscription_offsets: OffsetTracker::new(),
            partitions,
            subscription_change_partitions,
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

/// What the poll thread makes of an input record.
enum Prepared {
    /// A mailbox change whose token the cache vouched for, keyed and placed as its
    /// tenant's: ready for the coalescer.
    Admitted(Change),
    /// Anything else (a subscription change, a token to check, a record to refuse): the
    /// stage's loop takes it from the start.
    Raw(Record),
}

/// The hot path, run on the Kafka poll thread beside the stage's loop: decode a mailbox
/// change straight from librdkafka's buffer and admit it when the token cache knows its
/// token. It decides nothing the loop would decide differently: whatever it does not
/// admit is copied and handled by the loop as before.
struct Preparer {
    authenticator: Arc<Authenticator>,
    recent: RecentTokens,
    mailbox_changes: String,
    partitions: usize,
}

impl Preparer {
    fn prepare(&mut self, record: RecordRef<'_>) -> Prepared {
        if **record.topic == *self.mailbox_changes
            && let Ok(change) = decode_change(record)
            && let Some(authenticated) =
                self.authenticator
                    .authenticate_recent(&mut self.recent, &change.token, now_ms())
            && check_placement(
                record,
                &authenticated.tenant,
                &change.mailbox,
                self.partitions,
            )
            .is_ok()
        {
            return Prepared::Admitted(to_change(record, &authenticated.tenant, change));
        }
        Prepared::Raw(record.to_record())
    }
}

/// Slots of the poll thread's memo of recently accepted tokens.
const RECENT_TOKENS: usize = 1024;

/// An input record on its way in: records are handled in input order, but a token check
/// the cache cannot answer runs on the runtime while later records queue behind it.
struct Admission {
    input: Input,
    work: Work,
    check: Check,
}

enum Work {
    /// Admitted on the poll thread.
    Coalesce(Change),
    /// Refused before its token was looked at.
    Invalid(Record, Invalid),
    /// A mailbox change whose token is checked.
    Change(Record, MailboxChange),
    /// A subscription change whose token is checked.
    Subscription(Record, SubscriptionChange),
}

type CheckResult = Result<Authenticated, Rejection>;

enum Check {
    /// Nothing to check.
    None,
    /// The token's answer.
    Done(CheckResult),
    /// The token is being checked.
    Running(JoinHandle<CheckResult>),
}

impl Admission {
    fn running(&self) -> bool {
        matches!(&self.check, Check::Running(task) if !task.is_finished())
    }
}

/// Waits for the token check at the head of `admissions`, if one runs, and keeps its
/// answer. Cancel-safe: the check goes on if the wait is dropped.
async fn settle_head(admissions: &mut VecDeque<Admission>) -> Result<(), StageError> {
    if let Some(head) = admissions.front_mut()
        && let Check::Running(task) = &mut head.check
    {
        let answer = match task.await {
            Ok(answer) => answer,
            Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            Err(_) => return Err(StageError::CheckCancelled),
        };
        head.check = Check::Done(answer);
    }
    Ok(())
}

struct Stage {
    args: StageArgs,
    topics: Topics,
    partitions: usize,
    authenticator: Arc<Authenticator>,
    /// Records taken from Kafka and not yet handled, in input order.
    admissions: VecDeque<Admission>,
    counters: metrics::OfferCounters,
    coalescer: Coalescer,
    changes_offsets: OffsetTracker,
    subscription_offsets: OffsetTracker,
    subscription_change_partitions: usize,
    producer: AckProducer<Tag>,
    acks: mpsc::UnboundedReceiver<Ack<Tag>>,
    consumer: GroupConsumer<Prepared>,
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
        mut events: EventReceiver<Prepared>,
        mut refused: mpsc::UnboundedReceiver<RefusedTenant>,
        shutdown: &CancellationToken,
    ) -> Result<(), StageError> {
        let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let window = self.args.verify_window.max(1);
        let result = loop {
            let deadline = self.coalescer.next_deadline();
            let waiting = !self.admissions.is_empty();
            let room = self.admissions.len() < window;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Ok(()),
                Some(ack) = self.acks.recv() => self.on_ack(ack)?,
                _ = sleep_until(deadline) => self.flush_due().await?,
                _ = housekeeping.tick() => self.housekeeping(),
                // Records wait only behind a token check: settle it (at once when it is
                // done already) and handle what follows it.
                settled = settle_head(&mut self.admissions), if waiting => {
                    settled?;
                    self.advance().await?;
                }
                event = events.recv(), if room => {
                    let Some(event) = event else { break Err(StageError::ConsumerStopped) };
                    self.on_event(event).await?;
                    for _ in 0..EVENT_BATCH {
                        if self.admissions.len() >= window {
                            break;
                        }
                        match events.try_recv() {
                            Some(event) => self.on_event(event).await?,
                            None => break,
                        }
                    }
                }
                Some(tenant) = refused.recv() => self.dead_letter_tenant(tenant).await?,
            }
        };
        // Stop polling and drop queued events and records not yet handled: their offsets
        // were never stored, so they are read again by whoever owns the partitions next.
        self.consumer.stop();
        drop(events);
        for admission in self.admissions.drain(..) {
            if let Check::Running(task) = admission.check {
                task.abort();
            }
        }
        result
    }

    async fn on_event(&mut self, event: KafkaEvent<Prepared>) -> Result<(), StageError> {
        match event {
            KafkaEvent::Message(prepared) => {
                self.take(prepared);
                self.advance().await
            }
            KafkaEvent::Assigned(partitions) => {
                self.settle_all().await?;
                self.on_assigned(partitions).await
            }
            KafkaEvent::Revoked { partitions, done } => {
                self.settle_all().await?;
                self.on_revoked(partitions, done).await
            }
        }
    }

    fn offsets(&mut self, source: Source) -> &mut OffsetTracker {
        match source {
            Source::MailboxChanges => &mut self.changes_offsets,
            Source::SubscriptionChanges => &mut self.subscription_offsets,
        }
    }

    fn source_of(&self, topic: &str) -> Option<Source> {
        if topic == self.topics.mailbox_changes {
            Some(Source::MailboxChanges)
        } else if topic == self.topics.subscription_changes {
            Some(Source::SubscriptionChanges)
        } else {
            None
        }
    }

    fn topic_of(&self, source: Source) -> &str {
        match source {
            Source::MailboxChanges => &self.topics.mailbox_changes,
            Source::SubscriptionChanges => &self.topics.subscription_changes,
        }
    }

    /// Queues an input record behind the ones not yet handled, starting its token check
    /// when the cache cannot answer it.
    fn take(&mut self, prepared: Prepared) {
        let record = match prepared {
            Prepared::Admitted(change) => {
                let input = Input {
                    source: Source::MailboxChanges,
                    partition: change.partition,
                    offset: change.offset,
                };
                self.admissions.push_back(Admission {
                    input,
                    work: Work::Coalesce(change),
                    check: Check::None,
                });
                return;
            }
            Prepared::Raw(record) => record,
        };
        let Some(source) = self.source_of(&record.topic) else {
            tracing::warn!(topic = %record.topic, "record from a topic the stage does not read");
            return;
        };
        let input = Input {
            source,
            partition: record.partition,
            offset: record.offset,
        };
        let (work, check) = match source {
            Source::MailboxChanges => match decode_change(&record) {
                Ok(change) => {
                    let check = self.check(&change.token);
                    (Work::Change(record, change), check)
                }
                Err(invalid) => (Work::Invalid(record, invalid), Check::None),
            },
            Source::SubscriptionChanges => match decode_subscription_change(&record) {
                Ok(change) => {
                    let check = self.check(&change.token);
                    (Work::Subscription(record, change), check)
                }
                Err(invalid) => (Work::Invalid(record, invalid), Check::None),
            },
        };
        self.admissions.push_back(Admission { input, work, check });
    }

    /// The cache's answer for `token`, or a check of it started on the runtime.
    fn check(&self, token: &str) -> Check {
        match self.authenticator.authenticate_cached(token, now_ms()) {
            Some(authenticated) => Check::Done(Ok(authenticated)),
            None => {
                let authenticator = Arc::clone(&self.authenticator);
                let token = token.to_owned();
                Check::Running(tokio::spawn(async move {
                    authenticator.authenticate(&token).await
                }))
            }
        }
    }

    /// Handles the records at the head whose token checks are done, in input order.
    async fn advance(&mut self) -> Result<(), StageError> {
        while self.admissions.front().is_some_and(|head| !head.running()) {
            settle_head(&mut self.admissions).await?;
            let Some(admission) = self.admissions.pop_front() else {
                break;
            };
            self.handle(admission).await?;
        }
        Ok(())
    }

    /// Waits for every token check in progress and handles every queued record: before a
    /// rebalance is handled, so no record crosses it.
    async fn settle_all(&mut self) -> Result<(), StageError> {
        while !self.admissions.is_empty() {
            settle_head(&mut self.admissions).await?;
            self.advance().await?;
        }
        Ok(())
    }

    async fn handle(&mut self, admission: Admission) -> Result<(), StageError> {
        let Admission { input, work, check } = admission;
        self.offsets(input.source)
            .begin(input.partition, input.offset);
        let answer = match check {
            Check::Done(answer) => Some(answer),
            Check::None | Check::Running(_) => None,
        };
        match (work, answer) {
            (Work::Coalesce(change), _) => {
                self.coalesce(change, input);
                Ok(())
            }
            (Work::Invalid(record, invalid), _) => self.dead_letter(&record, input, invalid).await,
            (Work::Change(record, change), Some(answer)) => {
                self.on_mailbox_change(record, change, input, answer).await
            }
            (Work::Subscription(record, change), Some(answer)) => {
                self.on_subscription_change(record, change, input, answer)
                    .await
            }
            (Work::Change(record, _) | Work::Subscription(record, _), None) => {
                // Not reachable: every checked record carries its answer. Refused rather
                // than guessed at.
                let invalid = Invalid {
                    reason: "internal",
                    message: "token check missing".to_owned(),
                };
                self.dead_letter(&record, input, invalid).await
            }
        }
    }

    /// Acts on a token's answer and checks the record's placement. On refusal it writes
    /// the tenant feedback (or dead letter) and returns `None`.
    async fn admit(
        &mut self,
        record: &Record,
        input: Input,
        subject: Subject<'_>,
        partitions: usize,
        answer: CheckResult,
    ) -> Result<Option<Arc<str>>, StageError> {
        let authenticated = match answer {
            Ok(authenticated) => authenticated,
            Err(rejection) => {
                ::metrics::counter!(metrics::RECORDS, "outcome" => "rejected").increment(1);
                tracing::debug!(
                    reason = rejection.reason.code(),
                    partition = input.partition,
                    offset = input.offset,
                    "token rejected"
                );
                let feedback =
                    rejection_feedback(&rejection, subject.mailbox, subject.event_id, now_ms());
                let key = feedback.tenant.clone();
                self.send(
                    Output::Feedback,
                    None,
                    key.as_bytes(),
                    Some(&feedback.encode_to_vec()),
                    Some(input),
                )
                .await?;
                return Ok(None);
            }
        };
        if let Err(invalid) =
            check_placement(record, &authenticated.tenant, subject.mailbox, partitions)
        {
            if invalid.reason == "misrouted" {
                self.dead_letter(record, input, invalid).await?;
                return Ok(None);
            }
            ::metrics::counter!(metrics::RECORDS, "outcome" => "rejected").increment(1);
            let feedback = placement_feedback(
                &authenticated.tenant,
                &invalid,
                subject.mailbox,
                subject.event_id,
                now_ms(),
            );
            self.send(
                Output::Feedback,
                None,
                authenticated.tenant.as_bytes(),
                Some(&feedback.encode_to_vec()),
                Some(input),
            )
            .await?;
            return Ok(None);
        }
        Ok(Some(authenticated.tenant))
    }

    async fn on_mailbox_change(
        &mut self,
        record: Record,
        change: MailboxChange,
        input: Input,
        answer: CheckResult,
    ) -> Result<(), StageError> {
        let subject = Subject {
            token: &change.token,
            mailbox: &change.mailbox,
            event_id: &change.event_id,
        };
        let Some(tenant) = self
            .admit(&record, input, subject, self.partitions, answer)
            .await?
        else {
            return Ok(());
        };
        self.coalesce(to_change(&record, &tenant, change), input);
        Ok(())
    }

    fn coalesce(&mut self, change: Change, input: Input) {
        let now = Instant::now().into_std();
        let offer = self.coalescer.offer(change, now);
        let counter = match offer {
            Offer::Pending => &self.counters.pending,
            Offer::Merged => &self.counters.merged,
            Offer::Stale { .. } => &self.counters.stale,
        };
        counter.increment(1);
        if offer != Offer::Pending {
            self.changes_offsets.finish(input.partition, input.offset);
        }
    }

    async fn on_subscription_change(
        &mut self,
        record: Record,
        change: SubscriptionChange,
        input: Input,
        answer: CheckResult,
    ) -> Result<(), StageError> {
        let subject = Subject {
            token: &change.token,
            mailbox: &change.mailbox,
            event_id: &change.event_id,
        };
        let partitions = self.subscription_change_partitions;
        let Some(tenant) = self
            .admit(&record, input, subject, partitions, answer)
            .await?
        else {
            return Ok(());
        };
        let lifetime = Duration::from_secs(self.args.subscription_lifetime_days * 86_400);
        let output = subscription_output(&tenant, &change, lifetime, now_ms());
        let partition = murmur2_partition(output.partition_key.as_bytes(), self.partitions);
        ::metrics::counter!(metrics::SUBSCRIPTIONS, "action" => output.action).increment(1);
        self.send(
            Output::Subscription,
            Some(partition),
            output.key.as_bytes(),
            output.value.as_deref(),
            Some(input),
        )
        .await
    }

    async fn on_assigned(&mut self, partitions: Vec<TopicPartition>) -> Result<(), StageError> {
        let numbers: Vec<i32> = partitions
            .iter()
            .filter(|tp| *tp.topic == *self.topics.mailbox_changes)
            .map(|tp| tp.partition)
            .collect();
        if numbers.is_empty() {
            return Ok(());
        }
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
        let revoked: Vec<(Source, i32)> = partitions
            .iter()
            .filter_map(|tp| {
                self.source_of(&tp.topic)
                    .map(|source| (source, tp.partition))
            })
            .collect();
        for &(source, partition) in &revoked {
            if source == Source::MailboxChanges {
                let flushes = self.coalescer.revoke(partition);
                self.send_flushes(flushes).await?;
            }
        }
        let drained = self
            .wait_for_acks(|stage| {
                revoked.iter().all(|(source, p)| match source {
                    Source::MailboxChanges => stage.changes_offsets.outstanding(*p) == 0,
                    Source::SubscriptionChanges => stage.subscription_offsets.outstanding(*p) == 0,
                })
            })
            .await?;
        if !drained {
            tracing::warn!(partitions = ?revoked,
                "in-flight outputs not acknowledged before the drain timeout; their inputs will be redone");
        }
        for source in [Source::MailboxChanges, Source::SubscriptionChanges] {
            let offsets: Vec<(i32, i64)> = revoked
                .iter()
                .filter(|(s, _)| *s == source)
                .filter_map(|(_, p)| self.offsets(source).take_committable(*p).map(|o| (*p, o)))
                .collect();
            self.consumer.store_offsets(self.topic_of(source), &offsets);
            for (_, partition) in revoked.iter().filter(|(s, _)| *s == source) {
                self.offsets(source).remove(*partition);
            }
        }
        done.done();
        Ok(())
    }

    /// Processes acks until `settled` holds or the drain timeout passes; returns whether
    /// it settled.
    async fn wait_for_acks(&mut self, settled: impl Fn(&Self) -> bool) -> Result<bool, StageError> {
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

    fn on_ack(&mut self, ack: Ack<Tag>) -> Result<(), StageError> {
        match ack.result {
            Ok(_) => {
                if let Some(input) = ack.tag.input {
                    self.offsets(input.source)
                        .finish(input.partition, input.offset);
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
                        Some(&record.encode_to_vec()),
                        Some(Input {
                            source: Source::MailboxChanges,
                            partition: emission.partition,
                            offset: emission.offset,
                        }),
                    )
                    .await?;
                }
                Flush::Unchanged { partition, offset } => {
                    ::metrics::counter!(metrics::EMITTED, "kind" => "unchanged").increment(1);
                    self.changes_offsets.finish(partition, offset);
                }
            }
        }
        Ok(())
    }

    async fn dead_letter(
        &mut self,
        record: &Record,
        input: Input,
        invalid: Invalid,
    ) -> Result<(), StageError> {
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
            Some(&letter.encode_to_vec()),
            Some(input),
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
            Some(&letter.encode_to_vec()),
            None,
        )
        .await
    }

    async fn send(
        &mut self,
        output: Output,
        partition: Option<i32>,
        key: &[u8],
        payload: Option<&[u8]>,
        input: Option<Input>,
    ) -> Result<(), StageError> {
        let topic = output.topic(&self.topics).to_owned();
        self.producer
            .send(&topic, partition, key, payload, Tag { input, output })
            .await
            .map_err(|source| StageError::Produce { topic, source })
    }

    fn total_outstanding(&self) -> usize {
        self.changes_offsets.total_outstanding() + self.subscription_offsets.total_outstanding()
    }

    fn store_committable(&mut self) {
        for source in [Source::MailboxChanges, Source::SubscriptionChanges] {
            let committable = self.offsets(source).take_all_committable();
            self.consumer
                .store_offsets(self.topic_of(source), &committable);
        }
    }

    fn housekeeping(&mut self) {
        self.store_committable();
        self.coalescer.evict_idle(Instant::now().into_std());
        let stats = self.coalescer.stats();
        ::metrics::gauge!(metrics::TRACKED).set(stats.tracked as f64);
        ::metrics::gauge!(metrics::PENDING).set(stats.pending as f64);
        ::metrics::gauge!(metrics::OUTSTANDING).set(self.total_outstanding() as f64);
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
            .wait_for_acks(|stage| stage.total_outstanding() == 0)
            .await
        {
            Ok(true) => tracing::info!(flushed = pending, "drained pending counts"),
            Ok(false) => tracing::warn!(
                outstanding = self.total_outstanding(),
                "drain timeout: unacknowledged inputs will be redone after restart"
            ),
            Err(err) => tracing::error!(error = %err, "output failed while draining"),
        }
        self.store_committable();
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
