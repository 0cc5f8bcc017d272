//! Flags of the fan-out stage (every one with an environment fallback).

use std::time::Duration;

use pushrelay_kafka::KafkaArgs;

use crate::payload::PushConfig;

/// `pushrelay-fanout`: one push request per live device for every unread count.
#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Consumer group of the stage's instances.
    #[arg(long, env = "PUSHRELAY_GROUP", default_value = "pushrelay-fanout")]
    pub group: String,

    /// Most devices per mailbox; beyond it the oldest subscriptions are removed.
    #[arg(long, env = "PUSHRELAY_MAX_DEVICES_PER_MAILBOX", default_value_t = 20)]
    pub max_devices_per_mailbox: usize,

    /// How long a provider may hold a push before dropping it, seconds.
    #[arg(long, env = "PUSHRELAY_PUSH_TTL_SECS", default_value_t = 3600)]
    pub push_ttl_secs: u64,

    /// APNs priority of badge pushes (5 saves the device's power; 10 is immediate).
    #[arg(long, env = "PUSHRELAY_APNS_PRIORITY", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub apns_priority: u32,

    /// Records buffered between the Kafka poll thread and the stage.
    #[arg(long, env = "PUSHRELAY_EVENT_BUFFER", default_value_t = 4096)]
    pub event_buffer: usize,

    /// On revoke and shutdown, how long to wait for in-flight outputs, seconds.
    #[arg(long, env = "PUSHRELAY_DRAIN_TIMEOUT_SECS", default_value_t = 5)]
    pub drain_timeout_secs: u64,

    /// How long loading a partition's subscriptions may take, seconds.
    #[arg(long, env = "PUSHRELAY_RESTORE_TIMEOUT_SECS", default_value_t = 120)]
    pub restore_timeout_secs: u64,
}

impl FanoutArgs {
    /// Defaults for a broker (tests, the dev binary).
    pub fn new(kafka: KafkaArgs) -> Self {
        Self {
            kafka,
            group: "pushrelay-fanout".to_owned(),
            max_devices_per_mailbox: 20,
            push_ttl_secs: 3600,
            apns_priority: 5,
            event_buffer: 4096,
            drain_timeout_secs: 5,
            restore_timeout_secs: 120,
        }
    }

    /// How pushes are shaped.
    pub fn push_config(&self) -> PushConfig {
        PushConfig {
            ttl: Duration::from_secs(self.push_ttl_secs),
            apns_priority: self.apns_priority,
        }
    }
}
