//! Scheduling policy: the decision given the stored state, with no I/O.
//!
//! The policy is kept apart from the storage that feeds it ([`crate::schedule`] loads the
//! state, asks the policy, applies the plan) so that a candidate policy can later decide the
//! same event against its own shadow state beside the authoritative one (DESIGN section 8).

use std::time::Duration;

/// An open incident's span of member alarm event times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IncidentSpan {
    pub id: i64,
    pub first_ms: i64,
    pub last_ms: i64,
}

/// What to do with a new `ALARM` transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlarmPlan {
    /// No incident of the account holds an alarm within the window: open one and spawn.
    Open,
    /// Exactly one does: the alarm joins it.
    Chain { incident: i64 },
    /// Several do (a late alarm bridging them): fold them all into the earliest-opened one.
    Merge { into: i64, others: Vec<i64> },
}

/// What to do with a ticket sighting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketPlan {
    Spawn,
    Duplicate,
}

/// Single-linkage chaining of alarms per AWS account with an inclusive window (DESIGN §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainingPolicy {
    pub window_ms: i64,
}

impl Default for ChainingPolicy {
    fn default() -> Self {
        ChainingPolicy::new(Duration::from_secs(3600))
    }
}

impl ChainingPolicy {
    pub fn new(window: Duration) -> Self {
        ChainingPolicy {
            window_ms: window.as_millis() as i64,
        }
    }

    /// The name recorded with every decision this policy makes, e.g. `chain/1h`.
    pub fn name(&self) -> String {
        let window = humantime::format_duration(Duration::from_millis(self.window_ms as u64));
        format!("chain/{window}")
    }

    /// The event-time range whose incidents can take an alarm at `event_ms`.
    pub fn lookup_range(&self, event_ms: i64) -> (i64, i64) {
        (event_ms - self.window_ms, event_ms + self.window_ms)
    }

    /// A ticket spawns on its first sighting only.
    pub fn plan_ticket(&self, first_sighting: bool) -> TicketPlan {
        if first_sighting {
            TicketPlan::Spawn
        } else {
            TicketPlan::Duplicate
        }
    }

    /// Decides an `ALARM` at `event_ms` given its account's open incidents near it.
    ///
    /// An incident's alarms are chained, so every point of its span lies within the window of
    /// one of them; the alarm is therefore within the window of some member exactly when the
    /// span overlaps `[t - W, t + W]`. Candidates outside that are ignored, so callers may pass
    /// a superset.
    pub fn plan_alarm(&self, event_ms: i64, candidates: &[IncidentSpan]) -> AlarmPlan {
        let (lo, hi) = self.lookup_range(event_ms);
        let mut joined: Vec<i64> = candidates
            .iter()
            .filter(|c| c.last_ms >= lo && c.first_ms <= hi)
            .map(|c| c.id)
            .collect();
        joined.sort_unstable();
        joined.dedup();
        match joined.as_slice() {
            [] => AlarmPlan::Open,
            [one] => AlarmPlan::Chain { incident: *one },
            [first, rest @ ..] => AlarmPlan::Merge {
                into: *first,
                others: rest.to_vec(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;

    fn span(id: i64, first_ms: i64, last_ms: i64) -> IncidentSpan {
        IncidentSpan {
            id,
            first_ms,
            last_ms,
        }
    }

    #[test]
    fn no_incident_opens_one() {
        assert_eq!(
            ChainingPolicy::default().plan_alarm(10 * H, &[]),
            AlarmPlan::Open
        );
    }

    #[test]
    fn window_is_inclusive_on_both_sides() {
        let p = ChainingPolicy::default();
        let inc = [span(1, 10 * H, 11 * H)];
        assert_eq!(p.plan_alarm(12 * H, &inc), AlarmPlan::Chain { incident: 1 });
        assert_eq!(p.plan_alarm(9 * H, &inc), AlarmPlan::Chain { incident: 1 });
        assert_eq!(p.plan_alarm(12 * H + 1, &inc), AlarmPlan::Open);
        assert_eq!(p.plan_alarm(9 * H - 1, &inc), AlarmPlan::Open);
    }

    #[test]
    fn bridging_alarm_merges_into_earliest_opened() {
        let p = ChainingPolicy::default();
        // Incident 7 was opened first (lower id) although its alarms are later in event time.
        let inc = [span(9, 10 * H, 10 * H), span(7, 12 * H, 12 * H)];
        assert_eq!(
            p.plan_alarm(11 * H, &inc),
            AlarmPlan::Merge {
                into: 7,
                others: vec![9]
            }
        );
    }

    #[test]
    fn candidates_outside_the_window_are_ignored() {
        let p = ChainingPolicy::new(Duration::from_secs(1800));
        let inc = [span(1, 10 * H, 10 * H), span(2, 12 * H, 13 * H)];
        assert_eq!(p.plan_alarm(11 * H, &inc), AlarmPlan::Open);
        assert_eq!(
            p.plan_alarm(10 * H + H / 2, &inc),
            AlarmPlan::Chain { incident: 1 }
        );
    }

    #[test]
    fn tickets_spawn_once() {
        let p = ChainingPolicy::default();
        assert_eq!(p.plan_ticket(true), TicketPlan::Spawn);
        assert_eq!(p.plan_ticket(false), TicketPlan::Duplicate);
        assert_eq!(p.name(), "chain/1h");
    }
}
