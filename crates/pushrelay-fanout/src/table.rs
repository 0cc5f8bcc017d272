//! The subscriptions of the partitions an instance is assigned, as a pure table.

use std::collections::HashMap;

use pushrelay_proto::keys::{platform_name, subscription_key};
use pushrelay_proto::v1::Subscription;

use std::collections::HashSet;
use std::sync::Arc;

/// One subscribed device of a mailbox. Kept small: a table holds millions of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// `pushrelay.v1.Platform`.
    pub platform: i32,
    /// `pushrelay.v1.Environment`.
    pub environment: i32,
    /// When subscribed, Unix milliseconds.
    pub created_ms: i64,
    /// When it stops receiving pushes, Unix milliseconds.
    pub expires_ms: i64,
    /// Provider device token.
    pub device_token: Box<str>,
    /// APNs topic or FCM project (shared: a tenant has few apps).
    pub app_id: Arc<str>,
}

impl Device {
    /// Its key in the subscriptions topic: `{tenant}/{mailbox}/{platform}/{device}`.
    pub fn subscription_key(&self, mailbox_key: &str) -> String {
        subscription_key(mailbox_key, self.platform, &self.device_token)
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
    partitions: HashMap<i32, HashMap<Box<str>, Vec<Device>>>,
    apps: HashSet<Arc<str>>,
    max_devices: usize,
    len: usize,
}

impl SubscriptionTable {
    /// An empty table keeping at most `max_devices` per mailbox.
    pub fn new(max_devices: usize) -> Self {
        Self {
            partitions: HashMap::new(),
            apps: HashSet::new(),
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

    fn app(&mut self, app_id: &str) -> Arc<str> {
        if let Some(app) = self.apps.get(app_id) {
            return Arc::clone(app);
        }
        let app: Arc<str> = Arc::from(app_id);
        self.apps.insert(Arc::clone(&app));
        app
    }

    /// Applies one record of the subscriptions topic: a value adds or replaces the
    /// device, a tombstone (`None`) removes it. Keys that do not parse are ignored.
    pub fn apply(&mut self, partition: i32, key: &str, value: Option<&Subscription>) -> Applied {
        let Some((mailbox, platform, token)) = split_key(key) else {
            return Applied::default();
        };
        let device = value.map(|sub| Device {
            platform: sub.platform,
            environment: sub.environment,
            created_ms: sub.created_time_ms,
            expires_ms: sub.expires_time_ms,
            device_token: Box::from(token),
            app_id: self.app(&sub.app_id),
        });
        let max_devices = self.max_devices;
        let mailboxes = self.partitions.entry(partition).or_default();
        let devices = match mailboxes.get_mut(mailbox) {
            Some(devices) => devices,
            None => mailboxes.entry(Box::from(mailbox)).or_default(),
        };
        let before = devices.len();
        devices.retain(|d| {
            !(platform_name(d.platform).unwrap_or("unknown") == platform
                && &*d.device_token == token)
        });
        let mut applied = Applied::default();
        if let Some(device) = device {
            devices.push(device);
            if devices.len() > max_devices {
                // Keep the most recently subscribed devices.
                devices.sort_by_key(|d| std::cmp::Reverse(d.created_ms));
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
            .filter(|d| d.expires_ms <= now_ms)
            .map(|d| d.subscription_key(mailbox))
            .collect();
        if !expired.is_empty() {
            devices.retain(|d| d.expires_ms > now_ms);
            devices.shrink_to_fit();
            self.len -= expired.len();
        }
        let live = devices.clone();
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

    fn sub(device: &str, created: i64, expires: i64) -> Subscription {
        Subscription {
            tenant: "fabrikam.com".into(),
            mailbox: "a@x".into(),
            platform: 1,
            device_token: device.into(),
            app_id: "com.example".into(),
            environment: 1,
            created_time_ms: created,
            expires_time_ms: expires,
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
    fn upsert_tombstone_and_expiry() {
        let mut t = SubscriptionTable::new(20);
        t.apply(0, &key("d1"), Some(&sub("d1", 1, 100)));
        t.apply(0, &key("d2"), Some(&sub("d2", 2, 1_000)));
        t.apply(0, &key("d2"), Some(&sub("d2", 2, 2_000)));
        assert_eq!(t.len(), 2, "a repeated subscription replaces");
        let (live, expired) = t.devices(0, "fabrikam.com/a@x", 500);
        assert_eq!(
            live.iter().map(|d| &*d.device_token).collect::<Vec<_>>(),
            ["d2"]
        );
        assert_eq!(expired, [key("d1")]);
        assert_eq!(t.len(), 1);
        t.apply(0, &key("d2"), None);
        assert!(t.is_empty());
        assert_eq!(t.devices(0, "fabrikam.com/a@x", 500), (vec![], vec![]));
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
