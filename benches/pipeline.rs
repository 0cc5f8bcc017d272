//! The end-to-end load harness: the real stage binaries (`pushrelay-auth`, `pushrelay-fanout`)
//! and the no-logic `pushrelay-passthrough` ceiling, each as its own process, against one
//! broker (`PUSHRELAY_TEST_BROKERS`, else an in-process mock cluster).
//!
//! ```sh
//! cargo build --release --bins -p pushrelay-auth-coalesce -p pushrelay-fanout -p pushrelay-benches
//! cargo bench -p pushrelay-benches --bench pipeline
//! ```
//!
//! 1. **Peak, reused tokens.** `PUSHRELAY_LOAD_RECORDS` changes (default 200,000) from
//!    `PUSHRELAY_LOAD_TENANTS` tenants (2) over `PUSHRELAY_LOAD_MAILBOXES` mailboxes (20,000),
//!    in bursts of `PUSHRELAY_LOAD_BURST` changes per mailbox (4), one token per tenant reused
//!    as mail servers do, are produced as a backlog, in each of `PUSHRELAY_LOAD_ROUNDS` rounds
//!    (3) once for the passthrough and once for auth-coalesce, each on its own topics and
//!    drained right after it is written (which of the two goes first alternates). Each one's
//!    rate is taken between 10% and 90% of its input (start-up excluded), with its CPU seconds
//!    over the same span (from `/proc`) and its peak RSS (`VmHWM`); every round's ratio is
//!    printed, and the median. The fan-out (one subscribed device per mailbox) then drains
//!    the counts of the first round.
//! 2. **Peak, a fresh token per change.** `PUSHRELAY_LOAD_FRESH` changes (20,000), each with its
//!    own token, through auth-coalesce, in each round; compared with the raw RS256-2048 verify
//!    rate of one core measured in this process just before.
//! 3. **Offered load.** With auth-coalesce and fan-out running, changes are produced at each
//!    rate of `PUSHRELAY_LOAD_RATES` (default `5000,10000,20000,30000,40000` per second) for
//!    `PUSHRELAY_LOAD_SECONDS` (8) each; the latency ingress→push request is the push record's
//!    timestamp minus the `ingress_time_ms` of the newest change behind it (p50, p99, p99.9).
//!
//! Results are printed and written to `target/pipeline.json`
//! (`scripts/plot-performance.py` draws `docs/performance.svg` from it).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pushrelay_kafka::{KafkaArgs, murmur2_partition, now_ms};
use pushrelay_proto::Message;
use pushrelay_proto::keys::{mailbox_key, subscription_key};
use pushrelay_proto::v1::{MailboxChange, Platform, PushRequest, Subscription};
use pushrelay_testkit::{
    StageProcess, TestBroker, TestRecord, TestTenant, committed_offsets, produce, produce_records,
    producer, read_topic,
};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;

use pushrelay_benches::env_or;

const PARTITIONS: i32 = 12;

fn binary(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/release")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --release --bins -p pushrelay-auth-coalesce -p pushrelay-fanout -p pushrelay-benches` first",
        path.display()
    );
    path
}

/// CPU seconds (user + system) of a process so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name in parentheses; utime and stime are the 14th and 15th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    ticks / 100.0
}

/// Peak resident set size of a process, MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// One consumer's run over a backlog.
#[derive(Debug, Clone)]
struct Run {
    name: &'static str,
    records: usize,
    rate: f64,
    cpu_per_million: f64,
    peak_rss_mib: f64,
}

/// The sum of the samples of `metric` on a process's `/metrics` (0 while it is not up).
fn scrape(port: u16, metric: &str) -> i64 {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n");
    let mut body = String::new();
    let _ = stream.read_to_string(&mut body);
    body.lines()
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as i64
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Starts `binary` in `group` on `kafka` and follows `metric` (its count of input records
/// handled) until it reaches `total`, then waits for the input to be committed; the rate is
/// taken between 10% and 90% of `total`.
async fn measure(
    name: &'static str,
    binary: &Path,
    kafka: &KafkaArgs,
    (group, topic): (&str, &str),
    metric: &str,
    total: i64,
) -> (Run, StageProcess) {
    let port = free_port();
    let process = StageProcess::spawn(
        binary.to_str().unwrap_or_default(),
        kafka,
        &[
            ("PUSHRELAY_GROUP", group.to_owned()),
            ("PUSHRELAY_LOG", "warn".to_owned()),
            ("PUSHRELAY_ADMIN_ADDR", format!("127.0.0.1:{port}")),
        ],
    );
    let pid = process.pid();
    eprintln!("measuring {name} on {topic} ({total} records)");
    let (mut low, mut high) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let metric = metric.to_owned();
        let done = tokio::task::spawn_blocking(move || scrape(port, &metric))
            .await
            .unwrap_or(0);
        let now = (Instant::now(), done, cpu_seconds(pid));
        if low.is_none() && done >= total / 10 {
            low = Some(now);
        }
        if high.is_none() && done >= total * 9 / 10 {
            high = Some(now);
        }
        if done >= total || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Then every input offset committed (every output acknowledged).
    loop {
        let (brokers, g, t) = (kafka.brokers.clone(), group.to_owned(), topic.to_owned());
        let committed =
            tokio::task::spawn_blocking(move || committed_offsets(&brokers, &g, &t, PARTITIONS))
                .await
                .unwrap_or(0);
        if committed >= total || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("  {name}: {} of {total} handled", scrape(port, metric));
    let (Some((t0, d0, c0)), Some((t1, d1, c1))) = (low, high) else {
        panic!("{name} did not get through its input");
    };
    let events = (d1 - d0).max(1) as f64;
    let run = Run {
        name,
        records: total as usize,
        rate: events / t1.duration_since(t0).as_secs_f64(),
        cpu_per_million: (c1 - c0) / events * 1e6,
        peak_rss_mib: peak_rss_mib(pid),
    };
    (run, process)
}

fn change(
    tenant: &TestTenant,
    token: &str,
    mailbox: usize,
    count: u32,
    sequence: u64,
) -> TestRecord {
    let mailbox = format!("user{mailbox}@{}", tenant.id);
    let value = MailboxChange {
        event_id: format!("{sequence:x}-{mailbox}"),
        mailbox: mailbox.clone(),
        unread_count: count,
        sequence,
        source_time_ms: now_ms(),
        ingress_time_ms: now_ms(),
        token: token.to_owned(),
    };
    TestRecord {
        key: mailbox_key(&tenant.id, &mailbox).into_bytes(),
        partition: None,
        value: Some(value.encode_to_vec()),
    }
}

/// Raw RS256-2048 verifications per second on one core.
fn raw_verify_rate(tenant: &TestTenant) -> f64 {
    let token = tenant.token();
    let (input, signature) = token.rsplit_once('.').expect("JWS");
    let key =
        pushrelay_auth::KeyCredential::from_certificate_der(&tenant.certificate_der).expect("key");
    let started = Instant::now();
    let mut n = 0u32;
    while started.elapsed() < Duration::from_secs(2) {
        let ok = jsonwebtoken::crypto::verify(
            signature,
            input.as_bytes(),
            key.decoding_key(),
            jsonwebtoken::Algorithm::RS256,
        )
        .unwrap_or(false);
        assert!(ok);
        n += 1;
    }
    f64::from(n) / started.elapsed().as_secs_f64()
}

/// Sum of a topic's end offsets (records written so far).
async fn end_offsets(kafka: &KafkaArgs, topic: &str) -> i64 {
    let (kafka, topic) = (kafka.clone(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        pushrelay_kafka::high_watermarks(&kafka, &topic, &(0..PARTITIONS).collect::<Vec<_>>())
    })
    .await
    .expect("thread")
    .expect("watermarks")
    .iter()
    .map(|(_, end)| end)
    .sum()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The harness's topics under `{prefix}{suffix}`, created, with the tenants registered.
async fn on_topics(
    broker: &TestBroker,
    producer: &FutureProducer,
    kafka: &KafkaArgs,
    suffix: &str,
    tenants: &[TestTenant],
) -> KafkaArgs {
    let mut args = kafka.clone();
    args.topic_prefix = format!("{}{suffix}", kafka.topic_prefix);
    broker.create_all_topics(&args).await;
    let topics = args.topics();
    for tenant in tenants {
        produce(
            producer,
            &topics.tenants,
            tenant.id.as_bytes(),
            None,
            Some(&tenant.record().encode_to_vec()),
        )
        .await;
    }
    args
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Produces `records` at `rate` per second (10 ms ticks), waiting for the acks at the end.
async fn produce_paced(
    producer: &FutureProducer,
    topic: &str,
    make: impl Fn(usize) -> TestRecord,
    records: usize,
    rate: usize,
) {
    let per_tick = (rate / 100).max(1);
    let mut pending = Vec::with_capacity(records);
    let started = Instant::now();
    let mut sent = 0;
    while sent < records {
        let tick_end = (sent + per_tick).min(records);
        for i in sent..tick_end {
            let record = make(i);
            let mut future = FutureRecord::to(topic).key(record.key.as_slice());
            if let Some(value) = &record.value {
                future = future.payload(value.as_slice());
            }
            loop {
                match producer.send_result(future) {
                    Ok(delivery) => {
                        pending.push(delivery);
                        break;
                    }
                    Err((_, returned)) => {
                        future = returned;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
        }
        sent = tick_end;
        let due = started + Duration::from_millis((sent / per_tick) as u64 * 10);
        tokio::time::sleep_until(due.into()).await;
    }
    for delivery in pending {
        let _ = delivery.await;
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let records = env_or("PUSHRELAY_LOAD_RECORDS", 200_000);
    let tenants_n = env_or("PUSHRELAY_LOAD_TENANTS", 2);
    let mailboxes = env_or("PUSHRELAY_LOAD_MAILBOXES", 20_000);
    let burst = env_or("PUSHRELAY_LOAD_BURST", 4).max(1);
    let fresh = env_or("PUSHRELAY_LOAD_FRESH", 20_000);
    let repeat = env_or("PUSHRELAY_LOAD_ROUNDS", 3).max(1);
    let seconds = env_or("PUSHRELAY_LOAD_SECONDS", 8);
    let rates: Vec<usize> = std::env::var("PUSHRELAY_LOAD_RATES")
        .unwrap_or_else(|_| "5000,10000,20000,30000,40000".into())
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .collect();
    let auth_bin = binary("pushrelay-auth");
    let fanout_bin = binary("pushrelay-fanout");
    let passthrough_bin = binary("pushrelay-passthrough");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let broker = TestBroker::real().unwrap_or_else(TestBroker::mock);
        let kafka = broker.kafka_args("pipeline", PARTITIONS);
        let topics = kafka.topics();
        broker.create_all_topics(&kafka).await;
        let producer = producer(&kafka);
        let tenants: Vec<TestTenant> = (0..tenants_n).map(|t| TestTenant::generate(&format!("tenant{t}.example"))).collect();
        for tenant in &tenants {
            produce(&producer, &topics.tenants, tenant.id.as_bytes(), None, Some(&tenant.record().encode_to_vec())).await;
        }
        let tokens: Vec<String> = tenants.iter().map(TestTenant::token).collect();
        // One subscribed device per mailbox.
        let subscriptions: Vec<TestRecord> = (0..mailboxes)
            .map(|i| {
                let tenant = &tenants[i % tenants_n];
                let mailbox = format!("user{i}@{}", tenant.id);
                let key = mailbox_key(&tenant.id, &mailbox);
                let device = format!("{i:064x}");
                let value = Subscription {
                    tenant: tenant.id.clone(),
                    mailbox,
                    platform: Platform::Apns as i32,
                    device_token: device.clone(),
                    app_id: "com.example.mail".into(),
                    environment: 1,
                    created_time_ms: now_ms(),
                    expires_time_ms: i64::MAX / 2,
                };
                TestRecord {
                    key: subscription_key(&key, Platform::Apns as i32, &device).into_bytes(),
                    partition: Some(murmur2_partition(key.as_bytes(), PARTITIONS as usize)),
                    value: Some(value.encode_to_vec()),
                }
            })
            .collect();
        produce_records(&producer, &topics.subscriptions, &subscriptions).await;

        // 1. The backlog: bursts of `burst` changes per mailbox.
        let make = |i: usize, base: u64| {
            let round = i / (mailboxes * burst);
            let within = i % (mailboxes * burst);
            let mailbox = within / burst;
            let step = within % burst;
            let tenant = mailbox % tenants_n;
            let sequence = base + (round * burst + step) as u64 + 1;
            change(&tenants[tenant], &tokens[tenant], mailbox, (sequence % 97) as u32, sequence)
        };
        let backlog: Vec<TestRecord> = (0..records).map(|i| make(i, 0)).collect();
        let size = backlog.first().and_then(|r| r.value.as_ref()).map_or(0, Vec::len);
        println!("pipeline on the {} broker: {records} changes of {size} B, {tenants_n} tenants, {mailboxes} mailboxes, bursts of {burst}, {PARTITIONS} partitions, {repeat} rounds", broker.kind);
        // Each round gives the passthrough and auth-coalesce the same backlog, each on its
        // own topics written just before it starts, one after the other (the order
        // alternates between rounds); the ratio of each round is reported, and the median.
        let prefix = kafka.topic_prefix.clone();
        let mut rounds: Vec<(Run, Run)> = Vec::new();
        for round in 0..repeat {
            let auth_kafka = if round == 0 {
                kafka.clone()
            } else {
                on_topics(&broker, &producer, &kafka, &format!("r{round}."), &tenants).await
            };
            let pt_kafka = on_topics(&broker, &producer, &kafka, &format!("r{round}.pt."), &tenants).await;
            let mut passthrough = None;
            let mut auth = None;
            for first in [round % 2 == 0, round % 2 == 1] {
                if first {
                    let topic = pt_kafka.topics().mailbox_changes;
                    produce_records(&producer, &topic, &backlog).await;
                    let (run, process) = measure("passthrough", &passthrough_bin, &pt_kafka, (&format!("{prefix}passthrough{round}"), &topic), "pushrelay_passthrough_records_total", records as i64).await;
                    drop(process);
                    passthrough = Some(run);
                } else {
                    let topic = auth_kafka.topics().mailbox_changes;
                    produce_records(&producer, &topic, &backlog).await;
                    let (run, process) = measure("auth-coalesce", &auth_bin, &auth_kafka, (&format!("{}auth", auth_kafka.topic_prefix), &topic), "pushrelay_auth_coalesce_records_total", records as i64).await;
                    drop(process);
                    auth = Some(run);
                }
            }
            if let (Some(passthrough), Some(auth)) = (passthrough, auth) {
                println!("round {round}: passthrough {:.0}/s, auth-coalesce {:.0}/s => {:.2}×", passthrough.rate, auth.rate, auth.rate / passthrough.rate);
                rounds.push((passthrough, auth));
            }
        }
        drop(backlog);
        let ratio = median(rounds.iter().map(|(p, a)| a.rate / p.rate).collect());
        let (passthrough, auth) = rounds
            .iter()
            .min_by(|x, y| (x.1.rate / x.0.rate - ratio).abs().total_cmp(&(y.1.rate / y.0.rate - ratio).abs()))
            .cloned()
            .expect("at least one round");
        // The fan-out drains the counts the first round's auth-coalesce wrote.
        let counts = end_offsets(&kafka, &topics.unread_counts).await;
        let auth_process = StageProcess::spawn(auth_bin.to_str().unwrap_or_default(), &kafka, &[
            ("PUSHRELAY_GROUP", format!("{prefix}auth")),
            ("PUSHRELAY_LOG", "warn".to_owned()),
            ("PUSHRELAY_ADMIN_ADDR", format!("127.0.0.1:{}", free_port())),
        ]);
        let (fanout, fanout_process) = measure("fanout", &fanout_bin, &kafka, (&format!("{prefix}fanout"), &topics.unread_counts), "pushrelay_fanout_counts_total", counts).await;
        let pushes = end_offsets(&kafka, &topics.push_requests).await;
        let counts_per_s = auth.rate * counts as f64 / records as f64;
        let pushes_per_s = fanout.rate * pushes as f64 / counts.max(1) as f64;
        let runs = [passthrough.clone(), auth.clone(), fanout.clone()];
        println!("\nThe round nearest the median ratio ({ratio:.2}×):\n");
        println!("| consumer | input records | records/s | × passthrough | CPU s per 1M records | peak RSS MiB |");
        println!("|---|---|---|---|---|---|");
        for run in &runs {
            println!(
                "| {} | {} | {:.0} | {:.2} | {:.1} | {:.0} |",
                run.name, run.records, run.rate, run.rate / passthrough.rate, run.cpu_per_million, run.peak_rss_mib
            );
        }

        println!(
            "\nauth-coalesce emitted {counts} unread counts ({counts_per_s:.0}/s while draining); the fan-out made {pushes} push requests ({pushes_per_s:.0}/s; its catch-up folds a backlog to the latest count per mailbox)"
        );

        // 2. A fresh token per change, against one core's raw RS256 verify rate measured
        // just before, in each round.
        let mut fresh_rounds = Vec::new();
        for round in 0..repeat {
            let fresh_kafka = on_topics(&broker, &producer, &kafka, &format!("fresh{round}."), &tenants).await;
            let fresh_topics = fresh_kafka.topics();
            let minted: Vec<TestRecord> = (0..fresh)
                .map(|i| {
                    let tenant = &tenants[i % tenants_n];
                    let mut claims = tenant.claims();
                    claims["jti"] = json!(format!("{round}-{i}"));
                    change(tenant, &tenant.token_with(&claims), i % mailboxes, (i % 97) as u32, i as u64 + 1)
                })
                .collect();
            produce_records(&producer, &fresh_topics.mailbox_changes, &minted).await;
            let verify_rate = raw_verify_rate(&tenants[0]);
            let (run, process) = measure("auth-coalesce (fresh tokens)", &auth_bin, &fresh_kafka, (&format!("{}auth", fresh_kafka.topic_prefix), &fresh_topics.mailbox_changes), "pushrelay_auth_coalesce_records_total", fresh as i64).await;
            drop(process);
            println!(
                "fresh tokens, round {round}: {:.0} changes/s ({:.1} CPU s per 1M); raw RS256-2048 verify on one core: {verify_rate:.0}/s => {:.2}×",
                run.rate, run.cpu_per_million, run.rate / verify_rate
            );
            fresh_rounds.push((run, verify_rate));
        }
        let fresh_ratio = median(fresh_rounds.iter().map(|(run, verify)| run.rate / verify).collect());
        let (fresh_run, verify_rate) = fresh_rounds
            .iter()
            .min_by(|x, y| (x.0.rate / x.1 - fresh_ratio).abs().total_cmp(&(y.0.rate / y.1 - fresh_ratio).abs()))
            .cloned()
            .expect("at least one round");
        println!(
            "\nfresh token per change (median round): {:.0} changes/s; raw RS256-2048 verify on one core: {:.0}/s => {:.2}×",
            fresh_run.rate, verify_rate, fresh_run.rate / verify_rate
        );

        // 3. Offered load, latency ingress → push request.
        println!("\n| offered changes/s | achieved changes/s | push requests | p50 ms | p99 ms | p99.9 ms |");
        println!("|---|---|---|---|---|---|");
        let mut sweep = Vec::new();
        let mut base = 1_000_000_000u64;
        for rate in &rates {
            let total = rate * seconds;
            let started = Instant::now();
            let from_ms = now_ms();
            produce_paced(&producer, &topics.mailbox_changes, |i| make(i, base), total, *rate).await;
            let achieved = total as f64 / started.elapsed().as_secs_f64();
            // Let the last bursts pass the quiet period and the fan-out.
            tokio::time::sleep(Duration::from_secs(3)).await;
            let pushes: Vec<(i64, i64)> = read_topic(&kafka, &topics.push_requests)
                .await
                .iter()
                .filter_map(|r| {
                    let push = PushRequest::decode(r.payload.as_deref()?).ok()?;
                    (push.sequence > base && push.ingress_time_ms >= from_ms).then_some((push.ingress_time_ms, r.timestamp_ms?))
                })
                .collect();
            let mut latencies: Vec<i64> = pushes.iter().map(|(ingress, at)| at - ingress).collect();
            latencies.sort_unstable();
            let (p50, p99, p999) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99), percentile(&latencies, 0.999));
            println!("| {rate} | {achieved:.0} | {} | {p50} | {p99} | {p999} |", latencies.len());
            sweep.push(json!({"offered": rate, "achieved": achieved, "pushes": latencies.len(), "p50_ms": p50, "p99_ms": p99, "p999_ms": p999}));
            base += 1_000_000_000;
        }
        drop(auth_process);
        drop(fanout_process);

        let mut by_name = HashMap::new();
        for run in &runs {
            by_name.insert(run.name, json!({"records": run.records, "rate": run.rate, "ratio": run.rate / passthrough.rate, "cpu_s_per_million": run.cpu_per_million, "peak_rss_mib": run.peak_rss_mib}));
        }
        let results = json!({
            "broker": broker.kind,
            "records": records, "tenants": tenants_n, "mailboxes": mailboxes, "burst": burst, "record_bytes": size,
            "peak": by_name,
            "unread_counts": counts, "unread_counts_per_s": counts_per_s,
            "push_requests": pushes, "push_requests_per_s": pushes_per_s,
            "rounds": rounds.iter().map(|(p, a)| json!({"passthrough": p.rate, "auth_coalesce": a.rate, "ratio": a.rate / p.rate})).collect::<Vec<_>>(),
            "median_ratio": ratio,
            "fresh_tokens": {"records": fresh, "rate": fresh_run.rate, "raw_verify_per_core": verify_rate, "ratio": fresh_run.rate / verify_rate, "cpu_s_per_million": fresh_run.cpu_per_million,
                "rounds": fresh_rounds.iter().map(|(run, verify)| json!({"rate": run.rate, "raw_verify_per_core": verify, "ratio": run.rate / verify})).collect::<Vec<_>>(),
                "median_ratio": fresh_ratio},
            "sweep": sweep,
        });
        let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pipeline.json");
        std::fs::write(&out, serde_json::to_string_pretty(&results).unwrap_or_default()).expect("write results");
        println!("\nresults: {}", out.display());
    });
}
