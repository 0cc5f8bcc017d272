use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, RSA_PKCS1_SHA256, RSA_PSS_SHA256, RsaKeyPair,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

/// Why a token cannot be minted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MintError {
    /// The private key cannot be read.
    #[error("cannot read the private key (PKCS#8 DER or PEM expected): {0}")]
    Key(String),
    /// The algorithm does not fit the key.
    #[error("algorithm {alg} cannot be used with this {key} key")]
    Algorithm {
        /// Requested `alg`.
        alg: String,
        /// Key type.
        key: &'static str,
    },
    /// Signing failed.
    #[error("signing failed")]
    Sign,
}

/// A private key a tenant's server signs tokens with.
#[derive(Debug)]
pub enum SigningKey {
    /// RSA (RS256, PS256).
    Rsa(RsaKeyPair),
    /// EC P-256 (ES256).
    Ec(EcdsaKeyPair),
}

impl SigningKey {
    /// Reads a PKCS#8 private key, DER or PEM (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pkcs8(bytes: &[u8]) -> Result<Self, MintError> {
        let der = match std::str::from_utf8(bytes) {
            Ok(text) if text.contains("-----BEGIN") => pem_body(text)?,
            _ => bytes.to_vec(),
        };
        if let Ok(rsa) = RsaKeyPair::from_pkcs8(&der) {
            return Ok(Self::Rsa(rsa));
        }
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
            .map(Self::Ec)
            .map_err(|err| MintError::Key(err.to_string()))
    }
}

fn pem_body(text: &str) -> Result<Vec<u8>, MintError> {
    let mut inside = false;
    let mut body = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("-----BEGIN") && line.contains("PRIVATE KEY") {
            if line.contains("RSA PRIVATE KEY") || line.contains("EC PRIVATE KEY") {
                return Err(MintError::Key(
                    "PKCS#1/SEC1 key: convert it with `openssl pkcs8 -topk8 -nocrypt`".into(),
                ));
            }
            inside = true;
        } else if line.starts_with("-----END") {
            break;
        } else if inside {
            body.push_str(line);
        }
    }
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|err| MintError::Key(format!("bad PEM base64: {err}")))
}

/// Signs `claims` with `key` as a compact JWS whose header is `header` plus `alg`.
///
/// Used by `relayctl token mint`, the dev mode and tests; header and claims are taken as
/// given, so tests can build tokens that must be rejected.
pub fn mint_token(
    key: &SigningKey,
    alg: &str,
    header: &Map<String, Value>,
    claims: &Value,
) -> Result<String, MintError> {
    let mut header = header.clone();
    header.insert("alg".into(), Value::String(alg.to_owned()));
    header
        .entry("typ")
        .or_insert_with(|| Value::String("JWT".into()));
    let encode = |value: &Value| URL_SAFE_NO_PAD.encode(value.to_string());
    let signing_input = format!("{}.{}", encode(&Value::Object(header)), encode(claims));
    let rng = SystemRandom::new();
    let signature = match (key, alg) {
        (SigningKey::Rsa(rsa), "RS256" | "PS256") => {
            let padding = if alg == "RS256" {
                &RSA_PKCS1_SHA256
            } else {
                &RSA_PSS_SHA256
            };
            let mut signature = vec![0u8; rsa.public_modulus_len()];
            rsa.sign(padding, &rng, signing_input.as_bytes(), &mut signature)
                .map_err(|_| MintError::Sign)?;
            signature
        }
        (SigningKey::Ec(ec), "ES256") => ec
            .sign(&rng, signing_input.as_bytes())
            .map_err(|_| MintError::Sign)?
            .as_ref()
            .to_vec(),
        (SigningKey::Rsa(_), _) => {
            return Err(MintError::Algorithm {
                alg: alg.to_owned(),
                key: "RSA",
            });
        }
        (SigningKey::Ec(_), _) => {
            return Err(MintError::Algorithm {
                alg: alg.to_owned(),
                key: "EC P-256",
            });
        }
    };
    Ok(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature)
    ))
}
