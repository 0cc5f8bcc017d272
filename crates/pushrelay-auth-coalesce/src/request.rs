//! The pure part of the stage: decoding and checking input records, building output
//! records. No I/O.

use pushrelay_auth::{MAX_TOKEN_BYTES, Rejection};
use pushrelay_coalesce::{Change, Emission, mailbox_key};
use pushrelay_kafka::{RecordRef, murmur2_partition};
use pushrelay_proto::Message;
use pushrelay_proto::keys::subscription_key;
use pushrelay_proto::v1::{
    FeedbackKind, MailboxChange, Subscription, SubscriptionAction, SubscriptionChange,
    TenantFeedback, UnreadCount,
};

use pushrelay_proto::checks::{DEVICE_TOKEN_RULE, valid_device_token};
pub use pushrelay_proto::checks::{MAX_DEVICE_TOKEN_LEN, MAX_MAILBOX_LEN};

/// What a record's token speaks for: the fields feedback names.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The bearer token.
    pub token: &'a str,
    /// The mailbox concerned.
    pub mailbox: &'a str,
    /// The event id.
    pub event_id: &'a str,
}

/// Why an input record cannot be processed at all (it goes to the dead letters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// Stable reason code.
    pub reason: &'static str,
    /// Detail for operators.
    pub message: String,
}

impl Invalid {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// Decodes a `MailboxChange` and checks what can be checked without the token.
pub fn decode_change<'a>(record: impl Into<RecordRef<'a>>) -> Result<MailboxChange, Invalid> {
    let Some(payload) = record.into().payload else {
        return Err(Invalid::new("undecodable", "empty (tombstone) value"));
    };
    let change = MailboxChange::decode(payload)
        .map_err(|err| Invalid::new("undecodable", format!("not a MailboxChange: {err}")))?;
    if change.mailbox.is_empty() {
        return Err(Invalid::new("invalid_record", "empty mailbox"));
    }
    if change.mailbox.len() > MAX_MAILBOX_LEN {
        return Err(Invalid::new(
            "invalid_record",
            format!("mailbox longer than {MAX_MAILBOX_LEN} bytes"),
        ));
    }
    if change.token.is_empty() {
        return Err(Invalid::new("invalid_record", "no token"));
    }
    check_token_size(&change.token)?;
    Ok(change)
}

/// The ingress refuses tokens over [`MAX_TOKEN_BYTES`], so a record carrying one did not
/// come through it: an operator's problem (dead letter), not the tenant's (feedback).
fn check_token_size(token: &str) -> Result<(), Invalid> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Invalid::new(
            "invalid_record",
            format!(
                "token of {} bytes, at most {MAX_TOKEN_BYTES} (the ingress's limit)",
                token.len()
            ),
        ));
    }
    Ok(())
}

/// What a validated change must satisfy against its Kafka placement: the key is exactly
/// `{tenant}/{mailbox}` for the token's tenant, and the record sits in the partition the
/// murmur2 partitioner gives that key. Otherwise it is refused: a tenant cannot write
/// under another tenant's keys, and a misrouted record would escape the mailbox's fence.
pub fn check_placement<'a>(
    record: impl Into<RecordRef<'a>>,
    tenant: &str,
    mailbox: &str,
    partitions: usize,
) -> Result<(), Invalid> {
    let record = record.into();
    let key = record.key.unwrap_or_default();
    // The key is `{tenant}/{mailbox}`: compared piecewise, without building it.
    let matches = key.len() == tenant.len() + 1 + mailbox.len()
        && key.starts_with(tenant.as_bytes())
        && key[tenant.len()] == b'/'
        && key.ends_with(mailbox.as_bytes());
    if !matches {
        let expected = mailbox_key(tenant, mailbox);
        return Err(Invalid::new(
            "key_tenant_mismatch",
            format!(
                "record key {:?} is not {expected:?}, the key of the token's tenant and the mailbox",
                String::from_utf8_lossy(key)
            ),
        ));
    }
    let partition = murmur2_partition(key, partitions);
    if partition != record.partition {
        return Err(Invalid::new(
            "misrouted",
            format!(
                "key belongs in partition {partition} (murmur2 of {partitions}), found in {}; \
                 the producer must use the murmur2 partitioner",
                record.partition
            ),
        ));
    }
    Ok(())
}

/// The coalescer's view of an accepted change.
pub fn to_change<'a>(
    record: impl Into<RecordRef<'a>>,
    tenant: &str,
    change: MailboxChange,
) -> Change {
    let record = record.into();
    Change {
        tenant: tenant.to_owned(),
        mailbox: change.mailbox,
        partition: record.partition,
        offset: record.offset,
        count: change.unread_count,
        sequence: change.sequence,
        ingress_time_ms: change.ingress_time_ms,
        event_id: change.event_id,
    }
}

/// The feedback record of a rejected token. Carries header fields, never the signature.
pub fn rejection_feedback(
    rejection: &Rejection,
    mailbox: &str,
    event_id: &str,
    now_ms: i64,
) -> TenantFeedback {
    TenantFeedback {
        tenant: feedback_tenant(rejection.claimed_tenant()),
        kind: FeedbackKind::TokenRejected as i32,
        reason: rejection.reason.code().to_owned(),
        message: rejection.reason.to_string(),
        mailbox: mailbox.to_owned(),
        event_id: event_id.to_owned(),
        key_id: rejection.facts.key_id.clone().unwrap_or_default(),
        thumbprint: rejection.facts.thumbprint.clone().unwrap_or_default(),
        algorithm: rejection.facts.algorithm.clone().unwrap_or_default(),
        device_token: String::new(),
        time_ms: now_ms,
    }
}

/// The feedback record of a change refused after its token was accepted (placement).
pub fn placement_feedback(
    tenant: &str,
    invalid: &Invalid,
    mailbox: &str,
    event_id: &str,
    now_ms: i64,
) -> TenantFeedback {
    TenantFeedback {
        tenant: tenant.to_owned(),
        kind: FeedbackKind::TokenRejected as i32,
        reason: invalid.reason.to_owned(),
        message: invalid.message.clone(),
        mailbox: mailbox.to_owned(),
        event_id: event_id.to_owned(),
        key_id: String::new(),
        thumbprint: String::new(),
        algorithm: String::new(),
        device_token: String::new(),
        time_ms: now_ms,
    }
}

/// Decodes a `SubscriptionChange` and checks what can be checked without the token.
pub fn decode_subscription_change<'a>(
    record: impl Into<RecordRef<'a>>,
) -> Result<SubscriptionChange, Invalid> {
    let Some(payload) = record.into().payload else {
        return Err(Invalid::new("undecodable", "empty (tombstone) value"));
    };
    let change = SubscriptionChange::decode(payload)
        .map_err(|err| Invalid::new("undecodable", format!("not a SubscriptionChange: {err}")))?;
    if change.mailbox.is_empty() || change.mailbox.len() > MAX_MAILBOX_LEN {
        return Err(Invalid::new("invalid_record", "empty or overlong mailbox"));
    }
    if !valid_device_token(&change.device_token) {
        return Err(Invalid::new(
            "invalid_record",
            format!("the device token is not {DEVICE_TOKEN_RULE}"),
        ));
    }
    if platform_name(change.platform).is_none() {
        return Err(Invalid::new("invalid_record", "unknown platform"));
    }
    if !matches!(
        SubscriptionAction::try_from(change.action),
        Ok(SubscriptionAction::Subscribe | SubscriptionAction::Unsubscribe)
    ) {
        return Err(Invalid::new("invalid_record", "unknown action"));
    }
    if change.token.is_empty() {
        return Err(Invalid::new("invalid_record", "no token"));
    }
    check_token_size(&change.token)?;
    Ok(change)
}

pub use pushrelay_proto::keys::platform_name;

/// What an accepted subscription change writes to the compacted `subscriptions` topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionOutput {
    /// `{tenant}/{mailbox}/{platform}/{device}`.
    pub key: String,
    /// `{tenant}/{mailbox}`: the partition is the one of this key.
    pub partition_key: String,
    /// The subscription, or `None` (a tombstone) to unsubscribe.
    pub value: Option<Vec<u8>>,
    /// `subscribe` or `unsubscribe`, for metrics.
    pub action: &'static str,
}

/// Builds the subscription record (or tombstone) of an accepted change. A requested expiry
/// is honoured up to `max_lifetime`; none means `max_lifetime` from now.
pub fn subscription_output(
    tenant: &str,
    change: &SubscriptionChange,
    max_lifetime: std::time::Duration,
    now_ms: i64,
) -> SubscriptionOutput {
    let partition_key = mailbox_key(tenant, &change.mailbox);
    let key = subscription_key(&partition_key, change.platform, &change.device_token);
    if change.action == SubscriptionAction::Unsubscribe as i32 {
        return SubscriptionOutput {
            key,
            partition_key,
            value: None,
            action: "unsubscribe",
        };
    }
    let latest = now_ms.saturating_add(max_lifetime.as_millis() as i64);
    let expires = if change.expires_time_ms > now_ms {
        change.expires_time_ms.min(latest)
    } else {
        latest
    };
    let subscription = Subscription {
        tenant: tenant.to_owned(),
        mailbox: change.mailbox.clone(),
        platform: change.platform,
        device_token: change.device_token.clone(),
        app_id: change.app_id.clone(),
        environment: change.environment,
        created_time_ms: if change.ingress_time_ms > 0 {
            change.ingress_time_ms
        } else {
            now_ms
        },
        expires_time_ms: expires,
    };
    SubscriptionOutput {
        key,
        partition_key,
        value: Some(subscription.encode_to_vec()),
        action: "subscribe",
    }
}

/// Feedback key for a possibly unknown tenant.
pub fn feedback_tenant(claimed: Option<&str>) -> String {
    match claimed {
        Some(tenant) if pushrelay_auth::valid_tenant_id(tenant) => tenant.to_owned(),
        _ => "-".to_owned(),
    }
}

/// The output record of an emission.
pub fn unread_count(emission: &Emission, now_ms: i64) -> UnreadCount {
    UnreadCount {
        tenant: emission.tenant.clone(),
        mailbox: emission.mailbox.clone(),
        count: emission.count,
        sequence: emission.sequence,
        changes_coalesced: emission.changes_coalesced,
        first_ingress_time_ms: emission.first_ingress_time_ms,
        last_ingress_time_ms: emission.last_ingress_time_ms,
        emitted_time_ms: now_ms,
        last_event_id: emission.last_event_id.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pushrelay_kafka::Record;
    use pushrelay_proto::v1::Platform;
    use std::sync::Arc;

    fn record(key: &str, partition: i32, payload: Option<Vec<u8>>) -> Record {
        Record {
            topic: Arc::from("pushrelay.mailbox-changes"),
            partition,
            offset: 1,
            key: Some(key.as_bytes().to_vec()),
            payload,
            timestamp_ms: None,
        }
    }

    fn change(mailbox: &str) -> MailboxChange {
        MailboxChange {
            event_id: "e1".into(),
            mailbox: mailbox.into(),
            unread_count: 3,
            sequence: 7,
            source_time_ms: 0,
            ingress_time_ms: 5,
            token: "a.b.c".into(),
        }
    }

    #[test]
    fn garbage_and_tombstones_are_undecodable() {
        let r = record("t/m", 0, Some(vec![0xff, 0xff, 0xff]));
        assert_eq!(decode_change(&r).map_err(|e| e.reason), Err("undecodable"));
        let r = record("t/m", 0, None);
        assert_eq!(decode_change(&r).map_err(|e| e.reason), Err("undecodable"));
    }

    #[test]
    fn empty_mailbox_or_token_is_invalid() {
        let r = record("t/m", 0, Some(change("").encode_to_vec()));
        assert_eq!(
            decode_change(&r).map_err(|e| e.reason),
            Err("invalid_record")
        );
        let mut c = change("a@x");
        c.token.clear();
        let r = record("t/m", 0, Some(c.encode_to_vec()));
        assert_eq!(
            decode_change(&r).map_err(|e| e.reason),
            Err("invalid_record")
        );
    }

    #[test]
    fn another_tenants_key_is_refused() {
        let key = "contoso.com/a@contoso.com";
        let p = murmur2_partition(key.as_bytes(), 4);
        let r = record(key, p, None);
        let err = check_placement(&r, "fabrikam.com", "a@contoso.com", 4).expect_err("refused");
        assert_eq!(err.reason, "key_tenant_mismatch");
        assert!(check_placement(&r, "contoso.com", "a@contoso.com", 4).is_ok());
    }

    #[test]
    fn misrouted_record_is_refused() {
        let key = "contoso.com/a@contoso.com";
        let p = murmur2_partition(key.as_bytes(), 4);
        let r = record(key, (p + 1) % 4, None);
        let err = check_placement(&r, "contoso.com", "a@contoso.com", 4).expect_err("refused");
        assert_eq!(err.reason, "misrouted");
    }

    #[test]
    fn subscriptions_are_keyed_by_device_and_partitioned_by_mailbox() {
        let change = SubscriptionChange {
            event_id: "e".into(),
            action: SubscriptionAction::Subscribe as i32,
            mailbox: "a@x".into(),
            platform: Platform::Apns as i32,
            device_token: "d1".into(),
            app_id: "com.example".into(),
            environment: 1,
            expires_time_ms: 0,
            ingress_time_ms: 5,
            token: "t.o.k".into(),
        };
        let day = std::time::Duration::from_secs(86_400);
        let out = subscription_output("fabrikam.com", &change, day, 1_000);
        assert_eq!(out.key, "fabrikam.com/a@x/apns/d1");
        assert_eq!(out.partition_key, "fabrikam.com/a@x");
        let sub = Subscription::decode(out.value.as_deref().expect("value")).expect("decodes");
        assert_eq!(sub.expires_time_ms, 1_000 + 86_400_000);
        assert_eq!(sub.created_time_ms, 5);
        let long = SubscriptionChange {
            expires_time_ms: i64::MAX,
            ..change.clone()
        };
        let out = subscription_output("fabrikam.com", &long, day, 1_000);
        let sub = Subscription::decode(out.value.as_deref().expect("value")).expect("decodes");
        assert_eq!(
            sub.expires_time_ms,
            1_000 + 86_400_000,
            "capped at the maximum lifetime"
        );
        let gone = SubscriptionChange {
            action: SubscriptionAction::Unsubscribe as i32,
            ..change
        };
        assert_eq!(
            subscription_output("fabrikam.com", &gone, day, 1_000).value,
            None
        );
    }

    #[test]
    fn feedback_never_carries_the_token() {
        let rejection = Rejection {
            reason: pushrelay_auth::Reason::Expired,
            facts: Box::new(pushrelay_auth::TokenFacts {
                claimed_tenant: Some("Evil/Tenant".into()),
                algorithm: Some("RS256".into()),
                key_id: Some("k1".into()),
                thumbprint: None,
            }),
        };
        let c = change("a@x");
        let fb = rejection_feedback(&rejection, &c.mailbox, &c.event_id, 9);
        assert_eq!(
            fb.tenant, "-",
            "an unusable claimed tenant is not used as a key"
        );
        assert_eq!(fb.reason, "expired");
        let bytes = fb.encode_to_vec();
        assert!(!bytes.windows(5).any(|w| w == b"a.b.c"));
    }
}
