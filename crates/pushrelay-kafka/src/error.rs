use rdkafka::error::KafkaError;

/// Failures of the Kafka plumbing. All of them are the environment's (broker, config),
/// never an input record's.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `KEY=VALUE` property could not be parsed.
    #[error("invalid Kafka property {0:?}: expected KEY=VALUE")]
    Property(String),
    /// librdkafka refused the configuration or could not create a client.
    #[error("cannot create the Kafka {role}: {source}")]
    Client {
        /// Which client (producer, consumer, admin).
        role: &'static str,
        /// librdkafka's error.
        source: KafkaError,
    },
    /// A broker request failed.
    #[error("{operation} failed: {source}")]
    Request {
        /// What was attempted.
        operation: String,
        /// librdkafka's error.
        source: KafkaError,
    },
    /// A topic the stage needs is missing and topic creation is off.
    #[error(
        "topic {0} does not exist; create it or run with --create-topics (PUSHRELAY_CREATE_TOPICS=true)"
    )]
    MissingTopic(String),
    /// Topics that must be co-partitioned have different partition counts.
    #[error(
        "topics {first} ({first_count} partitions) and {second} ({second_count} partitions) must have \
         the same partition count: records of one mailbox must land in the same partition of both. \
         Add partitions to the smaller topic (and note that keys move) or recreate them"
    )]
    NotCoPartitioned {
        /// One topic.
        first: String,
        /// Its partition count.
        first_count: usize,
        /// The other topic.
        second: String,
        /// Its partition count.
        second_count: usize,
    },
    /// A client thread could not be started.
    #[error("cannot start a Kafka client thread: {0}")]
    Thread(#[source] std::io::Error),
    /// Reading a topic to its end did not finish in time.
    #[error("reading {topic} to its end timed out after {seconds} s")]
    ReadTimeout {
        /// Topic being read.
        topic: String,
        /// The deadline.
        seconds: u64,
    },
}

impl Error {
    pub(crate) fn request(operation: impl Into<String>, source: KafkaError) -> Self {
        Self::Request {
            operation: operation.into(),
            source,
        }
    }
}
