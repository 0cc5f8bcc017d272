use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::Value;

use crate::registry::TenantEntry;
use crate::token::UnverifiedToken;
use crate::{KeyCredential, Reason, Rejection};

/// Rules every token is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationConfig {
    /// The relay's audience, accepted when a tenant lists none of its own.
    pub audience: String,
    /// Allowed `alg` values (a subset of RS256, PS256, ES256).
    pub algorithms: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
    /// Largest `exp - nbf` accepted.
    pub max_lifetime: Duration,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        Self {
            audience: "pushrelay".to_owned(),
            algorithms: vec!["RS256".to_owned()],
            leeway: Duration::from_secs(60),
            max_lifetime: Duration::from_secs(24 * 3600),
        }
    }
}

/// A token that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidToken {
    /// The tenant (`tid`).
    pub tenant: String,
    /// `exp`, Unix seconds.
    pub expires_at: i64,
    /// Identity of the key that verified it (thumbprint or key id).
    pub key_identity: String,
    /// End of that key's validity, Unix milliseconds.
    pub key_not_after_ms: i64,
}

/// Where to find a tenant's keys beyond the registered ones.
pub(crate) enum KeySource<'a> {
    /// Only the registered credentials.
    Registered,
    /// Also these (from the tenant's JWKS metadata).
    WithMetadata(&'a [KeyCredential]),
}

/// Validates `token` for `tenant` at `now_ms` (Unix milliseconds): header, key selection,
/// key window, signature and claims. Pure: no clock, no I/O.
pub fn validate_token(
    token: &UnverifiedToken<'_>,
    tenant: &TenantEntry,
    config: &ValidationConfig,
    now_ms: i64,
) -> Result<ValidToken, Rejection> {
    validate_with(token, tenant, KeySource::Registered, config, now_ms)
}

pub(crate) fn check_algorithm(
    token: &UnverifiedToken<'_>,
    config: &ValidationConfig,
) -> Result<Algorithm, Rejection> {
    let alg = token.header.alg.as_str();
    let allowed = config.algorithms.iter().any(|a| a == alg);
    let algorithm = match alg {
        "RS256" => Algorithm::RS256,
        "PS256" => Algorithm::PS256,
        "ES256" => Algorithm::ES256,
        _ => return Err(token.reject(Reason::AlgorithmNotAllowed(alg.to_owned()))),
    };
    if !allowed {
        return Err(token.reject(Reason::AlgorithmNotAllowed(alg.to_owned())));
    }
    Ok(algorithm)
}

/// Finds the key the header names among the tenant's.
pub(crate) fn select_key<'k>(
    token: &UnverifiedToken<'_>,
    keys: impl IntoIterator<Item = &'k KeyCredential>,
) -> Result<Option<&'k KeyCredential>, Rejection> {
    let x5t = token.header.x5t.as_deref();
    let kid = token.header.kid.as_deref();
    if x5t.is_none() && kid.is_none() {
        return Err(token.reject(Reason::MissingKeyId));
    }
    Ok(keys.into_iter().find(|key| key.is_named_by(x5t, kid)))
}

pub(crate) fn validate_with(
    token: &UnverifiedToken<'_>,
    tenant: &TenantEntry,
    source: KeySource<'_>,
    config: &ValidationConfig,
    now_ms: i64,
) -> Result<ValidToken, Rejection> {
    let algorithm = check_algorithm(token, config)?;
    match token.tenant() {
        None => return Err(token.reject(Reason::MissingTenant)),
        Some(tid) if tid != tenant.id => return Err(token.reject(Reason::UnknownTenant)),
        Some(_) => {}
    }
    if !tenant.enabled {
        return Err(token.reject(Reason::TenantDisabled));
    }
    let metadata_keys: &[KeyCredential] = match source {
        KeySource::Registered => &[],
        KeySource::WithMetadata(keys) => keys,
    };
    let key = select_key(token, tenant.keys.iter().chain(metadata_keys))?
        .ok_or_else(|| token.reject(Reason::UnknownKey))?;
    key.check_window(now_ms).map_err(|r| token.reject(r))?;
    if !key.kind.matches(&token.header.alg) {
        return Err(token.reject(Reason::KeyAlgorithmMismatch));
    }
    let verified = jsonwebtoken::crypto::verify(
        token.signature,
        token.signing_input.as_bytes(),
        key.decoding_key(),
        algorithm,
    )
    .unwrap_or(false);
    if !verified {
        return Err(token.reject(Reason::BadSignature));
    }
    let expires_at = check_claims(token, tenant, config, now_ms)?;
    Ok(ValidToken {
        tenant: tenant.id.clone(),
        expires_at,
        key_identity: key.identity().to_owned(),
        key_not_after_ms: key.not_after_ms,
    })
}

/// Checks the claims of a token whose signature verified; returns `exp`.
fn check_claims(
    token: &UnverifiedToken<'_>,
    tenant: &TenantEntry,
    config: &ValidationConfig,
    now_ms: i64,
) -> Result<i64, Rejection> {
    let claims = &token.claims;
    let reject = |reason| token.reject(reason);
    let exp = numeric(claims.get("exp"), "exp").map_err(reject)?;
    let nbf = numeric(claims.get("nbf"), "nbf").map_err(reject)?;
    match claims.get("iss") {
        None => return Err(reject(Reason::MissingClaim("iss"))),
        Some(Value::String(iss)) if *iss == tenant.issuer => {}
        Some(_) => return Err(reject(Reason::WrongIssuer)),
    }
    let accepted = |aud: &str| {
        if tenant.audiences.is_empty() {
            aud == config.audience
        } else {
            tenant.audiences.iter().any(|a| a == aud)
        }
    };
    let audience_ok = match claims.get("aud") {
        None => return Err(reject(Reason::MissingClaim("aud"))),
        Some(Value::String(aud)) => accepted(aud),
        Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str().is_some_and(&accepted)),
        Some(_) => false,
    };
    if !audience_ok {
        return Err(reject(Reason::WrongAudience));
    }
    let now = now_ms.div_euclid(1000);
    let leeway = config.leeway.as_secs() as i64;
    if now > exp.saturating_add(leeway) {
        return Err(reject(Reason::Expired));
    }
    if now.saturating_add(leeway) < nbf {
        return Err(reject(Reason::NotYetValid));
    }
    let lifetime = exp.saturating_sub(nbf);
    if lifetime <= 0 || lifetime > config.max_lifetime.as_secs() as i64 {
        return Err(reject(Reason::LifetimeTooLong));
    }
    Ok(exp)
}

/// A NumericDate claim: a JSON number (integer or not), as seconds.
fn numeric(value: Option<&Value>, name: &'static str) -> Result<i64, Reason> {
    match value {
        None => Err(Reason::MissingClaim(name)),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f as i64))
            .ok_or(Reason::ClaimNotNumeric(name)),
        Some(_) => Err(Reason::ClaimNotNumeric(name)),
    }
}
