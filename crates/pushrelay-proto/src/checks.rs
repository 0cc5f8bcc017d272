//! Limits and checks on decoded records that every stage applies before acting on one.
//!
//! A record that decodes is not yet a good record: random bytes often decode as a message
//! with empty or absurd fields. A stage checks what it consumes here and dead-letters what
//! fails (reason `invalid_record`, with this module's message), so a bad record is visible
//! to operators instead of silently doing nothing, or something wrong.

use crate::keys::{mailbox_key, platform_name, push_key, subscription_key};
use crate::v1::{PushRequest, Subscription, UnreadCount};

/// Longest mailbox address (the RFC 5321 path limit).
pub const MAX_MAILBOX_LEN: usize = 320;
/// Longest tenant id (a DNS name's limit).
pub const MAX_TENANT_LEN: usize = 253;
/// Longest device token.
pub const MAX_DEVICE_TOKEN_LEN: usize = 4096;
/// Longest app id (APNs topic, FCM project).
pub const MAX_APP_ID_LEN: usize = 256;
/// Largest push payload the relay sends. The providers' own limits are 4 KiB of payload;
/// an FCM body also carries the device token.
pub const MAX_PUSH_PAYLOAD_BYTES: usize = 16 * 1024;

fn check_mailbox(tenant: &str, mailbox: &str) -> Result<(), String> {
    if tenant.is_empty() || tenant.len() > MAX_TENANT_LEN {
        return Err(format!(
            "tenant is empty or longer than {MAX_TENANT_LEN} bytes"
        ));
    }
    if mailbox.is_empty() || mailbox.len() > MAX_MAILBOX_LEN {
        return Err(format!(
            "mailbox is empty or longer than {MAX_MAILBOX_LEN} bytes"
        ));
    }
    Ok(())
}

fn check_key(key: Option<&[u8]>, expected: &str) -> Result<(), String> {
    match key {
        Some(key) if key == expected.as_bytes() => Ok(()),
        Some(key) => Err(format!(
            "key {:?} is not {expected:?}, the key its fields give",
            String::from_utf8_lossy(&key[..key.len().min(200)])
        )),
        None => Err(format!("no key; expected {expected:?}")),
    }
}

/// Whether `token` is a device token the relay accepts: 1 to [`MAX_DEVICE_TOKEN_LEN`]
/// letters, digits and `-`, `_`, `.`, `:` (APNs tokens are hex; FCM registration tokens use
/// letters, digits, `-`, `_` and `:`). Never `/`, which separates the parts of a
/// subscription key: a token holding one would be filed under another key.
pub fn valid_device_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= MAX_DEVICE_TOKEN_LEN
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// What [`valid_device_token`] requires, for error messages.
pub const DEVICE_TOKEN_RULE: &str = "1 to 4096 letters, digits, '-', '_', '.' or ':'";

fn check_device(platform: i32, device_token: &str) -> Result<(), String> {
    if platform_name(platform).is_none() {
        return Err(format!("unknown platform {platform}"));
    }
    if !valid_device_token(device_token) {
        return Err(format!("the device token is not {DEVICE_TOKEN_RULE}"));
    }
    Ok(())
}

/// An `unread-counts` record: tenant and mailbox present and in bounds, keyed
/// `{tenant}/{mailbox}`.
pub fn check_unread_count(key: Option<&[u8]>, count: &UnreadCount) -> Result<(), String> {
    check_mailbox(&count.tenant, &count.mailbox)?;
    check_key(key, &mailbox_key(&count.tenant, &count.mailbox))
}

/// A `subscriptions` record: mailbox, device and app in bounds, keyed
/// `{tenant}/{mailbox}/{platform}/{device}`.
pub fn check_subscription(key: Option<&[u8]>, subscription: &Subscription) -> Result<(), String> {
    check_mailbox(&subscription.tenant, &subscription.mailbox)?;
    check_device(subscription.platform, &subscription.device_token)?;
    if subscription.app_id.len() > MAX_APP_ID_LEN {
        return Err(format!("app id longer than {MAX_APP_ID_LEN} bytes"));
    }
    let mailbox = mailbox_key(&subscription.tenant, &subscription.mailbox);
    check_key(
        key,
        &subscription_key(&mailbox, subscription.platform, &subscription.device_token),
    )
}

/// A `push-requests` record: mailbox, device and payload in bounds, keyed
/// `{platform}/{device}`.
pub fn check_push_request(key: Option<&[u8]>, push: &PushRequest) -> Result<(), String> {
    check_mailbox(&push.tenant, &push.mailbox)?;
    check_device(push.platform, &push.device_token)?;
    if push.app_id.len() > MAX_APP_ID_LEN {
        return Err(format!("app id longer than {MAX_APP_ID_LEN} bytes"));
    }
    if push.payload.len() > MAX_PUSH_PAYLOAD_BYTES {
        return Err(format!(
            "payload of {} bytes, at most {MAX_PUSH_PAYLOAD_BYTES}",
            push.payload.len()
        ));
    }
    check_key(key, &push_key(push.platform, &push.device_token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::Platform;

    fn count() -> UnreadCount {
        UnreadCount {
            tenant: "fabrikam.com".into(),
            mailbox: "alice@fabrikam.com".into(),
            count: 3,
            sequence: 7,
            ..UnreadCount::default()
        }
    }

    #[test]
    fn a_well_formed_count_passes_and_a_wrong_key_or_empty_field_does_not() {
        let c = count();
        assert_eq!(
            check_unread_count(Some(b"fabrikam.com/alice@fabrikam.com"), &c),
            Ok(())
        );
        assert!(check_unread_count(Some(b"contoso.com/alice@fabrikam.com"), &c).is_err());
        assert!(check_unread_count(None, &c).is_err());
        let empty = UnreadCount::default();
        assert!(check_unread_count(Some(b"/"), &empty).is_err());
        let long = UnreadCount {
            mailbox: "a".repeat(MAX_MAILBOX_LEN + 1),
            ..count()
        };
        let key = mailbox_key(&long.tenant, &long.mailbox);
        assert!(check_unread_count(Some(key.as_bytes()), &long).is_err());
    }

    #[test]
    fn subscriptions_need_a_known_platform_a_device_and_their_own_key() {
        let s = Subscription {
            tenant: "fabrikam.com".into(),
            mailbox: "alice@fabrikam.com".into(),
            platform: Platform::Apns as i32,
            device_token: "ab12".into(),
            app_id: "com.example.mail".into(),
            ..Subscription::default()
        };
        let key = b"fabrikam.com/alice@fabrikam.com/apns/ab12";
        assert_eq!(check_subscription(Some(key), &s), Ok(()));
        assert!(
            check_subscription(Some(b"fabrikam.com/alice@fabrikam.com/apns/ffff"), &s).is_err()
        );
        let unknown = Subscription {
            platform: 99,
            ..s.clone()
        };
        assert!(check_subscription(Some(key), &unknown).is_err());
        let no_device = Subscription {
            device_token: String::new(),
            ..s
        };
        assert!(
            check_subscription(Some(b"fabrikam.com/alice@fabrikam.com/apns/"), &no_device).is_err()
        );
    }

    #[test]
    fn device_tokens_are_hex_or_fcm_like_and_never_hold_a_slash() {
        assert!(valid_device_token(&"ab12".repeat(16)));
        assert!(valid_device_token("cX1_b-Q:APA91bH.x"));
        for bad in ["", "a/b", "a b", "a\nb", "é", "a%2Fb"] {
            assert!(!valid_device_token(bad), "{bad:?}");
        }
        assert!(!valid_device_token(&"a".repeat(MAX_DEVICE_TOKEN_LEN + 1)));
        assert!(DEVICE_TOKEN_RULE.contains(&MAX_DEVICE_TOKEN_LEN.to_string()));
    }

    #[test]
    fn pushes_with_an_oversized_payload_are_refused() {
        let p = PushRequest {
            tenant: "fabrikam.com".into(),
            mailbox: "alice@fabrikam.com".into(),
            platform: Platform::Apns as i32,
            device_token: "ab12".into(),
            payload: b"{}".to_vec(),
            ..PushRequest::default()
        };
        assert_eq!(check_push_request(Some(b"apns/ab12"), &p), Ok(()));
        assert!(check_push_request(Some(b"fcm/ab12"), &p).is_err());
        let big = PushRequest {
            payload: vec![b' '; MAX_PUSH_PAYLOAD_BYTES + 1],
            ..p
        };
        assert!(check_push_request(Some(b"apns/ab12"), &big).is_err());
    }
}
