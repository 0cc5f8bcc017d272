use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::DecodingKey;
use pushrelay_proto::v1;
use x509_parser::prelude::*;
use x509_parser::public_key::PublicKey;

use crate::Reason;

/// Smallest RSA modulus accepted, in bits.
pub(crate) const MIN_RSA_BITS: usize = 2048;

/// Why a key credential cannot be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// The bytes are not a DER or PEM X.509 certificate.
    #[error("not an X.509 certificate: {0}")]
    NotACertificate(String),
    /// The public key bytes cannot be read.
    #[error("not a public key: {0}")]
    NotAPublicKey(String),
    /// Neither RSA nor EC P-256.
    #[error("unsupported key type {0}: use RSA (2048 bits or more) or EC P-256")]
    UnsupportedKey(String),
    /// RSA under 2048 bits.
    #[error("RSA key of {bits} bits refused: at least {MIN_RSA_BITS} bits are required")]
    KeyTooSmall {
        /// The key's size.
        bits: usize,
    },
    /// The validity window is empty.
    #[error("the validity window is empty: not-before must be before not-after")]
    EmptyWindow,
    /// A credential without a thumbprint or key id could never be selected.
    #[error("the credential has neither a certificate thumbprint nor a key id")]
    NoIdentifier,
}

/// What kind of public key a credential holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA, for RS256 and PS256.
    Rsa {
        /// Modulus size.
        bits: usize,
    },
    /// EC on P-256, for ES256.
    EcP256,
}

impl KeyKind {
    /// Whether a token signed with `alg` can have been made by this kind of key.
    pub fn matches(self, alg: &str) -> bool {
        match self {
            Self::Rsa { .. } => matches!(alg, "RS256" | "PS256"),
            Self::EcP256 => alg == "ES256",
        }
    }
}

/// A tenant's verification key: parsed once, when registered or loaded, and kept ready.
#[derive(Clone)]
pub struct KeyCredential {
    /// `x5t` of the certificate, when there is one.
    pub thumbprint: Option<String>,
    /// `kid` tokens may name it by.
    pub key_id: Option<String>,
    /// Key type.
    pub kind: KeyKind,
    /// Accepted from, Unix milliseconds.
    pub not_before_ms: i64,
    /// Accepted until, Unix milliseconds.
    pub not_after_ms: i64,
    certificate_der: Vec<u8>,
    public_key_der: Vec<u8>,
    key: DecodingKey,
}

impl std::fmt::Debug for KeyCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCredential")
            .field("thumbprint", &self.thumbprint)
            .field("key_id", &self.key_id)
            .field("kind", &self.kind)
            .field("not_before_ms", &self.not_before_ms)
            .field("not_after_ms", &self.not_after_ms)
            .finish_non_exhaustive()
    }
}

/// The `x5t` of a certificate: base64url (no padding) of the SHA-1 of its DER.
pub fn thumbprint(certificate_der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        certificate_der,
    );
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

impl KeyCredential {
    /// A credential from a certificate (DER), valid for the certificate's own validity
    /// (refused when that window is empty: its record would not load).
    pub fn from_certificate_der(der: &[u8]) -> Result<Self, CredentialError> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|err| CredentialError::NotACertificate(err.to_string()))?;
        let validity = cert.validity();
        let not_before_ms = validity.not_before.timestamp().saturating_mul(1000);
        let not_after_ms = validity.not_after.timestamp().saturating_mul(1000);
        let spki = cert.public_key();
        let (kind, key) = decoding_key(spki)?;
        Self {
            thumbprint: Some(thumbprint(der)),
            key_id: None,
            kind,
            not_before_ms,
            not_after_ms,
            certificate_der: der.to_vec(),
            public_key_der: spki.raw.to_vec(),
            key,
        }
        .checked()
    }

    /// Credentials from every certificate in a PEM text.
    pub fn from_certificate_pem(pem: &[u8]) -> Result<Vec<Self>, CredentialError> {
        let mut out = Vec::new();
        for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
            let block = block.map_err(|err| CredentialError::NotACertificate(err.to_string()))?;
            if block.label == "CERTIFICATE" {
                out.push(Self::from_certificate_der(&block.contents)?);
            }
        }
        if out.is_empty() {
            return Err(CredentialError::NotACertificate(
                "no CERTIFICATE block in the PEM text".into(),
            ));
        }
        Ok(out)
    }

    /// A credential from a bare SubjectPublicKeyInfo (DER) with an explicit window.
    pub fn from_public_key_der(
        der: &[u8],
        key_id: &str,
        not_before_ms: i64,
        not_after_ms: i64,
    ) -> Result<Self, CredentialError> {
        let (_, spki) = SubjectPublicKeyInfo::from_der(der)
            .map_err(|err| CredentialError::NotAPublicKey(err.to_string()))?;
        let (kind, key) = decoding_key(&spki)?;
        if key_id.is_empty() {
            return Err(CredentialError::NoIdentifier);
        }
        Self {
            thumbprint: None,
            key_id: Some(key_id.to_owned()),
            kind,
            not_before_ms,
            not_after_ms,
            certificate_der: Vec::new(),
            public_key_der: der.to_vec(),
            key,
        }
        .checked()
    }

    /// A credential from an already decoded key (JWKS), valid for the given window.
    pub(crate) fn from_decoding_key(
        key: DecodingKey,
        kind: KeyKind,
        key_id: Option<String>,
        thumbprint: Option<String>,
    ) -> Self {
        Self {
            thumbprint,
            key_id,
            kind,
            not_before_ms: i64::MIN,
            not_after_ms: i64::MAX,
            certificate_der: Vec::new(),
            public_key_der: Vec::new(),
            key,
        }
    }

    /// Narrows (or sets) the validity window; `None` keeps the current bound.
    pub fn with_window(
        mut self,
        not_before_ms: Option<i64>,
        not_after_ms: Option<i64>,
    ) -> Result<Self, CredentialError> {
        if let Some(nb) = not_before_ms {
            self.not_before_ms = nb;
        }
        if let Some(na) = not_after_ms {
            self.not_after_ms = na;
        }
        self.checked()
    }

    /// Names the credential by a `kid` besides its thumbprint.
    pub fn with_key_id(mut self, key_id: Option<String>) -> Self {
        self.key_id = key_id.filter(|k| !k.is_empty());
        self
    }

    /// Parses a registered credential from its record.
    pub fn from_proto(record: &v1::KeyCredential) -> Result<Self, CredentialError> {
        let key_id = Some(record.key_id.clone()).filter(|k| !k.is_empty());
        let window = (
            Some(record.not_before_ms).filter(|t| *t != 0),
            Some(record.not_after_ms).filter(|t| *t != 0),
        );
        if !record.certificate_der.is_empty() {
            return Self::from_certificate_der(&record.certificate_der)?
                .with_key_id(key_id)
                .with_window(window.0, window.1);
        }
        Self::from_public_key_der(
            &record.public_key_der,
            key_id.as_deref().unwrap_or_default(),
            record.not_before_ms,
            record.not_after_ms,
        )
    }

    /// The record of this credential.
    pub fn to_proto(&self) -> v1::KeyCredential {
        v1::KeyCredential {
            thumbprint: self.thumbprint.clone().unwrap_or_default(),
            key_id: self.key_id.clone().unwrap_or_default(),
            certificate_der: self.certificate_der.clone(),
            public_key_der: if self.certificate_der.is_empty() {
                self.public_key_der.clone()
            } else {
                Vec::new()
            },
            not_before_ms: self.not_before_ms,
            not_after_ms: self.not_after_ms,
        }
    }

    /// Whether a token header's `x5t` or `kid` names this key. A `kid` also matches the
    /// thumbprint, the convention of Azure AD and Exchange.
    pub fn is_named_by(&self, x5t: Option<&str>, kid: Option<&str>) -> bool {
        match (x5t, kid) {
            (Some(x5t), _) => self.thumbprint.as_deref() == Some(x5t),
            (None, Some(kid)) => {
                self.key_id.as_deref() == Some(kid) || self.thumbprint.as_deref() == Some(kid)
            }
            (None, None) => false,
        }
    }

    /// Whether the key may be used at `now_ms`.
    pub fn check_window(&self, now_ms: i64) -> Result<(), Reason> {
        if now_ms < self.not_before_ms {
            Err(Reason::KeyNotYetValid)
        } else if now_ms > self.not_after_ms {
            Err(Reason::KeyExpired)
        } else {
            Ok(())
        }
    }

    /// The key to verify with.
    pub fn decoding_key(&self) -> &DecodingKey {
        &self.key
    }

    /// A stable identity of this key within its tenant (thumbprint, else key id).
    pub fn identity(&self) -> &str {
        self.thumbprint
            .as_deref()
            .or(self.key_id.as_deref())
            .unwrap_or_default()
    }

    fn checked(self) -> Result<Self, CredentialError> {
        if self.not_before_ms >= self.not_after_ms {
            return Err(CredentialError::EmptyWindow);
        }
        if self.thumbprint.is_none() && self.key_id.is_none() {
            return Err(CredentialError::NoIdentifier);
        }
        Ok(self)
    }
}

fn decoding_key(
    spki: &SubjectPublicKeyInfo<'_>,
) -> Result<(KeyKind, DecodingKey), CredentialError> {
    let parsed = spki
        .parsed()
        .map_err(|err| CredentialError::NotAPublicKey(err.to_string()))?;
    match parsed {
        PublicKey::RSA(rsa) => {
            let bits = rsa.key_size();
            if bits < MIN_RSA_BITS {
                return Err(CredentialError::KeyTooSmall { bits });
            }
            Ok((
                KeyKind::Rsa { bits },
                DecodingKey::from_rsa_raw_components(
                    strip_zeros(rsa.modulus),
                    strip_zeros(rsa.exponent),
                ),
            ))
        }
        PublicKey::EC(point) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok());
            if curve != Some(x509_parser::oid_registry::OID_EC_P256) {
                return Err(CredentialError::UnsupportedKey(
                    "EC on a curve other than P-256".into(),
                ));
            }
            Ok((KeyKind::EcP256, DecodingKey::from_ec_der(point.data())))
        }
        other => Err(CredentialError::UnsupportedKey(
            format!("{other:?}").chars().take(40).collect(),
        )),
    }
}

/// DER integers carry a leading zero byte when the top bit is set; raw RSA components don't.
fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `credentials` fuzz target: a certificate whose validity ends before it
    /// starts was accepted, then its own record (`to_proto`) was refused by `from_proto`,
    /// so `relayctl tenant enable --cert` wrote a tenant the stage could not load.
    #[test]
    fn a_certificate_with_an_empty_window_is_refused() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["fabrikam.com".to_owned()]).expect("params");
        params.not_before = rcgen::date_time_ymd(2031, 1, 1);
        params.not_after = rcgen::date_time_ymd(2030, 1, 1);
        let der = params
            .self_signed(&key)
            .expect("certificate")
            .der()
            .to_vec();
        assert_eq!(
            KeyCredential::from_certificate_der(&der).map(|_| ()),
            Err(CredentialError::EmptyWindow)
        );
        params.not_after = rcgen::date_time_ymd(2032, 1, 1);
        let der = params
            .self_signed(&key)
            .expect("certificate")
            .der()
            .to_vec();
        let credential = KeyCredential::from_certificate_der(&der).expect("a usable certificate");
        let again = KeyCredential::from_proto(&credential.to_proto()).expect("its record loads");
        assert_eq!(again.thumbprint, credential.thumbprint);
    }
}
