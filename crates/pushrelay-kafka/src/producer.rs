use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::mpsc;

use crate::{Error, KafkaArgs};

/// Where an acknowledged record was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Partition written.
    pub partition: i32,
    /// Offset written.
    pub offset: i64,
}

/// The broker's answer for one record sent with [`AckProducer::send`].
#[derive(Debug)]
pub struct Ack<T> {
    /// The caller's tag for the record (for example the input offset it derives from).
    pub tag: T,
    /// Where it was written, or why it was not (after librdkafka's own retries).
    pub result: Result<Delivered, KafkaError>,
}

/// The producer context: forwards every delivery report to the ack channel.
struct AckContext<T> {
    acks: mpsc::UnboundedSender<Ack<T>>,
}

impl<T: Send + Sync + 'static> ClientContext for AckContext<T> {}

impl<T: Send + Sync + 'static> ProducerContext for AckContext<T> {
    type DeliveryOpaque = Box<T>;

    fn delivery(&self, result: &DeliveryResult<'_>, tag: Box<T>) {
        let result = match result {
            Ok(message) => Ok(Delivered {
                partition: message.partition(),
                offset: message.offset(),
            }),
            Err((err, _)) => Err(err.clone()),
        };
        // The receiver is gone only when the stage stopped; nothing waits for the ack then.
        let _ = self.acks.send(Ack { tag: *tag, result });
    }
}

/// An idempotent `acks=all` producer whose deliveries arrive, tagged, on a channel.
///
/// It uses librdkafka's callback-based producer with a polling thread: no future per
/// record. The ack channel is unbounded but cannot grow past the records in flight, which
/// librdkafka's queue bounds (`queue.buffering.max.messages`); when that queue is full,
/// [`AckProducer::send`] waits, so a slow broker slows the caller instead of growing memory.
pub struct AckProducer<T: Send + Sync + 'static> {
    inner: Arc<ThreadedProducer<AckContext<T>>>,
}

impl<T: Send + Sync + 'static> std::fmt::Debug for AckProducer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckProducer").finish_non_exhaustive()
    }
}

impl<T: Send + Sync + 'static> Clone for AckProducer<T> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T: Send + Sync + 'static> AckProducer<T> {
    /// Creates the producer and the receiving end of its acks.
    pub fn new(args: &KafkaArgs) -> Result<(Self, mpsc::UnboundedReceiver<Ack<T>>), Error> {
        let (tx, rx) = mpsc::unbounded_channel();
        let producer: ThreadedProducer<AckContext<T>> = args
            .producer_config()
            .create_with_context(AckContext { acks: tx })
            .map_err(|source| Error::Client {
                role: "producer",
                source,
            })?;
        Ok((
            Self {
                inner: Arc::new(producer),
            },
            rx,
        ))
    }

    /// Queues one record. `partition: None` lets the murmur2 partitioner choose by key; a
    /// `None` payload is a tombstone. Waits while librdkafka's queue is full. An `Err` is
    /// a non-queueing failure (for example an oversized record) and no ack will follow.
    pub async fn send(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: &[u8],
        payload: Option<&[u8]>,
        tag: T,
    ) -> Result<(), KafkaError> {
        let mut tag = Box::new(tag);
        loop {
            let mut record = BaseRecord::with_opaque_to(topic, tag).key(key);
            if let Some(payload) = payload {
                record = record.payload(payload);
            }
            if let Some(partition) = partition {
                record = record.partition(partition);
            }
            match self.inner.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), record)) => {
                    metrics::counter!("pushrelay_producer_queue_full_total").increment(1);
                    tag = record.delivery_opaque;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((err, _)) => return Err(err),
            }
        }
    }

    /// Waits up to `timeout` for every queued record to be acknowledged.
    pub async fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.flush(timeout))
            .await
            .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))
    }
}
