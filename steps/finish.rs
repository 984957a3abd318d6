//! **finish** — releases the job's slot (its repository claim) and records how the job ended.
//!
//! Reads: open_pr's output (a pull request or a failure issue) and the report.
//! Writes: `repo_claims` (deleted; the `claim` of the jobs next in line woken), the job's state (`succeeded` with a pull request, `failed`
//! with an issue), branch, head commit, URL, outcome and finish time, the "ended" notice
//! (workflows::notice), and the run's end — one transaction.
//! Retry safety: deleting the claim and writing the same outcome again change nothing, and
//! the notice is keyed by run and event; after
//! the commit the step is done and a re-run does nothing.

use futures::{future::BoxFuture, FutureExt};
use serde_json::Value;

use super::{await_report::Awaited, open_pr::Opened, Step, StepError};
use crate::workflows::job;
use crate::{
    context::Env,
    db::now_ms,
    engine::{StepRun, Transition},
    jobs::{self, notices::Event, JobState, Outcome},
};

pub const NAME: &str = crate::workflows::names::FINISH;

pub struct FinishJob;

impl Step for FinishJob {
    fn run<'a>(&'a self, env: &'a Env, run: &'a StepRun) -> BoxFuture<'a, Result<(), StepError>> {
        async move {
            let job_id = job::job_id(run)?;
            let opened: Opened = run.output()?;
            let report = run.output::<Awaited>()?.report;
            let (branch, head_sha) = (
                Some(report.branch).filter(|b| !b.is_empty()),
                Some(report.head_sha).filter(|s| !s.is_empty()),
            );
            let outcome = match opened {
                Opened::Pull { url, .. } => Outcome {
                    state: JobState::Succeeded,
                    outcome: format!("pull request {url}"),
                    branch,
                    head_sha,
                    pr_url: Some(url),
                    issue_url: None,
                },
                Opened::Issue { url, why, .. } => Outcome {
                    state: JobState::Failed,
                    outcome: format!("failed: {why}"),
                    branch,
                    head_sha,
                    pr_url: None,
                    issue_url: Some(url),
                },
            };
            let now = now_ms();
            let mut tx = env.db.begin().await?;
            crate::workflows::job::release_slot(&mut tx, job_id, now).await?;
            jobs::record_outcome(&mut tx, job_id, &outcome, now).await?;
            crate::workflows::notice::tell(&mut tx, job_id, run.run_id, Event::Ended, now).await?;
            run.complete(&mut tx, Transition::Next(Value::Null), now).await?;
            tx.commit().await?;
            tracing::info!(job_id = job_id, state = %outcome.state, outcome = %outcome.outcome, "job finished");
            Ok(())
        }
        .boxed()
    }
}
