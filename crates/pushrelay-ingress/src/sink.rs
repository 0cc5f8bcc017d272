//! The Kafka side of the ingress: records in, an answer only after the broker
//! acknowledged every one of them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pushrelay_kafka::KafkaArgs;
use pushrelay_telemetry::ReadyFlag;
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio_util::sync::CancellationToken;

use crate::ApiError;

/// Seconds a client is told to wait after a 503.
const RETRY_AFTER_SECS: u64 = 1;

/// Watches librdkafka's error callback for "all brokers down", and its statistics for
/// the idempotent producer's id.
struct SinkContext {
    broker_down: Arc<AtomicBool>,
    producer_id: Arc<AtomicBool>,
}

impl ClientContext for SinkContext {
    fn stats_raw(&self, statistics: &[u8]) {
        self.producer_id
            .store(idempotent_id_assigned(statistics), Ordering::Release);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            if !self.broker_down.swap(true, Ordering::AcqRel) {
                tracing::warn!(
                    reason,
                    "all brokers are down: answering 503 until one is back"
                );
            }
        } else {
            tracing::warn!(error = %error, reason, "Kafka client error");
        }
    }
}

/// Whether librdkafka's statistics JSON says the idempotent producer has its id
/// (`"eos": {"idemp_state": "Assigned", ...}`).
fn idempotent_id_assigned(statistics: &[u8]) -> bool {
    const FIELD: &[u8] = b"\"idemp_state\"";
    let Some(at) = statistics.windows(FIELD.len()).position(|w| w == FIELD) else {
        return false;
    };
    let rest = &statistics[at + FIELD.len()..];
    let value = rest
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b':'))
        .map_or(&[][..], |start| &rest[start..]);
    value.starts_with(b"\"Assigned\"")
}

/// An idempotent `acks=all` producer that answers for a whole request.
pub struct RecordSink {
    producer: FutureProducer<SinkContext>,
    broker_down: Arc<AtomicBool>,
    producer_id: Arc<AtomicBool>,
    idempotent: bool,
    ack_timeout: Duration,
}

impl std::fmt::Debug for RecordSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordSink")
            .field("broker_down", &self.broker_down)
            .field("ack_timeout", &self.ack_timeout)
            .finish_non_exhaustive()
    }
}

impl RecordSink {
    /// Creates the producer. `ack_timeout` bounds how long a request waits for the broker.
    pub fn new(args: &KafkaArgs, ack_timeout: Duration) -> Result<Self, pushrelay_kafka::Error> {
        let broker_down = Arc::new(AtomicBool::new(false));
        let producer_id = Arc::new(AtomicBool::new(false));
        let mut config = args.producer_config();
        // Statistics tell when the idempotent producer has its id (see `warm_up`).
        if !args
            .properties
            .iter()
            .any(|(k, _)| k == "statistics.interval.ms")
        {
            config.set("statistics.interval.ms", "500");
        }
        let idempotent = config.get("enable.idempotence") == Some("true");
        // A record the client was told to retry should not linger for librdkafka's default
        // five minutes; pass-through properties still win.
        if !args
            .properties
            .iter()
            .any(|(k, _)| k == "message.timeout.ms")
        {
            config.set("message.timeout.ms", "30000");
        }
        let producer = config
            .create_with_context(SinkContext {
                broker_down: Arc::clone(&broker_down),
                producer_id: Arc::clone(&producer_id),
            })
            .map_err(|source| pushrelay_kafka::Error::Client {
                role: "producer",
                source,
            })?;
        Ok(Self {
            producer,
            broker_down,
            producer_id,
            idempotent,
            ack_timeout,
        })
    }

    /// Whether librdkafka reported every broker down and none came back yet.
    pub fn broker_down(&self) -> bool {
        self.broker_down.load(Ordering::Acquire)
    }

    /// Writes `records` to `topic` (murmur2 partitioner by key) and returns once the broker
    /// acknowledged all of them. Any failure is a 503: nothing is promised for a record the
    /// broker did not acknowledge (records already queued may still land; the client's
    /// retry repeats them, which absolute counts and sequences make harmless).
    pub async fn send_all(
        &self,
        topic: &str,
        records: &[(String, Vec<u8>)],
    ) -> Result<(), ApiError> {
        if self.broker_down() {
            return Err(ApiError::unavailable(
                "broker_unavailable",
                "the relay cannot reach its message broker; retry later",
                RETRY_AFTER_SECS,
            ));
        }
        let mut deliveries = Vec::with_capacity(records.len());
        for (key, value) in records {
            let record = FutureRecord::to(topic)
                .key(key.as_bytes())
                .payload(value.as_slice());
            match self.producer.send_result(record) {
                Ok(delivery) => deliveries.push(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    metrics::counter!("pushrelay_ingress_backpressure_total").increment(1);
                    return Err(ApiError::unavailable(
                        "backpressure",
                        "the relay is at capacity; retry later",
                        RETRY_AFTER_SECS,
                    ));
                }
                Err((err, _)) => {
                    return Err(ApiError::unavailable(
                        "broker_error",
                        format!("the record could not be queued: {err}"),
                        RETRY_AFTER_SECS,
                    ));
                }
            }
        }
        let acknowledged = tokio::time::timeout(self.ack_timeout, async {
            for delivery in deliveries {
                match delivery.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((err, _))) => return Err(err),
                    Err(_) => return Err(KafkaError::Canceled),
                }
            }
            Ok(())
        })
        .await;
        match acknowledged {
            Ok(Ok(())) => {
                self.broker_down.store(false, Ordering::Release);
                metrics::counter!("pushrelay_ingress_records_total", "topic" => topic.to_owned())
                    .increment(records.len() as u64);
                Ok(())
            }
            Ok(Err(err)) => Err(ApiError::unavailable(
                "broker_error",
                format!("the broker refused the records: {err}"),
                RETRY_AFTER_SECS,
            )),
            Err(_) => Err(ApiError::unavailable(
                "broker_timeout",
                format!(
                    "the broker did not acknowledge within {} ms; retry later",
                    self.ack_timeout.as_millis()
                ),
                RETRY_AFTER_SECS,
            )),
        }
    }

    /// Connects before the first request: fetches the metadata of `topics`, so a first
    /// request does not pay for connecting, the idempotent producer's id and the topic
    /// lookup within its acknowledgement timeout.
    pub async fn warm_up(
        self: &Arc<Self>,
        topics: &[String],
    ) -> Result<(), pushrelay_kafka::Error> {
        for topic in topics {
            let sink = Arc::clone(self);
            let name = topic.clone();
            tokio::task::spawn_blocking(move || {
                sink.producer
                    .client()
                    .fetch_metadata(Some(&name), Duration::from_secs(10))
                    .map(|_| ())
                    .map_err(|source| pushrelay_kafka::Error::Request {
                        operation: format!("metadata of {name}"),
                        source,
                    })
            })
            .await
            .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))?;
        }
        let started = tokio::time::Instant::now();
        let deadline = started + Duration::from_secs(30);
        while self.idempotent && !self.producer_id.load(Ordering::Acquire) {
            if tokio::time::Instant::now() > deadline {
                tracing::warn!("the idempotent producer has no id after 30 s; serving anyway");
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::info!(
            waited_ms = started.elapsed().as_millis() as u64,
            "producer ready"
        );
        Ok(())
    }

    /// While the broker is reported down, asks it for metadata every 500 ms and clears the
    /// flag when it answers, so the ingress recovers by itself. Mirrors the state in `ready`.
    pub async fn watch_broker(self: Arc<Self>, ready: ReadyFlag, shutdown: CancellationToken) {
        loop {
            ready.set(!self.broker_down());
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            if self.broker_down() {
                let sink = Arc::clone(&self);
                let answered = tokio::task::spawn_blocking(move || {
                    sink.producer
                        .client()
                        .fetch_metadata(None, Duration::from_millis(1000))
                        .is_ok()
                })
                .await
                .unwrap_or(false);
                if answered {
                    tracing::info!("the broker answers again");
                    self.broker_down.store(false, Ordering::Release);
                }
            }
        }
    }

    /// Waits up to `timeout` for queued records (shutdown).
    pub async fn flush(self: Arc<Self>, timeout: Duration) {
        let flushed = tokio::task::spawn_blocking(move || self.producer.flush(timeout)).await;
        if !matches!(flushed, Ok(Ok(()))) {
            tracing::warn!("some queued records were not flushed at shutdown");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::idempotent_id_assigned;

    #[test]
    fn reads_the_idempotence_state_from_statistics() {
        assert!(idempotent_id_assigned(
            br#"{"eos": { "idemp_state": "Assigned", "idemp_stateage": 3 }}"#
        ));
        assert!(idempotent_id_assigned(
            br#"{"eos":{"idemp_state":"Assigned"}}"#
        ));
        assert!(!idempotent_id_assigned(
            br#"{"eos": { "idemp_state": "WaitPID" }}"#
        ));
        assert!(!idempotent_id_assigned(
            br#"{"name": "rdkafka#producer-1"}"#
        ));
    }
}
