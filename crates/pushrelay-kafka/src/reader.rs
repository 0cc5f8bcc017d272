use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use crate::consumer::Record;
use crate::{Error, KafkaArgs};

const POLL: Duration = Duration::from_millis(100);
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads `partitions` of `topic` from the beginning up to their high watermarks at the
/// time of the call, handing every record to `f`. Blocking: call it from
/// `spawn_blocking`. Returns, per partition, the offset it read up to (the high watermark
/// at the call): where a follower continues.
pub fn read_to_end(
    args: &KafkaArgs,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
    mut f: impl FnMut(Record),
) -> Result<Vec<(i32, i64)>, Error> {
    let consumer: BaseConsumer = args
        .reader_config()
        .create()
        .map_err(|source| Error::Client {
            role: "changelog reader",
            source,
        })?;
    let topic_name: Arc<str> = Arc::from(topic);
    let mut tpl = TopicPartitionList::new();
    let mut ends = Vec::new();
    let mut all_ends = Vec::new();
    for &partition in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, WATERMARK_TIMEOUT)
            .map_err(|source| {
                Error::request(format!("watermarks of {topic}/{partition}"), source)
            })?;
        all_ends.push((partition, high));
        if high > low {
            tpl.add_partition_offset(topic, partition, Offset::Beginning)
                .map_err(|source| Error::request("building the assignment", source))?;
            ends.push((partition, high));
        }
    }
    if ends.is_empty() {
        return Ok(all_ends);
    }
    consumer
        .assign(&tpl)
        .map_err(|source| Error::request(format!("assigning {topic}"), source))?;
    let deadline = Instant::now() + timeout;
    let mut remaining: HashSet<i32> = ends.iter().map(|(p, _)| *p).collect();
    while !remaining.is_empty() {
        if Instant::now() > deadline {
            return Err(Error::ReadTimeout {
                topic: topic.to_owned(),
                seconds: timeout.as_secs(),
            });
        }
        match consumer.poll(POLL) {
            None => {}
            Some(Ok(message)) => {
                let record = Record::from_message_pub(&message, Arc::clone(&topic_name));
                let end = ends
                    .iter()
                    .find(|(p, _)| *p == record.partition)
                    .map(|(_, high)| *high);
                if end.is_some_and(|high| record.offset + 1 >= high) {
                    remaining.remove(&record.partition);
                }
                if end.is_some_and(|high| record.offset < high) {
                    f(record);
                }
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                // Compacted or transactional logs can end below high - 1.
                if let Ok(position) = consumer.position()
                    && let Some(elem) = position.find_partition(topic, partition)
                    && let Offset::Offset(at) = elem.offset()
                    && ends.iter().any(|(p, high)| *p == partition && at >= *high)
                {
                    remaining.remove(&partition);
                }
            }
            Some(Err(err)) => {
                tracing::warn!(topic, error = %err, "error reading to the end");
            }
        }
    }
    Ok(all_ends)
}

/// The high watermark of each of `partitions` of `topic`. Blocking.
pub fn high_watermarks(
    args: &KafkaArgs,
    topic: &str,
    partitions: &[i32],
) -> Result<Vec<(i32, i64)>, Error> {
    let consumer: BaseConsumer = args
        .reader_config()
        .create()
        .map_err(|source| Error::Client {
            role: "watermark reader",
            source,
        })?;
    partitions
        .iter()
        .map(|&partition| {
            consumer
                .fetch_watermarks(topic, partition, WATERMARK_TIMEOUT)
                .map(|(_, high)| (partition, high))
                .map_err(|source| {
                    Error::request(format!("watermarks of {topic}/{partition}"), source)
                })
        })
        .collect()
}

/// What a [`TopicFollower`] reports.
#[derive(Debug)]
pub enum FollowEvent {
    /// A record (a `None` payload is a tombstone).
    Record(Record),
    /// Every partition was read up to its end as of the start: the follower caught up.
    CaughtUp,
}

/// Follows every partition of a (compacted) topic from its beginning, forever, on a
/// dedicated thread: the tenant registry reads `pushrelay.tenants` this way.
pub struct TopicFollower {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for TopicFollower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicFollower").finish_non_exhaustive()
    }
}

impl TopicFollower {
    /// Starts following every partition of `topic` from its beginning; `f` is called on
    /// the follower's thread.
    pub fn start(
        args: &KafkaArgs,
        topic: &str,
        f: impl FnMut(FollowEvent) + Send + 'static,
    ) -> Result<Self, Error> {
        Self::start_at(args, topic, None, f)
    }

    /// Starts following the given partitions of `topic` from the given offsets (`None`:
    /// every partition from its beginning). `CaughtUp` comes once each partition reached
    /// its end as of the start.
    pub fn start_at(
        args: &KafkaArgs,
        topic: &str,
        from: Option<&[(i32, i64)]>,
        mut f: impl FnMut(FollowEvent) + Send + 'static,
    ) -> Result<Self, Error> {
        let consumer: BaseConsumer =
            args.reader_config()
                .create()
                .map_err(|source| Error::Client {
                    role: "topic follower",
                    source,
                })?;
        let metadata = consumer
            .fetch_metadata(Some(topic), WATERMARK_TIMEOUT)
            .map_err(|source| Error::request(format!("metadata of {topic}"), source))?;
        let starts: Vec<(i32, Offset)> = match from {
            Some(from) => from.iter().map(|(p, o)| (*p, Offset::Offset(*o))).collect(),
            None => metadata
                .topics()
                .iter()
                .filter(|t| t.name() == topic)
                .flat_map(|t| t.partitions().iter().map(|p| (p.id(), Offset::Beginning)))
                .collect(),
        };
        if starts.is_empty() && from.is_none() {
            return Err(Error::MissingTopic(topic.to_owned()));
        }
        let mut tpl = TopicPartitionList::new();
        let mut ends = Vec::new();
        for &(partition, start) in &starts {
            let (_, high) = consumer
                .fetch_watermarks(topic, partition, WATERMARK_TIMEOUT)
                .map_err(|source| {
                    Error::request(format!("watermarks of {topic}/{partition}"), source)
                })?;
            let start_at = match start {
                Offset::Offset(o) => o,
                _ => 0,
            };
            // A partition already read to its end has nothing to catch up on.
            ends.push((partition, if high > start_at { high } else { 0 }));
            tpl.add_partition_offset(topic, partition, start)
                .map_err(|source| Error::request("building the assignment", source))?;
        }
        consumer
            .assign(&tpl)
            .map_err(|source| Error::request(format!("assigning {topic}"), source))?;
        let stop = Arc::new(AtomicBool::new(false));
        let topic_name: Arc<str> = Arc::from(topic);
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name(format!("follow-{topic}"))
                .spawn(move || {
                    let mut behind: HashSet<i32> = ends
                        .iter()
                        .filter(|(_, high)| *high > 0)
                        .map(|(p, _)| *p)
                        .collect();
                    let mut caught_up = false;
                    while !stop.load(Ordering::Acquire) {
                        if !caught_up && behind.is_empty() {
                            caught_up = true;
                            f(FollowEvent::CaughtUp);
                        }
                        match consumer.poll(POLL) {
                            None => {}
                            Some(Ok(message)) => {
                                let record =
                                    Record::from_message_pub(&message, Arc::clone(&topic_name));
                                if ends.iter().any(|(p, high)| {
                                    *p == record.partition && record.offset + 1 >= *high
                                }) {
                                    behind.remove(&record.partition);
                                }
                                f(FollowEvent::Record(record));
                            }
                            Some(Err(KafkaError::PartitionEOF(partition))) => {
                                behind.remove(&partition);
                            }
                            Some(Err(err)) => {
                                tracing::warn!(error = %err, "error following topic");
                            }
                        }
                    }
                })
                .map_err(Error::Thread)?
        };
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops following and waits for the thread.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("topic follower thread panicked");
        }
    }
}

impl Drop for TopicFollower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}
