//! Named queries over Conductor's scheduling tables, and the [`Store`] they make of a
//! transaction. Every function runs inside the caller's transaction; none commits. The SQL is
//! shared by both backends (see [`crate::db`]).

use sqlx::Row;

use crate::{
    db::Tx,
    error::Error,
    scheduling::domain::{Alarm, Decision, DecisionKind, Ingested, SubjectKind, Ticket},
    scheduling::policy::IncidentSpan,
    scheduling::store::{State, Store},
    with_conn,
};

/// Records a delivery: a new message, or one more delivery of a transport id seen before.
pub async fn insert_message(
    tx: &mut Tx,
    transport_id: &str,
    source: &str,
    body: &str,
    raw: Option<&[u8]>,
    reuses: Option<i64>,
    received_ms: i64,
) -> Result<Ingested, Error> {
    // A redelivery carries the same body; a transport id that comes back with another body
    // updates nothing and returns no row.
    const SQL: &str =
        "INSERT INTO messages (transport_id, source, body, raw, reuses, received_ms, last_delivered_ms)
        VALUES ($1, $2, $3, $4, $5, $6, $6)
        ON CONFLICT (transport_id) DO UPDATE
            SET deliveries = messages.deliveries + 1, last_delivered_ms = excluded.last_delivered_ms
            WHERE messages.body = excluded.body
        RETURNING id, deliveries";
    const OWNER: &str = "SELECT id FROM messages WHERE transport_id = $1";
    let (body, raw) = crate::scheduling::domain::storable_body(body, raw);
    let row: Option<(i64, i32)> = with_conn!(tx, |c| sqlx::query_as(SQL)
        .bind(transport_id)
        .bind(source)
        .bind(body.as_ref())
        .bind(raw)
        .bind(reuses)
        .bind(received_ms)
        .fetch_optional(c)
        .await?);
    let Some((id, deliveries)) = row else {
        let original_id: i64 = with_conn!(tx, |c| sqlx::query_scalar(OWNER)
            .bind(transport_id)
            .fetch_one(c)
            .await?);
        return Ok(Ingested::IdTaken { original_id });
    };
    Ok(if deliveries == 1 {
        Ingested::New { message_id: id }
    } else {
        Ingested::Redelivered { message_id: id }
    })
}

/// Serialises deciders of one message on Postgres (a duplicated task, two replicas); SQLite's
/// `BEGIN IMMEDIATE` already serialises every writer.
pub async fn lock_message(tx: &mut Tx, message_id: i64) -> Result<(), Error> {
    if let Tx::Postgres(t) = tx {
        sqlx::query("SELECT id FROM messages WHERE id = $1 FOR UPDATE")
            .bind(message_id)
            .execute(&mut **t)
            .await?;
    }
    Ok(())
}

/// Serialises alarm decisions of one AWS account across replicas (Postgres advisory lock held
/// until the transaction ends). Other accounts decide in parallel.
pub async fn lock_account(tx: &mut Tx, account: &str) -> Result<(), Error> {
    if let Tx::Postgres(t) = tx {
        sqlx::query(
            "SELECT pg_advisory_xact_lock(hashtextextended('conductor.account:' || $1, 0))",
        )
        .bind(account)
        .execute(&mut **t)
        .await?;
    }
    Ok(())
}

const DECISION_OF: &str = "SELECT decision, kind, ticket_key, account, incident_id, job_id, duplicate_of, merged_incident_ids, reason
    FROM decisions WHERE message_id = $1";

/// The decision already stored for a message, if any.
pub async fn decision_of(tx: &mut Tx, message_id: i64) -> Result<Option<Decision>, Error> {
    let row = with_conn!(tx, |c| {
        let row = sqlx::query(DECISION_OF)
            .bind(message_id)
            .fetch_optional(c)
            .await?;
        row.map(|r| decision_from_row(&r)).transpose()?
    });
    Ok(row)
}

/// [`decision_of`] on a bare SQLite connection (the write-behind store holds one).
pub async fn decision_of_conn(
    c: &mut sqlx::SqliteConnection,
    message_id: i64,
) -> Result<Option<Decision>, Error> {
    let row = sqlx::query(DECISION_OF)
        .bind(message_id)
        .fetch_optional(c)
        .await?;
    row.map(|r| decision_from_row(&r)).transpose()
}

/// `decisions.merged_incident_ids`: the merged ids as a comma-separated list, or NULL.
pub fn merged_ids(merged: &[i64]) -> Option<String> {
    (!merged.is_empty()).then(|| {
        merged
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(",")
    })
}

type DecisionTuple = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
);

/// Builds a [`Decision`] from a row whose first nine columns are those of `decision_of`.
pub fn decision_from_row<R: Row>(row: &R) -> Result<Decision, Error>
where
    DecisionTuple: for<'r> sqlx::FromRow<'r, R>,
{
    let (decision, kind, ticket_key, account, incident, job, duplicate_of, merged, reason) =
        <DecisionTuple as sqlx::FromRow<R>>::from_row(row)?;
    Ok(Decision {
        decision: DecisionKind::parse(&decision)
            .ok_or_else(|| Error::Corrupt(format!("unknown decision {decision:?}")))?,
        kind: match kind.as_deref() {
            Some("ticket") => Some(SubjectKind::Ticket),
            Some("alarm") => Some(SubjectKind::Alarm),
            _ => None,
        },
        ticket_key,
        account,
        incident,
        job,
        duplicate_of,
        merged: merged
            .map(|m| m.split(',').filter_map(|s| s.parse().ok()).collect())
            .unwrap_or_default(),
        reason,
    })
}

pub async fn insert_decision(
    tx: &mut Tx,
    message_id: i64,
    d: &Decision,
    policy: &str,
    decided_ms: i64,
) -> Result<(), Error> {
    const SQL: &str = "INSERT INTO decisions (message_id, decision, kind, ticket_key, account, incident_id, job_id,
            duplicate_of, merged_incident_ids, reason, policy, decided_ms)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";
    let merged = merged_ids(&d.merged);
    with_conn!(tx, |c| sqlx::query(SQL)
        .bind(message_id)
        .bind(d.decision.as_str())
        .bind(d.kind.map(SubjectKind::as_str))
        .bind(d.ticket_key.as_deref())
        .bind(d.account.as_deref())
        .bind(d.incident)
        .bind(d.job)
        .bind(d.duplicate_of)
        .bind(merged.as_deref())
        .bind(d.reason.as_deref())
        .bind(policy)
        .bind(decided_ms)
        .execute(c)
        .await?
        .rows_affected());
    Ok(())
}

pub async fn insert_rejected(
    tx: &mut Tx,
    message_id: i64,
    reason: &str,
    ms: i64,
) -> Result<(), Error> {
    const SQL: &str = "INSERT INTO rejected (message_id, reason, rejected_ms) VALUES ($1, $2, $3)";
    with_conn!(tx, |c| sqlx::query(SQL)
        .bind(message_id)
        .bind(reason)
        .bind(ms)
        .execute(c)
        .await?
        .rows_affected());
    Ok(())
}

/// Records the first sighting of a ticket identity. Returns false when it was seen before;
/// on Postgres a concurrent first sighting makes this wait for that one to commit.
pub async fn insert_ticket(
    tx: &mut Tx,
    t: &Ticket,
    message_id: i64,
    ms: i64,
) -> Result<bool, Error> {
    const SQL: &str =
        "INSERT INTO tickets (key, jira_id, project, summary, first_message_id, first_seen_ms)
        VALUES ($1, $2, $3, $4, $5, $6)
        ON CONFLICT (key) DO NOTHING
        RETURNING key";
    let inserted: Option<String> = with_conn!(tx, |c| sqlx::query_scalar(SQL)
        .bind(&t.key)
        .bind(t.jira_id.as_deref())
        .bind(t.project.as_deref())
        .bind(t.summary.as_deref())
        .bind(message_id)
        .bind(ms)
        .fetch_optional(c)
        .await?);
    Ok(inserted.is_some())
}

/// The first sighting of a ticket: its message, and the job it spawned (found through
/// `agent_jobs.ticket_key`, which is unique, rather than kept twice).
pub async fn ticket_origin(tx: &mut Tx, key: &str) -> Result<(i64, Option<i64>), Error> {
    const SQL: &str = "SELECT t.first_message_id, j.id FROM tickets t
        LEFT JOIN agent_jobs j ON j.ticket_key = t.key WHERE t.key = $1";
    let row: Option<(i64, Option<i64>)> = with_conn!(tx, |c| sqlx::query_as(SQL)
        .bind(key)
        .fetch_optional(c)
        .await?);
    row.ok_or_else(|| Error::Corrupt(format!("ticket {key} vanished")))
}

/// Stores an alarm event. Returns its row id, or None when the event id was seen before.
pub async fn insert_alarm(tx: &mut Tx, a: &Alarm, message_id: i64) -> Result<Option<i64>, Error> {
    const SQL: &str =
        "INSERT INTO alarms (event_id, message_id, account, alarm_name, state, event_ms)
        VALUES ($1, $2, $3, $4, $5, $6)
        ON CONFLICT (event_id) DO NOTHING
        RETURNING id";
    Ok(with_conn!(tx, |c| sqlx::query_scalar(SQL)
        .bind(&a.event_id)
        .bind(message_id)
        .bind(&a.account)
        .bind(&a.alarm_name)
        .bind(a.state.as_str())
        .bind(a.event_ms)
        .fetch_optional(c)
        .await?))
}

/// The message that first carried an alarm event id.
pub async fn alarm_origin(tx: &mut Tx, event_id: &str) -> Result<(i64, Option<i64>), Error> {
    const SQL: &str = "SELECT message_id, incident_id FROM alarms WHERE event_id = $1";
    let row: Option<(i64, Option<i64>)> = with_conn!(tx, |c| sqlx::query_as(SQL)
        .bind(event_id)
        .fetch_optional(c)
        .await?);
    row.ok_or_else(|| Error::Corrupt(format!("alarm event {event_id} vanished")))
}

/// Open (unmerged) incidents of an account whose alarm span overlaps `[lo, hi]`. Served by the
/// partial index on `(account, last_event_ms)`: the cost depends on the incidents near `lo`,
/// not on how much history is stored.
pub async fn open_incidents_near(
    tx: &mut Tx,
    account: &str,
    lo: i64,
    hi: i64,
) -> Result<Vec<IncidentSpan>, Error> {
    const SQL: &str = "SELECT i.id, i.first_event_ms, i.last_event_ms, i.alarm_name, i.has_agent
        FROM incidents i
        WHERE i.account = $1 AND i.merged_into IS NULL AND i.last_event_ms >= $2 AND i.first_event_ms <= $3
        ORDER BY i.id";
    let rows: Vec<(i64, i64, i64, Option<String>, bool)> = with_conn!(tx, |c| sqlx::query_as(SQL)
        .bind(account)
        .bind(lo)
        .bind(hi)
        .fetch_all(c)
        .await?);
    Ok(rows
        .into_iter()
        .map(
            |(id, first_ms, last_ms, alarm_name, has_job)| IncidentSpan {
                id,
                first_ms,
                last_ms,
                alarm_name,
                has_job,
            },
        )
        .collect())
}

pub async fn open_incident(
    tx: &mut Tx,
    account: &str,
    alarm_name: Option<&str>,
    event_ms: i64,
    message_id: i64,
    ms: i64,
) -> Result<i64, Error> {
    const SQL: &str = "INSERT INTO incidents (account, alarm_name, first_event_ms, last_event_ms, opened_by_message_id, opened_ms)
        VALUES ($1, $2, $3, $3, $4, $5) RETURNING id";
    Ok(with_conn!(tx, |c| sqlx::query_scalar(SQL)
        .bind(account)
        .bind(alarm_name)
        .bind(event_ms)
        .bind(message_id)
        .bind(ms)
        .fetch_one(c)
        .await?))
}

/// Widens an incident's span to cover `[first, last]` and counts `added` more alarms.
pub async fn extend_incident(
    tx: &mut Tx,
    id: i64,
    first: i64,
    last: i64,
    added: i64,
) -> Result<(), Error> {
    const SQL: &str = "UPDATE incidents SET
            first_event_ms = CASE WHEN $2 < first_event_ms THEN $2 ELSE first_event_ms END,
            last_event_ms = CASE WHEN $3 > last_event_ms THEN $3 ELSE last_event_ms END,
            alarm_count = alarm_count + $4
        WHERE id = $1";
    with_conn!(tx, |c| sqlx::query(SQL)
        .bind(id)
        .bind(first)
        .bind(last)
        .bind(added)
        .execute(c)
        .await?
        .rows_affected());
    Ok(())
}

/// Folds `other` into `into`: marks it merged, moves its alarms, widens `into`, and carries
/// `other`'s agent over (`into` then has one: no second agent for the merged incident).
pub async fn merge_incident(
    tx: &mut Tx,
    into: i64,
    other: i64,
    message_id: i64,
    ms: i64,
) -> Result<(), Error> {
    const MARK: &str =
        "UPDATE incidents SET merged_into = $2, merged_by_message_id = $3, merged_ms = $4
        WHERE id = $1 AND merged_into IS NULL
        RETURNING first_event_ms, last_event_ms, alarm_count, has_agent";
    const MOVE: &str = "UPDATE alarms SET incident_id = $2 WHERE incident_id = $1";
    let (first, last, count, has_agent): (i64, i64, i32, bool) =
        with_conn!(tx, |c| sqlx::query_as(MARK)
            .bind(other)
            .bind(into)
            .bind(message_id)
            .bind(ms)
            .fetch_optional(&mut *c)
            .await?)
        .ok_or_else(|| Error::Corrupt(format!("incident {other} is not open")))?;
    with_conn!(tx, |c| sqlx::query(MOVE)
        .bind(other)
        .bind(into)
        .execute(c)
        .await?
        .rows_affected());
    if has_agent {
        mark_has_agent(tx, into).await?;
    }
    extend_incident(tx, into, first, last, count as i64).await
}

async fn mark_has_agent(tx: &mut Tx, incident: i64) -> Result<(), Error> {
    const SQL: &str = "UPDATE incidents SET has_agent = TRUE WHERE id = $1";
    with_conn!(tx, |c| sqlx::query(SQL)
        .bind(incident)
        .execute(c)
        .await?
        .rows_affected());
    Ok(())
}

pub async fn set_alarm_incident(tx: &mut Tx, alarm_id: i64, incident: i64) -> Result<(), Error> {
    const SQL: &str = "UPDATE alarms SET incident_id = $2, original_incident_id = $2 WHERE id = $1";
    with_conn!(tx, |c| sqlx::query(SQL)
        .bind(alarm_id)
        .bind(incident)
        .execute(c)
        .await?
        .rows_affected());
    Ok(())
}

/// Creates the job a spawn decision asks for; an incident's job marks the incident as having
/// its agent.
pub async fn insert_job(
    tx: &mut Tx,
    kind: SubjectKind,
    ticket_key: Option<&str>,
    incident: Option<i64>,
    message_id: i64,
    ms: i64,
) -> Result<i64, Error> {
    const SQL: &str =
        "INSERT INTO agent_jobs (kind, ticket_key, incident_id, message_id, created_ms, updated_ms)
        VALUES ($1, $2, $3, $4, $5, $5) RETURNING id";
    let kind = match kind {
        SubjectKind::Ticket => "ticket",
        SubjectKind::Alarm => "incident",
    };
    let id = with_conn!(tx, |c| sqlx::query_scalar(SQL)
        .bind(kind)
        .bind(ticket_key)
        .bind(incident)
        .bind(message_id)
        .bind(ms)
        .fetch_one(c)
        .await?);
    if let Some(incident) = incident {
        mark_has_agent(tx, incident).await?;
    }
    Ok(id)
}

/// The live store: each call is one named query in the transaction.
impl Store for Tx {
    async fn insert_message(
        &mut self,
        transport_id: &str,
        source: &str,
        body: &str,
        raw: Option<&[u8]>,
        reuses: Option<i64>,
        received_ms: i64,
    ) -> Result<Ingested, Error> {
        insert_message(self, transport_id, source, body, raw, reuses, received_ms).await
    }
    async fn lock_message(&mut self, message_id: i64) -> Result<(), Error> {
        lock_message(self, message_id).await
    }
    async fn decision_of(&mut self, message_id: i64) -> Result<Option<Decision>, Error> {
        decision_of(self, message_id).await
    }
    async fn insert_decision(
        &mut self,
        message_id: i64,
        d: &Decision,
        policy: &str,
        decided_ms: i64,
    ) -> Result<(), Error> {
        insert_decision(self, message_id, d, policy, decided_ms).await
    }
    fn candidate_tx(&mut self) -> Result<&mut Tx, Error> {
        Ok(self)
    }
}

/// The real tables' state: each call is one named query in the transaction.
impl State for Tx {
    async fn lock_account(&mut self, account: &str) -> Result<(), Error> {
        lock_account(self, account).await
    }
    async fn insert_rejected(
        &mut self,
        message_id: i64,
        reason: &str,
        ms: i64,
    ) -> Result<(), Error> {
        insert_rejected(self, message_id, reason, ms).await
    }
    async fn insert_ticket(&mut self, t: &Ticket, message_id: i64, ms: i64) -> Result<bool, Error> {
        insert_ticket(self, t, message_id, ms).await
    }
    async fn ticket_origin(&mut self, key: &str) -> Result<(i64, Option<i64>), Error> {
        ticket_origin(self, key).await
    }
    async fn insert_alarm(&mut self, a: &Alarm, message_id: i64) -> Result<Option<i64>, Error> {
        insert_alarm(self, a, message_id).await
    }
    async fn alarm_origin(&mut self, event_id: &str) -> Result<(i64, Option<i64>), Error> {
        alarm_origin(self, event_id).await
    }
    async fn open_incidents_near(
        &mut self,
        account: &str,
        lo: i64,
        hi: i64,
    ) -> Result<Vec<IncidentSpan>, Error> {
        open_incidents_near(self, account, lo, hi).await
    }
    async fn open_incident(
        &mut self,
        account: &str,
        alarm_name: Option<&str>,
        event_ms: i64,
        message_id: i64,
        ms: i64,
    ) -> Result<i64, Error> {
        open_incident(self, account, alarm_name, event_ms, message_id, ms).await
    }
    async fn extend_incident(
        &mut self,
        id: i64,
        first: i64,
        last: i64,
        added: i64,
    ) -> Result<(), Error> {
        extend_incident(self, id, first, last, added).await
    }
    async fn merge_incident(
        &mut self,
        into: i64,
        other: i64,
        message_id: i64,
        ms: i64,
    ) -> Result<(), Error> {
        merge_incident(self, into, other, message_id, ms).await
    }
    async fn set_alarm_incident(&mut self, alarm_id: i64, incident: i64) -> Result<(), Error> {
        set_alarm_incident(self, alarm_id, incident).await
    }
    async fn insert_job(
        &mut self,
        kind: SubjectKind,
        ticket_key: Option<&str>,
        incident: Option<i64>,
        message_id: i64,
        ms: i64,
    ) -> Result<Option<i64>, Error> {
        insert_job(self, kind, ticket_key, incident, message_id, ms)
            .await
            .map(Some)
    }
}
