//! **await** — waits for the worker's report while its lease holds.
//!
//! Reads: the attempt (its state, lease and report).
//! Writes: nothing while the lease holds (a timer of at most `jobs.await_poll`, or until the
//! lease runs out; the report wakes it at once); on a report, the step's completion with it;
//! when the lease expired (no heartbeat: the worker hung, crashed or lost its network), or
//! the spawner reports the worker ended (a STOPPED Fargate task, with its exit code and
//! stopped reason), the worker is stopped, the attempt failed, and the run goes back to
//! `spawn` after the backoff.
//! Retry safety: as `deliver` — it reads state and moves on from it; the report itself was
//! stored by the protocol server in its own transaction.

use std::time::Duration;

use futures::{future::BoxFuture, FutureExt};

use super::{spawn, Step, StepError};
use crate::workflows::job;
use crate::{
    context::Env,
    db::now_ms,
    engine::{StepRun, Transition},
    jobs::spawner::WorkerState,
    jobs::{AttemptState, Report},
};

pub const NAME: &str = crate::workflows::names::AWAIT;

/// What `open_pr` and `finish` read: the worker's report, and whose it is.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Awaited {
    #[serde(flatten)]
    pub report: Report,
    pub worker_id: String,
    pub attempt: i32,
}

impl crate::engine::StepOutput for Awaited {
    const STEP: &'static str = NAME;
}

pub struct AwaitReport;

impl Step for AwaitReport {
    fn run<'a>(&'a self, env: &'a Env, run: &'a StepRun) -> BoxFuture<'a, Result<(), StepError>> {
        async move {
            let mut tx = env.db.begin().await?;
            let attempt = spawn::attempt_of(&mut tx, run).await?;
            let now = now_ms();
            match attempt.state {
                AttemptState::Reported => {
                    let report = Report {
                        success: attempt.success.unwrap_or(false),
                        title: attempt.title.clone().unwrap_or_default(),
                        report: attempt.report.clone().unwrap_or_default(),
                        branch: attempt.branch.clone().unwrap_or_default(),
                        head_sha: attempt.head_sha.clone().unwrap_or_default(),
                        failure: attempt.failure.clone().unwrap_or_default(),
                    };
                    let out = Awaited {
                        report,
                        worker_id: attempt.worker_id.clone(),
                        attempt: attempt.attempt,
                    };
                    run.complete(&mut tx, Transition::next(&out), now).await?;
                    tx.commit().await?;
                    Ok(())
                }
                AttemptState::Handshaken | AttemptState::Delivered => {
                    let until = attempt.lease_until_ms.unwrap_or(now);
                    if now <= until {
                        // A worker whose home says it ended (a stopped Fargate task) will not
                        // report: its attempt ends now, with the reason, not at lease expiry.
                        if let Some(handle) = attempt.handle.clone() {
                            drop(tx);
                            if let WorkerState::Gone(reason) = env.spawner.state(&handle).await? {
                                return job::retry_attempt(env, run, &attempt, &reason).await;
                            }
                            tx = env.db.begin().await?;
                        }
                        let wait = Duration::from_millis((until - now) as u64 + 50)
                            .min(env.config.jobs.await_poll);
                        run.complete(&mut tx, Transition::Wait(wait), now).await?;
                        tx.commit().await?;
                        return Ok(());
                    }
                    drop(tx);
                    let reason = format!(
                        "lease expired: no heartbeat for {}",
                        humantime::format_duration(env.config.jobs.lease)
                    );
                    job::retry_attempt(env, run, &attempt, &reason).await
                }
                AttemptState::Spawned | AttemptState::Spawning => {
                    run.complete(
                        &mut tx,
                        Transition::Goto {
                            step: crate::workflows::names::DELIVER,
                            delay: Duration::ZERO,
                            output: serde_json::Value::Null,
                        },
                        now,
                    )
                    .await?;
                    tx.commit().await?;
                    Ok(())
                }
                _ => {
                    drop(tx);
                    let reason = attempt
                        .failure
                        .clone()
                        .unwrap_or_else(|| "attempt failed".into());
                    job::retry_attempt(env, run, &attempt, &reason).await
                }
            }
        }
        .boxed()
    }
}
