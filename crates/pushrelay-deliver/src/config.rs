//! Flags of the delivery stage (every one with an environment fallback).

use std::path::PathBuf;
use std::time::Duration;

use pushrelay_kafka::KafkaArgs;

use crate::retry::RetryPolicy;

/// `pushrelay-deliver`: sends push requests to APNs and FCM and records their receipts.
#[derive(Debug, Clone, clap::Args)]
pub struct DeliverArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Consumer group of the stage's instances.
    #[arg(long, env = "PUSHRELAY_GROUP", default_value = "pushrelay-deliver")]
    pub group: String,

    /// APNs token-authentication key: the `.p8` file (PKCS#8 EC P-256) from the Apple
    /// developer account. Without it, APNs pushes are dead-lettered (or logged with
    /// `--log-provider`).
    #[arg(long, env = "PUSHRELAY_APNS_KEY_FILE", requires_all = ["apns_key_id", "apns_team_id"])]
    pub apns_key_file: Option<PathBuf>,

    /// Key id of the `.p8` key (10 characters).
    #[arg(long, env = "PUSHRELAY_APNS_KEY_ID")]
    pub apns_key_id: Option<String>,

    /// Apple developer team id (10 characters).
    #[arg(long, env = "PUSHRELAY_APNS_TEAM_ID")]
    pub apns_team_id: Option<String>,

    /// APNs base URL instead of the production/sandbox hosts chosen per subscription
    /// (a proxy or a test server).
    #[arg(long, env = "PUSHRELAY_APNS_BASE_URL")]
    pub apns_base_url: Option<String>,

    /// How often the APNs provider token is renewed, minutes (clamped to 20–50: APNs
    /// refuses renewals more often than every 20 minutes and tokens older than an hour).
    #[arg(long, env = "PUSHRELAY_APNS_TOKEN_REFRESH_MINS", default_value_t = 40)]
    pub apns_token_refresh_mins: u64,

    /// FCM service-account JSON key file (from the Firebase console). Without it, FCM
    /// pushes are dead-lettered (or logged with `--log-provider`).
    #[arg(long, env = "PUSHRELAY_FCM_SERVICE_ACCOUNT_FILE")]
    pub fcm_service_account_file: Option<PathBuf>,

    /// FCM send base URL (default `https://fcm.googleapis.com`).
    #[arg(long, env = "PUSHRELAY_FCM_BASE_URL")]
    pub fcm_base_url: Option<String>,

    /// OAuth2 token URI instead of the service account's `token_uri`.
    #[arg(long, env = "PUSHRELAY_FCM_TOKEN_URI")]
    pub fcm_token_uri: Option<String>,

    /// Extra CA certificate (PEM) trusted for provider connections besides the system
    /// roots (a TLS-intercepting proxy, a test server).
    #[arg(long, env = "PUSHRELAY_PROVIDER_CA_FILE")]
    pub provider_ca_file: Option<PathBuf>,

    /// Log pushes for platforms without credentials instead of dead-lettering them, and
    /// record them as delivered (development only).
    #[arg(long, env = "PUSHRELAY_LOG_PROVIDER")]
    pub log_provider: bool,

    /// Most provider requests in flight at once (over few HTTP/2 connections).
    #[arg(long, env = "PUSHRELAY_MAX_IN_FLIGHT", default_value_t = 512)]
    pub max_in_flight: usize,

    /// Most devices×mailboxes with a push in progress (sending, queued or waiting to
    /// retry); at the limit the stage stops consuming, so memory stays bounded.
    #[arg(long, env = "PUSHRELAY_MAX_PENDING", default_value_t = 20_000)]
    pub max_pending: usize,

    /// Attempts per push, the first included; after them it is dead-lettered.
    #[arg(long, env = "PUSHRELAY_MAX_ATTEMPTS", default_value_t = 8)]
    pub max_attempts: u32,

    /// Backoff scale of the first retry, milliseconds (doubling per attempt, full jitter).
    #[arg(long, env = "PUSHRELAY_RETRY_BASE_MS", default_value_t = 500)]
    pub retry_base_ms: u64,

    /// Longest computed backoff, seconds (a provider's Retry-After may ask for more).
    #[arg(long, env = "PUSHRELAY_RETRY_CAP_SECS", default_value_t = 300)]
    pub retry_cap_secs: u64,

    /// Timeout of one provider request, seconds.
    #[arg(long, env = "PUSHRELAY_SEND_TIMEOUT_SECS", default_value_t = 10)]
    pub send_timeout_secs: u64,

    /// Records buffered between the Kafka poll thread and the stage.
    #[arg(long, env = "PUSHRELAY_EVENT_BUFFER", default_value_t = 1024)]
    pub event_buffer: usize,

    /// On revoke and shutdown, how long to wait for sends in flight and outputs, seconds.
    #[arg(long, env = "PUSHRELAY_DRAIN_TIMEOUT_SECS", default_value_t = 10)]
    pub drain_timeout_secs: u64,
}

impl DeliverArgs {
    /// Defaults for a broker (tests, the dev binary): no provider credentials.
    pub fn new(kafka: KafkaArgs) -> Self {
        Self {
            kafka,
            group: "pushrelay-deliver".to_owned(),
            apns_key_file: None,
            apns_key_id: None,
            apns_team_id: None,
            apns_base_url: None,
            apns_token_refresh_mins: 40,
            fcm_service_account_file: None,
            fcm_base_url: None,
            fcm_token_uri: None,
            provider_ca_file: None,
            log_provider: false,
            max_in_flight: 512,
            max_pending: 20_000,
            max_attempts: 8,
            retry_base_ms: 500,
            retry_cap_secs: 300,
            send_timeout_secs: 10,
            event_buffer: 1024,
            drain_timeout_secs: 10,
        }
    }

    /// The retry policy of these flags.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_millis(self.retry_base_ms),
            cap: Duration::from_secs(self.retry_cap_secs),
            max_attempts: self.max_attempts.max(1),
        }
    }
}
