use std::time::{SystemTime, UNIX_EPOCH};

use pushrelay_proto::v1::DeadLetter;

use crate::consumer::Record;

/// The current time, Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

/// The dead-letter record of an input `stage` cannot process.
///
/// `carries_tokens` says whether the input topic holds bearer tokens; then the original
/// value is not copied (only its size and SHA-256), so no token leaves its short-lived topic.
pub fn dead_letter(
    stage: &str,
    record: &Record,
    reason: &str,
    message: impl Into<String>,
    carries_tokens: bool,
) -> DeadLetter {
    let value = record.payload.as_deref().unwrap_or_default();
    DeadLetter {
        stage: stage.to_owned(),
        source_topic: record.topic.to_string(),
        source_partition: record.partition,
        source_offset: record.offset,
        reason: reason.to_owned(),
        message: message.into(),
        original_key: record.key.clone().unwrap_or_default(),
        original_value: if carries_tokens {
            Vec::new()
        } else {
            value.to_vec()
        },
        original_value_size: value.len() as u32,
        original_value_sha256: sha256(value),
        time_ms: now_ms(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn record(payload: &[u8]) -> Record {
        Record {
            topic: Arc::from("pushrelay.mailbox-changes"),
            partition: 3,
            offset: 42,
            key: Some(b"fabrikam.com/a@x".to_vec()),
            payload: Some(payload.to_vec()),
            timestamp_ms: None,
        }
    }

    #[test]
    fn token_topics_keep_no_value() {
        let dl = dead_letter(
            "auth-coalesce",
            &record(b"eyJ.secret.sig"),
            "undecodable",
            "x",
            true,
        );
        assert!(dl.original_value.is_empty());
        assert_eq!(dl.original_value_size, 14);
        assert_eq!(dl.original_value_sha256.len(), 32);
        assert_eq!((dl.source_partition, dl.source_offset), (3, 42));
        assert_eq!(dl.original_key, b"fabrikam.com/a@x");
    }

    #[test]
    fn other_topics_keep_the_value() {
        let dl = dead_letter("fanout", &record(b"\x01\x02"), "undecodable", "x", false);
        assert_eq!(dl.original_value, b"\x01\x02");
    }
}
