//! `conductor history`: prints the job history views (migrations `0002_history_views.sql`)
//! for a message, a ticket, an incident, a job or a workflow run. The same views are what
//! `docs/queries.md` queries by hand.

use sqlx::{Column, Row};

use crate::{db::Db, error::Error, with_pool};

/// What to show the history of.
#[derive(Debug, Clone)]
pub enum Subject {
    /// A message, by transport id or internal id.
    Message(String),
    /// A message by internal id only.
    MessageId(i64),
    Ticket(String),
    Incident(i64),
    Job(i64),
    Run(i64),
    /// The latest messages.
    Recent(i64),
    /// How many messages got each decision.
    DecisionCounts,
    /// Agent time by account and UTC day (the latest 60 days), one account's or all.
    AgentTime(Option<String>),
}

/// A titled list of rows, each a list of (column, value).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Section {
    pub title: String,
    pub rows: Vec<Vec<(String, String)>>,
}

fn cell<R: Row>(row: &R, i: usize) -> String
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i32>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<f64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<bool>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    if let Ok(v) = row.try_get::<Option<i64>, _>(i) {
        return v.map(|v| v.to_string()).unwrap_or_default();
    }
    // Postgres INTEGER columns (counts, attempts) are 32-bit and refuse an i64 read.
    if let Ok(v) = row.try_get::<Option<i32>, _>(i) {
        return v.map(|v| v.to_string()).unwrap_or_default();
    }
    if let Ok(v) = row.try_get::<Option<String>, _>(i) {
        return v.unwrap_or_default();
    }
    if let Ok(v) = row.try_get::<Option<f64>, _>(i) {
        return v.map(|v| v.to_string()).unwrap_or_default();
    }
    if let Ok(v) = row.try_get::<Option<bool>, _>(i) {
        return v.map(|v| v.to_string()).unwrap_or_default();
    }
    "?".into()
}

/// The one parameter of a history query.
enum Arg<'a> {
    None,
    Text(&'a str),
    Int(i64),
}

async fn section(db: &Db, title: &str, sql: &'static str, arg: Arg<'_>) -> Result<Section, Error> {
    let rows = with_pool!(db, |p| {
        let query = match arg {
            Arg::None => sqlx::query(sql),
            Arg::Text(t) => sqlx::query(sql).bind(t),
            Arg::Int(i) => sqlx::query(sql).bind(i),
        };
        let rows = query.fetch_all(p).await?;
        rows.iter()
            .map(|r| {
                (0..r.columns().len())
                    .map(|i| (r.columns()[i].name().to_owned(), cell(r, i)))
                    .collect()
            })
            .collect::<Vec<Vec<(String, String)>>>()
    });
    Ok(Section {
        title: title.to_owned(),
        rows,
    })
}

/// One section from a named query without parameters (the console's lists).
pub async fn query_section(db: &Db, title: &str, sql: &'static str) -> Result<Section, Error> {
    section(db, title, sql, Arg::None).await
}

/// The sections describing `subject`.
pub async fn show(db: &Db, subject: &Subject) -> Result<Vec<Section>, Error> {
    let mut sections = Vec::new();
    for (title, sql, arg) in queries(subject) {
        sections.push(section(db, title, sql, arg).await?);
    }
    // A message is named by its transport id first; a number that names none is taken as
    // the internal id.
    if let (Subject::Message(id), Some(first)) = (subject, sections.first_mut()) {
        if let (true, Ok(n)) = (first.rows.is_empty(), id.parse::<i64>()) {
            *first = section(db, "message", MESSAGE_BY_ID, Arg::Int(n)).await?;
        }
    }
    Ok(sections)
}

const MESSAGE_BY_ID: &str = "SELECT * FROM message_history WHERE message_id = $1";

/// The named queries over the history views that describe `subject`: each section's title,
/// its SQL and its argument.
fn queries(subject: &Subject) -> Vec<(&'static str, &'static str, Arg<'_>)> {
    match subject {
        Subject::Message(id) => vec![(
            "message",
            "SELECT * FROM message_history WHERE transport_id = $1",
            Arg::Text(id),
        )],
        Subject::MessageId(id) => vec![("message", MESSAGE_BY_ID, Arg::Int(*id))],
        Subject::Ticket(key) => vec![
            (
                "ticket",
                "SELECT * FROM ticket_history WHERE key = $1",
                Arg::Text(key),
            ),
            (
                "sightings",
                "SELECT * FROM message_history WHERE ticket_key = $1 ORDER BY message_id",
                Arg::Text(key),
            ),
            (
                "job",
                "SELECT * FROM job_history WHERE ticket_key = $1",
                Arg::Text(key),
            ),
        ],
        Subject::Incident(id) => vec![
            (
                "incident",
                "SELECT * FROM incident_history WHERE incident_id = $1",
                Arg::Int(*id),
            ),
            (
                "merged into it",
                "SELECT * FROM incident_history WHERE merged_into = $1",
                Arg::Int(*id),
            ),
            (
                "alarms",
                "SELECT * FROM message_history WHERE incident_id = $1 ORDER BY message_id",
                Arg::Int(*id),
            ),
        ],
        Subject::Job(id) => vec![
            (
                "job",
                "SELECT * FROM job_history WHERE job_id = $1",
                Arg::Int(*id),
            ),
            (
                "attempts",
                "SELECT * FROM attempt_history WHERE job_id = $1 ORDER BY attempt",
                Arg::Int(*id),
            ),
            (
                "notices",
                "SELECT notice_id, event, state, subject, issue_key, transition, url, reason, created_at, posted_at
                 FROM notice_history WHERE job_id = $1 ORDER BY notice_id",
                Arg::Int(*id),
            ),
        ],
        Subject::Run(id) => vec![(
            "steps",
            "SELECT * FROM step_history WHERE run_id = $1 ORDER BY queued_at",
            Arg::Int(*id),
        )],
        Subject::DecisionCounts => vec![(
            "decisions on record",
            "SELECT decision, kind, COUNT(*) AS messages FROM message_history
             WHERE decision IS NOT NULL GROUP BY decision, kind ORDER BY decision, kind",
            Arg::None,
        )],
        Subject::Recent(n) => vec![(
            "latest messages",
            "SELECT * FROM message_history ORDER BY message_id DESC LIMIT $1",
            Arg::Int(*n),
        )],
        Subject::AgentTime(None) => vec![(
            "agent time by account and day (UTC)",
            "SELECT * FROM agent_time_daily ORDER BY day DESC, account LIMIT 1000",
            Arg::None,
        )],
        Subject::AgentTime(Some(account)) => vec![(
            "agent time by day (UTC)",
            "SELECT * FROM agent_time_daily WHERE account = $1 ORDER BY day DESC LIMIT 60",
            Arg::Text(account),
        )],
    }
}

/// Sections as one JSON document: `{"sections": [{"title", "rows": [{column: value}]}]}`, an
/// empty value as null. Values stay the text the views give (ids and counts included), so a
/// transport id that looks like a number stays a string.
pub fn to_json(sections: &[Section]) -> serde_json::Value {
    let sections: Vec<_> = sections
        .iter()
        .map(|s| {
            let rows: Vec<serde_json::Map<String, serde_json::Value>> = s
                .rows
                .iter()
                .map(|row| {
                    row.iter()
                        .map(|(c, v)| {
                            let v = if v.is_empty() {
                                serde_json::Value::Null
                            } else {
                                serde_json::Value::String(v.clone())
                            };
                            (c.clone(), v)
                        })
                        .collect()
                })
                .collect();
            serde_json::json!({"title": s.title, "rows": rows})
        })
        .collect();
    serde_json::json!({ "sections": sections })
}

/// Renders sections as `column: value` blocks.
pub fn render(sections: &[Section]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for s in sections {
        let _ = writeln!(
            out,
            "== {} ({} row{})",
            s.title,
            s.rows.len(),
            if s.rows.len() == 1 { "" } else { "s" }
        );
        for row in &s.rows {
            let width = row.iter().map(|(c, _)| c.len()).max().unwrap_or(0);
            for (c, v) in row.iter().filter(|(_, v)| !v.is_empty()) {
                // Stored text can hold anything a sender put there (an old row, a body): shown
                // escaped, so no escape sequence reaches the operator's terminal.
                let v = crate::scheduling::domain::escape_controls(v);
                let _ = writeln!(out, "  {c:<width$}  {v}");
            }
            out.push('\n');
        }
    }
    out
}
