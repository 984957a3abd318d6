//! **open_pr** — opens the pull request the agent's branch asks for, or, when the agent said
//! the job failed, a failure issue.
//!
//! Reads: the report (await's output) and the target (claim's output).
//! Writes: on the forge, one pull request (head = the pushed branch, base = the route's
//! branch, title and body from the agent's meta files, a footer naming the ticket or incident
//! and the job) or one issue; then the step's
//! completion with its URL.
//! A forge that is unavailable (connection error, 5xx, rate limit) is not a failure of the
//! job: the step waits `forge.retry_interval` (or as long as a `Retry-After` or rate-limit
//! reset says) and asks again, as long as it takes, with the error shown on the step; so does
//! a forge that refuses the configured credentials (401), every five minutes at least, with an
//! error logged, until the configuration is fixed. Any other refusal (4xx) fails the step, and
//! the job is given up.
//! Retry safety: the forge is asked for an existing pull request for the head branch (or an
//! issue carrying this attempt's marker) before one is created, so a re-run after a crash
//! between the forge call and the commit finds it instead of opening a second.

use super::await_report::Awaited;
use futures::{future::BoxFuture, FutureExt};

use super::{Step, StepError};
use crate::workflows::job;
use crate::{
    context::Env,
    db::now_ms,
    engine::{StepRun, Transition},
    jobs::forge::{IssueSpec, PullRequestSpec},
    jobs::routing::Target,
    jobs::Report,
};

pub const NAME: &str = crate::workflows::names::OPEN_PR;

/// What `finish` reads: the pull request opened (or found), or the failure issue and why.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Opened {
    Pull {
        url: String,
        number: i64,
        branch: String,
        head_sha: String,
    },
    Issue {
        url: String,
        number: i64,
        why: String,
    },
}

impl crate::engine::StepOutput for Opened {
    const STEP: &'static str = NAME;
}

pub struct OpenPullRequest;

impl Step for OpenPullRequest {
    fn run<'a>(&'a self, env: &'a Env, run: &'a StepRun) -> BoxFuture<'a, Result<(), StepError>> {
        async move {
            let job_id = job::job_id(run)?;
            let awaited: Awaited = run.output()?;
            let target: Target = run.output()?;
            let job = {
                let mut tx = env.db.begin().await?;
                crate::jobs::load_job(&mut tx, job_id).await?
            };
            let opened = open(env, &job, i64::from(awaited.attempt), &awaited.report, &target).await;
            let output = match opened {
                Ok(output) => output,
                Err(e) if e.remote_wait(env.config.forge.retry_interval).is_some() => {
                    let wait = e.remote_wait(env.config.forge.retry_interval).unwrap_or_default();
                    let now = now_ms();
                    let mut tx = env.db.begin().await?;
                    run.complete(&mut tx, Transition::Wait(wait), now).await?;
                    tx.commit().await?;
                    if matches!(e, crate::error::Error::Config(_)) {
                        tracing::error!(job_id = job_id, error = %e, retry_in = %humantime::format_duration(wait), "the forge's configuration needs fixing; the pull request waits");
                    } else {
                        tracing::warn!(job_id = job_id, error = %e, retry_in = %humantime::format_duration(wait), "forge unavailable; will try again");
                    }
                    crate::engine::record_error(&env.db, run.run_id, NAME, &e.to_string(), false, now).await?;
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            };
            crate::failpoint::hit("open_pr.after_forge");
            let now = now_ms();
            let mut tx = env.db.begin().await?;
            run.complete(&mut tx, Transition::next(&output), now).await?;
            tx.commit().await?;
            Ok(())
        }
        .boxed()
    }
}

/// The footer of a pull request or failure issue: what it was opened for (the ticket, linked
/// when the tracker is Jira; or the incident) and the job (linked to the console's page when
/// `http.public_url` is set).
fn footer(env: &Env, job: &crate::jobs::Job) -> String {
    let job_id = job.id;
    let config = &env.config;
    let subject = match (&job.ticket_key, job.incident_id) {
        (Some(key), _) if config.tracker.kind == crate::config::TrackerKind::Jira => format!(
            "ticket [{key}]({}/browse/{key})",
            config.tracker.base_url.trim_end_matches('/')
        ),
        (Some(key), _) => format!("ticket {key}"),
        (None, Some(incident)) => match &config.http.public_url {
            Some(u) => format!(
                "[incident {incident}]({}/incidents/{incident})",
                u.trim_end_matches('/')
            ),
            None => format!("incident {incident}"),
        },
        (None, None) => "a job".to_owned(),
    };
    let job = match &config.http.public_url {
        Some(u) => format!("[job {job_id}]({}/jobs/{job_id})", u.trim_end_matches('/')),
        None => format!("job {job_id}"),
    };
    format!("\n\n---\nOpened by Conductor for {subject}, {job}.")
}

/// Opens the pull request (or the failure issue) and returns the step's output.
async fn open(
    env: &Env,
    job: &crate::jobs::Job,
    attempt: i64,
    report: &Report,
    target: &Target,
) -> Result<Opened, crate::error::Error> {
    let job_id = job.id;
    let output = if report.success && !report.branch.is_empty() {
        let title = if report.title.trim().is_empty() {
            format!("Conductor job {job_id}")
        } else {
            report.title.clone()
        };
        let pr = env
            .forge
            .open_pull_request(&PullRequestSpec {
                repo: target.forge_repo.clone(),
                head: report.branch.clone(),
                base: target.base.clone(),
                title,
                body: format!("{}{}", report.report, footer(env, job)),
            })
            .await;
        crate::telemetry::forge(env.forge.name(), "open_pull_request", &pr);
        let pr = pr?;
        tracing::info!(job_id = job_id, url = %pr.url, existed = pr.existed, branch = %report.branch, "pull request open");
        Opened::Pull {
            url: pr.url,
            number: pr.number,
            branch: report.branch.clone(),
            head_sha: report.head_sha.clone(),
        }
    } else {
        let why = if report.success {
            "the worker reported success without a branch".to_owned()
        } else if report.failure.is_empty() {
            "the agent reported that the job failed".to_owned()
        } else {
            report.failure.clone()
        };
        let title = if report.title.trim().is_empty() {
            format!("Conductor job {job_id} failed")
        } else {
            report.title.clone()
        };
        let issue = env
            .forge
            .open_issue(&IssueSpec {
                repo: target.forge_repo.clone(),
                key: format!("job-{job_id}-attempt-{attempt}"),
                title,
                body: format!("**Why:** {why}\n\n{}{}", report.report, footer(env, job)),
            })
            .await;
        crate::telemetry::forge(env.forge.name(), "open_issue", &issue);
        let issue = issue?;
        tracing::info!(job_id = job_id, url = %issue.url, existed = issue.existed, "failure issue open");
        Opened::Issue {
            url: issue.url,
            number: issue.number,
            why,
        }
    };
    Ok(output)
}
