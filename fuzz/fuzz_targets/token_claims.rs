//! Tokens whose header and claims are arbitrary bytes but whose signature is real: the
//! target signs `base64url(header).base64url(claims)` with one of the tenant's keys, so the
//! checks behind the signature (key choice, `alg` against the key, the claims) are reached.
//!
//! Checks, differentially: the authenticator accepts the token exactly when the rules of
//! `pushrelay-auth` (crate documentation) hold, as restated below from the JSON: at most
//! 16 KiB; no `crit` header and a `typ`, if any, of JWT; `alg` allowed and the one signed
//! with; the header names the signing key (`x5t` first, else `kid`); `tid` is the tenant,
//! `iss` its issuer, `aud` the relay's audience (a string or an array holding it); `exp`
//! and `nbf` are numbers with the time between them (60 s leeway); `0 < exp - nbf <= 24 h`.
//! When accepted, `expires_at` is `exp`.
//!
//! Input: a byte choosing the signature (RS256, PS256, ES256, ES256), the header field,
//! then the claims.
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use pushrelay_fuzz::tenant::{EC_KID, Fixture, ISSUER, RSA_KID, Signer, TENANT};
use pushrelay_fuzz::{Input, NOW_MS};
use serde_json::{Map, Value};

const AUDIENCE: &str = "pushrelay";
const LEEWAY_SECS: i64 = 60;
const MAX_LIFETIME_SECS: i64 = 24 * 3600;
const MAX_TOKEN_BYTES: usize = 16 * 1024;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let signer = match input.byte() % 4 {
        0 => Signer::Rs256,
        1 => Signer::Ps256,
        _ => Signer::Es256,
    };
    let header = input.field();
    let claims = input.rest();
    let fixture = Fixture::get();
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let signature = fixture.sign(signer, signing_input.as_bytes());
    let token = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature));

    let expected = expected(fixture, signer, &token, header, claims);
    match (fixture.authenticate(&token), expected) {
        (Ok(accepted), Ok(exp)) => {
            assert_eq!(&*accepted.tenant, TENANT);
            assert_eq!(accepted.expires_at, exp);
        }
        (Err(_), Err(_)) => {}
        (Ok(accepted), Err(rule)) => {
            panic!("accepted ({accepted:?}) although {rule}")
        }
        (Err(rejection), Ok(_)) => {
            panic!("rejected ({}) although every rule holds", rejection.reason)
        }
    }
});

fn object(bytes: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    }
}

fn text<'a>(map: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    match map.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Some(s),
        _ => None,
    }
}

fn numeric(value: Option<&Value>) -> Option<i64> {
    let number = value?.as_number()?;
    number
        .as_i64()
        .or_else(|| number.as_f64().map(|f| f as i64))
}

/// `Ok(exp)` when the token must be accepted, else the first rule it breaks.
fn expected(
    fixture: &Fixture,
    signer: Signer,
    token: &str,
    header: &[u8],
    claims: &[u8],
) -> Result<i64, &'static str> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err("the token is too long");
    }
    let header = object(header).ok_or("the header is not a JSON object")?;
    let claims = object(claims).ok_or("the claims are not a JSON object")?;
    if header.contains_key("crit") {
        return Err("the header has crit");
    }
    match header.get("typ") {
        None => {}
        Some(Value::String(typ))
            if typ.eq_ignore_ascii_case("JWT") || typ.eq_ignore_ascii_case("application/jwt") => {}
        Some(_) => return Err("the typ is not JWT"),
    }
    let Some(Value::String(alg)) = header.get("alg") else {
        return Err("there is no alg");
    };
    if !matches!(alg.as_str(), "RS256" | "PS256" | "ES256") {
        return Err("the alg is not allowed");
    }
    if text(&claims, "tid") != Some(TENANT) {
        return Err("tid is not the tenant");
    }
    let keys = [
        (RSA_KID, fixture.rsa_x5t.as_str()),
        (EC_KID, fixture.ec_x5t.as_str()),
    ];
    let named = match (text(&header, "x5t"), text(&header, "kid")) {
        (Some(x5t), _) => keys.iter().find(|(_, thumbprint)| *thumbprint == x5t),
        (None, Some(kid)) => keys
            .iter()
            .find(|(key_id, thumbprint)| *key_id == kid || *thumbprint == kid),
        (None, None) => return Err("no key is named"),
    };
    let Some((kid, _)) = named else {
        return Err("the named key is unknown");
    };
    if *kid != signer.kid() || alg != signer.alg() {
        return Err("the signature does not verify with the named key and alg");
    }
    let exp = numeric(claims.get("exp")).ok_or("exp is not a number")?;
    let nbf = numeric(claims.get("nbf")).ok_or("nbf is not a number")?;
    if claims.get("iss") != Some(&Value::String(ISSUER.to_owned())) {
        return Err("iss is not the issuer");
    }
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => aud == AUDIENCE,
        Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(AUDIENCE)),
        _ => false,
    };
    if !audience_ok {
        return Err("aud is not the relay's audience");
    }
    let now = NOW_MS / 1000;
    if now > exp.saturating_add(LEEWAY_SECS) {
        return Err("the token expired");
    }
    if now.saturating_add(LEEWAY_SECS) < nbf {
        return Err("the token is not valid yet");
    }
    let lifetime = exp.saturating_sub(nbf);
    if lifetime <= 0 || lifetime > MAX_LIFETIME_SECS {
        return Err("the lifetime is not within (0, 24 h]");
    }
    Ok(exp)
}
