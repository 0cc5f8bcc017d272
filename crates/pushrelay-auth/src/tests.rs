//! Every validation rule and the known attacks, on the pure validator and the
//! authenticator (no I/O: tenants are registered in memory).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use pushrelay_proto::v1;
use serde_json::{Map, Value, json};
use std::sync::{Arc, OnceLock};

use crate::*;

const NOW: i64 = 1_800_000_000; // seconds
const NOW_MS: i64 = NOW * 1000;

struct Party {
    id: &'static str,
    key: SigningKey,
    cert_der: Vec<u8>,
    x5t: String,
}

fn rsa_party(id: &'static str) -> Party {
    let key = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .expect("rsa key");
    let mut params = rcgen::CertificateParams::new(vec![id.to_owned()]).expect("params");
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2040, 1, 1);
    let cert = params.self_signed(&key).expect("cert");
    let cert_der = cert.der().to_vec();
    Party {
        id,
        key: SigningKey::from_pkcs8(&key.serialize_der()).expect("pkcs8"),
        x5t: thumbprint(&cert_der),
        cert_der,
    }
}

fn fabrikam() -> &'static Party {
    static P: OnceLock<Party> = OnceLock::new();
    P.get_or_init(|| rsa_party("fabrikam.com"))
}

fn contoso() -> &'static Party {
    static P: OnceLock<Party> = OnceLock::new();
    P.get_or_init(|| rsa_party("contoso.com"))
}

fn issuer(id: &str) -> String {
    format!("issuer@{id}")
}

fn tenant_record(party: &Party) -> v1::Tenant {
    let credential = KeyCredential::from_certificate_der(&party.cert_der)
        .expect("credential")
        .with_key_id(Some(format!("kid-{}", party.id)));
    v1::Tenant {
        id: party.id.to_owned(),
        enabled: true,
        issuer: issuer(party.id),
        audiences: Vec::new(),
        keys: vec![credential.to_proto()],
        metadata_url: String::new(),
        updated_time_ms: 0,
    }
}

fn entry(party: &Party) -> TenantEntry {
    TenantEntry::from_proto(&tenant_record(party), 1).expect("entry")
}

fn claims(party: &Party) -> Value {
    json!({
        "tid": party.id,
        "iss": issuer(party.id),
        "aud": "pushrelay",
        "nbf": NOW - 60,
        "exp": NOW + 3600,
    })
}

fn header_x5t(x5t: &str) -> Map<String, Value> {
    let mut header = Map::new();
    header.insert("x5t".into(), json!(x5t));
    header
}

fn sign(party: &Party, alg: &str, header: Map<String, Value>, claims: &Value) -> String {
    mint_token(&party.key, alg, &header, claims).expect("mint")
}

fn token(party: &Party) -> String {
    sign(party, "RS256", header_x5t(&party.x5t), &claims(party))
}

fn config() -> ValidationConfig {
    ValidationConfig::default()
}

fn check_with(
    token: &str,
    tenant: &TenantEntry,
    config: &ValidationConfig,
) -> Result<ValidToken, Reason> {
    let parsed = UnverifiedToken::parse(token).map_err(|r| r.reason)?;
    validate_token(&parsed, tenant, config, NOW_MS).map_err(|r| r.reason)
}

fn check(token: &str) -> Result<ValidToken, Reason> {
    check_with(token, &entry(fabrikam()), &config())
}

fn unsigned(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

#[test]
fn valid_token_is_accepted_by_x5t_kid_or_kid_equal_to_thumbprint() {
    let f = fabrikam();
    let valid = check(&token(f)).expect("valid by x5t");
    assert_eq!(valid.tenant, "fabrikam.com");
    assert_eq!(valid.expires_at, NOW + 3600);

    let mut by_kid = Map::new();
    by_kid.insert("kid".into(), json!("kid-fabrikam.com"));
    assert!(check(&sign(f, "RS256", by_kid, &claims(f))).is_ok());

    let mut kid_is_x5t = Map::new();
    kid_is_x5t.insert("kid".into(), json!(f.x5t));
    assert!(check(&sign(f, "RS256", kid_is_x5t, &claims(f))).is_ok());
}

#[test]
fn alg_none_is_rejected() {
    let f = fabrikam();
    let token = unsigned(&json!({"alg": "none", "x5t": f.x5t}), &claims(f), b"");
    assert_eq!(
        check(&token),
        Err(Reason::AlgorithmNotAllowed("none".into()))
    );
}

#[test]
fn hs256_signed_with_the_tenants_public_key_is_rejected() {
    let f = fabrikam();
    // The classic key-confusion attack: HMAC keyed with the RSA public key the relay holds.
    let header = json!({"alg": "HS256", "x5t": f.x5t});
    let body = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims(f).to_string())
    );
    for secret in [
        f.cert_der.as_slice(),
        KeyCredential::from_certificate_der(&f.cert_der)
            .expect("c")
            .to_proto()
            .certificate_der
            .as_slice(),
    ] {
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
        let tag = aws_lc_rs::hmac::sign(&key, body.as_bytes());
        let token = format!("{body}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()));
        assert_eq!(
            check(&token),
            Err(Reason::AlgorithmNotAllowed("HS256".into()))
        );
    }
}

#[test]
fn ps256_only_when_allowed() {
    let f = fabrikam();
    let token = sign(f, "PS256", header_x5t(&f.x5t), &claims(f));
    assert_eq!(
        check(&token),
        Err(Reason::AlgorithmNotAllowed("PS256".into()))
    );
    let mut allow = config();
    allow.algorithms.push("PS256".into());
    assert!(check_with(&token, &entry(f), &allow).is_ok());
}

#[test]
fn es256_token_against_an_rsa_key_is_a_key_type_mismatch() {
    let f = fabrikam();
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ec key");
    let ec_key = SigningKey::from_pkcs8(&ec.serialize_der()).expect("ec pkcs8");
    let token = mint_token(&ec_key, "ES256", &header_x5t(&f.x5t), &claims(f)).expect("mint");
    let mut allow = config();
    allow.algorithms.push("ES256".into());
    assert_eq!(
        check_with(&token, &entry(f), &allow),
        Err(Reason::KeyAlgorithmMismatch)
    );
}

#[test]
fn es256_with_a_registered_p256_certificate_is_accepted_when_allowed() {
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ec key");
    let mut params = rcgen::CertificateParams::new(vec!["ec.example".to_owned()]).expect("params");
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2040, 1, 1);
    let cert = params.self_signed(&ec).expect("cert");
    let credential = KeyCredential::from_certificate_der(cert.der()).expect("P-256 credential");
    assert_eq!(credential.kind, KeyKind::EcP256);
    let tenant = TenantEntry {
        id: "fabrikam.com".into(),
        enabled: true,
        issuer: issuer("fabrikam.com"),
        audiences: vec![],
        keys: vec![credential.clone()],
        metadata_url: None,
        generation: 1,
    };
    let key = SigningKey::from_pkcs8(&ec.serialize_der()).expect("pkcs8");
    let header = header_x5t(credential.thumbprint.as_deref().expect("x5t"));
    let token = mint_token(&key, "ES256", &header, &claims(fabrikam())).expect("mint");
    let mut allow = config();
    allow.algorithms.push("ES256".into());
    assert!(check_with(&token, &tenant, &allow).is_ok());
}

#[test]
fn unknown_or_missing_key_ids_are_rejected() {
    let f = fabrikam();
    let token = sign(f, "RS256", header_x5t("bm90LWEtdGh1bWJwcmludA"), &claims(f));
    assert_eq!(check(&token), Err(Reason::UnknownKey));
    let mut kid = Map::new();
    kid.insert("kid".into(), json!("no-such-kid"));
    assert_eq!(
        check(&sign(f, "RS256", kid, &claims(f))),
        Err(Reason::UnknownKey)
    );
    assert_eq!(
        check(&sign(f, "RS256", Map::new(), &claims(f))),
        Err(Reason::MissingKeyId)
    );
}

#[test]
fn another_tenants_key_is_never_chosen() {
    let (f, c) = (fabrikam(), contoso());
    // Contoso signs a token for fabrikam naming its own (contoso's) certificate: that key
    // is not fabrikam's, so it is unknown for fabrikam.
    let token = sign(c, "RS256", header_x5t(&c.x5t), &claims(f));
    assert_eq!(check(&token), Err(Reason::UnknownKey));
    // Naming fabrikam's certificate while signing with contoso's key: bad signature.
    let token = sign(c, "RS256", header_x5t(&f.x5t), &claims(f));
    assert_eq!(check(&token), Err(Reason::BadSignature));
}

#[test]
fn tampered_claims_break_the_signature() {
    let f = fabrikam();
    let token = token(f);
    let mut parts: Vec<&str> = token.split('.').collect();
    let mut forged = claims(f);
    forged["exp"] = json!(NOW + 7200);
    let forged = URL_SAFE_NO_PAD.encode(forged.to_string());
    parts[1] = &forged;
    assert_eq!(check(&parts.join(".")), Err(Reason::BadSignature));
}

#[test]
fn expiry_and_not_before_with_leeway() {
    let f = fabrikam();
    let with = |exp: i64, nbf: i64| {
        let mut c = claims(f);
        c["exp"] = json!(exp);
        c["nbf"] = json!(nbf);
        check(&sign(f, "RS256", header_x5t(&f.x5t), &c))
    };
    assert_eq!(with(NOW - 61, NOW - 3600), Err(Reason::Expired));
    assert!(with(NOW - 59, NOW - 3600).is_ok(), "inside the 60 s leeway");
    assert_eq!(with(NOW + 3600, NOW + 61), Err(Reason::NotYetValid));
    assert!(with(NOW + 3600, NOW + 59).is_ok(), "inside the 60 s leeway");
    assert_eq!(
        with(NOW + 25 * 3600, NOW - 60),
        Err(Reason::LifetimeTooLong)
    );
    assert_eq!(
        with(NOW, NOW + 10),
        Err(Reason::LifetimeTooLong),
        "exp before nbf"
    );
}

#[test]
fn exp_and_nbf_must_be_numbers() {
    let f = fabrikam();
    let mut c = claims(f);
    c["exp"] = json!((NOW + 3600).to_string());
    assert_eq!(
        check(&sign(f, "RS256", header_x5t(&f.x5t), &c)),
        Err(Reason::ClaimNotNumeric("exp"))
    );
    let mut c = claims(f);
    c["nbf"] = json!((NOW - 60).to_string());
    assert_eq!(
        check(&sign(f, "RS256", header_x5t(&f.x5t), &c)),
        Err(Reason::ClaimNotNumeric("nbf"))
    );
    let mut c = claims(f);
    c.as_object_mut().expect("object").remove("exp");
    assert_eq!(
        check(&sign(f, "RS256", header_x5t(&f.x5t), &c)),
        Err(Reason::MissingClaim("exp"))
    );
    let mut c = claims(f);
    c.as_object_mut().expect("object").remove("nbf");
    assert_eq!(
        check(&sign(f, "RS256", header_x5t(&f.x5t), &c)),
        Err(Reason::MissingClaim("nbf"))
    );
}

#[test]
fn wrong_issuer_audience_or_tenant_is_rejected() {
    let f = fabrikam();
    let signed = |c: &Value| check(&sign(f, "RS256", header_x5t(&f.x5t), c));
    let mut c = claims(f);
    c["iss"] = json!("issuer@contoso.com");
    assert_eq!(signed(&c), Err(Reason::WrongIssuer));
    let mut c = claims(f);
    c["aud"] = json!("someone-else");
    assert_eq!(signed(&c), Err(Reason::WrongAudience));
    let mut c = claims(f);
    c["aud"] = json!(["someone-else", "pushrelay"]);
    assert!(
        signed(&c).is_ok(),
        "an aud array containing the relay's audience"
    );
    let mut c = claims(f);
    c["tid"] = json!("contoso.com");
    assert_eq!(
        signed(&c),
        Err(Reason::UnknownTenant),
        "tid must be the tenant validated for"
    );
    let mut c = claims(f);
    c.as_object_mut().expect("object").remove("tid");
    assert_eq!(signed(&c), Err(Reason::MissingTenant));
}

#[test]
fn tenant_specific_audiences_replace_the_relays() {
    let f = fabrikam();
    let mut record = tenant_record(f);
    record.audiences = vec!["00000002-0000-0ff1-ce00-000000000000/push@fabrikam.com".into()];
    let tenant = TenantEntry::from_proto(&record, 1).expect("entry");
    let mut c = claims(f);
    assert_eq!(
        check_with(
            &sign(f, "RS256", header_x5t(&f.x5t), &c),
            &tenant,
            &config()
        ),
        Err(Reason::WrongAudience)
    );
    c["aud"] = json!(record.audiences[0]);
    assert!(
        check_with(
            &sign(f, "RS256", header_x5t(&f.x5t), &c),
            &tenant,
            &config()
        )
        .is_ok()
    );
}

#[test]
fn disabled_tenant_is_rejected() {
    let f = fabrikam();
    let mut tenant = entry(f);
    tenant.enabled = false;
    assert_eq!(
        check_with(&token(f), &tenant, &config()),
        Err(Reason::TenantDisabled)
    );
}

#[test]
fn key_outside_its_validity_window_is_rejected() {
    let f = fabrikam();
    let mut tenant = entry(f);
    tenant.keys[0] = tenant.keys[0]
        .clone()
        .with_window(None, Some(NOW_MS - 1000))
        .expect("window");
    assert_eq!(
        check_with(&token(f), &tenant, &config()),
        Err(Reason::KeyExpired)
    );
    let mut tenant = entry(f);
    tenant.keys[0] = tenant.keys[0]
        .clone()
        .with_window(Some(NOW_MS + 1000), None)
        .expect("window");
    assert_eq!(
        check_with(&token(f), &tenant, &config()),
        Err(Reason::KeyNotYetValid)
    );
}

#[test]
fn two_overlapping_keys_make_rotation_seamless() {
    let (f, c) = (fabrikam(), contoso());
    let mut record = tenant_record(f);
    // The tenant rolls over to a second certificate (contoso's key material here).
    record.keys.push(
        KeyCredential::from_certificate_der(&c.cert_der)
            .expect("c")
            .to_proto(),
    );
    let tenant = TenantEntry::from_proto(&record, 1).expect("entry");
    assert!(check_with(&token(f), &tenant, &config()).is_ok(), "old key");
    let rotated = sign(c, "RS256", header_x5t(&c.x5t), &claims(f));
    assert!(check_with(&rotated, &tenant, &config()).is_ok(), "new key");
}

#[test]
fn rsa_1024_is_refused_at_registration() {
    let weak = include_bytes!("../testdata/weak-rsa1024.der");
    match KeyCredential::from_certificate_der(weak) {
        Err(CredentialError::KeyTooSmall { bits }) => assert_eq!(bits, 1024),
        other => panic!("expected KeyTooSmall, got {other:?}"),
    }
    let registry = TenantRegistry::new();
    let record = v1::Tenant {
        id: "weak.example".into(),
        enabled: true,
        issuer: "i".into(),
        keys: vec![v1::KeyCredential {
            certificate_der: weak.to_vec(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let err = registry
        .apply("weak.example", Some(&record))
        .expect_err("refused");
    assert!(err.to_string().contains("1024 bits"), "{err}");
    assert!(registry.get("weak.example").is_none());
}

#[test]
fn jku_x5u_and_jwk_headers_are_never_trusted() {
    let (f, c) = (fabrikam(), contoso());
    // An attacker (contoso's key) points the relay at its own keys in every way a JWT
    // header allows, while naming fabrikam's certificate.
    let attacker_jwk = json!({"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "evil"});
    let mut header = header_x5t(&f.x5t);
    header.insert("jku".into(), json!("http://127.0.0.1:1/evil-jwks.json"));
    header.insert("x5u".into(), json!("http://127.0.0.1:1/evil.pem"));
    header.insert("jwk".into(), attacker_jwk);
    let token = sign(c, "RS256", header, &claims(f));
    assert_eq!(check(&token), Err(Reason::BadSignature));
    // With only jku/jwk and no x5t/kid, there is no key to choose at all.
    let mut header = Map::new();
    header.insert("jku".into(), json!("http://127.0.0.1:1/evil-jwks.json"));
    let token = sign(c, "RS256", header, &claims(f));
    assert_eq!(check(&token), Err(Reason::MissingKeyId));
}

#[test]
fn malformed_tokens_are_rejected_with_a_reason() {
    for token in [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "!!!.e30.x",
        "e30.!!!.x",
        "W10.e30.x",
    ] {
        assert!(
            matches!(check(token), Err(Reason::Malformed(_))),
            "{token:?}"
        );
    }
    let huge = format!("{}.e30.x", "a".repeat(17 * 1024));
    assert!(matches!(check(&huge), Err(Reason::Malformed(_))));
}

#[test]
fn rejection_keeps_header_fields_but_never_the_signature() {
    let f = fabrikam();
    let mut c = claims(f);
    c["aud"] = json!("nope");
    let token = sign(f, "RS256", header_x5t(&f.x5t), &c);
    let parsed = UnverifiedToken::parse(&token).expect("parses");
    let rejection = validate_token(&parsed, &entry(f), &config(), NOW_MS).expect_err("rejected");
    assert_eq!(rejection.claimed_tenant(), Some("fabrikam.com"));
    assert_eq!(rejection.facts.thumbprint.as_deref(), Some(f.x5t.as_str()));
    assert_eq!(rejection.facts.algorithm.as_deref(), Some("RS256"));
    let signature = token.rsplit('.').next().expect("signature");
    assert!(!format!("{rejection:?}").contains(signature));
}

fn registry_with(parties: &[&Party]) -> Arc<TenantRegistry> {
    let registry = Arc::new(TenantRegistry::new());
    for party in parties {
        registry
            .apply(party.id, Some(&tenant_record(party)))
            .expect("apply");
    }
    registry
}

/// A token of `party` valid from a minute ago for ten minutes, and the wall clock now (ms).
fn token_valid_now(party: &Party) -> (String, i64) {
    let now = crate::authenticator::tests_now_ms();
    let mut c = claims(party);
    c["nbf"] = json!(now / 1000 - 60);
    c["exp"] = json!(now / 1000 + 600);
    (sign(party, "RS256", header_x5t(&party.x5t), &c), now)
}

#[tokio::test]
async fn authenticator_caches_validated_tokens_until_the_tenant_changes() {
    let f = fabrikam();
    let registry = registry_with(&[f, contoso()]);
    let auth = Authenticator::new(Arc::clone(&registry), AuthConfig::default());
    let (token, _) = token_valid_now(f);
    let first = auth.authenticate(&token).await.expect("valid");
    assert!(!first.cached);
    assert_eq!(&*first.tenant, "fabrikam.com");
    assert!(auth.authenticate(&token).await.expect("valid").cached);

    // Disabling the tenant takes effect for the cached token too.
    let mut record = tenant_record(f);
    record.enabled = false;
    registry.apply(f.id, Some(&record)).expect("apply");
    let rejected = auth.authenticate(&token).await.expect_err("disabled");
    assert_eq!(rejected.reason, Reason::TenantDisabled);

    // And removing the tenant.
    registry.apply(f.id, None).expect("tombstone");
    let rejected = auth.authenticate(&token).await.expect_err("removed");
    assert_eq!(rejected.reason, Reason::UnknownTenant);
}

#[tokio::test]
async fn the_recent_tokens_memo_answers_only_what_the_cache_would() {
    let f = fabrikam();
    let registry = registry_with(&[f, contoso()]);
    let auth = Authenticator::new(Arc::clone(&registry), AuthConfig::default());
    let (token, now) = token_valid_now(f);
    // One slot: every token competes for it.
    let mut recent = RecentTokens::new(1);
    assert!(
        auth.authenticate_recent(&mut recent, &token, now).is_none(),
        "never validated: the memo and the cache know nothing"
    );
    auth.authenticate(&token).await.expect("valid");
    for _ in 0..2 {
        let hit = auth
            .authenticate_recent(&mut recent, &token, now)
            .expect("accepted by the cache, then by the memo");
        assert!(hit.cached);
        assert_eq!(&*hit.tenant, "fabrikam.com");
    }

    // A forgery that shares the token's length and its last 32 bytes (so its slot):
    // compared in full, it is not the remembered token.
    let (head, tail) = token.split_at(token.len() - 32);
    let mut forged_head = head.to_owned().into_bytes();
    forged_head[5] = if forged_head[5] == b'A' { b'B' } else { b'A' };
    let forged = format!("{}{tail}", String::from_utf8(forged_head).expect("ascii"));
    assert_eq!(forged.len(), token.len());
    assert!(
        auth.authenticate_recent(&mut recent, &forged, now)
            .is_none()
    );
    assert!(auth.authenticate_recent(&mut recent, &token, now).is_some());

    // Past the token's expiry (plus leeway) the memo refuses it too.
    let later = now + 600_000 + 61_000;
    assert!(
        auth.authenticate_recent(&mut recent, &token, later)
            .is_none()
    );
    assert!(auth.authenticate_recent(&mut recent, &token, now).is_some());

    // Disabling the tenant takes effect on the memo at once.
    let mut record = tenant_record(f);
    record.enabled = false;
    registry.apply(f.id, Some(&record)).expect("apply");
    assert!(auth.authenticate_recent(&mut recent, &token, now).is_none());
    record.enabled = true;
    registry.apply(f.id, Some(&record)).expect("apply");
    assert!(
        auth.authenticate_recent(&mut recent, &token, now).is_none(),
        "a new tenant generation: the token is validated again before any memo answers"
    );
    auth.authenticate(&token).await.expect("valid again");
    assert!(auth.authenticate_recent(&mut recent, &token, now).is_some());
}

#[tokio::test]
async fn authenticator_rejects_bad_algorithms_before_looking_up_tenants() {
    let auth = Authenticator::new(Arc::new(TenantRegistry::new()), AuthConfig::default());
    let token = unsigned(
        &json!({"alg": "none"}),
        &json!({"tid": "nobody.example"}),
        b"",
    );
    let rejected = auth.authenticate(&token).await.expect_err("none");
    assert_eq!(rejected.reason, Reason::AlgorithmNotAllowed("none".into()));
    assert_eq!(rejected.claimed_tenant(), Some("nobody.example"));
}

#[test]
fn jwks_documents_are_parsed_and_weak_keys_skipped() {
    let doc = json!({"keys": [
        {"kty": "RSA", "kid": "small", "n": URL_SAFE_NO_PAD.encode([0xffu8; 128]), "e": "AQAB"},
        {"kty": "RSA", "kid": "big", "use": "sig", "n": URL_SAFE_NO_PAD.encode([0xffu8; 256]), "e": "AQAB"},
        {"kty": "RSA", "kid": "enc", "use": "enc", "n": URL_SAFE_NO_PAD.encode([0xffu8; 256]), "e": "AQAB"},
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
    ]});
    let keys = parse_jwks(doc.to_string().as_bytes()).expect("parses");
    let ids: Vec<_> = keys.iter().filter_map(|k| k.key_id.clone()).collect();
    assert_eq!(ids, vec!["big"]);
    assert!(parse_jwks(b"not json").is_err());
}

#[test]
fn jwks_keys_named_by_an_empty_kid_or_x5t_are_skipped() {
    let n = URL_SAFE_NO_PAD.encode([0xffu8; 256]);
    let doc = json!({"keys": [
        {"kty": "RSA", "kid": "", "n": n, "e": "AQAB"},
        {"kty": "RSA", "x5t": "", "n": n, "e": "AQAB"},
        {"kty": "RSA", "kid": "", "x5t": "", "n": n, "e": "AQAB"},
        {"kty": "RSA", "kid": "named", "x5t": "", "n": n, "e": "AQAB"},
    ]});
    let keys = parse_jwks(doc.to_string().as_bytes()).expect("parses");
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].identity(), "named");
    assert_eq!(keys[0].thumbprint, None);
}

#[test]
fn pem_certificates_are_read() {
    let f = fabrikam();
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        base64::engine::general_purpose::STANDARD.encode(&f.cert_der)
    );
    let keys = KeyCredential::from_certificate_pem(pem.as_bytes()).expect("pem");
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].thumbprint.as_deref(), Some(f.x5t.as_str()));
    assert_eq!(keys[0].kind, KeyKind::Rsa { bits: 2048 });
}

#[test]
fn crit_headers_are_refused_even_when_the_signature_verifies() {
    // RFC 7515 §4.1.11: the relay understands no extension, so any `crit` is refused.
    let f = fabrikam();
    for crit in [json!(["exp"]), json!(["b64"]), json!([]), json!("urn:x")] {
        let mut header = header_x5t(&f.x5t);
        header.insert("crit".into(), crit.clone());
        header.insert("b64".into(), json!(false));
        let token = sign(f, "RS256", header, &claims(f));
        match check(&token) {
            Err(Reason::Malformed(detail)) => assert!(detail.contains("crit"), "{detail}"),
            other => panic!("crit {crit}: {other:?}"),
        }
    }
}

#[test]
fn only_jwt_typ_is_accepted() {
    let f = fabrikam();
    let with_typ = |typ: Value| {
        let mut header = header_x5t(&f.x5t);
        header.insert("typ".into(), typ);
        check(&sign(f, "RS256", header, &claims(f)))
    };
    for typ in ["JWT", "jwt", "application/jwt", "Application/JWT"] {
        assert!(with_typ(json!(typ)).is_ok(), "{typ}");
    }
    for typ in [
        json!("at+jwt"),
        json!("logout+jwt"),
        json!("JWE"),
        json!("JOSE+JSON"),
        json!(""),
        json!(1),
        json!(null),
        json!(["JWT"]),
    ] {
        assert!(
            matches!(with_typ(typ.clone()), Err(Reason::Malformed(_))),
            "{typ}"
        );
    }
    // No typ at all is fine (RFC 7519 §5.1: it is optional).
    let token = unsigned(&json!({"alg": "RS256", "x5t": f.x5t}), &claims(f), b"sig");
    assert_eq!(check(&token), Err(Reason::BadSignature));
}

#[tokio::test]
async fn an_oversized_token_is_refused_by_length_before_anything_else() {
    let f = fabrikam();
    let registry = registry_with(&[f]);
    let auth = Authenticator::new(registry, AuthConfig::default());
    // Validly signed by the tenant: only the length limit stands between it and acceptance.
    let mut c = claims(f);
    c["pad"] = json!("x".repeat(MAX_TOKEN_BYTES));
    let token = sign(f, "RS256", header_x5t(&f.x5t), &c);
    assert!(token.len() > MAX_TOKEN_BYTES);
    let parsed = UnverifiedToken::parse(&token).expect_err("too large");
    assert_eq!(*parsed.facts, TokenFacts::default(), "nothing was decoded");
    let rejected = auth
        .authenticate_at(&token, NOW_MS)
        .await
        .expect_err("too large");
    match &rejected.reason {
        Reason::Malformed(detail) => assert!(detail.contains("at most 16384"), "{detail}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        *rejected.facts,
        TokenFacts::default(),
        "nothing was decoded"
    );
    assert!(auth.authenticate_cached(&token, NOW_MS).is_none());
    // Exactly at the limit it is read normally.
    let mut c = claims(f);
    c["pad"] = json!("");
    let base = sign(f, "RS256", header_x5t(&f.x5t), &c).len();
    c["pad"] = json!("x".repeat((MAX_TOKEN_BYTES - base) * 3 / 4));
    let token = sign(f, "RS256", header_x5t(&f.x5t), &c);
    assert!(token.len() <= MAX_TOKEN_BYTES, "{}", token.len());
    assert!(auth.authenticate_at(&token, NOW_MS).await.is_ok());
}
