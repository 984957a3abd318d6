//! What the job workflow's steps share: the run's job id, the retry backoff, and the two ways
//! an attempt or a job ends early (a new attempt; giving the job up).

use std::time::Duration;

use serde_json::{json, Value};

use super::StepError;
use crate::{
    context::Env,
    db::{now_ms, Tx},
    jobs::{self, Attempt, Outcome},
    workflows::{engine::StepRun, Transition},
};

/// The job a job-workflow run works on (its input is `{"job_id": N}`).
pub fn job_id(run: &StepRun) -> Result<i64, StepError> {
    run.input
        .get("job_id")
        .and_then(Value::as_i64)
        .ok_or_else(|| StepError::Fatal(format!("run {} has no job_id in its input", run.run_id)))
}

/// The worker the `spawn` step started for the current attempt.
pub fn worker_of(run: &StepRun) -> Result<String, StepError> {
    run.output_of(super::spawn_worker::NAME)?
        .get("worker_id")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| StepError::Fatal(format!("run {}: spawn recorded no worker", run.run_id)))
}

/// Delay before attempt `attempt + 1`: the configured backoff, doubled per attempt, capped.
pub fn backoff(env: &Env, attempt: i32) -> Duration {
    let base = env.config.jobs.retry_backoff;
    let factor = 1u32 << (attempt.clamp(1, 8) - 1);
    (base * factor).min(Duration::from_secs(600))
}

/// Stops the attempt's worker, records why the attempt failed, and sends the run back to
/// `spawn` for a new attempt after the backoff (where the attempt limit is checked). The stop
/// happens before the transaction: a crash in between stops it again on the re-run.
pub async fn retry_attempt(
    env: &Env,
    run: &StepRun,
    attempt: &Attempt,
    reason: &str,
) -> Result<(), StepError> {
    if let Some(handle) = &attempt.handle {
        env.spawner.stop(&attempt.worker_id, handle).await?;
    }
    let now = now_ms();
    let mut tx = env.db.begin().await?;
    jobs::fail_attempt(&mut tx, &attempt.worker_id, reason, now).await?;
    let delay = backoff(env, attempt.attempt);
    tracing::warn!(job = attempt.job_id, worker_id = %attempt.worker_id, attempt = attempt.attempt, reason, retry_in = %humantime::format_duration(delay), "attempt failed");
    run.complete(
        &mut tx,
        Transition::Goto {
            step: super::spawn_worker::NAME,
            delay,
            output: json!({"worker_id": attempt.worker_id, "failed": reason}),
        },
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Ends the job without a pull request: releases its claim, records `state` and why, and
/// finishes the run — in `tx`, which the caller commits.
pub async fn give_up(
    tx: &mut Tx,
    run: &StepRun,
    job: i64,
    state: &'static str,
    why: &str,
) -> Result<(), StepError> {
    let now = now_ms();
    jobs::release_repo(tx, job).await?;
    jobs::record_outcome(
        tx,
        job,
        &Outcome {
            state,
            outcome: why.to_owned(),
            ..Outcome::default()
        },
        now,
    )
    .await?;
    tracing::warn!(job, state, why, "job ended without a pull request");
    run.complete(
        tx,
        Transition::Finish(json!({"state": state, "why": why})),
        now,
    )
    .await?;
    Ok(())
}
