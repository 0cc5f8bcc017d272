//! Follows the compacted tenants topic into the [`TenantRegistry`].

use std::sync::Arc;

use pushrelay_auth::TenantRegistry;
use pushrelay_kafka::{FollowEvent, KafkaArgs, Record, TopicFollower};
use pushrelay_proto::Message;
use pushrelay_proto::v1::Tenant;
use pushrelay_telemetry::ReadyFlag;
use tokio::sync::mpsc;

use crate::metrics;

/// A tenant record the registry refused, for the dead letters.
#[derive(Debug)]
pub(crate) struct RefusedTenant {
    pub(crate) record: Record,
    pub(crate) reason: &'static str,
    pub(crate) message: String,
}

/// Starts following `topic`; refused records come out of the returned channel.
pub(crate) fn follow(
    args: &KafkaArgs,
    topic: &str,
    registry: Arc<TenantRegistry>,
    ready: ReadyFlag,
) -> Result<(TopicFollower, mpsc::UnboundedReceiver<RefusedTenant>), pushrelay_kafka::Error> {
    let (refused_tx, refused_rx) = mpsc::unbounded_channel();
    let follower = TopicFollower::start(args, topic, move |event| match event {
        FollowEvent::CaughtUp => {
            tracing::info!(tenants = registry.len(), "tenant registry caught up");
            ready.set(true);
        }
        FollowEvent::Record(record) => {
            if let Err(refused) = apply(&registry, record) {
                tracing::warn!(reason = refused.reason, message = %refused.message,
                    "tenant record refused");
                ::metrics::counter!(metrics::TENANT_RECORDS, "result" => "refused").increment(1);
                let _ = refused_tx.send(*refused);
            } else {
                ::metrics::counter!(metrics::TENANT_RECORDS, "result" => "applied").increment(1);
            }
            ::metrics::gauge!(metrics::TENANTS).set(registry.len() as f64);
        }
    })?;
    Ok((follower, refused_rx))
}

fn apply(registry: &TenantRegistry, record: Record) -> Result<(), Box<RefusedTenant>> {
    let refuse = |record: Record, reason, message: String| {
        Box::new(RefusedTenant {
            record,
            reason,
            message,
        })
    };
    let Some(key) = record
        .key
        .as_deref()
        .and_then(|k| std::str::from_utf8(k).ok())
        .map(str::to_owned)
    else {
        return Err(refuse(
            record,
            "invalid_record",
            "tenant record without a UTF-8 key".into(),
        ));
    };
    let tenant = match record.payload.as_deref() {
        None => None,
        Some(bytes) => match Tenant::decode(bytes) {
            Ok(tenant) => Some(tenant),
            Err(err) => {
                return Err(refuse(
                    record,
                    "undecodable",
                    format!("not a Tenant: {err}"),
                ));
            }
        },
    };
    match registry.apply(&key, tenant.as_ref()) {
        Ok(()) => {
            tracing::info!(tenant = %key, removed = tenant.is_none(),
                enabled = tenant.as_ref().is_some_and(|t| t.enabled), "tenant updated");
            Ok(())
        }
        Err(err) => Err(refuse(record, "invalid_record", err.to_string())),
    }
}
