//! The one tenant the token targets validate against: an RSA-2048 and an EC P-256
//! certificate, generated afresh by every fuzzing process. No input can therefore carry a
//! valid signature, unless the target signs it itself (`token_claims`).

use std::sync::{Arc, OnceLock};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, RSA_PKCS1_SHA256, RSA_PSS_SHA256, RsaKeyPair,
};
use pushrelay_auth::{AuthConfig, Authenticated, Authenticator, Rejection, TenantRegistry};
use pushrelay_proto::v1;
use tokio::runtime::Runtime;

use crate::NOW_MS;

/// The tenant's id.
pub const TENANT: &str = "fabrikam.com";
/// Its issuer.
pub const ISSUER: &str = "00000002-0000-0ff1-ce00-000000000000@fabrikam.com";
/// The `kid` of its RSA key.
pub const RSA_KID: &str = "fuzz-rsa";
/// The `kid` of its EC key.
pub const EC_KID: &str = "fuzz-ec";

/// The registry, an authenticator over it, and the private keys.
pub struct Fixture {
    /// Runs the authenticator's futures (no I/O: the tenant has no JWKS URL).
    pub runtime: Runtime,
    /// A registry holding the tenant.
    pub registry: Arc<TenantRegistry>,
    /// The authenticator the auth-coalesce stage uses, with RS256, PS256 and ES256 allowed.
    pub authenticator: Authenticator,
    /// The `x5t` of the RSA certificate.
    pub rsa_x5t: String,
    /// The `x5t` of the EC certificate.
    pub ec_x5t: String,
    rsa: RsaKeyPair,
    ec: EcdsaKeyPair,
    rng: SystemRandom,
}

impl std::fmt::Debug for Fixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fixture").finish_non_exhaustive()
    }
}

/// How a [`Fixture::sign`] signature is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signer {
    /// RSASSA-PKCS1-v1_5 with the RSA key (RS256).
    Rs256,
    /// RSASSA-PSS with the RSA key (PS256).
    Ps256,
    /// ECDSA P-256 with the EC key (ES256).
    Es256,
}

impl Signer {
    /// The `alg` this signature verifies under.
    pub fn alg(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Ps256 => "PS256",
            Self::Es256 => "ES256",
        }
    }

    /// The `kid` of the key that signs.
    pub fn kid(self) -> &'static str {
        match self {
            Self::Rs256 | Self::Ps256 => RSA_KID,
            Self::Es256 => EC_KID,
        }
    }
}

impl Fixture {
    /// The process's fixture, made on first use.
    pub fn get() -> &'static Self {
        static FIXTURE: OnceLock<Fixture> = OnceLock::new();
        FIXTURE.get_or_init(Self::new)
    }

    fn new() -> Self {
        let rsa_key =
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .expect("RSA key");
        let ec_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("EC key");
        let certificate = |key: &rcgen::KeyPair| {
            rcgen::CertificateParams::new(vec![TENANT.to_owned()])
                .expect("params")
                .self_signed(key)
                .expect("certificate")
                .der()
                .to_vec()
        };
        let (rsa_der, ec_der) = (certificate(&rsa_key), certificate(&ec_key));
        let credential = |der: &[u8], kid: &str| v1::KeyCredential {
            thumbprint: pushrelay_auth::thumbprint(der),
            key_id: kid.to_owned(),
            certificate_der: der.to_vec(),
            ..Default::default()
        };
        let record = v1::Tenant {
            id: TENANT.to_owned(),
            enabled: true,
            issuer: ISSUER.to_owned(),
            audiences: Vec::new(),
            keys: vec![credential(&rsa_der, RSA_KID), credential(&ec_der, EC_KID)],
            metadata_url: String::new(),
            updated_time_ms: NOW_MS,
        };
        let registry = Arc::new(TenantRegistry::new());
        registry
            .apply(TENANT, Some(&record))
            .expect("tenant applies");
        let mut config = AuthConfig::default();
        config.validation.algorithms = pushrelay_auth::SUPPORTED_ALGORITHMS
            .iter()
            .map(|alg| (*alg).to_owned())
            .collect();
        let authenticator = Authenticator::new(Arc::clone(&registry), config);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        Self {
            runtime,
            registry,
            authenticator,
            rsa_x5t: pushrelay_auth::thumbprint(&rsa_der),
            ec_x5t: pushrelay_auth::thumbprint(&ec_der),
            rsa: RsaKeyPair::from_pkcs8(&rsa_key.serialize_der()).expect("RSA PKCS#8"),
            ec: EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &ec_key.serialize_der())
                .expect("EC PKCS#8"),
            rng: SystemRandom::new(),
        }
    }

    /// What the auth-coalesce stage's authenticator answers for `token` at [`NOW_MS`].
    pub fn authenticate(&self, token: &str) -> Result<Authenticated, Rejection> {
        self.runtime
            .block_on(self.authenticator.authenticate_at(token, NOW_MS))
    }

    /// A signature of `signing_input` made with one of the tenant's keys.
    pub fn sign(&self, signer: Signer, signing_input: &[u8]) -> Vec<u8> {
        match signer {
            Signer::Rs256 | Signer::Ps256 => {
                let padding = if signer == Signer::Rs256 {
                    &RSA_PKCS1_SHA256
                } else {
                    &RSA_PSS_SHA256
                };
                let mut signature = vec![0u8; self.rsa.public_modulus_len()];
                self.rsa
                    .sign(padding, &self.rng, signing_input, &mut signature)
                    .expect("RSA signature");
                signature
            }
            Signer::Es256 => self
                .ec
                .sign(&self.rng, signing_input)
                .expect("EC signature")
                .as_ref()
                .to_vec(),
        }
    }
}
