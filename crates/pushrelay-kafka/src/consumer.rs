use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::{Error, KafkaArgs};

/// One topic partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicPartition {
    /// Topic name.
    pub topic: Arc<str>,
    /// Partition number.
    pub partition: i32,
}

/// An owned copy of a consumed record.
#[derive(Debug, Clone)]
pub struct Record {
    /// Topic it came from.
    pub topic: Arc<str>,
    /// Partition it came from.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its key, if any.
    pub key: Option<Vec<u8>>,
    /// Its value; `None` for a tombstone.
    pub payload: Option<Vec<u8>>,
    /// Its timestamp, Unix milliseconds, if the broker set one.
    pub timestamp_ms: Option<i64>,
}

impl Record {
    pub(crate) fn from_message_pub(message: &BorrowedMessage<'_>, topic: Arc<str>) -> Self {
        Self {
            topic,
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            timestamp_ms: message.timestamp().to_millis(),
        }
    }
}

/// What the consumer thread reports to a stage, in order.
#[derive(Debug)]
pub enum KafkaEvent {
    /// A record. Records of a partition arrive only after its `Assigned` event.
    Message(Record),
    /// Partitions newly assigned to this member. A stage restores per-partition state
    /// before handling the records that follow.
    Assigned(Vec<TopicPartition>),
    /// Partitions being taken away. The stage flushes what it holds for them, waits for
    /// the acks, stores their offsets and then drops (or completes) the [`RevokeAck`]; the
    /// consumer commits and only then lets the group move them.
    Revoked {
        /// The partitions leaving.
        partitions: Vec<TopicPartition>,
        /// Completing it lets the rebalance proceed.
        done: RevokeAck,
    },
}

/// Lets a revocation proceed when completed or dropped.
#[derive(Debug)]
pub struct RevokeAck {
    tx: Option<std::sync::mpsc::SyncSender<()>>,
}

impl RevokeAck {
    /// The stage has stored the offsets of the revoked partitions.
    pub fn done(mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for RevokeAck {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(());
        }
    }
}

struct EventContext {
    events: mpsc::Sender<KafkaEvent>,
    closing: Arc<AtomicBool>,
    revoke_timeout: Duration,
    topics: HashMap<String, Arc<str>>,
}

impl EventContext {
    fn topic(&self, name: &str) -> Arc<str> {
        self.topics
            .get(name)
            .cloned()
            .unwrap_or_else(|| Arc::from(name))
    }

    fn partitions(&self, tpl: &TopicPartitionList) -> Vec<TopicPartition> {
        tpl.elements()
            .iter()
            .map(|e| TopicPartition {
                topic: self.topic(e.topic()),
                partition: e.partition(),
            })
            .collect()
    }
}

impl ClientContext for EventContext {}

impl ConsumerContext for EventContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let partitions = self.partitions(tpl);
        tracing::info!(partitions = ?partitions, "partitions revoked");
        if !self.closing.load(Ordering::Acquire) && !partitions.is_empty() {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let event = KafkaEvent::Revoked {
                partitions,
                done: RevokeAck { tx: Some(tx) },
            };
            if self.events.blocking_send(event).is_ok()
                && rx.recv_timeout(self.revoke_timeout).is_err()
            {
                tracing::warn!(
                    timeout_ms = self.revoke_timeout.as_millis() as u64,
                    "stage did not finish the revocation in time; committing what it stored"
                );
            }
        }
        commit_stored(consumer, "revoke");
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let partitions = self.partitions(tpl);
                tracing::info!(partitions = ?partitions, "partitions assigned");
                if !self.closing.load(Ordering::Acquire) && !partitions.is_empty() {
                    let _ = self.events.blocking_send(KafkaEvent::Assigned(partitions));
                }
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(err) => tracing::warn!(error = %err, "rebalance error"),
        }
    }
}

fn commit_stored(consumer: &BaseConsumer<EventContext>, why: &str) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => tracing::debug!(why, "committed stored offsets"),
        // Nothing stored since the last commit.
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(err) => tracing::warn!(why, error = %err, "offset commit failed"),
    }
}

/// A consumer-group member polled by a dedicated thread.
///
/// The thread turns messages and rebalances into [`KafkaEvent`]s on a bounded channel;
/// when the channel is full it stops polling (librdkafka keeps heartbeating), so a slow
/// stage slows consumption instead of buffering without bound. Offsets are stored only by
/// [`GroupConsumer::store_offsets`] and committed periodically, on revoke and on close.
pub struct GroupConsumer {
    consumer: Arc<BaseConsumer<EventContext>>,
    stop: Arc<AtomicBool>,
    closing: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for GroupConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupConsumer").finish_non_exhaustive()
    }
}

impl GroupConsumer {
    /// Joins `group`, subscribes to `topics` and starts polling. `capacity` bounds the
    /// event channel; `revoke_timeout` bounds how long a revocation waits for the stage
    /// (keep it below `max.poll.interval.ms`).
    pub fn start(
        args: &KafkaArgs,
        group: &str,
        topics: &[&str],
        capacity: usize,
        revoke_timeout: Duration,
    ) -> Result<(Self, mpsc::Receiver<KafkaEvent>), Error> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let closing = Arc::new(AtomicBool::new(false));
        let context = EventContext {
            events: tx.clone(),
            closing: Arc::clone(&closing),
            revoke_timeout,
            topics: topics
                .iter()
                .map(|t| ((*t).to_owned(), Arc::from(*t)))
                .collect(),
        };
        let consumer: BaseConsumer<EventContext> = args
            .consumer_config(group)
            .create_with_context(context)
            .map_err(|source| Error::Client {
                role: "consumer",
                source,
            })?;
        consumer
            .subscribe(topics)
            .map_err(|source| Error::request(format!("subscribing to {topics:?}"), source))?;
        let consumer = Arc::new(consumer);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let consumer = Arc::clone(&consumer);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name(format!("kafka-poll-{group}"))
                .spawn(move || poll_loop(&consumer, &stop, &tx))
                .map_err(Error::Thread)?
        };
        Ok((
            Self {
                consumer,
                stop,
                closing,
                thread: Some(thread),
            },
            rx,
        ))
    }

    /// Stores `next_offset` (the next offset to consume) for each partition of `topic`.
    /// Partitions no longer assigned are skipped.
    pub fn store_offsets(&self, topic: &str, offsets: &[(i32, i64)]) {
        if offsets.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::with_capacity(offsets.len());
        for (partition, next) in offsets {
            if let Err(err) = tpl.add_partition_offset(topic, *partition, Offset::Offset(*next)) {
                tracing::warn!(error = %err, "bad offset to store");
            }
        }
        if let Err(err) = self.consumer.store_offsets(&tpl) {
            tracing::debug!(error = %err, "storing offsets failed (partition revoked?)");
        }
    }

    /// Stops polling: no more events are sent once the poll thread notices (within
    /// ~100 ms, or as soon as the event receiver is dropped).
    pub fn stop(&self) {
        self.closing.store(true, Ordering::Release);
        self.stop.store(true, Ordering::Release);
    }

    /// Stops polling, commits the stored offsets and leaves the group. Drop the event
    /// receiver first (or keep draining it) so the poll thread is not blocked on it.
    pub async fn close(mut self) {
        self.stop();
        let thread = self.thread.take();
        let consumer = Arc::clone(&self.consumer);
        drop(self);
        let closed = tokio::task::spawn_blocking(move || {
            if let Some(thread) = thread
                && thread.join().is_err()
            {
                tracing::error!("consumer poll thread panicked");
            }
            commit_stored(&consumer, "shutdown");
            // Dropping the last reference closes the consumer and leaves the group.
            drop(consumer);
        })
        .await;
        if closed.is_err() {
            tracing::error!("closing the consumer panicked");
        }
    }
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn poll_loop(
    consumer: &BaseConsumer<EventContext>,
    stop: &AtomicBool,
    events: &mpsc::Sender<KafkaEvent>,
) {
    let topics = consumer.context().topics.clone();
    while !stop.load(Ordering::Acquire) {
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(message)) => {
                let topic = topics
                    .get(message.topic())
                    .cloned()
                    .unwrap_or_else(|| Arc::from(message.topic()));
                let record = Record::from_message_pub(&message, topic);
                drop(message);
                if events.blocking_send(KafkaEvent::Message(record)).is_err() {
                    break;
                }
            }
            Some(Err(err)) => {
                metrics::counter!("pushrelay_kafka_consumer_errors_total").increment(1);
                tracing::warn!(error = %err, "consumer error");
            }
        }
    }
}
