//! Test support shared by the stages' integration tests.
//!
//! - [`TestBroker`]: the in-process mock cluster always, and the real broker named by
//!   `PUSHRELAY_TEST_BROKERS` when the test command started one, so one test body runs
//!   against both;
//! - [`TestTenant`]: a tenant with a freshly generated certificate, its registry record
//!   and tokens signed with its key;
//! - helpers to produce records and read topics back;
//! - [`checker`]: loss, wrong badges, regressions, duplicates and leaks, from what the
//!   ingress acknowledged and what came out;
//! - [`tls`]: TLS for fake provider servers; [`nisshi`]: a broker a test may restart.

pub mod checker;
pub mod nisshi;
pub mod tls;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pushrelay_auth::{KeyCredential, SigningKey, mint_token};
use pushrelay_kafka::{KafkaArgs, Record, TopicSpec, Topics, ensure_topics, read_to_end};
use pushrelay_proto::v1::Tenant;
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde_json::{Map, Value, json};

/// Environment variable naming a real Kafka-protocol broker for integration tests.
pub const REAL_BROKER_ENV: &str = "PUSHRELAY_TEST_BROKERS";

/// A broker a test runs against.
pub struct TestBroker {
    /// Bootstrap address.
    pub brokers: String,
    /// `mock` or `real`, for messages.
    pub kind: &'static str,
    _mock: Option<MockCluster<'static, rdkafka::producer::DefaultProducerContext>>,
}

impl std::fmt::Debug for TestBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestBroker")
            .field("brokers", &self.brokers)
            .field("kind", &self.kind)
            .finish()
    }
}

impl TestBroker {
    /// A fresh in-process mock cluster (librdkafka's mock brokers).
    pub fn mock() -> Self {
        Self::mock_with_brokers(1)
    }

    /// A fresh in-process mock cluster of `brokers` brokers (ids 1 to `brokers`), for
    /// moving partition leaders and group coordinators between them.
    pub fn mock_with_brokers(brokers: i32) -> Self {
        let mock = MockCluster::new(brokers).expect("the mock cluster starts");
        Self {
            brokers: mock.bootstrap_servers(),
            kind: "mock",
            _mock: Some(mock),
        }
    }

    /// The real broker of `PUSHRELAY_TEST_BROKERS`, if set.
    pub fn real() -> Option<Self> {
        let brokers = std::env::var(REAL_BROKER_ENV).ok()?;
        if brokers.trim().is_empty() {
            return None;
        }
        Some(Self {
            brokers,
            kind: "real",
            _mock: None,
        })
    }

    /// The mock cluster, then the real broker when one is provided.
    pub fn all() -> Vec<Self> {
        let mut brokers = vec![Self::mock()];
        match Self::real() {
            Some(real) => brokers.push(real),
            None => eprintln!(
                "note: {REAL_BROKER_ENV} is not set; running against the mock cluster only \
                 (scripts/test starts a real broker)"
            ),
        }
        brokers
    }

    /// Kafka arguments for one test: unique topic prefix, `partitions` partitions, and the
    /// short group timeouts tests need.
    pub fn kafka_args(&self, test: &str, partitions: i32) -> KafkaArgs {
        let mut args = KafkaArgs::new(&self.brokers);
        args.topic_prefix = unique_prefix(test);
        args.bootstrap.partitions = partitions;
        args.properties = vec![
            ("session.timeout.ms".into(), "6000".into()),
            ("heartbeat.interval.ms".into(), "500".into()),
            ("topic.metadata.refresh.interval.ms".into(), "1000".into()),
        ];
        args
    }

    /// The mock cluster, for fault injection (`broker_down`, `broker_up`); `None` on a real broker.
    pub fn mock_cluster(
        &self,
    ) -> Option<&MockCluster<'static, rdkafka::producer::DefaultProducerContext>> {
        self._mock.as_ref()
    }

    /// Creates every relay topic under the args' prefix: through the admin API on a real
    /// broker, through the mock cluster's own call on the mock (its brokers do not
    /// implement CreateTopics).
    pub async fn create_all_topics(&self, args: &KafkaArgs) {
        match &self._mock {
            Some(mock) => {
                for spec in all_topic_specs(args) {
                    mock.create_topic(
                        &spec.name,
                        args.bootstrap.partitions,
                        args.bootstrap.replication_factor,
                    )
                    .expect("mock topic is created");
                }
            }
            None => ensure_topics(args, &all_topic_specs(args))
                .await
                .expect("topics are created"),
        }
    }
}

/// A topic prefix no other test (or earlier run) uses.
pub fn unique_prefix(test: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "t{}-{}-{}-{}.",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed),
        test
    )
}

/// Every relay topic under the args' prefix, with its cleanup policy.
pub fn all_topic_specs(args: &KafkaArgs) -> Vec<TopicSpec> {
    args.topics().specs(args.token_topic_retention())
}

/// Seconds since the epoch.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A tenant with its own RSA-2048 certificate.
pub struct TestTenant {
    /// Tenant id (domain).
    pub id: String,
    /// Issuer its tokens carry.
    pub issuer: String,
    /// Its private key.
    pub key: SigningKey,
    /// The same key, PKCS#8 DER (for tools that read key files).
    pub key_pkcs8_der: Vec<u8>,
    /// Its certificate (DER).
    pub certificate_der: Vec<u8>,
    /// Its certificate's `x5t`.
    pub x5t: String,
}

impl std::fmt::Debug for TestTenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestTenant").field("id", &self.id).finish()
    }
}

impl TestTenant {
    /// Generates a tenant with a fresh RSA-2048 certificate.
    pub fn generate(id: &str) -> Self {
        let key =
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .expect("RSA key generation");
        let params = rcgen::CertificateParams::new(vec![id.to_owned()]).expect("params");
        let cert = params.self_signed(&key).expect("self-signed certificate");
        let certificate_der = cert.der().to_vec();
        Self {
            id: id.to_owned(),
            issuer: format!("00000002-0000-0ff1-ce00-000000000000@{id}"),
            key: SigningKey::from_pkcs8(&key.serialize_der()).expect("PKCS#8 key"),
            key_pkcs8_der: key.serialize_der(),
            x5t: pushrelay_auth::thumbprint(&certificate_der),
            certificate_der,
        }
    }

    /// Its registry record: enabled, with its certificate as the only key.
    pub fn record(&self) -> Tenant {
        let credential =
            KeyCredential::from_certificate_der(&self.certificate_der).expect("usable certificate");
        Tenant {
            id: self.id.clone(),
            enabled: true,
            issuer: self.issuer.clone(),
            audiences: Vec::new(),
            keys: vec![credential.to_proto()],
            metadata_url: String::new(),
            updated_time_ms: now_secs() * 1000,
        }
    }

    /// Valid claims for the relay's default audience, valid for an hour.
    pub fn claims(&self) -> Value {
        let now = now_secs();
        json!({
            "tid": self.id,
            "iss": self.issuer,
            "aud": "pushrelay",
            "nbf": now - 10,
            "exp": now + 3600,
        })
    }

    /// A valid RS256 token naming the key by `x5t`.
    pub fn token(&self) -> String {
        self.token_with(&self.claims())
    }

    /// An RS256 token naming the key by `x5t`, with the given claims.
    pub fn token_with(&self, claims: &Value) -> String {
        let mut header = Map::new();
        header.insert("x5t".into(), Value::String(self.x5t.clone()));
        mint_token(&self.key, "RS256", &header, claims).expect("token mint")
    }
}

/// A plain producer for tests: `acks=all`, murmur2 partitioner.
pub fn producer(args: &KafkaArgs) -> FutureProducer {
    let config: ClientConfig = args.producer_config();
    config.create().expect("test producer")
}

/// Produces one record and waits for its ack.
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    key: &[u8],
    partition: Option<i32>,
    payload: Option<&[u8]>,
) {
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).key(key);
    if let Some(payload) = payload {
        record = record.payload(payload);
    }
    if let Some(partition) = partition {
        record = record.partition(partition);
    }
    producer
        .send(record, Duration::from_secs(30))
        .await
        .map_err(|(err, _)| err)
        .expect("test record acknowledged");
}

/// Writes `tenant`'s registry record (enabled, its certificate as the key) to the tenants
/// topic and waits for the ack.
pub async fn register_tenant(producer: &FutureProducer, args: &KafkaArgs, tenant: &TestTenant) {
    use pushrelay_proto::Message;
    produce(
        producer,
        &args.topics().tenants,
        tenant.id.as_bytes(),
        None,
        Some(&tenant.record().encode_to_vec()),
    )
    .await;
}

/// Waits for every queued record of `producer`.
pub fn flush(producer: &FutureProducer) {
    producer.flush(Duration::from_secs(30)).expect("flush");
}

/// Reads every record of every partition of `topic` as of now.
pub async fn read_topic(args: &KafkaArgs, topic: &str) -> Vec<Record> {
    let partitions: Vec<i32> = (0..args.bootstrap.partitions).collect();
    let args = args.clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        read_to_end(&args, &topic, &partitions, Duration::from_secs(60), |r| {
            out.push(r)
        })
        .expect("read topic");
        out
    })
    .await
    .expect("reader thread")
}

/// Polls `check` on `topic`'s records until it returns true or `timeout` passes; returns
/// the last records read.
pub async fn wait_for_records(
    args: &KafkaArgs,
    topic: &str,
    timeout: Duration,
    check: impl Fn(&[Record]) -> bool,
) -> Vec<Record> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let records = read_topic(args, topic).await;
        if check(&records) || tokio::time::Instant::now() > deadline {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The relay's topics under the args' prefix.
pub fn topics(args: &KafkaArgs) -> Topics {
    args.topics()
}

/// Produces many keyed records (murmur2 partitioner) with every one in flight at once,
/// then waits for all acks.
pub async fn produce_many(producer: &FutureProducer, topic: &str, records: &[(Vec<u8>, Vec<u8>)]) {
    let records: Vec<TestRecord> = records
        .iter()
        .map(|(key, value)| TestRecord {
            key: key.clone(),
            partition: None,
            value: Some(value.clone()),
        })
        .collect();
    produce_records(producer, topic, &records).await;
}

/// Sends the stages' logs to the test output (`PUSHRELAY_TEST_LOG` sets the filter,
/// default `warn`). Safe to call from every test.
pub fn init_test_logging() {
    let filter = std::env::var("PUSHRELAY_TEST_LOG").unwrap_or_else(|_| "warn".to_owned());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
}

/// One record for [`produce_records`].
#[derive(Debug, Clone)]
pub struct TestRecord {
    /// Key.
    pub key: Vec<u8>,
    /// Explicit partition, or `None` for the murmur2 partitioner.
    pub partition: Option<i32>,
    /// Value, or `None` for a tombstone.
    pub value: Option<Vec<u8>>,
}

/// Produces records (explicit partitions and tombstones allowed) with all of them in
/// flight at once, then waits for every ack.
pub async fn produce_records(producer: &FutureProducer, topic: &str, records: &[TestRecord]) {
    let mut pending = Vec::with_capacity(records.len());
    for r in records {
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(topic).key(r.key.as_slice());
        if let Some(value) = &r.value {
            record = record.payload(value.as_slice());
        }
        if let Some(partition) = r.partition {
            record = record.partition(partition);
        }
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push(delivery);
                    break;
                }
                Err((_, returned)) => {
                    record = returned;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }
    for delivery in pending {
        delivery
            .await
            .expect("delivery future")
            .map_err(|(err, _)| err)
            .expect("test record acknowledged");
    }
}

/// The sum of `group`'s committed offsets over `partitions` partitions of `topic`
/// (load harnesses wait for it to reach what they produced). Blocking.
pub fn committed_offsets(brokers: &str, group: &str, topic: &str, partitions: i32) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .expect("offsets client");
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets")
        .elements()
        .iter()
        .map(|e| match e.offset() {
            rdkafka::Offset::Offset(n) => n,
            _ => 0,
        })
        .sum()
}

/// A stage binary run as a child process against a test broker, killed when dropped so
/// a failing test leaves nothing running.
#[derive(Debug)]
pub struct StageProcess(Option<std::process::Child>);

impl StageProcess {
    /// Starts `binary` with the broker, topic prefix, partitions and pass-through
    /// properties of `kafka`, its admin server on a free port, and `env`.
    pub fn spawn(binary: &str, kafka: &KafkaArgs, env: &[(&str, String)]) -> Self {
        Self::spawn_with_args(binary, &[], kafka, env)
    }

    /// [`StageProcess::spawn`] with command-line arguments (a subcommand).
    pub fn spawn_with_args(
        binary: &str,
        args: &[&str],
        kafka: &KafkaArgs,
        env: &[(&str, String)],
    ) -> Self {
        let properties: Vec<String> = kafka
            .properties
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let mut command = std::process::Command::new(binary);
        command
            .args(args)
            .env("PUSHRELAY_BROKERS", &kafka.brokers)
            .env("PUSHRELAY_TOPIC_PREFIX", &kafka.topic_prefix)
            .env(
                "PUSHRELAY_PARTITIONS",
                kafka.bootstrap.partitions.to_string(),
            )
            .env("PUSHRELAY_KAFKA_PROPERTIES", properties.join(","))
            .env("PUSHRELAY_ADMIN_ADDR", "127.0.0.1:0")
            .stdin(std::process::Stdio::null());
        for (key, value) in env {
            command.env(key, value);
        }
        Self(Some(command.spawn().expect("the stage binary starts")))
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, std::process::Child::id)
    }

    /// SIGKILL, and wait for it.
    pub fn sigkill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then its exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let mut child = self.0.take().expect("running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        child.wait().expect("exit status")
    }
}

impl Drop for StageProcess {
    fn drop(&mut self) {
        self.sigkill();
    }
}
