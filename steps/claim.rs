//! **claim** — takes the lock on the job's repository, so two agents never work on one repo.
//!
//! Reads: the job, its ticket project or incident account, and the routing in `conductor.toml`
//! (the first time: the chosen repository is then stored on the job, so a later config edit
//! does not move a job in flight); `repo_claims`.
//! Writes: the job's route, a `repo_claims` row, and the step's completion — one transaction.
//! While another job holds the repository it re-queues itself after `jobs.claim_poll`
//! (`Transition::Wait`): no worker is held while waiting.
//! Retry safety: the claim is one row per repository keyed by it; taking it again as its
//! holder is a no-op, and a re-run after the commit finds the step done. The claim is
//! released by `finish` (or when the job is given up).

use futures::{future::BoxFuture, FutureExt};
use serde_json::Value;

use super::{Step, StepError};
use crate::workflows::job;
use crate::{
    context::Env,
    db::now_ms,
    engine::{StepRun, Transition},
    jobs,
    jobs::task_files::{self, Target},
};

pub const NAME: &str = crate::workflows::names::CLAIM;

/// What `spawn` and `open_pr` read: the claimed repository, its base branch and forge name.
impl crate::engine::StepOutput for Target {
    const STEP: &'static str = NAME;
}

pub struct ClaimRepo;

impl Step for ClaimRepo {
    fn run<'a>(&'a self, env: &'a Env, run: &'a StepRun) -> BoxFuture<'a, Result<(), StepError>> {
        async move {
            let job_id = job::job_id(run)?;
            let now = now_ms();
            let mut tx = env.db.begin().await?;
            let job = jobs::load_job(&mut tx, job_id).await?;
            let target = match (&job.repo, &job.base_branch, &job.forge_repo) {
                (Some(repo), Some(base), Some(forge_repo)) => Target {
                    repo: repo.clone(),
                    base: base.clone(),
                    forge_repo: forge_repo.clone(),
                },
                _ => {
                    let subject = jobs::subject_of(&mut tx, &job).await?;
                    let project = subject.pointer("/ticket/project").and_then(Value::as_str);
                    let account = subject.pointer("/incident/account").and_then(Value::as_str);
                    match task_files::route(&env.config, &job, project, account) {
                        Ok(t) => {
                            jobs::set_route(&mut tx, job_id, &t.repo, &t.base, &t.forge_repo, now).await?;
                            t
                        }
                        Err(e) => {
                            job::give_up(&mut tx, run, job_id, jobs::JobState::Failed, &e.to_string()).await?;
                            tx.commit().await?;
                            return Ok(());
                        }
                    }
                }
            };
            let holder = jobs::claim_repo(&mut tx, &target.repo, job_id, now).await?;
            if holder == job_id {
                tracing::info!(job_id = job_id, repo = %target.repo, "repository claimed");
                run.complete(&mut tx, Transition::next(&target), now)
                    .await?;
            } else {
                jobs::set_state(&mut tx, job_id, jobs::JobState::Waiting, now).await?;
                tracing::info!(job_id = job_id, repo = %target.repo, holder, "repository busy; waiting");
                run.complete(&mut tx, Transition::Wait(env.config.jobs.claim_poll), now).await?;
            }
            tx.commit().await?;
            Ok(())
        }
        .boxed()
    }
}
