//! The providers a stage instance sends through, chosen by a push's platform: APNs and FCM
//! when their credentials are configured, the `log` provider (development) for the others,
//! and `PROBE`, which needs no provider: its push is delivered by being recorded.

use std::path::Path;
use std::time::Duration;

use pushrelay_proto::v1::{Platform, PushRequest};

use crate::DeliverArgs;
use crate::apns::ProviderToken;
use crate::client::{ApnsClient, ClientError, FcmClient};
use crate::fcm::Credentials;
use crate::outcome::{Answer, Outcome};

/// Why the providers cannot be set up (bad flags or files): the stage refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A credential file cannot be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A credential is unusable.
    #[error("{what} is unusable: {message}")]
    Credential {
        /// Which credential.
        what: &'static str,
        /// Why.
        message: String,
    },
    /// An HTTP client cannot be built.
    #[error(transparent)]
    Client(#[from] ClientError),
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, SetupError> {
    std::fs::read(path).map_err(|source| SetupError::Read {
        what,
        path: path.display().to_string(),
        source,
    })
}

/// How a platform's pushes are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Through the provider's API.
    Provider,
    /// Written to the log (the `log` provider).
    Log,
    /// Recorded only (`PROBE`).
    Probe,
    /// No provider is configured: the push is dead-lettered.
    Unconfigured,
}

/// The configured providers.
#[derive(Debug)]
pub struct Providers {
    apns: Option<ApnsClient>,
    fcm: Option<FcmClient>,
    log: bool,
}

impl Providers {
    /// From the stage's flags; reads the credential files.
    pub fn from_args(args: &DeliverArgs) -> Result<Self, SetupError> {
        let ca = args
            .provider_ca_file
            .as_deref()
            .map(|path| read("the provider CA file", path))
            .transpose()?;
        let timeout = Duration::from_secs(args.send_timeout_secs.max(1));
        let apns = match &args.apns_key_file {
            None => None,
            Some(path) => {
                let p8 = read("the APNs key file", path)?;
                let token = ProviderToken::from_p8(
                    &p8,
                    args.apns_key_id.as_deref().unwrap_or_default(),
                    args.apns_team_id.as_deref().unwrap_or_default(),
                    Duration::from_secs(args.apns_token_refresh_mins * 60),
                )
                .map_err(|err| SetupError::Credential {
                    what: "the APNs key",
                    message: err.to_string(),
                })?;
                Some(ApnsClient::new(
                    token,
                    args.apns_base_url.clone(),
                    ca.as_deref(),
                    timeout,
                )?)
            }
        };
        let fcm = match &args.fcm_service_account_file {
            None => None,
            Some(path) => {
                let json = read("the FCM service-account file", path)?;
                let credentials = Credentials::from_json(&json, args.fcm_token_uri.as_deref())
                    .map_err(|err| SetupError::Credential {
                        what: "the FCM service account",
                        message: err.to_string(),
                    })?;
                Some(FcmClient::new(
                    credentials,
                    args.fcm_base_url.clone(),
                    ca.as_deref(),
                    timeout,
                )?)
            }
        };
        Ok(Self {
            apns,
            fcm,
            log: args.log_provider,
        })
    }

    /// How pushes of `platform` go out.
    pub fn route(&self, platform: i32) -> Route {
        let configured = match Platform::try_from(platform) {
            Ok(Platform::Probe) => return Route::Probe,
            Ok(Platform::Apns) => self.apns.is_some(),
            Ok(Platform::Fcm) => self.fcm.is_some(),
            _ => return Route::Unconfigured,
        };
        match (configured, self.log) {
            (true, _) => Route::Provider,
            (false, true) => Route::Log,
            (false, false) => Route::Unconfigured,
        }
    }

    /// A short description for the startup log.
    pub fn describe(&self) -> String {
        let name = |configured: bool| match (configured, self.log) {
            (true, _) => "provider",
            (false, true) => "log",
            (false, false) => "not configured (dead-lettered)",
        };
        format!(
            "APNs: {}, FCM: {}",
            name(self.apns.is_some()),
            name(self.fcm.is_some())
        )
    }

    /// Sends `push` once.
    pub async fn send(&self, push: &PushRequest) -> Answer {
        let delivered = Answer {
            status: 0,
            outcome: Outcome::Delivered,
        };
        match (Platform::try_from(push.platform), self.route(push.platform)) {
            (_, Route::Probe) => delivered,
            (_, Route::Log) => {
                tracing::info!(
                    tenant = %push.tenant,
                    mailbox = %push.mailbox,
                    platform = pushrelay_proto::keys::platform_name(push.platform).unwrap_or("unknown"),
                    device = %push.device_token,
                    app_id = %push.app_id,
                    badge = push.badge,
                    payload = %String::from_utf8_lossy(&push.payload),
                    "push (log provider)"
                );
                delivered
            }
            (Ok(Platform::Apns), Route::Provider) => match &self.apns {
                Some(apns) => apns.send(push).await,
                None => unconfigured(),
            },
            (Ok(Platform::Fcm), Route::Provider) => match &self.fcm {
                Some(fcm) => fcm.send(push).await,
                None => unconfigured(),
            },
            _ => unconfigured(),
        }
    }
}

fn unconfigured() -> Answer {
    Answer {
        status: 0,
        outcome: Outcome::Final {
            reason: "no provider configured for this platform".to_owned(),
        },
    }
}
