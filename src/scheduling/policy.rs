//! Scheduling policy: the decision given the stored state, with no I/O.
//!
//! The policy is kept apart from the storage that feeds it ([`crate::scheduling::decide`] loads the
//! state, asks the policy, applies the plan) so that a candidate policy decides the same event
//! against its own shadow state beside the authoritative one ([`crate::scheduling::shadow`], docs/design.md §8).
//!
//! A policy is data, not code: a chaining window, an optional maximum incident age, a grouping
//! (by account, or by account and alarm name), or tickets only. It is written either as a
//! `[policies.NAME]` table in the configuration or inline as a spec such as
//! `window=30m,max_age=6h,group=account+alarm` (which is also its canonical form).

use std::{fmt, time::Duration};

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The name of the built-in policy of docs/design.md §3: one-hour window, grouped by account.
pub const DEFAULT_POLICY: &str = "default";

/// An open incident's span of member alarm event times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncidentSpan {
    pub id: i64,
    pub first_ms: i64,
    pub last_ms: i64,
    /// The alarm name the incident is keyed by, when it was opened by a policy that groups
    /// by account and alarm name; None for an account-wide incident.
    pub alarm_name: Option<String>,
    /// Whether an agent job exists for the incident (none when it was opened under
    /// `incidents = shadow`).
    pub has_job: bool,
}

/// What to do with a new `ALARM` transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlarmPlan {
    /// No incident of the alarm's group can take it: open one and spawn.
    Open,
    /// Exactly one can: the alarm joins it.
    Chain { incident: i64 },
    /// Several can (a late alarm bridging them): fold them all into the earliest-opened one.
    Merge { into: i64, others: Vec<i64> },
}

/// What to do with a ticket sighting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketPlan {
    Spawn,
    Duplicate,
}

/// How alarms are grouped into incidents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Grouping {
    /// Every alarm of an AWS account (docs/design.md §3).
    #[default]
    #[serde(rename = "account")]
    Account,
    /// Alarms of one account with the same alarm name.
    #[serde(rename = "account+alarm")]
    AccountAlarm,
}

/// A policy's settings, as `[policies.NAME]` in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicySpec {
    /// Alarms chain when within this of an incident's alarm (inclusive).
    #[serde(with = "crate::duration::required")]
    pub window: Duration,
    /// An incident whose span (first to last alarm) would grow beyond this takes no more
    /// alarms: a flapping alarm then opens a new incident.
    #[serde(
        with = "crate::duration::optional",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_age: Option<Duration>,
    pub group: Grouping,
    /// Decide tickets only: every alarm is stored and ignored.
    pub tickets_only: bool,
}

impl Default for PolicySpec {
    fn default() -> Self {
        PolicySpec {
            window: Duration::from_secs(3600),
            max_age: None,
            group: Grouping::Account,
            tickets_only: false,
        }
    }
}

impl PolicySpec {
    /// Parses an inline spec: comma-separated `window=DUR`, `max_age=DUR`,
    /// `group=account|account+alarm`, and `tickets-only`; unset keys keep their defaults.
    pub fn parse(text: &str) -> Result<PolicySpec, Error> {
        let mut spec = PolicySpec::default();
        let bad = |what: String| Error::Config(format!("policy spec {text:?}: {what}"));
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            let duration = |v: &str| {
                humantime::parse_duration(v)
                    .map_err(|e| bad(format!("{key}: bad duration {v:?}: {e}")))
            };
            match (key.trim(), value.trim()) {
                ("window", v) => spec.window = duration(v)?,
                ("max_age", v) => spec.max_age = Some(duration(v)?),
                ("group", "account") => spec.group = Grouping::Account,
                ("group", "account+alarm") => spec.group = Grouping::AccountAlarm,
                ("group", v) => {
                    return Err(bad(format!(
                        "group must be account or account+alarm, not {v:?}"
                    )))
                }
                ("tickets-only" | "tickets_only", "" | "true") => spec.tickets_only = true,
                (k, _) => {
                    return Err(bad(format!(
                        "unknown key {k:?} (known: window, max_age, group, tickets-only)"
                    )))
                }
            }
        }
        if text.trim().is_empty() {
            return Err(bad("empty".into()));
        }
        spec.validate().map_err(|e| bad(e.to_string()))?;
        Ok(spec)
    }

    /// Refuses settings that cannot be what was meant.
    pub fn validate(&self) -> Result<(), Error> {
        if self.window.is_zero() {
            return Err(Error::Config("window must be longer than zero".into()));
        }
        if self.max_age.is_some_and(|a| a.is_zero()) {
            return Err(Error::Config("max_age must be longer than zero".into()));
        }
        Ok(())
    }

    /// Whether two specs decide every message alike.
    pub fn behaves_like(&self, other: &PolicySpec) -> bool {
        self.to_string() == other.to_string()
    }
}

/// The canonical inline form: what [`PolicySpec::parse`] reads back.
impl fmt::Display for PolicySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.tickets_only {
            return f.write_str("tickets-only");
        }
        write!(f, "window={}", humantime::format_duration(self.window))?;
        if let Some(age) = self.max_age {
            write!(f, ",max_age={}", humantime::format_duration(age))?;
        }
        if self.group == Grouping::AccountAlarm {
            f.write_str(",group=account+alarm")?;
        }
        Ok(())
    }
}

/// A named policy: what decides, and what every decision records as its `policy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The configuration's name for it, or the canonical spec of an inline one.
    pub name: String,
    pub spec: PolicySpec,
    window_ms: i64,
    max_age_ms: Option<i64>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy::named(DEFAULT_POLICY, PolicySpec::default())
    }
}

impl Policy {
    pub fn named(name: &str, spec: PolicySpec) -> Policy {
        Policy {
            name: name.to_owned(),
            window_ms: spec.window.as_millis() as i64,
            max_age_ms: spec.max_age.map(|a| a.as_millis() as i64),
            spec,
        }
    }

    /// An unnamed policy, named by its canonical spec.
    pub fn inline(spec: PolicySpec) -> Policy {
        Policy::named(&spec.to_string(), spec)
    }

    /// The built-in chaining of docs/design.md §3 with another window (the replay's `--window`).
    pub fn with_window(window: Duration) -> Policy {
        let spec = PolicySpec {
            window,
            ..PolicySpec::default()
        };
        if spec == PolicySpec::default() {
            Policy::default()
        } else {
            Policy::inline(spec)
        }
    }

    /// Whether alarms are decided at all (false for a tickets-only policy).
    pub fn handles_alarms(&self) -> bool {
        !self.spec.tickets_only
    }

    /// The incident key an alarm is grouped under, beside its account.
    pub fn alarm_group<'a>(&self, alarm_name: &'a str) -> Option<&'a str> {
        match self.spec.group {
            Grouping::Account => None,
            Grouping::AccountAlarm => Some(alarm_name),
        }
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

    /// Decides an `ALARM` named `alarm_name` at `event_ms` given its account's open incidents
    /// near it.
    ///
    /// An incident's alarms are chained, so every point of its span lies within the window of
    /// one of them; the alarm is therefore within the window of some member exactly when the
    /// span overlaps `[t - W, t + W]`. Incidents of another group, outside that range, or
    /// which the alarm would stretch beyond the maximum age are ignored, so callers may pass a
    /// superset.
    pub fn plan_alarm(
        &self,
        event_ms: i64,
        alarm_name: &str,
        candidates: &[IncidentSpan],
    ) -> AlarmPlan {
        let (lo, hi) = self.lookup_range(event_ms);
        let group = self.alarm_group(alarm_name);
        let mut joined: Vec<i64> = candidates
            .iter()
            .filter(|c| c.alarm_name.as_deref() == group)
            .filter(|c| c.last_ms >= lo && c.first_ms <= hi)
            .filter(|c| {
                self.max_age_ms
                    .is_none_or(|age| c.last_ms.max(event_ms) - c.first_ms.min(event_ms) <= age)
            })
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
            alarm_name: None,
            has_job: true,
        }
    }

    fn policy(spec: &str) -> Policy {
        Policy::inline(PolicySpec::parse(spec).unwrap())
    }

    #[test]
    fn no_incident_opens_one() {
        assert_eq!(
            Policy::default().plan_alarm(10 * H, "a", &[]),
            AlarmPlan::Open
        );
    }

    #[test]
    fn window_is_inclusive_on_both_sides() {
        let p = Policy::default();
        let inc = [span(1, 10 * H, 11 * H)];
        assert_eq!(
            p.plan_alarm(12 * H, "a", &inc),
            AlarmPlan::Chain { incident: 1 }
        );
        assert_eq!(
            p.plan_alarm(9 * H, "a", &inc),
            AlarmPlan::Chain { incident: 1 }
        );
        assert_eq!(p.plan_alarm(12 * H + 1, "a", &inc), AlarmPlan::Open);
        assert_eq!(p.plan_alarm(9 * H - 1, "a", &inc), AlarmPlan::Open);
    }

    #[test]
    fn bridging_alarm_merges_into_earliest_opened() {
        let p = Policy::default();
        // Incident 7 was opened first (lower id) although its alarms are later in event time.
        let inc = [span(9, 10 * H, 10 * H), span(7, 12 * H, 12 * H)];
        assert_eq!(
            p.plan_alarm(11 * H, "a", &inc),
            AlarmPlan::Merge {
                into: 7,
                others: vec![9]
            }
        );
    }

    #[test]
    fn candidates_outside_the_window_are_ignored() {
        let p = policy("window=30m");
        let inc = [span(1, 10 * H, 10 * H), span(2, 12 * H, 13 * H)];
        assert_eq!(p.plan_alarm(11 * H, "a", &inc), AlarmPlan::Open);
        assert_eq!(
            p.plan_alarm(10 * H + H / 2, "a", &inc),
            AlarmPlan::Chain { incident: 1 }
        );
    }

    #[test]
    fn a_flapping_alarm_opens_a_new_incident_past_the_maximum_age() {
        let p = policy("window=1h,max_age=3h");
        let inc = [span(1, 10 * H, 12 * H)];
        assert_eq!(
            p.plan_alarm(13 * H, "a", &inc),
            AlarmPlan::Chain { incident: 1 }
        );
        assert_eq!(p.plan_alarm(13 * H + 1, "a", &inc), AlarmPlan::Open);
        // A late alarm stretches the span backwards just the same.
        assert_eq!(p.plan_alarm(9 * H - 1, "a", &inc), AlarmPlan::Open);
    }

    #[test]
    fn grouping_by_alarm_name_keeps_other_alarms_apart() {
        let p = policy("group=account+alarm");
        let mut cpu = span(1, 10 * H, 10 * H);
        cpu.alarm_name = Some("cpu".into());
        let account_wide = span(2, 10 * H, 10 * H);
        let inc = [cpu, account_wide];
        assert_eq!(
            p.plan_alarm(10 * H, "cpu", &inc),
            AlarmPlan::Chain { incident: 1 }
        );
        assert_eq!(p.plan_alarm(10 * H, "disk", &inc), AlarmPlan::Open);
        // The account-wide policy sees only the account-wide incident.
        assert_eq!(
            Policy::default().plan_alarm(10 * H, "cpu", &inc),
            AlarmPlan::Chain { incident: 2 }
        );
    }

    #[test]
    fn tickets_spawn_once() {
        let p = Policy::default();
        assert_eq!(p.plan_ticket(true), TicketPlan::Spawn);
        assert_eq!(p.plan_ticket(false), TicketPlan::Duplicate);
        assert_eq!(p.name, "default");
        assert_eq!(p.spec.to_string(), "window=1h");
    }

    #[test]
    fn specs_read_back_their_canonical_form() {
        for text in [
            "window=30m",
            "window=1h,max_age=6h",
            "window=2h,group=account+alarm",
            "tickets-only",
        ] {
            assert_eq!(PolicySpec::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(
            PolicySpec::parse("group=account+alarm, window=45m")
                .unwrap()
                .to_string(),
            "window=45m,group=account+alarm"
        );
        assert!(PolicySpec::parse("window=0s").is_err());
        let e = PolicySpec::parse("windw=30m").unwrap_err().to_string();
        assert!(e.contains("unknown key \"windw\""), "{e}");
        assert!(PolicySpec::parse("group=region").is_err());
        assert!(PolicySpec::parse("").is_err());
    }
}
