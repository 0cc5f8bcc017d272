//! Reading and writing the compacted tenants topic.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use pushrelay_kafka::{KafkaArgs, TopicSpec, ensure_topics, partition_count, read_to_end};
use pushrelay_proto::Message;
use pushrelay_proto::v1::Tenant;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Every tenant as of now: the tenants topic read to its end, latest record per key.
pub async fn load(kafka: &KafkaArgs) -> anyhow::Result<BTreeMap<String, Tenant>> {
    let topic = kafka.topics().tenants;
    ensure_topics(kafka, &[TopicSpec::compacted(&topic)])
        .await
        .with_context(|| {
            format!(
                "cannot reach the tenants topic {topic} at {}",
                kafka.brokers
            )
        })?;
    let partitions = partition_count(kafka, &topic)
        .await?
        .with_context(|| format!("topic {topic} has no partitions"))?;
    let kafka = kafka.clone();
    tokio::task::spawn_blocking(move || {
        let mut tenants = BTreeMap::new();
        let all: Vec<i32> = (0..partitions as i32).collect();
        read_to_end(&kafka, &topic, &all, Duration::from_secs(60), |record| {
            let Some(key) = record.key.and_then(|k| String::from_utf8(k).ok()) else {
                return;
            };
            match record.payload.map(|v| Tenant::decode(v.as_slice())) {
                Some(Ok(tenant)) => {
                    tenants.insert(key, tenant);
                }
                Some(Err(_)) => {}
                None => {
                    tenants.remove(&key);
                }
            }
        })
        .map(|_| tenants)
    })
    .await
    .context("reader thread")?
    .context("reading the tenants topic")
}

/// Writes a tenant record and waits for the broker's acknowledgement.
pub async fn save(kafka: &KafkaArgs, tenant: &Tenant) -> anyhow::Result<()> {
    let topic = kafka.topics().tenants;
    let producer: FutureProducer = kafka
        .producer_config()
        .create()
        .context("creating the producer")?;
    let value = tenant.encode_to_vec();
    producer
        .send(
            FutureRecord::to(&topic)
                .key(tenant.id.as_bytes())
                .payload(&value),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(err, _)| err)
        .with_context(|| format!("writing tenant {} to {topic}", tenant.id))?;
    Ok(())
}
