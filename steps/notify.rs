//! **notify** — tells the ticket (or the incident's Jira issue) what happened to its job: a
//! comment, then the transition `tracker.transitions` names for the project and event.
//!
//! Reads: the notice (`notices`, written with the event and the job's state then), whether an
//! earlier notice of its ticket or incident is still unposted (then it waits its turn), the
//! incident's issue (`incident_issues`), the configuration (tracker, transitions,
//! `http.public_url`).
//! Writes: on the tracker, at most one comment and one transition (and, for an incident, its
//! issue once); then the notice's state, issue, URL and transition, and the step's
//! completion.
//! A tracker that is unavailable (connection error, 5xx, rate limit) waits
//! `tracker.retry_interval` (or the `Retry-After` it named) and asks again, without end; the
//! job went on long ago and never waits for it; refused credentials (401) or a base URL that
//! answers as something else wait too (five minutes at least, an error logged) until the
//! configuration is fixed. A refusal (another 4xx: no such ticket, no permission)
//! ends the notice `refused` with the reason; nothing else fails.
//! Retry safety: the comment carries the notice's key as a marker and is looked for on the
//! issue before one is posted; the transition is skipped when the issue is already in the
//! status it leads to; an incident's issue is found by its label before one is opened, and is
//! recorded in its own commit before any comment. So a re-run after a crash between posting
//! and recording posts nothing twice.

use futures::{future::BoxFuture, FutureExt};
use serde_json::{json, Value};

use super::{Step, StepError};
use crate::{
    config::TrackerKind,
    context::Env,
    db::now_ms,
    engine::{StepRun, Transition},
    error::Error,
    jobs::{
        self,
        notices::{self, Delivery, Event, Notice, NoticeState, Subject},
        tracker::{self, Comment, IncidentIssue},
        JobState,
    },
};

pub const NAME: &str = crate::workflows::names::NOTIFY;

pub struct Notify;

/// How often a notice held back by an earlier one of its subject looks again.
const ORDER_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Where a notice goes, once worked out.
enum Target {
    Issue { key: String, project: String },
    Nowhere(String),
}

impl Step for Notify {
    fn run<'a>(&'a self, env: &'a Env, run: &'a StepRun) -> BoxFuture<'a, Result<(), StepError>> {
        async move {
            let id = run
                .input
                .get("notice_id")
                .and_then(Value::as_i64)
                .ok_or_else(|| StepError::Fatal(format!("run {} has no notice_id", run.run_id)))?;
            let mut tx = env.db.begin().await?;
            let notice = notices::load(&mut tx, id).await?;
            let job = jobs::load_job(&mut tx, notice.job_id).await?;
            drop(tx);
            if notice.state != NoticeState::Pending {
                return finish(env, run, &notice, None).await;
            }
            // One subject's notices go out in the order they happened: an earlier one still
            // waiting (an outage) holds this one back.
            let mut tx = env.db.begin().await?;
            if let Some(first) = crate::engine::earlier_running(&mut tx, run.run_id).await? {
                tracing::debug!(notice = %notice.key, waiting_for = first, "an earlier notice of this subject is not posted yet");
                run.complete(&mut tx, Transition::Wait(ORDER_WAIT), now_ms()).await?;
                tx.commit().await?;
                return Ok(());
            }
            drop(tx);
            let (state, delivery) = match target(env, &notice, job.attempts).await {
                Ok(Target::Nowhere(why)) => (
                    NoticeState::Skipped,
                    Delivery {
                        reason: Some(why),
                        ..Delivery::default()
                    },
                ),
                Ok(Target::Issue { key, project }) => {
                    match post(env, &notice, &key, &project).await {
                        Ok(d) => (NoticeState::Posted, d),
                        Err(e) => return failed(env, run, &notice, e).await,
                    }
                }
                Err(e) => return failed(env, run, &notice, e).await,
            };
            crate::failpoint::hit("notify.after_post");
            let mut tx = env.db.begin().await?;
            notices::settle(&mut tx, id, state, &delivery, now_ms()).await?;
            tx.commit().await?;
            tracing::info!(
                notice = %notice.key,
                state = state.as_str(),
                issue = delivery.issue_key.as_deref().unwrap_or(""),
                transition = delivery.transition.as_deref().unwrap_or(""),
                "notice done"
            );
            finish(env, run, &notice, Some(state)).await
        }
        .boxed()
    }
}

async fn finish(
    env: &Env,
    run: &StepRun,
    notice: &Notice,
    state: Option<NoticeState>,
) -> Result<(), StepError> {
    let mut tx = env.db.begin().await?;
    run.complete(
        &mut tx,
        Transition::Finish(json!({"notice": notice.key, "state": state.map(NoticeState::as_str)})),
        now_ms(),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// An error from the tracker: an outage waits and asks again; a refusal ends the notice.
async fn failed(env: &Env, run: &StepRun, notice: &Notice, e: Error) -> Result<(), StepError> {
    let now = now_ms();
    if let Some(wait) = e.remote_wait(env.config.tracker.retry_interval) {
        let mut tx = env.db.begin().await?;
        run.complete(&mut tx, Transition::Wait(wait), now).await?;
        tx.commit().await?;
        if matches!(e, Error::Config(_)) {
            tracing::error!(notice = %notice.key, error = %e, retry_in = %humantime::format_duration(wait), "the tracker's configuration needs fixing; the notice waits");
        } else {
            tracing::warn!(notice = %notice.key, error = %e, retry_in = %humantime::format_duration(wait), "tracker unavailable; will try again");
        }
        crate::engine::record_error(&env.db, run.run_id, NAME, &e.to_string(), false, now).await?;
        return Ok(());
    }
    if !matches!(e, Error::Refused(_)) {
        return Err(e.into());
    }
    tracing::error!(notice = %notice.key, error = %e, "the tracker refused the notice");
    let mut tx = env.db.begin().await?;
    let d = Delivery {
        reason: Some(e.to_string()),
        ..Delivery::default()
    };
    notices::settle(&mut tx, notice.id, NoticeState::Refused, &d, now).await?;
    tx.commit().await?;
    finish(env, run, notice, Some(NoticeState::Refused)).await
}

/// The issue a notice goes on: the ticket itself, or the incident's issue (opened the first
/// time, and recorded in its own commit so it is opened once; its subject's notices run one at
/// a time, so two never race to open it).
async fn target(env: &Env, notice: &Notice, attempts: i32) -> Result<Target, Error> {
    if env.config.tracker.kind == TrackerKind::None {
        return Ok(Target::Nowhere(
            "no tracker is configured (tracker.kind = \"none\")".into(),
        ));
    }
    match notice.subject()? {
        Subject::Ticket(key) => {
            let project = key.split('-').next().unwrap_or_default().to_owned();
            Ok(Target::Issue { key, project })
        }
        Subject::Incident(incident) => {
            let Some(project) = env.config.incidents.jira_project.clone() else {
                return Ok(Target::Nowhere(
                    "incidents have no issue (incidents.jira_project is unset)".into(),
                ));
            };
            let mut tx = env.db.begin().await?;
            if let Some(key) = notices::incident_issue(&mut tx, incident).await? {
                return Ok(Target::Issue { key, project });
            }
            if attempts == 0 {
                // Merged or given up before an agent started: no issue is opened just to say so.
                return Ok(Target::Nowhere(
                    "the incident's job ended before an agent started; no issue was opened for it"
                        .into(),
                ));
            }
            let account = jobs::incident_account(&mut tx, incident).await?;
            drop(tx);
            let label = format!("conductor-incident-{incident}");
            let summary = format!("Incident {incident} in AWS account {account}");
            let description = format!(
                "Conductor opened this issue for incident {incident} (AWS account {account}); its agent's progress is commented here."
            );
            let key = env
                .tracker
                .incident_issue(&IncidentIssue {
                    project: &project,
                    issue_type: &env.config.incidents.jira_issue_type,
                    label: &label,
                    summary: &summary,
                    description: &description,
                })
                .await?;
            let mut tx = env.db.begin().await?;
            notices::set_incident_issue(&mut tx, incident, &key, now_ms()).await?;
            // The first recorded wins (two notices of one incident at once).
            let key = notices::incident_issue(&mut tx, incident)
                .await?
                .unwrap_or(key);
            tx.commit().await?;
            Ok(Target::Issue { key, project })
        }
    }
}

/// Posts the comment and makes the transition the project's configuration names.
async fn post(env: &Env, notice: &Notice, key: &str, project: &str) -> Result<Delivery, Error> {
    let transitions = env.config.tracker.transitions.get(project);
    let transition = transitions.and_then(|t| match notice.event {
        Event::Started => t.started.as_deref(),
        Event::Ended if notice.job_state == JobState::Succeeded => t.succeeded.as_deref(),
        Event::Ended => t.failed.as_deref(),
    });
    let link = env
        .config
        .http
        .public_url
        .as_deref()
        .map(|u| format!("{}/jobs/{}", u.trim_end_matches('/'), notice.job_id));
    let marker = tracker::marker(&notice.key);
    let posted = env
        .tracker
        .post(&Comment {
            issue_key: key,
            marker: &marker,
            text: &notice.body,
            link: link.as_deref(),
            transition,
        })
        .await?;
    if posted.existed {
        tracing::info!(notice = %notice.key, issue = key, "comment found from an earlier run; not posted again");
    }
    Ok(Delivery {
        issue_key: Some(key.to_owned()),
        url: Some(posted.url),
        link,
        transition: posted.transition,
        reason: None,
    })
}
