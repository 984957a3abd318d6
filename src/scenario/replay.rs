//! Replay: feeds messages through the very ingest and decide the live pipeline uses, with
//! virtual time (each message's own event time), many messages to a transaction.

use std::collections::HashSet;

use serde::Serialize;

use crate::{
    db::Db,
    error::Error,
    scheduling::decide,
    scheduling::domain::{
        parse_body, Decision, Ingested, Message, RawMessage, Rejection, SubjectKind,
    },
    scheduling::flags::Scheduling,
    scheduling::policy::Policy,
    scheduling::store::{
        sql::Tables,
        write_behind::{Planned, WriteBehind},
        Store,
    },
    with_pool,
};

/// One line of replay output: what happened to one input message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplayLine {
    /// The message's transport id (`message_id` in the output, as in the replay input).
    #[serde(rename = "message_id")]
    pub transport_id: String,
    /// `spawn, duplicate, chained, merged, ignored, rejected` or `redelivered`.
    pub decision: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<SubjectKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ticket_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incident: Option<i64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub merged: Vec<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Whether the transport id was new to the database (what `events` counts).
    #[serde(skip)]
    pub first_sighting: bool,
}

impl ReplayLine {
    fn from_decision(transport_id: &str, d: Decision) -> Self {
        ReplayLine {
            transport_id: transport_id.to_owned(),
            decision: d.decision.as_str().to_owned(),
            kind: d.kind,
            ticket_key: d.ticket_key,
            account: d.account,
            incident: d.incident,
            merged: d.merged,
            job: d.job,
            reason: d.reason,
            first_sighting: true,
        }
    }
}

/// Counts over a replay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Summary {
    pub events: u64,
    pub redelivered: u64,
    pub rejected: u64,
    pub ticket_spawns: u64,
    pub ticket_duplicates: u64,
    pub incident_spawns: u64,
    pub chained: u64,
    pub merged: u64,
    pub ignored: u64,
    pub alarm_duplicates: u64,
    pub incidents: u64,
}

/// A final incident and the transport ids of its alarms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IncidentOut {
    pub id: i64,
    pub account: String,
    #[serde(rename = "message_ids")]
    pub transport_ids: Vec<String>,
}

/// The whole result of a replay, as `--json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub summary: Summary,
    pub decisions: Vec<ReplayLine>,
    pub incidents: Vec<IncidentOut>,
}

/// The virtual time of a message: its event time where it has one.
fn virtual_time(parsed: &Result<Message, Rejection>) -> Option<i64> {
    match parsed.as_ref().ok()? {
        Message::Alarm(a) => Some(a.event_ms),
        Message::Ticket(t) => t.event_ms,
    }
}

/// Messages per replay transaction unless told otherwise. The unique indexes on transport and
/// event ids take random keys, so a batch dirties up to one index page per message; larger
/// batches share those pages between more messages (measured in docs/benchmarks.md).
pub const DEFAULT_BATCH: usize = 10_000;

/// How a replay stores what it decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum StoreMode {
    /// The write-behind store on SQLite, statements on Postgres.
    #[default]
    Auto,
    /// The live path's named queries, one statement at a time.
    Statements,
    /// Load the batch's state, decide in memory, write back with multi-row statements
    /// (SQLite only).
    WriteBehind,
}

/// Replays `messages` in order into `db`, committing every `batch` messages.
pub async fn replay(
    db: &Db,
    policy: &Policy,
    messages: &[RawMessage],
    batch: usize,
) -> Result<Report, Error> {
    let sched = Scheduling::only(policy.clone());
    replay_with(db, &sched, messages, batch, StoreMode::Auto).await
}

/// [`replay`] with a chosen store.
pub async fn replay_with(
    db: &Db,
    sched: &Scheduling,
    messages: &[RawMessage],
    batch: usize,
    mode: StoreMode,
) -> Result<Report, Error> {
    replay_reporting(db, sched, messages, batch, mode, &|_| {}).await
}

/// How many messages are decided so far, reported after each committed batch (a command's
/// progress bar; the library draws nothing).
pub type Progress<'a> = &'a (dyn Fn(usize) + Sync);

/// [`replay_with`], reporting progress after each batch.
pub async fn replay_reporting(
    db: &Db,
    sched: &Scheduling,
    messages: &[RawMessage],
    batch: usize,
    mode: StoreMode,
    progress: Progress<'_>,
) -> Result<Report, Error> {
    let lines = decide_all_reporting(db, sched, messages, batch, mode, progress).await?;
    let incidents = final_incidents(db).await?;
    let summary = summarise(messages, &lines, incidents.len() as u64);
    Ok(Report {
        summary,
        decisions: lines,
        incidents,
    })
}

/// Ingests and decides `messages` in order, `batch` to a transaction, and returns one line per
/// message. Messages without an event time (most tickets, rejects) take the latest time seen.
pub async fn decide_all(
    db: &Db,
    sched: &Scheduling,
    messages: &[RawMessage],
    batch: usize,
    mode: StoreMode,
) -> Result<Vec<ReplayLine>, Error> {
    decide_all_reporting(db, sched, messages, batch, mode, &|_| {}).await
}

/// [`decide_all`], reporting progress after each batch.
pub async fn decide_all_reporting(
    db: &Db,
    sched: &Scheduling,
    messages: &[RawMessage],
    batch: usize,
    mode: StoreMode,
    progress: Progress<'_>,
) -> Result<Vec<ReplayLine>, Error> {
    let mut replayer = Replayer::new(db, sched, mode)?;
    let mut lines = Vec::with_capacity(messages.len());
    for chunk in messages.chunks(batch.max(1)) {
        lines.extend(replayer.feed(chunk).await?);
        progress(lines.len());
    }
    Ok(lines)
}

/// A replay in progress, fed its messages in order a batch at a time (one transaction each).
/// It keeps only its virtual clock and its counts, so a caller that writes each batch's lines
/// out and drops them replays any amount of traffic in flat memory.
pub struct Replayer<'a> {
    db: &'a Db,
    sched: &'a Scheduling,
    write_behind: bool,
    /// The latest event time seen: the decision time of a message without one.
    clock: i64,
    summary: Summary,
}

impl<'a> Replayer<'a> {
    /// A replay into `db` with the store `mode` chooses (refused where it cannot apply).
    pub fn new(db: &'a Db, sched: &'a Scheduling, mode: StoreMode) -> Result<Self, Error> {
        let shadow = sched.candidate.is_some();
        let write_behind =
            match (mode, db) {
                (StoreMode::Statements, _) => false,
                // A candidate decides on its shadow tables statement by statement.
                (StoreMode::Auto, Db::Sqlite(_)) if shadow => false,
                (StoreMode::WriteBehind, _) if shadow => return Err(Error::Config(
                    "a candidate is evaluated with the statement store; drop --store write-behind"
                        .into(),
                )),
                (StoreMode::Auto, Db::Sqlite(_)) => true,
                (StoreMode::Auto, Db::Postgres(_)) => false,
                (StoreMode::WriteBehind, Db::Sqlite(_)) => true,
                (StoreMode::WriteBehind, Db::Postgres(_)) => {
                    return Err(Error::Config(
                        "the write-behind store is for SQLite; use --store statements on Postgres"
                            .into(),
                    ))
                }
            };
        Ok(Replayer {
            db,
            sched,
            write_behind,
            clock: 0,
            summary: Summary::default(),
        })
    }

    /// Ingests and decides `chunk` in one transaction; one line per message, in order.
    pub async fn feed(&mut self, chunk: &[RawMessage]) -> Result<Vec<ReplayLine>, Error> {
        let mut lines = Vec::with_capacity(chunk.len());
        let parsed: Vec<_> = chunk
            .iter()
            .map(|m| parse_body(&m.body, m.raw.as_deref()))
            .collect();
        let mut tx = self.db.begin().await?;
        if self.write_behind {
            let planned: Vec<Planned> = chunk
                .iter()
                .zip(&parsed)
                .map(|(m, p)| Planned {
                    message_id: None,
                    transport_id: &m.transport_id,
                    body: &m.body,
                    raw: m.raw.as_deref(),
                    parsed: p,
                })
                .collect();
            let mut store = WriteBehind::load(&mut tx, &self.sched.policy, &planned).await?;
            drop(planned);
            deliver_chunk(
                &mut store,
                self.sched,
                chunk,
                parsed,
                &mut self.clock,
                &mut lines,
            )
            .await?;
            store.flush().await?;
        } else {
            deliver_chunk(
                &mut Tables::real(&mut tx),
                self.sched,
                chunk,
                parsed,
                &mut self.clock,
                &mut lines,
            )
            .await?;
        }
        tx.commit().await?;
        for l in &lines {
            self.summary.count(l);
        }
        Ok(lines)
    }

    /// The counts so far, and the incidents left standing in the database.
    pub async fn finish(self) -> Result<Summary, Error> {
        const STANDING: &str =
            "SELECT CAST(COUNT(*) AS BIGINT) FROM incidents WHERE merged_into IS NULL";
        let incidents: i64 = with_pool!(self.db, |p| sqlx::query_scalar(STANDING)
            .fetch_one(p)
            .await?);
        Ok(Summary {
            incidents: incidents as u64,
            ..self.summary
        })
    }
}

async fn deliver_chunk(
    store: &mut impl Store,
    sched: &Scheduling,
    chunk: &[RawMessage],
    parsed: Vec<Result<Message, Rejection>>,
    clock: &mut i64,
    lines: &mut Vec<ReplayLine>,
) -> Result<(), Error> {
    for (m, parsed) in chunk.iter().zip(parsed) {
        if let Some(t) = virtual_time(&parsed) {
            *clock = (*clock).max(t);
        }
        let delivery = decide::Delivery {
            transport_id: &m.transport_id,
            source: "replay",
            body: &m.body,
            raw: m.raw.as_deref(),
        };
        let (ingested, decision) =
            decide::deliver_ingested(store, sched, &delivery, parsed, *clock).await?;
        let mut line = match decision {
            Some(d) => ReplayLine::from_decision(&m.transport_id, d),
            None => ReplayLine {
                transport_id: m.transport_id.clone(),
                decision: "redelivered".into(),
                kind: None,
                ticket_key: None,
                account: None,
                incident: None,
                merged: Vec::new(),
                job: None,
                reason: Some("transport message id seen before".into()),
                first_sighting: false,
            },
        };
        line.first_sighting = matches!(ingested, Ingested::New { .. });
        lines.push(line);
    }
    Ok(())
}

/// Counts the lines of a replay.
pub fn summarise(messages: &[RawMessage], lines: &[ReplayLine], incidents: u64) -> Summary {
    let mut s = Summary::default();
    for l in lines {
        s.count(l);
    }
    Summary {
        // Distinct transport ids of the input (a database replayed into may know some).
        events: messages
            .iter()
            .map(|m| m.transport_id.as_str())
            .collect::<HashSet<_>>()
            .len() as u64,
        incidents,
        ..s
    }
}

impl Summary {
    /// Adds one line to the counts: `events` counts the transport ids seen for the first
    /// time, `incidents` is left to the end of the replay.
    pub fn count(&mut self, l: &ReplayLine) {
        let ticket = l.kind == Some(SubjectKind::Ticket);
        self.events += u64::from(l.first_sighting);
        match (l.decision.as_str(), ticket) {
            ("redelivered", _) => self.redelivered += 1,
            ("rejected", _) => self.rejected += 1,
            ("spawn", true) => self.ticket_spawns += 1,
            ("spawn", false) => self.incident_spawns += 1,
            ("duplicate", true) => self.ticket_duplicates += 1,
            ("duplicate", false) => self.alarm_duplicates += 1,
            ("chained", _) => self.chained += 1,
            ("merged", _) => self.merged += 1,
            ("ignored", _) => self.ignored += 1,
            _ => {}
        }
    }
}

/// The incidents left standing (not merged into another) and their alarms' transport ids.
pub async fn final_incidents(db: &Db) -> Result<Vec<IncidentOut>, Error> {
    let mut out = Vec::new();
    for_each_incident(db, &mut |i| {
        out.push(i);
        Ok(())
    })
    .await?;
    Ok(out)
}

/// Calls `each` with every incident left standing, in id order, reading the rows as a stream
/// (a replay's output never holds them all).
pub async fn for_each_incident(
    db: &Db,
    each: &mut (dyn FnMut(IncidentOut) -> Result<(), Error> + Send),
) -> Result<(), Error> {
    use futures::TryStreamExt;
    const SQL: &str = "SELECT i.id, i.account, m.transport_id
        FROM incidents i
        JOIN alarms a ON a.incident_id = i.id
        JOIN messages m ON m.id = a.message_id
        WHERE i.merged_into IS NULL
        ORDER BY i.id, a.event_ms, a.id";
    let mut current: Option<IncidentOut> = None;
    let mut take = |(id, account, transport_id): (i64, String, String)| -> Result<(), Error> {
        match current.as_mut() {
            Some(c) if c.id == id => c.transport_ids.push(transport_id),
            _ => {
                if let Some(done) = current.replace(IncidentOut {
                    id,
                    account,
                    transport_ids: vec![transport_id],
                }) {
                    each(done)?;
                }
            }
        }
        Ok(())
    };
    with_pool!(db, |p| {
        let mut rows = sqlx::query_as::<_, (i64, String, String)>(SQL).fetch(p);
        while let Some(row) = rows.try_next().await? {
            take(row)?;
        }
    });
    if let Some(last) = current {
        each(last)?;
    }
    Ok(())
}

/// Renders a report as a table for people.
/// The summary of a replay: what a person reads first.
pub fn render_summary(report: &Report) -> String {
    let s = &report.summary;
    format!(
        "events {}  redelivered {}  rejected {}  ticket_spawns {}  ticket_duplicates {}  incident_spawns {}  chained {}  merged {}  ignored {}  alarm_duplicates {}  incidents {}\n",
        s.events, s.redelivered, s.rejected, s.ticket_spawns, s.ticket_duplicates, s.incident_spawns, s.chained, s.merged, s.ignored, s.alarm_duplicates, s.incidents
    )
}

/// One line per message: its decision, subject, incident, job and reason.
pub fn render_decisions(report: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<38} {:<11} {:<7} {:<14} {:>8} {:>6}  reason",
        "message_id", "decision", "kind", "ticket/account", "incident", "job"
    );
    for l in &report.decisions {
        let subject = l
            .ticket_key
            .clone()
            .or_else(|| l.account.clone())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<38} {:<11} {:<7} {:<14} {:>8} {:>6}  {}",
            l.transport_id,
            l.decision,
            l.kind.map(|k| k.as_str()).unwrap_or("-"),
            subject,
            l.incident.map(|i| i.to_string()).unwrap_or_default(),
            l.job.map(|i| i.to_string()).unwrap_or_default(),
            l.reason.clone().unwrap_or_default()
        );
    }
    out
}
