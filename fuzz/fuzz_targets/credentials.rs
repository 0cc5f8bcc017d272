//! Key material as the relay reads it: certificates (DER and PEM, as `relayctl` and JWKS
//! `x5c` give them), bare public keys (SPKI DER), `KeyCredential` records and whole `Tenant`
//! records of the compacted tenants topic applied to the `TenantRegistry`.
//!
//! Checks: an accepted credential is RSA of at least 2048 bits or EC P-256, has a thumbprint
//! or key id and a non-empty window, and survives its record round trip (`to_proto` then
//! `from_proto`) unchanged; an applied tenant is in the registry with all its keys, a
//! refused one is not, and a tombstone removes it.
//!
//! Input: a selector byte (0 DER certificate, 1 PEM, 2 SPKI, 3 `KeyCredential` record,
//! 4 `Tenant` record), then the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pushrelay_auth::{KeyCredential, KeyKind, TenantRegistry, thumbprint, valid_tenant_id};
use pushrelay_fuzz::{Input, NOW_MS, round_trip};
use pushrelay_proto::v1;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let selector = input.byte();
    let bytes = input.rest();
    match selector % 5 {
        0 => {
            if let Ok(key) = KeyCredential::from_certificate_der(bytes) {
                assert_eq!(key.thumbprint.as_deref(), Some(thumbprint(bytes).as_str()));
                usable(&key);
            }
        }
        1 => {
            if let Ok(keys) = KeyCredential::from_certificate_pem(bytes) {
                assert!(!keys.is_empty());
                keys.iter().for_each(usable);
            }
        }
        2 => {
            if let Ok(key) = KeyCredential::from_public_key_der(bytes, "kid", 0, NOW_MS) {
                assert_eq!(key.key_id.as_deref(), Some("kid"));
                assert_eq!((key.not_before_ms, key.not_after_ms), (0, NOW_MS));
                usable(&key);
            }
        }
        3 => {
            if let Some(record) = round_trip::<v1::KeyCredential>(bytes)
                && let Ok(key) = KeyCredential::from_proto(&record)
            {
                usable(&key);
            }
        }
        _ => {
            if let Some(record) = round_trip::<v1::Tenant>(bytes) {
                tenant(&record);
            }
        }
    }
});

fn usable(key: &KeyCredential) {
    assert!(key.thumbprint.is_some() || key.key_id.is_some());
    assert!(!key.identity().is_empty());
    match key.kind {
        KeyKind::Rsa { bits } => assert!(bits >= 2048, "RSA key of {bits} bits"),
        KeyKind::EcP256 => {}
    }
    let again = KeyCredential::from_proto(&key.to_proto()).expect("its own record reads back");
    assert_eq!(again.thumbprint, key.thumbprint);
    assert_eq!(again.key_id, key.key_id);
    assert_eq!(again.kind, key.kind);
    assert_eq!(
        (again.not_before_ms, again.not_after_ms),
        (key.not_before_ms, key.not_after_ms)
    );
}

fn tenant(record: &v1::Tenant) {
    let registry = TenantRegistry::new();
    match registry.apply(&record.id, Some(record)) {
        Ok(()) => {
            assert!(valid_tenant_id(&record.id));
            let entry = registry.get(&record.id).expect("applied");
            assert_eq!(entry.keys.len(), record.keys.len());
            assert_eq!(
                (entry.enabled, &entry.issuer),
                (record.enabled, &record.issuer)
            );
            entry.keys.iter().for_each(usable);
        }
        Err(_) => assert!(registry.get(&record.id).is_none()),
    }
    registry
        .apply(&record.id, None)
        .expect("a tombstone applies");
    assert!(registry.is_empty());
}
