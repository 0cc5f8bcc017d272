//! The whole relay under trouble, judged by the checker (`pushrelay_testkit::checker`).
//!
//! Mail servers of two tenants POST changes to the ingress (in-process) round after round;
//! the auth-and-coalesce, fan-out and delivery stages run as separate processes
//! (`pushrelay auth-coalesce|fanout|deliver`); delivery sends to a fake APNs over TLS that
//! records every push in arrival order. While the changes flow:
//!
//! - **kills**: each Kafka-consuming stage is SIGKILLed twice (`PUSHRELAY_CHAOS_KILLS`) at
//!   random moments (seeded; the seed is printed, `PUSHRELAY_CHAOS_SEED` replays it) and
//!   replaced after a random pause;
//! - **scaling**: every Kafka-consuming stage goes from one instance to three, then back
//!   to one (the extra ones SIGTERMed);
//! - **leadership moves** (mock cluster of three brokers): every group coordinator and
//!   partition leader moved from broker to broker, and one broker down for two seconds;
//! - **poison**: malformed, truncated and oversized records on each of the six topics a
//!   stage consumes, twice, keyed to share partitions with live traffic: every one must be
//!   in `dead-letters` and the traffic behind it must flow;
//! - **broker restart**: a Nisshi of the test's own (SQLite storage) is SIGKILLed, stays
//!   down two seconds, and starts again on the same port; no stage is restarted.
//!
//! Pass: every acknowledged change covered at every device (0 lost), every device ends on
//! its mailbox's last count, no badge goes backwards, nothing reaches a device of another
//! mailbox or tenant, nothing invented. Repeats are counted (at least once) and printed.
//!
//! Kills and scaling run on the real broker of `scripts/test` (the mock cluster without it);
//! the broker restart needs the `nisshi` binary.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use pushrelay_kafka::KafkaArgs;
use pushrelay_proto::Message;
use pushrelay_proto::keys::{mailbox_key, push_key, subscription_key};
use pushrelay_proto::v1::{
    DeadLetter, KeyCredential, MailboxChange, Platform, PushRequest, Subscription,
    SubscriptionChange, Tenant, UnreadCount,
};
use pushrelay_telemetry::Health;
use pushrelay_testkit::checker::{Checker, Observation, Report};
use pushrelay_testkit::nisshi::OwnNisshi;
use pushrelay_testkit::tls::Pki;
use pushrelay_testkit::{StageProcess, TestBroker, TestTenant, produce, producer};
use rdkafka::mocking::MockCoordinator;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const PARTITIONS: i32 = 4;
/// Brokers of the mock cluster when the suite has no real broker, or for the leadership
/// scenario.
const BROKERS_IN_MOCK: i32 = 3;
const TENANTS: [&str; 2] = ["fabrikam.com", "contoso.com"];
/// Rounds of changes after the warm-up, one change per mailbox per round
/// (`PUSHRELAY_CHAOS_ROUNDS` for a longer run).
fn rounds() -> u64 {
    env_number("PUSHRELAY_CHAOS_ROUNDS", 40)
}

/// SIGKILLs per stage in the kills scenario (`PUSHRELAY_CHAOS_KILLS`).
fn kills_per_stage() -> u64 {
    env_number("PUSHRELAY_CHAOS_KILLS", 2)
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The shape of the mail servers' traffic.
#[derive(Debug, Clone, Copy)]
struct Load {
    mailboxes_per_tenant: usize,
    /// Rounds after the warm-up (and the backlog).
    rounds: u64,
    period: Duration,
    /// Changes per POST.
    batch: usize,
    /// Rounds sent while the stages are stopped, before the stream.
    backlog_rounds: u64,
    /// Sample each stage's resident memory this often.
    rss_every: Option<Duration>,
}

impl Load {
    /// The chaos scenarios: 120 mailboxes, a round every 250 ms.
    fn chaos() -> Self {
        Self {
            mailboxes_per_tenant: 60,
            rounds: rounds(),
            period: Duration::from_millis(250),
            batch: 20,
            backlog_rounds: 0,
            rss_every: None,
        }
    }
}

/// The scenarios share two cores: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Stage {
    AuthCoalesce,
    Fanout,
    Deliver,
}

const STAGES: [Stage; 3] = [Stage::AuthCoalesce, Stage::Fanout, Stage::Deliver];

impl Stage {
    fn subcommand(self) -> &'static str {
        match self {
            Stage::AuthCoalesce => "auth-coalesce",
            Stage::Fanout => "fanout",
            Stage::Deliver => "deliver",
        }
    }
}

/// What happens mid-stream.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// SIGKILL the oldest instance of a stage; start a replacement after the pause.
    Kill(Stage, Duration),
    /// Run this many instances of a stage (extra ones are SIGTERMed, newest first).
    Scale(Stage, usize),
    /// SIGKILL the broker, keep it down this long, start it again.
    BrokerRestart(Duration),
    /// Mock cluster: move every group coordinator and partition leader to this broker.
    MoveLeadership(i32),
    /// Mock cluster: this broker down for this long.
    BrokerDown(i32, Duration),
    /// Malformed, truncated and oversized records on every topic a stage consumes.
    Poison,
}

/// A small seeded generator (xorshift64*), so a failing schedule can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn seed() -> u64 {
    std::env::var("PUSHRELAY_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        })
}

/// One push as the fake APNs received it.
#[derive(Debug, Clone)]
struct Arrival {
    device: String,
    collapse: String,
    badge: u64,
}

type Arrivals = Arc<Mutex<Vec<Arrival>>>;

async fn apns(
    State(arrivals): State<Arrivals>,
    Path(device): Path<String>,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    let badge = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v.pointer("/aps/badge").and_then(Value::as_u64));
    let Some(badge) = badge else {
        return StatusCode::BAD_REQUEST;
    };
    let collapse = headers
        .get("apns-collapse-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    arrivals.lock().expect("lock").push(Arrival {
        device,
        collapse,
        badge,
    });
    StatusCode::OK
}

/// The mailboxes and devices of the run, and the ground truth as it grows.
struct World {
    tenants: Vec<TestTenant>,
    tokens: Vec<String>,
    /// (tenant index, mailbox address).
    mailboxes: Vec<(usize, String)>,
    /// (device token, mailbox index).
    devices: Vec<(String, usize)>,
    /// Collapse id → (tenant, mailbox).
    collapse: HashMap<String, (String, String)>,
    checker: Checker,
    /// Requests the ingress refused (503) and that were sent again.
    retried: usize,
    /// Changes per POST.
    batch: usize,
}

impl World {
    fn new(load: &Load) -> Self {
        let tenants: Vec<TestTenant> = TENANTS.iter().map(|t| TestTenant::generate(t)).collect();
        let tokens = tenants.iter().map(TestTenant::token).collect();
        let mut mailboxes = Vec::new();
        let mut devices = Vec::new();
        let mut collapse = HashMap::new();
        let mut checker = Checker::new();
        for (t, tenant) in tenants.iter().enumerate() {
            for m in 0..load.mailboxes_per_tenant {
                let mailbox = format!("user{m}@{}", tenant.id);
                collapse.insert(
                    pushrelay_fanout::payload::collapse_id(&tenant.id, &mailbox),
                    (tenant.id.clone(), mailbox.clone()),
                );
                // One or two devices per mailbox.
                for d in 0..1 + m % 2 {
                    let token = format!("{:064x}", (t << 24) | (m << 8) | d);
                    checker.subscribe(&token, &tenant.id, &mailbox);
                    devices.push((token, mailboxes.len()));
                }
                mailboxes.push((t, mailbox));
            }
        }
        Self {
            tenants,
            tokens,
            mailboxes,
            devices,
            collapse,
            checker,
            retried: 0,
            batch: load.batch,
        }
    }

    /// The checker's verdict on the arrivals so far (badge = sequence in this test).
    fn report(&mut self, arrivals: &Arrivals) -> Report {
        let arrivals = arrivals.lock().expect("lock").clone();
        self.checker.clear_observed();
        for a in arrivals {
            let (tenant, mailbox) = self
                .collapse
                .get(&a.collapse)
                .cloned()
                .unwrap_or_else(|| ("?".to_owned(), a.collapse.clone()));
            self.checker.observed(
                &a.device,
                Observation {
                    tenant,
                    mailbox,
                    sequence: a.badge,
                    count: a.badge as u32,
                },
            );
        }
        self.checker.report()
    }
}

/// POSTs until the ingress answers 202 (a mail server retries a 503).
async fn post_until_accepted(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    body: &Value,
) -> usize {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut retries = 0;
    loop {
        let answer = client.post(url).bearer_auth(token).json(body).send().await;
        match answer {
            Ok(a) if a.status() == StatusCode::ACCEPTED => return retries,
            Ok(a) if a.status().is_server_error() => {}
            Ok(a) => panic!(
                "{url}: {} {}",
                a.status(),
                a.text().await.unwrap_or_default()
            ),
            Err(_) => {}
        }
        assert!(Instant::now() < deadline, "{url}: not accepted for 120 s");
        retries += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One change per mailbox: badge and sequence `round`.
async fn send_round(
    client: &reqwest::Client,
    ingress: &str,
    world: &Arc<Mutex<World>>,
    round: u64,
) {
    let (batches, tokens) = {
        let w = world.lock().expect("lock");
        let mut batches: Vec<(usize, Vec<String>)> = Vec::new();
        for (t, _) in w.tenants.iter().enumerate() {
            let mine: Vec<String> = w
                .mailboxes
                .iter()
                .filter(|(mt, _)| *mt == t)
                .map(|(_, m)| m.clone())
                .collect();
            for chunk in mine.chunks(w.batch) {
                batches.push((t, chunk.to_vec()));
            }
        }
        (batches, w.tokens.clone())
    };
    let url = format!("{ingress}/v1/notifications");
    let sends = batches.into_iter().map(|(t, mailboxes)| {
        let client = client.clone();
        let url = url.clone();
        let token = tokens[t].clone();
        let world = Arc::clone(world);
        async move {
            let notifications: Vec<Value> = mailboxes
                .iter()
                .map(|m| json!({"mailbox": m, "unreadCount": round, "sequence": round}))
                .collect();
            let body = json!({ "notifications": notifications });
            let retries = post_until_accepted(&client, &url, &token, &body).await;
            let mut w = world.lock().expect("lock");
            w.retried += retries;
            let tenant = w.tenants[t].id.clone();
            for m in &mailboxes {
                w.checker.acknowledged(&tenant, m, round, round as u32);
            }
        }
    });
    futures_join_all(sends).await;
}

/// Runs futures concurrently to completion (a tiny `join_all` on tokio tasks).
async fn futures_join_all<F>(futures: impl IntoIterator<Item = F>)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let handles: Vec<JoinHandle<()>> = futures.into_iter().map(tokio::spawn).collect();
    for h in handles {
        h.await.expect("sender task");
    }
}

/// The relay under test: the ingress in-process, the other stages as processes.
struct Relay {
    kafka: KafkaArgs,
    binary: &'static str,
    deliver_env: Vec<(&'static str, String)>,
    running: HashMap<Stage, Vec<StageProcess>>,
    ingress: String,
    ingress_stop: CancellationToken,
    ingress_task: JoinHandle<()>,
    started: usize,
}

impl Relay {
    async fn start(kafka: KafkaArgs, deliver_env: Vec<(&'static str, String)>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let ingress_stop = CancellationToken::new();
        let run = pushrelay_ingress::serve(
            pushrelay_ingress::IngressArgs::new(kafka.clone(), addr),
            listener,
            Health::new(),
            ingress_stop.clone(),
        );
        let ingress_task = tokio::spawn(async move { run.await.expect("ingress") });
        let mut relay = Self {
            kafka,
            binary: env!("CARGO_BIN_EXE_pushrelay"),
            deliver_env,
            running: HashMap::new(),
            ingress: format!("http://{addr}"),
            ingress_stop,
            ingress_task,
            started: 0,
        };
        for stage in STAGES {
            relay.add(stage);
        }
        relay
    }

    fn add(&mut self, stage: Stage) {
        let mut env = vec![
            (
                "PUSHRELAY_GROUP",
                format!("{}{}", self.kafka.topic_prefix, stage.subcommand()),
            ),
            ("PUSHRELAY_LOG", "warn".to_owned()),
        ];
        match stage {
            Stage::AuthCoalesce => {
                env.push(("PUSHRELAY_QUIET_PERIOD_MS", "50".to_owned()));
                env.push(("PUSHRELAY_MAX_DELAY_MS", "300".to_owned()));
            }
            Stage::Fanout => {}
            Stage::Deliver => {
                env.extend(self.deliver_env.iter().cloned());
            }
        }
        let process =
            StageProcess::spawn_with_args(self.binary, &[stage.subcommand()], &self.kafka, &env);
        self.started += 1;
        self.running.entry(stage).or_default().push(process);
    }

    fn kill_oldest(&mut self, stage: Stage) {
        let instances = self.running.entry(stage).or_default();
        if !instances.is_empty() {
            instances.remove(0).sigkill();
        }
    }

    fn scale(&mut self, stage: Stage, n: usize) {
        while self.running.get(&stage).map_or(0, Vec::len) < n {
            self.add(stage);
        }
        let instances = self.running.entry(stage).or_default();
        while instances.len() > n {
            if let Some(extra) = instances.pop() {
                let status = extra.terminate();
                assert!(
                    status.success(),
                    "{stage:?} exits cleanly on SIGTERM: {status}"
                );
            }
        }
    }

    /// The process ids of the running stage instances.
    fn pids(&self) -> Vec<(Stage, u32)> {
        self.running
            .iter()
            .flat_map(|(stage, instances)| instances.iter().map(|i| (*stage, i.pid())))
            .collect()
    }

    async fn stop(self) {
        for (stage, instances) in self.running {
            for instance in instances {
                let status = tokio::task::spawn_blocking(move || instance.terminate())
                    .await
                    .expect("thread");
                assert!(status.success(), "{stage:?} exits cleanly: {status}");
            }
        }
        self.ingress_stop.cancel();
        let _ = self.ingress_task.await;
    }
}

/// Runs one scenario; `broker` is restarted by `Fault::BrokerRestart` when given.
async fn scenario(
    name: &str,
    brokers: &str,
    mock: Option<&TestBroker>,
    mut own_broker: Option<OwnNisshi>,
    faults: Vec<(f64, Fault)>,
    load: Load,
) {
    // Every broker of a mock cluster holds a replica, so leadership can move.
    let replication = mock
        .and_then(TestBroker::mock_cluster)
        .map_or(1, |_| BROKERS_IN_MOCK);
    let mut kafka = match mock {
        Some(broker) => {
            let mut kafka = broker.kafka_args(name, PARTITIONS);
            kafka.bootstrap.replication_factor = replication;
            kafka
        }
        None => {
            let mut kafka = KafkaArgs::new(brokers);
            kafka.topic_prefix = pushrelay_testkit::unique_prefix(name);
            kafka.bootstrap.partitions = PARTITIONS;
            kafka
        }
    };
    kafka.properties = vec![
        ("session.timeout.ms".into(), "6000".into()),
        ("heartbeat.interval.ms".into(), "500".into()),
        ("topic.metadata.refresh.interval.ms".into(), "1000".into()),
    ];
    match mock {
        Some(broker) => broker.create_all_topics(&kafka).await,
        None => pushrelay_kafka::ensure_topics(&kafka, &pushrelay_testkit::all_topic_specs(&kafka))
            .await
            .expect("topics"),
    }
    let world = Arc::new(Mutex::new(World::new(&load)));
    let producer = producer(&kafka);
    let records: Vec<_> = world
        .lock()
        .expect("lock")
        .tenants
        .iter()
        .map(|t| (t.id.clone(), t.record().encode_to_vec()))
        .collect();
    for (id, record) in records {
        produce(
            &producer,
            &kafka.topics().tenants,
            id.as_bytes(),
            None,
            Some(&record),
        )
        .await;
    }

    // The fake APNs.
    let pki = Pki::new(&format!("chaos-{name}"));
    let p8 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("p8");
    let p8_file = pki.write("AuthKey.p8", p8.serialize_pem().as_bytes());
    let arrivals: Arrivals = Arc::default();
    let app = Router::new()
        .route("/3/device/{device}", post(apns))
        .with_state(Arc::clone(&arrivals));
    let (addr, provider) = pki.serve(app).await;
    let deliver_env = vec![
        ("PUSHRELAY_APNS_KEY_FILE", p8_file.display().to_string()),
        ("PUSHRELAY_APNS_KEY_ID", "KEYID12345".to_owned()),
        ("PUSHRELAY_APNS_TEAM_ID", "TEAM123456".to_owned()),
        (
            "PUSHRELAY_APNS_BASE_URL",
            format!("https://localhost:{}", addr.port()),
        ),
        (
            "PUSHRELAY_PROVIDER_CA_FILE",
            pki.ca_file().display().to_string(),
        ),
        ("PUSHRELAY_RETRY_BASE_MS", "100".to_owned()),
    ];
    let mut relay = Relay::start(kafka.clone(), deliver_env).await;
    let client = reqwest::Client::new();

    // Subscribe every device, then send rounds until every device has its mailbox's
    // count (subscriptions and counts travel on different topics).
    let subscriptions: Vec<(String, String, String)> = {
        let w = world.lock().expect("lock");
        w.devices
            .iter()
            .map(|(device, m)| {
                let (t, mailbox) = &w.mailboxes[*m];
                (w.tokens[*t].clone(), mailbox.clone(), device.clone())
            })
            .collect()
    };
    let url = format!("{}/v1/subscriptions", relay.ingress);
    futures_join_all(subscriptions.into_iter().map(|(token, mailbox, device)| {
        let client = client.clone();
        let url = url.clone();
        async move {
            let body = json!({"mailbox": mailbox, "platform": "apns",
                              "deviceToken": device, "appId": "com.example.mail"});
            post_until_accepted(&client, &url, &token, &body).await;
        }
    }))
    .await;
    let warm = Instant::now();
    let mut round = 0;
    loop {
        round += 1;
        send_round(&client, &relay.ingress, &world, round).await;
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut settled = false;
        while !settled && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            settled = world.lock().expect("lock").report(&arrivals).settled();
        }
        if settled {
            break;
        }
        assert!(
            warm.elapsed() < Duration::from_secs(120),
            "[{name}] the relay never delivered a warm-up round: {}",
            world.lock().expect("lock").report(&arrivals)
        );
    }
    eprintln!("[{name}] warm after {round} rounds, {:?}", warm.elapsed());

    // A backlog: the stages stopped while rounds are sent, then started again.
    if load.backlog_rounds > 0 {
        relay = tokio::task::spawn_blocking(move || {
            for stage in STAGES {
                relay.scale(stage, 0);
            }
            relay
        })
        .await
        .expect("stop");
        for _ in 0..load.backlog_rounds {
            round += 1;
            send_round(&client, &relay.ingress, &world, round).await;
        }
        for stage in STAGES {
            relay.add(stage);
        }
        eprintln!(
            "[{name}] backlog of {} rounds written while the stages were stopped",
            load.backlog_rounds
        );
    }
    let sampler = load.rss_every.map(|every| {
        let pids = relay.pids();
        let stop = CancellationToken::new();
        let task = tokio::spawn(sample_rss(pids, every, stop.clone()));
        (stop, task)
    });

    // The stream, with the faults at their moments.
    let first = round + 1;
    let rounds = load.rounds;
    let period = load.period;
    let stream_time = period.mul_f64(rounds as f64);
    let mut faults = faults;
    faults.sort_by(|a, b| a.0.total_cmp(&b.0));
    let sender = {
        let client = client.clone();
        let ingress = relay.ingress.clone();
        let world = Arc::clone(&world);
        tokio::spawn(async move {
            let start = Instant::now();
            for r in first..first + rounds {
                send_round(&client, &ingress, &world, r).await;
                let next = start + period.mul_f64((r - first + 1) as f64);
                tokio::time::sleep_until(next).await;
            }
        })
    };
    let start = Instant::now();
    let mut log = Vec::new();
    let mut poisoned = Vec::new();
    for (at, fault) in faults {
        tokio::time::sleep_until(start + stream_time.mul_f64(at)).await;
        log.push(format!("{:.1}s {fault:?}", start.elapsed().as_secs_f64()));
        match fault {
            Fault::Kill(stage, pause) => {
                relay.kill_oldest(stage);
                tokio::time::sleep(pause).await;
                relay.add(stage);
            }
            Fault::Scale(stage, n) => {
                relay = tokio::task::spawn_blocking(move || {
                    relay.scale(stage, n);
                    relay
                })
                .await
                .expect("scale");
            }
            Fault::MoveLeadership(to) => {
                let cluster = mock
                    .and_then(TestBroker::mock_cluster)
                    .expect("a mock cluster");
                for stage in STAGES {
                    let group = format!("{}{}", kafka.topic_prefix, stage.subcommand());
                    cluster
                        .coordinator(MockCoordinator::Group(group), to)
                        .expect("coordinator moves");
                }
                for spec in pushrelay_testkit::all_topic_specs(&kafka) {
                    for p in 0..PARTITIONS {
                        cluster
                            .partition_leader(&spec.name, p, Some(to))
                            .expect("leader moves");
                    }
                }
            }
            Fault::BrokerDown(broker, down) => {
                let cluster = mock
                    .and_then(TestBroker::mock_cluster)
                    .expect("a mock cluster");
                cluster.broker_down(broker).expect("broker down");
                tokio::time::sleep(down).await;
                cluster.broker_up(broker).expect("broker up");
            }
            Fault::Poison => poisoned.extend(poison(&kafka, &producer).await),
            Fault::BrokerRestart(down) => {
                let mut broker = own_broker.take().expect("a broker of the test's own");
                own_broker = Some(
                    tokio::task::spawn_blocking(move || {
                        broker.restart_after(down);
                        broker
                    })
                    .await
                    .expect("restart"),
                );
            }
        }
    }
    sender.await.expect("the mail servers' sends");
    let sent = start.elapsed();

    // Settle: every device on its mailbox's last count.
    let deadline = Instant::now() + Duration::from_secs(120);
    let report = loop {
        let report = world.lock().expect("lock").report(&arrivals);
        if report.settled() || Instant::now() > deadline {
            break report;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let settled_after = start.elapsed() - sent;
    if let Some((stop, task)) = sampler {
        stop.cancel();
        print_rss(name, &task.await.expect("sampler"));
    }
    let retried = world.lock().expect("lock").retried;
    eprintln!(
        "[{name}] faults: {}\n[{name}] stream of {rounds} rounds sent in {sent:.1?}, settled {settled_after:.1?} later; \
         {retried} POSTs retried after a 503; {} stage processes started\n[{name}] {report}",
        log.join(", "),
        relay.started,
    );
    assert!(report.is_clean(), "[{name}] {report}");
    if !poisoned.is_empty() {
        let lettered = dead_lettered(&kafka, &poisoned).await;
        let missing: Vec<_> = poisoned.iter().filter(|p| !lettered.contains(*p)).collect();
        let topics: HashSet<&String> = poisoned.iter().map(|p| &p.0).collect();
        eprintln!(
            "[{name}] {} poison records on {} topics, {} of them in the dead letters",
            poisoned.len(),
            topics.len(),
            poisoned.len() - missing.len()
        );
        assert!(
            missing.is_empty(),
            "[{name}] poison records not dead-lettered: {missing:?}"
        );
    }
    relay.stop().await;
    provider.cancel();
    drop(own_broker);
}

/// Resident memory samples of one stage process: (seconds since start, KiB).
type RssSamples = Vec<(Stage, Vec<(f64, u64)>)>;

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

async fn sample_rss(
    pids: Vec<(Stage, u32)>,
    every: Duration,
    stop: CancellationToken,
) -> RssSamples {
    let start = Instant::now();
    let mut samples: RssSamples = pids.iter().map(|(s, _)| (*s, Vec::new())).collect();
    loop {
        for ((_, pid), (_, series)) in pids.iter().zip(samples.iter_mut()) {
            if let Some(kib) = rss_kib(*pid) {
                series.push((start.elapsed().as_secs_f64(), kib));
            }
        }
        tokio::select! {
            () = stop.cancelled() => return samples,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Least-squares slope of `points`, per unit of x.
fn slope(points: &[(f64, u64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1 as f64).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 as f64 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 { 0.0 } else { sxy / sxx }
}

/// Prints each stage's RSS at the start, peak, end, and its slope over the second half.
fn print_rss(name: &str, samples: &RssSamples) {
    for (stage, series) in samples {
        let Some(first) = series.first() else {
            continue;
        };
        let peak = series.iter().map(|p| p.1).max().unwrap_or(0);
        let half = &series[series.len() / 2..];
        let per_min = slope(half) * 60.0 / 1024.0;
        let quarters: Vec<String> = (1..=4)
            .map(|q| {
                let (t, kib) = series[(series.len() * q / 4).min(series.len() - 1)];
                format!("{:.1} MiB at {t:.0} s", kib as f64 / 1024.0)
            })
            .collect();
        eprintln!(
            "[{name}] RSS {}: {:.1} MiB at start, {}; peak {:.1} MiB; \
             second half slope {per_min:+.3} MiB/min ({} samples)",
            stage.subcommand(),
            first.1 as f64 / 1024.0,
            quarters.join(", "),
            peak as f64 / 1024.0,
            series.len()
        );
    }
}

/// A record (topic, partition, offset) that must end in the dead letters.
type Poisoned = (String, i32, i64);

/// Bytes no protobuf decoder accepts (an overlong varint).
const MALFORMED: &[u8] = b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff";

/// `message` encoded, then cut inside a field so it no longer decodes.
fn truncated<M: Message + Default>(message: &M) -> Vec<u8> {
    let bytes = message.encode_to_vec();
    (bytes.len() / 2..bytes.len())
        .map(|cut| bytes[..cut].to_vec())
        .find(|cut| M::decode(cut.as_slice()).is_err())
        .expect("some cut does not decode")
}

/// Three bad records (malformed, truncated, decodable but over the limits) on each of
/// the six topics a stage consumes, keyed like real records of the run so they share
/// partitions with live traffic. Returns where they landed.
async fn poison(kafka: &KafkaArgs, producer: &FutureProducer) -> Vec<Poisoned> {
    let topics = kafka.topics();
    let tenant = TENANTS[0];
    let live_mailbox = format!("user0@{tenant}");
    let live_device = format!("{:064x}", 0);
    // Compacted topics get keys of their own: a bad record under a live key would be the
    // key's latest value.
    let dead_mailbox = format!("poison@{tenant}");
    let apns = Platform::Apns as i32;
    let big = |n: usize| "p".repeat(n);

    let change = MailboxChange {
        mailbox: live_mailbox.clone(),
        unread_count: 1,
        sequence: 1,
        token: big(20 * 1024),
        ..MailboxChange::default()
    };
    let subscription_change = SubscriptionChange {
        mailbox: live_mailbox.clone(),
        platform: apns,
        device_token: big(5000),
        app_id: "com.example.mail".into(),
        token: "x.y.z".into(),
        ..SubscriptionChange::default()
    };
    let tenant_record = Tenant {
        id: "poison.example".into(),
        enabled: true,
        issuer: "poison".into(),
        keys: vec![KeyCredential {
            certificate_der: vec![0x30; 300 * 1024],
            ..KeyCredential::default()
        }],
        ..Tenant::default()
    };
    let count = UnreadCount {
        tenant: tenant.into(),
        mailbox: big(100 * 1024),
        count: 1,
        sequence: 1,
        ..UnreadCount::default()
    };
    let subscription = Subscription {
        tenant: tenant.into(),
        mailbox: dead_mailbox.clone(),
        platform: apns,
        device_token: big(100 * 1024),
        app_id: "com.example.mail".into(),
        ..Subscription::default()
    };
    let push = PushRequest {
        tenant: tenant.into(),
        mailbox: live_mailbox.clone(),
        platform: apns,
        device_token: live_device.clone(),
        app_id: "com.example.mail".into(),
        payload: big(64 * 1024).into_bytes(),
        ..PushRequest::default()
    };
    let sets: Vec<(&String, String, Vec<Vec<u8>>)> = vec![
        (
            &topics.mailbox_changes,
            mailbox_key(tenant, &live_mailbox),
            vec![truncated(&change), change.encode_to_vec()],
        ),
        (
            &topics.subscription_changes,
            mailbox_key(tenant, &live_mailbox),
            vec![
                truncated(&subscription_change),
                subscription_change.encode_to_vec(),
            ],
        ),
        (
            &topics.tenants,
            "poison.example".into(),
            vec![truncated(&tenant_record), tenant_record.encode_to_vec()],
        ),
        (
            &topics.unread_counts,
            mailbox_key(tenant, &dead_mailbox),
            vec![truncated(&count), count.encode_to_vec()],
        ),
        (
            &topics.subscriptions,
            subscription_key(&mailbox_key(tenant, &dead_mailbox), apns, "dead"),
            vec![truncated(&subscription), subscription.encode_to_vec()],
        ),
        (
            &topics.push_requests,
            push_key(apns, &live_device),
            vec![truncated(&push), push.encode_to_vec()],
        ),
    ];
    let mut landed = Vec::new();
    for (topic, key, mut values) in sets {
        values.insert(0, MALFORMED.to_vec());
        for value in values {
            let delivery = producer
                .send(
                    FutureRecord::to(topic).key(key.as_bytes()).payload(&value),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(err, _)| err)
                .expect("poison record acknowledged");
            landed.push((topic.clone(), delivery.partition, delivery.offset));
        }
    }
    landed
}

/// The (topic, partition, offset) of every dead letter, once all of `expected` are there
/// or a minute has passed.
async fn dead_lettered(kafka: &KafkaArgs, expected: &[Poisoned]) -> HashSet<Poisoned> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let letters: HashSet<Poisoned> =
            pushrelay_testkit::read_topic(kafka, &kafka.topics().dead_letters)
                .await
                .iter()
                .filter_map(|r| DeadLetter::decode(r.payload.as_deref()?).ok())
                .map(|l| (l.source_topic, l.source_partition, l.source_offset))
                .collect();
        if expected.iter().all(|p| letters.contains(p)) || Instant::now() > deadline {
            return letters;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A chaos scenario on the shared broker (or a mock cluster without one).
async fn on_shared_broker(name: &str, faults: Vec<(f64, Fault)>) {
    let (brokers, mock) = shared_broker();
    scenario(name, &brokers, mock.as_ref(), None, faults, Load::chaos()).await;
}

/// The shared broker of `scripts/test`, or a mock cluster without it.
fn shared_broker() -> (String, Option<TestBroker>) {
    match TestBroker::real() {
        Some(real) => (real.brokers, None),
        None => {
            let mock = TestBroker::mock_with_brokers(BROKERS_IN_MOCK);
            (mock.brokers.clone(), Some(mock))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sigkills_of_every_stage_lose_nothing_and_never_go_back() {
    let _serial = SERIAL.lock().await;
    pushrelay_testkit::init_test_logging();
    let seed = seed();
    eprintln!("chaos seed {seed} (PUSHRELAY_CHAOS_SEED={seed} replays the schedule)");
    let mut rng = Rng(seed);
    let mut faults = Vec::new();
    for stage in STAGES {
        for _ in 0..kills_per_stage() {
            let at = 0.1 + rng.below(750) as f64 / 1000.0;
            let pause = Duration::from_millis(rng.below(1500));
            faults.push((at, Fault::Kill(stage, pause)));
        }
    }
    on_shared_broker("kills", faults).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stage_scaled_one_to_three_to_one_loses_nothing() {
    let _serial = SERIAL.lock().await;
    pushrelay_testkit::init_test_logging();
    let mut faults = Vec::new();
    for stage in STAGES {
        faults.push((0.15, Fault::Scale(stage, 3)));
        faults.push((0.6, Fault::Scale(stage, 1)));
    }
    on_shared_broker("scaling", faults).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_under_the_whole_relay_loses_nothing() {
    let _serial = SERIAL.lock().await;
    pushrelay_testkit::init_test_logging();
    let Some(nisshi) = OwnNisshi::start("chaos-restart") else {
        assert!(
            TestBroker::real().is_none(),
            "nisshi is not on PATH but the suite runs against a real broker"
        );
        eprintln!(
            "nisshi is not installed: skipping the broker-restart scenario (scripts/test runs it)"
        );
        return;
    };
    let brokers = nisshi.brokers();
    scenario(
        "broker-restart",
        &brokers,
        None,
        Some(nisshi),
        vec![(0.4, Fault::BrokerRestart(Duration::from_secs(2)))],
        Load::chaos(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinators_and_leaders_moving_between_brokers_lose_nothing() {
    let _serial = SERIAL.lock().await;
    pushrelay_testkit::init_test_logging();
    // Mock cluster only: a real broker cannot be told to move its coordinators.
    let mock = TestBroker::mock_with_brokers(BROKERS_IN_MOCK);
    let faults = vec![
        (0.1, Fault::MoveLeadership(2)),
        (0.3, Fault::BrokerDown(1, Duration::from_secs(2))),
        (0.5, Fault::MoveLeadership(3)),
        (0.7, Fault::MoveLeadership(1)),
    ];
    scenario(
        "leadership",
        &mock.brokers.clone(),
        Some(&mock),
        None,
        faults,
        Load::chaos(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_on_every_input_topic_is_dead_lettered_and_traffic_keeps_moving() {
    let _serial = SERIAL.lock().await;
    pushrelay_testkit::init_test_logging();
    on_shared_broker("poison", vec![(0.2, Fault::Poison), (0.6, Fault::Poison)]).await;
}

/// The long run (`scripts/test --long`, or `PUSHRELAY_SOAK_SECS=600 cargo test -p pushrelay
/// --test chaos soak -- --ignored --nocapture`): a minute of backlog, then a round of
/// changes every second for every one of 1,000 mailboxes (1,500 devices) for
/// `PUSHRELAY_SOAK_SECS` (default 600), each stage's resident memory sampled every 5 s.
/// Pass: the checker finds nothing lost, wrong, backwards or misrouted; the printed RSS
/// slopes are the memory figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "ten minutes: run by scripts/test --long"]
async fn soak_with_a_backlog_loses_nothing_and_memory_stays_flat() {
    let _serial = SERIAL.lock().await;
    pushrelay_testkit::init_test_logging();
    let secs = env_number("PUSHRELAY_SOAK_SECS", 600);
    let load = Load {
        mailboxes_per_tenant: 500,
        rounds: secs,
        period: Duration::from_secs(1),
        batch: 500,
        backlog_rounds: 60,
        rss_every: Some(Duration::from_secs(5)),
    };
    let (brokers, mock) = shared_broker();
    scenario("soak", &brokers, mock.as_ref(), None, Vec::new(), load).await;
}
