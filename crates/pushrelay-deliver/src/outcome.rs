//! Classification of provider answers (DESIGN.md, "Delivery semantics").

use std::time::Duration;

use serde_json::Value;

/// What to do after a provider answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted by the provider.
    Delivered,
    /// Try again later; `after` is the provider's `Retry-After`, if any.
    Retry {
        /// Provider status and reason, for receipts.
        reason: String,
        /// The provider's requested delay.
        after: Option<Duration>,
    },
    /// Never retry (bad token, payload too large, forbidden): the push is dropped.
    Final {
        /// Provider status and reason.
        reason: String,
    },
    /// The device is gone: drop the push and remove the subscription.
    Unregistered {
        /// Provider reason.
        reason: String,
    },
}

/// A provider's answer to one send: its HTTP status (0 when none arrived) and what it means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status; 0 when the provider could not be reached.
    pub status: u16,
    /// The classification.
    pub outcome: Outcome,
}

impl Answer {
    /// No answer arrived (connection refused, timeout, token exchange failed).
    pub fn unreachable(reason: String) -> Self {
        Self {
            status: 0,
            outcome: Outcome::Retry {
                reason,
                after: None,
            },
        }
    }
}

/// The `Retry-After` header as a delay (seconds form; an HTTP date is not used by APNs or FCM).
pub fn retry_after(header: Option<&str>) -> Option<Duration> {
    header
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// An APNs answer: status and the JSON body's `reason`.
pub fn apns(status: u16, body: &[u8], retry_after_header: Option<&str>) -> Outcome {
    let reason = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("reason").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_default();
    let described = format!("{status} {reason}").trim().to_owned();
    match status {
        200 => Outcome::Delivered,
        410 => Outcome::Unregistered { reason: described },
        // A provider-token problem is ours to fix by refreshing it, not the push's fault.
        403 if matches!(
            reason.as_str(),
            "ExpiredProviderToken" | "InvalidProviderToken"
        ) =>
        {
            Outcome::Retry {
                reason: described,
                after: None,
            }
        }
        400 if reason == "Unregistered" => Outcome::Unregistered { reason: described },
        400 | 403 | 404 | 405 | 413 => Outcome::Final { reason: described },
        429 | 500..=599 => Outcome::Retry {
            reason: described,
            after: retry_after(retry_after_header),
        },
        _ => Outcome::Final { reason: described },
    }
}

/// Least delay after an FCM 429 (FCM asks for at least a minute).
pub const FCM_MIN_QUOTA_DELAY: Duration = Duration::from_secs(60);

/// An FCM HTTP v1 answer: status and the JSON error body.
pub fn fcm(status: u16, body: &[u8], retry_after_header: Option<&str>) -> Outcome {
    let error = serde_json::from_slice::<Value>(body).ok();
    let status_text = error
        .as_ref()
        .and_then(|v| v.pointer("/error/status").and_then(Value::as_str))
        .unwrap_or_default()
        .to_owned();
    let error_code = error
        .as_ref()
        .and_then(|v| v.pointer("/error/details"))
        .and_then(Value::as_array)
        .and_then(|details| {
            details
                .iter()
                .find_map(|d| d.get("errorCode").and_then(Value::as_str))
        })
        .unwrap_or_default()
        .to_owned();
    let described = format!(
        "{status} {}",
        if error_code.is_empty() {
            &status_text
        } else {
            &error_code
        }
    )
    .trim()
    .to_owned();
    match status {
        200 => Outcome::Delivered,
        _ if error_code == "UNREGISTERED" || status_text == "NOT_FOUND" || status == 404 => {
            Outcome::Unregistered { reason: described }
        }
        429 => Outcome::Retry {
            reason: described,
            after: Some(
                retry_after(retry_after_header)
                    .unwrap_or(FCM_MIN_QUOTA_DELAY)
                    .max(FCM_MIN_QUOTA_DELAY),
            ),
        },
        // An expired access token: refresh it and retry.
        401 => Outcome::Retry {
            reason: described,
            after: None,
        },
        500..=599 => Outcome::Retry {
            reason: described,
            after: retry_after(retry_after_header),
        },
        _ => Outcome::Final { reason: described },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apns_answers() {
        assert_eq!(apns(200, b"", None), Outcome::Delivered);
        assert!(matches!(
            apns(410, br#"{"reason":"Unregistered"}"#, None),
            Outcome::Unregistered { .. }
        ));
        match apns(400, br#"{"reason":"BadDeviceToken"}"#, None) {
            Outcome::Final { reason } => assert_eq!(reason, "400 BadDeviceToken"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            apns(413, br#"{"reason":"PayloadTooLarge"}"#, None),
            Outcome::Final { .. }
        ));
        assert!(matches!(
            apns(403, br#"{"reason":"BadCertificate"}"#, None),
            Outcome::Final { .. }
        ));
        assert!(matches!(
            apns(403, br#"{"reason":"ExpiredProviderToken"}"#, None),
            Outcome::Retry { after: None, .. }
        ));
        assert_eq!(
            apns(429, br#"{"reason":"TooManyRequests"}"#, Some("7")),
            Outcome::Retry {
                reason: "429 TooManyRequests".into(),
                after: Some(Duration::from_secs(7))
            }
        );
        assert!(matches!(
            apns(503, b"", None),
            Outcome::Retry { after: None, .. }
        ));
    }

    #[test]
    fn fcm_answers() {
        assert_eq!(
            fcm(200, br#"{"name":"projects/p/messages/1"}"#, None),
            Outcome::Delivered
        );
        let unregistered = br#"{"error":{"code":404,"status":"NOT_FOUND","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}"#;
        assert!(matches!(
            fcm(404, unregistered, None),
            Outcome::Unregistered { .. }
        ));
        let invalid = br#"{"error":{"code":400,"status":"INVALID_ARGUMENT","details":[{"errorCode":"INVALID_ARGUMENT"}]}}"#;
        assert_eq!(
            fcm(400, invalid, None),
            Outcome::Final {
                reason: "400 INVALID_ARGUMENT".into()
            }
        );
        // 429: at least a minute, even when Retry-After says less.
        assert!(
            matches!(fcm(429, b"{}", Some("5")), Outcome::Retry { after: Some(d), .. } if d == FCM_MIN_QUOTA_DELAY)
        );
        assert!(
            matches!(fcm(429, b"{}", Some("120")), Outcome::Retry { after: Some(d), .. } if d == Duration::from_secs(120))
        );
        assert!(
            matches!(fcm(503, b"", Some("3")), Outcome::Retry { after: Some(d), .. } if d == Duration::from_secs(3))
        );
        assert!(matches!(fcm(401, b"", None), Outcome::Retry { .. }));
    }
}
