//! Metrics of token validation. Labels are bounded: `result` and the fixed reason codes.

/// Tokens checked, by `result` (`accepted`/`rejected`) and `reason` (rejection code, or
/// `cached`/`verified` for accepted ones).
pub(crate) const TOKENS: &str = "pushrelay_auth_tokens_total";

pub(crate) fn describe() {
    metrics::describe_counter!(
        TOKENS,
        "Tokens validated, by result and reason (rejection code, or cached/verified)"
    );
    metrics::describe_counter!(
        "pushrelay_auth_jwks_fetches_total",
        "JWKS metadata fetches, by result"
    );
}
