//! The replicas of a deployment: each `conductor run` records itself in `replicas` when it
//! starts and every few seconds while it runs (its version, its intake, its HTTP address), so
//! `conductor status` and the console can say which are alive and what each runs.

use serde::Serialize;

use crate::{db::Db, error::Error, with_pool};

/// How often a running replica records itself.
pub const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(5);
/// A replica unseen for this long is taken as gone.
pub const GONE_AFTER_MS: i64 = 60_000;

/// A replica's intake as it last reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Intake {
    /// Taking and deciding messages.
    Open,
    /// Closed because the database takes no writes.
    Closed,
    /// The gate is closed: finishing what is in flight, then exiting.
    Draining,
    /// `conductor pause`: nothing new starts; the process stays.
    Paused,
    /// The process is stopping (its last record).
    Stopped,
}

impl Intake {
    pub fn as_str(self) -> &'static str {
        match self {
            Intake::Open => "open",
            Intake::Closed => "closed",
            Intake::Draining => "draining",
            Intake::Paused => "paused",
            Intake::Stopped => "stopped",
        }
    }
}

/// This process as a replica is named, and as the gate and flags record who changed them:
/// `host:pid`.
pub fn whoami() -> String {
    let host = hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{host}:{}", std::process::id())
}

/// One replica as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Replica {
    pub id: String,
    pub version: String,
    pub started_ms: i64,
    pub last_seen_ms: i64,
    pub intake: String,
    pub http: Option<String>,
}

/// Records this replica (insert or update): idempotent, the last write wins.
pub async fn record(
    db: &Db,
    id: &str,
    started_ms: i64,
    intake: Intake,
    http: Option<&str>,
    now_ms: i64,
) -> Result<(), Error> {
    const SQL: &str = "INSERT INTO replicas (id, version, started_ms, last_seen_ms, intake, http)
        VALUES ($1, $2, $3, $4, $5, $6)
        ON CONFLICT (id) DO UPDATE SET version = excluded.version, started_ms = excluded.started_ms,
            last_seen_ms = excluded.last_seen_ms, intake = excluded.intake, http = excluded.http";
    with_pool!(db, |p| sqlx::query(SQL)
        .bind(id)
        .bind(env!("CARGO_PKG_VERSION"))
        .bind(started_ms)
        .bind(now_ms)
        .bind(intake.as_str())
        .bind(http)
        .execute(p)
        .await?
        .rows_affected());
    Ok(())
}

/// The replicas seen within [`GONE_AFTER_MS`] of `now_ms` that have not stopped, newest first.
pub async fn alive(db: &Db, now_ms: i64) -> Result<Vec<Replica>, Error> {
    const SQL: &str = "SELECT id, version, started_ms, last_seen_ms, intake, http FROM replicas
        WHERE last_seen_ms > $1 AND intake <> 'stopped' ORDER BY started_ms DESC";
    Ok(with_pool!(db, |p| sqlx::query_as(SQL)
        .bind(now_ms - GONE_AFTER_MS)
        .fetch_all(p)
        .await?))
}
