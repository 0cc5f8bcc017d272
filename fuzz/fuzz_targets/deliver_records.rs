//! The delivery stage's input records: `PushRequest` values, as the stage uses them: its
//! record check (`pushrelay_proto::checks`), the delivery key, the APNs request, and the
//! scheduler.
//!
//! Checks: a decodable push round-trips; an undecodable one, or one the record check
//! refuses, is dead-lettered with its bytes; the check wants the key `{platform}/{device}`
//! and a payload within bounds; the APNs request names the device and carries the payload
//! untouched; the scheduler sends the first of two copies at once and holds the newer one,
//! and never sends an expired push.
//!
//! Input: the encoded `PushRequest`.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use pushrelay_deliver::apns;
use pushrelay_deliver::retry::RetryPolicy;
use pushrelay_deliver::scheduler::{Action, Job, Scheduler, Verdict, delivery_key};
use pushrelay_fuzz::{NOW_MS, record, round_trip};
use pushrelay_proto::checks::{MAX_PUSH_PAYLOAD_BYTES, check_push_request};
use pushrelay_proto::keys::push_key;
use pushrelay_proto::v1::PushRequest;

fuzz_target!(|data: &[u8]| {
    let Some(push) = round_trip::<PushRequest>(data) else {
        let raw = record("pushrelay.push-requests", 0, 1, None, Some(data));
        let letter = pushrelay_kafka::dead_letter("deliver", &raw, "undecodable", "x", false);
        assert_eq!(letter.original_value, data);
        return;
    };
    let kafka_key = push_key(push.platform, &push.device_token);
    if let Err(message) = check_push_request(Some(kafka_key.as_bytes()), &push) {
        // Dead-lettered with the value (no token in this topic).
        let raw = record(
            "pushrelay.push-requests",
            0,
            1,
            Some(kafka_key.as_bytes()),
            Some(data),
        );
        let letter =
            pushrelay_kafka::dead_letter("deliver", &raw, "invalid_record", message, false);
        assert_eq!(letter.original_value, data);
        return;
    }
    assert!(push.payload.len() <= MAX_PUSH_PAYLOAD_BYTES);
    assert!(check_push_request(Some(b"apns/"), &push).is_err());
    let key = delivery_key(&push);
    assert!(key.contains(&push.device_token));
    let request = apns::request(&push, "provider-token");
    assert_eq!(request.path, format!("/3/device/{}", push.device_token));
    assert_eq!(request.body, push.payload);
    assert!(
        request
            .headers
            .iter()
            .any(|(name, value)| *name == "apns-topic" && *value == push.app_id)
    );

    let mut scheduler = Scheduler::new(RetryPolicy::default(), 4);
    let mut actions = Vec::new();
    let job = |push: PushRequest, offset| Job {
        push: Arc::new(push),
        partition: 0,
        offsets: vec![offset],
    };
    let mut older = push.clone();
    older.sequence = push.sequence.saturating_sub(1);
    let both = older.sequence < push.sequence;
    if both {
        scheduler.submit(job(older, 0), NOW_MS, &mut actions);
    }
    scheduler.submit(job(push.clone(), 1), NOW_MS, &mut actions);
    let sends: Vec<_> = actions
        .iter()
        .filter_map(|action| match action {
            Action::Send {
                key: sent, push, ..
            } => Some((sent.clone(), push.sequence)),
            Action::Finish(_) => None,
        })
        .collect();
    let verdicts: Vec<_> = actions
        .iter()
        .filter_map(|action| match action {
            Action::Finish(finished) => Some(finished.verdict),
            Action::Send { .. } => None,
        })
        .collect();
    if push.expires_time_ms > 0 && push.expires_time_ms <= NOW_MS {
        assert!(sends.is_empty(), "an expired push was sent");
        assert!(verdicts.iter().all(|v| *v == Verdict::Expired));
        assert_eq!(verdicts.len(), if both { 2 } else { 1 });
        assert_eq!(scheduler.pending(), 0);
        return;
    }
    // The first one submitted is sent at once; a newer one waits for its answer.
    assert_eq!(sends, vec![(key, push.sequence - u64::from(both))]);
    assert!(verdicts.is_empty());
    assert_eq!(scheduler.pending(), 1);
});
