//! The auth-and-coalesce stage.
//!
//! Consumes `pushrelay.mailbox-changes`, authenticates each change's S2S token against
//! the tenant registry (followed from `pushrelay.tenants`), debounces counts per mailbox
//! and produces `pushrelay.unread-counts`. It also consumes
//! `pushrelay.subscription-changes` and writes authenticated subscriptions (or tombstones)
//! to the compacted `pushrelay.subscriptions`, so all token validation lives here. Rejected tokens go to
//! `pushrelay.tenant-feedback`, undecodable or invalid records to `pushrelay.dead-letters`.
//!
//! Layout: [`config`] (flags), [`request`] (pure: decode, check and build records),
//! `stage` (the event loop and its Kafka I/O), `tenants` (the registry follower).

pub mod config;
mod metrics;
pub mod request;
mod stage;
mod tenants;

pub use config::StageArgs;
pub use stage::{StageError, run};

/// The stage's name in dead letters, logs and the consumer group default.
pub const STAGE: &str = "auth-coalesce";
