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

/// Serialises deciders of one message on Postgres (a duplicated task, two replicas) and
/// reads the decision already stored for it, in one round trip: the message's row lock, and
/// the decision joined to it. SQLite's `BEGIN IMMEDIATE` already serialises every writer.
pub async fn lock_decided(tx: &mut Tx, message_id: i64) -> Result<Option<Decision>, Error> {
    const LOCK_DECIDED: &str =
        "SELECT d.decision, d.kind, d.ticket_key, d.account, d.incident_id, d.job_id,
            d.duplicate_of, d.merged_incident_ids, d.reason
        FROM messages m LEFT JOIN decisions d ON d.message_id = m.id
        WHERE m.id = $1 FOR UPDATE OF m";
    match tx {
        Tx::Postgres(t) => {
            let row = sqlx::query(LOCK_DECIDED)
                .bind(message_id)
                .fetch_optional(&mut **t)
                .await?;
            match row {
                // No message (cannot happen: decide runs on a stored one), or no decision yet.
                Some(r) if r.try_get::<Option<String>, _>(0)?.is_some() => {
                    decision_from_row(&r).map(Some)
                }
                _ => Ok(None),
            }
        }
        Tx::Sqlite(_) => decision_of(tx, message_id).await,
    }
}

/// Serialises alarm decisions of one AWS account across replicas (Postgres advisory lock held
/// until the transaction ends). Other accounts decide in parallel.
/// The same lock a batch takes for the account ([`lock_subjects`]): one key format.
pub async fn lock_account(tx: &mut Tx, account: &str) -> Result<(), Error> {
    lock_subjects(tx, &[account], &[]).await
}

/// The locks a batch of decisions takes before it reads anything (Postgres; SQLite's write
/// lock already covers them): each AWS account's (the lock [`lock_account`] takes) and each
/// ticket key's, in one statement and in one order (sorted), so two batches never each hold a
/// lock the other waits for. With them held, what the batch loaded stays true until it
/// commits: other batches wait for it, and so does a lone decision about an alarm of those
/// accounts. A lone decision that stores one of the tickets first makes the batch's insert of
/// it fail (its unique key), and the batch is rolled back.
pub async fn lock_subjects(tx: &mut Tx, accounts: &[&str], tickets: &[&str]) -> Result<(), Error> {
    let Tx::Postgres(t) = tx else {
        return Ok(());
    };
    let mut keys: Vec<String> = accounts
        .iter()
        .map(|a| format!("conductor.account:{a}"))
        .chain(tickets.iter().map(|k| format!("conductor.ticket:{k}")))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    if keys.is_empty() {
        return Ok(());
    }
    // A function scan yields the array's elements in order, and each lock is taken as its row
    // comes.
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) FROM unnest($1::text[]) AS k",
    )
    .bind(&keys)
    .execute(&mut **t)
    .await?;
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

/// Whose tickets, alarms and incidents a [`Tables`] store reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// The real tables: what starts agents.
    Real,
    /// A candidate policy's own (`shadow_*`, rows keyed by the candidate's name), which
    /// nothing real reads ([`crate::scheduling::shadow`]).
    Candidate(&'a str),
}

/// The named queries of one scope's tables. Both scopes' tables have the same columns
/// (migration 0010), a candidate's with the `policy` they belong to, so each query is
/// written once here and given the table names and, for a candidate, the policy as its last
/// parameter.
struct Queries {
    insert_ticket: String,
    ticket_origin: String,
    insert_alarm: String,
    alarm_origin: String,
    open_incidents_near: String,
    open_incident: String,
    extend_incident: String,
    merge_mark: String,
    merge_move: String,
    mark_has_agent: String,
    set_alarm_incident: String,
}

impl Queries {
    /// `prefix` names the tables (`""` or `"shadow_"`); `scoped` adds the `policy` column.
    fn new(prefix: &str, scoped: bool) -> Queries {
        let (tickets, alarms, incidents) = (
            format!("{prefix}tickets"),
            format!("{prefix}alarms"),
            format!("{prefix}incidents"),
        );
        // After `n` other parameters: the candidate's rows are also matched by policy.
        let and = |n: usize, alias: &str| {
            if scoped {
                format!(" AND {alias}policy = ${}", n + 1)
            } else {
                String::new()
            }
        };
        // The unique key an insert conflicts on: a candidate's is per policy.
        let key = |k: &str| {
            if scoped {
                format!("policy, {k}")
            } else {
                k.to_owned()
            }
        };
        // `INSERT INTO table (cols[, policy]) VALUES (values[, $n+1]` (the caller closes it).
        let insert = |table: &str, cols: &str, n: usize, values: &str| {
            if scoped {
                format!(
                    "INSERT INTO {table} ({cols}, policy) VALUES ({values}, ${}",
                    n + 1
                )
            } else {
                format!("INSERT INTO {table} ({cols}) VALUES ({values}")
            }
        };
        Queries {
            insert_ticket: format!(
                "{}) ON CONFLICT ({}) DO NOTHING RETURNING key",
                insert(&tickets, "key, jira_id, project, summary, first_message_id, first_seen_ms", 6, "$1, $2, $3, $4, $5, $6"),
                key("key")
            ),
            // The job a ticket spawned is found through `agent_jobs.ticket_key` (unique)
            // rather than kept twice; a candidate's tickets never have one.
            ticket_origin: if scoped {
                format!("SELECT t.first_message_id, CAST(NULL AS BIGINT) FROM {tickets} t WHERE t.key = $1{}", and(1, "t."))
            } else {
                format!("SELECT t.first_message_id, j.id FROM {tickets} t LEFT JOIN agent_jobs j ON j.ticket_key = t.key WHERE t.key = $1")
            },
            insert_alarm: format!(
                "{}) ON CONFLICT ({}) DO NOTHING RETURNING id",
                insert(&alarms, "event_id, message_id, account, alarm_name, state, event_ms", 6, "$1, $2, $3, $4, $5, $6"),
                key("event_id")
            ),
            alarm_origin: format!("SELECT message_id, incident_id FROM {alarms} WHERE event_id = $1{}", and(1, "")),
            // Served by the partial index on `([policy,] account, last_event_ms)` of open
            // incidents: the cost depends on the incidents near `lo`, not on the history.
            open_incidents_near: format!(
                "SELECT i.id, i.first_event_ms, i.last_event_ms, i.alarm_name, i.has_agent FROM {incidents} i
                WHERE i.account = $1 AND i.merged_into IS NULL AND i.last_event_ms >= $2 AND i.first_event_ms <= $3{}
                ORDER BY i.id",
                and(3, "i.")
            ),
            open_incident: format!(
                "{}) RETURNING id",
                insert(&incidents, "account, alarm_name, first_event_ms, last_event_ms, opened_by_message_id, opened_ms", 5, "$1, $2, $3, $3, $4, $5")
            ),
            extend_incident: format!(
                "UPDATE {incidents} SET
                    first_event_ms = CASE WHEN $2 < first_event_ms THEN $2 ELSE first_event_ms END,
                    last_event_ms = CASE WHEN $3 > last_event_ms THEN $3 ELSE last_event_ms END,
                    alarm_count = alarm_count + $4
                WHERE id = $1"
            ),
            merge_mark: format!(
                "UPDATE {incidents} SET merged_into = $2, merged_by_message_id = $3, merged_ms = $4
                WHERE id = $1 AND merged_into IS NULL
                RETURNING first_event_ms, last_event_ms, alarm_count, has_agent"
            ),
            merge_move: format!("UPDATE {alarms} SET incident_id = $2 WHERE incident_id = $1"),
            mark_has_agent: format!("UPDATE {incidents} SET has_agent = TRUE WHERE id = $1"),
            set_alarm_incident: format!(
                "UPDATE {alarms} SET incident_id = $2, original_incident_id = $2 WHERE id = $1"
            ),
        }
    }
}

static REAL: std::sync::LazyLock<Queries> = std::sync::LazyLock::new(|| Queries::new("", false));
static CANDIDATE: std::sync::LazyLock<Queries> =
    std::sync::LazyLock::new(|| Queries::new("shadow_", true));

/// One store for tickets, alarms and incidents, on the real tables or a candidate's: the
/// same named queries, the same code, in the caller's transaction. The real decision and the
/// shadow candidate both decide through it.
pub struct Tables<'t> {
    tx: &'t mut Tx,
    scope: Scope<'t>,
}

/// Binds the candidate's name as a query's last parameter (the real scope has none).
macro_rules! scoped {
    ($scope:expr, $q:expr) => {
        match $scope {
            Scope::Real => $q,
            Scope::Candidate(policy) => $q.bind(policy),
        }
    };
}

impl<'t> Tables<'t> {
    pub fn new(tx: &'t mut Tx, scope: Scope<'t>) -> Tables<'t> {
        Tables { tx, scope }
    }

    /// The real tables: the live store.
    pub fn real(tx: &'t mut Tx) -> Tables<'t> {
        Tables::new(tx, Scope::Real)
    }

    fn queries(&self) -> &'static Queries {
        match self.scope {
            Scope::Real => &REAL,
            Scope::Candidate(_) => &CANDIDATE,
        }
    }

    /// "ticket", or "shadow ticket" of a candidate: for errors.
    fn what(&self, what: &str) -> String {
        match self.scope {
            Scope::Real => what.to_owned(),
            Scope::Candidate(p) => format!("{p}'s shadow {what}"),
        }
    }

    async fn mark_has_agent(&mut self, incident: i64) -> Result<(), Error> {
        let sql = sqlx::AssertSqlSafe(self.queries().mark_has_agent.as_str());
        with_conn!(&mut *self.tx, |c| sqlx::query(sql)
            .bind(incident)
            .execute(c)
            .await?
            .rows_affected());
        Ok(())
    }
}

/// Every query's text is one of the `Queries`', built from fixed table names.
impl State for Tables<'_> {
    async fn lock_account(&mut self, account: &str) -> Result<(), Error> {
        match self.scope {
            Scope::Real => lock_account(self.tx, account).await,
            // The real decision already holds this account's lock in this transaction.
            Scope::Candidate(_) => Ok(()),
        }
    }

    async fn insert_rejected(
        &mut self,
        message_id: i64,
        reason: &str,
        ms: i64,
    ) -> Result<(), Error> {
        match self.scope {
            Scope::Real => insert_rejected(self.tx, message_id, reason, ms).await,
            // A rejection is a property of the message, stored once by the real decision.
            Scope::Candidate(_) => Ok(()),
        }
    }

    /// On Postgres a concurrent first sighting makes this wait for that one to commit.
    async fn insert_ticket(&mut self, t: &Ticket, message_id: i64, ms: i64) -> Result<bool, Error> {
        let sql = sqlx::AssertSqlSafe(self.queries().insert_ticket.as_str());
        let scope = self.scope;
        let inserted: Option<String> = with_conn!(&mut *self.tx, |c| scoped!(
            scope,
            sqlx::query_scalar(sql)
                .bind(&t.key)
                .bind(t.jira_id.as_deref())
                .bind(t.project.as_deref())
                .bind(t.summary.as_deref())
                .bind(message_id)
                .bind(ms)
        )
        .fetch_optional(c)
        .await?);
        Ok(inserted.is_some())
    }

    async fn ticket_origin(&mut self, key: &str) -> Result<(i64, Option<i64>), Error> {
        let sql = sqlx::AssertSqlSafe(self.queries().ticket_origin.as_str());
        let scope = self.scope;
        let row: Option<(i64, Option<i64>)> = with_conn!(&mut *self.tx, |c| scoped!(
            scope,
            sqlx::query_as(sql).bind(key)
        )
        .fetch_optional(c)
        .await?);
        row.ok_or_else(|| Error::Corrupt(format!("{} {key} vanished", self.what("ticket"))))
    }

    async fn insert_alarm(&mut self, a: &Alarm, message_id: i64) -> Result<Option<i64>, Error> {
        let sql = sqlx::AssertSqlSafe(self.queries().insert_alarm.as_str());
        let scope = self.scope;
        Ok(with_conn!(&mut *self.tx, |c| scoped!(
            scope,
            sqlx::query_scalar(sql)
                .bind(&a.event_id)
                .bind(message_id)
                .bind(&a.account)
                .bind(&a.alarm_name)
                .bind(a.state.as_str())
                .bind(a.event_ms)
        )
        .fetch_optional(c)
        .await?))
    }

    async fn alarm_origin(&mut self, event_id: &str) -> Result<(i64, Option<i64>), Error> {
        let sql = sqlx::AssertSqlSafe(self.queries().alarm_origin.as_str());
        let scope = self.scope;
        let row: Option<(i64, Option<i64>)> = with_conn!(&mut *self.tx, |c| scoped!(
            scope,
            sqlx::query_as(sql).bind(event_id)
        )
        .fetch_optional(c)
        .await?);
        row.ok_or_else(|| {
            Error::Corrupt(format!("{} {event_id} vanished", self.what("alarm event")))
        })
    }

    async fn open_incidents_near(
        &mut self,
        account: &str,
        lo: i64,
        hi: i64,
    ) -> Result<Vec<IncidentSpan>, Error> {
        let sql = sqlx::AssertSqlSafe(self.queries().open_incidents_near.as_str());
        let scope = self.scope;
        let rows: Vec<(i64, i64, i64, Option<String>, bool)> =
            with_conn!(&mut *self.tx, |c| scoped!(
                scope,
                sqlx::query_as(sql).bind(account).bind(lo).bind(hi)
            )
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

    async fn open_incident(
        &mut self,
        account: &str,
        alarm_name: Option<&str>,
        event_ms: i64,
        message_id: i64,
        ms: i64,
    ) -> Result<i64, Error> {
        let sql = sqlx::AssertSqlSafe(self.queries().open_incident.as_str());
        let scope = self.scope;
        Ok(with_conn!(&mut *self.tx, |c| scoped!(
            scope,
            sqlx::query_scalar(sql)
                .bind(account)
                .bind(alarm_name)
                .bind(event_ms)
                .bind(message_id)
                .bind(ms)
        )
        .fetch_one(c)
        .await?))
    }

    async fn extend_incident(
        &mut self,
        id: i64,
        first: i64,
        last: i64,
        added: i64,
    ) -> Result<(), Error> {
        let sql = sqlx::AssertSqlSafe(self.queries().extend_incident.as_str());
        with_conn!(&mut *self.tx, |c| sqlx::query(sql)
            .bind(id)
            .bind(first)
            .bind(last)
            .bind(added)
            .execute(c)
            .await?
            .rows_affected());
        Ok(())
    }

    /// Also carries `other`'s agent over (`into` then has one: no second agent for the
    /// merged incident).
    async fn merge_incident(
        &mut self,
        into: i64,
        other: i64,
        message_id: i64,
        ms: i64,
    ) -> Result<(), Error> {
        let q = self.queries();
        let (mark, moves) = (
            sqlx::AssertSqlSafe(q.merge_mark.as_str()),
            sqlx::AssertSqlSafe(q.merge_move.as_str()),
        );
        let (first, last, count, has_agent): (i64, i64, i32, bool) =
            with_conn!(&mut *self.tx, |c| sqlx::query_as(mark)
                .bind(other)
                .bind(into)
                .bind(message_id)
                .bind(ms)
                .fetch_optional(&mut *c)
                .await?)
            .ok_or_else(|| {
                Error::Corrupt(format!("{} {other} is not open", self.what("incident")))
            })?;
        with_conn!(&mut *self.tx, |c| sqlx::query(moves)
            .bind(other)
            .bind(into)
            .execute(c)
            .await?
            .rows_affected());
        if has_agent {
            self.mark_has_agent(into).await?;
        }
        self.extend_incident(into, first, last, count as i64).await
    }

    async fn set_alarm_incident(&mut self, alarm_id: i64, incident: i64) -> Result<(), Error> {
        let sql = sqlx::AssertSqlSafe(self.queries().set_alarm_incident.as_str());
        with_conn!(&mut *self.tx, |c| sqlx::query(sql)
            .bind(alarm_id)
            .bind(incident)
            .execute(c)
            .await?
            .rows_affected());
        Ok(())
    }

    async fn insert_job(
        &mut self,
        kind: SubjectKind,
        ticket_key: Option<&str>,
        incident: Option<i64>,
        message_id: i64,
        ms: i64,
    ) -> Result<Option<i64>, Error> {
        match self.scope {
            Scope::Real => {
                let id = insert_job(self.tx, kind, ticket_key, incident, message_id, ms).await?;
                if let Some(incident) = incident {
                    self.mark_has_agent(incident).await?;
                }
                Ok(Some(id))
            }
            // A candidate's spawn is a decision only: no job, claim or worker ever exists
            // for it.
            Scope::Candidate(_) => Ok(None),
        }
    }
}

/// Creates the job a spawn decision asks for (its incident is marked as having its agent by
/// [`Tables::insert_job`]).
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
    Ok(with_conn!(tx, |c| sqlx::query_scalar(SQL)
        .bind(kind)
        .bind(ticket_key)
        .bind(incident)
        .bind(message_id)
        .bind(ms)
        .fetch_one(c)
        .await?))
}

/// The live store: the real scope's [`Tables`] with the messages and decisions beside them,
/// each call one named query in the transaction. (A candidate's `Tables` is only ever used as
/// its [`State`]: messages and decisions are the real decision's.)
impl Store for Tables<'_> {
    async fn insert_message(
        &mut self,
        transport_id: &str,
        source: &str,
        body: &str,
        raw: Option<&[u8]>,
        reuses: Option<i64>,
        received_ms: i64,
    ) -> Result<Ingested, Error> {
        insert_message(
            self.tx,
            transport_id,
            source,
            body,
            raw,
            reuses,
            received_ms,
        )
        .await
    }
    async fn lock_decided(&mut self, message_id: i64) -> Result<Option<Decision>, Error> {
        lock_decided(self.tx, message_id).await
    }
    async fn insert_decision(
        &mut self,
        message_id: i64,
        d: &Decision,
        policy: &str,
        decided_ms: i64,
    ) -> Result<(), Error> {
        insert_decision(self.tx, message_id, d, policy, decided_ms).await
    }
    fn candidate_tx(&mut self) -> Result<&mut Tx, Error> {
        Ok(self.tx)
    }
}
