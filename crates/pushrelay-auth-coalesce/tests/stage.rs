//! The auth-and-coalesce stage against a broker: the mock cluster always, the real broker
//! of `PUSHRELAY_TEST_BROKERS` when `scripts/test` started one.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{PARTITIONS, RunningStage, change, key, settled_counts, stage_args};
use pushrelay_proto::Message;
use pushrelay_proto::v1::{DeadLetter, TenantFeedback};
use pushrelay_testkit::{TestBroker, TestTenant, produce, produce_many, producer, read_topic};
use serde_json::json;

const MAILBOXES_PER_TENANT: usize = 500;
const BURST: u64 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_thousand_mailboxes_end_to_end() {
    pushrelay_testkit::init_test_logging();
    let fabrikam = TestTenant::generate("fabrikam.com");
    let contoso = TestTenant::generate("contoso.com");
    for broker in TestBroker::all() {
        eprintln!("-- on the {} broker {}", broker.kind, broker.brokers);
        scenario(&broker, &fabrikam, &contoso).await;
    }
}

async fn scenario(broker: &TestBroker, fabrikam: &TestTenant, contoso: &TestTenant) {
    let kafka = broker.kafka_args("e2e", PARTITIONS);
    let topics = kafka.topics();
    broker.create_all_topics(&kafka).await;
    let producer = producer(&kafka);
    for tenant in [fabrikam, contoso] {
        produce(
            &producer,
            &topics.tenants,
            tenant.id.as_bytes(),
            None,
            Some(&tenant.record().encode_to_vec()),
        )
        .await;
    }
    // Tenant records the registry must refuse: a 1024-bit key, and garbage.
    let weak = include_bytes!("../../pushrelay-auth/testdata/weak-rsa1024.der");
    let weak_tenant = pushrelay_proto::v1::Tenant {
        id: "weak.example".into(),
        enabled: true,
        issuer: "weak".into(),
        keys: vec![pushrelay_proto::v1::KeyCredential {
            certificate_der: weak.to_vec(),
            ..Default::default()
        }],
        ..Default::default()
    };
    produce(
        &producer,
        &topics.tenants,
        b"weak.example",
        None,
        Some(&weak_tenant.encode_to_vec()),
    )
    .await;
    produce(
        &producer,
        &topics.tenants,
        b"garbage.example",
        None,
        Some(&[0xff, 0xff]),
    )
    .await;
    let metrics = pushrelay_telemetry::metrics_handle();
    let stage = RunningStage::start(stage_args(&kafka)).await;

    // A tenant enabled while the stage runs is served without a restart.
    let late = TestTenant::generate("late.example");
    produce(
        &producer,
        &topics.tenants,
        late.id.as_bytes(),
        None,
        Some(&late.record().encode_to_vec()),
    )
    .await;

    // 1,000 mailboxes, three changes each, every request's changes under one token.
    let mut expected: HashMap<String, u32> = HashMap::new();
    let mut records = Vec::new();
    for tenant in [fabrikam, contoso] {
        let token = tenant.token();
        for i in 0..MAILBOXES_PER_TENANT {
            let mailbox = format!("user{i}@{}", tenant.id);
            for sequence in 1..=3u64 {
                let count = (i as u32 * 3 + sequence as u32 * 5) % 97;
                records.push((
                    key(&tenant.id, &mailbox),
                    change(&mailbox, count, sequence, &token),
                ));
                expected.insert(format!("{}/{mailbox}", tenant.id), count);
            }
        }
    }
    let late_token = late.token();
    for i in 0..10 {
        let mailbox = format!("user{i}@{}", late.id);
        records.push((
            key(&late.id, &mailbox),
            change(&mailbox, i + 1, 1, &late_token),
        ));
        expected.insert(format!("{}/{mailbox}", late.id), i + 1);
    }
    // A burst of changes to one mailbox inside the quiet period.
    let fab_token = fabrikam.token();
    let burst_key = format!("{}/burst@{}", fabrikam.id, fabrikam.id);
    for sequence in 1..=BURST {
        let mailbox = format!("burst@{}", fabrikam.id);
        records.push((
            key(&fabrikam.id, &mailbox),
            change(&mailbox, sequence as u32, sequence, &fab_token),
        ));
    }
    expected.insert(burst_key.clone(), BURST as u32);

    // Tokens that must produce nothing.
    let mut forged_claims = fabrikam.claims();
    forged_claims["sub"] = json!("forger");
    let forged = {
        // Signed with contoso's key while naming fabrikam's certificate.
        let mut header = serde_json::Map::new();
        header.insert("x5t".into(), json!(fabrikam.x5t));
        pushrelay_auth::mint_token(&contoso.key, "RS256", &header, &forged_claims).expect("mint")
    };
    let mut expired_claims = fabrikam.claims();
    expired_claims["nbf"] = json!(pushrelay_testkit::now_secs() - 7200);
    expired_claims["exp"] = json!(pushrelay_testkit::now_secs() - 3600);
    let expired = fabrikam.token_with(&expired_claims);
    let mut unknown_claims = fabrikam.claims();
    unknown_claims["tid"] = json!("unknown.example");
    let unknown = fabrikam.token_with(&unknown_claims);
    let rejected = [
        (
            key(&fabrikam.id, "forged@fabrikam.com"),
            change("forged@fabrikam.com", 5, 1, &forged),
        ),
        (
            key(&fabrikam.id, "expired@fabrikam.com"),
            change("expired@fabrikam.com", 5, 1, &expired),
        ),
        (
            key("unknown.example", "x@unknown.example"),
            change("x@unknown.example", 5, 1, &unknown),
        ),
        // Contoso's valid token used under a fabrikam key.
        (
            key(&fabrikam.id, "victim@fabrikam.com"),
            change("victim@fabrikam.com", 66, 1, &contoso.token()),
        ),
    ];
    records.extend(rejected.iter().cloned());
    // Undecodable records.
    let garbage: Vec<(Vec<u8>, Vec<u8>)> = (0..5)
        .map(|i| {
            (
                key(&fabrikam.id, &format!("garbage{i}@fabrikam.com")),
                vec![0xff, 0x01, i as u8, 0xff],
            )
        })
        .collect();
    records.extend(garbage.iter().cloned());
    produce_many(&producer, &topics.mailbox_changes, &records).await;

    // The extra wait gives the stage time to emit anything it should not have.
    let by_key = settled_counts(
        &kafka,
        &expected,
        Duration::from_secs(90),
        Duration::from_millis(1500),
        broker.kind,
    )
    .await;

    for (key, values) in &by_key {
        let (tenant, _) = key.split_once('/').expect("tenant/mailbox key");
        assert!(
            expected.contains_key(key),
            "[{}] unexpected output key {key}",
            broker.kind
        );
        for value in values {
            assert_eq!(
                value.tenant, tenant,
                "[{}] tenant field matches the key",
                broker.kind
            );
            assert_eq!(format!("{}/{}", value.tenant, value.mailbox), *key);
        }
        let sequences: Vec<u64> = values.iter().map(|v| v.sequence).collect();
        assert!(
            sequences.windows(2).all(|w| w[0] < w[1]),
            "[{}] {key}: sequences must only grow: {sequences:?}",
            broker.kind
        );
        assert_eq!(values.last().map(|v| v.count), expected.get(key).copied());
    }
    assert_eq!(
        by_key.len(),
        expected.len(),
        "[{}] one output key per mailbox",
        broker.kind
    );
    let burst = &by_key[&burst_key];
    assert_eq!(
        burst.len(),
        1,
        "[{}] a burst inside the quiet period gives one output",
        broker.kind
    );
    assert_eq!(
        (burst[0].count, burst[0].changes_coalesced),
        (BURST as u32, BURST as u32)
    );

    // Every undecodable record is in the dead letters, without its value.
    let letters: Vec<DeadLetter> = read_topic(&kafka, &topics.dead_letters)
        .await
        .iter()
        .map(|r| DeadLetter::decode(r.payload.as_deref().unwrap_or_default()).expect("DeadLetter"))
        .collect();
    let garbage_keys: HashSet<Vec<u8>> = garbage.iter().map(|(k, _)| k.clone()).collect();
    let lettered: HashSet<Vec<u8>> = letters
        .iter()
        .filter(|l| l.reason == "undecodable" && l.source_topic == topics.mailbox_changes)
        .map(|l| l.original_key.clone())
        .collect();
    assert_eq!(
        lettered, garbage_keys,
        "[{}] every undecodable record is dead-lettered",
        broker.kind
    );
    assert!(
        letters
            .iter()
            .filter(|l| l.source_topic == topics.mailbox_changes)
            .all(|l| l.original_value.is_empty()),
        "no token-topic value is copied"
    );
    let refused_tenants: HashSet<Vec<u8>> = letters
        .iter()
        .filter(|l| l.source_topic == topics.tenants)
        .map(|l| l.original_key.clone())
        .collect();
    assert_eq!(
        refused_tenants,
        HashSet::from([b"weak.example".to_vec(), b"garbage.example".to_vec()]),
        "[{}] refused tenant records are dead-lettered",
        broker.kind
    );

    // Every rejection reached the tenant feedback, with its reason.
    let feedback: Vec<(Vec<u8>, TenantFeedback)> = read_topic(&kafka, &topics.tenant_feedback)
        .await
        .iter()
        .map(|r| {
            let value =
                TenantFeedback::decode(r.payload.as_deref().unwrap_or_default()).expect("feedback");
            (r.key.clone().unwrap_or_default(), value)
        })
        .collect();
    let reasons: HashMap<String, (String, String)> = feedback
        .iter()
        .map(|(k, f)| {
            (
                f.mailbox.clone(),
                (f.reason.clone(), String::from_utf8_lossy(k).into_owned()),
            )
        })
        .collect();
    assert_eq!(reasons["forged@fabrikam.com"].0, "bad_signature");
    assert_eq!(reasons["expired@fabrikam.com"].0, "expired");
    assert_eq!(reasons["x@unknown.example"].0, "unknown_tenant");
    assert_eq!(
        reasons["victim@fabrikam.com"],
        ("key_tenant_mismatch".to_owned(), contoso.id.clone()),
        "[{}] the cross-tenant write is reported to the tenant that made it",
        broker.kind
    );
    let rendered = metrics.render();
    for name in [
        "pushrelay_auth_coalesce_records_total",
        "pushrelay_auth_coalesce_emitted_total",
        "pushrelay_auth_tokens_total",
        "pushrelay_tenant_registry_tenants",
    ] {
        assert!(rendered.contains(name), "/metrics exports {name}");
    }
    stage.stop().await;
}

/// Every change under its own token: each is checked off the stage's loop, several at
/// once, and a window of 8 keeps at most 8 records queued behind the checks. Refused and
/// undecodable records sit between them. Counts must still come out in input order (the
/// second change of a mailbox wins) and nothing may stall when the window is full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_tokens_are_checked_in_parallel_and_applied_in_order() {
    pushrelay_testkit::init_test_logging();
    let fabrikam = TestTenant::generate("fabrikam.com");
    for broker in TestBroker::all() {
        let kafka = broker.kafka_args("fresh", PARTITIONS);
        let topics = kafka.topics();
        broker.create_all_topics(&kafka).await;
        let producer = producer(&kafka);
        pushrelay_testkit::register_tenant(&producer, &kafka, &fabrikam).await;
        let mut args = common::stage_args(&kafka);
        args.verify_window = 8;
        let stage = RunningStage::start(args).await;

        let mut expected = HashMap::new();
        let mut records = Vec::new();
        let mut expired_claims = fabrikam.claims();
        expired_claims["nbf"] = json!(pushrelay_testkit::now_secs() - 7200);
        expired_claims["exp"] = json!(pushrelay_testkit::now_secs() - 3600);
        for i in 0..150u32 {
            let mailbox = format!("fresh{i}@{}", fabrikam.id);
            for sequence in 1..=2u64 {
                let mut claims = fabrikam.claims();
                claims["jti"] = json!(format!("{i}-{sequence}"));
                let token = fabrikam.token_with(&claims);
                let count = i * 2 + sequence as u32;
                records.push((
                    key(&fabrikam.id, &mailbox),
                    change(&mailbox, count, sequence, &token),
                ));
            }
            expected.insert(format!("{}/{mailbox}", fabrikam.id), i * 2 + 2);
            if i % 25 == 0 {
                let refused = format!("expired{i}@{}", fabrikam.id);
                let token = fabrikam.token_with(&expired_claims);
                records.push((key(&fabrikam.id, &refused), change(&refused, 1, 1, &token)));
                records.push((key(&fabrikam.id, &mailbox), vec![0xff, 0x01, 0xff]));
            }
        }
        produce_many(&producer, &topics.mailbox_changes, &records).await;
        let by_key = settled_counts(
            &kafka,
            &expected,
            Duration::from_secs(90),
            Duration::from_millis(500),
            broker.kind,
        )
        .await;
        assert_eq!(
            by_key.len(),
            expected.len(),
            "[{}] nothing from refused records",
            broker.kind
        );
        let feedback = read_topic(&kafka, &topics.tenant_feedback).await;
        assert_eq!(
            feedback.len(),
            6,
            "[{}] every expired token is reported",
            broker.kind
        );
        let letters = read_topic(&kafka, &topics.dead_letters).await;
        assert_eq!(
            letters.len(),
            6,
            "[{}] every undecodable record is dead-lettered",
            broker.kind
        );
        stage.stop().await;
    }
}
