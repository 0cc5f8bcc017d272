//! The coalescer's hot path (offer, then flush when due) and its memory per tracked
//! mailbox (resident set growth over one million restored fences).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use pushrelay_coalesce::{Change, CoalesceConfig, Coalescer};

fn change(i: u64, sequence: u64) -> Change {
    Change {
        tenant: "fabrikam.com".into(),
        mailbox: format!("user{}@fabrikam.com", i % 100_000),
        partition: (i % 12) as i32,
        offset: i as i64,
        count: (sequence % 50) as u32,
        sequence,
        ingress_time_ms: 0,
        event_id: "01J8ZQ4M7K3V9X2B6N5C4D3F2G".into(),
    }
}

fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn memory_per_mailbox() {
    const N: u64 = 1_000_000;
    let before = resident_bytes();
    let mut coalescer = Coalescer::new(CoalesceConfig::default());
    let now = Instant::now();
    for i in 0..N {
        coalescer.restore(
            (i % 12) as i32,
            "fabrikam.com",
            &format!("user{i}@fabrikam.com"),
            i,
            1,
            now,
        );
    }
    let after = resident_bytes();
    if let (Some(before), Some(after)) = (before, after) {
        println!(
            "memory: {} tracked mailboxes (keys ~30 bytes) grew the resident set by {} MiB = {} bytes per mailbox",
            coalescer.stats().tracked,
            (after - before) / (1024 * 1024),
            (after - before) / N
        );
    }
    black_box(coalescer);
}

fn bench(c: &mut Criterion) {
    memory_per_mailbox();
    c.bench_function("offer 100k changes over 100k mailboxes, then flush", |b| {
        b.iter_batched(
            || Coalescer::new(CoalesceConfig::default()),
            |mut coalescer| {
                let now = Instant::now();
                for i in 0..100_000u64 {
                    coalescer.offer(change(i, i + 1), now);
                }
                coalescer.poll_due(now + Duration::from_secs(2)).len()
            },
            BatchSize::LargeInput,
        )
    });
    c.bench_function("offer 100k changes to 1k hot mailboxes (merges)", |b| {
        b.iter_batched(
            || Coalescer::new(CoalesceConfig::default()),
            |mut coalescer| {
                let now = Instant::now();
                for i in 0..100_000u64 {
                    let mut c = change(i % 1000, i + 1);
                    c.mailbox = format!("hot{}@fabrikam.com", i % 1000);
                    coalescer.offer(c, now);
                }
                coalescer.poll_due(now + Duration::from_secs(2)).len()
            },
            BatchSize::LargeInput,
        )
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
