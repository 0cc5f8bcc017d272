//! The fan-out stage's input records: `UnreadCount` values turned into push requests, and
//! sequences of `pushrelay.subscriptions` records (key, value or tombstone) applied to the
//! subscription table when they pass the stage's checks.
//!
//! Checks: the stage's record checks (`pushrelay_proto::checks`) accept a count exactly when
//! its tenant and mailbox are in bounds and it is keyed `{tenant}/{mailbox}`; every push
//! request decodes back and carries the count, the device and a
//! deterministic id, with the platform's payload; the table never holds more than its
//! per-mailbox limit, its `len()` always equals the devices it returns, and dropping every
//! partition empties it (no accounting drift, no overflow).
//!
//! Input: a selector byte. Even: the rest is an `UnreadCount`. Odd: a max-devices byte,
//! then operations, each an op byte (low 2 bits: partition; next 2 bits: apply a value,
//! apply a tombstone, list a mailbox's devices, drop the partition), a key field and a
//! value field.
#![no_main]

use std::collections::BTreeSet;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use pushrelay_fanout::payload::{PushConfig, collapse_id, push_key, push_request};
use pushrelay_fanout::table::{Device, DeviceToken, SubscriptionTable, mailbox_of, split_key};
use pushrelay_fuzz::{Input, NOW_MS, record, round_trip};
use pushrelay_proto::Message;
use pushrelay_proto::checks::{
    MAX_MAILBOX_LEN, MAX_TENANT_LEN, check_subscription, check_unread_count,
};
use pushrelay_proto::keys::mailbox_key;
use pushrelay_proto::v1::{Platform, PushRequest, Subscription, UnreadCount};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    if input.byte().is_multiple_of(2) {
        unread_count(input.rest());
    } else {
        subscriptions(input);
    }
});

fn devices() -> Vec<Device> {
    let device = |platform: Platform, token: &str| Device {
        device_token: DeviceToken::new(token),
        app_id: Arc::from("com.example.mail"),
        created_s: 1,
        expires_s: u32::MAX,
        platform: platform as u8,
        environment: 1,
    };
    vec![
        device(Platform::Apns, &"ab".repeat(32)),
        device(Platform::Fcm, "fcm-token:APA91b"),
        device(Platform::Probe, "probe-1"),
        device(Platform::Unspecified, "x"),
    ]
}

fn unread_count(value: &[u8]) {
    let Some(count) = round_trip::<UnreadCount>(value) else {
        // The stage dead-letters it with the value (no token in this topic).
        let raw = record("pushrelay.unread-counts", 0, 1, None, Some(value));
        let letter = pushrelay_kafka::dead_letter("fanout", &raw, "undecodable", "x", false);
        assert_eq!(letter.original_value, value);
        return;
    };
    let key = mailbox_key(&count.tenant, &count.mailbox);
    let in_bounds = !count.tenant.is_empty()
        && count.tenant.len() <= MAX_TENANT_LEN
        && !count.mailbox.is_empty()
        && count.mailbox.len() <= MAX_MAILBOX_LEN;
    assert_eq!(
        check_unread_count(Some(key.as_bytes()), &count).is_ok(),
        in_bounds
    );
    assert!(check_unread_count(Some(format!("{key}/").as_bytes()), &count).is_err());
    assert!(check_unread_count(None, &count).is_err());
    if !in_bounds {
        return;
    }
    let config = PushConfig::default();
    let collapse = collapse_id(&count.tenant, &count.mailbox);
    assert_eq!(collapse.len(), 32);
    for device in devices() {
        let push = push_request(&count, &device, &config, NOW_MS);
        assert_eq!(push, push_request(&count, &device, &config, NOW_MS));
        let decoded = PushRequest::decode(push.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(decoded, push);
        assert_eq!(push.badge, count.count);
        assert_eq!(
            (&push.tenant, &push.mailbox),
            (&count.tenant, &count.mailbox)
        );
        assert_eq!(push.sequence, count.sequence);
        assert_eq!(push.device_token, device.device_token.text());
        assert_eq!(push.push_id.len(), 32);
        assert_eq!(push.collapse_id, collapse);
        assert!(push_key(&device).ends_with(&*device.device_token.text()));
        match Platform::try_from(push.platform) {
            Ok(Platform::Apns) => {
                let payload: Value = serde_json::from_slice(&push.payload).expect("JSON");
                assert_eq!(payload["aps"]["badge"], u64::from(count.count));
            }
            Ok(Platform::Fcm) => {
                let payload: Value = serde_json::from_slice(&push.payload).expect("JSON");
                assert_eq!(
                    payload["message"]["data"]["unreadCount"],
                    count.count.to_string()
                );
                assert_eq!(payload["message"]["token"], push.device_token);
            }
            _ => assert!(push.payload.is_empty()),
        }
    }
}

fn subscriptions(mut input: Input<'_>) {
    let max_devices = usize::from(input.byte() % 8) + 1;
    let mut table = SubscriptionTable::new(max_devices);
    let mut touched = BTreeSet::new();
    let mut ops = 0;
    while !input.rest().is_empty() && ops < 64 {
        ops += 1;
        let op = input.byte();
        let partition = i32::from(op & 3);
        let Ok(key) = std::str::from_utf8(input.field()) else {
            // The stage skips records whose key is not UTF-8.
            continue;
        };
        let value = input.field();
        match (op >> 2) & 3 {
            0 | 1 => {
                let subscription = if (op >> 2) & 3 == 0 {
                    // An undecodable or invalid value is dead-lettered, not applied.
                    let Some(subscription) = round_trip::<Subscription>(value) else {
                        continue;
                    };
                    if check_subscription(Some(key.as_bytes()), &subscription).is_err() {
                        continue;
                    }
                    Some(subscription)
                } else {
                    None
                };
                let applied = table.apply(partition, key, subscription.as_ref());
                for evicted in &applied.evicted {
                    assert_eq!(mailbox_of(evicted), mailbox_of(key), "evicted elsewhere");
                }
                if let Some(mailbox) = mailbox_of(key) {
                    touched.insert((partition, mailbox.to_owned()));
                }
            }
            2 => {
                let now_ms = i64::from(u32::from_le_bytes(
                    value
                        .get(..4)
                        .and_then(|b| b.try_into().ok())
                        .unwrap_or_default(),
                )) * 1000;
                let mailbox = mailbox_of(key).unwrap_or(key);
                let (live, expired) = table.devices(partition, mailbox, now_ms);
                assert!(live.len() <= max_devices);
                for device in &live {
                    assert!(i64::from(device.expires_s) * 1000 > now_ms);
                }
                for key in &expired {
                    assert_eq!(mailbox_of(key), Some(mailbox), "expired elsewhere");
                    assert!(split_key(key).is_some());
                }
            }
            _ => {
                table.drop_partition(partition);
                touched.retain(|(p, _)| *p != partition);
            }
        }
        assert_eq!(table.len(), held(&mut table, &touched, max_devices));
    }
    for partition in 0..4 {
        table.drop_partition(partition);
    }
    assert_eq!(table.len(), 0);
    assert!(table.is_empty());
}

/// Devices held for the mailboxes touched, listed without expiring any.
fn held(
    table: &mut SubscriptionTable,
    touched: &BTreeSet<(i32, String)>,
    max_devices: usize,
) -> usize {
    touched
        .iter()
        .map(|(partition, mailbox)| {
            let (live, expired) = table.devices(*partition, mailbox, i64::MIN);
            assert!(expired.is_empty());
            assert!(live.len() <= max_devices, "{} > {max_devices}", live.len());
            live.len()
        })
        .sum()
}
