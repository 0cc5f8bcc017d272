//! Which push to send when, without I/O. The stage feeds it pushes, provider answers and
//! the time, and carries out the [`Action`]s it returns.
//!
//! - One push at a time per device and mailbox: a newer badge replaces an older one that
//!   is queued or waiting to retry, and waits for one being sent. So a device never gets an
//!   older badge after a newer one, whatever the retries.
//! - At most `max_sending` sends in flight; further pushes queue in arrival order.
//! - Retries wait on timers (exponential backoff, full jitter, `Retry-After` as a floor)
//!   while other devices' pushes go on; after the budget the push is `Exhausted`.
//! - A push past its expiry is not sent (`Expired`).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Duration;

use pushrelay_proto::v1::PushRequest;
use tokio::time::Instant;

use crate::outcome::{Answer, Outcome};
use crate::retry::RetryPolicy;

/// A push with where it came from.
#[derive(Debug, Clone)]
pub struct Job {
    /// The push.
    pub push: Arc<PushRequest>,
    /// Input partition.
    pub partition: i32,
    /// Input offsets settled by this job's outcome (several after a catch-up fold).
    pub offsets: Vec<i64>,
}

/// How a push ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The provider accepted it.
    Delivered,
    /// The provider refused it for good (bad token, payload too large, forbidden).
    Dropped,
    /// The device is gone; its subscription is to be removed.
    Unregistered,
    /// A newer badge for the same device and mailbox replaced it before it was delivered.
    Superseded,
    /// It expired before it could be sent.
    Expired,
    /// The retry budget ran out.
    Exhausted,
}

impl Verdict {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Dropped => "dropped",
            Self::Unregistered => "unregistered",
            Self::Superseded => "superseded",
            Self::Expired => "expired",
            Self::Exhausted => "exhausted",
        }
    }
}

/// A push's final outcome.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The push.
    pub job: Job,
    /// How it ended.
    pub verdict: Verdict,
    /// Send attempts made.
    pub attempts: u32,
    /// The last provider HTTP status (0: none).
    pub status: u16,
    /// The last provider reason.
    pub reason: String,
}

/// What the stage is to do.
#[derive(Debug, Clone)]
pub enum Action {
    /// Send `push` once and report the answer with [`Scheduler::answered`]`(key, id, ..)`.
    Send {
        /// Delivery key (device and mailbox).
        key: Arc<str>,
        /// Attempt id.
        id: u64,
        /// The push.
        push: Arc<PushRequest>,
    },
    /// Record the outcome (receipt, and what the verdict implies).
    Finish(Finished),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Queued,
    Sending(u64),
    Waiting(Instant),
}

#[derive(Debug)]
struct Entry {
    job: Job,
    attempts: u32,
    status: u16,
    reason: String,
    state: State,
    /// A newer push for the same key, waiting for the current send to end.
    next: Option<Job>,
}

impl Entry {
    fn new(job: Job) -> Self {
        Self {
            job,
            attempts: 0,
            status: 0,
            reason: String::new(),
            state: State::Queued,
            next: None,
        }
    }

    fn finished(self, verdict: Verdict) -> (Finished, Option<Job>) {
        let finished = Finished {
            job: self.job,
            verdict,
            attempts: self.attempts,
            status: self.status,
            reason: self.reason,
        };
        (finished, self.next)
    }
}

/// The delivery key of a push: device and mailbox.
pub fn delivery_key(push: &PushRequest) -> Arc<str> {
    Arc::from(format!(
        "{}\n{}\n{}/{}",
        push.platform, push.device_token, push.tenant, push.mailbox
    ))
}

fn superseded(job: Job) -> Action {
    Action::Finish(Finished {
        job,
        verdict: Verdict::Superseded,
        attempts: 0,
        status: 0,
        reason: "a newer badge replaced it".to_owned(),
    })
}

/// The scheduler. See the module documentation.
#[derive(Debug)]
pub struct Scheduler {
    policy: RetryPolicy,
    max_sending: usize,
    entries: HashMap<Arc<str>, Entry>,
    ready: VecDeque<Arc<str>>,
    timers: BinaryHeap<Reverse<(Instant, Arc<str>)>>,
    sending: usize,
    next_id: u64,
    closing: HashSet<i32>,
    /// Randomly keyed hasher: the jitter source.
    jitter: RandomState,
    jitter_draws: u64,
}

impl Scheduler {
    /// A scheduler with at most `max_sending` sends in flight.
    pub fn new(policy: RetryPolicy, max_sending: usize) -> Self {
        Self {
            policy,
            max_sending: max_sending.max(1),
            entries: HashMap::new(),
            ready: VecDeque::new(),
            timers: BinaryHeap::new(),
            sending: 0,
            next_id: 0,
            closing: HashSet::new(),
            jitter: RandomState::new(),
            jitter_draws: 0,
        }
    }

    /// Devices and mailboxes with a push in progress (each may hold one newer push besides).
    pub fn pending(&self) -> usize {
        self.entries.len()
    }

    /// Sends in flight.
    pub fn sending(&self) -> usize {
        self.sending
    }

    /// Sends in flight for `partitions`.
    pub fn sending_in(&self, partitions: &[i32]) -> usize {
        self.entries
            .values()
            .filter(|e| {
                matches!(e.state, State::Sending(_)) && partitions.contains(&e.job.partition)
            })
            .count()
    }

    /// When [`Scheduler::due`] next has work (may be early, never late).
    pub fn next_timer(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// A new push.
    pub fn submit(&mut self, job: Job, now_ms: i64, out: &mut Vec<Action>) {
        let key = delivery_key(&job.push);
        match self.entries.get_mut(&key) {
            None => {
                self.entries.insert(key.clone(), Entry::new(job));
                self.ready.push_back(key);
            }
            Some(entry) => {
                let newest = entry.next.as_ref().unwrap_or(&entry.job).push.sequence;
                if job.push.sequence < newest {
                    out.push(superseded(job));
                    return;
                }
                match entry.state {
                    State::Sending(_) => {
                        if let Some(old) = entry.next.replace(job) {
                            out.push(superseded(old));
                        }
                    }
                    State::Queued | State::Waiting(_) => {
                        let replaced = std::mem::replace(entry, Entry::new(job));
                        out.push(Action::Finish(replaced.finished(Verdict::Superseded).0));
                        // Queued keys are in `ready` already; a waiting one is requeued
                        // (its timer is ignored once the state changed).
                        self.ready.push_back(key);
                    }
                }
            }
        }
        self.fill(now_ms, out);
    }

    /// The answer to attempt `id` of `key`.
    pub fn answered(
        &mut self,
        key: &Arc<str>,
        id: u64,
        answer: Answer,
        (now, now_ms): (Instant, i64),
        out: &mut Vec<Action>,
    ) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        if entry.state != State::Sending(id) {
            return;
        }
        self.sending -= 1;
        entry.attempts += 1;
        entry.status = answer.status;
        let verdict = match answer.outcome {
            Outcome::Delivered => Some(Verdict::Delivered),
            Outcome::Final { reason } => {
                entry.reason = reason;
                Some(Verdict::Dropped)
            }
            Outcome::Unregistered { reason } => {
                entry.reason = reason;
                Some(Verdict::Unregistered)
            }
            Outcome::Retry { reason, after } => {
                entry.reason = reason;
                if self.closing.contains(&entry.job.partition) {
                    // Its partition is being handed over: the next owner sends it again.
                    self.entries.remove(key);
                    None
                } else if entry.next.is_some() {
                    Some(Verdict::Superseded)
                } else {
                    self.jitter_draws += 1;
                    let random = self.jitter.hash_one(self.jitter_draws);
                    match self.policy.next_delay(entry.attempts, after, random) {
                        None => Some(Verdict::Exhausted),
                        Some(delay) if expires_before(&entry.job, now_ms, delay) => {
                            Some(Verdict::Expired)
                        }
                        // A `Retry-After` beyond what a clock can hold: never retried.
                        Some(delay) => match now.checked_add(delay) {
                            None => Some(Verdict::Exhausted),
                            Some(at) => {
                                entry.state = State::Waiting(at);
                                self.timers.push(Reverse((at, key.clone())));
                                None
                            }
                        },
                    }
                }
            }
        };
        if let Some(verdict) = verdict {
            self.conclude(key, verdict, out);
        }
        self.fill(now_ms, out);
    }

    /// Starts the retries whose time has come.
    pub fn due(&mut self, now: Instant, now_ms: i64, out: &mut Vec<Action>) {
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, key))) = self.timers.pop() else {
                break;
            };
            if let Some(entry) = self.entries.get_mut(&key)
                && entry.state == State::Waiting(at)
            {
                entry.state = State::Queued;
                self.ready.push_back(key);
            }
        }
        self.fill(now_ms, out);
    }

    /// `partitions` are being revoked: their queued and waiting pushes are dropped without
    /// an outcome (their offsets stay unsettled, so the next owner redoes them), and no
    /// new attempt starts for them. Sends in flight finish. Returns how many were dropped.
    pub fn close(&mut self, partitions: &[i32]) -> usize {
        self.closing.extend(partitions.iter().copied());
        let before = self.entries.len();
        let mut dropped = 0;
        self.entries.retain(|_, entry| {
            if !partitions.contains(&entry.job.partition) {
                return true;
            }
            if matches!(entry.state, State::Sending(_)) {
                dropped += usize::from(entry.next.take().is_some());
                true
            } else {
                false
            }
        });
        dropped + before - self.entries.len()
    }

    /// Forgets everything about `partitions` (after [`Scheduler::close`] and the drain).
    pub fn forget(&mut self, partitions: &[i32]) {
        let mut sending = 0;
        self.entries.retain(|_, entry| {
            let keep = !partitions.contains(&entry.job.partition);
            if !keep && matches!(entry.state, State::Sending(_)) {
                sending += 1;
            }
            keep
        });
        self.sending -= sending;
        for partition in partitions {
            self.closing.remove(partition);
        }
    }

    /// Ends the current push of `key`; its newer push, if any, takes its place.
    fn conclude(&mut self, key: &Arc<str>, verdict: Verdict, out: &mut Vec<Action>) {
        let Some(entry) = self.entries.remove(key) else {
            return;
        };
        let (finished, next) = entry.finished(verdict);
        out.push(Action::Finish(finished));
        if let Some(next) = next {
            self.entries.insert(key.clone(), Entry::new(next));
            self.ready.push_back(key.clone());
        }
    }

    /// Starts queued pushes while sends are below the limit.
    fn fill(&mut self, now_ms: i64, out: &mut Vec<Action>) {
        while self.sending < self.max_sending {
            let Some(key) = self.ready.pop_front() else {
                break;
            };
            let Some(entry) = self.entries.get_mut(&key) else {
                continue;
            };
            if entry.state != State::Queued {
                continue;
            }
            if self.closing.contains(&entry.job.partition) {
                self.entries.remove(&key);
                continue;
            }
            if expires_before(&entry.job, now_ms, Duration::ZERO) {
                entry.reason = "expired before it could be sent".to_owned();
                self.conclude(&key, Verdict::Expired, out);
                continue;
            }
            self.next_id += 1;
            entry.state = State::Sending(self.next_id);
            self.sending += 1;
            out.push(Action::Send {
                key: key.clone(),
                id: self.next_id,
                push: entry.job.push.clone(),
            });
        }
    }
}

/// Whether `job` expires before `now_ms + delay` (pushes without an expiry never do).
fn expires_before(job: &Job, now_ms: i64, delay: Duration) -> bool {
    let expires = job.push.expires_time_ms;
    let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
    expires > 0 && expires <= now_ms.saturating_add(delay_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_MS: i64 = 1_000_000;

    fn job(device: &str, sequence: u64, offset: i64) -> Job {
        Job {
            push: Arc::new(PushRequest {
                tenant: "fabrikam.com".into(),
                mailbox: "a@fabrikam.com".into(),
                platform: 1,
                device_token: device.into(),
                sequence,
                badge: sequence as u32,
                expires_time_ms: NOW_MS + 3_600_000,
                ..PushRequest::default()
            }),
            partition: 0,
            offsets: vec![offset],
        }
    }

    fn sends(actions: &[Action]) -> Vec<(Arc<str>, u64, u32)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send { key, id, push } => Some((key.clone(), *id, push.badge)),
                Action::Finish(_) => None,
            })
            .collect()
    }

    fn finishes(actions: &[Action]) -> Vec<(u32, Verdict)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Finish(f) => Some((f.job.push.badge, f.verdict)),
                Action::Send { .. } => None,
            })
            .collect()
    }

    fn answer(status: u16, outcome: Outcome) -> Answer {
        Answer { status, outcome }
    }

    fn retry(after: Option<Duration>) -> Answer {
        answer(
            503,
            Outcome::Retry {
                reason: "503".into(),
                after,
            },
        )
    }

    #[test]
    fn sends_are_bounded_and_queue_in_order() {
        let mut s = Scheduler::new(RetryPolicy::default(), 2);
        let mut out = Vec::new();
        for i in 0..4 {
            s.submit(job(&format!("d{i}"), 1, i), NOW_MS, &mut out);
        }
        let started = sends(&out);
        assert_eq!(started.len(), 2);
        assert_eq!(s.sending(), 2);
        out.clear();
        let (key, id, _) = started[0].clone();
        s.answered(
            &key,
            id,
            answer(200, Outcome::Delivered),
            (Instant::now(), NOW_MS),
            &mut out,
        );
        assert_eq!(finishes(&out), vec![(1, Verdict::Delivered)]);
        assert_eq!(sends(&out).len(), 1, "the next queued push starts");
        assert_eq!(s.sending(), 2);
    }

    #[test]
    fn a_newer_badge_waits_for_the_send_in_flight_then_goes_out() {
        let mut s = Scheduler::new(RetryPolicy::default(), 10);
        let mut out = Vec::new();
        s.submit(job("d", 1, 0), NOW_MS, &mut out);
        let (key, id, _) = sends(&out)[0].clone();
        out.clear();
        s.submit(job("d", 2, 1), NOW_MS, &mut out);
        s.submit(job("d", 3, 2), NOW_MS, &mut out);
        assert!(
            sends(&out).is_empty(),
            "never two sends for one device and mailbox"
        );
        assert_eq!(finishes(&out), vec![(2, Verdict::Superseded)]);
        out.clear();
        s.answered(&key, id, retry(None), (Instant::now(), NOW_MS), &mut out);
        // The failed older badge is not retried: the newer one replaces it.
        assert_eq!(finishes(&out), vec![(1, Verdict::Superseded)]);
        assert_eq!(sends(&out).iter().map(|s| s.2).collect::<Vec<_>>(), vec![3]);
    }

    #[test]
    fn an_older_badge_never_follows_a_newer_one() {
        let mut s = Scheduler::new(RetryPolicy::default(), 10);
        let mut out = Vec::new();
        s.submit(job("d", 5, 0), NOW_MS, &mut out);
        out.clear();
        s.submit(job("d", 4, 1), NOW_MS, &mut out);
        assert_eq!(finishes(&out), vec![(4, Verdict::Superseded)]);
        assert!(sends(&out).is_empty());
    }

    #[test]
    fn retries_wait_their_delay_without_holding_a_send_slot() {
        let policy = RetryPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
            max_attempts: 3,
        };
        let mut s = Scheduler::new(policy, 1);
        let mut out = Vec::new();
        s.submit(job("slow", 1, 0), NOW_MS, &mut out);
        s.submit(job("other", 1, 1), NOW_MS, &mut out);
        let (key, id, _) = sends(&out)[0].clone();
        out.clear();
        let t0 = Instant::now();
        s.answered(
            &key,
            id,
            retry(Some(Duration::from_secs(2))),
            (t0, NOW_MS),
            &mut out,
        );
        // The other device's push takes the free slot while the first waits.
        assert_eq!(sends(&out).len(), 1);
        assert_eq!(s.next_timer(), Some(t0 + Duration::from_secs(2)));
        let (other_key, other_id, _) = sends(&out)[0].clone();
        out.clear();
        s.answered(
            &other_key,
            other_id,
            answer(200, Outcome::Delivered),
            (t0, NOW_MS),
            &mut out,
        );
        s.due(t0 + Duration::from_millis(1999), NOW_MS, &mut out);
        assert!(sends(&out).is_empty(), "Retry-After is honoured");
        out.clear();
        s.due(t0 + Duration::from_secs(2), NOW_MS, &mut out);
        let (key, id, _) = sends(&out)[0].clone();
        out.clear();
        s.answered(&key, id, retry(None), (t0, NOW_MS), &mut out);
        s.due(t0 + Duration::from_secs(10), NOW_MS, &mut out);
        let (key, id, _) = sends(&out)[0].clone();
        out.clear();
        s.answered(&key, id, retry(None), (t0, NOW_MS), &mut out);
        match &out[..] {
            [Action::Finish(f)] => {
                assert_eq!(f.verdict, Verdict::Exhausted);
                assert_eq!(f.attempts, 3);
                assert_eq!(f.status, 503);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn final_answers_are_not_retried() {
        let mut s = Scheduler::new(RetryPolicy::default(), 10);
        let mut out = Vec::new();
        s.submit(job("bad", 1, 0), NOW_MS, &mut out);
        s.submit(job("gone", 1, 1), NOW_MS, &mut out);
        let started = sends(&out);
        out.clear();
        let bad = answer(
            400,
            Outcome::Final {
                reason: "400 BadDeviceToken".into(),
            },
        );
        let gone = answer(
            410,
            Outcome::Unregistered {
                reason: "410 Unregistered".into(),
            },
        );
        s.answered(
            &started[0].0,
            started[0].1,
            bad,
            (Instant::now(), NOW_MS),
            &mut out,
        );
        s.answered(
            &started[1].0,
            started[1].1,
            gone,
            (Instant::now(), NOW_MS),
            &mut out,
        );
        assert_eq!(
            finishes(&out),
            vec![(1, Verdict::Dropped), (1, Verdict::Unregistered)]
        );
        assert!(sends(&out).is_empty());
        assert_eq!(s.next_timer(), None);
    }

    #[test]
    fn expired_pushes_are_not_sent_and_retries_stop_at_expiry() {
        let mut s = Scheduler::new(RetryPolicy::default(), 10);
        let mut out = Vec::new();
        let mut old = job("d", 1, 0);
        Arc::make_mut(&mut old.push).expires_time_ms = NOW_MS - 1;
        s.submit(old, NOW_MS, &mut out);
        assert_eq!(finishes(&out), vec![(1, Verdict::Expired)]);
        out.clear();
        let mut short = job("e", 1, 1);
        Arc::make_mut(&mut short.push).expires_time_ms = NOW_MS + 1_000;
        s.submit(short, NOW_MS, &mut out);
        let (key, id, _) = sends(&out)[0].clone();
        out.clear();
        s.answered(
            &key,
            id,
            retry(Some(Duration::from_secs(60))),
            (Instant::now(), NOW_MS),
            &mut out,
        );
        assert_eq!(finishes(&out), vec![(1, Verdict::Expired)]);
    }

    /// Found by the `provider_answers` fuzz target: a huge `Retry-After` wrapped when
    /// converted to milliseconds, so a push with an expiry waited (for billions of years)
    /// instead of expiring, and a larger one overflowed the clock (a panic).
    #[test]
    fn an_absurd_retry_after_expires_or_exhausts_the_push() {
        let huge = Duration::from_secs(4_808_176_044_395_724_801);
        let mut s = Scheduler::new(RetryPolicy::default(), 1);
        let mut out = Vec::new();
        s.submit(job("d", 1, 0), NOW_MS, &mut out);
        let (key, id, _) = sends(&out)[0].clone();
        out.clear();
        s.answered(
            &key,
            id,
            retry(Some(huge)),
            (Instant::now(), NOW_MS),
            &mut out,
        );
        assert_eq!(finishes(&out), vec![(1, Verdict::Expired)]);

        let mut forever = job("d", 1, 0);
        Arc::make_mut(&mut forever.push).expires_time_ms = 0;
        out.clear();
        s.submit(forever, NOW_MS, &mut out);
        let (key, id, _) = sends(&out)[0].clone();
        out.clear();
        let max = Duration::from_secs(u64::MAX);
        s.answered(
            &key,
            id,
            retry(Some(max)),
            (Instant::now(), NOW_MS),
            &mut out,
        );
        assert_eq!(finishes(&out), vec![(1, Verdict::Exhausted)]);
        assert_eq!((s.pending(), s.next_timer()), (0, None));
    }

    #[test]
    fn closing_a_partition_drops_its_waiting_pushes_and_lets_sends_finish() {
        let mut s = Scheduler::new(RetryPolicy::default(), 1);
        let mut out = Vec::new();
        s.submit(job("a", 1, 0), NOW_MS, &mut out);
        s.submit(job("b", 1, 1), NOW_MS, &mut out);
        let (key, id, _) = sends(&out)[0].clone();
        out.clear();
        assert_eq!(s.close(&[0]), 1);
        assert_eq!(s.sending_in(&[0]), 1);
        s.answered(
            &key,
            id,
            answer(200, Outcome::Delivered),
            (Instant::now(), NOW_MS),
            &mut out,
        );
        assert_eq!(finishes(&out), vec![(1, Verdict::Delivered)]);
        assert!(
            sends(&out).is_empty(),
            "nothing new starts on a closing partition"
        );
        s.forget(&[0]);
        assert_eq!((s.pending(), s.sending()), (0, 0));
    }
}
