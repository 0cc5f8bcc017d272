//! The HTTP/2 clients of the providers. Network failures are retryable outcomes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pushrelay_proto::v1::PushRequest;
use tokio::sync::Mutex;

use crate::apns::{self, ProviderToken};
use crate::fcm::{Credentials, TokenCache, parse_token_response};
use crate::outcome::{self, Answer, Outcome};

/// Why a client cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The extra CA certificate is not PEM.
    #[error("the extra CA certificate cannot be read: {0}")]
    Ca(String),
    /// The HTTP client cannot be built.
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn http_client(
    extra_ca: Option<&[u8]>,
    timeout: Duration,
    http2_only: bool,
) -> Result<reqwest::Client, ClientError> {
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(300));
    if http2_only {
        // APNs speaks only HTTP/2; many concurrent streams share one connection.
        builder = builder.http2_prior_knowledge();
    }
    if let Some(pem) = extra_ca {
        let cert =
            reqwest::Certificate::from_pem(pem).map_err(|err| ClientError::Ca(err.to_string()))?;
        builder = builder.tls_certs_merge([cert]);
    }
    builder
        .build()
        .map_err(|err| ClientError::Http(err.to_string()))
}

/// A provider's answer: status, `Retry-After`, body (empty if it could not be read).
async fn read_answer(response: reqwest::Response) -> (u16, Option<String>, Vec<u8>) {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response
        .bytes()
        .await
        .map(|b| b.to_vec())
        .unwrap_or_default();
    (status, retry_after, body)
}

/// Sends pushes to APNs with token-based authentication.
pub struct ApnsClient {
    http: reqwest::Client,
    base_url: Option<String>,
    token: Mutex<ProviderToken>,
}

impl std::fmt::Debug for ApnsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApnsClient")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl ApnsClient {
    /// A client signing with `token`. `base_url` replaces the production/sandbox hosts
    /// (tests, proxies); `extra_ca` (PEM) is trusted besides the system roots.
    pub fn new(
        token: ProviderToken,
        base_url: Option<String>,
        extra_ca: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        Ok(Self {
            http: http_client(extra_ca, timeout, true)?,
            base_url,
            token: Mutex::new(token),
        })
    }

    /// Sends one push and classifies the answer.
    pub async fn send(&self, push: &PushRequest) -> Answer {
        let now = now_secs();
        let token = match self.token.lock().await.token(now) {
            Ok(token) => token.to_owned(),
            Err(err) => {
                return Answer {
                    status: 0,
                    outcome: Outcome::Final {
                        reason: format!("cannot sign the provider token: {err}"),
                    },
                };
            }
        };
        let request = apns::request(push, &token);
        let base = self
            .base_url
            .as_deref()
            .unwrap_or_else(|| apns::default_base_url(push.environment));
        let mut builder = self
            .http
            .post(format!("{}{}", base.trim_end_matches('/'), request.path))
            .body(request.body);
        for (name, value) in &request.headers {
            builder = builder.header(*name, value);
        }
        let response = match builder.send().await {
            Ok(response) => response,
            Err(err) => return Answer::unreachable(format!("APNs unreachable: {err}")),
        };
        let (status, retry_after, body) = read_answer(response).await;
        let outcome = outcome::apns(status, &body, retry_after.as_deref());
        if status == 403 && matches!(outcome, Outcome::Retry { .. }) {
            self.token.lock().await.rejected(now);
        }
        Answer { status, outcome }
    }
}

/// Sends pushes through FCM HTTP v1 with a service account.
pub struct FcmClient {
    http: reqwest::Client,
    credentials: Credentials,
    send_base: String,
    cache: Mutex<TokenCache>,
}

impl std::fmt::Debug for FcmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FcmClient")
            .field("send_base", &self.send_base)
            .finish_non_exhaustive()
    }
}

impl FcmClient {
    /// A client for `credentials`, sending under `send_base` (default
    /// `https://fcm.googleapis.com`).
    pub fn new(
        credentials: Credentials,
        send_base: Option<String>,
        extra_ca: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        Ok(Self {
            http: http_client(extra_ca, timeout, false)?,
            credentials,
            send_base: send_base.unwrap_or_else(|| "https://fcm.googleapis.com".to_owned()),
            cache: Mutex::new(TokenCache::default()),
        })
    }

    /// A valid access token: the cached one, or a fresh one from the token URI. Holding the
    /// lock while fetching makes concurrent sends share one exchange.
    async fn access_token(&self) -> Result<String, String> {
        let mut cache = self.cache.lock().await;
        let now = now_secs();
        if let Some(token) = cache.get(now) {
            return Ok(token.to_owned());
        }
        let assertion = self
            .credentials
            .assertion(now)
            .map_err(|err| err.to_string())?;
        let response = self
            .http
            .post(&self.credentials.account.token_uri)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Credentials::token_request_body(&assertion))
            .send()
            .await
            .map_err(|err| format!("token endpoint unreachable: {err}"))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|err| err.to_string())?;
        if !status.is_success() {
            return Err(format!("token endpoint answered {status}"));
        }
        let token = parse_token_response(&body, now).map_err(|err| err.to_string())?;
        let value = token.token.clone();
        cache.put(token);
        Ok(value)
    }

    /// Sends one push (its payload is the FCM message JSON) and classifies the answer.
    pub async fn send(&self, push: &PushRequest) -> Answer {
        let token = match self.access_token().await {
            Ok(token) => token,
            Err(reason) => return Answer::unreachable(reason),
        };
        let response = match self
            .http
            .post(self.credentials.send_url(&self.send_base))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(push.payload.clone())
            .send()
            .await
        {
            Ok(response) => response,
            Err(err) => return Answer::unreachable(format!("FCM unreachable: {err}")),
        };
        let (status, retry_after, body) = read_answer(response).await;
        if status == 401 {
            self.cache.lock().await.invalidate();
        }
        Answer {
            status,
            outcome: outcome::fcm(status, &body, retry_after.as_deref()),
        }
    }
}
