use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

use crate::{Error, KafkaArgs};

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// A topic a stage needs, and how to create it when missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Topic name.
    pub name: String,
    /// `cleanup.policy=compact` (latest value per key).
    pub compacted: bool,
    /// `retention.ms`, when not the broker's default.
    pub retention: Option<Duration>,
}

impl TopicSpec {
    /// A topic with the broker's default cleanup and retention.
    pub fn plain(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            compacted: false,
            retention: None,
        }
    }

    /// A compacted topic.
    pub fn compacted(name: &str) -> Self {
        Self {
            compacted: true,
            ..Self::plain(name)
        }
    }

    /// A topic whose records expire after `retention`.
    pub fn with_retention(name: &str, retention: Duration) -> Self {
        Self {
            retention: Some(retention),
            ..Self::plain(name)
        }
    }
}

/// Creates the missing topics of `specs` (when `--create-topics` is on) and checks that
/// every one exists afterwards. Existing topics are left as they are.
pub async fn ensure_topics(args: &KafkaArgs, specs: &[TopicSpec]) -> Result<(), Error> {
    let existing = existing_topics(args).await?;
    let missing: Vec<&TopicSpec> = specs
        .iter()
        .filter(|spec| !existing.contains(&spec.name))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !args.bootstrap.create_topics {
        return Err(Error::MissingTopic(missing[0].name.clone()));
    }
    let admin: AdminClient<DefaultClientContext> =
        args.client_config()
            .create()
            .map_err(|source| Error::Client {
                role: "admin client",
                source,
            })?;
    let retention_ms: Vec<String> = missing
        .iter()
        .map(|spec| {
            spec.retention
                .map_or(String::new(), |r| r.as_millis().to_string())
        })
        .collect();
    let new_topics: Vec<NewTopic<'_>> = missing
        .iter()
        .zip(&retention_ms)
        .map(|(spec, retention)| {
            let mut topic = NewTopic::new(
                &spec.name,
                args.bootstrap.partitions,
                TopicReplication::Fixed(args.bootstrap.replication_factor),
            );
            if spec.compacted {
                topic = topic.set("cleanup.policy", "compact");
            }
            if !retention.is_empty() {
                topic = topic.set("retention.ms", retention);
            }
            topic
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .map_err(|source| Error::request("CreateTopics", source))?;
    for result in results {
        match result {
            Ok(name) => tracing::info!(topic = %name, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(Error::request(
                    format!("creating topic {name}"),
                    rdkafka::error::KafkaError::AdminOp(code),
                ));
            }
        }
    }
    // Metadata can lag behind creation for a moment.
    for spec in missing {
        wait_for_topic(args, &spec.name).await?;
    }
    Ok(())
}

/// The partition count of `topic`, or `None` when it does not exist.
pub async fn partition_count(args: &KafkaArgs, topic: &str) -> Result<Option<usize>, Error> {
    let config = args.client_config();
    let topic = topic.to_owned();
    blocking(move || {
        let metadata = metadata_client(&config)?
            .fetch_metadata(Some(&topic), METADATA_TIMEOUT)
            .map_err(|source| Error::request(format!("metadata of {topic}"), source))?;
        Ok(metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.partitions().len()))
    })
    .await
}

/// Checks that every topic of `topics` has the same partition count; the error names both
/// topics and both counts.
pub async fn verify_copartitioned(args: &KafkaArgs, topics: &[&str]) -> Result<usize, Error> {
    let mut first: Option<(&str, usize)> = None;
    for topic in topics {
        let count = partition_count(args, topic)
            .await?
            .ok_or_else(|| Error::MissingTopic((*topic).to_owned()))?;
        match first {
            None => first = Some((topic, count)),
            Some((first_topic, first_count)) if first_count != count => {
                return Err(Error::NotCoPartitioned {
                    first: first_topic.to_owned(),
                    first_count,
                    second: (*topic).to_owned(),
                    second_count: count,
                });
            }
            Some(_) => {}
        }
    }
    Ok(first.map_or(0, |(_, count)| count))
}

async fn existing_topics(args: &KafkaArgs) -> Result<Vec<String>, Error> {
    let config = args.client_config();
    blocking(move || {
        let metadata = metadata_client(&config)?
            .fetch_metadata(None, METADATA_TIMEOUT)
            .map_err(|source| Error::request("cluster metadata", source))?;
        Ok(metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .map(|t| t.name().to_owned())
            .collect())
    })
    .await
}

fn metadata_client(config: &rdkafka::ClientConfig) -> Result<BaseConsumer, Error> {
    config.create().map_err(|source| Error::Client {
        role: "metadata client",
        source,
    })
}

async fn wait_for_topic(args: &KafkaArgs, topic: &str) -> Result<(), Error> {
    let deadline = tokio::time::Instant::now() + METADATA_TIMEOUT;
    loop {
        if partition_count(args, topic).await?.is_some() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Error::MissingTopic(topic.to_owned()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    }
}
