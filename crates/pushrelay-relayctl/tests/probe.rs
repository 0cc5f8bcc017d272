//! `relayctl probe` against the four stages running on a broker (mock cluster always, the
//! real broker when `PUSHRELAY_TEST_BROKERS` is set): Succeeded with every hop timed; with
//! the fan-out stage stopped, Failed naming it within the timeout; a disabled tenant and an
//! unreachable broker are named too.

use std::time::Duration;

use pushrelay_kafka::KafkaArgs;
use pushrelay_proto::Message;
use pushrelay_relayctl::probe::{self, ProbeConfig};
use pushrelay_telemetry::Health;
use pushrelay_testkit::{TestBroker, TestTenant, produce, producer};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const PARTITIONS: i32 = 4;

struct Relay {
    ingress: String,
    shutdown: CancellationToken,
    fanout_stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

async fn start_relay(kafka: &KafkaArgs) -> Relay {
    let shutdown = CancellationToken::new();
    let fanout_stop = shutdown.child_token();
    let health = Health::new();
    let mut tasks = Vec::new();
    let mut auth = pushrelay_auth_coalesce::StageArgs::new(kafka.clone());
    auth.group = format!("{}auth", kafka.topic_prefix);
    let run = pushrelay_auth_coalesce::run(auth, health.clone(), shutdown.clone());
    tasks.push(tokio::spawn(
        async move { run.await.expect("auth-coalesce") },
    ));
    let mut fanout = pushrelay_fanout::FanoutArgs::new(kafka.clone());
    fanout.group = format!("{}fanout", kafka.topic_prefix);
    let run = pushrelay_fanout::run(fanout, health.clone(), fanout_stop.clone());
    tasks.push(tokio::spawn(async move { run.await.expect("fanout") }));
    let mut deliver = pushrelay_deliver::DeliverArgs::new(kafka.clone());
    deliver.group = format!("{}deliver", kafka.topic_prefix);
    let run = pushrelay_deliver::run(deliver, health.clone(), shutdown.clone());
    tasks.push(tokio::spawn(async move { run.await.expect("deliver") }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let run = pushrelay_ingress::serve(
        pushrelay_ingress::IngressArgs::new(kafka.clone(), addr),
        listener,
        health.clone(),
        shutdown.clone(),
    );
    tasks.push(tokio::spawn(async move { run.await.expect("ingress") }));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !health.is_ready() {
        assert!(Instant::now() < deadline, "stages not ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Relay {
        ingress: format!("http://{addr}"),
        shutdown,
        fanout_stop,
        tasks,
    }
}

fn config(kafka: &KafkaArgs, relay: &Relay, tenant: &TestTenant, timeout: Duration) -> ProbeConfig {
    ProbeConfig {
        kafka: kafka.clone(),
        ingress: relay.ingress.clone(),
        tenant: tenant.id.clone(),
        issuer: None,
        audience: "pushrelay".into(),
        key: tenant.key_pkcs8_der.clone(),
        thumbprint: tenant.x5t.clone(),
        mailbox: None,
        timeout,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_succeeds_through_every_stage_and_names_the_one_that_is_down() {
    pushrelay_testkit::init_test_logging();
    for broker in TestBroker::all() {
        eprintln!("-- on the {} broker {}", broker.kind, broker.brokers);
        scenario(&broker).await;
    }
}

async fn scenario(broker: &TestBroker) {
    let kind = broker.kind;
    let kafka = broker.kafka_args("probe", PARTITIONS);
    broker.create_all_topics(&kafka).await;
    let topics = kafka.topics();
    let tenant = TestTenant::generate("probe.fabrikam.com");
    let producer = producer(&kafka);
    let mut record = tenant.record();
    produce(
        &producer,
        &topics.tenants,
        tenant.id.as_bytes(),
        None,
        Some(&record.encode_to_vec()),
    )
    .await;
    let relay = start_relay(&kafka).await;

    // The CLI, as an operator runs it: the first probe also waits for the consumer groups.
    let dir = std::env::temp_dir().join(format!("pushrelay-probe-{kind}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("key.der"), &tenant.key_pkcs8_der).expect("key");
    std::fs::write(dir.join("cert.der"), &tenant.certificate_der).expect("cert");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_relayctl"));
    command
        .args([
            "probe",
            "--tenant",
            &tenant.id,
            "--ingress",
            &relay.ingress,
            "--timeout",
            "60s",
        ])
        .arg("--key")
        .arg(dir.join("key.der"))
        .arg("--cert")
        .arg(dir.join("cert.der"))
        .args([
            "--brokers",
            &kafka.brokers,
            "--topic-prefix",
            &kafka.topic_prefix,
        ]);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("relayctl runs");
    let printed = String::from_utf8_lossy(&output.stdout);
    eprintln!(
        "[{kind}] relayctl probe:\n{printed}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "[{kind}] exit status {}",
        output.status
    );
    assert!(
        printed.starts_with("ResultType: Succeeded\nError: \nException: \n"),
        "[{kind}] {printed}"
    );
    for stage in ["ingress", "auth-coalesce", "fanout", "deliver"] {
        assert!(
            printed.contains(&format!("  {stage} ")),
            "[{kind}] {stage} timed: {printed}"
        );
    }
    assert!(printed.contains("EndToEndLatency: "), "[{kind}]");

    // Warm: the library call reports the same.
    let report = probe::run(&config(&kafka, &relay, &tenant, Duration::from_secs(30))).await;
    assert!(report.succeeded, "[{kind}] {report}");
    assert_eq!(report.hops.len(), 4);
    let end_to_end = report.end_to_end_ms.expect("latency");
    eprintln!(
        "[{kind}] warm probe: {end_to_end} ms end to end, hops {:?}",
        report.hops
    );

    // The fan-out stops: the probe fails naming it, within its timeout.
    relay.fanout_stop.cancel();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let report = probe::run(&config(&kafka, &relay, &tenant, Duration::from_secs(8))).await;
    assert!(!report.succeeded, "[{kind}] {report}");
    assert_eq!(
        report.exception, "StageTimeout: fanout",
        "[{kind}] {report}"
    );
    assert!(report.error.contains("fanout"), "[{kind}] {report}");
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "[{kind}] the probe keeps to its timeout"
    );
    let json = report.to_json();
    assert_eq!(json["resultType"], "Failed");

    // A disabled tenant is named before anything is sent.
    record.enabled = false;
    produce(
        &producer,
        &topics.tenants,
        tenant.id.as_bytes(),
        None,
        Some(&record.encode_to_vec()),
    )
    .await;
    let report = probe::run(&config(&kafka, &relay, &tenant, Duration::from_secs(8))).await;
    assert_eq!(report.exception, "TenantDisabled", "[{kind}] {report}");

    relay.shutdown.cancel();
    for task in relay.tasks {
        task.await.expect("stage task");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_unreachable_broker_is_named() {
    let tenant = TestTenant::generate("probe.contoso.com");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let mut kafka = KafkaArgs::new(format!("127.0.0.1:{port}"));
    kafka.properties = vec![("socket.connection.setup.timeout.ms".into(), "1000".into())];
    let config = ProbeConfig {
        kafka,
        ingress: "http://127.0.0.1:9".into(),
        tenant: tenant.id.clone(),
        issuer: None,
        audience: "pushrelay".into(),
        key: tenant.key_pkcs8_der.clone(),
        thumbprint: tenant.x5t.clone(),
        mailbox: None,
        timeout: Duration::from_secs(5),
    };
    let report = probe::run(&config).await;
    assert!(!report.succeeded);
    assert_eq!(report.exception, "BrokerUnreachable", "{report}");
    assert!(
        report
            .to_string()
            .starts_with("ResultType: Failed\nError: the broker 127.0.0.1:"),
        "{report}"
    );
}
