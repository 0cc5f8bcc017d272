//! `POST`/`DELETE /v1/subscriptions` JSON bodies through the ingress's `parse_subscription`,
//! then the record written, through the auth-coalesce stage's `decode_subscription_change`.
//!
//! Checks: refusals are 400 `malformed_body`/`invalid_subscription`; an accepted body gives
//! a change with a known platform and environment, a usable mailbox and device token (as
//! the JSON holds them, trimmed), an app id when subscribing to APNs or FCM; and the record
//! the ingress writes for it is accepted by the auth-coalesce stage.
//!
//! Input: a byte choosing subscribe (even) or unsubscribe (odd), then the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pushrelay_auth_coalesce::request::decode_subscription_change;
use pushrelay_fuzz::{Input, NOW_MS, record};
use pushrelay_ingress::request::{
    MAX_DEVICE_TOKEN_LEN, MAX_MAILBOX_LEN, mailbox_key, parse_subscription,
};
use pushrelay_proto::Message;
use pushrelay_proto::v1::{Environment, Platform, SubscriptionAction};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let action = if input.byte().is_multiple_of(2) {
        SubscriptionAction::Subscribe
    } else {
        SubscriptionAction::Unsubscribe
    };
    let body = input.rest();
    let mut change = match parse_subscription(body, action) {
        Ok(change) => change,
        Err(err) => {
            assert_eq!(err.status.as_u16(), 400);
            assert!(matches!(
                err.code,
                "malformed_body" | "invalid_subscription"
            ));
            return;
        }
    };
    let value: Value = serde_json::from_slice(body).expect("accepted bodies are JSON");
    let text = |name: &str| value[name].as_str().map(str::trim);
    assert_eq!(change.action, action as i32);
    assert_eq!(text("mailbox"), Some(change.mailbox.as_str()));
    assert!(!change.mailbox.is_empty() && change.mailbox.len() <= MAX_MAILBOX_LEN);
    assert_eq!(text("deviceToken"), Some(change.device_token.as_str()));
    assert!(!change.device_token.is_empty() && change.device_token.len() <= MAX_DEVICE_TOKEN_LEN);
    let platform = Platform::try_from(change.platform).expect("a known platform");
    assert_ne!(platform, Platform::Unspecified);
    assert!(matches!(
        Environment::try_from(change.environment),
        Ok(Environment::Production | Environment::Sandbox)
    ));
    if action == SubscriptionAction::Subscribe && platform != Platform::Probe {
        assert!(!change.app_id.is_empty());
    }

    // What the handler writes, as auth-coalesce reads it.
    change.event_id = "e1".to_owned();
    change.ingress_time_ms = NOW_MS;
    change.token = "aGVhZGVy.Y2xhaW1z.c2ln".to_owned();
    let key = mailbox_key("fabrikam.com", &change.mailbox);
    let raw = record(
        "pushrelay.subscription-changes",
        0,
        0,
        Some(key.as_bytes()),
        Some(&change.encode_to_vec()),
    );
    match decode_subscription_change(&raw) {
        Ok(decoded) => assert_eq!(decoded, change),
        Err(invalid) => panic!("the ingress wrote a record auth-coalesce refuses: {invalid:?}"),
    }
});
