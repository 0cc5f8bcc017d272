//! Fan-out's pure cores: memory per held subscription, and building push requests.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use pushrelay_fanout::payload::{PushConfig, push_request};
use pushrelay_fanout::table::SubscriptionTable;
use pushrelay_proto::v1::{Subscription, UnreadCount};

fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn subscription(i: u64) -> (String, Subscription) {
    // A 64-hex-character APNs device token, as real ones are.
    let device = format!("{i:064x}");
    let mailbox = format!("user{}@fabrikam.com", i / 2);
    let key = format!("fabrikam.com/{mailbox}/apns/{device}");
    let sub = Subscription {
        tenant: "fabrikam.com".into(),
        mailbox,
        platform: 1,
        device_token: device,
        app_id: "com.example.mail".into(),
        environment: 1,
        created_time_ms: 1,
        expires_time_ms: i64::MAX,
    };
    (key, sub)
}

fn memory_per_subscription() {
    const N: u64 = 1_000_000;
    let before = resident_bytes();
    let mut table = SubscriptionTable::new(20);
    for i in 0..N {
        let (key, sub) = subscription(i);
        table.apply((i % 12) as i32, &key, Some(&sub));
    }
    if let (Some(before), Some(after)) = (before, resident_bytes()) {
        println!(
            "memory: {} subscriptions (2 per mailbox, 64-char APNs tokens) grew the resident set by {} MiB = {} bytes per subscription",
            table.len(),
            (after - before) / (1024 * 1024),
            (after - before) / N
        );
    }
    black_box(table);
}

fn bench(c: &mut Criterion) {
    memory_per_subscription();
    let (key, sub) = subscription(1);
    let mut table = SubscriptionTable::new(20);
    table.apply(0, &key, Some(&sub));
    let (devices, _) = table.devices(0, "fabrikam.com/user0@fabrikam.com", 0);
    let count = UnreadCount {
        tenant: "fabrikam.com".into(),
        mailbox: "user0@fabrikam.com".into(),
        count: 7,
        sequence: 42,
        ..UnreadCount::default()
    };
    let config = PushConfig::default();
    c.bench_function("build one APNs push request", |b| {
        b.iter(|| push_request(black_box(&count), &devices[0], &config, 0))
    });
    c.bench_function("look up a mailbox's devices", |b| {
        b.iter(|| table.devices(0, black_box("fabrikam.com/user0@fabrikam.com"), 0))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
