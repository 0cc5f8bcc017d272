//! `POST /v1/notifications` bodies (JSON or protobuf `NotificationBatch`) through the
//! ingress's own functions: `body_format`, `parse_notifications`, `mailbox_changes`.
//!
//! Checks: refusals are 4xx with a stable code; an accepted body has 1 to `max`
//! notifications with usable mailboxes; a JSON body's notifications are exactly the ones a
//! plain reading of the JSON finds; every record written decodes back to its notification,
//! is keyed `{tenant}/{mailbox}`, and passes the auth-coalesce stage's record checks (what
//! the ingress accepts is never dead-lettered downstream).
//!
//! Input: a `max` byte, the `Content-Type` field, then the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pushrelay_auth_coalesce::request::decode_change;
use pushrelay_fuzz::{Input, NOW_MS, record};
use pushrelay_ingress::request::{
    Bearer, BodyFormat, MAX_MAILBOX_LEN, body_format, mailbox_changes, mailbox_key,
    parse_notifications,
};
use pushrelay_proto::Message;
use pushrelay_proto::v1::MailboxChange;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let max = usize::from(input.byte() % 100) + 1;
    let content_type = std::str::from_utf8(input.field()).ok();
    let body = input.rest();
    let Ok(format) = body_format(content_type) else {
        return;
    };
    let notifications = match parse_notifications(body, format, max) {
        Ok(notifications) => notifications,
        Err(err) => {
            assert_eq!(err.status.as_u16(), 400);
            assert!(matches!(
                err.code,
                "malformed_body" | "invalid_notification" | "too_many_notifications"
            ));
            return;
        }
    };
    assert!((1..=max).contains(&notifications.len()));
    for n in &notifications {
        assert!(!n.mailbox.trim().is_empty() && n.mailbox.len() <= MAX_MAILBOX_LEN);
    }
    if format == BodyFormat::Json {
        let value: Value = serde_json::from_slice(body).expect("accepted bodies are JSON");
        let items = value["notifications"].as_array().expect("an array");
        assert_eq!(items.len(), notifications.len());
        for (item, n) in items.iter().zip(&notifications) {
            assert_eq!(item["mailbox"].as_str(), Some(n.mailbox.as_str()));
            assert_eq!(
                item["unreadCount"].as_u64(),
                Some(u64::from(n.unread_count))
            );
            assert_eq!(item["sequence"].as_u64(), Some(n.sequence));
        }
    }
    let bearer = Bearer {
        token: "aGVhZGVy.Y2xhaW1z.c2ln".to_owned(),
        tenant: "fabrikam.com".to_owned(),
    };
    let mut ids = 0u32;
    let records = mailbox_changes(&bearer, notifications.clone(), NOW_MS, || {
        ids += 1;
        format!("e{ids}")
    });
    assert_eq!(records.len(), notifications.len());
    for ((key, value), n) in records.iter().zip(&notifications) {
        assert_eq!(*key, mailbox_key(&bearer.tenant, &n.mailbox));
        let change = MailboxChange::decode(value.as_slice()).expect("decodes");
        assert_eq!(change.mailbox, n.mailbox);
        assert_eq!(
            (change.unread_count, change.sequence, change.source_time_ms),
            (n.unread_count, n.sequence, n.source_time_ms)
        );
        assert_eq!(change.token, bearer.token);
        assert_eq!(change.ingress_time_ms, NOW_MS);
        let raw = record(
            "pushrelay.mailbox-changes",
            0,
            0,
            Some(key.as_bytes()),
            Some(value),
        );
        if let Err(invalid) = decode_change(&raw) {
            panic!("the ingress wrote a record auth-coalesce refuses: {invalid:?}");
        }
    }
});
