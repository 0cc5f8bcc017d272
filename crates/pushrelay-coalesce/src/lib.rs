//! Debouncing of unread counts per mailbox, as a pure state machine.
//!
//! The [`Coalescer`] keeps, per `{tenant}/{mailbox}`, the newest pending count and the
//! sequence of the last count it emitted (the *fence*). A pending count is due when no
//! change came for the quiet period, or when its oldest change is `max_delay` old. The
//! caller owns the clock: every method takes `now`, and [`Coalescer::next_deadline`]
//! says when to call [`Coalescer::poll_due`] next, so the last update of a burst is
//! emitted on time without waiting for another record.
//!
//! It also does the offset bookkeeping a Kafka stage needs: a pending entry holds the
//! input offset of its oldest change, so the caller's commit position never passes a
//! change whose count has not been emitted yet.

use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Instant;

mod config;
pub use config::CoalesceConfig;

/// One accepted (authenticated, valid) change of a mailbox's unread count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Validated tenant id.
    pub tenant: String,
    /// Mailbox address.
    pub mailbox: String,
    /// Input partition the change came from (the mailbox's partition).
    pub partition: i32,
    /// Input offset of the change.
    pub offset: i64,
    /// Absolute unread count.
    pub count: u32,
    /// Per-mailbox version from the tenant's server.
    pub sequence: u64,
    /// Ingress time, Unix milliseconds.
    pub ingress_time_ms: i64,
    /// Event id, kept for tracing the newest change.
    pub event_id: String,
}

/// What [`Coalescer::offer`] did with a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// The change started a pending count; the coalescer now holds its offset until the
    /// count is flushed.
    Pending,
    /// The change replaced a newer pending count's value. Its offset is covered by the
    /// older offset the pending entry holds, so the caller may mark it done.
    Merged,
    /// The change's sequence is not above the mailbox's newest known sequence: dropped so a
    /// badge never goes backwards. The caller may mark its offset done.
    Stale {
        /// The sequence the change had to exceed.
        fence: u64,
    },
}

/// A count leaving the coalescer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flush {
    /// A new count to publish; once it is acknowledged, `offset` is done.
    Emit(Emission),
    /// The pending count equals the last emitted one, so nothing is published; `offset` is
    /// done at once.
    Unchanged {
        /// Input partition.
        partition: i32,
        /// Input offset the pending entry held.
        offset: i64,
    },
}

/// A coalesced count to publish to `unread-counts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emission {
    /// Input partition (equal to the output partition: the topics are co-partitioned).
    pub partition: i32,
    /// Oldest input offset folded into this count.
    pub offset: i64,
    /// Validated tenant id.
    pub tenant: String,
    /// Mailbox address.
    pub mailbox: String,
    /// Absolute unread count.
    pub count: u32,
    /// Sequence of the newest folded change.
    pub sequence: u64,
    /// Number of changes folded.
    pub changes_coalesced: u32,
    /// Ingress time of the oldest folded change, Unix milliseconds.
    pub first_ingress_time_ms: i64,
    /// Ingress time of the newest folded change, Unix milliseconds.
    pub last_ingress_time_ms: i64,
    /// Event id of the newest folded change.
    pub last_event_id: String,
}

impl Emission {
    /// The Kafka key of this count: `{tenant}/{mailbox}`.
    pub fn key(&self) -> String {
        mailbox_key(&self.tenant, &self.mailbox)
    }
}

pub use pushrelay_proto::keys::mailbox_key;

/// Counters of what the coalescer did, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoalesceStats {
    /// Mailboxes currently tracked (pending or fenced).
    pub tracked: usize,
    /// Mailboxes with a pending count.
    pub pending: usize,
}

#[derive(Debug)]
struct Pending {
    count: u32,
    sequence: u64,
    first_seen: Instant,
    last_seen: Instant,
    changes: u32,
    first_ingress_time_ms: i64,
    last_ingress_time_ms: i64,
    offset: i64,
    event_id: String,
}

#[derive(Debug)]
struct MailboxState {
    /// Byte length of the tenant prefix of the key.
    tenant_len: usize,
    /// Sequence and count of the last emitted (or restored) count.
    fence: Option<(u64, u32)>,
    pending: Option<Box<Pending>>,
    last_touched: Instant,
}

impl MailboxState {
    fn deadline(&self, config: &CoalesceConfig) -> Option<Instant> {
        self.pending.as_ref().map(|p| {
            let quiet = p.last_seen + config.quiet_period;
            let capped = p.first_seen + config.max_delay;
            quiet.min(capped)
        })
    }

    fn newest_sequence(&self) -> Option<u64> {
        let pending = self.pending.as_ref().map(|p| p.sequence);
        let fenced = self.fence.map(|(seq, _)| seq);
        pending.max(fenced)
    }
}

/// The per-mailbox debounce state of one stage instance.
#[derive(Debug)]
pub struct Coalescer {
    config: CoalesceConfig,
    /// Per input partition, per `{tenant}/{mailbox}` key.
    partitions: HashMap<i32, HashMap<Arc<str>, MailboxState>>,
    /// Deadlines of pending entries (min-heap). At most one entry per pending mailbox; an
    /// entry may be early (the deadline moved later) or stale (the mailbox was flushed).
    timers: BinaryHeap<std::cmp::Reverse<(Instant, i32, Arc<str>)>>,
    tracked: usize,
    pending: usize,
}

impl Coalescer {
    /// An empty coalescer.
    pub fn new(config: CoalesceConfig) -> Self {
        Self {
            config,
            partitions: HashMap::new(),
            timers: BinaryHeap::new(),
            tracked: 0,
            pending: 0,
        }
    }

    /// Current sizes, for metrics.
    pub fn stats(&self) -> CoalesceStats {
        CoalesceStats {
            tracked: self.tracked,
            pending: self.pending,
        }
    }

    /// Installs the fence of a mailbox from the changelog (the last count emitted for it,
    /// possibly by another instance before a crash or rebalance). Only raises a fence.
    pub fn restore(
        &mut self,
        partition: i32,
        tenant: &str,
        mailbox: &str,
        sequence: u64,
        count: u32,
        now: Instant,
    ) {
        let state = self.state_mut(partition, tenant, mailbox, now);
        if state.fence.is_none_or(|(seq, _)| seq < sequence) {
            state.fence = Some((sequence, count));
        }
    }

    /// Offers an accepted change.
    pub fn offer(&mut self, change: Change, now: Instant) -> Offer {
        let config = self.config.clone();
        let partition = change.partition;
        let states = self.partitions.entry(partition).or_default();
        let (key, state, is_new) = mailbox_entry(states, &change.tenant, &change.mailbox, now);
        if is_new {
            self.tracked += 1;
        }
        state.last_touched = now;
        if let Some(newest) = state.newest_sequence()
            && change.sequence <= newest
        {
            return Offer::Stale { fence: newest };
        }
        match &mut state.pending {
            Some(pending) => {
                pending.count = change.count;
                pending.sequence = change.sequence;
                pending.last_seen = now;
                pending.changes = pending.changes.saturating_add(1);
                pending.first_ingress_time_ms =
                    pending.first_ingress_time_ms.min(change.ingress_time_ms);
                pending.last_ingress_time_ms =
                    pending.last_ingress_time_ms.max(change.ingress_time_ms);
                pending.event_id = change.event_id;
                Offer::Merged
            }
            None => {
                state.pending = Some(Box::new(Pending {
                    count: change.count,
                    sequence: change.sequence,
                    first_seen: now,
                    last_seen: now,
                    changes: 1,
                    first_ingress_time_ms: change.ingress_time_ms,
                    last_ingress_time_ms: change.ingress_time_ms,
                    offset: change.offset,
                    event_id: change.event_id,
                }));
                let deadline = state.deadline(&config).unwrap_or(now);
                self.pending += 1;
                self.timers
                    .push(std::cmp::Reverse((deadline, partition, key)));
                Offer::Pending
            }
        }
    }

    /// When the earliest pending count may be due (possibly a little early), if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.peek().map(|std::cmp::Reverse((at, _, _))| *at)
    }

    /// Flushes every pending count that is due at `now`.
    pub fn poll_due(&mut self, now: Instant) -> Vec<Flush> {
        let mut out = Vec::new();
        while let Some(std::cmp::Reverse((at, _, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(std::cmp::Reverse((_, partition, key))) = self.timers.pop() else {
                break;
            };
            let Some(state) = self
                .partitions
                .get_mut(&partition)
                .and_then(|states| states.get_mut(&key))
            else {
                continue;
            };
            match state.deadline(&self.config) {
                None => {}
                Some(deadline) if deadline > now => {
                    self.timers
                        .push(std::cmp::Reverse((deadline, partition, key)));
                }
                Some(_) => {
                    if let Some(flush) = flush_state(partition, &key, state) {
                        self.pending -= 1;
                        out.push(flush);
                    }
                }
            }
        }
        out
    }

    /// Flushes every pending count of `partition` now and forgets the partition (it was
    /// revoked; its next owner restores the fence from the changelog).
    pub fn revoke(&mut self, partition: i32) -> Vec<Flush> {
        let Some(mut states) = self.partitions.remove(&partition) else {
            return Vec::new();
        };
        self.tracked -= states.len();
        let mut out = Vec::new();
        for (key, state) in &mut states {
            if let Some(flush) = flush_state(partition, key, state) {
                self.pending -= 1;
                out.push(flush);
            }
        }
        out
    }

    /// Flushes every pending count of every partition now (shutdown).
    pub fn flush_all(&mut self) -> Vec<Flush> {
        let mut out = Vec::new();
        for (partition, states) in &mut self.partitions {
            for (key, state) in states.iter_mut() {
                if let Some(flush) = flush_state(*partition, key, state) {
                    self.pending -= 1;
                    out.push(flush);
                }
            }
        }
        self.timers.clear();
        out
    }

    /// Forgets mailboxes with nothing pending that were idle for `idle_ttl`, then, while
    /// more than `max_tracked` remain, the least recently touched ones with nothing
    /// pending. Returns how many were evicted.
    pub fn evict_idle(&mut self, now: Instant) -> usize {
        let ttl = self.config.idle_ttl;
        let mut evicted = 0;
        for states in self.partitions.values_mut() {
            let before = states.len();
            states.retain(|_, state| {
                state.pending.is_some() || now.saturating_duration_since(state.last_touched) < ttl
            });
            evicted += before - states.len();
        }
        self.tracked -= evicted;
        if self.tracked > self.config.max_tracked {
            let mut idle: Vec<(Instant, i32, Arc<str>)> = self
                .partitions
                .iter()
                .flat_map(|(partition, states)| {
                    states
                        .iter()
                        .filter(|(_, state)| state.pending.is_none())
                        .map(|(key, state)| (state.last_touched, *partition, Arc::clone(key)))
                })
                .collect();
            idle.sort_unstable_by_key(|(touched, _, _)| *touched);
            let excess = self.tracked - self.config.max_tracked;
            for (_, partition, key) in idle.into_iter().take(excess) {
                if let Some(states) = self.partitions.get_mut(&partition)
                    && states.remove(&key).is_some()
                {
                    self.tracked -= 1;
                    evicted += 1;
                }
            }
        }
        self.partitions.retain(|_, states| !states.is_empty());
        evicted
    }

    /// The fence (last emitted sequence and count) of a mailbox, if tracked.
    pub fn fence(&self, partition: i32, tenant: &str, mailbox: &str) -> Option<(u64, u32)> {
        let key = mailbox_key(tenant, mailbox);
        self.partitions.get(&partition)?.get(key.as_str())?.fence
    }

    fn state_mut(
        &mut self,
        partition: i32,
        tenant: &str,
        mailbox: &str,
        now: Instant,
    ) -> &mut MailboxState {
        let states = self.partitions.entry(partition).or_default();
        let (_, state, is_new) = mailbox_entry(states, tenant, mailbox, now);
        if is_new {
            self.tracked += 1;
        }
        state
    }
}

/// The state of a mailbox, created when missing; also returns the shared key and whether
/// the state is new.
fn mailbox_entry<'a>(
    states: &'a mut HashMap<Arc<str>, MailboxState>,
    tenant: &str,
    mailbox: &str,
    now: Instant,
) -> (Arc<str>, &'a mut MailboxState, bool) {
    let key = mailbox_key(tenant, mailbox);
    let existing = states
        .get_key_value(key.as_str())
        .map(|(k, _)| Arc::clone(k));
    let is_new = existing.is_none();
    let key = existing.unwrap_or_else(|| Arc::from(key));
    let state = states
        .entry(Arc::clone(&key))
        .or_insert_with(|| MailboxState {
            tenant_len: tenant.len(),
            fence: None,
            pending: None,
            last_touched: now,
        });
    (key, state, is_new)
}

fn flush_state(partition: i32, key: &str, state: &mut MailboxState) -> Option<Flush> {
    let pending = state.pending.take()?;
    let unchanged = state.fence.is_some_and(|(_, count)| count == pending.count);
    state.fence = Some((pending.sequence, pending.count));
    if unchanged {
        return Some(Flush::Unchanged {
            partition,
            offset: pending.offset,
        });
    }
    let (tenant, mailbox) = key.split_at(state.tenant_len);
    Some(Flush::Emit(Emission {
        partition,
        offset: pending.offset,
        tenant: tenant.to_owned(),
        mailbox: mailbox[1..].to_owned(),
        count: pending.count,
        sequence: pending.sequence,
        changes_coalesced: pending.changes,
        first_ingress_time_ms: pending.first_ingress_time_ms,
        last_ingress_time_ms: pending.last_ingress_time_ms,
        last_event_id: pending.event_id,
    }))
}

#[cfg(test)]
mod tests;
