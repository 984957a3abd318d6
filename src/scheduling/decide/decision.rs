//! The decision itself: a message, a policy and a state in, a decision out, the policy's plan
//! applied to the state. The real decision runs it on the real tables, a candidate on its
//! shadow tables ([`crate::scheduling::shadow`]): one code for both, so a verdict compares like with like.

use crate::{
    error::Error,
    scheduling::domain::{AlarmState, Decision, DecisionKind, Message, Rejection, SubjectKind},
    scheduling::flags::Incidents,
    scheduling::policy::{AlarmPlan, Policy, TicketPlan},
    scheduling::store::State,
};

/// Decides one message under `policy` on `state` and applies the plan there; the caller
/// records the decision. `incidents` says what an alarm may do (see [`Incidents`]).
pub async fn apply(
    state: &mut impl State,
    policy: &Policy,
    incidents: Incidents,
    message_id: i64,
    parsed: &Result<Message, Rejection>,
    now_ms: i64,
) -> Result<Decision, Error> {
    let decision = match parsed {
        Err(rejection) => {
            // Without control characters: a reason quotes the input (a webhook event, a state).
            let reason = crate::scheduling::domain::clean_field(&rejection.to_string());
            state.insert_rejected(message_id, &reason, now_ms).await?;
            let mut d = Decision::new(DecisionKind::Rejected, None);
            d.reason = Some(reason);
            d
        }
        Ok(Message::Ticket(ticket)) => {
            let first = state.insert_ticket(ticket, message_id, now_ms).await?;
            let mut d = match policy.plan_ticket(first) {
                TicketPlan::Spawn => {
                    let job = state
                        .insert_job(
                            SubjectKind::Ticket,
                            Some(&ticket.key),
                            None,
                            message_id,
                            now_ms,
                        )
                        .await?;
                    let mut d = Decision::new(DecisionKind::Spawn, Some(SubjectKind::Ticket));
                    d.job = job;
                    d
                }
                TicketPlan::Duplicate => {
                    let (origin, job) = state.ticket_origin(&ticket.key).await?;
                    let mut d = Decision::new(DecisionKind::Duplicate, Some(SubjectKind::Ticket));
                    d.duplicate_of = Some(origin);
                    d.job = job;
                    d.reason = Some(format!(
                        "ticket {} was first seen in message {origin}",
                        ticket.key
                    ));
                    d
                }
            };
            d.ticket_key = Some(ticket.key.clone());
            d
        }
        Ok(Message::Alarm(alarm)) => {
            // Lock the account before touching its alarms: a concurrent decider of the same
            // account then never holds a row this transaction waits for (no deadlock).
            state.lock_account(&alarm.account).await?;
            let mut d = match state.insert_alarm(alarm, message_id).await? {
                None => {
                    let (origin, incident) = state.alarm_origin(&alarm.event_id).await?;
                    let mut d = Decision::new(DecisionKind::Duplicate, Some(SubjectKind::Alarm));
                    d.duplicate_of = Some(origin);
                    d.incident = incident;
                    d.reason = Some(format!(
                        "alarm event {} was first seen in message {origin}",
                        alarm.event_id
                    ));
                    d
                }
                Some(_) if alarm.state != AlarmState::Alarm => ignored(format!(
                    "state {} does not open or extend an incident",
                    alarm.state.as_str()
                )),
                Some(_) if !policy.handles_alarms() => ignored(format!(
                    "policy {} decides tickets only: the alarm is stored, not decided",
                    policy.name
                )),
                Some(_) if incidents == Incidents::Off => {
                    ignored("incidents = off: the alarm is stored, not decided".into())
                }
                Some(alarm_id) => {
                    decide_alarm(
                        state, policy, incidents, alarm, alarm_id, message_id, now_ms,
                    )
                    .await?
                }
            };
            d.account = Some(alarm.account.clone());
            d
        }
    };
    Ok(decision)
}

fn ignored(reason: String) -> Decision {
    let mut d = Decision::new(DecisionKind::Ignored, Some(SubjectKind::Alarm));
    d.reason = Some(reason);
    d
}

/// Opens, chains or merges for a new `ALARM` transition. Under `incidents = shadow` an
/// incident gets no job; under `on`, the first alarm that joins such an incident starts its
/// agent (an incident still going when incident response was switched on is not left alone).
async fn decide_alarm(
    state: &mut impl State,
    policy: &Policy,
    incidents: Incidents,
    alarm: &crate::scheduling::domain::Alarm,
    alarm_id: i64,
    message_id: i64,
    now_ms: i64,
) -> Result<Decision, Error> {
    let (lo, hi) = policy.lookup_range(alarm.event_ms);
    let near = state.open_incidents_near(&alarm.account, lo, hi).await?;
    let plan = policy.plan_alarm(alarm.event_ms, &alarm.alarm_name, &near);
    let spawns = incidents == Incidents::On;
    let (mut d, incident, without_agent) = match plan {
        AlarmPlan::Open => {
            let group = policy.alarm_group(&alarm.alarm_name);
            let incident = state
                .open_incident(&alarm.account, group, alarm.event_ms, message_id, now_ms)
                .await?;
            state.set_alarm_incident(alarm_id, incident).await?;
            let mut d = Decision::new(DecisionKind::Spawn, Some(SubjectKind::Alarm));
            if !spawns {
                d.reason =
                    Some("incidents = shadow: decided and recorded, no agent started".into());
            }
            (d, incident, false)
        }
        AlarmPlan::Chain { incident } => {
            state
                .extend_incident(incident, alarm.event_ms, alarm.event_ms, 1)
                .await?;
            state.set_alarm_incident(alarm_id, incident).await?;
            let without_agent = near.iter().any(|s| s.id == incident && !s.has_job);
            (
                Decision::new(DecisionKind::Chained, Some(SubjectKind::Alarm)),
                incident,
                without_agent,
            )
        }
        AlarmPlan::Merge { into, others } => {
            for other in &others {
                state
                    .merge_incident(into, *other, message_id, now_ms)
                    .await?;
            }
            state
                .extend_incident(into, alarm.event_ms, alarm.event_ms, 1)
                .await?;
            state.set_alarm_incident(alarm_id, into).await?;
            let without_agent = near
                .iter()
                .filter(|s| s.id == into || others.contains(&s.id))
                .all(|s| !s.has_job);
            let mut d = Decision::new(DecisionKind::Merged, Some(SubjectKind::Alarm));
            d.reason = Some(format!(
                "bridges incidents; merged {} into {into}",
                others
                    .iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            d.merged = others;
            (d, into, without_agent)
        }
    };
    d.incident = Some(incident);
    let opened = d.decision == DecisionKind::Spawn;
    if spawns && (opened || without_agent) {
        if without_agent {
            d.decision = DecisionKind::Spawn;
            d.reason = Some(format!(
                "incident {incident} was opened without an agent (incidents = shadow); its first \
                 alarm under incidents = on starts one"
            ));
        }
        d.job = state
            .insert_job(SubjectKind::Alarm, None, Some(incident), message_id, now_ms)
            .await?;
    }
    Ok(d)
}
