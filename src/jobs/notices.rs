//! Notices: what the ticket (or an incident's Jira issue) is told when an agent starts and when
//! its job ends (docs/design.md section 11). A notice row is written in the transaction of the
//! event it reports and posted later by the `notice` workflow ([`crate::tracker`] says where),
//! so a Jira outage never holds up a job and a crash never loses or repeats an event.

use serde::{Deserialize, Serialize};

use crate::{
    db::Tx,
    error::Error,
    jobs::{Job, JobState},
    with_conn,
};

text_states! {
    /// The event a notice reports.
    Event {
        /// The agent's worker called in and got its task.
        Started => "started",
        /// The job ended (a pull request, a failure issue, given up, merged, quarantined).
        Ended => "ended",
    }
}

/// Where a notice goes: a ticket, or the Jira issue of an incident.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Ticket(String),
    Incident(i64),
}

text_states! {
    /// How far a notice got.
    NoticeState {
        Pending => "pending",
        /// Posted (or, with the local tracker, recorded).
        Posted => "posted",
        /// Nothing to post it to (no tracker; an incident without `incidents.jira_project`).
        Skipped => "skipped",
        /// The tracker refused it for good (an unknown ticket, no permission): `reason` says why.
        Refused => "refused",
    }
}

/// A stored notice.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Notice {
    pub id: i64,
    /// Unique per event: `job-<id>-run-<run>-<event>`; also written into the posted comment.
    pub key: String,
    pub job_id: i64,
    #[sqlx(try_from = "String")]
    pub event: Event,
    /// The job's state when the event happened.
    #[sqlx(try_from = "String")]
    pub job_state: JobState,
    pub subject_kind: String,
    pub subject: String,
    pub body: String,
    #[sqlx(try_from = "String")]
    pub state: NoticeState,
}

impl Notice {
    pub fn subject(&self) -> Result<Subject, Error> {
        match self.subject_kind.as_str() {
            "ticket" => Ok(Subject::Ticket(self.subject.clone())),
            "incident" => self
                .subject
                .parse()
                .map(Subject::Incident)
                .map_err(|_| Error::Corrupt(format!("notice {}: bad incident id", self.id))),
            other => Err(Error::Corrupt(format!("unknown notice subject {other:?}"))),
        }
    }
}

/// What a notice says about `job`: its facts only (the link and any transition come from the
/// configuration when it is posted). `outcome` and `issue_url` are the ended job's.
pub fn body(job: &Job, event: Event, outcome: Option<&str>, issue_url: Option<&str>) -> String {
    let repo = job.repo.as_deref().unwrap_or("its repository");
    match event {
        Event::Started => format!(
            "Conductor started an agent on job {} in {repo} (from {}).",
            job.id,
            job.base_branch.as_deref().unwrap_or("the default branch")
        ),
        Event::Ended => {
            let state = job.state;
            // Outcomes of failures start with their state ("failed: why").
            let why = outcome.map(|o| {
                o.strip_prefix(&format!("{state}: "))
                    .unwrap_or(o)
                    .trim_end_matches('.')
            });
            let mut text = match (state, why) {
                (JobState::Succeeded, Some(o)) => {
                    format!("Conductor job {} finished: {o}.", job.id)
                }
                (state, Some(o)) => format!("Conductor job {} ended {state}: {o}.", job.id),
                (state, None) => format!("Conductor job {} ended {state}.", job.id),
            };
            if let Some(url) = issue_url {
                text.push_str(&format!(" Failure issue: {url}"));
            }
            text
        }
    }
}

/// The ordering key of a subject's notices: one ticket's (or incident's) notices are posted
/// in the order they happened, so a late "started" never follows an "ended".
pub fn order_key(job: &Job) -> Option<String> {
    match (&job.ticket_key, job.incident_id) {
        (Some(key), _) => Some(format!("notice:ticket:{key}")),
        (None, Some(incident)) => Some(format!("notice:incident:{incident}")),
        (None, None) => None,
    }
}

/// Records a notice of `event` for `job` in its run `run_id`, unless this run recorded it
/// already. Returns the new notice's id (None if it existed).
pub async fn record(
    tx: &mut Tx,
    job: &Job,
    run_id: i64,
    event: Event,
    body: &str,
    now_ms: i64,
) -> Result<Option<i64>, Error> {
    const SQL: &str =
        "INSERT INTO notices (key, job_id, event, job_state, subject_kind, subject, body, created_ms)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (key) DO NOTHING RETURNING id";
    let (kind, subject) = match (&job.ticket_key, job.incident_id) {
        (Some(key), _) => ("ticket", key.clone()),
        (None, Some(incident)) => ("incident", incident.to_string()),
        (None, None) => return Ok(None),
    };
    let key = format!("job-{}-run-{run_id}-{}", job.id, event.as_str());
    let id: Option<i64> = with_conn!(tx, |c| sqlx::query_scalar(SQL)
        .bind(&key)
        .bind(job.id)
        .bind(event.as_str())
        .bind(job.state.as_str())
        .bind(kind)
        .bind(&subject)
        .bind(body)
        .bind(now_ms)
        .fetch_optional(c)
        .await?);
    Ok(id)
}

pub async fn load(tx: &mut Tx, id: i64) -> Result<Notice, Error> {
    const SQL: &str = "SELECT id, key, job_id, event, job_state, subject_kind, subject, body, state
        FROM notices WHERE id = $1";
    let n: Option<Notice> = with_conn!(tx, |c| sqlx::query_as(SQL)
        .bind(id)
        .fetch_optional(c)
        .await?);
    n.ok_or_else(|| Error::Invalid(format!("no notice {id}")))
}

/// How a notice ended: where it was posted (issue key, URL, transition made) or why not.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Delivery {
    pub issue_key: Option<String>,
    pub url: Option<String>,
    pub link: Option<String>,
    pub transition: Option<String>,
    pub reason: Option<String>,
}

/// Records how notice `id` ended (only while it is pending: a second execution changes
/// nothing).
pub async fn settle(
    tx: &mut Tx,
    id: i64,
    state: NoticeState,
    d: &Delivery,
    now_ms: i64,
) -> Result<(), Error> {
    const SQL: &str = "UPDATE notices SET state = $2, issue_key = $3, url = $4, link = $5,
            transition = $6, reason = $7, posted_ms = $8
        WHERE id = $1 AND state = 'pending'";
    with_conn!(tx, |c| sqlx::query(SQL)
        .bind(id)
        .bind(state.as_str())
        .bind(d.issue_key.as_deref())
        .bind(d.url.as_deref())
        .bind(d.link.as_deref())
        .bind(d.transition.as_deref())
        .bind(d.reason.as_deref())
        .bind(now_ms)
        .execute(c)
        .await?
        .rows_affected());
    Ok(())
}

/// The Jira issue opened for an incident, if any.
pub async fn incident_issue(tx: &mut Tx, incident: i64) -> Result<Option<String>, Error> {
    const SQL: &str = "SELECT issue_key FROM incident_issues WHERE incident_id = $1";
    Ok(with_conn!(tx, |c| sqlx::query_scalar(SQL)
        .bind(incident)
        .fetch_optional(c)
        .await?))
}

/// Records the Jira issue opened for an incident (the first one recorded stays).
pub async fn set_incident_issue(
    tx: &mut Tx,
    incident: i64,
    key: &str,
    now_ms: i64,
) -> Result<(), Error> {
    const SQL: &str = "INSERT INTO incident_issues (incident_id, issue_key, created_ms)
        VALUES ($1, $2, $3) ON CONFLICT (incident_id) DO NOTHING";
    with_conn!(tx, |c| sqlx::query(SQL)
        .bind(incident)
        .bind(key)
        .bind(now_ms)
        .execute(c)
        .await?
        .rows_affected());
    Ok(())
}
