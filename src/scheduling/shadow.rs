//! Shadow scheduling (docs/design.md §8): a candidate policy decides every message beside the
//! authoritative one, on its own state, and the pair is stored with a verdict.
//!
//! The candidate runs [`crate::scheduling::decide::decision::apply`], the very code of the
//! real decision, on the very store of the real decision in the candidate's scope
//! ([`Tables`] with [`Scope::Candidate`]): the same named queries on tables keyed by the
//! candidate's name (`shadow_tickets`, `shadow_alarms`, `shadow_incidents`) that nothing real
//! reads. It decides as if it were authoritative with
//! `incidents = on`, and it creates no jobs, claims or workers: a spawn is only a decision.
//!
//! It runs in the real decision's transaction, after the real decision is stored, inside a
//! savepoint. Whatever fails there (a query, a missing table, an unknown candidate) rolls back
//! to the savepoint only, and an `ERROR` row records why; the real decision commits as it
//! would have without the candidate. Being in that transaction also makes the pair exact and
//! crash-safe: a message's evaluation commits with its decision or not at all, once.
//!
//! A candidate starts from empty state each time it is set (`conductor flags set` clears it),
//! so its first window of decisions after that is a warm-up: a ticket or incident it never saw
//! looks new to it.

use serde::Serialize;

use crate::{
    db::{Db, Tx},
    error::Error,
    scheduling::decide::decision,
    scheduling::domain::{Decision, DecisionKind, Message, Rejection},
    scheduling::flags::Incidents,
    scheduling::policy::Policy,
    scheduling::store::sql::{Scope, Tables},
    with_conn, with_pool,
};

/// What one evaluation compares: the candidate's decision of a message against the
/// authoritative decision just stored for it.
pub struct Evaluation<'a> {
    /// The candidate, or why this replica cannot resolve it.
    pub candidate: &'a Result<Policy, String>,
    pub authoritative_policy: &'a Policy,
    pub incidents: Incidents,
    pub message_id: i64,
    pub parsed: &'a Result<Message, Rejection>,
    pub authoritative: &'a Decision,
    pub now_ms: i64,
    /// How long one of the candidate's statements may run (Postgres; see [`evaluate`]).
    pub timeout: std::time::Duration,
}

/// How a candidate's decision compares with the authoritative one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Verdict {
    /// The same decision.
    Agree,
    /// Both spawn, or both do not, but they decide differently: chained against merged, or
    /// chained into a different incident (one another alarm opened).
    Diverge,
    /// The authoritative policy spawns; the candidate would not.
    CandidateEmpty,
    /// The candidate would spawn; the authoritative policy does not.
    AuthoritativeEmpty,
    /// The candidate failed; the real decision was unaffected.
    Error,
}

impl Verdict {
    pub const ALL: [Verdict; 5] = [
        Verdict::Agree,
        Verdict::Diverge,
        Verdict::CandidateEmpty,
        Verdict::AuthoritativeEmpty,
        Verdict::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Agree => "AGREE",
            Verdict::Diverge => "DIVERGE",
            Verdict::CandidateEmpty => "CANDIDATE_EMPTY",
            Verdict::AuthoritativeEmpty => "AUTHORITATIVE_EMPTY",
            Verdict::Error => "ERROR",
        }
    }

    /// Compares two decisions of one message. A spawn is a spawn whether or not a job was
    /// started for it (`incidents = shadow` decides spawns without agents).
    ///
    /// `openers` are, when both chain or both merge, the messages that opened the incident
    /// each joins: the two policies keep separate incidents with their own ids, so the alarm
    /// that opened one is what says whether they are the same incident. Joining different
    /// ones (a candidate that split the real incident, or grouped by alarm name) diverges.
    pub fn of(
        authoritative: &Decision,
        candidate: &Decision,
        openers: Option<IncidentOpeners>,
    ) -> Verdict {
        let spawn = |d: &Decision| d.decision == DecisionKind::Spawn;
        match (spawn(authoritative), spawn(candidate)) {
            (true, false) => Verdict::CandidateEmpty,
            (false, true) => Verdict::AuthoritativeEmpty,
            _ if authoritative.decision != candidate.decision => Verdict::Diverge,
            _ if openers.is_some_and(|o| o.authoritative != o.candidate) => Verdict::Diverge,
            _ => Verdict::Agree,
        }
    }
}

/// The messages that opened the incident the authoritative decision and the candidate's
/// each joined (see [`Verdict::of`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IncidentOpeners {
    pub authoritative: i64,
    pub candidate: i64,
}

/// The openers of the incidents two decisions of one message join, when both chain or both
/// merge; None otherwise (a spawn opens its own, other decisions join none).
async fn incident_openers(
    tx: &mut Tx,
    authoritative: &Decision,
    candidate: &Decision,
) -> Result<Option<IncidentOpeners>, Error> {
    const SQL: &str = "SELECT
            (SELECT opened_by_message_id FROM incidents WHERE id = $1),
            (SELECT opened_by_message_id FROM shadow_incidents WHERE id = $2)";
    let joins = matches!(
        authoritative.decision,
        DecisionKind::Chained | DecisionKind::Merged
    ) && authoritative.decision == candidate.decision;
    let (Some(real), Some(shadow), true) = (authoritative.incident, candidate.incident, joins)
    else {
        return Ok(None);
    };
    let row: (Option<i64>, Option<i64>) = with_conn!(tx, |c| sqlx::query_as(SQL)
        .bind(real)
        .bind(shadow)
        .fetch_one(c)
        .await?);
    match row {
        (Some(authoritative), Some(candidate)) => Ok(Some(IncidentOpeners {
            authoritative,
            candidate,
        })),
        _ => Err(Error::Corrupt(format!(
            "incident {real} or shadow incident {shadow} is missing"
        ))),
    }
}

const SAVEPOINT: &str = "SAVEPOINT conductor_shadow";
const RELEASE: &str = "RELEASE SAVEPOINT conductor_shadow";
const ROLLBACK: &str = "ROLLBACK TO SAVEPOINT conductor_shadow";

async fn exec(tx: &mut Tx, sql: &'static str) -> Result<(), Error> {
    with_conn!(tx, |c| sqlx::query(sql).execute(c).await?.rows_affected());
    Ok(())
}

/// Lets the candidate decide and stores the pair with its verdict, in `tx` after the real
/// decision. Returns an error only when the savepoint itself cannot be taken or undone (the
/// connection is gone, and the real decision with it); any other failure becomes an `ERROR`
/// row.
///
/// On Postgres each of the candidate's statements runs under `statement_timeout` =
/// `e.timeout`, set for the transaction inside the savepoint and reset to the connection's
/// own value before it is released (a rollback to the savepoint undoes it by itself), so the
/// real decision's statements are not limited. Both ride on the savepoint's own round trips.
/// A candidate waiting on a lock is cancelled, not waited for. On SQLite the transaction
/// already holds the database's only write lock, so the candidate never waits on another
/// writer.
pub async fn evaluate(tx: &mut Tx, e: &Evaluation<'_>) -> Result<(), Error> {
    open_savepoint(tx, e.timeout).await?;
    let outcome = match e.candidate {
        Ok(candidate) => decide_and_record(tx, candidate, e).await,
        Err(why) => Err(Error::Mismatch(why.clone())),
    };
    match outcome {
        Ok(()) => release_bounded_savepoint(tx).await,
        Err(err) => {
            exec(tx, ROLLBACK).await?;
            let name = match e.candidate {
                Ok(c) => c.name.as_str(),
                Err(_) => "(unresolved)",
            };
            tracing::warn!(message_id = e.message_id, candidate = name, error = %err, "candidate policy failed; the real decision stands");
            // The error row gets its own attempt: if even that fails (the table is gone),
            // the real decision still commits.
            match record(tx, e, name, None, &err.to_string()).await {
                Ok(()) => exec(tx, RELEASE).await,
                Err(again) => {
                    tracing::error!(message_id = e.message_id, error = %again, "cannot record the candidate's failure");
                    exec(tx, ROLLBACK).await?;
                    exec(tx, RELEASE).await
                }
            }
        }
    }
}

/// Takes the candidate's savepoint; on Postgres, in the same round trip, limits the
/// statements that follow to `timeout` (see [`evaluate`]).
async fn open_savepoint(tx: &mut Tx, timeout: std::time::Duration) -> Result<(), Error> {
    match tx {
        Tx::Postgres(t) => {
            // Only an integer is formatted in: nothing from outside reaches this text.
            let sql = format!(
                "{SAVEPOINT}; SET LOCAL statement_timeout = {}",
                timeout.as_millis().max(1)
            );
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut **t)
                .await?;
            Ok(())
        }
        Tx::Sqlite(_) => exec(tx, SAVEPOINT).await,
    }
}

/// Releases the savepoint of an evaluation that succeeded; on Postgres the rest of the
/// transaction first goes back to the connection's own `statement_timeout`.
async fn release_bounded_savepoint(tx: &mut Tx) -> Result<(), Error> {
    const UNBOUND_AND_RELEASE: &str =
        "SET LOCAL statement_timeout TO DEFAULT; RELEASE SAVEPOINT conductor_shadow";
    match tx {
        Tx::Postgres(t) => {
            sqlx::raw_sql(UNBOUND_AND_RELEASE).execute(&mut **t).await?;
            Ok(())
        }
        Tx::Sqlite(_) => exec(tx, RELEASE).await,
    }
}

async fn decide_and_record(
    tx: &mut Tx,
    candidate: &Policy,
    e: &Evaluation<'_>,
) -> Result<(), Error> {
    crate::failpoint::hit("shadow.decide");
    let decision = {
        let mut state = Tables::new(&mut *tx, Scope::Candidate(&candidate.name));
        decision::apply(
            &mut state,
            candidate,
            Incidents::On,
            e.message_id,
            e.parsed,
            e.now_ms,
        )
        .await?
    };
    let openers = incident_openers(tx, e.authoritative, &decision).await?;
    record(tx, e, &candidate.name, Some((&decision, openers)), "").await
}

const INSERT_EVALUATION: &str =
    "INSERT INTO shadow_evaluations (message_id, candidate, candidate_spec,
        authoritative_policy, incidents, verdict, authoritative_decision, candidate_decision,
        authoritative_detail, candidate_detail, error, evaluated_ms)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";

async fn record(
    tx: &mut Tx,
    e: &Evaluation<'_>,
    name: &str,
    candidate: Option<(&Decision, Option<IncidentOpeners>)>,
    error: &str,
) -> Result<(), Error> {
    let openers = candidate.and_then(|(_, o)| o);
    let verdict = candidate.map_or(Verdict::Error, |(c, o)| Verdict::of(e.authoritative, c, o));
    let spec = match e.candidate {
        Ok(c) => c.spec.to_string(),
        Err(_) => String::new(),
    };
    // The stored pair names the message that opened each joined incident, so a DIVERGE
    // between two `chained` decisions reads as what it is.
    let detail = |d: &Decision, opener: Option<i64>| {
        let mut v = serde_json::to_value(d).expect("a decision serialises");
        if let (Some(opener), Some(map)) = (opener, v.as_object_mut()) {
            map.insert("incident_opened_by".into(), opener.into());
        }
        v.to_string()
    };
    let candidate = candidate.map(|(c, _)| c);
    with_conn!(tx, |c| sqlx::query(INSERT_EVALUATION)
        .bind(e.message_id)
        .bind(name)
        .bind(&spec)
        .bind(&e.authoritative_policy.name)
        .bind(e.incidents.as_str())
        .bind(verdict.as_str())
        .bind(e.authoritative.decision.as_str())
        .bind(candidate.map(|d| d.decision.as_str()))
        .bind(detail(e.authoritative, openers.map(|o| o.authoritative)))
        .bind(candidate.map(|c| detail(c, openers.map(|o| o.candidate))))
        .bind((!error.is_empty()).then_some(error))
        .bind(e.now_ms)
        .execute(c)
        .await?
        .rows_affected());
    // Counted when stored, before the decision's commit: a rolled-back decision is decided
    // again, so the count runs ahead by at most its retries.
    crate::telemetry::shadow_verdict(verdict.as_str());
    Ok(())
}

/// Counts of one candidate's evaluations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub candidate: String,
    pub candidate_spec: String,
    pub evaluated: i64,
    pub agree: i64,
    pub diverge: i64,
    pub candidate_empty: i64,
    pub authoritative_empty: i64,
    pub error: i64,
    /// Spawns the authoritative policy decided over the evaluated messages.
    pub authoritative_spawns: i64,
    /// Spawns the candidate would have decided.
    pub candidate_spawns: i64,
}

impl Counts {
    /// AGREE over the evaluations that did not fail (None when there are none).
    pub fn agreement(&self) -> Option<f64> {
        let decided = self.evaluated - self.error;
        (decided > 0).then(|| self.agree as f64 / decided as f64)
    }
}

/// One stored evaluation, as the report lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    pub message_id: i64,
    pub transport_id: String,
    pub candidate: String,
    pub verdict: String,
    pub authoritative: serde_json::Value,
    pub candidate_decision: Option<serde_json::Value>,
    pub error: Option<String>,
    pub evaluated_ms: i64,
}

/// `conductor shadow-report`: per candidate counts, and the latest non-agreements.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub candidates: Vec<Counts>,
    /// The latest evaluations that did not AGREE (errors included), newest first.
    pub divergences: Vec<Row>,
}

const COUNTS: &str = "SELECT candidate, MAX(candidate_spec),
        CAST(COUNT(*) AS BIGINT),
        CAST(SUM(CASE WHEN verdict = 'AGREE' THEN 1 ELSE 0 END) AS BIGINT),
        CAST(SUM(CASE WHEN verdict = 'DIVERGE' THEN 1 ELSE 0 END) AS BIGINT),
        CAST(SUM(CASE WHEN verdict = 'CANDIDATE_EMPTY' THEN 1 ELSE 0 END) AS BIGINT),
        CAST(SUM(CASE WHEN verdict = 'AUTHORITATIVE_EMPTY' THEN 1 ELSE 0 END) AS BIGINT),
        CAST(SUM(CASE WHEN verdict = 'ERROR' THEN 1 ELSE 0 END) AS BIGINT),
        CAST(SUM(CASE WHEN authoritative_decision = 'spawn' THEN 1 ELSE 0 END) AS BIGINT),
        CAST(SUM(CASE WHEN candidate_decision = 'spawn' THEN 1 ELSE 0 END) AS BIGINT)
    FROM shadow_evaluations
    WHERE ($1 = '' OR candidate = $1) AND evaluated_ms >= $2
    GROUP BY candidate ORDER BY candidate";

const LAST_DIVERGENCES: &str = "SELECT e.message_id, m.transport_id, e.candidate, e.verdict,
        e.authoritative_detail, e.candidate_detail, e.error, e.evaluated_ms
    FROM shadow_evaluations e JOIN messages m ON m.id = e.message_id
    WHERE ($1 = '' OR e.candidate = $1) AND e.evaluated_ms >= $2 AND e.verdict <> 'AGREE'
    ORDER BY e.message_id DESC LIMIT $3";

/// Summarises the stored evaluations of `candidate` (all when None) evaluated at or after
/// `since_ms`, with the `last` latest non-agreements.
pub async fn report(
    db: &Db,
    candidate: Option<&str>,
    since_ms: i64,
    last: i64,
) -> Result<Report, Error> {
    type CountRow = (String, String, i64, i64, i64, i64, i64, i64, i64, i64);
    type DetailRow = (
        i64,
        String,
        String,
        String,
        String,
        Option<String>,
        Option<String>,
        i64,
    );
    let filter = candidate.unwrap_or("");
    let counts: Vec<CountRow> = with_pool!(db, |p| sqlx::query_as(COUNTS)
        .bind(filter)
        .bind(since_ms)
        .fetch_all(p)
        .await?);
    let rows: Vec<DetailRow> = with_pool!(db, |p| sqlx::query_as(LAST_DIVERGENCES)
        .bind(filter)
        .bind(since_ms)
        .bind(last)
        .fetch_all(p)
        .await?);
    let json = |text: &str| -> Result<serde_json::Value, Error> {
        serde_json::from_str(text)
            .map_err(|e| Error::Corrupt(format!("a stored shadow decision is not JSON: {e}")))
    };
    let mut divergences = Vec::with_capacity(rows.len());
    for (message_id, transport_id, candidate, verdict, a, c, error, evaluated_ms) in rows {
        divergences.push(Row {
            message_id,
            transport_id,
            candidate,
            verdict,
            authoritative: json(&a)?,
            candidate_decision: c.as_deref().map(json).transpose()?,
            error,
            evaluated_ms,
        });
    }
    Ok(Report {
        candidates: counts
            .into_iter()
            .map(
                |(
                    candidate,
                    candidate_spec,
                    evaluated,
                    agree,
                    diverge,
                    ce,
                    ae,
                    error,
                    a_sp,
                    c_sp,
                )| Counts {
                    candidate,
                    candidate_spec,
                    evaluated,
                    agree,
                    diverge,
                    candidate_empty: ce,
                    authoritative_empty: ae,
                    error,
                    authoritative_spawns: a_sp,
                    candidate_spawns: c_sp,
                },
            )
            .collect(),
        divergences,
    })
}

/// The last message id evaluated so far (0 when none): [`verdict_counts`] after it counts
/// what came since.
pub async fn evaluations_up_to(db: &Db) -> Result<i64, Error> {
    const SQL: &str = "SELECT CAST(COALESCE(MAX(message_id), 0) AS BIGINT) FROM shadow_evaluations";
    Ok(with_pool!(db, |p| sqlx::query_scalar(SQL)
        .fetch_one(p)
        .await?))
}

/// Verdict counts of the evaluations of messages after `after_message_id`.
pub async fn verdict_counts(
    db: &Db,
    after_message_id: i64,
) -> Result<std::collections::BTreeMap<String, i64>, Error> {
    const SQL: &str = "SELECT verdict, CAST(COUNT(*) AS BIGINT) FROM shadow_evaluations
        WHERE message_id > $1 GROUP BY verdict";
    let rows: Vec<(String, i64)> = with_pool!(db, |p| sqlx::query_as(SQL)
        .bind(after_message_id)
        .fetch_all(p)
        .await?);
    Ok(rows.into_iter().collect())
}

/// One decision in a line: `spawn incident 4`, `chained incident 2`, `duplicate of 17`.
fn brief(d: &serde_json::Value) -> String {
    let field = |k: &str| d.get(k).filter(|v| !v.is_null());
    let mut out = field("decision")
        .and_then(|v| v.as_str())
        .unwrap_or("?")
        .to_owned();
    if let Some(i) = field("incident") {
        out.push_str(&format!(" incident {i}"));
    }
    if let Some(m) = field("incident_opened_by") {
        out.push_str(&format!(" (opened by message {m})"));
    }
    if let Some(j) = field("job") {
        out.push_str(&format!(" job {j}"));
    }
    if let Some(m) = field("merged")
        .and_then(|m| m.as_array())
        .filter(|m| !m.is_empty())
    {
        let ids: Vec<String> = m.iter().map(|v| v.to_string()).collect();
        out.push_str(&format!(" (merged {})", ids.join(",")));
    }
    out
}

impl Report {
    /// The report as a table for people.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        if self.candidates.is_empty() {
            let _ = writeln!(
                out,
                "no shadow evaluations stored (is a candidate set? `conductor flags`)"
            );
            return out;
        }
        for c in &self.candidates {
            let rate = c
                .agreement()
                .map(|r| format!("{:.2}%", r * 100.0))
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(out, "candidate {} ({})", c.candidate, c.candidate_spec);
            let _ = writeln!(
                out,
                "  evaluated {}  AGREE {}  DIVERGE {}  CANDIDATE_EMPTY {}  AUTHORITATIVE_EMPTY {}  ERROR {}",
                c.evaluated, c.agree, c.diverge, c.candidate_empty, c.authoritative_empty, c.error
            );
            let _ = writeln!(
                out,
                "  agreement {rate} (AGREE of evaluations without error)"
            );
            let _ = writeln!(
                out,
                "  spawns: authoritative {}, candidate {}",
                c.authoritative_spawns, c.candidate_spawns
            );
        }
        if !self.divergences.is_empty() {
            let _ = writeln!(out, "\nlatest divergences (newest first):");
            let _ = writeln!(
                out,
                "{:<38} {:<20} {:<20} {:<46} candidate",
                "message", "candidate", "verdict", "authoritative"
            );
            for r in &self.divergences {
                let c = match (&r.candidate_decision, &r.error) {
                    (Some(d), _) => brief(d),
                    (None, Some(e)) => format!("error: {e}"),
                    (None, None) => "-".into(),
                };
                let subject = r
                    .authoritative
                    .get("ticket_key")
                    .or_else(|| r.authoritative.get("account"))
                    .and_then(|v| v.as_str())
                    .unwrap_or("");
                let _ = writeln!(
                    out,
                    "{:<38} {:<20} {:<20} {:<46} {c}",
                    format!("{} {subject}", r.transport_id),
                    r.candidate,
                    r.verdict,
                    brief(&r.authoritative)
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduling::domain::SubjectKind;

    fn d(kind: DecisionKind) -> Decision {
        Decision::new(kind, Some(SubjectKind::Alarm))
    }

    #[test]
    fn verdicts() {
        use DecisionKind::*;
        let same = Some(IncidentOpeners {
            authoritative: 7,
            candidate: 7,
        });
        let other = Some(IncidentOpeners {
            authoritative: 7,
            candidate: 9,
        });
        assert_eq!(Verdict::of(&d(Spawn), &d(Spawn), None), Verdict::Agree);
        assert_eq!(Verdict::of(&d(Chained), &d(Chained), same), Verdict::Agree);
        assert_eq!(
            Verdict::of(&d(Chained), &d(Chained), other),
            Verdict::Diverge
        );
        assert_eq!(Verdict::of(&d(Merged), &d(Merged), other), Verdict::Diverge);
        assert_eq!(Verdict::of(&d(Chained), &d(Merged), None), Verdict::Diverge);
        assert_eq!(
            Verdict::of(&d(Chained), &d(Ignored), None),
            Verdict::Diverge
        );
        assert_eq!(
            Verdict::of(&d(Spawn), &d(Chained), None),
            Verdict::CandidateEmpty
        );
        assert_eq!(
            Verdict::of(&d(Ignored), &d(Spawn), None),
            Verdict::AuthoritativeEmpty
        );
    }
}
