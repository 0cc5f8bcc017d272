//! The pure operations on tenant records. No I/O.

use pushrelay_auth::{KeyCredential, valid_tenant_id};
use pushrelay_proto::v1::{KeyCredential as KeyRecord, Tenant};

/// Why an operator command cannot be carried out. Each message says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CtlError {
    /// The domain is not a usable tenant id.
    #[error(
        "{0:?} is not a tenant id: use the organisation's domain in lower case, like fabrikam.com"
    )]
    InvalidDomain(String),
    /// The tenant is not registered.
    #[error(
        "tenant {0} is not registered: enable it first with `relayctl tenant enable {0} --issuer ...`"
    )]
    UnknownTenant(String),
    /// The certificate expired already.
    #[error("the certificate {thumbprint} expired at {not_after}: export a current certificate")]
    Expired {
        /// Its thumbprint.
        thumbprint: String,
        /// When it expired.
        not_after: String,
    },
    /// The key is registered already.
    #[error("tenant {tenant} already has the key {id}; remove it first to change its validity")]
    Duplicate {
        /// Tenant.
        tenant: String,
        /// Thumbprint or key id.
        id: String,
    },
    /// No key with that id.
    #[error("tenant {tenant} has no key {id}; `relayctl tenant show {tenant}` lists its keys")]
    NoSuchKey {
        /// Tenant.
        tenant: String,
        /// What was asked.
        id: String,
    },
    /// Enabling needs an issuer.
    #[error("tenant {0} has no issuer yet: pass --issuer (the iss its tokens carry)")]
    MissingIssuer(String),
}

/// A normalised tenant id.
pub fn tenant_id(domain: &str) -> Result<String, CtlError> {
    let id = domain.trim().to_ascii_lowercase();
    if valid_tenant_id(&id) {
        Ok(id)
    } else {
        Err(CtlError::InvalidDomain(domain.to_owned()))
    }
}

/// What `tenant enable` changes.
#[derive(Debug, Clone, Default)]
pub struct Enable {
    /// New issuer, if given.
    pub issuer: Option<String>,
    /// Keys to add.
    pub keys: Vec<KeyCredential>,
    /// New metadata URL, if given.
    pub metadata_url: Option<String>,
    /// Audiences to accept (replace the list when non-empty).
    pub audiences: Vec<String>,
}

/// Enables (creating if needed) a tenant: the counterpart of Exchange's
/// `Enable-PushNotificationProxy`.
pub fn enable(
    id: &str,
    existing: Option<Tenant>,
    change: Enable,
    now_ms: i64,
) -> Result<Tenant, CtlError> {
    let mut tenant = existing.unwrap_or_else(|| Tenant {
        id: id.to_owned(),
        ..Tenant::default()
    });
    if let Some(issuer) = change.issuer {
        tenant.issuer = issuer;
    }
    if tenant.issuer.is_empty() {
        return Err(CtlError::MissingIssuer(id.to_owned()));
    }
    if let Some(url) = change.metadata_url {
        tenant.metadata_url = url;
    }
    if !change.audiences.is_empty() {
        tenant.audiences = change.audiences;
    }
    for key in change.keys {
        tenant = add_key(tenant, &key, now_ms)?;
    }
    tenant.enabled = true;
    tenant.updated_time_ms = now_ms;
    Ok(tenant)
}

/// Disables a tenant: its tokens are rejected from now on, its keys kept.
pub fn disable(id: &str, existing: Option<Tenant>, now_ms: i64) -> Result<Tenant, CtlError> {
    let mut tenant = existing.ok_or_else(|| CtlError::UnknownTenant(id.to_owned()))?;
    tenant.enabled = false;
    tenant.updated_time_ms = now_ms;
    Ok(tenant)
}

/// Adds a key, refusing expired certificates and duplicates (RSA under 2048 bits was
/// refused when the certificate was read).
pub fn add_key(mut tenant: Tenant, key: &KeyCredential, now_ms: i64) -> Result<Tenant, CtlError> {
    let id = key.identity().to_owned();
    if key.not_after_ms < now_ms {
        return Err(CtlError::Expired {
            thumbprint: id,
            not_after: format_ms(key.not_after_ms),
        });
    }
    let duplicate = tenant.keys.iter().any(|existing| {
        (!existing.thumbprint.is_empty()
            && existing.thumbprint == key.thumbprint.clone().unwrap_or_default())
            || (!existing.key_id.is_empty() && Some(&existing.key_id) == key.key_id.as_ref())
    });
    if duplicate {
        return Err(CtlError::Duplicate {
            tenant: tenant.id.clone(),
            id,
        });
    }
    tenant.keys.push(key.to_proto());
    tenant.updated_time_ms = now_ms;
    Ok(tenant)
}

/// Removes the key whose thumbprint or key id is `id`.
pub fn remove_key(mut tenant: Tenant, id: &str, now_ms: i64) -> Result<Tenant, CtlError> {
    let before = tenant.keys.len();
    tenant
        .keys
        .retain(|k: &KeyRecord| k.thumbprint != id && k.key_id != id);
    if tenant.keys.len() == before {
        return Err(CtlError::NoSuchKey {
            tenant: tenant.id.clone(),
            id: id.to_owned(),
        });
    }
    tenant.updated_time_ms = now_ms;
    Ok(tenant)
}

/// RFC 3339 text of a Unix-milliseconds time.
pub fn format_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// Parses an RFC 3339 time into Unix milliseconds.
pub fn parse_time(text: &str) -> Result<i64, String> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|err| format!("{text:?} is not an RFC 3339 time like 2026-12-01T00:00:00Z: {err}"))
}

/// Parses a lifetime like `90s`, `30m`, `1h`, `2d`.
pub fn parse_lifetime(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a lifetime like 90s, 30m, 1h or 2d"))?;
    let seconds = match unit {
        "s" | "" => number,
        "m" => number * 60,
        "h" => number * 3600,
        "d" => number * 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    Ok(std::time::Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(not_after_year: i32) -> KeyCredential {
        let key =
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .expect("rsa");
        let mut params =
            rcgen::CertificateParams::new(vec!["fabrikam.com".to_owned()]).expect("params");
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(not_after_year, 1, 1);
        let cert = params.self_signed(&key).expect("cert");
        KeyCredential::from_certificate_der(cert.der()).expect("credential")
    }

    const NOW: i64 = 1_800_000_000_000; // 2027-01-15

    #[test]
    fn enable_creates_then_updates() {
        let key = cert(2040);
        let change = Enable {
            issuer: Some("iss".into()),
            keys: vec![key.clone()],
            ..Enable::default()
        };
        let tenant = enable("fabrikam.com", None, change, NOW).expect("enabled");
        assert!(tenant.enabled);
        assert_eq!(tenant.keys.len(), 1);
        let disabled = disable("fabrikam.com", Some(tenant.clone()), NOW).expect("disabled");
        assert!(!disabled.enabled);
        let again =
            enable("fabrikam.com", Some(disabled), Enable::default(), NOW).expect("re-enabled");
        assert!(again.enabled);
        assert_eq!(again.issuer, "iss", "kept");
        assert_eq!(again.keys.len(), 1, "keys kept");
    }

    #[test]
    fn enable_without_issuer_says_what_to_pass() {
        let err = enable("fabrikam.com", None, Enable::default(), NOW).expect_err("no issuer");
        assert!(err.to_string().contains("--issuer"));
    }

    #[test]
    fn expired_and_duplicate_keys_are_refused() {
        let tenant = enable(
            "fabrikam.com",
            None,
            Enable {
                issuer: Some("i".into()),
                ..Enable::default()
            },
            NOW,
        )
        .expect("enabled");
        let old = cert(2025);
        assert!(matches!(
            add_key(tenant.clone(), &old, NOW),
            Err(CtlError::Expired { .. })
        ));
        let key = cert(2040);
        let with = add_key(tenant, &key, NOW).expect("added");
        assert!(matches!(
            add_key(with.clone(), &key, NOW),
            Err(CtlError::Duplicate { .. })
        ));
        let thumbprint = key.thumbprint.clone().expect("x5t");
        let without = remove_key(with, &thumbprint, NOW).expect("removed");
        assert!(without.keys.is_empty());
        assert!(matches!(
            remove_key(without, &thumbprint, NOW),
            Err(CtlError::NoSuchKey { .. })
        ));
    }

    #[test]
    fn ids_times_and_lifetimes() {
        assert_eq!(tenant_id(" Fabrikam.COM "), Ok("fabrikam.com".into()));
        assert!(tenant_id("a/b").is_err());
        assert_eq!(parse_time("2027-01-15T08:00:00Z"), Ok(1_800_000_000_000));
        assert_eq!(format_ms(1_800_000_000_000), "2027-01-15T08:00:00Z");
        assert!(parse_time("tomorrow").is_err());
        assert_eq!(
            parse_lifetime("1h"),
            Ok(std::time::Duration::from_secs(3600))
        );
        assert_eq!(
            parse_lifetime("90s"),
            Ok(std::time::Duration::from_secs(90))
        );
        assert!(parse_lifetime("1y").is_err());
    }
}
