//! `pushrelay-passthrough`: the ceiling for the stages. Consumes `mailbox-changes` and
//! produces every record unchanged to `{prefix}passthrough`, with the stages' client settings
//! (the same `KafkaArgs`, consumer group, acked producer and offset tracking: an offset is
//! stored once its copy is acknowledged), and no logic. The load harness
//! (`benches/pipeline.rs`) reports each stage's throughput as a ratio of this one's.

use std::time::Duration;

use clap::Parser;
use pushrelay_kafka::{
    AckProducer, GroupConsumer, KafkaArgs, KafkaEvent, OffsetTracker, TopicSpec, ensure_topics,
};

/// The same allocator as the stage binaries.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Copies `mailbox-changes` to `{prefix}passthrough`, nothing else.
#[derive(Debug, Parser)]
#[command(name = "pushrelay-passthrough")]
struct Cli {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Consumer group.
    #[arg(long, env = "PUSHRELAY_GROUP", default_value = "pushrelay-passthrough")]
    group: String,
    /// `/metrics` (records copied: `pushrelay_passthrough_records_total`).
    #[arg(long, env = "PUSHRELAY_ADMIN_ADDR", default_value = "127.0.0.1:0")]
    admin_addr: std::net::SocketAddr,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    let topics = cli.kafka.topics();
    let health = pushrelay_telemetry::Health::new();
    health.mark_started();
    let (_, _admin) = pushrelay_telemetry::serve_admin(
        cli.admin_addr,
        health,
        pushrelay_telemetry::metrics_handle(),
        tokio_util::sync::CancellationToken::new(),
    )
    .await?;
    let output = format!("{}passthrough", cli.kafka.topic_prefix);
    ensure_topics(&cli.kafka, &[TopicSpec::plain(&output)]).await?;
    let (producer, mut acks) = AckProducer::<(i32, i64)>::new(&cli.kafka)?;
    let (consumer, mut events) = GroupConsumer::start(
        &cli.kafka,
        &cli.group,
        &[&topics.mailbox_changes],
        4096,
        Duration::from_secs(10),
    )?;
    let mut tracker = OffsetTracker::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let shutdown = tokio::signal::ctrl_c();
    tokio::pin!(shutdown);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            _ = term.recv() => break,
            Some(ack) = acks.recv() => {
                if let Err(err) = ack.result {
                    return Err(err.into());
                }
                tracker.finish(ack.tag.0, ack.tag.1);
                metrics::counter!("pushrelay_passthrough_records_total").increment(1);
            }
            _ = tick.tick() => {
                consumer.store_offsets(&topics.mailbox_changes, &tracker.take_all_committable());
            }
            event = events.recv() => match event {
                None => break,
                Some(KafkaEvent::Message(record)) => {
                    tracker.begin(record.partition, record.offset);
                    producer
                        .send(&output, None, record.key.as_deref().unwrap_or_default(), record.payload.as_deref(), (record.partition, record.offset))
                        .await?;
                }
                Some(KafkaEvent::Assigned(_)) => {}
                Some(KafkaEvent::Revoked { partitions, done }) => {
                    while partitions.iter().any(|tp| tracker.outstanding(tp.partition) > 0) {
                        match acks.recv().await {
                            Some(ack) => tracker.finish(ack.tag.0, ack.tag.1),
                            None => break,
                        }
                    }
                    for tp in &partitions {
                        if let Some(offset) = tracker.take_committable(tp.partition) {
                            consumer.store_offsets(&topics.mailbox_changes, &[(tp.partition, offset)]);
                        }
                        tracker.remove(tp.partition);
                    }
                    done.done();
                }
            }
        }
    }
    consumer.stop();
    consumer.close().await;
    Ok(())
}
