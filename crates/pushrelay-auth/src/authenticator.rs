use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use moka::Expiry;
use moka::sync::Cache;

use crate::registry::TenantEntry;
use crate::token::{MAX_TOKEN_BYTES, UnverifiedToken};
use crate::validator::{KeySource, check_algorithm, validate_with};
use crate::{JwksConfig, JwksFetcher, Reason, Rejection, TenantRegistry, ValidationConfig};

/// Configuration of an [`Authenticator`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// The validation rules.
    pub validation: ValidationConfig,
    /// How many validated tokens to remember (default 1,000,000).
    pub token_cache_capacity: u64,
    /// JWKS metadata fetching.
    pub jwks: JwksConfig,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            validation: ValidationConfig::default(),
            token_cache_capacity: 1_000_000,
            jwks: JwksConfig::default(),
        }
    }
}

/// A successfully authenticated token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// The tenant the token speaks for.
    pub tenant: Arc<str>,
    /// `exp`, Unix seconds.
    pub expires_at: i64,
    /// Whether the answer came from the validated-token cache.
    pub cached: bool,
}

#[derive(Debug)]
struct CachedToken {
    tenant: Arc<str>,
    expires_at: i64,
    generation: u64,
    key_not_after_ms: i64,
    /// Until when (Unix ms) the cache entry may answer: `exp` plus leeway.
    valid_until_ms: i64,
}

impl CachedToken {
    /// What a cache hit answers.
    fn answer(&self) -> Authenticated {
        Authenticated {
            tenant: Arc::clone(&self.tenant),
            expires_at: self.expires_at,
            cached: true,
        }
    }
}

struct UntilValid;

impl Expiry<[u8; 32], Arc<CachedToken>> for UntilValid {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Arc<CachedToken>,
        _created_at: Instant,
    ) -> Option<Duration> {
        let left = value.valid_until_ms.saturating_sub(now_ms()).max(0);
        Some(Duration::from_millis(left as u64))
    }
}

/// Validates tokens against the tenant registry, with a cache of validated tokens (by
/// SHA-256 of the token, until `exp`) and JWKS metadata for tenants that publish one.
///
/// A cache hit is re-checked against the tenant's current record: disabling a tenant,
/// or changing its keys, takes effect for cached tokens too.
pub struct Authenticator {
    registry: Arc<TenantRegistry>,
    config: AuthConfig,
    tokens: Cache<[u8; 32], Arc<CachedToken>>,
    jwks: JwksFetcher,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator over `registry`.
    pub fn new(registry: Arc<TenantRegistry>, config: AuthConfig) -> Self {
        crate::metrics::describe();
        let tokens = Cache::builder()
            .max_capacity(config.token_cache_capacity)
            .expire_after(UntilValid)
            .build();
        let jwks = JwksFetcher::new(config.jwks.clone());
        Self {
            registry,
            config,
            tokens,
            jwks,
        }
    }

    /// The tenant registry it reads.
    pub fn registry(&self) -> &Arc<TenantRegistry> {
        &self.registry
    }

    /// Authenticates `token` now.
    pub async fn authenticate(&self, token: &str) -> Result<Authenticated, Rejection> {
        self.authenticate_at(token, now_ms()).await
    }

    /// Authenticates `token` as of `now_ms` (Unix milliseconds).
    pub async fn authenticate_at(
        &self,
        token: &str,
        now_ms: i64,
    ) -> Result<Authenticated, Rejection> {
        // An oversized token is refused by its length alone: not hashed, decoded or verified.
        let digest = (token.len() <= MAX_TOKEN_BYTES).then(|| token_digest(token));
        if let Some(hit) = digest.as_ref().and_then(|d| self.cached(d, now_ms)) {
            return Ok(hit);
        }
        let result = self.validate(token, now_ms).await;
        match &result {
            Ok(_) => {
                metrics::counter!(crate::metrics::TOKENS, "result" => "accepted", "reason" => "verified")
                    .increment(1);
            }
            Err(rejection) => {
                metrics::counter!(crate::metrics::TOKENS, "result" => "rejected", "reason" => rejection.reason.code())
                    .increment(1);
            }
        }
        let (entry, authenticated) = result?;
        if let Some(digest) = digest {
            self.tokens.insert(digest, Arc::new(entry));
        }
        Ok(authenticated)
    }

    /// The cached answer for `token` as of `now_ms`, if it has one that still holds.
    /// Synchronous: this is the hot path (a SHA-256, a cache lookup and a registry check).
    pub fn authenticate_cached(&self, token: &str, now_ms: i64) -> Option<Authenticated> {
        if token.len() > MAX_TOKEN_BYTES {
            return None;
        }
        self.cached(&token_digest(token), now_ms)
    }

    /// Like [`Authenticator::authenticate_cached`], looking first in `recent`, a memo of
    /// the tokens this thread saw accepted lately: a hit there costs a comparison of the
    /// token instead of a SHA-256 and a shared-cache lookup. Every hit is re-checked
    /// against the tenant's current record and the token's and key's lifetimes, exactly
    /// as a cache hit is.
    pub fn authenticate_recent(
        &self,
        recent: &mut RecentTokens,
        token: &str,
        now_ms: i64,
    ) -> Option<Authenticated> {
        if token.len() > MAX_TOKEN_BYTES {
            return None;
        }
        let slot = recent.slot(token);
        if let Some((known, hit)) = &recent.slots[slot]
            && **known == *token
        {
            if self.still_valid(hit, now_ms) {
                recent.hits.increment(1);
                return Some(hit.answer());
            }
            recent.slots[slot] = None;
            return None;
        }
        let hit = self.shared_hit(&token_digest(token), now_ms)?;
        recent.hits.increment(1);
        let authenticated = hit.answer();
        recent.slots[slot] = Some((token.into(), hit));
        Some(authenticated)
    }

    fn cached(&self, digest: &[u8; 32], now_ms: i64) -> Option<Authenticated> {
        let hit = self.shared_hit(digest, now_ms)?;
        metrics::counter!(crate::metrics::TOKENS, "result" => "accepted", "reason" => "cached")
            .increment(1);
        Some(hit.answer())
    }

    /// The shared cache's entry for `digest`, if it still holds as of `now_ms`.
    fn shared_hit(&self, digest: &[u8; 32], now_ms: i64) -> Option<Arc<CachedToken>> {
        self.tokens
            .get(digest)
            .filter(|hit| self.still_valid(hit, now_ms))
    }

    fn still_valid(&self, hit: &CachedToken, now_ms: i64) -> bool {
        if now_ms > hit.valid_until_ms || now_ms > hit.key_not_after_ms {
            return false;
        }
        self.registry
            .get(&hit.tenant)
            .is_some_and(|tenant| tenant.enabled && tenant.generation == hit.generation)
    }

    async fn validate(
        &self,
        token: &str,
        now_ms: i64,
    ) -> Result<(CachedToken, Authenticated), Rejection> {
        let parsed = UnverifiedToken::parse(token)?;
        let validation = &self.config.validation;
        check_algorithm(&parsed, validation)?;
        let tid = parsed
            .tenant()
            .ok_or_else(|| parsed.reject(Reason::MissingTenant))?;
        let tenant: Arc<TenantEntry> = self
            .registry
            .get(tid)
            .ok_or_else(|| parsed.reject(Reason::UnknownTenant))?;
        let registered = validate_with(&parsed, &tenant, KeySource::Registered, validation, now_ms);
        let valid = match (registered, &tenant.metadata_url) {
            (Err(rejection), Some(url)) if rejection.reason == Reason::UnknownKey => {
                let set = self
                    .jwks
                    .keys(
                        url,
                        parsed.header.x5t.as_deref(),
                        parsed.header.kid.as_deref(),
                    )
                    .await
                    .map_err(|err| parsed.reject(Reason::MetadataUnavailable(err)))?;
                validate_with(
                    &parsed,
                    &tenant,
                    KeySource::WithMetadata(&set.keys),
                    validation,
                    now_ms,
                )?
            }
            (result, _) => result?,
        };
        let tenant_id: Arc<str> = Arc::from(valid.tenant.as_str());
        let leeway_ms = validation.leeway.as_millis() as i64;
        Ok((
            CachedToken {
                tenant: Arc::clone(&tenant_id),
                expires_at: valid.expires_at,
                generation: tenant.generation,
                key_not_after_ms: valid.key_not_after_ms,
                valid_until_ms: valid
                    .expires_at
                    .saturating_mul(1000)
                    .saturating_add(leeway_ms),
            },
            Authenticated {
                tenant: tenant_id,
                expires_at: valid.expires_at,
                cached: false,
            },
        ))
    }
}

/// A memo of recently accepted tokens for one thread's hot path (see
/// [`Authenticator::authenticate_recent`]), in front of the shared cache.
///
/// Mail servers reuse one token for its whole lifetime, so a few slots hold the tokens of
/// every busy server. Direct-mapped: a token's slot comes from a keyed hash of its length
/// and last 32 bytes (signature bytes, which no one can choose), and a lookup compares
/// the whole token, so a collision only costs a trip to the shared cache. Only tokens the
/// shared cache accepted enter it; it never answers for a token that cache would refuse.
pub struct RecentTokens {
    slots: Vec<Option<(Box<str>, Arc<CachedToken>)>>,
    hasher: std::hash::RandomState,
    hits: metrics::Counter,
}

impl std::fmt::Debug for RecentTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecentTokens")
            .field("slots", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl RecentTokens {
    /// An empty memo of `slots` slots (rounded up to a power of two).
    pub fn new(slots: usize) -> Self {
        let slots = slots.clamp(1, 1 << 20).next_power_of_two();
        Self {
            slots: vec![None; slots],
            hasher: std::hash::RandomState::new(),
            hits: metrics::counter!(crate::metrics::TOKENS, "result" => "accepted", "reason" => "cached"),
        }
    }

    fn slot(&self, token: &str) -> usize {
        use std::hash::BuildHasher;
        let bytes = token.as_bytes();
        let tail = &bytes[bytes.len().saturating_sub(32)..];
        (self.hasher.hash_one((bytes.len(), tail)) as usize) & (self.slots.len() - 1)
    }
}

fn token_digest(token: &str) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
pub(crate) fn tests_now_ms() -> i64 {
    now_ms()
}
