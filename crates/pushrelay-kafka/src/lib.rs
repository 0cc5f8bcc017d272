//! Kafka plumbing shared by every stage.
//!
//! - [`KafkaArgs`]: brokers, librdkafka pass-through properties and topic names from
//!   flags and environment;
//! - [`ensure_topics`] / [`verify_copartitioned`]: topic bootstrap and the co-partitioning
//!   check;
//! - [`GroupConsumer`]: a consumer-group member on its own thread that turns messages and
//!   rebalances into [`KafkaEvent`]s on a bounded channel, and commits on revoke;
//! - [`AckProducer`]: an idempotent `acks=all` producer that reports every delivery on a
//!   channel, without a future per record;
//! - [`OffsetTracker`]: which input offsets may be stored, given outputs still in flight;
//! - [`murmur2_partition`]: the Java-compatible partitioner;
//! - [`dead_letter`]: the dead-letter record of an input a stage cannot process;
//! - [`read_to_end`] and [`TopicFollower`]: reading compacted topics (changelogs, tenants).

mod config;
mod consumer;
mod dead_letter;
mod error;
mod murmur2;
mod offsets;
mod producer;
mod reader;
mod topics;

pub use config::{KafkaArgs, TopicBootstrapArgs, Topics};
pub use consumer::{
    EventReceiver, GroupConsumer, KafkaEvent, Record, RecordRef, RevokeAck, TopicPartition,
};
pub use dead_letter::{dead_letter, now_ms, sha256};
pub use error::Error;
pub use murmur2::{murmur2, murmur2_partition};
pub use offsets::OffsetTracker;
pub use producer::{Ack, AckProducer, Delivered};
pub use reader::{FollowEvent, TopicFollower, high_watermarks, read_to_end};
pub use topics::{TopicSpec, ensure_topics, partition_count, verify_copartitioned};

pub use rdkafka;
