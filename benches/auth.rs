//! Token validation: the pure validator on a fresh RS256-2048 token and on a PS256 one,
//! the parse alone, and the authenticator's cached-token hit (the stage's hot path).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{Criterion, criterion_group, criterion_main};
use pushrelay_auth::{
    AuthConfig, Authenticator, KeyCredential, SigningKey, TenantEntry, TenantRegistry,
    UnverifiedToken, ValidationConfig, mint_token, thumbprint, validate_token,
};
use pushrelay_proto::v1;
use serde_json::{Map, json};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The tenant record, an RS256 token and a PS256 token of the same claims.
fn setup() -> (v1::Tenant, String, String) {
    let key = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .expect("rsa");
    let cert = rcgen::CertificateParams::new(vec!["fabrikam.com".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let signing = SigningKey::from_pkcs8(&key.serialize_der()).expect("pkcs8");
    let x5t = thumbprint(cert.der());
    let now = now_ms() / 1000;
    let mut header = Map::new();
    header.insert("x5t".into(), json!(x5t));
    let claims = json!({
        "tid": "fabrikam.com", "iss": "issuer", "aud": "pushrelay",
        "nbf": now - 60, "exp": now + 3600,
        // Exchange-like tokens are ~800 bytes; pad to that size.
        "actor": "00000002-0000-0ff1-ce00-000000000000@fabrikam.com",
        "nameid": "x".repeat(200),
    });
    let token = mint_token(&signing, "RS256", &header, &claims).expect("mint");
    let ps256 = mint_token(&signing, "PS256", &header, &claims).expect("mint PS256");
    let record = v1::Tenant {
        id: "fabrikam.com".into(),
        enabled: true,
        issuer: "issuer".into(),
        keys: vec![
            KeyCredential::from_certificate_der(cert.der())
                .expect("credential")
                .to_proto(),
        ],
        ..Default::default()
    };
    (record, token, ps256)
}

fn bench(c: &mut Criterion) {
    let (record, token, ps256) = setup();
    println!("token size: {} bytes", token.len());
    let entry = TenantEntry::from_proto(&record, 1).expect("entry");
    let config = ValidationConfig::default();
    let now = now_ms();

    c.bench_function("parse token (unverified)", |b| {
        b.iter(|| UnverifiedToken::parse(black_box(&token)).expect("parses"))
    });
    c.bench_function("validate RS256-2048 (no cache)", |b| {
        b.iter(|| {
            let parsed = UnverifiedToken::parse(black_box(&token)).expect("parses");
            validate_token(&parsed, &entry, &config, now).expect("valid")
        })
    });

    let with_ps256 = ValidationConfig {
        algorithms: vec!["RS256".to_owned(), "PS256".to_owned()],
        ..ValidationConfig::default()
    };
    c.bench_function("validate PS256-2048 (no cache)", |b| {
        b.iter(|| {
            let parsed = UnverifiedToken::parse(black_box(&ps256)).expect("parses");
            validate_token(&parsed, &entry, &with_ps256, now).expect("valid")
        })
    });

    let registry = Arc::new(TenantRegistry::new());
    registry
        .apply("fabrikam.com", Some(&record))
        .expect("apply");
    let auth = Authenticator::new(registry, AuthConfig::default());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime
        .block_on(auth.authenticate(&token))
        .expect("first validation");
    c.bench_function("authenticate, cached token hit", |b| {
        b.iter(|| {
            auth.authenticate_cached(black_box(&token), now)
                .expect("cached")
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
