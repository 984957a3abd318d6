//! Ingest and decide: the two operations every message goes through (docs/design.md sections 1, 3).
//!
//! Both run inside a caller's transaction and are idempotent: [`decide`] returns the decision
//! already stored for a message instead of deciding again, and [`ingest`] recognises a transport
//! id seen before as a redelivery. The live pipeline (`steps/`, one step each) and the scenario
//! replay ([`deliver`], both in one transaction) call exactly these functions, so a replay shows
//! what production would decide.
//!
//! A decision is made by [`apply`] on a [`State`]: the real tables for the authoritative
//! policy, or a candidate's shadow state for the candidate ([`crate::shadow`]). The same code
//! therefore decides both, and a verdict compares like with like.

use crate::{
    domain::{
        parse_message, AlarmState, Decision, DecisionKind, Ingested, Message, Rejection,
        SubjectKind,
    },
    error::Error,
    flags::{Incidents, Scheduling},
    policy::{AlarmPlan, Policy, TicketPlan},
    shadow::Evaluation,
    store::{State, Store},
};

/// Persists a delivered message (or counts a redelivery of its transport id). A transport id
/// that arrives again with another body is no redelivery: that message is stored too, under
/// a derived id, as [`Ingested::Reused`], for its decision to reject.
pub async fn ingest(
    tx: &mut impl Store,
    transport_id: &str,
    source: &str,
    body: &str,
    raw: Option<&[u8]>,
    received_ms: i64,
) -> Result<Ingested, Error> {
    if transport_id.is_empty() {
        return Err(Error::Invalid(
            "message has an empty transport message id".into(),
        ));
    }
    match tx
        .insert_message(transport_id, source, body, raw, None, received_ms)
        .await?
    {
        Ingested::IdTaken { original_id } => {
            let derived = crate::domain::reused_transport_id(transport_id, body, raw);
            Ok(
                match tx
                    .insert_message(&derived, source, body, raw, Some(original_id), received_ms)
                    .await?
                {
                    Ingested::New { message_id } => Ingested::Reused {
                        message_id,
                        original_id,
                    },
                    other => Ingested::Redelivered {
                        message_id: other.message_id(),
                    },
                },
            )
        }
        other => Ok(other),
    }
}

/// One delivery from a transport, ingested and (if new) decided in `tx`: what a replay does per
/// message. Returns None for a redelivery, which gets no decision.
pub async fn deliver(
    tx: &mut impl Store,
    sched: &Scheduling,
    transport_id: &str,
    source: &str,
    body: &str,
    now_ms: i64,
) -> Result<Option<Decision>, Error> {
    let delivery = Delivery {
        transport_id,
        source,
        body,
        raw: None,
    };
    deliver_parsed(tx, sched, &delivery, parse_message(body), now_ms).await
}

/// One message as a transport delivered it, for [`deliver_parsed`].
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    pub transport_id: &'a str,
    pub source: &'a str,
    pub body: &'a str,
    /// The bytes, when the body is not valid UTF-8.
    pub raw: Option<&'a [u8]>,
}

/// [`deliver`] for a body the caller already parsed.
pub async fn deliver_parsed(
    tx: &mut impl Store,
    sched: &Scheduling,
    d: &Delivery<'_>,
    parsed: Result<Message, Rejection>,
    now_ms: i64,
) -> Result<Option<Decision>, Error> {
    match ingest(tx, d.transport_id, d.source, d.body, d.raw, now_ms).await? {
        Ingested::Redelivered { .. } | Ingested::IdTaken { .. } => Ok(None),
        Ingested::New { message_id } => decide_parsed(tx, sched, message_id, parsed, now_ms)
            .await
            .map(Some),
        Ingested::Reused {
            message_id,
            original_id,
        } => decide_parsed(
            tx,
            sched,
            message_id,
            Err(Rejection::IdReused(original_id)),
            now_ms,
        )
        .await
        .map(Some),
    }
}

/// Decides a stored message and records the decision, all in `tx`.
///
/// `now_ms` is the decision time: the wall clock live, the event's own time in a replay.
pub async fn decide(
    tx: &mut impl Store,
    sched: &Scheduling,
    message_id: i64,
    body: &str,
    now_ms: i64,
) -> Result<Decision, Error> {
    decide_parsed(tx, sched, message_id, parse_message(body), now_ms).await
}

/// [`decide`] for a body the caller already parsed (the replay parses once for virtual time).
///
/// The authoritative policy decides on the real tables and its decision is stored; then, when
/// a candidate is set, it decides the same message on its shadow state and the pair is stored
/// with its verdict (a failing candidate is recorded, never returned).
pub async fn decide_parsed(
    tx: &mut impl Store,
    sched: &Scheduling,
    message_id: i64,
    parsed: Result<Message, Rejection>,
    now_ms: i64,
) -> Result<Decision, Error> {
    tx.lock_message(message_id).await?;
    if let Some(done) = tx.decision_of(message_id).await? {
        return Ok(done);
    }
    let decision = apply(
        tx,
        &sched.policy,
        sched.incidents,
        message_id,
        &parsed,
        now_ms,
    )
    .await?;
    tx.insert_decision(message_id, &decision, &sched.policy.name, now_ms)
        .await?;
    if let Some(candidate) = &sched.candidate {
        tx.evaluate_candidate(&Evaluation {
            candidate,
            authoritative_policy: &sched.policy,
            incidents: sched.incidents,
            message_id,
            parsed: &parsed,
            authoritative: &decision,
            now_ms,
            timeout: sched.candidate_timeout,
        })
        .await?;
    }
    Ok(decision)
}

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
            let reason = crate::domain::clean_field(&rejection.to_string());
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
    alarm: &crate::domain::Alarm,
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
