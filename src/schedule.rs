//! Ingest and decide: the two operations every message goes through (DESIGN sections 1, 3).
//!
//! Both run inside a caller's transaction and are idempotent: [`decide`] returns the decision
//! already stored for a message instead of deciding again, and [`ingest`] recognises a transport
//! id seen before as a redelivery. The live pipeline (`steps/`, one step each) and the scenario
//! replay ([`deliver`], both in one transaction) call exactly these functions, so a replay shows
//! what production would decide.

use crate::{
    domain::{
        parse_message, AlarmState, Decision, DecisionKind, Ingested, Message, Rejection,
        SubjectKind,
    },
    error::Error,
    policy::{AlarmPlan, ChainingPolicy, TicketPlan},
    store::Store,
};

/// Persists a delivered message (or counts a redelivery of its transport id).
pub async fn ingest(
    tx: &mut impl Store,
    transport_id: &str,
    source: &str,
    body: &str,
    received_ms: i64,
) -> Result<Ingested, Error> {
    if transport_id.is_empty() {
        return Err(Error::Invalid(
            "message has an empty transport message id".into(),
        ));
    }
    tx.insert_message(transport_id, source, body, received_ms)
        .await
}

/// One delivery from a transport, ingested and (if new) decided in `tx`: what a replay does per
/// message. Returns None for a redelivery, which gets no decision.
pub async fn deliver(
    tx: &mut impl Store,
    policy: &ChainingPolicy,
    transport_id: &str,
    source: &str,
    body: &str,
    now_ms: i64,
) -> Result<Option<Decision>, Error> {
    deliver_parsed(
        tx,
        policy,
        transport_id,
        source,
        body,
        parse_message(body),
        now_ms,
    )
    .await
}

/// [`deliver`] for a body the caller already parsed.
pub async fn deliver_parsed(
    tx: &mut impl Store,
    policy: &ChainingPolicy,
    transport_id: &str,
    source: &str,
    body: &str,
    parsed: Result<Message, Rejection>,
    now_ms: i64,
) -> Result<Option<Decision>, Error> {
    match ingest(tx, transport_id, source, body, now_ms).await? {
        Ingested::Redelivered { .. } => Ok(None),
        Ingested::New { message_id } => decide_parsed(tx, policy, message_id, parsed, now_ms)
            .await
            .map(Some),
    }
}

/// Decides a stored message and records the decision, all in `tx`.
///
/// `now_ms` is the decision time: the wall clock live, the event's own time in a replay.
pub async fn decide(
    tx: &mut impl Store,
    policy: &ChainingPolicy,
    message_id: i64,
    body: &str,
    now_ms: i64,
) -> Result<Decision, Error> {
    decide_parsed(tx, policy, message_id, parse_message(body), now_ms).await
}

/// [`decide`] for a body the caller already parsed (the replay parses once for virtual time).
pub async fn decide_parsed(
    tx: &mut impl Store,
    policy: &ChainingPolicy,
    message_id: i64,
    parsed: Result<Message, Rejection>,
    now_ms: i64,
) -> Result<Decision, Error> {
    tx.lock_message(message_id).await?;
    if let Some(done) = tx.decision_of(message_id).await? {
        return Ok(done);
    }
    let decision = match parsed {
        Err(rejection) => {
            let reason = rejection.to_string();
            tx.insert_rejected(message_id, &reason, now_ms).await?;
            let mut d = Decision::new(DecisionKind::Rejected, None);
            d.reason = Some(reason);
            d
        }
        Ok(Message::Ticket(ticket)) => {
            let first = tx.insert_ticket(&ticket, message_id, now_ms).await?;
            let mut d = match policy.plan_ticket(first) {
                TicketPlan::Spawn => {
                    let job = tx
                        .insert_job(
                            SubjectKind::Ticket,
                            Some(&ticket.key),
                            None,
                            message_id,
                            now_ms,
                        )
                        .await?;
                    let mut d = Decision::new(DecisionKind::Spawn, Some(SubjectKind::Ticket));
                    d.job = Some(job);
                    d
                }
                TicketPlan::Duplicate => {
                    let (origin, job) = tx.ticket_origin(&ticket.key).await?;
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
            d.ticket_key = Some(ticket.key);
            d
        }
        Ok(Message::Alarm(alarm)) => {
            // Lock the account before touching its alarms: a concurrent decider of the same
            // account then never holds a row this transaction waits for (no deadlock).
            tx.lock_account(&alarm.account).await?;
            let mut d = match tx.insert_alarm(&alarm, message_id).await? {
                None => {
                    let (origin, incident) = tx.alarm_origin(&alarm.event_id).await?;
                    let mut d = Decision::new(DecisionKind::Duplicate, Some(SubjectKind::Alarm));
                    d.duplicate_of = Some(origin);
                    d.incident = incident;
                    d.reason = Some(format!(
                        "alarm event {} was first seen in message {origin}",
                        alarm.event_id
                    ));
                    d
                }
                Some(_) if alarm.state != AlarmState::Alarm => {
                    let mut d = Decision::new(DecisionKind::Ignored, Some(SubjectKind::Alarm));
                    d.reason = Some(format!(
                        "state {} does not open or extend an incident",
                        alarm.state.as_str()
                    ));
                    d
                }
                Some(alarm_id) => {
                    let (lo, hi) = policy.lookup_range(alarm.event_ms);
                    let near = tx.open_incidents_near(&alarm.account, lo, hi).await?;
                    match policy.plan_alarm(alarm.event_ms, &near) {
                        AlarmPlan::Open => {
                            let incident = tx
                                .open_incident(&alarm.account, alarm.event_ms, message_id, now_ms)
                                .await?;
                            tx.set_alarm_incident(alarm_id, incident).await?;
                            let job = tx
                                .insert_job(
                                    SubjectKind::Alarm,
                                    None,
                                    Some(incident),
                                    message_id,
                                    now_ms,
                                )
                                .await?;
                            let mut d =
                                Decision::new(DecisionKind::Spawn, Some(SubjectKind::Alarm));
                            d.incident = Some(incident);
                            d.job = Some(job);
                            d
                        }
                        AlarmPlan::Chain { incident } => {
                            tx.extend_incident(incident, alarm.event_ms, alarm.event_ms, 1)
                                .await?;
                            tx.set_alarm_incident(alarm_id, incident).await?;
                            let mut d =
                                Decision::new(DecisionKind::Chained, Some(SubjectKind::Alarm));
                            d.incident = Some(incident);
                            d
                        }
                        AlarmPlan::Merge { into, others } => {
                            for other in &others {
                                tx.merge_incident(into, *other, message_id, now_ms).await?;
                            }
                            tx.extend_incident(into, alarm.event_ms, alarm.event_ms, 1)
                                .await?;
                            tx.set_alarm_incident(alarm_id, into).await?;
                            let mut d =
                                Decision::new(DecisionKind::Merged, Some(SubjectKind::Alarm));
                            d.incident = Some(into);
                            d.reason = Some(format!(
                                "bridges incidents; merged {} into {into}",
                                others
                                    .iter()
                                    .map(i64::to_string)
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ));
                            d.merged = others;
                            d
                        }
                    }
                }
            };
            d.account = Some(alarm.account);
            d
        }
    };
    tx.insert_decision(message_id, &decision, &policy.name(), now_ms)
        .await?;
    Ok(decision)
}
