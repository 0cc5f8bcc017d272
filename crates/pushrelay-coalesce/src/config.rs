use std::time::Duration;

/// Timers and bounds of the [`Coalescer`](crate::Coalescer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoalesceConfig {
    /// Emit when no change came for this long (default 250 ms).
    pub quiet_period: Duration,
    /// Emit at the latest when the oldest pending change is this old (default 1 s).
    pub max_delay: Duration,
    /// Forget a mailbox's fence after it was idle this long (default 1 h). Longer than any
    /// plausible reordering of a tenant's changes, so forgetting cannot let a badge go back.
    pub idle_ttl: Duration,
    /// Soft cap on tracked mailboxes; above it the least recently touched idle ones are
    /// forgotten early (default 2,000,000).
    pub max_tracked: usize,
}

impl Default for CoalesceConfig {
    fn default() -> Self {
        Self {
            quiet_period: Duration::from_millis(250),
            max_delay: Duration::from_secs(1),
            idle_ttl: Duration::from_secs(3600),
            max_tracked: 2_000_000,
        }
    }
}
