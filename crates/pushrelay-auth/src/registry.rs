use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use pushrelay_proto::v1;

use crate::{CredentialError, KeyCredential};

/// A tenant as the validator sees it: parsed keys, ready to verify with.
#[derive(Debug, Clone)]
pub struct TenantEntry {
    /// Tenant id (organisation domain, lower case).
    pub id: String,
    /// Disabled tenants are rejected.
    pub enabled: bool,
    /// Required `iss`.
    pub issuer: String,
    /// Accepted `aud` values; empty means the relay's audience.
    pub audiences: Vec<String>,
    /// Registered keys.
    pub keys: Vec<KeyCredential>,
    /// Optional JWKS metadata URL.
    pub metadata_url: Option<String>,
    /// Changes whenever the tenant's record changes; cached validations of an older
    /// generation are re-checked.
    pub generation: u64,
}

/// Why a tenant record could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantUpdateError {
    /// The record's id is empty or not a lower-case domain without `/`.
    #[error("invalid tenant id {0:?}: use the organisation's domain, lower case, without '/'")]
    InvalidId(String),
    /// The record's key with this index cannot be used.
    #[error("key #{index} of tenant {tenant} refused: {error}")]
    Key {
        /// Tenant id.
        tenant: String,
        /// Position of the key in the record.
        index: usize,
        /// Why.
        error: CredentialError,
    },
    /// The key of the record does not match the tenant id inside it.
    #[error("record key {key:?} does not match tenant id {id:?}")]
    KeyMismatch {
        /// Kafka key.
        key: String,
        /// Id in the value.
        id: String,
    },
}

/// Checks a tenant id: a lower-case domain-like name without `/` (it is the first part of
/// every mailbox key).
pub fn valid_tenant_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 253
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'))
}

impl TenantEntry {
    /// Parses a tenant record. Keys that cannot be used (for example RSA under 2048 bits)
    /// make the whole record fail, so a registry never half-applies a tenant.
    pub fn from_proto(record: &v1::Tenant, generation: u64) -> Result<Self, TenantUpdateError> {
        if !valid_tenant_id(&record.id) {
            return Err(TenantUpdateError::InvalidId(record.id.clone()));
        }
        let keys = record
            .keys
            .iter()
            .enumerate()
            .map(|(index, key)| {
                KeyCredential::from_proto(key).map_err(|error| TenantUpdateError::Key {
                    tenant: record.id.clone(),
                    index,
                    error,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            id: record.id.clone(),
            enabled: record.enabled,
            issuer: record.issuer.clone(),
            audiences: record.audiences.clone(),
            keys,
            metadata_url: Some(record.metadata_url.clone()).filter(|u| !u.is_empty()),
            generation,
        })
    }
}

/// The tenants known to this process, fed from the compacted `pushrelay.tenants` topic.
///
/// Reads are a read-lock and a hash lookup; updates are rare (an operator's command).
#[derive(Debug, Default)]
pub struct TenantRegistry {
    tenants: RwLock<HashMap<String, Arc<TenantEntry>>>,
    generation: AtomicU64,
}

impl TenantRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The tenant `id`, if registered.
    pub fn get(&self, id: &str) -> Option<Arc<TenantEntry>> {
        self.tenants
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(id)
            .cloned()
    }

    /// Applies one record of the tenants topic: a value replaces the tenant, a tombstone
    /// (`None`) removes it. On error the previous state of that tenant is kept.
    pub fn apply(&self, key: &str, record: Option<&v1::Tenant>) -> Result<(), TenantUpdateError> {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let mut tenants = self
            .tenants
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match record {
            None => {
                tenants.remove(key);
            }
            Some(record) => {
                if record.id != key {
                    return Err(TenantUpdateError::KeyMismatch {
                        key: key.to_owned(),
                        id: record.id.clone(),
                    });
                }
                let entry = TenantEntry::from_proto(record, generation)?;
                tenants.insert(entry.id.clone(), Arc::new(entry));
            }
        }
        Ok(())
    }

    /// Number of registered tenants.
    pub fn len(&self) -> usize {
        self.tenants
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }

    /// Whether no tenant is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
