//! `pushrelay`: the relay's stages in one process, for trying it out.
//!
//! `pushrelay dev` starts an embedded broker (librdkafka's in-process mock cluster),
//! registers a demo tenant with a freshly generated certificate, runs all four stages
//! (ingress, auth-and-coalesce, fan-out, delivery with the `log` provider) and prints
//! ready-to-paste `curl` commands, so the whole path is visible in the log. `--brokers`
//! runs the same against an external Kafka.
//!
//! `pushrelay ingress|auth-coalesce|fanout|deliver` runs one stage, exactly as its own
//! binary does (same flags and environment), for images that ship a single binary.

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pushrelay_auth::{KeyCredential, SigningKey, mint_token, thumbprint};
use pushrelay_auth_coalesce::StageArgs;
use pushrelay_kafka::{FollowEvent, KafkaArgs, TopicFollower, now_ms};
use pushrelay_proto::Message;
use pushrelay_proto::v1::{MailboxChange, Tenant, UnreadCount};
use pushrelay_telemetry::{AdminArgs, Health, LogArgs};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// mimalloc, as in every relay binary: the stages allocate and free a few small strings
/// per record across threads, which glibc's allocator serves markedly slower.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "pushrelay",
    version,
    about = "The pushrelay push-notification relay"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every stage in one process with a demo tenant (embedded broker by default).
    Dev(DevArgs),
    /// Run the ingress alone (the same as `pushrelay-ingress`).
    Ingress {
        #[command(flatten)]
        args: pushrelay_ingress::IngressArgs,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Run the auth-and-coalesce stage alone (the same as `pushrelay-auth`).
    AuthCoalesce {
        #[command(flatten)]
        args: StageArgs,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Run the fan-out stage alone (the same as `pushrelay-fanout`).
    Fanout {
        #[command(flatten)]
        args: pushrelay_fanout::FanoutArgs,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Run the delivery stage alone (the same as `pushrelay-deliver`).
    Deliver {
        #[command(flatten)]
        args: pushrelay_deliver::DeliverArgs,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Debug, clap::Args)]
struct DevArgs {
    /// Use this Kafka instead of the embedded broker (comma-separated host:port).
    #[arg(long, env = "PUSHRELAY_BROKERS")]
    brokers: Option<String>,
    /// Address of the admin server (`/metrics`, `/healthz`, `/readyz`).
    #[arg(long, env = "PUSHRELAY_ADMIN_ADDR", default_value = "127.0.0.1:9090")]
    admin_addr: std::net::SocketAddr,
    /// Address of the public API (the ingress).
    #[arg(long, env = "PUSHRELAY_LISTEN", default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// Domain of the demo tenant.
    #[arg(long, default_value = "fabrikam.example")]
    tenant: String,
    /// Also change a demo mailbox's unread count this often, milliseconds (0: never).
    #[arg(long, default_value_t = 0)]
    demo_interval_ms: u64,
}

const DEV_PARTITIONS: i32 = 4;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    pushrelay_telemetry::init_logging(&cli.log).map_err(anyhow::Error::msg)?;
    match cli.command {
        Command::Dev(args) => dev(args).await,
        Command::Ingress { args, admin } => {
            pushrelay_telemetry::run_service(&admin, exit_at_once, |health, shutdown| {
                pushrelay_ingress::run(args, health, shutdown)
            })
            .await
            .context("ingress failed")
        }
        Command::AuthCoalesce { args, admin } => {
            pushrelay_telemetry::run_service(&admin, exit_at_once, |health, shutdown| {
                pushrelay_auth_coalesce::run(args, health, shutdown)
            })
            .await
            .context("auth-coalesce stage failed")
        }
        Command::Fanout { args, admin } => {
            pushrelay_telemetry::run_service(&admin, exit_at_once, |health, shutdown| {
                pushrelay_fanout::run(args, health, shutdown)
            })
            .await
            .context("fanout stage failed")
        }
        Command::Deliver { args, admin } => {
            pushrelay_telemetry::run_service(&admin, exit_at_once, |health, shutdown| {
                pushrelay_deliver::run(args, health, shutdown)
            })
            .await
            .context("delivery stage failed")
        }
    }
}

/// A second signal while a stage drains: stop draining and exit.
fn exit_at_once() {
    std::process::exit(130);
}

async fn dev(args: DevArgs) -> anyhow::Result<()> {
    let mock = match &args.brokers {
        Some(_) => None,
        None => Some(MockCluster::new(1).context("cannot start the embedded broker")?),
    };
    let brokers = match &mock {
        Some(mock) => mock.bootstrap_servers(),
        None => args.brokers.clone().unwrap_or_default(),
    };
    let mut kafka = KafkaArgs::new(&brokers);
    kafka.bootstrap.partitions = DEV_PARTITIONS;
    let topics = kafka.topics();
    match &mock {
        // The mock brokers do not implement CreateTopics; they have their own call.
        Some(mock) => {
            for spec in topics.specs(kafka.token_topic_retention()) {
                mock.create_topic(&spec.name, DEV_PARTITIONS, 1)
                    .with_context(|| format!("creating {}", spec.name))?;
            }
        }
        None => {
            pushrelay_kafka::ensure_topics(&kafka, &topics.specs(kafka.token_topic_retention()))
                .await
                .context("creating the relay's topics")?
        }
    }

    let demo = DemoTenant::generate(&args.tenant)?;
    let producer: FutureProducer = kafka.producer_config().create().context("producer")?;
    send(
        &producer,
        &topics.tenants,
        demo.id.as_bytes(),
        &demo.record()?.encode_to_vec(),
    )
    .await?;

    let shutdown = CancellationToken::new();
    let health = Health::new();
    let (admin_addr, admin) = pushrelay_telemetry::serve_admin(
        args.admin_addr,
        health.clone(),
        pushrelay_telemetry::metrics_handle(),
        shutdown.clone(),
    )
    .await
    .with_context(|| format!("cannot bind the admin server to {}", args.admin_addr))?;
    let mut stage_args = StageArgs::new(kafka.clone());
    stage_args.group = "pushrelay-dev-auth-coalesce".into();
    let stage = tokio::spawn(pushrelay_auth_coalesce::run(
        stage_args,
        health.clone(),
        shutdown.clone(),
    ));

    let mut fanout_args = pushrelay_fanout::FanoutArgs::new(kafka.clone());
    fanout_args.group = "pushrelay-dev-fanout".into();
    let fanout = tokio::spawn(pushrelay_fanout::run(
        fanout_args,
        health.clone(),
        shutdown.clone(),
    ));
    // The `log` provider stands in for APNs and FCM: every push is logged.
    let mut deliver_args = pushrelay_deliver::DeliverArgs::new(kafka.clone());
    deliver_args.group = "pushrelay-dev-deliver".into();
    deliver_args.log_provider = true;
    let deliver = tokio::spawn(pushrelay_deliver::run(
        deliver_args,
        health.clone(),
        shutdown.clone(),
    ));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot bind the ingress to {}", args.listen))?;
    let ingress = tokio::spawn(pushrelay_ingress::serve(
        pushrelay_ingress::IngressArgs::new(kafka.clone(), args.listen),
        listener,
        health.clone(),
        shutdown.clone(),
    ));

    let follower = TopicFollower::start(&kafka, &topics.unread_counts, |event| {
        if let FollowEvent::Record(record) = event
            && let Some(value) = record.payload
            && let Ok(count) = UnreadCount::decode(value.as_slice())
        {
            tracing::info!(
                tenant = %count.tenant, mailbox = %count.mailbox, count = count.count,
                sequence = count.sequence, coalesced = count.changes_coalesced,
                latency_ms = now_ms() - count.last_ingress_time_ms,
                "unread count emitted"
            );
        }
    })?;

    // One token for many requests, as a tenant's server does.
    let token = demo.token()?;
    let api = format!("http://{}", args.listen);
    while !health.is_ready() && !stage.is_finished() && !ingress.is_finished() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The connectivity probe through every stage: it also waits for the consumer groups
    // to settle, so the pasted commands below answer at once.
    let files = DemoFiles::write(&demo)?;
    let probe = pushrelay_relayctl::probe::run(&pushrelay_relayctl::probe::ProbeConfig {
        kafka: kafka.clone(),
        ingress: api.clone(),
        tenant: demo.id.clone(),
        issuer: None,
        audience: "pushrelay".into(),
        key: demo.key_pkcs8_der.clone(),
        thumbprint: demo.x5t.clone(),
        mailbox: None,
        timeout: Duration::from_secs(60),
    })
    .await;
    println!();
    println!(
        "pushrelay dev: running on {brokers}{}",
        if mock.is_some() {
            " (embedded broker)"
        } else {
            ""
        }
    );
    println!("  stages   ingress {api}, auth-coalesce, fanout, deliver (log provider)");
    println!("  tenant   {} (certificate x5t {})", demo.id, demo.x5t);
    println!("  admin    http://{admin_addr}/metrics  /healthz  /readyz");
    println!(
        "  probe    {}{}",
        if probe.succeeded {
            "Succeeded"
        } else {
            "Failed: "
        },
        if probe.succeeded {
            format!(
                ", {} ms end to end",
                probe.end_to_end_ms.unwrap_or_default()
            )
        } else {
            probe.error.clone()
        }
    );
    println!("  stop     Ctrl-C (drains and commits)");
    println!();
    println!("1. Subscribe a device to a mailbox (a token valid 12 h is inside):");
    println!();
    println!(
        "curl -sS -X POST {api}/v1/subscriptions -H 'Authorization: Bearer {token}' \\\n  -H 'Content-Type: application/json' \\\n  -d '{{\"mailbox\":\"alice@{}\",\"platform\":\"apns\",\"deviceToken\":\"0123abcd\",\"appId\":\"com.example.mail\"}}'",
        demo.id
    );
    println!();
    println!(
        "2. Send its unread count, then watch the log for \"unread count emitted\" and \"push (log provider)\":"
    );
    println!();
    println!(
        "curl -sS -X POST {api}/v1/notifications -H 'Authorization: Bearer {token}' \\\n  -H 'Content-Type: application/json' \\\n  -d '{{\"notifications\":[{{\"mailbox\":\"alice@{}\",\"unreadCount\":3,\"sequence\":1}}]}}'",
        demo.id
    );
    println!();

    println!("3. Probe every stage end to end, as an operator does:");
    println!();
    println!(
        "cargo run --release --bin relayctl -- probe --tenant {} --ingress {api} \\\n  --key {} --cert {} --brokers {brokers}",
        demo.id,
        files.key.display(),
        files.cert.display()
    );
    println!();

    let signals = pushrelay_telemetry::cancel_on_signal(shutdown.clone());
    tokio::spawn(async move {
        signals.await;
        std::process::exit(130);
    });

    let mailbox = format!("alice@{}", demo.id);
    let mut sequence = 0u64;
    let interval = Duration::from_millis(args.demo_interval_ms.max(1));
    while !shutdown.is_cancelled() && args.demo_interval_ms > 0 && !stage.is_finished() {
        sequence += 1;
        let change = MailboxChange {
            event_id: format!("demo-{sequence}"),
            mailbox: mailbox.clone(),
            unread_count: (sequence % 7) as u32 + 1,
            sequence,
            source_time_ms: now_ms(),
            ingress_time_ms: now_ms(),
            token: token.clone(),
        };
        let key = format!("{}/{mailbox}", demo.id);
        send(
            &producer,
            &topics.mailbox_changes,
            key.as_bytes(),
            &change.encode_to_vec(),
        )
        .await?;
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(interval) => {}
        }
    }
    let result = stage.await.context("stage task")?;
    shutdown.cancel();
    let ingress_result = ingress.await.context("ingress task")?;
    let fanout_result = fanout.await.context("fanout task")?;
    let deliver_result = deliver.await.context("deliver task")?;
    let _ = admin.await;
    tokio::task::spawn_blocking(move || {
        follower.stop();
    })
    .await
    .ok();
    result.context("auth-coalesce stage")?;
    fanout_result.context("fanout stage")?;
    deliver_result.context("delivery stage")?;
    ingress_result.context("ingress")
}

async fn send(
    producer: &FutureProducer,
    topic: &str,
    key: &[u8],
    value: &[u8],
) -> anyhow::Result<()> {
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(value),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(err, _)| err)
        .with_context(|| format!("producing to {topic}"))?;
    Ok(())
}

/// The demo tenant's key and certificate as files, for `relayctl`; removed on exit.
struct DemoFiles {
    dir: std::path::PathBuf,
    key: std::path::PathBuf,
    cert: std::path::PathBuf,
}

impl DemoFiles {
    fn write(demo: &DemoTenant) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("pushrelay-dev-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let key = dir.join("demo-key.der");
        let cert = dir.join("demo-cert.der");
        std::fs::write(&key, &demo.key_pkcs8_der).context("writing the demo key")?;
        std::fs::write(&cert, &demo.certificate_der).context("writing the demo certificate")?;
        Ok(Self { dir, key, cert })
    }
}

impl Drop for DemoFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct DemoTenant {
    id: String,
    key: SigningKey,
    key_pkcs8_der: Vec<u8>,
    certificate_der: Vec<u8>,
    x5t: String,
}

impl DemoTenant {
    fn generate(id: &str) -> anyhow::Result<Self> {
        let key =
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)?;
        let cert = rcgen::CertificateParams::new(vec![id.to_owned()])?.self_signed(&key)?;
        let certificate_der = cert.der().to_vec();
        Ok(Self {
            id: id.to_owned(),
            key: SigningKey::from_pkcs8(&key.serialize_der())?,
            key_pkcs8_der: key.serialize_der(),
            x5t: thumbprint(&certificate_der),
            certificate_der,
        })
    }

    fn issuer(&self) -> String {
        format!("00000002-0000-0ff1-ce00-000000000000@{}", self.id)
    }

    fn record(&self) -> anyhow::Result<Tenant> {
        Ok(Tenant {
            id: self.id.clone(),
            enabled: true,
            issuer: self.issuer(),
            audiences: Vec::new(),
            keys: vec![KeyCredential::from_certificate_der(&self.certificate_der)?.to_proto()],
            metadata_url: String::new(),
            updated_time_ms: now_ms(),
        })
    }

    fn token(&self) -> anyhow::Result<String> {
        let now = now_ms() / 1000;
        let mut header = serde_json::Map::new();
        header.insert("x5t".into(), json!(self.x5t));
        let claims = json!({
            "tid": self.id, "iss": self.issuer(), "aud": "pushrelay",
            "nbf": now - 60, "exp": now + 12 * 3600,
        });
        Ok(mint_token(&self.key, "RS256", &header, &claims)?)
    }
}
