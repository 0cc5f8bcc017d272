//! Flags of the stage (every one with an environment fallback).

use std::time::Duration;

use pushrelay_auth::{AuthConfig, JwksConfig, ValidationConfig};
use pushrelay_coalesce::CoalesceConfig;
use pushrelay_kafka::KafkaArgs;

/// `pushrelay-auth`: validate tenants' tokens and debounce unread counts.
#[derive(Debug, Clone, clap::Args)]
pub struct StageArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Consumer group of the stage's instances.
    #[arg(
        long,
        env = "PUSHRELAY_GROUP",
        default_value = "pushrelay-auth-coalesce"
    )]
    pub group: String,

    /// The relay's audience: the `aud` tokens must carry (unless a tenant lists its own).
    #[arg(long, env = "PUSHRELAY_AUDIENCE", default_value = "pushrelay")]
    pub audience: String,

    /// Accepted token algorithms, comma-separated (RS256, PS256, ES256).
    #[arg(
        long,
        env = "PUSHRELAY_ALGORITHMS",
        value_delimiter = ',',
        default_value = "RS256",
        value_parser = ["RS256", "PS256", "ES256"]
    )]
    pub algorithms: Vec<String>,

    /// Clock skew tolerated on `exp` and `nbf`, seconds.
    #[arg(long, env = "PUSHRELAY_LEEWAY_SECS", default_value_t = 60)]
    pub leeway_secs: u64,

    /// Longest token lifetime (`exp - nbf`) accepted, seconds.
    #[arg(
        long,
        env = "PUSHRELAY_MAX_TOKEN_LIFETIME_SECS",
        default_value_t = 86_400
    )]
    pub max_token_lifetime_secs: u64,

    /// Validated tokens remembered (by SHA-256, until `exp`).
    #[arg(
        long,
        env = "PUSHRELAY_TOKEN_CACHE_CAPACITY",
        default_value_t = 1_000_000
    )]
    pub token_cache_capacity: u64,

    /// After a JWKS fetch, an unknown key triggers no new fetch for this long, seconds.
    #[arg(long, env = "PUSHRELAY_JWKS_COOLDOWN_SECS", default_value_t = 300)]
    pub jwks_cooldown_secs: u64,

    /// JWKS keys older than this are refetched on use, seconds.
    #[arg(long, env = "PUSHRELAY_JWKS_REFRESH_SECS", default_value_t = 3600)]
    pub jwks_refresh_secs: u64,

    /// Give up on one JWKS fetch after this long, milliseconds. Records of the stage wait
    /// for a fetch in flight (at most once per cooldown per URL); stale keys answer after.
    #[arg(long, env = "PUSHRELAY_JWKS_TIMEOUT_MS", default_value_t = 2000)]
    pub jwks_timeout_ms: u64,

    /// Emit a mailbox's count when no change came for this long, milliseconds.
    #[arg(long, env = "PUSHRELAY_QUIET_PERIOD_MS", default_value_t = 250)]
    pub quiet_period_ms: u64,

    /// Emit at the latest when the oldest pending change is this old, milliseconds.
    #[arg(long, env = "PUSHRELAY_MAX_DELAY_MS", default_value_t = 1000)]
    pub max_delay_ms: u64,

    /// Forget an idle mailbox's sequence fence after this long, seconds.
    #[arg(long, env = "PUSHRELAY_IDLE_TTL_SECS", default_value_t = 3600)]
    pub idle_ttl_secs: u64,

    /// Soft cap on mailboxes tracked per instance.
    #[arg(
        long,
        env = "PUSHRELAY_MAX_TRACKED_MAILBOXES",
        default_value_t = 2_000_000
    )]
    pub max_tracked_mailboxes: usize,

    /// Longest life of a subscription (and the default when a request names none), days.
    #[arg(
        long,
        env = "PUSHRELAY_SUBSCRIPTION_LIFETIME_DAYS",
        default_value_t = 30
    )]
    pub subscription_lifetime_days: u64,

    /// Records buffered between the Kafka poll thread and the stage.
    #[arg(long, env = "PUSHRELAY_EVENT_BUFFER", default_value_t = 4096)]
    pub event_buffer: usize,

    /// Input records that may queue behind token checks in progress. A token the cache
    /// does not vouch for is checked on the runtime's worker threads, several at once;
    /// results are applied in input order, so at most this many records wait for them.
    #[arg(long, env = "PUSHRELAY_VERIFY_WINDOW", default_value_t = 1024)]
    pub verify_window: usize,

    /// On revoke and shutdown, how long to wait for in-flight outputs, seconds. Keep it
    /// below the consumer's session timeout.
    #[arg(long, env = "PUSHRELAY_DRAIN_TIMEOUT_SECS", default_value_t = 5)]
    pub drain_timeout_secs: u64,

    /// How long restoring a partition's fence from `unread-counts` may take, seconds.
    #[arg(long, env = "PUSHRELAY_RESTORE_TIMEOUT_SECS", default_value_t = 120)]
    pub restore_timeout_secs: u64,
}

impl StageArgs {
    /// Defaults for a broker at `brokers` (tests, the dev binary).
    pub fn new(kafka: KafkaArgs) -> Self {
        Self {
            kafka,
            group: "pushrelay-auth-coalesce".to_owned(),
            audience: "pushrelay".to_owned(),
            algorithms: vec!["RS256".to_owned()],
            leeway_secs: 60,
            max_token_lifetime_secs: 86_400,
            token_cache_capacity: 1_000_000,
            jwks_cooldown_secs: 300,
            jwks_refresh_secs: 3600,
            jwks_timeout_ms: 2000,
            quiet_period_ms: 250,
            max_delay_ms: 1000,
            idle_ttl_secs: 3600,
            max_tracked_mailboxes: 2_000_000,
            subscription_lifetime_days: 30,
            event_buffer: 4096,
            verify_window: 1024,
            drain_timeout_secs: 5,
            restore_timeout_secs: 120,
        }
    }

    /// Token validation settings.
    pub fn auth_config(&self) -> AuthConfig {
        AuthConfig {
            validation: ValidationConfig {
                audience: self.audience.clone(),
                algorithms: self.algorithms.clone(),
                leeway: Duration::from_secs(self.leeway_secs),
                max_lifetime: Duration::from_secs(self.max_token_lifetime_secs),
            },
            token_cache_capacity: self.token_cache_capacity,
            jwks: JwksConfig {
                cooldown: Duration::from_secs(self.jwks_cooldown_secs),
                refresh: Duration::from_secs(self.jwks_refresh_secs),
                timeout: Duration::from_millis(self.jwks_timeout_ms),
                ..JwksConfig::default()
            },
        }
    }

    /// Coalescer settings.
    pub fn coalesce_config(&self) -> CoalesceConfig {
        CoalesceConfig {
            quiet_period: Duration::from_millis(self.quiet_period_ms),
            max_delay: Duration::from_millis(self.max_delay_ms),
            idle_ttl: Duration::from_secs(self.idle_ttl_secs),
            max_tracked: self.max_tracked_mailboxes,
        }
    }
}
