//! Benchmarks live in the `[[bench]]` targets of this crate; this library holds what the
//! load harnesses share.

/// The `usize` in environment variable `name`, or `default` when unset or unparsable.
pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
