//! Arbitrary bytes as a bearer token, through every place that reads one: the ingress's
//! `bearer` (syntax, `tid`), `UnverifiedToken::parse`, the validator (`validate_token`) and
//! the auth-coalesce stage's `Authenticator` against a registry holding one tenant with an
//! RSA and an EC certificate (header and claims parsing, base64url, the `alg` allow-list,
//! key selection by `x5t`/`kid`, key type, signature), then the tenant feedback of the
//! rejection.
//!
//! Checks: the keys are made afresh by each fuzzing process, so no input can carry a valid
//! signature: any token accepted is a bug. A parsed token's signed input and signature are
//! its parts; what the ingress accepts names a valid tenant id; feedback never names an
//! invalid tenant id.
//!
//! Input: the token (invalid UTF-8 replaced).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pushrelay_auth::{UnverifiedToken, ValidationConfig, valid_tenant_id, validate_token};
use pushrelay_auth_coalesce::request::rejection_feedback;
use pushrelay_fuzz::NOW_MS;
use pushrelay_fuzz::tenant::{Fixture, TENANT};
use pushrelay_ingress::request::bearer;

fuzz_target!(|data: &[u8]| {
    let token = String::from_utf8_lossy(data);
    let fixture = Fixture::get();

    if let Ok(accepted) = bearer(Some(&format!("Bearer {token}"))) {
        assert!(valid_tenant_id(&accepted.tenant));
        assert_eq!(accepted.token, token.trim());
        let parsed = UnverifiedToken::parse(&accepted.token).expect("the ingress parsed it");
        assert_eq!(parsed.tenant(), Some(accepted.tenant.as_str()));
    }

    if let Ok(parsed) = UnverifiedToken::parse(&token) {
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parsed.signing_input, format!("{}.{}", parts[0], parts[1]));
        assert_eq!(parsed.signature, parts[2]);
        let tenant = fixture.registry.get(TENANT).expect("registered");
        let config = ValidationConfig {
            algorithms: vec!["RS256".into(), "PS256".into(), "ES256".into()],
            ..ValidationConfig::default()
        };
        if let Ok(valid) = validate_token(&parsed, &tenant, &config, NOW_MS) {
            panic!("validate_token accepted a token nobody signed: {valid:?}");
        }
    }

    match fixture.authenticate(&token) {
        Ok(accepted) => panic!("the authenticator accepted a token nobody signed: {accepted:?}"),
        Err(rejection) => {
            let feedback = rejection_feedback(&rejection, "alice@fabrikam.com", "e1", NOW_MS);
            assert!(feedback.tenant == "-" || valid_tenant_id(&feedback.tenant));
            assert_eq!(feedback.reason, rejection.reason.code());
        }
    }
});
