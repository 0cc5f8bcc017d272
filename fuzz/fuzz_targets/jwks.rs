//! JWKS metadata documents (a tenant's `metadata_url` answer: untrusted JSON, with `x5c`
//! certificates) through `parse_jwks`.
//!
//! Checks: every key returned can be selected (it has a `kid` or a thumbprint and the
//! header naming it selects it), is RSA of at least 2048 bits or EC P-256, and comes from
//! a key of the document.
//!
//! Input: the document.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pushrelay_auth::{KeyKind, parse_jwks};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(keys) = parse_jwks(data) else {
        return;
    };
    // (A document can hold what `Value` refuses, such as a lone surrogate escape in a
    // field `parse_jwks` skips.)
    if let Ok(document) = serde_json::from_slice::<Value>(data) {
        let listed = document["keys"].as_array().map_or(0, Vec::len);
        assert!(keys.len() <= listed);
    }
    for key in &keys {
        assert!(!key.identity().is_empty(), "a key nothing can name");
        let kid = key.key_id.as_deref();
        let x5t = key.thumbprint.as_deref();
        assert!(key.is_named_by(x5t, kid));
        match key.kind {
            KeyKind::Rsa { bits } => assert!(bits >= 2048, "RSA key of {bits} bits"),
            KeyKind::EcP256 => {}
        }
        assert!(key.not_before_ms < key.not_after_ms);
    }
});
