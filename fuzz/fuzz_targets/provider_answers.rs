//! The answers of APNs and FCM (status, JSON body, `Retry-After`) as the delivery stage
//! reads them, and what the scheduler does with them; the FCM token endpoint's JSON answer.
//!
//! Checks: a classified answer leads to the verdict it names (200 delivered, final dropped,
//! unregistered); a retry either waits on a timer no earlier than `Retry-After` and is sent
//! again when it is due, or ends as expired or exhausted; an accepted token answer carries
//! the `access_token` it was given and is cached until a minute before it expires.
//!
//! Input: a flags byte (bit 0: FCM rather than APNs; bit 1: the push has an expiry; bit 2:
//! no `Retry-After` header), the status (`u16`), the `Retry-After` field, then the body.
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use pushrelay_deliver::fcm::{TokenCache, parse_token_response};
use pushrelay_deliver::outcome::{self, Answer, FCM_MIN_QUOTA_DELAY, Outcome};
use pushrelay_deliver::retry::RetryPolicy;
use pushrelay_deliver::scheduler::{Action, Job, Scheduler, Verdict};
use pushrelay_fuzz::{Input, NOW_MS};
use pushrelay_proto::v1::{Platform, PushRequest};
use serde_json::Value;
use tokio::time::Instant;

const NOW_SECS: i64 = NOW_MS / 1000;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.byte();
    let status = input.u16();
    let header = String::from_utf8_lossy(input.field()).into_owned();
    let retry_after = (flags & 4 == 0).then_some(header.as_str());
    let body = input.rest();

    token_response(body);

    let fcm = flags & 1 != 0;
    let outcome = if fcm {
        outcome::fcm(status, body, retry_after)
    } else {
        outcome::apns(status, body, retry_after)
    };
    if status == 200 {
        assert_eq!(outcome, Outcome::Delivered);
    }
    if let Outcome::Retry {
        after: Some(after), ..
    } = &outcome
    {
        if fcm && status == 429 {
            assert!(*after >= FCM_MIN_QUOTA_DELAY);
        } else {
            assert_eq!(Some(*after), outcome::retry_after(retry_after));
        }
    }
    schedule(Answer { status, outcome }, flags & 2 != 0);
});

fn token_response(body: &[u8]) {
    let Ok(token) = parse_token_response(body, NOW_SECS) else {
        return;
    };
    let value: Value = serde_json::from_slice(body).expect("accepted answers are JSON");
    assert_eq!(value["access_token"].as_str(), Some(token.token.as_str()));
    let mut cache = TokenCache::default();
    let (text, expires_at) = (token.token.clone(), token.expires_at);
    cache.put(token);
    let cached = cache.get(NOW_SECS);
    assert_eq!(cached.is_some(), NOW_SECS < expires_at.saturating_sub(60));
    assert!(cached.is_none_or(|t| t == text));
}

fn schedule(answer: Answer, expires: bool) {
    let push = PushRequest {
        push_id: "p1".into(),
        tenant: "fabrikam.com".into(),
        mailbox: "alice@fabrikam.com".into(),
        platform: Platform::Apns as i32,
        device_token: "ab".repeat(32),
        badge: 3,
        sequence: 1,
        expires_time_ms: if expires { NOW_MS + 3_600_000 } else { 0 },
        ..Default::default()
    };
    let job = Job {
        push: Arc::new(push),
        partition: 0,
        offsets: vec![0],
    };
    let mut scheduler = Scheduler::new(RetryPolicy::default(), 1);
    let mut actions = Vec::new();
    scheduler.submit(job, NOW_MS, &mut actions);
    let Some(Action::Send { key, id, .. }) = actions.pop() else {
        panic!("a fresh push is sent at once");
    };
    let expected = match &answer.outcome {
        Outcome::Delivered => Some(Verdict::Delivered),
        Outcome::Final { .. } => Some(Verdict::Dropped),
        Outcome::Unregistered { .. } => Some(Verdict::Unregistered),
        Outcome::Retry { .. } => None,
    };
    let floor = match &answer.outcome {
        Outcome::Retry { after, .. } => *after,
        _ => None,
    };
    let now = Instant::now();
    scheduler.answered(&key, id, answer, (now, NOW_MS), &mut actions);
    let verdicts: Vec<Verdict> = actions
        .iter()
        .filter_map(|action| match action {
            Action::Finish(finished) => Some(finished.verdict),
            Action::Send { .. } => None,
        })
        .collect();
    if let Some(expected) = expected {
        assert_eq!(verdicts, vec![expected]);
        assert_eq!(scheduler.pending(), 0);
        return;
    }
    match verdicts.as_slice() {
        [] => {
            let at = scheduler.next_timer().expect("a retry waits on a timer");
            if let Some(earliest) = now.checked_add(floor.unwrap_or(Duration::ZERO)) {
                assert!(at >= earliest, "a retry before Retry-After");
            }
            let waited = at.duration_since(now).as_millis();
            let due_ms = NOW_MS.saturating_add(i64::try_from(waited).unwrap_or(i64::MAX));
            actions.clear();
            scheduler.due(at, due_ms, &mut actions);
            assert!(
                matches!(actions.as_slice(), [Action::Send { .. }]),
                "a due retry is sent again: {actions:?}"
            );
        }
        [Verdict::Expired | Verdict::Exhausted] => assert_eq!(scheduler.pending(), 0),
        other => panic!("unexpected verdicts after a retry: {other:?}"),
    }
}
