//! Ingest and decide: the two operations every message goes through (docs/design.md sections 1, 3).
//!
//! Both run inside a caller's transaction and are idempotent: [`decide`] returns the decision
//! already stored for a message instead of deciding again, and [`ingest`] recognises a transport
//! id seen before as a redelivery. The live pipeline (`steps/`, one step each) and the scenario
//! replay ([`deliver`], both in one transaction) call exactly these functions, so a replay shows
//! what production would decide.
//!
//! A decision is made by [`decision::apply`] on a [`crate::scheduling::store::State`]: the
//! real tables for the authoritative policy, or the candidate's tables for a candidate (the
//! same store in the candidate's scope, from [`crate::scheduling::shadow`]). The same code
//! therefore decides both, and a verdict compares like with like.

pub mod decision;

use crate::{
    error::Error,
    scheduling::domain::{parse_message, Decision, Ingested, Message, Rejection},
    scheduling::flags::Scheduling,
    scheduling::shadow::Evaluation,
    scheduling::store::Store,
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
            let derived = crate::scheduling::domain::reused_transport_id(transport_id, body, raw);
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
    Ok(deliver_ingested(tx, sched, d, parsed, now_ms).await?.1)
}

/// [`deliver_parsed`], saying also how the message was stored (new, a redelivery, ...).
pub async fn deliver_ingested(
    tx: &mut impl Store,
    sched: &Scheduling,
    d: &Delivery<'_>,
    parsed: Result<Message, Rejection>,
    now_ms: i64,
) -> Result<(Ingested, Option<Decision>), Error> {
    let ingested = ingest(tx, d.transport_id, d.source, d.body, d.raw, now_ms).await?;
    let decision = match ingested {
        Ingested::Redelivered { .. } | Ingested::IdTaken { .. } => None,
        Ingested::New { message_id } => {
            Some(decide_parsed(tx, sched, message_id, parsed, now_ms).await?)
        }
        Ingested::Reused {
            message_id,
            original_id,
        } => Some(
            decide_parsed(
                tx,
                sched,
                message_id,
                Err(Rejection::IdReused(original_id)),
                now_ms,
            )
            .await?,
        ),
    };
    Ok((ingested, decision))
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
    if let Some(done) = tx.lock_decided(message_id).await? {
        return Ok(done);
    }
    let decision = decision::apply(
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
        // Its failure is recorded as the evaluation's, never returned.
        crate::scheduling::shadow::evaluate(
            tx.candidate_tx()?,
            &Evaluation {
                candidate,
                authoritative_policy: &sched.policy,
                incidents: sched.incidents,
                message_id,
                parsed: &parsed,
                authoritative: &decision,
                now_ms,
                timeout: sched.candidate_timeout,
            },
        )
        .await?;
    }
    Ok(decision)
}

/// One stored, undecided message of a batch: its id, and its body as parsed (or why it is
/// rejected).
pub struct Stored<'a> {
    pub message_id: i64,
    pub transport_id: &'a str,
    pub body: &'a str,
    pub raw: Option<&'a [u8]>,
    pub parsed: &'a Result<Message, Rejection>,
}

/// Decides a batch of stored messages in `tx`, in order, as [`decide_parsed`] would one after
/// the other, and records the decisions; returns them in order.
///
/// Without a candidate it loads the state the batch can touch in a few queries, decides in
/// memory and writes back with multi-row statements ([`WriteBehind::load_stored`]): on
/// Postgres in two passes, the first only counting the incident and job ids the batch needs
/// (drawn from their sequences for the second). With a candidate (its shadow state lives in
/// the statement store) it decides statement by statement. On Postgres either way, every
/// account and ticket lock of the batch is taken first ([`sql::lock_subjects`]).
pub async fn decide_stored_batch(
    tx: &mut crate::db::Tx,
    sched: &Scheduling,
    batch: &[Stored<'_>],
    now_ms: i64,
) -> Result<Vec<Decision>, Error> {
    use crate::scheduling::store::{
        sql::{self, Tables},
        write_behind::{Planned, WriteBehind},
    };
    let mut accounts = Vec::new();
    let mut tickets = Vec::new();
    for m in batch {
        match m.parsed {
            Ok(Message::Alarm(a)) => accounts.push(a.account.as_str()),
            Ok(Message::Ticket(t)) => tickets.push(t.key.as_str()),
            Err(_) => {}
        }
    }
    sql::lock_subjects(tx, &accounts, &tickets).await?;
    let mut out = Vec::with_capacity(batch.len());
    if sched.candidate.is_some() {
        for m in batch {
            out.push(
                decide_parsed(
                    &mut Tables::real(tx),
                    sched,
                    m.message_id,
                    m.parsed.clone(),
                    now_ms,
                )
                .await?,
            );
        }
        return Ok(out);
    }
    let planned: Vec<Planned<'_>> = batch
        .iter()
        .map(|m| Planned {
            message_id: Some(m.message_id),
            transport_id: m.transport_id,
            body: m.body,
            raw: m.raw,
            parsed: m.parsed,
        })
        .collect();
    let mut drawn = None;
    loop {
        let mut store = WriteBehind::load_stored(tx, &sched.policy, &planned, drawn.take()).await?;
        out.clear();
        for m in batch {
            out.push(
                decide_parsed(&mut store, sched, m.message_id, m.parsed.clone(), now_ms).await?,
            );
        }
        match store.needs() {
            // The counting pass: decide again with the ids the batch needs (none needed: its
            // rows are final as they are).
            Some((incidents, jobs)) if incidents + jobs > 0 => {
                drop(store);
                drawn = Some(WriteBehind::draw(tx, incidents, jobs).await?);
            }
            _ => {
                store.flush().await?;
                return Ok(out);
            }
        }
    }
}
