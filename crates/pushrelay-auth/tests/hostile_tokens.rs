//! The hostile-token corpus (RFC 8725 and friends), through the [`Authenticator`] the
//! auth-coalesce stage calls: every token is rejected, with the expected reason, and no
//! URL named in a token is ever requested.
//!
//! The clock is fixed (`authenticate_at`) so that the 1024-bit tokens, signed once with
//! openssl (`testdata/make-weak-rsa1024.sh`), stay inside their lifetime.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::RSA_PKCS1_SHA256;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use pushrelay_auth::{
    AuthConfig, Authenticator, KeyCredential, MAX_TOKEN_BYTES, Reason, SigningKey, TenantRegistry,
    TokenFacts, mint_token, thumbprint,
};
use pushrelay_proto::v1;
use serde_json::{Map, Value, json};

const NOW: i64 = 1_800_000_000; // seconds, 2027-01-15
const NOW_MS: i64 = NOW * 1000;
const DAY_MS: i64 = 86_400_000;

/// A local HTTP endpoint recording every request path.
#[derive(Clone, Default)]
struct Endpoint {
    hits: Arc<AtomicUsize>,
    paths: Arc<Mutex<Vec<String>>>,
    body: Arc<Mutex<String>>,
}

async fn serve(State(endpoint): State<Endpoint>, uri: Uri) -> (StatusCode, String) {
    endpoint.hits.fetch_add(1, Ordering::SeqCst);
    endpoint
        .paths
        .lock()
        .expect("lock")
        .push(uri.path().to_owned());
    if uri.path() == "/jwks.json" {
        (StatusCode::OK, endpoint.body.lock().expect("lock").clone())
    } else {
        (StatusCode::NOT_FOUND, String::new())
    }
}

async fn start_endpoint(body: String) -> (String, Endpoint) {
    let endpoint = Endpoint {
        body: Arc::new(Mutex::new(body)),
        ..Endpoint::default()
    };
    let app = Router::new().fallback(serve).with_state(endpoint.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), endpoint)
}

struct Party {
    key: SigningKey,
    cert_der: Vec<u8>,
    cert_pem: String,
    x5t: String,
}

fn party(not_after: Option<(i32, u8, u8)>) -> Party {
    let key = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .expect("rsa key");
    let mut params = rcgen::CertificateParams::new(vec!["party.example".to_owned()]).expect("p");
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = match not_after {
        Some((y, m, d)) => rcgen::date_time_ymd(y, m, d),
        None => rcgen::date_time_ymd(2040, 1, 1),
    };
    let cert = params.self_signed(&key).expect("cert");
    Party {
        key: SigningKey::from_pkcs8(&key.serialize_der()).expect("pkcs8"),
        cert_der: cert.der().to_vec(),
        cert_pem: cert.pem(),
        x5t: thumbprint(cert.der()),
    }
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn issuer(tenant: &str) -> String {
    format!("issuer@{tenant}")
}

fn claims(tenant: &str) -> Value {
    json!({
        "tid": tenant, "iss": issuer(tenant), "aud": "pushrelay",
        "nbf": NOW - 60, "exp": NOW + 3600,
    })
}

fn header(pairs: &[(&str, Value)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn sign(key: &SigningKey, alg: &str, header: Map<String, Value>, claims: &Value) -> String {
    mint_token(key, alg, &header, claims).expect("mint")
}

/// RS256 over header and claims given as raw JSON text (duplicate members and all).
fn sign_raw(key: &SigningKey, header: &str, claims: &str) -> String {
    let input = format!("{}.{}", b64(header), b64(claims));
    let SigningKey::Rsa(rsa) = key else {
        panic!("RSA key expected")
    };
    let mut signature = vec![0u8; rsa.public_modulus_len()];
    rsa.sign(
        &RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        input.as_bytes(),
        &mut signature,
    )
    .expect("sign");
    format!("{input}.{}", b64(signature))
}

fn unsigned(header: &str, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header),
        b64(claims.to_string()),
        b64(signature)
    )
}

fn hmac(alg: &str, header: &Value, claims: &Value, secret: &[u8]) -> String {
    let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
    let algorithm = match alg {
        "HS256" => aws_lc_rs::hmac::HMAC_SHA256,
        "HS384" => aws_lc_rs::hmac::HMAC_SHA384,
        _ => aws_lc_rs::hmac::HMAC_SHA512,
    };
    let tag = aws_lc_rs::hmac::sign(
        &aws_lc_rs::hmac::Key::new(algorithm, secret),
        input.as_bytes(),
    );
    format!("{input}.{}", b64(tag.as_ref()))
}

fn tenant(id: &str, enabled: bool, keys: Vec<v1::KeyCredential>, url: &str) -> v1::Tenant {
    v1::Tenant {
        id: id.to_owned(),
        enabled,
        issuer: issuer(id),
        keys,
        metadata_url: url.to_owned(),
        ..Default::default()
    }
}

fn credential(party: &Party, kid: &str, window: Option<(i64, i64)>) -> v1::KeyCredential {
    let mut key = KeyCredential::from_certificate_der(&party.cert_der)
        .expect("credential")
        .with_key_id(Some(kid.to_owned()));
    if let Some((from, until)) = window {
        key = key.with_window(Some(from), Some(until)).expect("window");
    }
    key.to_proto()
}

/// Replaces one dot-separated part of a token.
fn with_part(token: &str, index: usize, part: &str) -> String {
    let mut parts: Vec<&str> = token.split('.').collect();
    parts[index] = part;
    parts.join(".")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_token_is_rejected_and_no_token_url_is_fetched() {
    let (attacker_base, attacker) = start_endpoint(String::new()).await;
    let evil_jku = format!("{attacker_base}/jwks.json");
    let evil_x5u = format!("{attacker_base}/evil.pem");

    let fabrikam = party(None);
    let contoso = party(None);
    let attacker_key = party(None);
    let disabled = party(None);
    let expired_key = party(None);
    let future_key = party(None);
    let jwks_key = party(None);
    let jwks_expired = party(Some((2026, 1, 1)));
    let weak_tokens: Vec<String> = include_str!("testdata/weak-rsa1024.tokens")
        .lines()
        .map(str::to_owned)
        .collect();
    let weak_jwk: Value =
        serde_json::from_str(include_str!("testdata/weak-rsa1024.jwk.json")).expect("jwk");

    let jwks_doc = json!({"keys": [
        {"kty": "RSA", "use": "sig", "kid": "j1", "x5c": [STANDARD.encode(&jwks_key.cert_der)]},
        {"kty": "RSA", "use": "sig", "kid": "j-expired",
         "x5c": [STANDARD.encode(&jwks_expired.cert_der)]},
        weak_jwk,
    ]});
    let (tenant_base, tenant_endpoint) = start_endpoint(jwks_doc.to_string()).await;

    let registry = Arc::new(TenantRegistry::new());
    for record in [
        // Both tenants name their key "k1": a kid is only meaningful within its tenant.
        tenant(
            "fabrikam.com",
            true,
            vec![credential(&fabrikam, "k1", None)],
            "",
        ),
        tenant(
            "contoso.com",
            true,
            vec![credential(&contoso, "k1", None)],
            "",
        ),
        tenant(
            "disabled.example",
            false,
            vec![credential(&disabled, "d1", None)],
            "",
        ),
        tenant(
            "expired-key.example",
            true,
            vec![credential(
                &expired_key,
                "e1",
                Some((NOW_MS - 30 * DAY_MS, NOW_MS - DAY_MS)),
            )],
            "",
        ),
        tenant(
            "future-key.example",
            true,
            vec![credential(
                &future_key,
                "n1",
                Some((NOW_MS + DAY_MS, NOW_MS + 30 * DAY_MS)),
            )],
            "",
        ),
        tenant(
            "jwks.example",
            true,
            vec![],
            &format!("{tenant_base}/jwks.json"),
        ),
    ] {
        registry.apply(&record.id, Some(&record)).expect("apply");
    }
    let auth = Authenticator::new(registry, AuthConfig::default());

    // Controls: each tenant's genuine token is accepted, so rejections below are earned.
    let (f, c) = (&fabrikam, &contoso);
    let fx5t = || header(&[("x5t", json!(f.x5t))]);
    let good_f = sign(&f.key, "RS256", fx5t(), &claims("fabrikam.com"));
    let good_c = sign(
        &c.key,
        "RS256",
        header(&[("kid", json!("k1"))]),
        &claims("contoso.com"),
    );
    let good_j = sign(
        &jwks_key.key,
        "RS256",
        header(&[("kid", json!("j1"))]),
        &claims("jwks.example"),
    );
    for good in [&good_f, &good_c, &good_j] {
        auth.authenticate_at(good, NOW_MS)
            .await
            .expect("control token accepted");
    }
    assert_eq!(tenant_endpoint.hits.load(Ordering::SeqCst), 1);

    let cf = claims("fabrikam.com");
    let with_claim = |name: &str, value: Value| {
        let mut c = claims("fabrikam.com");
        c[name] = value;
        sign(&f.key, "RS256", fx5t(), &c)
    };
    let by_attacker = |header: Map<String, Value>, claims: &Value| {
        sign(&attacker_key.key, "RS256", header, claims)
    };
    let fx5t_json = json!({"alg": "HS256", "x5t": f.x5t});
    let huge_header = |bytes: usize| {
        let mut h = fx5t();
        h.insert("pad".into(), json!("A".repeat(bytes)));
        sign(&f.key, "RS256", h, &cf)
    };
    let lossy = String::from_utf8_lossy(&[0xff, 0xfe, 0xc3, 0x28, 0x80]).into_owned();
    let nested = format!("{}{}", "[".repeat(4000), "]".repeat(4000));
    let (good_h, good_p, good_s) = {
        let p: Vec<&str> = good_f.split('.').collect();
        (p[0].to_owned(), p[1].to_owned(), p[2].to_owned())
    };

    let mut corpus: Vec<(&str, String, &str)> = Vec::new();
    // RFC 8725 §3.1, §2.1: alg none, in several spellings, with or without a signature.
    corpus.push((
        "alg none",
        unsigned(&format!(r#"{{"alg":"none","x5t":"{}"}}"#, f.x5t), &cf, b""),
        "algorithm_not_allowed",
    ));
    corpus.push((
        "alg None",
        unsigned(&format!(r#"{{"alg":"None","x5t":"{}"}}"#, f.x5t), &cf, b""),
        "algorithm_not_allowed",
    ));
    corpus.push((
        "alg none with a signature",
        with_part(
            &good_f,
            0,
            &b64(format!(r#"{{"alg":"none","x5t":"{}"}}"#, f.x5t)),
        ),
        "algorithm_not_allowed",
    ));
    corpus.push((
        "alg rs256 lower case",
        with_part(
            &good_f,
            0,
            &b64(format!(r#"{{"alg":"rs256","x5t":"{}"}}"#, f.x5t)),
        ),
        "algorithm_not_allowed",
    ));
    corpus.push((
        "alg missing",
        unsigned(&format!(r#"{{"x5t":"{}"}}"#, f.x5t), &cf, b"x"),
        "malformed",
    ));
    corpus.push((
        "alg a number",
        unsigned(r#"{"alg":256,"kid":"k1"}"#, &cf, b"x"),
        "malformed",
    ));
    // §2.1: HS/RS confusion, HMAC keyed with what the relay holds of the tenant's key.
    corpus.push((
        "HS256 keyed with the certificate DER",
        hmac("HS256", &fx5t_json, &cf, &f.cert_der),
        "algorithm_not_allowed",
    ));
    corpus.push((
        "HS256 keyed with the certificate PEM",
        hmac("HS256", &fx5t_json, &cf, f.cert_pem.as_bytes()),
        "algorithm_not_allowed",
    ));
    corpus.push((
        "HS384 keyed with the certificate DER",
        hmac(
            "HS384",
            &json!({"alg": "HS384", "kid": "k1"}),
            &cf,
            &f.cert_der,
        ),
        "algorithm_not_allowed",
    ));
    corpus.push((
        "HS512 keyed with the certificate DER",
        hmac(
            "HS512",
            &json!({"alg": "HS512", "kid": "k1"}),
            &cf,
            &f.cert_der,
        ),
        "algorithm_not_allowed",
    ));
    corpus.push((
        "PS256 with the tenant's own key, not allowed",
        sign(&f.key, "PS256", fx5t(), &cf),
        "algorithm_not_allowed",
    ));
    corpus.push((
        "ES256 naming an RSA certificate",
        {
            let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ec");
            let ec = SigningKey::from_pkcs8(&ec.serialize_der()).expect("ec pkcs8");
            sign(&ec, "ES256", fx5t(), &cf)
        },
        "algorithm_not_allowed",
    ));
    // RSA under 2048 bits (signed with openssl): its certificate cannot be registered,
    // and a JWKS that publishes it has it skipped.
    corpus.push((
        "RS256 with a 1024-bit key, its own x5t",
        weak_tokens[0].clone(),
        "unknown_key",
    ));
    corpus.push((
        "RS256 with a 1024-bit key published in the tenant's JWKS",
        weak_tokens[1].clone(),
        "unknown_key",
    ));
    // §3.10: kid/x5t are looked up, never interpreted.
    corpus.push((
        "kid path traversal",
        by_attacker(header(&[("kid", json!("../../../../etc/passwd"))]), &cf),
        "unknown_key",
    ));
    corpus.push((
        "kid SQL injection",
        by_attacker(header(&[("kid", json!("' OR '1'='1' --"))]), &cf),
        "unknown_key",
    ));
    corpus.push((
        "kid with NUL and CRLF",
        by_attacker(header(&[("kid", json!("k1\u{0}\r\nX-Injected: 1"))]), &cf),
        "unknown_key",
    ));
    corpus.push((
        "kid non-ASCII",
        by_attacker(header(&[("kid", json!("k\u{131}1\u{202e}"))]), &cf),
        "unknown_key",
    ));
    corpus.push((
        "x5t path traversal",
        by_attacker(header(&[("x5t", json!("../../x5t/../k1"))]), &cf),
        "unknown_key",
    ));
    corpus.push((
        "x5t SQL injection",
        by_attacker(header(&[("x5t", json!("x'; DROP TABLE keys; --"))]), &cf),
        "unknown_key",
    ));
    corpus.push((
        "kid an attacker URL, JWKS tenant",
        by_attacker(header(&[("kid", json!(evil_jku))]), &claims("jwks.example")),
        "unknown_key",
    ));
    corpus.push((
        "kid path traversal, JWKS tenant",
        by_attacker(
            header(&[("kid", json!("../../admin?x=1"))]),
            &claims("jwks.example"),
        ),
        "unknown_key",
    ));
    corpus.push((
        "kid a number",
        by_attacker(header(&[("kid", json!(1))]), &cf),
        "missing_key_id",
    ));
    corpus.push((
        "kid empty",
        by_attacker(header(&[("kid", json!(""))]), &cf),
        "missing_key_id",
    ));
    // Another tenant's key, with its valid signature, for this tenant's iss/tid.
    corpus.push((
        "another tenant's x5t and signature",
        sign(&c.key, "RS256", header(&[("x5t", json!(c.x5t))]), &cf),
        "unknown_key",
    ));
    corpus.push((
        "another tenant's thumbprint as kid",
        sign(&c.key, "RS256", header(&[("kid", json!(c.x5t))]), &cf),
        "unknown_key",
    ));
    corpus.push((
        "another tenant's kid of the same name",
        sign(&c.key, "RS256", header(&[("kid", json!("k1"))]), &cf),
        "bad_signature",
    ));
    corpus.push((
        "this tenant's x5t, another tenant's signature",
        sign(&c.key, "RS256", fx5t(), &cf),
        "bad_signature",
    ));
    corpus.push((
        "a genuine token with tid/iss of another tenant",
        sign(&f.key, "RS256", fx5t(), &claims("contoso.com")),
        "unknown_key",
    ));
    corpus.push((
        "another tenant's token, tid swapped",
        with_part(&good_c, 1, &b64(claims("fabrikam.com").to_string())),
        "bad_signature",
    ));
    // §3.10: jku/x5u/jwk/x5c are never followed nor trusted.
    corpus.push((
        "jku only",
        by_attacker(header(&[("jku", json!(evil_jku))]), &cf),
        "missing_key_id",
    ));
    corpus.push((
        "x5u only",
        by_attacker(header(&[("x5u", json!(evil_x5u))]), &cf),
        "missing_key_id",
    ));
    corpus.push((
        "jwk only",
        by_attacker(
            header(&[("jwk", json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"}))]),
            &cf,
        ),
        "missing_key_id",
    ));
    corpus.push((
        "jku, x5u, jwk with the attacker's kid",
        by_attacker(
            header(&[
                ("kid", json!("evil")),
                ("jku", json!(evil_jku)),
                ("x5u", json!(evil_x5u)),
                (
                    "jwk",
                    json!({"kty": "RSA", "kid": "evil", "n": "AQAB", "e": "AQAB"}),
                ),
            ]),
            &cf,
        ),
        "unknown_key",
    ));
    corpus.push((
        "jku, x5u with the attacker's kid, JWKS tenant",
        by_attacker(
            header(&[
                ("kid", json!("evil")),
                ("jku", json!(evil_jku)),
                ("x5u", json!(evil_x5u)),
            ]),
            &claims("jwks.example"),
        ),
        "unknown_key",
    ));
    corpus.push((
        "jwk and x5c naming this tenant's x5t",
        by_attacker(
            header(&[
                ("x5t", json!(f.x5t)),
                ("x5c", json!([STANDARD.encode(&attacker_key.cert_der)])),
                ("jwk", json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"})),
            ]),
            &cf,
        ),
        "bad_signature",
    ));
    corpus.push((
        "x5c with the attacker's certificate and x5t",
        by_attacker(
            header(&[
                ("x5t", json!(attacker_key.x5t)),
                ("x5c", json!([STANDARD.encode(&attacker_key.cert_der)])),
            ]),
            &cf,
        ),
        "unknown_key",
    ));
    // Header parameters the relay must refuse even under a valid signature.
    corpus.push((
        "crit header",
        sign(
            &f.key,
            "RS256",
            header(&[("x5t", json!(f.x5t)), ("crit", json!(["exp"]))]),
            &cf,
        ),
        "malformed",
    ));
    corpus.push((
        "crit b64=false (RFC 7797)",
        sign(
            &f.key,
            "RS256",
            header(&[
                ("x5t", json!(f.x5t)),
                ("crit", json!(["b64"])),
                ("b64", json!(false)),
            ]),
            &cf,
        ),
        "malformed",
    ));
    corpus.push((
        "typ at+jwt",
        sign(
            &f.key,
            "RS256",
            header(&[("x5t", json!(f.x5t)), ("typ", json!("at+jwt"))]),
            &cf,
        ),
        "malformed",
    ));
    corpus.push((
        "typ JWE",
        sign(
            &f.key,
            "RS256",
            header(&[("x5t", json!(f.x5t)), ("typ", json!("JWE"))]),
            &cf,
        ),
        "malformed",
    ));
    corpus.push((
        "typ a number",
        sign(
            &f.key,
            "RS256",
            header(&[("x5t", json!(f.x5t)), ("typ", json!(7))]),
            &cf,
        ),
        "malformed",
    ));
    // Duplicated members: the last one wins, in the ingress and here alike.
    corpus.push((
        "duplicate alg, none last",
        with_part(
            &good_f,
            0,
            &b64(format!(
                r#"{{"alg":"RS256","x5t":"{}","alg":"none"}}"#,
                f.x5t
            )),
        ),
        "algorithm_not_allowed",
    ));
    corpus.push((
        "duplicate alg, none first, empty signature",
        unsigned(
            &format!(r#"{{"alg":"none","x5t":"{}","alg":"RS256"}}"#, f.x5t),
            &cf,
            b"",
        ),
        "bad_signature",
    ));
    corpus.push((
        "duplicate x5t, attacker's last",
        sign_raw(
            &attacker_key.key,
            &format!(
                r#"{{"alg":"RS256","x5t":"{}","x5t":"{}"}}"#,
                f.x5t, attacker_key.x5t
            ),
            &cf.to_string(),
        ),
        "unknown_key",
    ));
    let duplicate_tid = format!(
        r#"{{"tid":"contoso.com","iss":"{}","aud":"pushrelay","nbf":{},"exp":{},"tid":"{}"}}"#,
        issuer("fabrikam.com"),
        NOW - 60,
        NOW + 3600,
        "fabrikam.com"
    );
    corpus.push((
        "duplicate tid, forged",
        sign_raw(
            &attacker_key.key,
            r#"{"alg":"RS256","kid":"k1"}"#,
            &duplicate_tid,
        ),
        "bad_signature",
    ));
    // Claims (RFC 7519 NumericDate; lifetime).
    corpus.push((
        "exp a string",
        with_claim("exp", json!((NOW + 3600).to_string())),
        "claim_not_numeric",
    ));
    corpus.push((
        "nbf a string",
        with_claim("nbf", json!((NOW - 60).to_string())),
        "claim_not_numeric",
    ));
    corpus.push((
        "exp an array",
        with_claim("exp", json!([NOW + 3600])),
        "claim_not_numeric",
    ));
    corpus.push((
        "exp null",
        with_claim("exp", Value::Null),
        "claim_not_numeric",
    ));
    corpus.push((
        "exp far in the future",
        with_claim("exp", json!(1e300)),
        "lifetime_too_long",
    ));
    corpus.push(("expired", with_claim("exp", json!(NOW - 120)), "expired"));
    corpus.push((
        "not yet valid",
        with_claim("nbf", json!(NOW + 600)),
        "not_yet_valid",
    ));
    corpus.push((
        "wrong audience",
        with_claim("aud", json!(["someone-else"])),
        "wrong_audience",
    ));
    corpus.push((
        "wrong issuer",
        with_claim("iss", json!(issuer("contoso.com"))),
        "wrong_issuer",
    ));
    let mut no_tid = claims("fabrikam.com");
    no_tid.as_object_mut().expect("object").remove("tid");
    corpus.push((
        "tid missing",
        sign(&f.key, "RS256", fx5t(), &no_tid),
        "missing_tenant",
    ));
    // Tenants and their key credentials.
    corpus.push((
        "unknown tenant",
        sign(&f.key, "RS256", fx5t(), &claims("nobody.example")),
        "unknown_tenant",
    ));
    corpus.push((
        "tid with path traversal",
        sign(&f.key, "RS256", fx5t(), &claims("../fabrikam.com")),
        "unknown_tenant",
    ));
    corpus.push((
        "tid with a NUL",
        sign(&f.key, "RS256", fx5t(), &claims("fabrikam.com\u{0}")),
        "unknown_tenant",
    ));
    corpus.push((
        "disabled tenant",
        sign(
            &disabled.key,
            "RS256",
            header(&[("kid", json!("d1"))]),
            &claims("disabled.example"),
        ),
        "tenant_disabled",
    ));
    corpus.push((
        "key credential expired",
        sign(
            &expired_key.key,
            "RS256",
            header(&[("kid", json!("e1"))]),
            &claims("expired-key.example"),
        ),
        "key_expired",
    ));
    corpus.push((
        "key credential not yet valid",
        sign(
            &future_key.key,
            "RS256",
            header(&[("kid", json!("n1"))]),
            &claims("future-key.example"),
        ),
        "key_not_yet_valid",
    ));
    corpus.push((
        "JWKS key whose certificate expired",
        sign(
            &jwks_expired.key,
            "RS256",
            header(&[("kid", json!("j-expired"))]),
            &claims("jwks.example"),
        ),
        "key_expired",
    ));
    // Size: refused by length, before decoding.
    corpus.push((
        "16 KiB + 1",
        format!("{}.{}", good_f, "A".repeat(MAX_TOKEN_BYTES - good_f.len())),
        "malformed",
    ));
    corpus.push(("64 KiB header", huge_header(64 * 1024), "malformed"));
    corpus.push(("1 MiB header", huge_header(1024 * 1024), "malformed"));
    // Encoding.
    corpus.push(("empty", String::new(), "malformed"));
    corpus.push(("two segments", format!("{good_h}.{good_p}"), "malformed"));
    corpus.push(("four segments", format!("{good_f}.{good_s}"), "malformed"));
    corpus.push((
        "five segments (JWE)",
        format!("{good_h}..{good_p}.{good_s}.tag"),
        "malformed",
    ));
    corpus.push(("only dots", "..".to_owned(), "malformed"));
    corpus.push(("empty header", format!(".{good_p}.{good_s}"), "malformed"));
    corpus.push(("empty payload", format!("{good_h}..{good_s}"), "malformed"));
    corpus.push((
        "empty signature",
        format!("{good_h}.{good_p}."),
        "bad_signature",
    ));
    corpus.push((
        "header not base64url",
        with_part(&good_f, 0, "!!!"),
        "malformed",
    ));
    corpus.push((
        "header in standard base64",
        with_part(
            &good_f,
            0,
            &STANDARD.encode(format!(r#"{{"alg":"RS256","x5t":"{}","p":"??>>"}}"#, f.x5t)),
        ),
        "malformed",
    ));
    corpus.push((
        "payload not base64url",
        with_part(&good_f, 1, "e30*"),
        "malformed",
    ));
    corpus.push((
        "signature not base64url",
        with_part(&good_f, 2, "*&^%"),
        "bad_signature",
    ));
    corpus.push((
        "padding on the header",
        with_part(&good_f, 0, &format!("{good_h}==")),
        "bad_signature",
    ));
    corpus.push((
        "padding on the payload",
        with_part(&good_f, 1, &format!("{good_p}=")),
        "bad_signature",
    ));
    corpus.push((
        "padding on the signature",
        format!("{good_f}=="),
        "bad_signature",
    ));
    corpus.push(("leading space", format!(" {good_f}"), "malformed"));
    corpus.push(("trailing newline", format!("{good_f}\n"), "bad_signature"));
    corpus.push((
        "tab inside the payload",
        with_part(&good_f, 1, &format!("{}\t{}", &good_p[..10], &good_p[10..])),
        "malformed",
    ));
    // Non-UTF-8 bytes cannot reach a &str (the stage's protobuf string fails to decode
    // first); what can arrive is their lossy replacement, or non-ASCII text.
    corpus.push((
        "replacement characters in the header",
        with_part(&good_f, 0, &lossy),
        "malformed",
    ));
    corpus.push((
        "non-ASCII in the payload segment",
        with_part(&good_f, 1, &format!("{good_p}é")),
        "malformed",
    ));
    corpus.push((
        "header decoding to invalid UTF-8",
        with_part(&good_f, 0, &b64([0xffu8, 0xfe, b'{', 0x80])),
        "malformed",
    ));
    corpus.push((
        "header a JSON array",
        with_part(&good_f, 0, &b64(r#"["RS256"]"#)),
        "malformed",
    ));
    corpus.push((
        "payload nested 4000 deep",
        with_part(&good_f, 1, &b64(&nested)),
        "malformed",
    ));
    let mut longer = claims("fabrikam.com");
    longer["exp"] = json!(NOW + 86_000);
    corpus.push((
        "signature transplanted onto forged claims",
        with_part(&good_f, 1, &b64(longer.to_string())),
        "bad_signature",
    ));

    let mut rejected = 0;
    let mut by_reason: BTreeMap<&str, usize> = BTreeMap::new();
    let mut wrong = Vec::new();
    for (name, token, expected) in &corpus {
        match auth.authenticate_at(token, NOW_MS).await {
            Ok(accepted) => wrong.push(format!("{name}: ACCEPTED as {}", accepted.tenant)),
            Err(rejection) => {
                rejected += 1;
                *by_reason.entry(rejection.reason.code()).or_default() += 1;
                if rejection.reason.code() != *expected {
                    wrong.push(format!(
                        "{name}: {} (expected {expected})",
                        rejection.reason
                    ));
                }
            }
        }
    }
    println!(
        "hostile corpus: {} tokens, {rejected} rejected, {} accepted; by reason: {by_reason:?}",
        corpus.len(),
        corpus.len() - rejected
    );
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert_eq!(rejected, corpus.len(), "100% rejected");
    assert!(corpus.len() >= 25);

    // No request to any URL a token named; the tenant's own endpoint only at its own path,
    // and only once: unknown kids inside the cooldown fetch nothing.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        attacker.hits.load(Ordering::SeqCst),
        0,
        "{:?}",
        attacker.paths
    );
    assert_eq!(
        *tenant_endpoint.paths.lock().expect("lock"),
        vec!["/jwks.json".to_owned()]
    );

    // The oversized tokens are refused by their length alone: nothing decoded (the
    // rejection carries no header fact), nothing verified, and in about the time of a
    // length check.
    for (name, token, _) in corpus.iter().filter(|(_, t, _)| t.len() > MAX_TOKEN_BYTES) {
        let rejection = auth.authenticate_at(token, NOW_MS).await.expect_err(name);
        assert!(
            matches!(&rejection.reason, Reason::Malformed(d) if d.contains("at most 16384")),
            "{name}: {}",
            rejection.reason
        );
        assert_eq!(*rejection.facts, TokenFacts::default(), "{name}: decoded");
    }
    let huge = huge_header(1024 * 1024);
    let rounds = 1000;
    let started = Instant::now();
    for _ in 0..rounds {
        assert!(auth.authenticate_at(&huge, NOW_MS).await.is_err());
    }
    let per_huge = started.elapsed() / rounds;
    let started = Instant::now();
    let mut c = claims("fabrikam.com");
    for i in 0..50 {
        c["jti"] = json!(i); // distinct, so none is answered from the cache
        let token = sign(&f.key, "RS256", fx5t(), &c);
        auth.authenticate_at(&token, NOW_MS).await.expect("valid");
    }
    let per_valid = started.elapsed() / 50;
    println!(
        "1 MiB token refused in {per_huge:?} on average; a valid token signed and verified \
         in {per_valid:?}"
    );
    assert!(per_huge < per_valid, "{per_huge:?} vs {per_valid:?}");
}
