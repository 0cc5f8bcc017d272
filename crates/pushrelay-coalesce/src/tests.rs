use super::*;
use std::time::Duration;
use tokio::time::{Instant as TokioInstant, advance};

const QUIET: Duration = Duration::from_millis(250);
const MAX_DELAY: Duration = Duration::from_secs(1);

fn coalescer() -> Coalescer {
    Coalescer::new(CoalesceConfig {
        quiet_period: QUIET,
        max_delay: MAX_DELAY,
        idle_ttl: Duration::from_secs(60),
        max_tracked: 1_000,
    })
}

fn change(mailbox: &str, offset: i64, count: u32, sequence: u64) -> Change {
    Change {
        tenant: "fabrikam.com".into(),
        mailbox: mailbox.into(),
        partition: 0,
        offset,
        count,
        sequence,
        ingress_time_ms: 1_000 + offset,
        event_id: format!("e{offset}"),
    }
}

/// The paused tokio clock, as the std instant the coalescer takes.
fn now() -> Instant {
    TokioInstant::now().into_std()
}

fn emissions(flushes: Vec<Flush>) -> Vec<Emission> {
    flushes
        .into_iter()
        .filter_map(|f| match f {
            Flush::Emit(e) => Some(e),
            Flush::Unchanged { .. } => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn burst_inside_quiet_period_gives_one_count_after_quiet_period() {
    let mut c = coalescer();
    assert_eq!(
        c.offer(change("alice@fabrikam.com", 10, 1, 1), now()),
        Offer::Pending
    );
    for i in 2..=5 {
        advance(Duration::from_millis(50)).await;
        assert_eq!(
            c.offer(
                change("alice@fabrikam.com", 9 + i, i as u32, i as u64),
                now()
            ),
            Offer::Merged
        );
    }
    advance(QUIET - Duration::from_millis(1)).await;
    assert!(c.poll_due(now()).is_empty(), "quiet period not over yet");
    advance(Duration::from_millis(1)).await;
    let out = emissions(c.poll_due(now()));
    assert_eq!(out.len(), 1);
    let e = &out[0];
    assert_eq!((e.count, e.sequence, e.changes_coalesced), (5, 5, 5));
    assert_eq!(e.offset, 10, "holds the oldest folded offset");
    assert_eq!(e.first_ingress_time_ms, 1_010);
    assert_eq!(e.last_ingress_time_ms, 1_014);
    assert_eq!(e.last_event_id, "e14");
    assert_eq!(e.key(), "fabrikam.com/alice@fabrikam.com");
    assert_eq!(c.stats().pending, 0);
}

#[tokio::test(start_paused = true)]
async fn steady_stream_is_emitted_at_max_delay() {
    let mut c = coalescer();
    let start = now();
    let mut seq = 0;
    let mut emitted_at = Vec::new();
    // A change every 100 ms never leaves a quiet gap: only max_delay emits.
    for _ in 0..25 {
        seq += 1;
        c.offer(
            change("bob@fabrikam.com", seq as i64, seq as u32, seq),
            now(),
        );
        advance(Duration::from_millis(100)).await;
        for e in emissions(c.poll_due(now())) {
            emitted_at.push((now() - start, e.count));
        }
    }
    assert!(!emitted_at.is_empty());
    let (first_at, _) = emitted_at[0];
    assert_eq!(
        first_at, MAX_DELAY,
        "first emission exactly max_delay after the first change"
    );
    assert!(
        emitted_at.len() >= 2,
        "a steady stream keeps emitting: {emitted_at:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn next_deadline_is_when_the_last_update_is_due() {
    let mut c = coalescer();
    assert_eq!(c.next_deadline(), None);
    let t0 = now();
    c.offer(change("a@x", 1, 1, 1), t0);
    assert_eq!(c.next_deadline(), Some(t0 + QUIET));
    // A later change moves the real deadline; the timer may fire early, never late.
    advance(Duration::from_millis(200)).await;
    c.offer(change("a@x", 2, 2, 2), now());
    advance(Duration::from_millis(50)).await;
    assert!(c.poll_due(now()).is_empty(), "re-armed, not emitted early");
    let deadline = c.next_deadline().expect("re-armed timer");
    assert_eq!(deadline, t0 + Duration::from_millis(200) + QUIET);
    advance(deadline - now()).await;
    assert_eq!(emissions(c.poll_due(now())).len(), 1);
    assert_eq!(c.next_deadline(), None);
}

#[tokio::test(start_paused = true)]
async fn reordered_older_change_is_dropped_and_badge_never_goes_back() {
    let mut c = coalescer();
    c.offer(change("a@x", 1, 7, 10), now());
    assert_eq!(
        c.offer(change("a@x", 2, 3, 9), now()),
        Offer::Stale { fence: 10 }
    );
    advance(QUIET).await;
    let out = emissions(c.poll_due(now()));
    assert_eq!(out[0].count, 7);
    // After the emit the fence is 10: 10 and below stay dropped.
    assert_eq!(
        c.offer(change("a@x", 3, 1, 10), now()),
        Offer::Stale { fence: 10 }
    );
    assert_eq!(
        c.offer(change("a@x", 4, 1, 5), now()),
        Offer::Stale { fence: 10 }
    );
    assert_eq!(c.offer(change("a@x", 5, 8, 11), now()), Offer::Pending);
    advance(QUIET).await;
    assert_eq!(emissions(c.poll_due(now()))[0].count, 8);
}

#[tokio::test(start_paused = true)]
async fn unchanged_count_is_not_emitted_again_but_releases_its_offset() {
    let mut c = coalescer();
    c.offer(change("a@x", 1, 4, 1), now());
    advance(QUIET).await;
    assert_eq!(emissions(c.poll_due(now())).len(), 1);
    c.offer(change("a@x", 2, 4, 2), now());
    advance(QUIET).await;
    assert_eq!(
        c.poll_due(now()),
        vec![Flush::Unchanged {
            partition: 0,
            offset: 2
        }]
    );
    // The fence moved to sequence 2 all the same.
    assert_eq!(c.fence(0, "fabrikam.com", "a@x"), Some((2, 4)));
}

#[tokio::test(start_paused = true)]
async fn restored_fence_drops_replayed_changes() {
    let mut c = coalescer();
    c.restore(0, "fabrikam.com", "a@x", 40, 12, now());
    assert_eq!(
        c.offer(change("a@x", 1, 3, 39), now()),
        Offer::Stale { fence: 40 }
    );
    assert_eq!(
        c.offer(change("a@x", 2, 3, 40), now()),
        Offer::Stale { fence: 40 }
    );
    assert_eq!(c.offer(change("a@x", 3, 13, 41), now()), Offer::Pending);
    // A restore never lowers a fence.
    c.restore(0, "fabrikam.com", "a@x", 20, 1, now());
    assert_eq!(c.fence(0, "fabrikam.com", "a@x"), Some((40, 12)));
}

#[tokio::test(start_paused = true)]
async fn revoke_flushes_only_that_partition_and_forgets_it() {
    let mut c = coalescer();
    let mut other = change("b@x", 1, 2, 1);
    other.partition = 1;
    c.offer(change("a@x", 5, 1, 1), now());
    c.offer(other, now());
    let out = emissions(c.revoke(0));
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].partition, out[0].offset), (0, 5));
    assert_eq!(
        c.stats(),
        CoalesceStats {
            tracked: 1,
            pending: 1
        }
    );
    assert_eq!(c.fence(0, "fabrikam.com", "a@x"), None);
    // The revoked mailbox's stale timer is ignored; the other partition still flushes.
    advance(QUIET).await;
    let out = emissions(c.poll_due(now()));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].mailbox, "b@x");
}

#[tokio::test(start_paused = true)]
async fn flush_all_empties_pending() {
    let mut c = coalescer();
    for i in 0..10 {
        c.offer(change(&format!("m{i}@x"), i, 1, 1), now());
    }
    assert_eq!(emissions(c.flush_all()).len(), 10);
    assert_eq!(c.stats().pending, 0);
    assert_eq!(c.next_deadline(), None);
}

#[tokio::test(start_paused = true)]
async fn idle_mailboxes_are_evicted_but_pending_ones_are_kept() {
    let mut c = coalescer();
    c.offer(change("idle@x", 1, 1, 1), now());
    advance(QUIET).await;
    c.poll_due(now());
    advance(Duration::from_secs(59)).await;
    c.offer(change("busy@x", 2, 1, 1), now());
    assert_eq!(c.evict_idle(now()), 0);
    advance(Duration::from_secs(1)).await;
    assert_eq!(c.evict_idle(now()), 1, "idle for the ttl");
    assert_eq!(
        c.stats(),
        CoalesceStats {
            tracked: 1,
            pending: 1
        }
    );
}

#[tokio::test(start_paused = true)]
async fn over_capacity_evicts_least_recently_touched_idle_mailboxes() {
    let mut c = Coalescer::new(CoalesceConfig {
        max_tracked: 3,
        ..CoalesceConfig::default()
    });
    for i in 0..5u32 {
        c.restore(0, "t", &format!("m{i}"), 1, 1, now());
        advance(Duration::from_millis(1)).await;
    }
    c.offer(
        Change {
            tenant: "t".into(),
            ..change("m0", 1, 5, 2)
        },
        now(),
    );
    assert_eq!(c.evict_idle(now()), 2);
    assert_eq!(c.stats().tracked, 3);
    assert!(c.fence(0, "t", "m0").is_some(), "pending mailbox is kept");
    assert!(
        c.fence(0, "t", "m1").is_none(),
        "oldest idle one went first"
    );
    assert!(c.fence(0, "t", "m4").is_some());
}

#[test]
fn mailbox_with_slash_keeps_its_tenant_boundary() {
    let mut c = coalescer();
    let t = Instant::now();
    c.offer(
        Change {
            tenant: "contoso.com".into(),
            ..change("odd/name@contoso.com", 1, 1, 1)
        },
        t,
    );
    let out = emissions(c.flush_all());
    assert_eq!(out[0].tenant, "contoso.com");
    assert_eq!(out[0].mailbox, "odd/name@contoso.com");
}
