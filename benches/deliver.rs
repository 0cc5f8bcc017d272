//! Delivery's per-push CPU outside the network: the scheduler's submit → send → answer
//! cycle, building the APNs request, and the FCM answer classification.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use pushrelay_deliver::apns;
use pushrelay_deliver::outcome::{self, Answer, Outcome};
use pushrelay_deliver::retry::RetryPolicy;
use pushrelay_deliver::scheduler::{Action, Job, Scheduler};
use pushrelay_proto::v1::{Platform, PushRequest};
use tokio::time::Instant;

fn push(i: u64) -> PushRequest {
    PushRequest {
        push_id: format!("{i:032x}"),
        tenant: "fabrikam.com".into(),
        mailbox: format!("user{}@fabrikam.com", i % 10_000),
        platform: Platform::Apns as i32,
        device_token: format!("{:064x}", i % 20_000),
        app_id: "com.example.mail".into(),
        environment: 1,
        badge: (i % 50) as u32,
        collapse_id: "0123456789abcdef0123456789abcdef".into(),
        expires_time_ms: i64::MAX / 2,
        priority: 5,
        payload: br#"{"aps":{"badge":17}}"#.to_vec(),
        push_type: "alert".into(),
        ingress_time_ms: 1,
        sequence: i,
    }
}

fn bench(c: &mut Criterion) {
    let pushes: Vec<Arc<PushRequest>> = (0..4096).map(|i| Arc::new(push(i))).collect();
    c.bench_function("scheduler: submit, send, delivered (per push)", |b| {
        let mut scheduler = Scheduler::new(RetryPolicy::default(), 512);
        let mut actions = Vec::with_capacity(8);
        let mut i = 0usize;
        b.iter(|| {
            let push = Arc::clone(&pushes[i % pushes.len()]);
            i += 1;
            actions.clear();
            scheduler.submit(
                Job {
                    push,
                    partition: 0,
                    offsets: vec![i as i64],
                },
                1,
                &mut actions,
            );
            let sent: Vec<(Arc<str>, u64)> = actions
                .iter()
                .filter_map(|a| match a {
                    Action::Send { key, id, .. } => Some((key.clone(), *id)),
                    Action::Finish(_) => None,
                })
                .collect();
            for (key, id) in sent {
                scheduler.answered(
                    &key,
                    id,
                    Answer {
                        status: 200,
                        outcome: Outcome::Delivered,
                    },
                    (Instant::now(), 1),
                    &mut actions,
                );
            }
            black_box(actions.len())
        })
    });
    let one = push(7);
    c.bench_function("APNs request building", |b| {
        b.iter(|| apns::request(black_box(&one), "eyJhbGciOiJFUzI1NiJ9.e30.sig"))
    });
    let unregistered = br#"{"error":{"code":404,"status":"NOT_FOUND","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}"#;
    c.bench_function("FCM answer classification (error body)", |b| {
        b.iter(|| outcome::fcm(404, black_box(unregistered), None))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = bench
}
criterion_main!(benches);
