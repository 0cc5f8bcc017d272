//! FCM HTTP v1: the service-account OAuth2 flow (pure parts) and the send request.

use pushrelay_auth::{MintError, SigningKey, mint_token};
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// The OAuth2 scope of FCM sends.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// Why FCM credentials are unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// The service-account JSON cannot be read.
    #[error("not a service-account JSON file: {0}")]
    ServiceAccount(String),
    /// Its private key cannot be used.
    #[error(transparent)]
    Key(#[from] MintError),
    /// The token endpoint's answer cannot be read.
    #[error("unexpected answer from the token endpoint: {0}")]
    TokenResponse(String),
}

/// The fields of a Google service-account key file the relay uses.
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceAccount {
    /// The account (`iss` of the assertion).
    pub client_email: String,
    /// PKCS#8 PEM RSA key.
    pub private_key: String,
    /// Where assertions are exchanged for access tokens.
    pub token_uri: String,
    /// The Firebase project messages are sent through.
    pub project_id: String,
}

/// A service account with its key parsed.
pub struct Credentials {
    /// The account.
    pub account: ServiceAccount,
    key: SigningKey,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("client_email", &self.account.client_email)
            .field("project_id", &self.account.project_id)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Reads a service-account JSON file's contents. `token_uri` overrides the file's
    /// (tests point it at a local server).
    pub fn from_json(json: &[u8], token_uri: Option<&str>) -> Result<Self, CredentialError> {
        let mut account: ServiceAccount = serde_json::from_slice(json)
            .map_err(|err| CredentialError::ServiceAccount(err.to_string()))?;
        if let Some(uri) = token_uri {
            account.token_uri = uri.to_owned();
        }
        let key = SigningKey::from_pkcs8(account.private_key.as_bytes())?;
        Ok(Self { account, key })
    }

    /// The signed RS256 assertion to exchange at the token URI (valid an hour).
    pub fn assertion(&self, now_secs: i64) -> Result<String, CredentialError> {
        let claims = json!({
            "iss": self.account.client_email,
            "scope": SCOPE,
            "aud": self.account.token_uri,
            "iat": now_secs,
            "exp": now_secs + 3600,
        });
        Ok(mint_token(&self.key, "RS256", &Map::new(), &claims)?)
    }

    /// The form body of the token request for `assertion`.
    pub fn token_request_body(assertion: &str) -> String {
        format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}"
        )
    }

    /// The send URL under `base` (default `https://fcm.googleapis.com`).
    pub fn send_url(&self, base: &str) -> String {
        format!(
            "{}/v1/projects/{}/messages:send",
            base.trim_end_matches('/'),
            self.account.project_id
        )
    }
}

/// An access token and when it stops working (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessToken {
    /// The bearer token.
    pub token: String,
    /// Expiry, Unix seconds.
    pub expires_at: i64,
}

/// Reads the token endpoint's JSON answer (`access_token`, `expires_in`).
pub fn parse_token_response(body: &[u8], now_secs: i64) -> Result<AccessToken, CredentialError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|err| CredentialError::TokenResponse(err.to_string()))?;
    let token = value
        .get("access_token")
        .and_then(Value::as_str)
        .ok_or_else(|| CredentialError::TokenResponse("no access_token".into()))?;
    let expires_in = value
        .get("expires_in")
        .and_then(Value::as_i64)
        .unwrap_or(3600);
    Ok(AccessToken {
        token: token.to_owned(),
        expires_at: now_secs.saturating_add(expires_in),
    })
}

/// The cached access token: reused until a minute before it expires.
#[derive(Debug, Default)]
pub struct TokenCache {
    current: Option<AccessToken>,
}

impl TokenCache {
    /// The cached token, if it is good for at least another minute.
    pub fn get(&self, now_secs: i64) -> Option<&str> {
        self.current
            .as_ref()
            .filter(|t| now_secs < t.expires_at.saturating_sub(60))
            .map(|t| t.token.as_str())
    }

    /// Stores a fresh token.
    pub fn put(&mut self, token: AccessToken) {
        self.current = Some(token);
    }

    /// Forgets the token (FCM answered 401).
    pub fn invalidate(&mut self) {
        self.current = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account_json() -> String {
        let key =
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .expect("rsa");
        json!({
            "type": "service_account",
            "project_id": "mail-badges",
            "private_key_id": "k1",
            "private_key": key.serialize_pem(),
            "client_email": "relay@mail-badges.iam.gserviceaccount.com",
            "token_uri": "https://oauth2.googleapis.com/token",
        })
        .to_string()
    }

    #[test]
    fn assertion_is_an_rs256_jwt_for_the_token_uri() {
        let json = account_json();
        let creds = Credentials::from_json(json.as_bytes(), Some("http://127.0.0.1:1/token"))
            .expect("account");
        let assertion = creds.assertion(1_000).expect("assertion");
        let header = jsonwebtoken::decode_header(&assertion).expect("header");
        assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
        let payload = assertion.split('.').nth(1).expect("payload");
        use base64::Engine;
        let claims: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .expect("b64"),
        )
        .expect("json");
        assert_eq!(claims["aud"], "http://127.0.0.1:1/token");
        assert_eq!(claims["scope"], SCOPE);
        assert_eq!(claims["exp"], 4_600);
        assert_eq!(
            creds.send_url("https://fcm.googleapis.com/"),
            "https://fcm.googleapis.com/v1/projects/mail-badges/messages:send"
        );
        assert!(Credentials::token_request_body(&assertion).starts_with("grant_type=urn%3Aietf"));
    }

    #[test]
    fn bad_files_say_why() {
        assert!(matches!(
            Credentials::from_json(b"{}", None),
            Err(CredentialError::ServiceAccount(_))
        ));
    }

    #[test]
    fn tokens_are_cached_until_a_minute_before_expiry() {
        let token = parse_token_response(
            br#"{"access_token":"ya29.x","expires_in":3599,"token_type":"Bearer"}"#,
            1_000,
        )
        .expect("token");
        let mut cache = TokenCache::default();
        assert_eq!(cache.get(1_000), None);
        cache.put(token);
        assert_eq!(cache.get(1_000), Some("ya29.x"));
        assert_eq!(cache.get(1_000 + 3599 - 61), Some("ya29.x"));
        assert_eq!(cache.get(1_000 + 3599 - 60), None);
        cache.invalidate();
        assert_eq!(cache.get(1_000), None);
        assert!(parse_token_response(b"{}", 0).is_err());
    }

    /// Found while writing the `provider_answers` fuzz target: an `expires_in` near the
    /// integer limits overflowed (a panic with overflow checks, a wrapped expiry without).
    #[test]
    fn an_absurd_expires_in_saturates() {
        let mut cache = TokenCache::default();
        for (expires_in, cached) in [(i64::MAX, true), (i64::MIN, false)] {
            let body = format!(r#"{{"access_token":"t","expires_in":{expires_in}}}"#);
            let token = parse_token_response(body.as_bytes(), 1_000).expect("token");
            cache.put(token);
            assert_eq!(
                cache.get(1_000).is_some(),
                cached,
                "expires_in {expires_in}"
            );
        }
    }
}
