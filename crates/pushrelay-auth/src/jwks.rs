use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::DecodingKey;
use moka::future::Cache;
use moka::ops::compute::Op;
use serde::Deserialize;

use crate::credential::MIN_RSA_BITS;
use crate::{KeyCredential, KeyKind};

/// Timers and limits of JWKS metadata fetching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksConfig {
    /// After a fetch (successful or not), an unknown `kid` triggers no new fetch of the
    /// same URL for this long (default 5 min).
    pub cooldown: Duration,
    /// Keys older than this are refetched on next use (default 1 h); while the endpoint
    /// fails, the old keys keep being served.
    pub refresh: Duration,
    /// Timeout of one fetch (default 5 s).
    pub timeout: Duration,
    /// Largest metadata document accepted (default 256 KiB).
    pub max_bytes: usize,
}

impl Default for JwksConfig {
    fn default() -> Self {
        Self {
            cooldown: Duration::from_secs(300),
            refresh: Duration::from_secs(3600),
            timeout: Duration::from_secs(5),
            max_bytes: 256 * 1024,
        }
    }
}

/// The keys of one metadata URL as last fetched.
#[derive(Debug, Clone)]
pub(crate) struct KeySet {
    pub(crate) keys: Vec<KeyCredential>,
    /// When keys were last fetched successfully, at the end of that fetch (`None`: never).
    fetched_at: Option<Instant>,
    /// When the last fetch attempt ended.
    attempted_at: Instant,
    last_error: Option<String>,
}

impl KeySet {
    fn names(&self, x5t: Option<&str>, kid: Option<&str>) -> bool {
        self.keys.iter().any(|k| k.is_named_by(x5t, kid))
    }
}

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    x5t: Option<String>,
    #[serde(rename = "use")]
    usage: Option<String>,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
    #[serde(default)]
    x5c: Vec<String>,
}

/// Parses a JWKS document into credentials. Keys that are not for signatures, of an
/// unsupported type, or RSA under 2048 bits are skipped; a key carrying a certificate
/// (`x5c`) takes the certificate's validity window and thumbprint.
pub fn parse_jwks(document: &[u8]) -> Result<Vec<KeyCredential>, String> {
    let set: JwkSet =
        serde_json::from_slice(document).map_err(|err| format!("not a JWKS document: {err}"))?;
    let mut keys = Vec::new();
    for mut jwk in set.keys {
        if jwk.usage.as_deref().is_some_and(|u| u != "sig") {
            continue;
        }
        // An empty `kid` or `x5t` names nothing: a key with only that could never be
        // chosen (found by the `jwks` fuzz target).
        jwk.kid = jwk.kid.filter(|kid| !kid.is_empty());
        jwk.x5t = jwk.x5t.filter(|x5t| !x5t.is_empty());
        if let Some(cert) = jwk.x5c.first() {
            let Ok(der) = STANDARD.decode(cert) else {
                continue;
            };
            if let Ok(key) = KeyCredential::from_certificate_der(&der) {
                keys.push(key.with_key_id(jwk.kid.clone()));
            }
            continue;
        }
        let parsed = match jwk.kty.as_str() {
            "RSA" => {
                let (Some(n), Some(e)) = (&jwk.n, &jwk.e) else {
                    continue;
                };
                let Ok(modulus) = URL_SAFE_NO_PAD.decode(n) else {
                    continue;
                };
                let significant = modulus.iter().skip_while(|b| **b == 0).count();
                let bits = significant * 8;
                if bits < MIN_RSA_BITS {
                    continue;
                }
                DecodingKey::from_rsa_components(n, e)
                    .ok()
                    .map(|key| (key, KeyKind::Rsa { bits }))
            }
            "EC" if jwk.crv.as_deref() == Some("P-256") => {
                let (Some(x), Some(y)) = (&jwk.x, &jwk.y) else {
                    continue;
                };
                DecodingKey::from_ec_components(x, y)
                    .ok()
                    .map(|key| (key, KeyKind::EcP256))
            }
            _ => None,
        };
        if let Some((key, kind)) = parsed
            && (jwk.kid.is_some() || jwk.x5t.is_some())
        {
            keys.push(KeyCredential::from_decoding_key(
                key, kind, jwk.kid, jwk.x5t,
            ));
        }
    }
    Ok(keys)
}

/// Fetches and caches tenants' JWKS metadata: one fetch at a time per URL (callers
/// wait for it and share its result), a refetch on an unknown key at most once per
/// cooldown, keys past their refresh interval served while they are refreshed in the
/// background, and the last good keys served while the endpoint fails.
#[derive(Clone)]
pub struct JwksFetcher {
    client: reqwest::Client,
    sets: Cache<String, Arc<KeySet>>,
    config: JwksConfig,
    /// URLs being refreshed in the background.
    refreshing: Arc<Mutex<HashSet<String>>>,
}

impl std::fmt::Debug for JwksFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksFetcher")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl JwksFetcher {
    /// A fetcher with an empty cache.
    pub fn new(config: JwksConfig) -> Self {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .unwrap_or_default();
        Self {
            client,
            sets: Cache::builder().max_capacity(10_000).build(),
            config,
            refreshing: Arc::default(),
        }
    }

    /// The keys published at `url`, fetching when none are known, when none is named by
    /// `x5t`/`kid` and the cooldown has passed, or when they are older than the refresh
    /// interval. Fails only when no keys were ever fetched from `url`.
    pub(crate) async fn keys(
        &self,
        url: &str,
        x5t: Option<&str>,
        kid: Option<&str>,
    ) -> Result<Arc<KeySet>, String> {
        let asked_at = Instant::now();
        let config = &self.config;
        let due = |set: &KeySet| {
            let cooled = asked_at.saturating_duration_since(set.attempted_at) >= config.cooldown;
            let old = set
                .fetched_at
                .is_none_or(|at| asked_at.saturating_duration_since(at) >= config.refresh);
            cooled && (old || !set.names(x5t, kid))
        };
        if let Some(set) = self.sets.get(url).await {
            if !due(&set) {
                return usable(set);
            }
            // Only old, and it holds the key the token names: answer with it now and
            // refresh in the background, so callers (the stage's record loop) do not wait
            // on the endpoint. A key the set does not hold still waits for the fetch.
            if set.fetched_at.is_some() && set.names(x5t, kid) {
                self.refresh_in_background(url, asked_at);
                return usable(set);
            }
        }
        self.fetch_shared(url, asked_at, due).await
    }

    /// Starts one background refresh of `url` unless one is running (and a runtime is).
    fn refresh_in_background(&self, url: &str, asked_at: Instant) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        {
            let mut refreshing = self
                .refreshing
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if !refreshing.insert(url.to_owned()) {
                return;
            }
        }
        let this = self.clone();
        let url = url.to_owned();
        runtime.spawn(async move {
            let config = this.config.clone();
            let due = |set: &KeySet| {
                asked_at.saturating_duration_since(set.attempted_at) >= config.cooldown
                    && set
                        .fetched_at
                        .is_none_or(|at| asked_at.saturating_duration_since(at) >= config.refresh)
            };
            let _ = this.fetch_shared(&url, asked_at, due).await;
            this.refreshing
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .remove(&url);
        });
    }

    /// Fetches `url` unless another caller did since `asked_at` or it is no longer `due`;
    /// one fetch at a time per URL, later callers share its result.
    async fn fetch_shared(
        &self,
        url: &str,
        asked_at: Instant,
        due: impl Fn(&KeySet) -> bool,
    ) -> Result<Arc<KeySet>, String> {
        let due = &due;
        let result = self
            .sets
            .entry_by_ref(url)
            .and_compute_with(|existing| async move {
                let existing = existing.map(|e| e.into_value());
                // Another caller may have fetched while this one waited for its turn.
                if let Some(set) = &existing
                    && (set.attempted_at >= asked_at || !due(set))
                {
                    return Op::Nop;
                }
                Op::Put(Arc::new(self.fetch(url, existing.as_deref()).await))
            })
            .await;
        match result.into_entry() {
            Some(entry) => usable(entry.into_value()),
            None => Err("no metadata fetched".to_owned()),
        }
    }

    async fn fetch(&self, url: &str, previous: Option<&KeySet>) -> KeySet {
        let keys = self
            .download(url)
            .await
            .and_then(|body| parse_jwks(&body))
            .and_then(|keys| {
                // A document without one usable key (all too small, undecodable, or none)
                // is a broken endpoint, not a revocation: the last good keys stay.
                if keys.is_empty() {
                    Err(format!("GET {url}: no usable signing key in the document"))
                } else {
                    Ok(keys)
                }
            });
        // The cooldown runs from the end of the attempt: an endpoint slower than the
        // cooldown must not be asked again the moment it has answered (or timed out).
        let now = Instant::now();
        match keys {
            Ok(keys) => {
                metrics::counter!("pushrelay_auth_jwks_fetches_total", "result" => "ok")
                    .increment(1);
                tracing::info!(url, keys = keys.len(), "fetched JWKS metadata");
                KeySet {
                    keys,
                    fetched_at: Some(now),
                    attempted_at: now,
                    last_error: None,
                }
            }
            Err(err) => {
                metrics::counter!("pushrelay_auth_jwks_fetches_total", "result" => "error")
                    .increment(1);
                tracing::warn!(url, error = %err, stale_keys = previous.map_or(0, |p| p.keys.len()),
                    "JWKS metadata fetch failed");
                KeySet {
                    keys: previous.map(|p| p.keys.clone()).unwrap_or_default(),
                    fetched_at: previous.and_then(|p| p.fetched_at),
                    attempted_at: now,
                    last_error: Some(err),
                }
            }
        }
    }

    async fn download(&self, url: &str) -> Result<Vec<u8>, String> {
        let mut response = self
            .client
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|err| format!("GET {url}: {err}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("GET {url}: HTTP {status}"));
        }
        if response
            .content_length()
            .is_some_and(|len| len as usize > self.config.max_bytes)
        {
            return Err(format!(
                "GET {url}: document larger than {} bytes",
                self.config.max_bytes
            ));
        }
        // Read chunk by chunk: an endpoint streaming an endless body without a length is
        // cut off at the limit, not buffered until the timeout.
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|err| format!("GET {url}: {err}"))?
        {
            if body.len() + chunk.len() > self.config.max_bytes {
                return Err(format!(
                    "GET {url}: document larger than {} bytes",
                    self.config.max_bytes
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

fn usable(set: Arc<KeySet>) -> Result<Arc<KeySet>, String> {
    if set.fetched_at.is_none() {
        return Err(set
            .last_error
            .clone()
            .unwrap_or_else(|| "never fetched".to_owned()));
    }
    Ok(set)
}
