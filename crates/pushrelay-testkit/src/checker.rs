//! The checker: from what the ingress acknowledged and what came out of the relay, it
//! computes what a user would call loss, wrong badges, regressions, duplicates and leaks.
//!
//! Feed it the ground truth ([`Checker::acknowledged`]: every change the ingress answered
//! 202 for), who listens to what ([`Checker::subscribe`]: a destination, a device or a
//! consumer of `unread-counts`, and the mailbox it follows), and every output in the order
//! the destination received it ([`Checker::observed`]). [`Checker::report`] then says:
//!
//! - **lost**: acknowledged changes that some subscriber of their mailbox never saw
//!   covered, that is, it received nothing as new or newer (coalescing may skip a change,
//!   never the state after it);
//! - **wrong final**: destinations whose last received badge is not their mailbox's last
//!   acknowledged count;
//! - **backwards**: outputs older than one the destination had already received;
//! - **duplicates**: the same change received again by the same destination (allowed, at
//!   least once, but counted);
//! - **misrouted**: outputs for a mailbox the destination did not subscribe to, and among
//!   them **cross-tenant** ones, for another tenant's mailbox;
//! - **phantom**: outputs no acknowledged change explains (a sequence never acknowledged,
//!   or a count that differs from the acknowledged one).
//!
//! It does no I/O: tests collect the facts, the checker judges them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

/// A mailbox: (tenant, mailbox address).
type MailboxId = (String, String);

/// What came out, in the order one destination received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// Tenant the output names.
    pub tenant: String,
    /// Mailbox the output names.
    pub mailbox: String,
    /// The change's sequence.
    pub sequence: u64,
    /// The badge it carried.
    pub count: u32,
}

/// The verdict. [`Report::is_clean`] is what every reliability test asserts; the rest are
/// figures for the notes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Changes the ingress acknowledged.
    pub acknowledged: usize,
    /// Mailboxes they touched.
    pub mailboxes: usize,
    /// Destinations subscribed.
    pub destinations: usize,
    /// Outputs received, all destinations together.
    pub outputs: usize,
    /// Acknowledged changes some subscriber never saw covered.
    pub lost: usize,
    /// Destinations whose last badge is not their mailbox's last acknowledged count.
    pub wrong_final: usize,
    /// Outputs older than one already received by the same destination.
    pub backwards: usize,
    /// Outputs received again by the same destination.
    pub duplicates: usize,
    /// Outputs for a mailbox the destination did not subscribe to.
    pub misrouted: usize,
    /// Misrouted outputs naming another tenant's mailbox.
    pub cross_tenant: usize,
    /// Outputs no acknowledged change explains.
    pub phantom: usize,
    /// Up to ten examples of what went wrong, for the failure message.
    pub examples: Vec<String>,
}

impl Report {
    /// Nothing lost, every final badge right, nothing backwards, misrouted or invented.
    /// Duplicates are allowed (delivery is at least once).
    pub fn is_clean(&self) -> bool {
        self.lost == 0
            && self.wrong_final == 0
            && self.backwards == 0
            && self.misrouted == 0
            && self.phantom == 0
    }

    /// Every destination holds its mailbox's last count (the relay has caught up), whatever
    /// happened on the way.
    pub fn settled(&self) -> bool {
        self.lost == 0 && self.wrong_final == 0
    }

    fn example(&mut self, text: impl FnOnce() -> String) {
        if self.examples.len() < 10 {
            self.examples.push(text());
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} changes acknowledged for {} mailboxes, {} destinations, {} outputs: \
             lost {}, wrong final {}, backwards {}, duplicates {}, misrouted {} \
             (cross-tenant {}), phantom {}",
            self.acknowledged,
            self.mailboxes,
            self.destinations,
            self.outputs,
            self.lost,
            self.wrong_final,
            self.backwards,
            self.duplicates,
            self.misrouted,
            self.cross_tenant,
            self.phantom,
        )?;
        for example in &self.examples {
            write!(f, "\n  {example}")?;
        }
        Ok(())
    }
}

/// Collects ground truth and outputs; see the module documentation.
#[derive(Debug, Default, Clone)]
pub struct Checker {
    /// Per mailbox: sequence → count, as acknowledged.
    acknowledged: HashMap<MailboxId, BTreeMap<u64, u32>>,
    /// Per destination: the mailbox it follows.
    subscriptions: BTreeMap<String, MailboxId>,
    /// Per destination: what it received, in order.
    observed: HashMap<String, Vec<Observation>>,
}

impl Checker {
    /// An empty checker.
    pub fn new() -> Self {
        Self::default()
    }

    /// The ingress answered 202 for this change. A change acknowledged twice (a retried
    /// request) counts once.
    pub fn acknowledged(&mut self, tenant: &str, mailbox: &str, sequence: u64, count: u32) {
        self.acknowledged
            .entry((tenant.to_owned(), mailbox.to_owned()))
            .or_default()
            .insert(sequence, count);
    }

    /// `destination` (a device token, or any name for a consumer) follows this mailbox.
    pub fn subscribe(&mut self, destination: &str, tenant: &str, mailbox: &str) {
        self.subscriptions.insert(
            destination.to_owned(),
            (tenant.to_owned(), mailbox.to_owned()),
        );
    }

    /// `destination` received `output`; call in the order it was received.
    pub fn observed(&mut self, destination: &str, output: Observation) {
        self.observed
            .entry(destination.to_owned())
            .or_default()
            .push(output);
    }

    /// Forgets every output (to judge a fresh snapshot of them).
    pub fn clear_observed(&mut self) {
        self.observed.clear();
    }

    /// The verdict on everything fed so far.
    pub fn report(&self) -> Report {
        let mut report = Report {
            acknowledged: self.acknowledged.values().map(BTreeMap::len).sum(),
            mailboxes: self.acknowledged.len(),
            destinations: self.subscriptions.len(),
            outputs: self.observed.values().map(Vec::len).sum(),
            ..Report::default()
        };
        let no_outputs = Vec::new();
        for (destination, followed) in &self.subscriptions {
            let outputs = self.observed.get(destination).unwrap_or(&no_outputs);
            let truth = self.acknowledged.get(followed);
            let mut newest: Option<u64> = None;
            let mut seen = HashSet::new();
            let mut last: Option<&Observation> = None;
            for output in outputs {
                if (&output.tenant, &output.mailbox) != (&followed.0, &followed.1) {
                    report.misrouted += 1;
                    if output.tenant != followed.0 {
                        report.cross_tenant += 1;
                    }
                    report.example(|| {
                        format!(
                            "{destination} (follows {}/{}) received {}/{} #{}",
                            followed.0, followed.1, output.tenant, output.mailbox, output.sequence
                        )
                    });
                    continue;
                }
                if truth.and_then(|t| t.get(&output.sequence)) != Some(&output.count) {
                    report.phantom += 1;
                    report.example(|| {
                        format!(
                            "{destination} received #{} with badge {}, which was never acknowledged",
                            output.sequence, output.count
                        )
                    });
                }
                if !seen.insert(output.sequence) {
                    report.duplicates += 1;
                }
                match newest {
                    Some(n) if output.sequence < n => {
                        report.backwards += 1;
                        report.example(|| {
                            format!("{destination} received #{} after #{n}", output.sequence)
                        });
                    }
                    _ => newest = Some(output.sequence),
                }
                last = Some(output);
            }
            let Some(truth) = truth else { continue };
            let covered = newest.unwrap_or(0);
            let lost = truth
                .keys()
                .filter(|&&s| newest.is_none() || s > covered)
                .count();
            if lost > 0 {
                report.lost += lost;
                report.example(|| {
                    format!(
                        "{destination} saw nothing as new as #{} ({lost} acknowledged changes not covered; newest seen {newest:?})",
                        truth.keys().next_back().copied().unwrap_or(0)
                    )
                });
            }
            let final_truth = truth.iter().next_back();
            let final_seen = last.map(|o| (&o.sequence, &o.count));
            if final_truth.is_some() && final_truth != final_seen {
                report.wrong_final += 1;
                report.example(|| {
                    format!(
                        "{destination} ends on {final_seen:?}, the mailbox on {final_truth:?} (sequence, badge)"
                    )
                });
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(mailbox: &str, sequence: u64) -> Observation {
        Observation {
            tenant: "fabrikam.com".into(),
            mailbox: mailbox.into(),
            sequence,
            count: sequence as u32 * 10,
        }
    }

    /// Alice's mailbox got changes 1..=3 (badge 10, 20, 30); two devices follow it.
    fn checker() -> Checker {
        let mut c = Checker::new();
        for s in 1..=3 {
            c.acknowledged("fabrikam.com", "alice", s, s as u32 * 10);
        }
        c.subscribe("phone", "fabrikam.com", "alice");
        c.subscribe("tablet", "fabrikam.com", "alice");
        c
    }

    #[test]
    fn coalesced_outputs_that_end_on_the_last_count_are_clean() {
        let mut c = checker();
        c.observed("phone", out("alice", 1));
        c.observed("phone", out("alice", 3));
        c.observed("tablet", out("alice", 3));
        let r = c.report();
        assert!(r.is_clean(), "{r}");
        assert_eq!((r.acknowledged, r.outputs, r.duplicates), (3, 3, 0));
    }

    #[test]
    fn a_device_that_never_got_the_last_count_has_lost_changes() {
        let mut c = checker();
        c.observed("phone", out("alice", 3));
        c.observed("tablet", out("alice", 1));
        let r = c.report();
        assert_eq!((r.lost, r.wrong_final), (2, 1), "{r}");
        assert!(!r.is_clean());
        assert!(!r.settled());
    }

    #[test]
    fn a_device_that_got_nothing_lost_everything() {
        let mut c = checker();
        c.observed("phone", out("alice", 3));
        let r = c.report();
        assert_eq!((r.lost, r.wrong_final), (3, 1), "{r}");
    }

    #[test]
    fn an_older_badge_after_a_newer_one_is_backwards_even_when_the_end_is_right() {
        let mut c = checker();
        c.observed("phone", out("alice", 2));
        c.observed("phone", out("alice", 1));
        c.observed("phone", out("alice", 3));
        c.observed("tablet", out("alice", 3));
        let r = c.report();
        assert_eq!((r.backwards, r.lost, r.wrong_final), (1, 0, 0), "{r}");
        assert!(!r.is_clean());
        assert!(r.settled());
    }

    #[test]
    fn an_older_badge_received_last_is_also_a_wrong_final() {
        let mut c = checker();
        c.observed("phone", out("alice", 3));
        c.observed("phone", out("alice", 2));
        c.observed("tablet", out("alice", 3));
        let r = c.report();
        assert_eq!((r.backwards, r.wrong_final, r.lost), (1, 1, 0), "{r}");
    }

    #[test]
    fn repeats_are_counted_but_allowed() {
        let mut c = checker();
        c.observed("phone", out("alice", 3));
        c.observed("phone", out("alice", 3));
        c.observed("tablet", out("alice", 3));
        let r = c.report();
        assert_eq!(r.duplicates, 1);
        assert!(r.is_clean(), "{r}");
    }

    #[test]
    fn another_mailbox_or_tenant_reaching_a_device_is_misrouted() {
        let mut c = checker();
        c.acknowledged("contoso.com", "alice", 3, 30);
        c.observed("phone", out("alice", 3));
        c.observed("phone", out("bob", 3));
        c.observed(
            "phone",
            Observation {
                tenant: "contoso.com".into(),
                mailbox: "alice".into(),
                sequence: 3,
                count: 30,
            },
        );
        c.observed("tablet", out("alice", 3));
        let r = c.report();
        assert_eq!((r.misrouted, r.cross_tenant), (2, 1), "{r}");
        assert!(!r.is_clean());
    }

    #[test]
    fn a_count_nobody_acknowledged_is_a_phantom() {
        let mut c = checker();
        c.observed("phone", out("alice", 3));
        c.observed(
            "tablet",
            Observation {
                count: 31,
                ..out("alice", 3)
            },
        );
        let r = c.report();
        assert_eq!(r.phantom, 1, "{r}");
        assert!(!r.is_clean());
    }

    #[test]
    fn retried_acknowledgements_count_once() {
        let mut c = checker();
        c.acknowledged("fabrikam.com", "alice", 3, 30);
        assert_eq!(c.report().acknowledged, 3);
    }
}
