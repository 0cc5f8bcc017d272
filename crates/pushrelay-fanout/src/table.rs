//! The subscriptions of the partitions an instance is assigned, as a pure table.

use std::collections::HashMap;

use pushrelay_proto::keys::{platform_name, subscription_key};
use pushrelay_proto::v1::Subscription;

use std::sync::Arc;

/// One live subscribed device of a mailbox, as [`SubscriptionTable::devices`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Provider device token.
    pub device_token: DeviceToken,
    /// APNs topic or FCM project (shared: a tenant has few apps).
    pub app_id: Arc<str>,
    /// When subscribed, Unix seconds.
    pub created_s: u32,
    /// When it stops receiving pushes, Unix seconds (saturating at 2106).
    pub expires_s: u32,
    /// `pushrelay.v1.Platform`.
    pub platform: u8,
    /// `pushrelay.v1.Environment`.
    pub environment: u8,
}

/// A device as the table holds it: 56 bytes, the APNs token inline, the app as an index
/// into the table's interned app ids. A table holds millions of them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stored {
    device_token: DeviceToken,
    app: u32,
    created_s: u32,
    expires_s: u32,
    platform: u8,
    environment: u8,
}

impl Stored {
    /// Its key in the subscriptions topic: `{tenant}/{mailbox}/{platform}/{device}`.
    fn subscription_key(&self, mailbox_key: &str) -> String {
        subscription_key(
            mailbox_key,
            i32::from(self.platform),
            &self.device_token.text(),
        )
    }
}

/// Unix milliseconds as stored seconds (rounded down; past 2106, the largest value).
pub fn stored_seconds(ms: i64) -> u32 {
    u32::try_from(ms.max(0) / 1000).unwrap_or(u32::MAX)
}

/// A provider device token, stored compactly: a 64-character lower-case hex token (APNs's
/// form) inline as its 32 bytes; other lower-case hex tokens packed; anything else as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceToken {
    /// 64 lower-case hex characters.
    Hex32([u8; 32]),
    /// Another even-length lower-case hex token.
    Hex(Box<[u8]>),
    /// Anything else, verbatim.
    Text(Box<str>),
}

impl DeviceToken {
    /// Stores `token`.
    pub fn new(token: &str) -> Self {
        let bytes = token.as_bytes();
        let hex = !bytes.is_empty()
            && bytes.len().is_multiple_of(2)
            && bytes.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !hex {
            return Self::Text(Box::from(token));
        }
        let packed = bytes
            .chunks(2)
            .map(|pair| (nibble(pair[0]) << 4) | nibble(pair[1]));
        if bytes.len() == 64 {
            let mut inline = [0u8; 32];
            for (slot, byte) in inline.iter_mut().zip(packed) {
                *slot = byte;
            }
            Self::Hex32(inline)
        } else {
            Self::Hex(packed.collect())
        }
    }

    /// The token as the provider knows it.
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        let packed: &[u8] = match self {
            Self::Text(text) => return std::borrow::Cow::Borrowed(text),
            Self::Hex32(bytes) => bytes,
            Self::Hex(bytes) => bytes,
        };
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut text = String::with_capacity(packed.len() * 2);
        for byte in packed {
            text.push(char::from(DIGITS[usize::from(byte >> 4)]));
            text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
        }
        std::borrow::Cow::Owned(text)
    }

    /// Whether this is `token`.
    pub fn is(&self, token: &str) -> bool {
        *self == Self::new(token)
    }
}

impl std::fmt::Display for DeviceToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text())
    }
}

fn nibble(hex: u8) -> u8 {
    match hex {
        b'0'..=b'9' => hex - b'0',
        _ => hex - b'a' + 10,
    }
}

/// The parts of a subscription key `{tenant}/{mailbox}/{platform}/{device}` (device tokens
/// hold no `/`): the mailbox key, the platform name and the device token.
pub fn split_key(subscription_key: &str) -> Option<(&str, &str, &str)> {
    let mut parts = subscription_key.rsplitn(3, '/');
    let device = parts.next()?;
    let platform = parts.next()?;
    let mailbox = parts.next().filter(|mailbox| mailbox.contains('/'))?;
    Some((mailbox, platform, device))
}

/// The `{tenant}/{mailbox}` part of a subscription key.
pub fn mailbox_of(subscription_key: &str) -> Option<&str> {
    split_key(subscription_key).map(|(mailbox, _, _)| mailbox)
}

/// What applying a record changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Keys pushed out by the per-mailbox device limit (the caller tombstones them).
    pub evicted: Vec<String>,
}

/// Per assigned partition, per `{tenant}/{mailbox}`, the live devices.
#[derive(Debug)]
pub struct SubscriptionTable {
    partitions: HashMap<i32, HashMap<Box<str>, Vec<Stored>>>,
    /// Interned app ids; a device holds an index.
    apps: Vec<Arc<str>>,
    app_index: HashMap<Arc<str>, u32>,
    max_devices: usize,
    len: usize,
}

impl SubscriptionTable {
    /// An empty table keeping at most `max_devices` per mailbox.
    pub fn new(max_devices: usize) -> Self {
        Self {
            partitions: HashMap::new(),
            apps: Vec::new(),
            app_index: HashMap::new(),
            max_devices: max_devices.max(1),
            len: 0,
        }
    }

    /// Number of subscriptions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn app(&mut self, app_id: &str) -> u32 {
        if let Some(index) = self.app_index.get(app_id) {
            return *index;
        }
        let app: Arc<str> = Arc::from(app_id);
        let index = u32::try_from(self.apps.len()).unwrap_or(u32::MAX);
        self.apps.push(Arc::clone(&app));
        self.app_index.insert(app, index);
        index
    }

    /// Applies one record of the subscriptions topic: a value adds or replaces the
    /// device, a tombstone (`None`) removes it. Keys that do not parse are ignored.
    pub fn apply(&mut self, partition: i32, key: &str, value: Option<&Subscription>) -> Applied {
        let Some((mailbox, platform, token)) = split_key(key) else {
            return Applied::default();
        };
        let device = value.map(|sub| Stored {
            platform: u8::try_from(sub.platform).unwrap_or(0),
            environment: u8::try_from(sub.environment).unwrap_or(0),
            created_s: stored_seconds(sub.created_time_ms),
            expires_s: stored_seconds(sub.expires_time_ms),
            device_token: DeviceToken::new(token),
            app: self.app(&sub.app_id),
        });
        let max_devices = self.max_devices;
        let mailboxes = self.partitions.entry(partition).or_default();
        let devices = match mailboxes.get_mut(mailbox) {
            Some(devices) => devices,
            None => mailboxes.entry(Box::from(mailbox)).or_default(),
        };
        let before = devices.len();
        devices.retain(|d| {
            !(platform_name(i32::from(d.platform)).unwrap_or("unknown") == platform
                && d.device_token.is(token))
        });
        let mut applied = Applied::default();
        if let Some(device) = device {
            // Exactly one more slot: the usual growth to 4 would be shrunk right after.
            devices.reserve_exact(1);
            devices.push(device);
            if devices.len() > max_devices {
                // Keep the most recently subscribed devices.
                devices.sort_by_key(|d| std::cmp::Reverse(d.created_s));
                applied.evicted = devices
                    .split_off(max_devices)
                    .iter()
                    .map(|d| d.subscription_key(mailbox))
                    .collect();
            }
        }
        devices.shrink_to_fit();
        let after = devices.len();
        if devices.is_empty() {
            mailboxes.remove(mailbox);
        }
        self.len = self.len + after - before;
        applied
    }

    /// The live devices of a mailbox at `now_ms`; expired ones are removed and their keys
    /// returned (the caller tombstones them).
    pub fn devices(
        &mut self,
        partition: i32,
        mailbox: &str,
        now_ms: i64,
    ) -> (Vec<Device>, Vec<String>) {
        let Some(devices) = self
            .partitions
            .get_mut(&partition)
            .and_then(|mailboxes| mailboxes.get_mut(mailbox))
        else {
            return (Vec::new(), Vec::new());
        };
        let expired: Vec<String> = devices
            .iter()
            .filter(|d| i64::from(d.expires_s) * 1000 <= now_ms)
            .map(|d| d.subscription_key(mailbox))
            .collect();
        if !expired.is_empty() {
            devices.retain(|d| i64::from(d.expires_s) * 1000 > now_ms);
            devices.shrink_to_fit();
            self.len -= expired.len();
        }
        let apps = &self.apps;
        let live: Vec<Device> = devices
            .iter()
            .map(|d| Device {
                device_token: d.device_token.clone(),
                app_id: apps
                    .get(d.app as usize)
                    .cloned()
                    .unwrap_or_else(|| Arc::from("")),
                created_s: d.created_s,
                expires_s: d.expires_s,
                platform: d.platform,
                environment: d.environment,
            })
            .collect();
        if live.is_empty()
            && let Some(mailboxes) = self.partitions.get_mut(&partition)
        {
            mailboxes.remove(mailbox);
        }
        (live, expired)
    }

    /// Forgets a partition (revoked).
    pub fn drop_partition(&mut self, partition: i32) {
        if let Some(mailboxes) = self.partitions.remove(&partition) {
            self.len -= mailboxes.values().map(Vec::len).sum::<usize>();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Times in seconds (the table keeps seconds).
    fn sub(device: &str, created: i64, expires: i64) -> Subscription {
        Subscription {
            tenant: "fabrikam.com".into(),
            mailbox: "a@x".into(),
            platform: 1,
            device_token: device.into(),
            app_id: "com.example".into(),
            environment: 1,
            created_time_ms: created.saturating_mul(1000),
            expires_time_ms: expires.saturating_mul(1000),
        }
    }

    fn key(device: &str) -> String {
        format!("fabrikam.com/a@x/apns/{device}")
    }

    #[test]
    fn keys_name_their_mailbox() {
        assert_eq!(
            mailbox_of("fabrikam.com/a@x/apns/d1"),
            Some("fabrikam.com/a@x")
        );
        assert_eq!(
            mailbox_of("fabrikam.com/odd/name@x/fcm/d1"),
            Some("fabrikam.com/odd/name@x")
        );
        assert_eq!(mailbox_of("garbage"), None);
        assert_eq!(mailbox_of("a/b"), None);
    }

    #[test]
    fn device_tokens_round_trip_and_hex_ones_are_packed() {
        let apns = "0123456789abcdef".repeat(4);
        for token in [apns.as_str(), "ABCDEF", "fcm:APA91b-x_y", "abc", "", "0a"] {
            let stored = DeviceToken::new(token);
            assert_eq!(stored.text(), token);
            assert!(stored.is(token));
        }
        assert!(
            matches!(DeviceToken::new(&apns), DeviceToken::Hex32(_)),
            "APNs tokens inline"
        );
        assert!(matches!(DeviceToken::new("ab"), DeviceToken::Hex(_)));
        assert_eq!(std::mem::size_of::<Stored>(), 56);
        assert!(!DeviceToken::new("0a").is("0A"));
    }

    #[test]
    fn upsert_tombstone_and_expiry() {
        let mut t = SubscriptionTable::new(20);
        t.apply(0, &key("d1"), Some(&sub("d1", 1, 100)));
        t.apply(0, &key("d2"), Some(&sub("d2", 2, 1_000)));
        t.apply(0, &key("d2"), Some(&sub("d2", 2, 2_000)));
        assert_eq!(t.len(), 2, "a repeated subscription replaces");
        let (live, expired) = t.devices(0, "fabrikam.com/a@x", 500_000);
        assert_eq!(
            live.iter()
                .map(|d| d.device_token.text().into_owned())
                .collect::<Vec<_>>(),
            ["d2"]
        );
        assert_eq!(expired, [key("d1")]);
        assert_eq!(t.len(), 1);
        t.apply(0, &key("d2"), None);
        assert!(t.is_empty());
        assert_eq!(t.devices(0, "fabrikam.com/a@x", 500_000), (vec![], vec![]));
    }

    #[test]
    fn device_limit_keeps_the_newest() {
        let mut t = SubscriptionTable::new(2);
        t.apply(0, &key("old"), Some(&sub("old", 1, i64::MAX)));
        t.apply(0, &key("mid"), Some(&sub("mid", 2, i64::MAX)));
        let applied = t.apply(0, &key("new"), Some(&sub("new", 3, i64::MAX)));
        assert_eq!(applied.evicted, [key("old")]);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn partitions_are_dropped_whole() {
        let mut t = SubscriptionTable::new(20);
        t.apply(0, &key("d1"), Some(&sub("d1", 1, i64::MAX)));
        t.apply(1, "fabrikam.com/b@x/fcm/d2", Some(&sub("d2", 1, i64::MAX)));
        t.drop_partition(0);
        assert_eq!(t.len(), 1);
        assert!(t.devices(0, "fabrikam.com/a@x", 0).0.is_empty());
    }
}
