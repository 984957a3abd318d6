//! The scenario CLI's machinery (docs/design.md section 7): scheduling is tested by loading databases,
//! not by mocking. Everything here decides through [`crate::scheduling::decide`], the live code.

pub mod file;
pub mod gen;
pub mod replay;

use crate::{db::Db, error::Error, scheduling::domain::RawMessage, with_pool};

/// A fresh temporary SQLite database; the directory is removed when the guard drops.
pub async fn temp_sqlite() -> Result<(Db, tempfile::TempDir), Error> {
    let dir = tempfile::tempdir()
        .map_err(|e| Error::Config(format!("cannot create a temporary directory: {e}")))?;
    let url = format!("sqlite:{}", dir.path().join("scenario.db").display());
    Ok((Db::connect(&url).await?, dir))
}

/// Messages stored in a database, in arrival order, with the decision each got there
/// (`redelivered` is not stored per delivery, so only first deliveries are returned).
pub async fn stored_messages(db: &Db) -> Result<Vec<(RawMessage, Option<String>)>, Error> {
    // A message that reused another's transport id is replayed under that id, as it came.
    const SQL: &str = "SELECT COALESCE(o.transport_id, m.transport_id), m.body, m.raw, d.decision
        FROM messages m LEFT JOIN decisions d ON d.message_id = m.id
        LEFT JOIN messages o ON o.id = m.reuses
        ORDER BY m.id";
    type Row = (String, String, Option<Vec<u8>>, Option<String>);
    let rows: Vec<Row> = with_pool!(db, |p| sqlx::query_as(SQL).fetch_all(p).await?);
    Ok(rows
        .into_iter()
        .map(|(transport_id, body, raw, d)| {
            let m = match raw {
                Some(raw) => RawMessage::from_bytes(transport_id, raw),
                None => RawMessage {
                    transport_id,
                    body,
                    raw: None,
                },
            };
            (m, d)
        })
        .collect())
}

/// One message whose replayed decision differs from the stored one.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Difference {
    #[serde(rename = "message_id")]
    pub transport_id: String,
    pub stored: Option<String>,
    pub replayed: String,
}

/// Compares stored decisions with a replay's, message by message.
pub fn differences(
    stored: &[(RawMessage, Option<String>)],
    replayed: &replay::Report,
) -> Vec<Difference> {
    stored
        .iter()
        .zip(&replayed.decisions)
        .filter(|((_, s), r)| s.as_deref() != Some(r.decision.as_str()))
        .map(|((m, s), r)| Difference {
            transport_id: m.transport_id.clone(),
            stored: s.clone(),
            replayed: r.decision.clone(),
        })
        .collect()
}
