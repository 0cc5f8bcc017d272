//! Metrics of the stage. Labels are bounded (fixed outcome names).

pub(crate) const RECORDS: &str = "pushrelay_auth_coalesce_records_total";
pub(crate) const EMITTED: &str = "pushrelay_auth_coalesce_emitted_total";
pub(crate) const EMIT_DELAY: &str = "pushrelay_auth_coalesce_emit_delay_seconds";
pub(crate) const TRACKED: &str = "pushrelay_auth_coalesce_tracked_mailboxes";
pub(crate) const PENDING: &str = "pushrelay_auth_coalesce_pending_mailboxes";
pub(crate) const OUTSTANDING: &str = "pushrelay_auth_coalesce_outstanding_records";
pub(crate) const RESTORED: &str = "pushrelay_auth_coalesce_restored_fences_total";
pub(crate) const SUBSCRIPTIONS: &str = "pushrelay_auth_coalesce_subscriptions_total";
pub(crate) const TENANT_RECORDS: &str = "pushrelay_tenant_registry_records_total";
pub(crate) const TENANTS: &str = "pushrelay_tenant_registry_tenants";

pub(crate) fn describe() {
    metrics::describe_counter!(
        RECORDS,
        "Input records by outcome: pending, merged, stale, rejected, dead_lettered"
    );
    metrics::describe_counter!(
        EMITTED,
        "Unread counts emitted, by kind: changed, unchanged"
    );
    metrics::describe_histogram!(
        EMIT_DELAY,
        "Seconds from a count's oldest ingress time to its emission"
    );
    metrics::describe_gauge!(TRACKED, "Mailboxes tracked by the coalescer");
    metrics::describe_gauge!(PENDING, "Mailboxes with a pending count");
    metrics::describe_gauge!(
        OUTSTANDING,
        "Input records whose outputs are not acknowledged"
    );
    metrics::describe_counter!(
        SUBSCRIPTIONS,
        "Authenticated subscription changes written, by action"
    );
    metrics::describe_counter!(RESTORED, "Mailbox fences restored from unread-counts");
    metrics::describe_counter!(TENANT_RECORDS, "Tenant registry records, by result");
    metrics::describe_gauge!(TENANTS, "Tenants in the registry");
}

/// The per-record counters of the coalescer's answers, registered once: the hot path
/// increments them without a registry lookup.
pub(crate) struct OfferCounters {
    pub(crate) pending: metrics::Counter,
    pub(crate) merged: metrics::Counter,
    pub(crate) stale: metrics::Counter,
}

impl OfferCounters {
    pub(crate) fn new() -> Self {
        Self {
            pending: metrics::counter!(RECORDS, "outcome" => "pending"),
            merged: metrics::counter!(RECORDS, "outcome" => "merged"),
            stale: metrics::counter!(RECORDS, "outcome" => "stale"),
        }
    }
}
