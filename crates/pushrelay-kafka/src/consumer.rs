use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
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

/// A consumed record still in librdkafka's buffer: what a [`GroupConsumer::start_with`]
/// preparation sees, on the poll thread, before anything is copied.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    /// Topic it came from.
    pub topic: &'a Arc<str>,
    /// Partition it came from.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its key, if any.
    pub key: Option<&'a [u8]>,
    /// Its value; `None` for a tombstone.
    pub payload: Option<&'a [u8]>,
    /// Its timestamp, Unix milliseconds, if the broker set one.
    pub timestamp_ms: Option<i64>,
}

impl RecordRef<'_> {
    /// An owned copy.
    pub fn to_record(&self) -> Record {
        Record {
            topic: Arc::clone(self.topic),
            partition: self.partition,
            offset: self.offset,
            key: self.key.map(<[u8]>::to_vec),
            payload: self.payload.map(<[u8]>::to_vec),
            timestamp_ms: self.timestamp_ms,
        }
    }
}

impl<'a> From<&'a Record> for RecordRef<'a> {
    fn from(record: &'a Record) -> Self {
        Self {
            topic: &record.topic,
            partition: record.partition,
            offset: record.offset,
            key: record.key.as_deref(),
            payload: record.payload.as_deref(),
            timestamp_ms: record.timestamp_ms,
        }
    }
}

/// What the consumer thread reports to a stage, in order. `T` is what the poll thread
/// makes of each record: an owned [`Record`] unless the stage prepares its own (see
/// [`GroupConsumer::start_with`]).
#[derive(Debug)]
pub enum KafkaEvent<T = Record> {
    /// A record. Records of a partition arrive only after its `Assigned` event.
    Message(T),
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

struct EventContext<T> {
    events: mpsc::Sender<Vec<KafkaEvent<T>>>,
    /// Events not yet handed over. The poll thread hands records over in batches (one
    /// wake-up of the stage per batch, not per record); a rebalance callback, which runs
    /// inside `poll`, hands the batch over before its own event, so the order holds.
    pending: Mutex<Vec<KafkaEvent<T>>>,
    closing: Arc<AtomicBool>,
    revoke_timeout: Duration,
    topics: HashMap<String, Arc<str>>,
}

/// Most records handed to the stage at once.
const HAND_OVER_BATCH: usize = 128;

impl<T> EventContext<T> {
    fn pending(&self) -> std::sync::MutexGuard<'_, Vec<KafkaEvent<T>>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `event` behind the pending ones; returns how many are pending.
    fn push(&self, event: KafkaEvent<T>) -> usize {
        let mut pending = self.pending();
        pending.push(event);
        pending.len()
    }

    /// Hands the pending events over, waiting while the channel is full. False once the
    /// stage has dropped its receiver.
    fn hand_over(&self) -> bool {
        let batch = std::mem::replace(&mut *self.pending(), Vec::with_capacity(HAND_OVER_BATCH));
        batch.is_empty() || self.events.blocking_send(batch).is_ok()
    }

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

impl<T: Send + 'static> ClientContext for EventContext<T> {}

impl<T: Send + 'static> ConsumerContext for EventContext<T> {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let partitions = self.partitions(tpl);
        tracing::info!(partitions = ?partitions, "partitions revoked");
        if !self.closing.load(Ordering::Acquire) && !partitions.is_empty() {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            self.push(KafkaEvent::Revoked {
                partitions,
                done: RevokeAck { tx: Some(tx) },
            });
            if self.hand_over() && rx.recv_timeout(self.revoke_timeout).is_err() {
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
                    self.push(KafkaEvent::Assigned(partitions));
                    self.hand_over();
                }
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(err) => tracing::warn!(error = %err, "rebalance error"),
        }
    }
}

fn commit_stored<T: Send + 'static>(consumer: &BaseConsumer<EventContext<T>>, why: &str) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => tracing::debug!(why, "committed stored offsets"),
        // Nothing stored since the last commit.
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(err) => tracing::warn!(why, error = %err, "offset commit failed"),
    }
}

/// A consumer-group member polled by a dedicated thread.
///
/// The thread turns messages and rebalances into [`KafkaEvent`]s on a bounded channel, in
/// batches of up to 128 (a batch is handed over as soon as librdkafka has
/// nothing more ready, so batching adds no wait); when the channel is full it stops
/// polling (librdkafka keeps heartbeating), so a slow stage slows consumption instead of
/// buffering without bound. Offsets are stored only by [`GroupConsumer::store_offsets`]
/// and committed periodically, on revoke and on close.
pub struct GroupConsumer<T: Send + 'static = Record> {
    consumer: Arc<BaseConsumer<EventContext<T>>>,
    stop: Arc<AtomicBool>,
    closing: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> std::fmt::Debug for GroupConsumer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupConsumer").finish_non_exhaustive()
    }
}

impl GroupConsumer<Record> {
    /// Joins `group`, subscribes to `topics` and starts polling; each record is handed
    /// over as an owned [`Record`]. `capacity` bounds the records waiting in the event
    /// channel; `revoke_timeout` bounds how long a revocation waits for the stage (keep it
    /// below `max.poll.interval.ms`).
    pub fn start(
        args: &KafkaArgs,
        group: &str,
        topics: &[&str],
        capacity: usize,
        revoke_timeout: Duration,
    ) -> Result<(Self, EventReceiver<Record>), Error> {
        Self::start_with(args, group, topics, capacity, revoke_timeout, |record| {
            record.to_record()
        })
    }
}

impl<T: Send + 'static> GroupConsumer<T> {
    /// Like [`GroupConsumer::start`], but the poll thread turns each record into a `T`
    /// with `prepare`, straight from librdkafka's buffer: work done there (decoding,
    /// checks) runs beside the stage's own loop instead of on it.
    pub fn start_with<F>(
        args: &KafkaArgs,
        group: &str,
        topics: &[&str],
        capacity: usize,
        revoke_timeout: Duration,
        prepare: F,
    ) -> Result<(Self, EventReceiver<T>), Error>
    where
        F: FnMut(RecordRef<'_>) -> T + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(capacity.div_ceil(HAND_OVER_BATCH).max(2));
        let closing = Arc::new(AtomicBool::new(false));
        let context = EventContext {
            events: tx,
            pending: Mutex::new(Vec::with_capacity(HAND_OVER_BATCH)),
            closing: Arc::clone(&closing),
            revoke_timeout,
            topics: topics
                .iter()
                .map(|t| ((*t).to_owned(), Arc::from(*t)))
                .collect(),
        };
        let consumer: BaseConsumer<EventContext<T>> = args
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
                .spawn(move || poll_loop(&consumer, &stop, prepare))
                .map_err(Error::Thread)?
        };
        Ok((
            Self {
                consumer,
                stop,
                closing,
                thread: Some(thread),
            },
            EventReceiver {
                rx,
                buffer: Vec::new().into_iter(),
            },
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

impl<T: Send + 'static> Drop for GroupConsumer<T> {
    fn drop(&mut self) {
        self.stop();
    }
}

fn poll_loop<T: Send + 'static>(
    consumer: &BaseConsumer<EventContext<T>>,
    stop: &AtomicBool,
    mut prepare: impl FnMut(RecordRef<'_>) -> T,
) {
    let context = consumer.context();
    let topics = context.topics.clone();
    let mut open = false;
    while !stop.load(Ordering::Acquire) {
        // While a batch is open, take only what librdkafka already has; then hand it over.
        let timeout = if open {
            Duration::ZERO
        } else {
            Duration::from_millis(100)
        };
        match consumer.poll(timeout) {
            None => {
                open = false;
                if !context.hand_over() {
                    break;
                }
            }
            Some(Ok(message)) => {
                let topic = match topics.get(message.topic()) {
                    Some(topic) => Arc::clone(topic),
                    None => Arc::from(message.topic()),
                };
                let item = prepare(RecordRef {
                    topic: &topic,
                    partition: message.partition(),
                    offset: message.offset(),
                    key: message.key(),
                    payload: message.payload(),
                    timestamp_ms: message.timestamp().to_millis(),
                });
                drop(message);
                open = true;
                if context.push(KafkaEvent::Message(item)) >= HAND_OVER_BATCH {
                    open = false;
                    if !context.hand_over() {
                        break;
                    }
                }
            }
            Some(Err(err)) => {
                metrics::counter!("pushrelay_kafka_consumer_errors_total").increment(1);
                tracing::warn!(error = %err, "consumer error");
            }
        }
    }
}

/// The stage's end of a [`GroupConsumer`]: its events one at a time, in order (they
/// travel in batches).
#[derive(Debug)]
pub struct EventReceiver<T = Record> {
    rx: mpsc::Receiver<Vec<KafkaEvent<T>>>,
    buffer: std::vec::IntoIter<KafkaEvent<T>>,
}

impl<T> EventReceiver<T> {
    /// The next event; `None` once the consumer stopped and everything was received.
    /// Cancel-safe.
    pub async fn recv(&mut self) -> Option<KafkaEvent<T>> {
        loop {
            if let Some(event) = self.buffer.next() {
                return Some(event);
            }
            self.buffer = self.rx.recv().await?.into_iter();
        }
    }

    /// The next event if one is ready.
    pub fn try_recv(&mut self) -> Option<KafkaEvent<T>> {
        loop {
            if let Some(event) = self.buffer.next() {
                return Some(event);
            }
            self.buffer = self.rx.try_recv().ok()?.into_iter();
        }
    }
}
