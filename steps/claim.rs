//! **claim** — routes the job and takes its slot: the repository's claim, within `[caps]`.
//!
//! Reads: the job; the first time, the message that started it and `[[routes]]` in
//! `conductor.toml` (the route taken — repository, base branch, environment — is then stored
//! on the job, so a later config edit does not move a job in flight); `repo_claims` and the
//! jobs waiting before it (`jobs::caps`).
//! Writes: the job's route, a `repo_claims` row (its slot), and the step's completion — one
//! transaction. Over a cap, or behind an earlier job of the same repository or account, it
//! marks the job `waiting` with the reason and re-queues itself after `jobs.claim_poll`
//! (`Transition::Wait`): no worker is held while waiting. Past its account's daily budget it
//! ends the job `over_budget` with the reason (`conductor retry` waives the budget).
//! Retry safety: one slot row per job, keyed by it; taking it again as its holder is a no-op,
//! and a re-run after the commit finds the step done. The slot is released by `finish` (or
//! when the job is given up).

use futures::{future::BoxFuture, FutureExt};

use super::{Step, StepError};
use crate::workflows::job;
use crate::{
    context::Env,
    db::now_ms,
    engine::{StepRun, Transition},
    jobs::{
        self,
        caps::{self, Admission, Candidate},
        routing::{self, Facts, Target},
    },
};

pub const NAME: &str = crate::workflows::names::CLAIM;

/// What `spawn` and `open_pr` read: the claimed repository, its base branch, forge name and
/// environment.
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
            let (target, account) = match Target::stored(&job)? {
                Some(stored) => (stored, job.account.clone()),
                None => {
                    let body = jobs::message_body(&mut tx, &job).await?;
                    let routed = Facts::of_body(&body).and_then(|facts| {
                        routing::route(&env.config, &facts).map(|t| (t, facts.account))
                    });
                    match routed {
                        Ok((t, account)) => {
                            jobs::set_route(&mut tx, job_id, &t, account.as_deref(), now).await?;
                            tracing::info!(job_id, route = %t.route, repo = %t.repo, "routed");
                            (t, job.account.clone().or(account))
                        }
                        Err(e) => {
                            let why = format!("job {job_id} ({}): {e}", job.kind);
                            job::give_up(&mut tx, run, job_id, jobs::JobState::Failed, &why)
                                .await?;
                            tx.commit().await?;
                            return Ok(());
                        }
                    }
                }
            };
            let candidate = Candidate {
                job_id,
                repo: &target.repo,
                account: account.as_deref(),
                budget_waived: job.budget_waived,
            };
            match caps::admit(&mut tx, &env.config.caps, &candidate, now).await? {
                Admission::Admitted => {
                    tracing::info!(job_id, repo = %target.repo, "repository claimed");
                    run.complete(&mut tx, Transition::next(&target), now)
                        .await?;
                }
                Admission::Wait(why) => {
                    caps::wait(&mut tx, job_id, &why, now).await?;
                    tracing::info!(job_id, repo = %target.repo, why, "waiting");
                    run.complete(&mut tx, Transition::Wait(env.config.jobs.claim_poll), now)
                        .await?;
                }
                Admission::OverBudget(why) => {
                    job::give_up(&mut tx, run, job_id, jobs::JobState::OverBudget, &why).await?;
                }
            }
            tx.commit().await?;
            Ok(())
        }
        .boxed()
    }
}
