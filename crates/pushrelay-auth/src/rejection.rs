use std::fmt;

/// Why a token was rejected. [`Reason::code`] is the stable machine-readable form used in
/// metrics labels and tenant feedback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Not three base64url parts of JSON objects, too large, or with a header the relay
    /// refuses (`crit`, a `typ` other than JWT).
    Malformed(String),
    /// `alg` is not on the allow-list (`none`, HMAC and unknown ones never are).
    AlgorithmNotAllowed(String),
    /// No `tid` claim.
    MissingTenant,
    /// `tid` names no registered tenant.
    UnknownTenant,
    /// The tenant is disabled.
    TenantDisabled,
    /// Neither `x5t` nor `kid` in the header.
    MissingKeyId,
    /// No key of the tenant has that `x5t` / `kid`.
    UnknownKey,
    /// The key's validity starts later.
    KeyNotYetValid,
    /// The key's validity ended.
    KeyExpired,
    /// The key's type does not match `alg` (for example an RSA key with ES256).
    KeyAlgorithmMismatch,
    /// The signature does not verify.
    BadSignature,
    /// A required claim is missing.
    MissingClaim(&'static str),
    /// A time claim is not a number.
    ClaimNotNumeric(&'static str),
    /// `iss` is not the tenant's issuer.
    WrongIssuer,
    /// `aud` is not an accepted audience.
    WrongAudience,
    /// `exp` (plus leeway) has passed.
    Expired,
    /// `nbf` (minus leeway) is still ahead.
    NotYetValid,
    /// `exp - nbf` is above the maximum lifetime, or not positive.
    LifetimeTooLong,
    /// The tenant's JWKS metadata could not be fetched and no earlier copy exists.
    MetadataUnavailable(String),
}

impl Reason {
    /// Stable code, for metrics and feedback.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::AlgorithmNotAllowed(_) => "algorithm_not_allowed",
            Self::MissingTenant => "missing_tenant",
            Self::UnknownTenant => "unknown_tenant",
            Self::TenantDisabled => "tenant_disabled",
            Self::MissingKeyId => "missing_key_id",
            Self::UnknownKey => "unknown_key",
            Self::KeyNotYetValid => "key_not_yet_valid",
            Self::KeyExpired => "key_expired",
            Self::KeyAlgorithmMismatch => "key_algorithm_mismatch",
            Self::BadSignature => "bad_signature",
            Self::MissingClaim(_) => "missing_claim",
            Self::ClaimNotNumeric(_) => "claim_not_numeric",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::LifetimeTooLong => "lifetime_too_long",
            Self::MetadataUnavailable(_) => "metadata_unavailable",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(detail) => write!(f, "malformed token: {detail}"),
            Self::AlgorithmNotAllowed(alg) => write!(f, "algorithm {alg:?} is not allowed"),
            Self::MissingTenant => f.write_str("the token has no tid claim"),
            Self::UnknownTenant => f.write_str("the tenant is not registered with the relay"),
            Self::TenantDisabled => f.write_str("the tenant is disabled"),
            Self::MissingKeyId => f.write_str("the token header names no key (x5t or kid)"),
            Self::UnknownKey => f.write_str("no key of the tenant matches the token's x5t/kid"),
            Self::KeyNotYetValid => f.write_str("the signing key is not valid yet"),
            Self::KeyExpired => f.write_str("the signing key's validity has ended"),
            Self::KeyAlgorithmMismatch => f.write_str("the key type does not match alg"),
            Self::BadSignature => f.write_str("the signature does not verify"),
            Self::MissingClaim(claim) => write!(f, "the {claim} claim is missing"),
            Self::ClaimNotNumeric(claim) => write!(f, "the {claim} claim is not a number"),
            Self::WrongIssuer => f.write_str("iss is not the tenant's issuer"),
            Self::WrongAudience => f.write_str("aud is not an accepted audience"),
            Self::Expired => f.write_str("the token has expired"),
            Self::NotYetValid => f.write_str("the token is not valid yet (nbf)"),
            Self::LifetimeTooLong => f.write_str("the token's lifetime exceeds the maximum"),
            Self::MetadataUnavailable(detail) => {
                write!(f, "the tenant's JWKS metadata is unavailable: {detail}")
            }
        }
    }
}

/// What could be read of a rejected token's header and claims (unverified).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenFacts {
    /// The `tid` claim, when readable.
    pub claimed_tenant: Option<String>,
    /// The header's `alg`, when readable.
    pub algorithm: Option<String>,
    /// The header's `kid`, when present.
    pub key_id: Option<String>,
    /// The header's `x5t`, when present.
    pub thumbprint: Option<String>,
}

/// A rejected token: the reason plus what could be read of it, for tenant feedback.
/// Never holds the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Why.
    pub reason: Reason,
    /// What was readable (boxed: rejections are the cold path and stay small).
    pub facts: Box<TokenFacts>,
}

impl Rejection {
    /// A rejection with nothing readable besides the reason.
    pub fn bare(reason: Reason) -> Self {
        Self {
            reason,
            facts: Box::default(),
        }
    }

    /// The `tid` claim, when readable (unverified).
    pub fn claimed_tenant(&self) -> Option<&str> {
        self.facts.claimed_tenant.as_deref()
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.reason.fmt(f)
    }
}

impl std::error::Error for Rejection {}
