//! APNs: the provider authentication token and the HTTP/2 request of a push.

use std::time::Duration;

use pushrelay_auth::{MintError, SigningKey, mint_token};
use pushrelay_proto::v1::{Environment, PushRequest};
use serde_json::{Map, Value, json};

/// APNs refuses provider tokens refreshed more often than this (429 TooManyProviderTokenUpdates).
pub const MIN_REFRESH: Duration = Duration::from_secs(20 * 60);
/// APNs refuses provider tokens older than an hour; refresh well before.
pub const MAX_REFRESH: Duration = Duration::from_secs(50 * 60);

/// The production and sandbox hosts.
pub fn default_base_url(environment: i32) -> &'static str {
    if environment == Environment::Sandbox as i32 {
        "https://api.sandbox.push.apple.com"
    } else {
        "https://api.push.apple.com"
    }
}

/// The ES256 provider token of a `.p8` key: minted on first use, refreshed once it is
/// `refresh` old (clamped to 20–50 minutes), never more often.
pub struct ProviderToken {
    key: SigningKey,
    key_id: String,
    team_id: String,
    refresh: Duration,
    current: Option<(String, i64)>,
}

impl std::fmt::Debug for ProviderToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderToken")
            .field("key_id", &self.key_id)
            .field("team_id", &self.team_id)
            .field("refresh", &self.refresh)
            .finish_non_exhaustive()
    }
}

impl ProviderToken {
    /// From the `.p8` file's contents (a PKCS#8 P-256 key), its key id and the team id.
    pub fn from_p8(
        p8: &[u8],
        key_id: &str,
        team_id: &str,
        refresh: Duration,
    ) -> Result<Self, MintError> {
        let key = SigningKey::from_pkcs8(p8)?;
        if !matches!(key, SigningKey::Ec(_)) {
            return Err(MintError::Key(
                "an APNs .p8 key is an EC P-256 key; this is RSA".into(),
            ));
        }
        Ok(Self {
            key,
            key_id: key_id.to_owned(),
            team_id: team_id.to_owned(),
            refresh: refresh.clamp(MIN_REFRESH, MAX_REFRESH),
            current: None,
        })
    }

    /// The token to send at `now_secs`, minting a new one when due.
    pub fn token(&mut self, now_secs: i64) -> Result<&str, MintError> {
        let due = self
            .current
            .as_ref()
            .is_none_or(|(_, issued)| now_secs - issued >= self.refresh.as_secs() as i64);
        if due {
            let mut header = Map::new();
            header.insert("kid".into(), Value::String(self.key_id.clone()));
            let claims = json!({"iss": self.team_id, "iat": now_secs});
            let token = mint_token(&self.key, "ES256", &header, &claims)?;
            self.current = Some((token, now_secs));
        }
        Ok(self
            .current
            .as_ref()
            .map(|(t, _)| t.as_str())
            .unwrap_or_default())
    }

    /// APNs said the token expired or is invalid: mint a new one at the next use, unless
    /// the current one is younger than 20 minutes (a refresh then would be refused too).
    pub fn rejected(&mut self, now_secs: i64) {
        if self
            .current
            .as_ref()
            .is_some_and(|(_, issued)| now_secs - issued >= MIN_REFRESH.as_secs() as i64)
        {
            self.current = None;
        }
    }
}

/// An HTTP/2 request to APNs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApnsRequest {
    /// `/3/device/{token}`.
    pub path: String,
    /// Request headers.
    pub headers: Vec<(&'static str, String)>,
    /// JSON body.
    pub body: Vec<u8>,
}

/// The request of `push`, authenticated by `provider_token`.
pub fn request(push: &PushRequest, provider_token: &str) -> ApnsRequest {
    let mut headers = vec![
        ("authorization", format!("bearer {provider_token}")),
        ("apns-topic", push.app_id.clone()),
        (
            "apns-push-type",
            if push.push_type.is_empty() {
                "alert".to_owned()
            } else {
                push.push_type.clone()
            },
        ),
        ("apns-priority", push.priority.max(1).to_string()),
        (
            "apns-expiration",
            (push.expires_time_ms.max(0) / 1000).to_string(),
        ),
    ];
    if !push.collapse_id.is_empty() {
        headers.push(("apns-collapse-id", push.collapse_id.clone()));
    }
    ApnsRequest {
        path: format!("/3/device/{}", push.device_token),
        headers,
        body: push.payload.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p8() -> (Vec<u8>, Vec<u8>) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        (
            key.serialize_pem().into_bytes(),
            key.public_key_raw().to_vec(),
        )
    }

    #[test]
    fn token_is_signed_and_refreshed_within_the_window() {
        let (pem, public) = p8();
        let mut token = ProviderToken::from_p8(
            &pem,
            "ABC123DEFG",
            "TEAM123456",
            Duration::from_secs(40 * 60),
        )
        .expect("p8");
        let first = token.token(1_000).expect("mint").to_owned();
        let (signing_input, signature) = first.rsplit_once('.').expect("jws");
        let key = jsonwebtoken::DecodingKey::from_ec_der(&public);
        let ok = jsonwebtoken::crypto::verify(
            signature,
            signing_input.as_bytes(),
            &key,
            jsonwebtoken::Algorithm::ES256,
        )
        .expect("verify");
        assert!(ok, "ES256 signature verifies with the key's public half");
        let header = jsonwebtoken::decode_header(&first).expect("header");
        assert_eq!(header.kid.as_deref(), Some("ABC123DEFG"));

        assert_eq!(
            token.token(1_000 + 39 * 60).expect("same"),
            first,
            "not refreshed before 40 min"
        );
        assert_ne!(
            token.token(1_000 + 40 * 60).expect("new"),
            first,
            "refreshed at 40 min"
        );
    }

    #[test]
    fn refresh_is_clamped_and_rejections_respect_the_minimum() {
        let (pem, _) = p8();
        let mut token =
            ProviderToken::from_p8(&pem, "K", "T", Duration::from_secs(60)).expect("p8");
        let first = token.token(0).expect("mint").to_owned();
        assert_eq!(
            token.token(5 * 60).expect("same"),
            first,
            "1 min is clamped to 20"
        );
        token.rejected(10 * 60);
        assert_eq!(
            token.token(10 * 60).expect("same"),
            first,
            "never refreshed within 20 min"
        );
        token.rejected(21 * 60);
        assert_ne!(token.token(21 * 60).expect("new"), first);
    }

    #[test]
    fn an_rsa_key_is_not_a_p8() {
        let rsa =
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .expect("rsa");
        assert!(
            ProviderToken::from_p8(rsa.serialize_pem().as_bytes(), "K", "T", MAX_REFRESH).is_err()
        );
    }

    #[test]
    fn request_headers() {
        let push = PushRequest {
            device_token: "abcd".into(),
            app_id: "com.example.mail".into(),
            push_type: "alert".into(),
            priority: 5,
            collapse_id: "c0ffee".into(),
            expires_time_ms: 1_800_000_000_123,
            payload: br#"{"aps":{"badge":3}}"#.to_vec(),
            ..PushRequest::default()
        };
        let req = request(&push, "tok");
        assert_eq!(req.path, "/3/device/abcd");
        let get = |name| {
            req.headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("authorization"), Some("bearer tok"));
        assert_eq!(get("apns-topic"), Some("com.example.mail"));
        assert_eq!(get("apns-push-type"), Some("alert"));
        assert_eq!(get("apns-priority"), Some("5"));
        assert_eq!(get("apns-expiration"), Some("1800000000"));
        assert_eq!(get("apns-collapse-id"), Some("c0ffee"));
        assert_eq!(
            default_base_url(Environment::Sandbox as i32),
            "https://api.sandbox.push.apple.com"
        );
    }
}
