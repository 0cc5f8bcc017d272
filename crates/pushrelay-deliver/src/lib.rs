//! The provider-facing core of delivery, without I/O:
//!
//! - [`outcome`]: what an APNs or FCM answer means (delivered, retry, final, unregistered);
//! - [`retry`]: exponential backoff with full jitter that honours `Retry-After`, and the
//!   retry budget;
//! - [`apns`]: the ES256 provider token (refreshed every 20–50 minutes, never more often)
//!   and the HTTP/2 request of a push;
//! - [`fcm`]: the service-account OAuth2 assertion, the access-token cache, and the HTTP v1
//!   request of a push.
//!
//! [`client`] sends with them over HTTP/2: [`client::ApnsClient`] (TLS, HTTP/2 only,
//! configurable base URL and extra CA) and [`client::FcmClient`] (token exchange, cached).
//!
//! The stage (`stage`, Kafka I/O) consumes `pushrelay.push-requests`; [`scheduler`] (pure)
//! decides what to send when: one push at a time per device and mailbox, newer badges
//! replacing older ones, retries on timers, a bound on sends in flight. [`providers`]
//! routes each platform to its client, the `log` provider or the `PROBE` recorder.

pub mod apns;
pub mod client;
pub mod config;
pub mod fcm;
pub mod outcome;
pub mod providers;
pub mod retry;
pub mod scheduler;
mod stage;

pub use config::DeliverArgs;
pub use stage::{DeliverError, run};

/// The stage's name in dead letters and logs.
pub const STAGE: &str = "deliver";
