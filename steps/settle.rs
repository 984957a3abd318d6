//! **settle** — holds a new incident's job back for `incidents.settle` before it claims a
//! repository and starts an agent (Alertmanager's `group_wait`), so alarms that arrive soon
//! after the first one join the incident and reach the agent in its task files.
//!
//! Reads: the job (kind, creation time, state), its incident and the merges it took part in.
//! Writes: either the step's completion (`Wait` until the settle time has passed, or `Next`),
//! or — when the job's incident was merged into another before any worker started — the job
//! ended as `merged`, naming the incident (and job) that absorbed it, and the run finished.
//! Once the settle time has passed, it also waits for the account's alarms received within it
//! that are still undecided (a busy decider), so a bridging alarm that arrived in time always
//! merges before an agent starts. Ticket jobs pass straight through.
//! Retry safety: it writes nothing but its own completion or the job's end, in one
//! transaction, and decides only from stored times and merges; a re-run after a crash
//! recomputes the same answer (the wait shortens by the time already waited).

use futures::{future::BoxFuture, FutureExt};
use serde_json::json;

use super::{Step, StepError};
use crate::workflows::job;
use crate::{
    context::Env,
    db::now_ms,
    engine::{self, StepRun, Transition},
    jobs,
};

pub const NAME: &str = crate::workflows::names::SETTLE;

/// How long a settled job waits before looking again at its account's undecided backlog: half
/// the time it has waited past its settle time, within these bounds. A backlog that takes long
/// to drain is looked at a few times (logarithmically many), not every second by every job
/// (a storm's thousands of settling jobs would otherwise take the deciders' share of the
/// database), and the agent starts at most half as late again as the backlog made it.
const BACKLOG_WAIT_MIN: std::time::Duration = std::time::Duration::from_secs(1);
const BACKLOG_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// Alarms of the incident's account received by `until_ms` that are not decided yet.
async fn undecided(tx: &mut crate::db::Tx, incident: i64, until_ms: i64) -> Result<i64, StepError> {
    let account = jobs::incident_account(tx, incident).await?;
    Ok(engine::running_with_key(
        tx,
        &crate::workflows::message::alarm_order_key(&account),
        until_ms,
    )
    .await?)
}

pub struct Settle;

impl Step for Settle {
    fn run<'a>(&'a self, env: &'a Env, run: &'a StepRun) -> BoxFuture<'a, Result<(), StepError>> {
        async move {
            let job_id = job::job_id(run)?;
            let now = now_ms();
            let mut tx = env.db.begin().await?;
            let job = jobs::load_job(&mut tx, job_id).await?;
            if job.is_finished() {
                run.complete(
                    &mut tx,
                    Transition::Finish(json!({"state": job.state})),
                    now,
                )
                .await?;
                tx.commit().await?;
                return Ok(());
            }
            if job::end_if_merged(&mut tx, run, &job).await? {
                tx.commit().await?;
                return Ok(());
            }
            let settle = env.config.incidents.settle.as_millis() as i64;
            let until = job.created_ms + settle;
            let transition = match job.incident_id {
                Some(_) if now < until => {
                    Transition::Wait(std::time::Duration::from_millis((until - now) as u64))
                }
                // The settle time has passed, but alarms of the account received within it
                // may still wait for their decision (a busy decider): they go first, so a
                // late alarm received in time always merges before an agent starts.
                Some(incident) if settle > 0 && undecided(&mut tx, incident, until).await? > 0 => {
                    let past = std::time::Duration::from_millis((now - until).max(0) as u64);
                    Transition::Wait((past / 2).clamp(BACKLOG_WAIT_MIN, BACKLOG_WAIT_MAX))
                }
                _ => Transition::Next(json!({})),
            };
            run.complete(&mut tx, transition, now).await?;
            tx.commit().await?;
            Ok(())
        }
        .boxed()
    }
}
