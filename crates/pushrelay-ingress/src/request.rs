//! The pure part of the ingress: content negotiation, body and token checks, record
//! building. Syntax only: tokens are validated by the auth-coalesce stage.

use pushrelay_auth::{UnverifiedToken, valid_tenant_id};
use pushrelay_proto::Message;
use pushrelay_proto::v1::{
    Environment, MailboxChange, NotificationBatch, Platform, SubscriptionAction, SubscriptionChange,
};
use serde_json::Value;

use crate::ApiError;

use pushrelay_proto::checks::{DEVICE_TOKEN_RULE, valid_device_token};
pub use pushrelay_proto::checks::{MAX_DEVICE_TOKEN_LEN, MAX_MAILBOX_LEN};

/// How a body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// `application/json` (the default when no content type is sent).
    Json,
    /// `application/x-protobuf` (`pushrelay.v1.NotificationBatch`).
    Protobuf,
}

/// The body format of a `Content-Type` header.
pub fn body_format(content_type: Option<&str>) -> Result<BodyFormat, ApiError> {
    let Some(value) = content_type else {
        return Ok(BodyFormat::Json);
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" | "" => Ok(BodyFormat::Json),
        "application/x-protobuf" | "application/protobuf" | "application/vnd.google.protobuf" => {
            Ok(BodyFormat::Protobuf)
        }
        _ => Err(ApiError::unsupported_media_type(value)),
    }
}

/// A bearer token that is structurally a JWT naming a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bearer {
    /// The compact token.
    pub token: String,
    /// Its (unverified) `tid`.
    pub tenant: String,
}

/// Reads `Authorization: Bearer <jwt>`: three base64url JSON parts, at most 16 KiB, with a
/// `tid` claim. The signature is checked later, by the auth-coalesce stage.
pub fn bearer(authorization: Option<&str>) -> Result<Bearer, ApiError> {
    let Some(value) = authorization else {
        return Err(ApiError::unauthorized(
            "missing_token",
            "send the tenant's S2S token as `Authorization: Bearer <token>`",
        ));
    };
    let token = match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => {
            return Err(ApiError::unauthorized(
                "missing_token",
                "the Authorization header must use the Bearer scheme",
            ));
        }
    };
    let parsed = UnverifiedToken::parse(token).map_err(|rejection| {
        ApiError::unauthorized("invalid_token", rejection.reason.to_string())
    })?;
    let tenant = parsed.tenant().ok_or_else(|| {
        ApiError::unauthorized("invalid_token", "the token has no tid (tenant) claim")
    })?;
    if !valid_tenant_id(tenant) {
        return Err(ApiError::unauthorized(
            "invalid_token",
            "the tid claim is not a lower-case domain",
        ));
    }
    Ok(Bearer {
        tenant: tenant.to_owned(),
        token: token.to_owned(),
    })
}

/// One notification of a request, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// Mailbox address.
    pub mailbox: String,
    /// Absolute unread count.
    pub unread_count: u32,
    /// Per-mailbox version.
    pub sequence: u64,
    /// Source time, Unix milliseconds (0 when not sent).
    pub source_time_ms: i64,
}

/// Parses and checks a notifications body: at most `max` notifications, non-empty
/// mailboxes, counts ≥ 0, a sequence in every one.
pub fn parse_notifications(
    body: &[u8],
    format: BodyFormat,
    max: usize,
) -> Result<Vec<Notification>, ApiError> {
    let notifications = match format {
        BodyFormat::Json => parse_json_notifications(body)?,
        BodyFormat::Protobuf => parse_protobuf_notifications(body)?,
    };
    if notifications.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_notification",
            "notifications is empty: send at least one",
        ));
    }
    if notifications.len() > max {
        return Err(ApiError::bad_request(
            "too_many_notifications",
            format!(
                "{} notifications in one request; at most {max} are accepted",
                notifications.len()
            ),
        ));
    }
    for (i, n) in notifications.iter().enumerate() {
        check_mailbox(
            &n.mailbox,
            &format!("notifications[{i}].mailbox"),
            "invalid_notification",
        )?;
    }
    Ok(notifications)
}

/// `code` is the error code of the request kind (`invalid_notification`,
/// `invalid_subscription`).
fn check_mailbox(mailbox: &str, field: &str, code: &'static str) -> Result<(), ApiError> {
    if mailbox.trim().is_empty() {
        return Err(ApiError::bad_request(code, format!("{field} is empty")));
    }
    if mailbox.len() > MAX_MAILBOX_LEN {
        return Err(ApiError::bad_request(
            code,
            format!("{field} is longer than {MAX_MAILBOX_LEN} bytes"),
        ));
    }
    Ok(())
}

fn parse_json_notifications(body: &[u8]) -> Result<Vec<Notification>, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|err| {
        ApiError::bad_request("malformed_body", format!("the body is not JSON: {err}"))
    })?;
    let Some(items) = value.get("notifications").and_then(Value::as_array) else {
        return Err(ApiError::bad_request(
            "malformed_body",
            r#"expected {"notifications":[{"mailbox":...,"unreadCount":...,"sequence":...}]}"#,
        ));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let field = |name: &str| format!("notifications[{i}].{name}");
            let mailbox = item.get("mailbox").and_then(Value::as_str).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_notification",
                    format!("{} must be a string", field("mailbox")),
                )
            })?;
            let unread_count = item
                .get("unreadCount")
                .and_then(Value::as_u64)
                .and_then(|c| u32::try_from(c).ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_notification",
                        format!(
                            "{} must be an integer from 0 to {}",
                            field("unreadCount"),
                            u32::MAX
                        ),
                    )
                })?;
            let sequence = item
                .get("sequence")
                .and_then(Value::as_u64)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_notification",
                        format!(
                            "{} must be a non-negative integer (the mailbox's version)",
                            field("sequence")
                        ),
                    )
                })?;
            let source_time_ms = match item.get("sourceTime") {
                None | Some(Value::Null) => 0,
                Some(v) => v.as_i64().ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_notification",
                        format!("{} must be Unix milliseconds", field("sourceTime")),
                    )
                })?,
            };
            Ok(Notification {
                mailbox: mailbox.to_owned(),
                unread_count,
                sequence,
                source_time_ms,
            })
        })
        .collect()
}

fn parse_protobuf_notifications(body: &[u8]) -> Result<Vec<Notification>, ApiError> {
    let batch = NotificationBatch::decode(body).map_err(|err| {
        ApiError::bad_request(
            "malformed_body",
            format!("the body is not a pushrelay.v1.NotificationBatch: {err}"),
        )
    })?;
    batch
        .notifications
        .into_iter()
        .enumerate()
        .map(|(i, n)| {
            let sequence = n.sequence.ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_notification",
                    format!("notifications[{i}].sequence is missing"),
                )
            })?;
            Ok(Notification {
                mailbox: n.mailbox,
                unread_count: n.unread_count,
                sequence,
                source_time_ms: n.source_time_ms,
            })
        })
        .collect()
}

pub use pushrelay_proto::keys::mailbox_key;

/// The `MailboxChange` records of a request, with their keys.
pub fn mailbox_changes(
    bearer: &Bearer,
    notifications: Vec<Notification>,
    ingress_time_ms: i64,
    mut event_id: impl FnMut() -> String,
) -> Vec<(String, Vec<u8>)> {
    notifications
        .into_iter()
        .map(|n| {
            let key = mailbox_key(&bearer.tenant, &n.mailbox);
            let record = MailboxChange {
                event_id: event_id(),
                mailbox: n.mailbox,
                unread_count: n.unread_count,
                sequence: n.sequence,
                source_time_ms: n.source_time_ms,
                ingress_time_ms,
                token: bearer.token.clone(),
            };
            (key, record.encode_to_vec())
        })
        .collect()
}

/// Parses and checks a subscriptions body into the record to write (without event id,
/// time and token, which the caller sets).
pub fn parse_subscription(
    body: &[u8],
    action: SubscriptionAction,
) -> Result<SubscriptionChange, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|err| {
        ApiError::bad_request("malformed_body", format!("the body is not JSON: {err}"))
    })?;
    let text = |name: &str| value.get(name).and_then(Value::as_str).map(str::trim);
    let mailbox = text("mailbox")
        .ok_or_else(|| ApiError::bad_request("invalid_subscription", "mailbox must be a string"))?;
    check_mailbox(mailbox, "mailbox", "invalid_subscription")?;
    let platform = match text("platform") {
        Some("apns") => Platform::Apns,
        Some("fcm") => Platform::Fcm,
        Some("probe") => Platform::Probe,
        _ => {
            return Err(ApiError::bad_request(
                "invalid_subscription",
                r#"platform must be "apns" or "fcm""#,
            ));
        }
    };
    let device_token = text("deviceToken").unwrap_or_default();
    if !valid_device_token(device_token) {
        return Err(ApiError::bad_request(
            "invalid_subscription",
            format!("deviceToken must be {DEVICE_TOKEN_RULE}"),
        ));
    }
    let app_id = text("appId").unwrap_or_default();
    if app_id.is_empty() && platform != Platform::Probe && action == SubscriptionAction::Subscribe {
        return Err(ApiError::bad_request(
            "invalid_subscription",
            "appId must name the APNs topic (bundle id) or the FCM project",
        ));
    }
    let environment = match text("environment") {
        None | Some("production") => Environment::Production,
        Some("sandbox") => Environment::Sandbox,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_subscription",
                r#"environment must be "production" or "sandbox""#,
            ));
        }
    };
    Ok(SubscriptionChange {
        event_id: String::new(),
        action: action as i32,
        mailbox: mailbox.to_owned(),
        platform: platform as i32,
        device_token: device_token.to_owned(),
        app_id: app_id.to_owned(),
        environment: environment as i32,
        expires_time_ms: 0,
        ingress_time_ms: 0,
        token: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(claims: &str) -> String {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.c2ln", b64(r#"{"alg":"RS256"}"#), b64(claims))
    }

    #[test]
    fn bearer_needs_a_structural_jwt_with_a_tenant() {
        assert_eq!(bearer(None).map_err(|e| e.code), Err("missing_token"));
        assert_eq!(
            bearer(Some("Basic abc")).map_err(|e| e.code),
            Err("missing_token")
        );
        assert_eq!(
            bearer(Some("Bearer abc")).map_err(|e| e.code),
            Err("invalid_token")
        );
        let no_tid = token(r#"{"iss":"x"}"#);
        assert_eq!(
            bearer(Some(&format!("Bearer {no_tid}"))).map_err(|e| e.code),
            Err("invalid_token")
        );
        let ok = token(r#"{"tid":"fabrikam.com"}"#);
        assert_eq!(
            bearer(Some(&format!("bearer {ok}"))).map(|b| b.tenant),
            Ok("fabrikam.com".into())
        );
        let huge = token(&format!(
            r#"{{"tid":"fabrikam.com","x":"{}"}}"#,
            "a".repeat(20_000)
        ));
        assert_eq!(
            bearer(Some(&format!("Bearer {huge}"))).map_err(|e| e.code),
            Err("invalid_token")
        );
    }

    #[test]
    fn json_notifications_are_checked_field_by_field() {
        let ok = br#"{"notifications":[{"mailbox":"a@x","unreadCount":3,"sequence":17}]}"#;
        let parsed = parse_notifications(ok, BodyFormat::Json, 10).expect("valid");
        assert_eq!(parsed[0].sequence, 17);
        for (body, needle) in [
            (&br#"not json"#[..], "not JSON"),
            (br#"{"items":[]}"#, "expected"),
            (br#"{"notifications":[]}"#, "empty"),
            (
                br#"{"notifications":[{"mailbox":"","unreadCount":1,"sequence":1}]}"#,
                "mailbox is empty",
            ),
            (
                br#"{"notifications":[{"mailbox":"a","unreadCount":-1,"sequence":1}]}"#,
                "unreadCount",
            ),
            (
                br#"{"notifications":[{"mailbox":"a","unreadCount":1}]}"#,
                "sequence",
            ),
            (
                br#"{"notifications":[{"mailbox":"a","unreadCount":"1","sequence":1}]}"#,
                "unreadCount",
            ),
        ] {
            let err = parse_notifications(body, BodyFormat::Json, 10).expect_err("refused");
            assert_eq!(err.status.as_u16(), 400);
            assert!(
                err.message.contains(needle),
                "{}: {}",
                String::from_utf8_lossy(body),
                err.message
            );
        }
    }

    #[test]
    fn at_most_max_notifications() {
        let items: Vec<String> = (0..3)
            .map(|i| format!(r#"{{"mailbox":"m{i}","unreadCount":1,"sequence":1}}"#))
            .collect();
        let body = format!(r#"{{"notifications":[{}]}}"#, items.join(","));
        let err = parse_notifications(body.as_bytes(), BodyFormat::Json, 2).expect_err("too many");
        assert_eq!(err.code, "too_many_notifications");
    }

    #[test]
    fn protobuf_notifications_need_a_sequence() {
        let mut batch = NotificationBatch {
            notifications: vec![pushrelay_proto::v1::Notification {
                mailbox: "a@x".into(),
                unread_count: 2,
                sequence: Some(5),
                source_time_ms: 0,
            }],
        };
        let parsed =
            parse_notifications(&batch.encode_to_vec(), BodyFormat::Protobuf, 10).expect("valid");
        assert_eq!(parsed[0].unread_count, 2);
        batch.notifications[0].sequence = None;
        let err = parse_notifications(&batch.encode_to_vec(), BodyFormat::Protobuf, 10)
            .expect_err("no sequence");
        assert!(err.message.contains("sequence"));
        let err =
            parse_notifications(&[0xff, 0xff], BodyFormat::Protobuf, 10).expect_err("garbage");
        assert_eq!(err.code, "malformed_body");
    }

    #[test]
    fn content_types() {
        assert_eq!(body_format(None), Ok(BodyFormat::Json));
        assert_eq!(
            body_format(Some("application/json; charset=utf-8")),
            Ok(BodyFormat::Json)
        );
        assert_eq!(
            body_format(Some("application/x-protobuf")),
            Ok(BodyFormat::Protobuf)
        );
        assert_eq!(
            body_format(Some("text/plain")).map_err(|e| e.status.as_u16()),
            Err(415)
        );
    }

    #[test]
    fn subscriptions_are_checked() {
        let ok = br#"{"mailbox":"a@x","platform":"apns","deviceToken":"abcd","appId":"com.example.mail"}"#;
        let sub = parse_subscription(ok, SubscriptionAction::Subscribe).expect("valid");
        assert_eq!(sub.platform, Platform::Apns as i32);
        assert_eq!(sub.environment, Environment::Production as i32);
        for body in [
            &br#"{"mailbox":"a@x","platform":"sms","deviceToken":"abcd","appId":"x"}"#[..],
            br#"{"mailbox":"","platform":"fcm","deviceToken":"abcd","appId":"x"}"#,
            br#"{"mailbox":"a@x","platform":"fcm","deviceToken":"","appId":"x"}"#,
            br#"{"mailbox":"a@x","platform":"fcm","deviceToken":"abcd"}"#,
            br#"[]"#,
        ] {
            let err = parse_subscription(body, SubscriptionAction::Subscribe).expect_err("refused");
            assert_eq!(
                err.status.as_u16(),
                400,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    /// Found by the `ingress_subscriptions` fuzz target: a subscription with an empty or
    /// overlong mailbox was refused with the notifications' code.
    #[test]
    fn a_subscription_mailbox_error_has_the_subscription_code() {
        let long = format!(r#"{{"mailbox":"{}"}}"#, "a".repeat(MAX_MAILBOX_LEN + 1));
        for body in [&br#"{"mailbox":" "}"#[..], long.as_bytes()] {
            for action in [
                SubscriptionAction::Subscribe,
                SubscriptionAction::Unsubscribe,
            ] {
                let err = parse_subscription(body, action).expect_err("refused");
                assert_eq!(err.code, "invalid_subscription");
            }
        }
    }

    /// A `/` in a device token would split its subscription key in the wrong place: the
    /// fan-out stage would file the device under another mailbox and never remove it.
    #[test]
    fn device_tokens_with_a_slash_or_space_are_refused() {
        for token in ["ab/cd", "ab cd", "../x"] {
            let body = format!(
                r#"{{"mailbox":"a@fabrikam.com","platform":"apns","deviceToken":"{token}","appId":"com.example.mail"}}"#
            );
            let err = parse_subscription(body.as_bytes(), SubscriptionAction::Subscribe)
                .expect_err("refused");
            assert_eq!(err.code, "invalid_subscription", "{token}");
        }
        let body = br#"{"mailbox":"a@fabrikam.com","platform":"fcm","deviceToken":"cX1_b-Q:APA91bH","appId":"p"}"#;
        assert!(parse_subscription(body, SubscriptionAction::Subscribe).is_ok());
    }

    #[test]
    fn records_carry_the_tenant_in_the_key_and_the_token() {
        let bearer = Bearer {
            token: "t.o.k".into(),
            tenant: "fabrikam.com".into(),
        };
        let n = Notification {
            mailbox: "a@x".into(),
            unread_count: 1,
            sequence: 2,
            source_time_ms: 0,
        };
        let records = mailbox_changes(&bearer, vec![n], 99, || "e1".into());
        assert_eq!(records[0].0, "fabrikam.com/a@x");
        let change = MailboxChange::decode(records[0].1.as_slice()).expect("decodes");
        assert_eq!(
            (change.token.as_str(), change.ingress_time_ms),
            ("t.o.k", 99)
        );
    }
}
