//! The auth-and-coalesce stage's input records, through the stage's own checks:
//! `decode_change` (+ `check_placement`, `to_change`) for `pushrelay.mailbox-changes`, and
//! `decode_subscription_change` (+ `subscription_output`) for
//! `pushrelay.subscription-changes`. Token validation is the `token` targets' business.
//!
//! Checks: an accepted record satisfies every rule the stage relies on; a refused one gets
//! a known reason and a dead letter that does not copy the value (it holds a token); the
//! placement check accepts exactly the key `{tenant}/{mailbox}` in its murmur2 partition;
//! a subscription output is keyed and shaped as the fan-out stage reads it.
//!
//! Input: a flags byte (bit 0: subscription change; bit 1: use the correct key; bit 2: use
//! the correct partition), a partition-count byte, the key field (when not the correct
//! key), then the record value (bit 3 set: a tombstone instead).
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use pushrelay_auth_coalesce::request::{
    self, MAX_DEVICE_TOKEN_LEN, MAX_MAILBOX_LEN, check_placement, decode_change,
    decode_subscription_change, subscription_output, to_change,
};
use pushrelay_fuzz::{Input, NOW_MS, record};
use pushrelay_kafka::{dead_letter, murmur2_partition};
use pushrelay_proto::Message;
use pushrelay_proto::checks::valid_device_token;
use pushrelay_proto::keys::{mailbox_key, platform_name, subscription_key};
use pushrelay_proto::v1::{Subscription, SubscriptionAction};

const TENANT: &str = "fabrikam.com";
const MAX_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.byte();
    let partitions = usize::from(input.byte() % 64) + 1;
    let given_key = if flags & 2 == 0 {
        Some(input.field())
    } else {
        None
    };
    let value = input.rest();
    let payload = (flags & 8 == 0).then_some(value);
    let raw = record("input", 0, 7, given_key, payload);
    if flags & 1 == 0 {
        mailbox_change(&raw, flags, partitions);
    } else {
        subscription_change(&raw);
    }
});

fn refused(raw: &pushrelay_kafka::Record, invalid: &request::Invalid) {
    assert!(
        matches!(invalid.reason, "undecodable" | "invalid_record"),
        "unexpected reason {}",
        invalid.reason
    );
    let letter = dead_letter("auth-coalesce", raw, invalid.reason, &invalid.message, true);
    let value = raw.payload.as_deref().unwrap_or_default();
    assert!(letter.original_value.is_empty(), "a token left its topic");
    assert_eq!(letter.original_value_size as usize, value.len());
    assert_eq!(letter.original_value_sha256.len(), 32);
}

fn mailbox_change(raw: &pushrelay_kafka::Record, flags: u8, partitions: usize) {
    let change = match decode_change(raw) {
        Ok(change) => change,
        Err(invalid) => return refused(raw, &invalid),
    };
    assert!(!change.mailbox.is_empty() && change.mailbox.len() <= MAX_MAILBOX_LEN);
    assert!(!change.token.is_empty());
    let expected = mailbox_key(TENANT, &change.mailbox);
    let right_partition = murmur2_partition(expected.as_bytes(), partitions);
    assert!((0..partitions as i32).contains(&right_partition));
    let mut placed = raw.clone();
    if flags & 2 != 0 {
        placed.key = Some(expected.clone().into_bytes());
    }
    placed.partition = if flags & 4 != 0 {
        right_partition
    } else {
        (right_partition + 1) % partitions as i32
    };
    let key_right = placed.key.as_deref() == Some(expected.as_bytes());
    let partition_right = placed.partition == right_partition;
    match check_placement(&placed, TENANT, &change.mailbox, partitions) {
        Ok(()) => assert!(key_right && partition_right, "misplaced record accepted"),
        Err(invalid) => {
            assert!(!(key_right && partition_right), "placed record refused");
            let expected_reason = if key_right {
                "misrouted"
            } else {
                "key_tenant_mismatch"
            };
            assert_eq!(invalid.reason, expected_reason);
        }
    }
    let accepted = to_change(&placed, TENANT, change.clone());
    assert_eq!(accepted.tenant, TENANT);
    assert_eq!(accepted.mailbox, change.mailbox);
    assert_eq!(
        (accepted.count, accepted.sequence),
        (change.unread_count, change.sequence)
    );
    assert_eq!(
        (accepted.partition, accepted.offset),
        (placed.partition, placed.offset)
    );
    assert_eq!(accepted.event_id, change.event_id);
}

fn subscription_change(raw: &pushrelay_kafka::Record) {
    let change = match decode_subscription_change(raw) {
        Ok(change) => change,
        Err(invalid) => return refused(raw, &invalid),
    };
    assert!(!change.mailbox.is_empty() && change.mailbox.len() <= MAX_MAILBOX_LEN);
    assert!(!change.device_token.is_empty() && change.device_token.len() <= MAX_DEVICE_TOKEN_LEN);
    assert!(!change.token.is_empty());
    let platform = platform_name(change.platform).expect("a known platform");
    let output = subscription_output(TENANT, &change, MAX_LIFETIME, NOW_MS);
    assert_eq!(output.partition_key, mailbox_key(TENANT, &change.mailbox));
    assert_eq!(
        output.key,
        subscription_key(&output.partition_key, change.platform, &change.device_token)
    );
    assert!(output.key.starts_with(&format!("{TENANT}/")));
    // The fan-out stage splits the key back into mailbox, platform and device.
    assert!(valid_device_token(&change.device_token));
    assert_eq!(
        pushrelay_fanout::table::split_key(&output.key),
        Some((
            output.partition_key.as_str(),
            platform,
            change.device_token.as_str()
        ))
    );
    if change.action == SubscriptionAction::Unsubscribe as i32 {
        assert!(output.value.is_none());
        assert_eq!(output.action, "unsubscribe");
        return;
    }
    assert_eq!(output.action, "subscribe");
    let value = output.value.expect("a subscription");
    let subscription = Subscription::decode(value.as_slice()).expect("decodes");
    assert_eq!(subscription.tenant, TENANT);
    assert_eq!(subscription.mailbox, change.mailbox);
    assert_eq!(subscription.device_token, change.device_token);
    assert_eq!(
        (subscription.platform, subscription.environment),
        (change.platform, change.environment)
    );
    let latest = NOW_MS + MAX_LIFETIME.as_millis() as i64;
    assert!(
        subscription.expires_time_ms > NOW_MS && subscription.expires_time_ms <= latest,
        "expiry {} outside (now, now + max lifetime]",
        subscription.expires_time_ms
    );
}
