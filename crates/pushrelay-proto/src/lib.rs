//! The records of pushrelay: every Kafka value in every topic is one of these messages.
//!
//! Generated at build time from `proto/pushrelay/v1/*.proto`; see the field comments there.

/// Package `pushrelay.v1`.
#[allow(unreachable_pub, missing_debug_implementations, clippy::all)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/pushrelay.v1.rs"));
}

pub mod checks;
pub mod keys;

pub use prost::Message;
