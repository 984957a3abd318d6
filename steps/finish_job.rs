//! **finish** — releases the repository claim and records how the job ended.
//!
//! Reads: open_pr's output (a pull request or a failure issue) and the report.
//! Writes: `repo_claims` (deleted), the job's state (`succeeded` with a pull request, `failed`
//! with an issue), branch, head commit, URL, outcome and finish time, and the run's end — one
//! transaction.
//! Retry safety: deleting the claim and writing the same outcome again change nothing; after
//! the commit the step is done and a re-run does nothing.

use futures::{future::BoxFuture, FutureExt};
use serde_json::Value;

use super::{job, Step, StepError};
use crate::{
    context::Env,
    db::now_ms,
    engine::{StepRun, Transition},
    jobs::{self, JobState, Outcome},
};

pub const NAME: &str = super::names::FINISH;

pub struct FinishJob;

impl Step for FinishJob {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run<'a>(&'a self, env: &'a Env, run: &'a StepRun) -> BoxFuture<'a, Result<(), StepError>> {
        async move {
            let job_id = job::job_id(run)?;
            let opened = run.output_of(super::names::OPEN_PR)?.clone();
            let report = run.output_of(super::names::AWAIT)?.clone();
            let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
            let url = text(&opened, "url");
            let pull = text(&opened, "kind").as_deref() == Some("pull");
            let outcome = Outcome {
                state: if pull {
                    JobState::Succeeded
                } else {
                    JobState::Failed
                },
                outcome: if pull {
                    format!("pull request {}", url.clone().unwrap_or_default())
                } else {
                    format!("failed: {}", text(&opened, "why").unwrap_or_default())
                },
                branch: text(&report, "branch").filter(|b| !b.is_empty()),
                head_sha: text(&report, "head_sha").filter(|s| !s.is_empty()),
                pr_url: url.clone().filter(|_| pull),
                issue_url: url.filter(|_| !pull),
            };
            let now = now_ms();
            let mut tx = env.db.begin().await?;
            jobs::release_repo(&mut tx, job_id).await?;
            jobs::record_outcome(&mut tx, job_id, &outcome, now).await?;
            run.complete(&mut tx, Transition::Next(Value::Null), now).await?;
            tx.commit().await?;
            tracing::info!(job = job_id, state = %outcome.state, outcome = %outcome.outcome, "job finished");
            Ok(())
        }
        .boxed()
    }
}
