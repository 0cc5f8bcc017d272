//! The platform payloads of a push, decided here so delivery only sends. Pure.

use std::time::Duration;

use pushrelay_proto::v1::{Platform, PushRequest, UnreadCount};
use serde_json::json;

use crate::table::Device;

/// How pushes are shaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushConfig {
    /// How long a provider may hold a push before dropping it.
    pub ttl: Duration,
    /// APNs priority (5: conserve power; badge updates need no immediacy).
    pub apns_priority: u32,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(3600),
            apns_priority: 5,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

fn sha256(data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

/// The collapse id of a mailbox: newer badges replace older ones on the device. A hash,
/// so the mailbox address does not travel to the provider (32 hex characters, under
/// APNs's 64-byte limit).
pub fn collapse_id(tenant: &str, mailbox: &str) -> String {
    hex(&sha256(format!("{tenant}/{mailbox}").as_bytes())[..16])
}

/// The Kafka key of a push: `{platform}/{device}`.
pub fn push_key(device: &Device) -> String {
    pushrelay_proto::keys::push_key(i32::from(device.platform), &device.device_token.text())
}

/// One push request for `device` carrying `count`. The push id is derived from the count
/// and the device, so a replay produces the same id.
pub fn push_request(
    count: &UnreadCount,
    device: &Device,
    config: &PushConfig,
    now_ms: i64,
) -> PushRequest {
    let collapse = collapse_id(&count.tenant, &count.mailbox);
    let expires = now_ms.saturating_add(config.ttl.as_millis() as i64);
    let platform = Platform::try_from(i32::from(device.platform)).unwrap_or(Platform::Unspecified);
    let (payload, push_type, priority) = match platform {
        Platform::Apns => (
            json!({"aps": {"badge": count.count}})
                .to_string()
                .into_bytes(),
            "alert",
            config.apns_priority,
        ),
        Platform::Fcm => (
            json!({"message": {
                "token": device.device_token.text(),
                "data": {"unreadCount": count.count.to_string()},
                "android": {
                    "collapse_key": collapse,
                    "priority": "normal",
                    "ttl": format!("{}s", config.ttl.as_secs()),
                },
            }})
            .to_string()
            .into_bytes(),
            "",
            config.apns_priority,
        ),
        _ => (Vec::new(), "", 0),
    };
    let push_id = hex(&sha256(
        format!(
            "{}/{}/{}/{}/{}",
            count.tenant, count.mailbox, count.sequence, device.platform, device.device_token
        )
        .as_bytes(),
    )[..16]);
    PushRequest {
        push_id,
        tenant: count.tenant.clone(),
        mailbox: count.mailbox.clone(),
        platform: i32::from(device.platform),
        device_token: device.device_token.text().into_owned(),
        app_id: device.app_id.to_string(),
        environment: i32::from(device.environment),
        badge: count.count,
        collapse_id: collapse,
        expires_time_ms: expires,
        priority,
        payload,
        push_type: push_type.to_owned(),
        ingress_time_ms: count.last_ingress_time_ms,
        sequence: count.sequence,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn count() -> UnreadCount {
        UnreadCount {
            tenant: "fabrikam.com".into(),
            mailbox: "alice@fabrikam.com".into(),
            count: 7,
            sequence: 42,
            changes_coalesced: 1,
            first_ingress_time_ms: 10,
            last_ingress_time_ms: 20,
            emitted_time_ms: 30,
            last_event_id: "e".into(),
        }
    }

    fn device(platform: Platform) -> Device {
        Device {
            platform: platform as u8,
            device_token: crate::table::DeviceToken::new("d1"),
            app_id: "com.example.mail".into(),
            environment: 1,
            created_s: 0,
            expires_s: u32::MAX,
        }
    }

    #[test]
    fn apns_badge_payload_and_headers() {
        let push = push_request(
            &count(),
            &device(Platform::Apns),
            &PushConfig::default(),
            1_000,
        );
        let payload: Value = serde_json::from_slice(&push.payload).expect("json");
        assert_eq!(payload, serde_json::json!({"aps": {"badge": 7}}));
        assert_eq!((push.push_type.as_str(), push.priority), ("alert", 5));
        assert_eq!(push.collapse_id.len(), 32);
        assert!(
            !push.collapse_id.contains("alice"),
            "the address does not leave the relay"
        );
        assert_eq!(push.expires_time_ms, 1_000 + 3_600_000);
        assert_eq!(
            (push.badge, push.sequence, push.ingress_time_ms),
            (7, 42, 20)
        );
        assert_eq!(push_key(&device(Platform::Apns)), "apns/d1");
    }

    #[test]
    fn fcm_payload_carries_the_count_and_a_collapse_key() {
        let push = push_request(&count(), &device(Platform::Fcm), &PushConfig::default(), 0);
        let payload: Value = serde_json::from_slice(&push.payload).expect("json");
        assert_eq!(payload["message"]["token"], "d1");
        assert_eq!(payload["message"]["data"]["unreadCount"], "7");
        assert_eq!(
            payload["message"]["android"]["collapse_key"],
            push.collapse_id.as_str()
        );
        assert_eq!(payload["message"]["android"]["ttl"], "3600s");
    }

    #[test]
    fn same_count_and_device_give_the_same_push_id() {
        let a = push_request(&count(), &device(Platform::Apns), &PushConfig::default(), 0);
        let b = push_request(
            &count(),
            &device(Platform::Apns),
            &PushConfig::default(),
            99,
        );
        assert_eq!(a.push_id, b.push_id);
        let mut newer = count();
        newer.sequence += 1;
        assert_ne!(
            a.push_id,
            push_request(&newer, &device(Platform::Apns), &PushConfig::default(), 0).push_id
        );
    }
}
