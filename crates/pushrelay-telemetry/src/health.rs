use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Liveness and readiness of a process, as `/healthz` and `/readyz` report them.
///
/// Readiness is the conjunction of named flags (for example "tenants caught up",
/// "partitions restored"); each component registers its own.
/// Named readiness conditions.
type Flags = Arc<Mutex<Vec<(String, Arc<AtomicBool>)>>>;

#[derive(Debug, Clone)]
pub struct Health {
    flags: Flags,
    failed: Arc<Mutex<Option<String>>>,
    started: Arc<AtomicBool>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

/// One named readiness condition.
#[derive(Debug, Clone)]
pub struct ReadyFlag {
    flag: Arc<AtomicBool>,
}

impl ReadyFlag {
    /// Marks the condition as met (or not).
    pub fn set(&self, ready: bool) {
        self.flag.store(ready, Ordering::Release);
    }

    /// Whether the condition is met.
    pub fn get(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }
}

impl Health {
    /// A live health that is not ready until [`Health::mark_started`] is called (by the
    /// component once it has registered its own conditions).
    pub fn new() -> Self {
        Self {
            flags: Arc::default(),
            failed: Arc::default(),
            started: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The component registered its conditions; readiness now depends on them alone.
    pub fn mark_started(&self) {
        self.started.store(true, Ordering::Release);
    }

    /// Registers a readiness condition, initially not met.
    pub fn flag(&self, name: &str) -> ReadyFlag {
        let flag = Arc::new(AtomicBool::new(false));
        self.flags
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push((name.to_owned(), Arc::clone(&flag)));
        ReadyFlag { flag }
    }

    /// Marks the process as broken: `/healthz` fails from now on.
    pub fn fail(&self, reason: impl Into<String>) {
        *self
            .failed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(reason.into());
    }

    /// `None` when live, else why not.
    pub fn liveness(&self) -> Option<String> {
        self.failed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The names of the conditions not met yet (empty when ready).
    pub fn not_ready(&self) -> Vec<String> {
        let mut waiting: Vec<String> = self
            .flags
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .filter(|(_, flag)| !flag.load(Ordering::Acquire))
            .map(|(name, _)| name.clone())
            .collect();
        if !self.started.load(Ordering::Acquire) {
            waiting.insert(0, "startup".to_owned());
        }
        waiting
    }

    /// Whether every condition is met and the process is live.
    pub fn is_ready(&self) -> bool {
        self.liveness().is_none() && self.not_ready().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_flag_is_set() {
        let health = Health::new();
        assert!(!health.is_ready(), "not ready before the component started");
        health.mark_started();
        assert!(health.is_ready());
        let a = health.flag("tenants");
        let b = health.flag("partitions");
        assert_eq!(health.not_ready(), vec!["tenants", "partitions"]);
        a.set(true);
        assert!(!health.is_ready());
        b.set(true);
        assert!(health.is_ready());
        health.fail("producer fatal");
        assert!(!health.is_ready());
        assert_eq!(health.liveness().as_deref(), Some("producer fatal"));
    }
}
