//! Checks of what a client is shown: `Record::view` under the run's conflict policy
//! at the reading node's wall clock, so TTL expiry and LWW resolution count. A value
//! expired by any node's clock may have been purged into a tombstone there and
//! spread: not showing it is then no loss (`Facts::expired_for`).

use ringkv_core::{ConflictPolicy, Dot, ReadView, Record, Sibling};

use super::{Facts, Observation, show_body, show_dot};
use crate::sim::Applied;
use crate::workload::Op;

/// The versions a client is shown, with their dots.
fn shown(record: &Record, policy: ConflictPolicy, now_ms: u64) -> Vec<(Dot, &Sibling)> {
    let dot_of = |shown: &Sibling| {
        record
            .siblings()
            .find(|(_, held)| std::ptr::eq(*held, shown))
            .map(|(dot, _)| dot)
    };
    let shown = match record.view(policy, now_ms) {
        ReadView::Absent => Vec::new(),
        ReadView::Value(sibling) => vec![sibling],
        ReadView::Siblings(siblings) => siblings,
    };
    shown
        .into_iter()
        .filter_map(|sibling| dot_of(sibling).map(|dot| (dot, sibling)))
        .collect()
}

/// Whether a newer write hides `write` from a reader of `record`: an applied write
/// superseded it, or under LWW the record holds a version newer by (HLC timestamp,
/// dot), the order reads resolve by. (A newer write applied somewhere but lost is
/// no excuse.)
fn hidden(facts: &Facts, key: usize, write: &Applied, record: &Record) -> bool {
    facts.superseded(key, write.dot)
        || facts.policy == ConflictPolicy::Lww
            && record
                .siblings()
                .any(|(dot, other)| (other.hlc, dot) > (write.sibling.hlc, write.dot))
}

/// Reads show acked values. For a get with `r + w > N` that started after a write
/// was acked with `w` (and for the merged record after heal, against every acked
/// write):
/// * it shows no version that write superseded (a dot in its version);
/// * if the write is a put, it shows its value, unless the value expired by the
///   reading node's clock (or the fastest one: see the module doc), or a newer
///   write hides it: an applied write that
///   superseded it or, under LWW, a version in the read's record with a higher
///   (HLC, dot). So under LWW no acked write vanishes while no newer write exists,
///   and an expired value is never "lost".
pub fn reads_show_acked_values(facts: &Facts, observations: &[Observation]) -> Vec<String> {
    let mut violations = Vec::new();
    for (write, version, _) in facts.acked() {
        let key = write.op.key();
        let Some(applied) = facts.application(write) else {
            continue; // reported by `no_acked_write_lost`
        };
        let who = || {
            format!(
                "c{}'s acked {} (w={}, via n{}, acked at {} ms, dot {})",
                write.client,
                show_body(&applied.sibling.body),
                write.quorum,
                write.node,
                write.end,
                show_dot(applied.dot)
            )
        };
        for read in observations {
            if read.key != key
                || read.start < write.end
                || u16::from(read.quorum) + u16::from(write.strict_quorum()) <= u16::from(facts.n)
                || facts.disk_lost_between(write, read)
            {
                continue;
            }
            let record = read.record.cloned().unwrap_or_default();
            let shown = shown(&record, facts.policy, read.now_ms);
            for (dot, sibling) in &shown {
                if *dot != applied.dot && version.contains(*dot) {
                    violations.push(format!(
                        "k{key}: {} shows {} ({}), which {} superseded",
                        read.what(),
                        show_body(&sibling.body),
                        show_dot(*dot),
                        who()
                    ));
                }
            }
            if !matches!(write.op, Op::Put { .. }) || shown.iter().any(|(d, _)| *d == applied.dot) {
                continue;
            }
            let expired = applied
                .sibling
                .expires_at_ms
                .is_some_and(|at| facts.expired_for(at, read));
            if expired || hidden(facts, key, applied, &record) {
                continue;
            }
            violations.push(format!(
                "k{key}: {} at clock {} does not show {}, which nothing newer hides \
                 (expiry {:?}); shown: {:?}",
                read.what(),
                read.now_ms,
                who(),
                applied.sibling.expires_at_ms,
                shown
                    .iter()
                    .map(|(dot, s)| format!("{} {}", show_body(&s.body), show_dot(*dot)))
                    .collect::<Vec<_>>()
            ));
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use ringkv_core::{ActorId, Context};

    use super::super::fixtures::{applied, dot, get, key, put, sibling};
    use super::*;
    use crate::workload::{Entry, Outcome};

    fn reads<'a>(facts: &Facts<'a>) -> Vec<Observation<'a>> {
        facts.reads().collect()
    }

    /// Two blind puts on different replicas: a (HLC 5, dot 1:1), b (HLC 9, 2:1),
    /// both acked; a get (r = 2) after both holds both.
    fn two_concurrent_puts(
        a_expires_at: Option<u64>,
        read_at_ms: u64,
    ) -> (Vec<Entry>, Vec<Applied>) {
        let mut a = sibling("a", 5);
        a.expires_at_ms = a_expires_at;
        let b = sibling("b", 9);
        let mut record = Record::default();
        record.update(&Context::default(), ActorId(1), a.clone());
        let mut other = Record::default();
        other.update(&Context::default(), ActorId(2), b);
        record.sync(&other);
        let mut history = vec![
            put(
                "a",
                Context::default(),
                Context::from_parts([], [dot(1, 1)]),
            ),
            put(
                "b",
                Context::default(),
                Context::from_parts([], [dot(2, 1)]),
            ),
            get(Some(record), 5),
        ];
        if let Outcome::Read { now_ms, .. } = &mut history[2].outcome {
            *now_ms = read_at_ms;
        }
        let mut truth = vec![
            applied(&history[0], dot(1, 1), 5),
            applied(&history[1], dot(2, 1), 9),
        ];
        truth[0].sibling = a;
        (history, truth)
    }

    #[test]
    fn under_lww_a_value_hidden_by_a_newer_write_is_not_lost() {
        let (history, truth) = two_concurrent_puts(None, 0);
        let facts = Facts::new(&history, &truth, &[key()], ConflictPolicy::Lww, 3);
        assert!(reads_show_acked_values(&facts, &reads(&facts)).is_empty());
        // Under siblings both must show, and they do.
        let facts = Facts::new(&history, &truth, &[key()], ConflictPolicy::Siblings, 3);
        assert!(reads_show_acked_values(&facts, &reads(&facts)).is_empty());
    }

    #[test]
    fn under_lww_the_newest_value_must_show_unless_expired() {
        // A read whose record lost "a" and holds only an older value: nothing
        // excuses it, not even the newer b, applied (unacked) but not in the record.
        let (mut history, truth) = two_concurrent_puts(None, 0);
        history.remove(1);
        let mut lone = Record::default();
        lone.update(&Context::default(), ActorId(7), sibling("x", 1));
        if let Outcome::Read { record, .. } = &mut history[1].outcome {
            *record = Some(lone);
        }
        let facts = Facts::new(&history, &truth, &[key()], ConflictPolicy::Lww, 3);
        let violations = reads_show_acked_values(&facts, &reads(&facts));
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].contains("does not show"));
        // Had "a" expired by the reader's clock, not showing it is right.
        let mut expired = truth.clone();
        expired[0].sibling.expires_at_ms = Some(100);
        if let Outcome::Read { now_ms, .. } = &mut history[1].outcome {
            *now_ms = 100;
        }
        let facts = Facts::new(&history, &expired, &[key()], ConflictPolicy::Lww, 3);
        assert!(reads_show_acked_values(&facts, &reads(&facts)).is_empty());
    }

    #[test]
    fn an_expired_value_is_not_called_lost() {
        // Under siblings "a" expired at 50: a read at clock 60 shows only b.
        let (history, truth) = two_concurrent_puts(Some(50), 60);
        let facts = Facts::new(&history, &truth, &[key()], ConflictPolicy::Siblings, 3);
        assert!(reads_show_acked_values(&facts, &reads(&facts)).is_empty());
        // The same read on a clock before the expiry shows both.
        let (history, truth) = two_concurrent_puts(Some(50), 40);
        let facts = Facts::new(&history, &truth, &[key()], ConflictPolicy::Siblings, 3);
        assert!(reads_show_acked_values(&facts, &reads(&facts)).is_empty());
    }

    /// A value not expired by the reading node's clock may still be gone: a node
    /// with a faster clock purged it and the tombstone spread. Up to the fastest clock
    /// of the read's time, not beyond.
    #[test]
    fn a_value_expired_on_a_faster_clock_is_not_called_lost() {
        // "a" expires at 50; the read (clock 40) holds only b.
        let (mut history, truth) = two_concurrent_puts(Some(50), 40);
        let mut only_b = Record::default();
        only_b.update(&Context::default(), ActorId(2), sibling("b", 9));
        if let Outcome::Read { record, .. } = &mut history[2].outcome {
            *record = Some(only_b);
        }
        let mut facts = Facts::new(&history, &truth, &[key()], ConflictPolicy::Siblings, 3);
        assert_eq!(reads_show_acked_values(&facts, &reads(&facts)).len(), 1);
        // Some node's clock read 50 by the time the read ended (virtual 6).
        let fast = [(0, 10), (4, 50)];
        facts.wall_high = &fast;
        assert!(reads_show_acked_values(&facts, &reads(&facts)).is_empty());
        // Only after it ended: no excuse.
        let late = [(0, 10), (7, 50)];
        facts.wall_high = &late;
        assert_eq!(reads_show_acked_values(&facts, &reads(&facts)).len(), 1);
    }

    #[test]
    fn a_read_showing_what_an_acked_write_superseded_is_reported() {
        // c was written with a's version: a read after it must not show a.
        let (mut history, mut truth) = two_concurrent_puts(None, 0);
        let a_version = Context::from_parts([], [dot(1, 1)]);
        let c_version = Context::from_parts([(ActorId(1), 1), (ActorId(3), 1)], []);
        history.insert(0, put("c", a_version, c_version));
        truth.push(applied(&history[0], dot(3, 1), 20));
        let facts = Facts::new(&history, &truth, &[key()], ConflictPolicy::Siblings, 3);
        let violations = reads_show_acked_values(&facts, &reads(&facts));
        // It shows a (superseded by c) and does not show c.
        assert_eq!(violations.len(), 2, "{violations:?}");
        assert!(violations.iter().any(|v| v.contains("superseded")));
        assert!(violations.iter().any(|v| v.contains("does not show")));
    }
}
