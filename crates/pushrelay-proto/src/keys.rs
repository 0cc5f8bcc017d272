//! The Kafka keys of the records. Keys decide partitions, so every stage builds them here.

use crate::v1::Platform;

/// The key of a mailbox's records: `{tenant}/{mailbox}` (changes, unread counts, receipts;
/// subscriptions are placed on its partition).
pub fn mailbox_key(tenant: &str, mailbox: &str) -> String {
    let mut key = String::with_capacity(tenant.len() + 1 + mailbox.len());
    key.push_str(tenant);
    key.push('/');
    key.push_str(mailbox);
    key
}

/// The lower-case name of a platform as keys spell it, or `None` for an unknown value.
pub fn platform_name(platform: i32) -> Option<&'static str> {
    match Platform::try_from(platform) {
        Ok(Platform::Apns) => Some("apns"),
        Ok(Platform::Fcm) => Some("fcm"),
        Ok(Platform::Probe) => Some("probe"),
        _ => None,
    }
}

/// The key of a subscription: `{tenant}/{mailbox}/{platform}/{device}` (compacted topic;
/// the record goes to the partition of [`mailbox_key`]).
pub fn subscription_key(mailbox_key: &str, platform: i32, device_token: &str) -> String {
    format!(
        "{mailbox_key}/{}/{device_token}",
        platform_name(platform).unwrap_or("unknown")
    )
}

/// The key of a push request: `{platform}/{device}`, so one device's pushes stay in order
/// on one partition.
pub fn push_key(platform: i32, device_token: &str) -> String {
    format!(
        "{}/{device_token}",
        platform_name(platform).unwrap_or("unknown")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_spelled_as_documented() {
        let mailbox = mailbox_key("fabrikam.com", "alice@fabrikam.com");
        assert_eq!(mailbox, "fabrikam.com/alice@fabrikam.com");
        assert_eq!(
            subscription_key(&mailbox, Platform::Apns as i32, "ab12"),
            "fabrikam.com/alice@fabrikam.com/apns/ab12"
        );
        assert_eq!(push_key(Platform::Fcm as i32, "tok"), "fcm/tok");
        assert_eq!(platform_name(99), None);
    }
}
