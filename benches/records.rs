//! Protobuf encode and decode of every record the relay writes, at realistic sizes.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use pushrelay_proto::Message;
use pushrelay_proto::v1::{
    DeadLetter, DeliveryReceipt, FeedbackKind, KeyCredential, MailboxChange, Platform, PushRequest,
    Subscription, SubscriptionChange, Tenant, TenantFeedback, UnreadCount,
};

fn round_trip<M: Message + Default>(c: &mut Criterion, name: &str, record: &M) {
    let bytes = record.encode_to_vec();
    println!("{name}: {} bytes", bytes.len());
    c.bench_function(&format!("encode {name}"), |b| {
        b.iter(|| black_box(record).encode_to_vec())
    });
    c.bench_function(&format!("decode {name}"), |b| {
        b.iter(|| M::decode(black_box(bytes.as_slice())).expect("decodes"))
    });
}

fn bench(c: &mut Criterion) {
    let mailbox = "alice.smith@fabrikam.com".to_owned();
    let token = format!("eyJhbGciOiJSUzI1NiIsIng1dCI6Ik{}", "x".repeat(860));
    round_trip(
        c,
        "MailboxChange",
        &MailboxChange {
            event_id: "a3f1c2d4-5e6f-4a7b-8c9d-0e1f2a3b4c5d".into(),
            mailbox: mailbox.clone(),
            unread_count: 17,
            sequence: 1_795_959_185_995,
            source_time_ms: 1_795_959_185_995,
            ingress_time_ms: 1_795_959_185_999,
            token: token.clone(),
        },
    );
    round_trip(
        c,
        "UnreadCount",
        &UnreadCount {
            tenant: "fabrikam.com".into(),
            mailbox: mailbox.clone(),
            count: 17,
            sequence: 1_795_959_185_995,
            changes_coalesced: 3,
            first_ingress_time_ms: 1_795_959_185_700,
            last_ingress_time_ms: 1_795_959_185_999,
            emitted_time_ms: 1_795_959_186_250,
            last_event_id: "a3f1c2d4-5e6f-4a7b-8c9d-0e1f2a3b4c5d".into(),
        },
    );
    round_trip(
        c,
        "SubscriptionChange",
        &SubscriptionChange {
            mailbox: mailbox.clone(),
            platform: Platform::Apns as i32,
            device_token: "a".repeat(64),
            app_id: "com.example.mail".into(),
            token: token.clone(),
            ..SubscriptionChange::default()
        },
    );
    round_trip(
        c,
        "Subscription",
        &Subscription {
            tenant: "fabrikam.com".into(),
            mailbox: mailbox.clone(),
            platform: Platform::Apns as i32,
            device_token: "a".repeat(64),
            app_id: "com.example.mail".into(),
            environment: 1,
            created_time_ms: 1_795_959_185_995,
            expires_time_ms: 1_798_551_185_995,
        },
    );
    round_trip(
        c,
        "PushRequest",
        &PushRequest {
            push_id: "0123456789abcdef0123456789abcdef".into(),
            tenant: "fabrikam.com".into(),
            mailbox: mailbox.clone(),
            platform: Platform::Apns as i32,
            device_token: "a".repeat(64),
            app_id: "com.example.mail".into(),
            environment: 1,
            badge: 17,
            collapse_id: "0123456789abcdef0123456789abcdef".into(),
            expires_time_ms: 1_795_962_786_250,
            priority: 5,
            payload: br#"{"aps":{"badge":17}}"#.to_vec(),
            push_type: "alert".into(),
            ingress_time_ms: 1_795_959_185_999,
            sequence: 1_795_959_185_995,
        },
    );
    round_trip(
        c,
        "DeliveryReceipt",
        &DeliveryReceipt {
            push_id: "0123456789abcdef0123456789abcdef".into(),
            tenant: "fabrikam.com".into(),
            mailbox: mailbox.clone(),
            platform: Platform::Apns as i32,
            outcome: 1,
            provider_status: 200,
            provider_reason: String::new(),
            attempts: 1,
            end_to_end_latency_ms: 402,
            time_ms: 1_795_959_186_401,
        },
    );
    round_trip(
        c,
        "TenantFeedback",
        &TenantFeedback {
            tenant: "fabrikam.com".into(),
            kind: FeedbackKind::TokenRejected as i32,
            reason: "expired".into(),
            message: "the token expired at 2026-11-29T13:00:00Z".into(),
            mailbox: mailbox.clone(),
            event_id: "a3f1c2d4-5e6f-4a7b-8c9d-0e1f2a3b4c5d".into(),
            thumbprint: "iFGb3N1RpSo86RGtPqS6GCYLDM8".into(),
            algorithm: "RS256".into(),
            time_ms: 1_795_959_186_401,
            ..TenantFeedback::default()
        },
    );
    round_trip(
        c,
        "DeadLetter",
        &DeadLetter {
            stage: "auth-coalesce".into(),
            source_topic: "pushrelay.mailbox-changes".into(),
            source_partition: 7,
            source_offset: 123_456_789,
            reason: "undecodable".into(),
            message: "not a MailboxChange: invalid wire type".into(),
            original_key: b"fabrikam.com/alice.smith@fabrikam.com".to_vec(),
            original_value: Vec::new(),
            original_value_size: 912,
            original_value_sha256: vec![7; 32],
            time_ms: 1_795_959_186_401,
        },
    );
    round_trip(
        c,
        "Tenant",
        &Tenant {
            id: "fabrikam.com".into(),
            enabled: true,
            issuer: "00000002-0000-0ff1-ce00-000000000000@fabrikam.com".into(),
            audiences: Vec::new(),
            keys: vec![KeyCredential {
                thumbprint: "iFGb3N1RpSo86RGtPqS6GCYLDM8".into(),
                certificate_der: vec![0x30; 780],
                not_before_ms: 1_795_959_185_995,
                not_after_ms: 1_859_031_185_995,
                ..KeyCredential::default()
            }],
            metadata_url: String::new(),
            updated_time_ms: 1_795_959_185_995,
        },
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(std::time::Duration::from_secs(2)).warm_up_time(std::time::Duration::from_millis(500));
    targets = bench
}
criterion_main!(benches);
