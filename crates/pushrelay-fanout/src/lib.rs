//! The fan-out stage.
//!
//! Consumes `pushrelay.unread-counts` and, for its assigned partitions only, holds the
//! subscriptions of the co-partitioned, compacted `pushrelay.subscriptions` topic: on
//! assignment it reads that partition to its end before serving it, then follows it. Every
//! count becomes one `PushRequest` per live device on `pushrelay.push-requests`, with the
//! platform payload decided here. After an assignment the backlog up to the high watermark
//! is folded to the latest count per mailbox first (catch-up coalescing).
//!
//! Layout: [`config`], [`table`] and [`payload`] (pure), `stage` (Kafka I/O).

pub mod config;
pub mod payload;
mod stage;
pub mod table;

pub use config::FanoutArgs;
pub use stage::{FanoutError, run};

/// The stage's name in dead letters and logs.
pub const STAGE: &str = "fanout";
