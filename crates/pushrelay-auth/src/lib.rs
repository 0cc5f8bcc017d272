//! Authentication of tenants' server-to-server (S2S) OAuth tokens.
//!
//! A tenant's mail server signs a JWT with the private key of its own X.509 certificate.
//! The relay accepts it when:
//! - the header's `alg` is on the allow-list (RS256 by default, PS256 and ES256 optional;
//!   `none` and HMAC never), and `jku`, `x5u` and `jwk` headers are ignored, never fetched;
//! - the token is at most 16 KiB, its header has no `crit` and a `typ`, if any, of JWT;
//! - the key is the tenant's, chosen by (tenant, `x5t`) or (tenant, `kid`) only, among the
//!   registered [`KeyCredential`]s or the keys of the tenant's JWKS metadata URL, and the
//!   key is inside its validity window and of the type `alg` needs;
//! - the claims hold: `tid` names an enabled tenant, `iss` is its issuer, `aud` one of its
//!   accepted audiences, `exp` and `nbf` are numbers and the time is between them (with a
//!   leeway), and the lifetime `exp - nbf` is at most the maximum.
//!
//! The pure core is [`validate_token`]; [`Authenticator`] adds the tenant registry, the
//! validated-token cache and the JWKS fetcher around it.

mod authenticator;
mod credential;
mod jwks;
mod metrics;
mod mint;
mod registry;
mod rejection;
mod token;
mod validator;

pub use authenticator::{AuthConfig, Authenticated, Authenticator, RecentTokens};
pub use credential::{CredentialError, KeyCredential, KeyKind, thumbprint};
pub use jwks::{JwksConfig, JwksFetcher, parse_jwks};
pub use mint::{MintError, SigningKey, mint_token};
pub use registry::{TenantEntry, TenantRegistry, TenantUpdateError, valid_tenant_id};
pub use rejection::{Reason, Rejection, TokenFacts};
pub use token::{MAX_TOKEN_BYTES, TokenHeader, UnverifiedToken};
pub use validator::{ValidToken, ValidationConfig, validate_token};

/// The algorithms this relay can verify.
pub const SUPPORTED_ALGORITHMS: &[&str] = &["RS256", "PS256", "ES256"];

#[cfg(test)]
mod tests;
