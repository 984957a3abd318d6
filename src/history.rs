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
    Ticket(String),
    Incident(i64),
    Job(i64),
    Run(i64),
    /// The latest messages.
    Recent(i64),
}

/// A titled list of rows, each a list of (column, value).
#[derive(Debug, Clone)]
pub struct Section {
    pub title: String,
    pub rows: Vec<Vec<(String, String)>>,
}

fn cell<R: Row>(row: &R, i: usize) -> String
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<f64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    if let Ok(v) = row.try_get::<Option<i64>, _>(i) {
        return v.map(|v| v.to_string()).unwrap_or_default();
    }
    if let Ok(v) = row.try_get::<Option<String>, _>(i) {
        return v.unwrap_or_default();
    }
    if let Ok(v) = row.try_get::<Option<f64>, _>(i) {
        return v.map(|v| v.to_string()).unwrap_or_default();
    }
    "?".into()
}

async fn section(db: &Db, title: &str, sql: &'static str, arg: &str) -> Result<Section, Error> {
    let rows = with_pool!(db, |p| {
        let rows = sqlx::query(sql).bind(arg).fetch_all(p).await?;
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

/// The sections describing `subject`.
pub async fn show(db: &Db, subject: &Subject) -> Result<Vec<Section>, Error> {
    Ok(match subject {
        Subject::Message(id) => vec![
            section(db, "message", "SELECT * FROM message_history WHERE transport_id = $1 OR CAST(message_id AS TEXT) = $1", id).await?,
        ],
        Subject::Ticket(key) => vec![
            section(db, "ticket", "SELECT * FROM ticket_history WHERE key = $1", key).await?,
            section(db, "sightings", "SELECT * FROM message_history WHERE ticket_key = $1 ORDER BY message_id", key).await?,
            section(db, "job", "SELECT * FROM job_history WHERE ticket_key = $1", key).await?,
        ],
        Subject::Incident(id) => {
            let id = id.to_string();
            vec![
                section(db, "incident", "SELECT * FROM incident_history WHERE CAST(incident_id AS TEXT) = $1", &id).await?,
                section(db, "merged into it", "SELECT * FROM incident_history WHERE CAST(merged_into AS TEXT) = $1", &id).await?,
                section(db, "alarms", "SELECT * FROM message_history WHERE CAST(incident_id AS TEXT) = $1 ORDER BY message_id", &id).await?,
            ]
        }
        Subject::Job(id) => {
            vec![section(db, "job", "SELECT * FROM job_history WHERE CAST(job_id AS TEXT) = $1", &id.to_string()).await?]
        }
        Subject::Run(id) => vec![
            section(db, "steps", "SELECT * FROM step_history WHERE CAST(run_id AS TEXT) = $1 ORDER BY queued_at", &id.to_string()).await?,
        ],
        Subject::Recent(n) => vec![
            section(
                db,
                "latest messages",
                "SELECT * FROM message_history ORDER BY message_id DESC LIMIT CAST($1 AS INTEGER)",
                &n.to_string(),
            )
            .await?,
        ],
    })
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
                let _ = writeln!(out, "  {c:<width$}  {v}");
            }
            out.push('\n');
        }
    }
    out
}
