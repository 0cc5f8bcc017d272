//! The end-to-end connectivity probe (the counterpart of Exchange's
//! Test-PushNotificationProxy): a synthetic notification for a probe mailbox with a `PROBE`
//! subscription goes ingress → auth-coalesce → fan-out → delivery, and the probe waits for
//! its delivery receipt, timing every hop from the records it sees on the way.
//!
//! Before sending, it checks what it can name precisely: the broker answers, the tenant
//! exists and is enabled, and a key matching the signing certificate is within its
//! validity window. While waiting, a token rejection reported on `tenant-feedback` ends the
//! probe with the reason; a missing hop names the stage that did not answer.

use std::fmt;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use pushrelay_auth::{SigningKey, mint_token, thumbprint};
use pushrelay_kafka::{
    FollowEvent, KafkaArgs, TopicFollower, high_watermarks, murmur2_partition, now_ms,
    partition_count,
};
use pushrelay_proto::Message;
use pushrelay_proto::keys::{mailbox_key, push_key};
use pushrelay_proto::v1::{
    DeliveryOutcome, DeliveryReceipt, FeedbackKind, Platform, PushRequest, Tenant, TenantFeedback,
    UnreadCount,
};
use serde_json::{Value, json};

/// What the probe needs.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// The relay's Kafka (the probe reads the stages' topics).
    pub kafka: KafkaArgs,
    /// The ingress base URL, e.g. `http://127.0.0.1:8080`.
    pub ingress: String,
    /// The tenant probed.
    pub tenant: String,
    /// Its token issuer (`iss`); `None`: the registered tenant's.
    pub issuer: Option<String>,
    /// Audience of the token.
    pub audience: String,
    /// PKCS#8 private key (PEM or DER) of one of the tenant's certificates.
    pub key: Vec<u8>,
    /// That certificate's thumbprint (`x5t`, base64url SHA-1 of its DER).
    pub thumbprint: String,
    /// The probe mailbox (default `relay-probe@{tenant}`).
    pub mailbox: Option<String>,
    /// How long to wait for the receipt.
    pub timeout: Duration,
}

/// A hop and how long it took, milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// Stage name.
    pub stage: &'static str,
    /// Its time.
    pub ms: i64,
}

/// The probe's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    /// Whether the receipt came back delivered.
    pub succeeded: bool,
    /// What went wrong, for a person.
    pub error: String,
    /// The cause, short and stable (`TenantDisabled`, `StageTimeout: fanout`, ...).
    pub exception: String,
    /// Tenant probed.
    pub tenant: String,
    /// Mailbox used.
    pub mailbox: String,
    /// The hops that answered, in order.
    pub hops: Vec<Hop>,
    /// From the request to the receipt, milliseconds (when it arrived).
    pub end_to_end_ms: Option<i64>,
}

impl ProbeReport {
    fn failed(
        config: &ProbeConfig,
        mailbox: &str,
        exception: impl Into<String>,
        error: impl Into<String>,
    ) -> Self {
        Self {
            succeeded: false,
            error: error.into(),
            exception: exception.into(),
            tenant: config.tenant.clone(),
            mailbox: mailbox.to_owned(),
            hops: Vec::new(),
            end_to_end_ms: None,
        }
    }

    /// The report as JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "resultType": if self.succeeded { "Succeeded" } else { "Failed" },
            "error": self.error,
            "exception": self.exception,
            "tenant": self.tenant,
            "mailbox": self.mailbox,
            "stages": self.hops.iter().map(|h| json!({"stage": h.stage, "ms": h.ms})).collect::<Vec<_>>(),
            "endToEndLatencyMs": self.end_to_end_ms,
        })
    }
}

impl fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "ResultType: {}",
            if self.succeeded {
                "Succeeded"
            } else {
                "Failed"
            }
        )?;
        writeln!(f, "Error: {}", self.error)?;
        writeln!(f, "Exception: {}", self.exception)?;
        writeln!(f, "Tenant: {}", self.tenant)?;
        writeln!(f, "Mailbox: {}", self.mailbox)?;
        writeln!(f, "Stages:")?;
        for hop in &self.hops {
            writeln!(f, "  {:<14} {:>6} ms", hop.stage, hop.ms)?;
        }
        match self.end_to_end_ms {
            Some(ms) => write!(f, "EndToEndLatency: {ms} ms"),
            None => write!(f, "EndToEndLatency:"),
        }
    }
}

/// A record seen on one of the watched topics.
#[derive(Debug)]
enum Seen {
    Count(UnreadCount),
    Push(PushRequest, i64),
    Receipt(DeliveryReceipt),
    Feedback(TenantFeedback),
}

/// Runs the probe. Never panics; every failure is a `Failed` report.
pub async fn run(config: &ProbeConfig) -> ProbeReport {
    let tenant = config.tenant.to_ascii_lowercase();
    let mailbox = config
        .mailbox
        .clone()
        .unwrap_or_else(|| format!("relay-probe@{tenant}"));
    let started = Instant::now();
    let deadline = started + config.timeout;

    // The broker and the tenant's registration.
    let registered = match tenant_record(config, &tenant, &mailbox).await {
        Ok(record) => record,
        Err(report) => return *report,
    };
    let Some(registered) = registered else {
        return ProbeReport::failed(
            config,
            &mailbox,
            "UnknownTenant",
            format!("tenant {tenant} is not registered with the relay (relayctl tenant enable)"),
        );
    };
    if !registered.enabled {
        return ProbeReport::failed(
            config,
            &mailbox,
            "TenantDisabled",
            format!("tenant {tenant} is disabled (relayctl tenant enable {tenant})"),
        );
    }
    let x5t = config.thumbprint.clone();
    let now = now_ms();
    match registered.keys.iter().find(|k| {
        k.thumbprint == x5t
            || (!k.certificate_der.is_empty() && thumbprint(&k.certificate_der) == x5t)
    }) {
        None => {
            return ProbeReport::failed(
                config,
                &mailbox,
                "UnknownKey",
                format!("no key of tenant {tenant} has thumbprint {x5t} (relayctl key add)"),
            );
        }
        Some(key) if key.not_after_ms > 0 && key.not_after_ms < now => {
            return ProbeReport::failed(
                config,
                &mailbox,
                "KeyExpired",
                format!(
                    "the key {x5t} of tenant {tenant} expired at {}",
                    crate::ops::format_ms(key.not_after_ms)
                ),
            );
        }
        Some(key) if key.not_before_ms > now => {
            return ProbeReport::failed(
                config,
                &mailbox,
                "KeyNotYetValid",
                format!(
                    "the key {x5t} of tenant {tenant} is valid from {}",
                    crate::ops::format_ms(key.not_before_ms)
                ),
            );
        }
        Some(_) => {}
    }
    let token = match probe_token(config, &registered, &x5t) {
        Ok(token) => token,
        Err(err) => return ProbeReport::failed(config, &mailbox, "SigningFailed", err),
    };

    // Watch the hops from their current ends.
    let device = format!("probe-{:x}", now_ms());
    let (seen_tx, seen) = std_mpsc::channel::<Seen>();
    let followers = match watch(config, &tenant, &mailbox, &device, seen_tx).await {
        Ok(followers) => followers,
        Err(err) => {
            return ProbeReport::failed(
                config,
                &mailbox,
                "BrokerUnreachable",
                format!("cannot read the relay's topics: {err}"),
            );
        }
    };

    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(http) => http,
        Err(err) => return ProbeReport::failed(config, &mailbox, "HttpClient", err.to_string()),
    };
    let base = config.ingress.trim_end_matches('/');
    let subscription = json!({"mailbox": mailbox, "platform": "probe", "deviceToken": device, "appId": "pushrelay.probe"});
    let report = async {
        if let Err((exception, error)) = post(&http, &format!("{base}/v1/subscriptions"), &token, &subscription).await {
            return ProbeReport::failed(config, &mailbox, exception, error);
        }
        // The subscription reaches the fan-out through auth-coalesce; a count that arrives
        // first finds no device, so the notification is repeated (with a new count) until
        // a push shows up.
        let mut hops = Hops::default();
        let mut last_sent: Option<Instant> = None;
        let mut attempt = 0u64;
        loop {
            let resend = hops.push.is_none()
                && last_sent.is_none_or(|at| at.elapsed() >= Duration::from_secs(3));
            if resend {
                attempt += 1;
                let sequence = now_ms() as u64;
                let body = json!({"notifications": [{"mailbox": mailbox, "unreadCount": (sequence % 1000) + attempt, "sequence": sequence}]});
                let sent = Instant::now();
                if let Err((exception, error)) = post(&http, &format!("{base}/v1/notifications"), &token, &body).await {
                    return ProbeReport::failed(config, &mailbox, exception, error);
                }
                if last_sent.is_none() {
                    hops.sent = Some((sent, now_ms()));
                    hops.ingress_ms = Some(sent.elapsed().as_millis() as i64);
                }
                last_sent = Some(sent);
            }
            while let Ok(record) = seen.try_recv() {
                if let Some(failure) = hops.see(record, &device) {
                    return ProbeReport::failed(config, &mailbox, failure.0, failure.1);
                }
            }
            if let Some(report) = hops.finished(config, &mailbox) {
                return report;
            }
            if Instant::now() >= deadline {
                let (stage, what) = match (&hops.count, &hops.push) {
                    (None, _) => ("auth-coalesce", "no unread count was emitted for the probe mailbox"),
                    (Some(_), None) => ("fanout", "the unread count was emitted but no push request was made for the probe device"),
                    (Some(_), Some(_)) => ("deliver", "the push request was made but no delivery receipt came back"),
                };
                let mut report = ProbeReport::failed(
                    config,
                    &mailbox,
                    format!("StageTimeout: {stage}"),
                    format!("{what} within {} s: the {stage} stage is down or lagging", config.timeout.as_secs()),
                );
                report.hops = hops.list();
                return report;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    .await;
    // Best effort: the probe subscription is not left behind.
    let _ = http
        .delete(format!("{base}/v1/subscriptions"))
        .bearer_auth(&token)
        .json(&subscription)
        .send()
        .await;
    let _ = tokio::task::spawn_blocking(move || {
        for follower in followers {
            follower.stop();
        }
    })
    .await;
    report
}

/// What has been seen so far.
#[derive(Debug, Default)]
struct Hops {
    /// When the first notification was sent (monotonic, wall clock ms).
    sent: Option<(Instant, i64)>,
    ingress_ms: Option<i64>,
    count: Option<UnreadCount>,
    push: Option<(PushRequest, i64)>,
    /// Receipts for the probe mailbox, kept until the push they answer is known: the
    /// receipts topic may be read before the push-requests topic shows the push.
    receipts: Vec<(DeliveryReceipt, Instant)>,
    receipt: Option<(DeliveryReceipt, Instant)>,
}

impl Hops {
    /// Takes a record in; a token rejection ends the probe.
    fn see(&mut self, seen: Seen, device: &str) -> Option<(String, String)> {
        match seen {
            Seen::Count(count) => {
                if self.count.is_none() {
                    self.count = Some(count);
                }
            }
            Seen::Push(push, timestamp) => {
                if push.device_token == device && self.push.is_none() {
                    self.push = Some((push, timestamp));
                }
            }
            Seen::Receipt(receipt) => self.receipts.push((receipt, Instant::now())),
            Seen::Feedback(feedback) => {
                if feedback.kind == FeedbackKind::TokenRejected as i32 && self.count.is_none() {
                    return Some((
                        format!("TokenRejected: {}", feedback.reason),
                        format!(
                            "auth-coalesce rejected the probe's token: {}",
                            feedback.message
                        ),
                    ));
                }
            }
        }
        if self.receipt.is_none()
            && let Some((push, _)) = &self.push
            && let Some(index) = self
                .receipts
                .iter()
                .position(|(r, _)| r.push_id == push.push_id)
        {
            self.receipt = Some(self.receipts.swap_remove(index));
        }
        None
    }

    fn list(&self) -> Vec<Hop> {
        let mut hops = Vec::new();
        let Some((_, sent_ms)) = self.sent else {
            return hops;
        };
        if let Some(ms) = self.ingress_ms {
            hops.push(Hop {
                stage: "ingress",
                ms,
            });
        }
        let Some(count) = &self.count else {
            return hops;
        };
        let ingress_time = if count.last_ingress_time_ms > 0 {
            count.last_ingress_time_ms
        } else {
            sent_ms
        };
        hops.push(Hop {
            stage: "auth-coalesce",
            ms: (count.emitted_time_ms - ingress_time).max(0),
        });
        let Some((_, pushed_at)) = &self.push else {
            return hops;
        };
        hops.push(Hop {
            stage: "fanout",
            ms: (pushed_at - count.emitted_time_ms).max(0),
        });
        let Some((receipt, _)) = &self.receipt else {
            return hops;
        };
        hops.push(Hop {
            stage: "deliver",
            ms: (receipt.time_ms - pushed_at).max(0),
        });
        hops
    }

    fn finished(&self, config: &ProbeConfig, mailbox: &str) -> Option<ProbeReport> {
        let (receipt, at) = self.receipt.as_ref()?;
        let (sent, _) = self.sent?;
        let delivered = receipt.outcome == DeliveryOutcome::Delivered as i32;
        Some(ProbeReport {
            succeeded: delivered,
            error: if delivered {
                String::new()
            } else {
                format!(
                    "the delivery stage recorded {:?}: {}",
                    DeliveryOutcome::try_from(receipt.outcome)
                        .unwrap_or(DeliveryOutcome::Unspecified),
                    receipt.provider_reason
                )
            },
            exception: if delivered {
                String::new()
            } else {
                "DeliveryFailed".to_owned()
            },
            tenant: config.tenant.clone(),
            mailbox: mailbox.to_owned(),
            hops: self.list(),
            end_to_end_ms: Some(at.duration_since(sent).as_millis() as i64),
        })
    }
}

/// Reads the tenant's record; a broker that does not answer is a `Failed` report.
async fn tenant_record(
    config: &ProbeConfig,
    tenant: &str,
    mailbox: &str,
) -> Result<Option<Tenant>, Box<ProbeReport>> {
    let topic = config.kafka.topics().tenants;
    let reachable = tokio::time::timeout(
        Duration::from_secs(10),
        partition_count(&config.kafka, &topic),
    )
    .await;
    match reachable {
        Ok(Ok(Some(_))) => {}
        Ok(Ok(None)) => {
            return Err(Box::new(ProbeReport::failed(
                config,
                mailbox,
                "MissingTopic",
                format!("topic {topic} does not exist: the relay's topics were not created"),
            )));
        }
        Ok(Err(err)) => {
            return Err(Box::new(ProbeReport::failed(
                config,
                mailbox,
                "BrokerUnreachable",
                format!("the broker {} does not answer: {err}", config.kafka.brokers),
            )));
        }
        Err(_) => {
            return Err(Box::new(ProbeReport::failed(
                config,
                mailbox,
                "BrokerUnreachable",
                format!(
                    "the broker {} did not answer within 10 s",
                    config.kafka.brokers
                ),
            )));
        }
    }
    crate::store::load(&config.kafka)
        .await
        .map(|mut tenants| tenants.remove(tenant))
        .map_err(|err| {
            Box::new(ProbeReport::failed(
                config,
                mailbox,
                "BrokerUnreachable",
                format!("cannot read {topic}: {err:#}"),
            ))
        })
}

fn probe_token(config: &ProbeConfig, tenant: &Tenant, x5t: &str) -> Result<String, String> {
    let key = SigningKey::from_pkcs8(&config.key)
        .map_err(|err| format!("the probe key cannot sign: {err}"))?;
    let alg = match key {
        SigningKey::Ec(_) => "ES256",
        _ => "RS256",
    };
    let mut header = serde_json::Map::new();
    header.insert("x5t".into(), json!(x5t));
    let now = now_ms() / 1000;
    let issuer = config
        .issuer
        .clone()
        .unwrap_or_else(|| tenant.issuer.clone());
    let claims = json!({"tid": tenant.id, "iss": issuer, "aud": config.audience, "nbf": now - 5, "iat": now, "exp": now + 600});
    mint_token(&key, alg, &header, &claims)
        .map_err(|err| format!("the probe key cannot sign: {err}"))
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: &Value,
) -> Result<(), (String, String)> {
    let response = http
        .post(url)
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .map_err(|err| {
            (
                "IngressUnreachable".to_owned(),
                format!("the ingress at {url} does not answer: {err}"),
            )
        })?;
    let status = response.status();
    if status.as_u16() == 202 {
        return Ok(());
    }
    let text = response.text().await.unwrap_or_default();
    Err((
        format!("IngressRefused: {}", status.as_u16()),
        format!("the ingress answered {status} to {url}: {text}"),
    ))
}

/// Follows, from their current ends, the partitions the probe's records will land on.
async fn watch(
    config: &ProbeConfig,
    tenant: &str,
    mailbox: &str,
    device: &str,
    seen: std_mpsc::Sender<Seen>,
) -> Result<Vec<TopicFollower>, String> {
    let kafka = config.kafka.clone();
    let topics = kafka.topics();
    let mailbox_key = mailbox_key(tenant, mailbox);
    let device_key = push_key(Platform::Probe as i32, device);
    let watched = [
        (topics.unread_counts.clone(), mailbox_key.clone()),
        (topics.push_requests.clone(), device_key),
        (topics.delivery_receipts.clone(), mailbox_key.clone()),
        (topics.tenant_feedback.clone(), tenant.to_owned()),
    ];
    let mut placements = Vec::new();
    for (topic, key) in &watched {
        let partitions = partition_count(&kafka, topic)
            .await
            .map_err(|err| err.to_string())?
            .ok_or_else(|| format!("topic {topic} does not exist"))?;
        placements.push((topic.clone(), murmur2_partition(key.as_bytes(), partitions)));
    }
    let expected_mailbox = mailbox.to_owned();
    let expected_tenant = tenant.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut followers = Vec::new();
        for (index, (topic, partition)) in placements.into_iter().enumerate() {
            let end =
                high_watermarks(&kafka, &topic, &[partition]).map_err(|err| err.to_string())?;
            let tx = seen.clone();
            let (mailbox, tenant) = (expected_mailbox.clone(), expected_tenant.clone());
            let follower =
                TopicFollower::start_at(&kafka, &topic, Some(end.as_slice()), move |event| {
                    let FollowEvent::Record(record) = event else {
                        return;
                    };
                    let Some(value) = record.payload.as_deref() else {
                        return;
                    };
                    let seen = match index {
                        0 => UnreadCount::decode(value)
                            .ok()
                            .filter(|c| c.mailbox == mailbox && c.tenant == tenant)
                            .map(Seen::Count),
                        1 => PushRequest::decode(value)
                            .ok()
                            .map(|p| Seen::Push(p, record.timestamp_ms.unwrap_or_else(now_ms))),
                        2 => DeliveryReceipt::decode(value)
                            .ok()
                            .filter(|r| r.mailbox == mailbox)
                            .map(Seen::Receipt),
                        _ => TenantFeedback::decode(value)
                            .ok()
                            .filter(|f| f.tenant == tenant && f.mailbox == mailbox)
                            .map(Seen::Feedback),
                    };
                    if let Some(seen) = seen {
                        let _ = tx.send(seen);
                    }
                })
                .map_err(|err| err.to_string())?;
            followers.push(follower);
        }
        Ok(followers)
    })
    .await
    .map_err(|err| err.to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receipt_read_before_its_push_still_counts() {
        let mut hops = Hops::default();
        let push = PushRequest {
            push_id: "p1".into(),
            device_token: "probe-1".into(),
            ..PushRequest::default()
        };
        let receipt = DeliveryReceipt {
            push_id: "p1".into(),
            outcome: DeliveryOutcome::Delivered as i32,
            ..DeliveryReceipt::default()
        };
        let other = DeliveryReceipt {
            push_id: "someone else's".into(),
            ..DeliveryReceipt::default()
        };
        assert!(hops.see(Seen::Receipt(other), "probe-1").is_none());
        assert!(hops.see(Seen::Receipt(receipt), "probe-1").is_none());
        assert!(
            hops.receipt.is_none(),
            "not matched before the push is known"
        );
        assert!(hops.see(Seen::Push(push, 1), "probe-1").is_none());
        assert_eq!(
            hops.receipt.as_ref().map(|(r, _)| r.push_id.as_str()),
            Some("p1")
        );
    }
}
