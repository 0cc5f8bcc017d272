use std::time::Duration;

use rdkafka::ClientConfig;

use crate::Error;

/// Connection and topic flags shared by every stage and by `relayctl`.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap brokers, comma-separated `host:port`.
    #[arg(long, env = "PUSHRELAY_BROKERS")]
    pub brokers: String,

    /// Extra librdkafka property `KEY=VALUE`, passed to every client (repeatable; in the
    /// environment comma-separated). Use it for SASL/TLS, for example
    /// `-X security.protocol=SASL_SSL -X sasl.mechanism=SCRAM-SHA-512`.
    #[arg(
        long = "kafka-property",
        short = 'X',
        env = "PUSHRELAY_KAFKA_PROPERTIES",
        value_delimiter = ',',
        value_parser = parse_property
    )]
    pub properties: Vec<(String, String)>,

    /// Prefix of every topic name.
    #[arg(long, env = "PUSHRELAY_TOPIC_PREFIX", default_value = "pushrelay.")]
    pub topic_prefix: String,

    #[command(flatten)]
    pub bootstrap: TopicBootstrapArgs,
}

/// How missing topics are created at start.
#[derive(Debug, Clone, clap::Args)]
pub struct TopicBootstrapArgs {
    /// Create missing topics at start (with the partition count and replication below).
    #[arg(
        long,
        env = "PUSHRELAY_CREATE_TOPICS",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub create_topics: bool,

    /// Partition count of created topics. `mailbox-changes`, `unread-counts` and
    /// `subscriptions` must share one count; it bounds every stage's parallelism.
    #[arg(long, env = "PUSHRELAY_PARTITIONS", default_value_t = 12)]
    pub partitions: i32,

    /// Replication factor of created topics (use 3 on a production cluster).
    #[arg(long, env = "PUSHRELAY_REPLICATION_FACTOR", default_value_t = 1)]
    pub replication_factor: i32,

    /// Retention of the topics that carry bearer tokens (`mailbox-changes`,
    /// `subscription-changes`), in hours. Tokens live at most 24 h; keep this short.
    #[arg(
        long,
        env = "PUSHRELAY_TOKEN_TOPIC_RETENTION_HOURS",
        default_value_t = 6
    )]
    pub token_topic_retention_hours: u64,
}

fn parse_property(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(Error::Property(raw.to_owned()).to_string()),
    }
}

impl KafkaArgs {
    /// Arguments for a broker at `brokers` with default topics and bootstrap.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            properties: Vec::new(),
            topic_prefix: "pushrelay.".to_owned(),
            bootstrap: TopicBootstrapArgs {
                create_topics: true,
                partitions: 12,
                replication_factor: 1,
                token_topic_retention_hours: 6,
            },
        }
    }

    /// The topic names under this prefix.
    pub fn topics(&self) -> Topics {
        Topics::new(&self.topic_prefix)
    }

    /// A base client configuration: brokers plus pass-through properties.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        self.apply_properties(&mut config);
        config
    }

    /// The configuration of an idempotent, compressing, `acks=all` producer using the
    /// Java-compatible murmur2 partitioner. Pass-through properties override the defaults.
    pub fn producer_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("compression.type", "lz4")
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "5");
        self.apply_properties(&mut config);
        config
    }

    /// The configuration of a consumer-group member that stores offsets only when told
    /// to (`enable.auto.offset.store=false`) and auto-commits what was stored, fetching
    /// with at most 100 ms of broker-side wait.
    pub fn consumer_config(&self, group: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", group)
            .set("enable.auto.offset.store", "false")
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            // A broker without long-poll wake-up (the embedded mock) answers a fetch
            // only after this wait: keep each hop's idle latency low.
            .set("fetch.wait.max.ms", "100")
            // When the prefetched records reach `queued.max.messages.kbytes`, librdkafka
            // postpones the partition's next fetch by this much (default 1 s). A stage
            // draining a backlog empties that queue long before: it then sat idle for most
            // of a second at a time.
            .set("fetch.queue.backoff.ms", "20");
        self.apply_properties(&mut config);
        config
    }

    /// The configuration of a group-less reader (changelogs, registries), reading from
    /// the beginning and reporting partition ends.
    pub fn reader_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            // librdkafka wants a group id even for assign(); the reader never joins it
            // and never commits.
            .set("group.id", "pushrelay-reader")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "true")
            .set("fetch.wait.max.ms", "100");
        self.apply_properties(&mut config);
        // A reader never joins a group, whatever was passed through.
        config.set("enable.auto.commit", "false");
        config
    }

    /// Retention of the token-carrying topics.
    pub fn token_topic_retention(&self) -> Duration {
        Duration::from_secs(self.bootstrap.token_topic_retention_hours * 3600)
    }

    fn apply_properties(&self, config: &mut ClientConfig) {
        for (key, value) in &self.properties {
            config.set(key, value);
        }
    }
}

/// The relay's topic names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// Tenants' mailbox changes (bearer tokens inside).
    pub mailbox_changes: String,
    /// Coalesced counts (compacted; the coalescer's changelog).
    pub unread_counts: String,
    /// Tenants' subscription requests (bearer tokens inside).
    pub subscription_changes: String,
    /// Live subscriptions (compacted).
    pub subscriptions: String,
    /// Tenant registry (compacted).
    pub tenants: String,
    /// Push messages for the delivery stage.
    pub push_requests: String,
    /// Every delivery outcome.
    pub delivery_receipts: String,
    /// Inputs a stage could not process.
    pub dead_letters: String,
    /// Rejections and dead devices, keyed by tenant.
    pub tenant_feedback: String,
}

impl Topics {
    /// Topic names under `prefix` (default `pushrelay.`).
    pub fn new(prefix: &str) -> Self {
        let name = |suffix: &str| format!("{prefix}{suffix}");
        Self {
            mailbox_changes: name("mailbox-changes"),
            unread_counts: name("unread-counts"),
            subscription_changes: name("subscription-changes"),
            subscriptions: name("subscriptions"),
            tenants: name("tenants"),
            push_requests: name("push-requests"),
            delivery_receipts: name("delivery-receipts"),
            dead_letters: name("dead-letters"),
            tenant_feedback: name("tenant-feedback"),
        }
    }

    /// Every relay topic with its cleanup policy: compacted `unread-counts`,
    /// `subscriptions` and `tenants`; short `retention` on the token-carrying topics.
    pub fn specs(&self, retention: Duration) -> Vec<crate::TopicSpec> {
        use crate::TopicSpec;
        vec![
            TopicSpec::with_retention(&self.mailbox_changes, retention),
            TopicSpec::compacted(&self.unread_counts),
            TopicSpec::with_retention(&self.subscription_changes, retention),
            TopicSpec::compacted(&self.subscriptions),
            TopicSpec::compacted(&self.tenants),
            TopicSpec::plain(&self.push_requests),
            TopicSpec::plain(&self.delivery_receipts),
            TopicSpec::plain(&self.dead_letters),
            TopicSpec::plain(&self.tenant_feedback),
        ]
    }

    /// Whether records of `topic` carry bearer tokens (never copied out of it).
    pub fn carries_tokens(&self, topic: &str) -> bool {
        topic == self.mailbox_changes || topic == self.subscription_changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        kafka: KafkaArgs,
    }

    #[test]
    fn properties_pass_through_and_override_defaults() {
        let cli = Cli::try_parse_from([
            "x",
            "--brokers",
            "b:9092",
            "-X",
            "security.protocol=SASL_SSL",
            "-X",
            "compression.type=zstd",
        ])
        .expect("valid flags");
        let producer = cli.kafka.producer_config();
        assert_eq!(producer.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(producer.get("compression.type"), Some("zstd"));
        assert_eq!(producer.get("acks"), Some("all"));
        assert_eq!(producer.get("partitioner"), Some("murmur2_random"));
    }

    #[test]
    fn malformed_property_is_refused_with_the_expected_form() {
        let err = Cli::try_parse_from(["x", "--brokers", "b", "-X", "nonsense"])
            .expect_err("must be refused");
        assert!(err.to_string().contains("expected KEY=VALUE"), "{err}");
    }

    #[test]
    fn topic_names_follow_the_prefix() {
        let topics = Topics::new("t1.");
        assert_eq!(topics.mailbox_changes, "t1.mailbox-changes");
        assert!(topics.carries_tokens("t1.subscription-changes"));
        assert!(!topics.carries_tokens("t1.unread-counts"));
    }
}
