//! The job workflow (docs/design.md section 4): one run per spawn decision (and per `conductor retry`).
//!
//! ```text
//! settle ──► claim ──► spawn ──► deliver ──► await ──► open_pr ──► finish
//! (incidents (repo      (worker,   (until its    (until its   (PR, or a     (release the claim,
//!  wait for   lock;      attempt    handshake;    report;      failure       record the outcome)
//!  late       waits)     + token)   deadline)     lease)       issue)
//!  alarms;                 ▲            │             │
//!  merged:                 └────────────┴─────────────┘  no handshake / lease expired: stop the
//!  no agent)                 worker, new attempt after backoff; past jobs.max_attempts: quarantined
//! ```
//!
//! No step blocks on a worker: `deliver` and `await` are timers that the worker's handshake
//! and report wake early (`engine::wake_step`).
//!
//! A run that fails for good (a fatal step error, a step past its attempt cap) ends the job
//! through [`abandon`]: its worker stopped, its attempt failed, its claim released, the
//! job `failed` with the reason — and `conductor retry JOB` can start it again.

use std::time::Duration;

use serde_json::{json, Value};

use super::names;
use crate::{
    context::Env,
    db::{now_ms, Tx},
    engine::{self, StepError, StepRun, Transition, Workflow},
    error::Error,
    jobs::{self, notices::Event, Attempt, Outcome},
};

pub const JOB: Workflow = Workflow {
    name: "job",
    steps: &[
        names::SETTLE,
        names::CLAIM,
        names::SPAWN,
        names::DELIVER,
        names::AWAIT,
        names::OPEN_PR,
        names::FINISH,
    ],
    on_failure: Some(abandon),
};

/// Starts the job workflow for a job that has no run yet (the decide step, on a spawn), in
/// `tx`. Returns the new run, or None if the job already had one.
pub async fn start(tx: &mut Tx, job: i64, now_ms: i64) -> Result<Option<i64>, Error> {
    if jobs::run_of_job(tx, job).await?.is_some() {
        return Ok(None);
    }
    new_run(tx, job, now_ms).await.map(Some)
}

/// [`start`] for the jobs a batch of decisions spawned, in `tx`, in a handful of statements
/// whatever their number: a job that already has a run (a decision found stored) is left.
/// `incident_jobs` are the ones that settle: their first step is due once `settle` has passed
/// (a first look now could only wait that long), the others' now.
pub async fn start_many(
    tx: &mut Tx,
    jobs: &[i64],
    incident_jobs: &[i64],
    settle: Duration,
    now_ms: i64,
) -> Result<(), Error> {
    if jobs.is_empty() {
        return Ok(());
    }
    let jobs = jobs::without_run(tx, jobs).await?;
    let (settling, at_once): (Vec<i64>, Vec<i64>) = jobs
        .into_iter()
        .partition(|j| !settle.is_zero() && incident_jobs.contains(j));
    for (group, delay) in [(at_once, None), (settling, Some(settle))] {
        if group.is_empty() {
            continue;
        }
        let inputs: Vec<Value> = group.iter().map(|j| json!({ "job_id": j })).collect();
        let runs = engine::batch::start_runs(tx, &JOB, &inputs, delay, now_ms).await?;
        let pairs: Vec<(i64, i64)> = group.into_iter().zip(runs).collect();
        jobs::set_runs(tx, &pairs, now_ms).await?;
    }
    Ok(())
}

/// `conductor retry`: a new run for a job that has ended (succeeded, failed or quarantined).
/// Its attempt numbers continue; the quarantine limit counts from here.
pub async fn retry(tx: &mut Tx, job: i64, now_ms: i64) -> Result<i64, Error> {
    let j = jobs::load_job(tx, job).await?;
    let current = jobs::run_of_job(tx, job).await?;
    // A job whose run failed before its give-up path ran (a crash, a database older than
    // it) counts as ended too.
    let run_status = jobs::run_status(tx, job).await?;
    if !j.is_finished() && run_status.as_deref() != Some("failed") {
        return Err(Error::Invalid(format!(
            "job {job} is {}; only a succeeded, failed or quarantined job can be retried",
            j.state
        )));
    }
    // Two retries at once (a double click, two operators) both saw the job ended: only the
    // one whose reset still finds the run it saw goes on.
    if !jobs::reset_for_retry(tx, job, current, now_ms).await? {
        return Err(Error::Invalid(format!(
            "job {job} was retried by someone else at the same moment"
        )));
    }
    jobs::release_repo(tx, job).await?;
    new_run(tx, job, now_ms).await
}

async fn new_run(tx: &mut Tx, job: i64, now_ms: i64) -> Result<i64, Error> {
    let run = engine::start_run(tx, &JOB, &serde_json::json!({ "job_id": job }), now_ms).await?;
    jobs::set_run(tx, job, run, now_ms).await?;
    Ok(run)
}

// What the job workflow's steps share: the run's job id, the retry backoff, and the ways an
// attempt or a job ends early (a new attempt; giving the job up), each routing the run.

/// The job a job-workflow run works on (its input is `{"job_id": N}`).
pub fn job_id(run: &StepRun) -> Result<i64, StepError> {
    run.input
        .get("job_id")
        .and_then(Value::as_i64)
        .ok_or_else(|| StepError::Fatal(format!("run {} has no job_id in its input", run.run_id)))
}

/// Delay before attempt `attempt + 1`: the configured backoff, doubled per attempt, capped.
pub fn backoff(env: &Env, attempt: i32) -> Duration {
    let base = env.config.jobs.retry_backoff;
    let factor = 1u32 << (attempt.clamp(1, 8) - 1);
    (base * factor).min(Duration::from_secs(600))
}

/// Fails the attempt (only if it is still active: a report that arrived meanwhile wins, and
/// the step just looks again), sends the run back to `spawn` for a new attempt after the
/// backoff (where the attempt limit is checked), and then stops the worker. The stop comes
/// after the commit so a worker that reported at the last moment is never killed for
/// nothing; a crash before the stop is covered by `spawn`, which stops the previous attempt's
/// worker before starting the next.
pub async fn retry_attempt(
    env: &Env,
    run: &StepRun,
    attempt: &Attempt,
    reason: &str,
) -> Result<(), StepError> {
    let now = now_ms();
    let mut tx = env.db.begin().await?;
    if !jobs::fail_attempt(&mut tx, &attempt.worker_id, reason, now).await? {
        let current = jobs::attempt_by_worker(&mut tx, &attempt.worker_id).await?;
        if current.as_ref().map(|a| a.state) != Some(jobs::AttemptState::Failed) {
            tracing::info!(worker_id = %attempt.worker_id, "attempt moved on before it could be failed; looking again");
            run.complete(&mut tx, Transition::Wait(Duration::ZERO), now)
                .await?;
            tx.commit().await?;
            return Ok(());
        }
    }
    let delay = backoff(env, attempt.attempt);
    tracing::warn!(job_id = attempt.job_id, worker_id = %attempt.worker_id, attempt = attempt.attempt, reason, retry_in = %humantime::format_duration(delay), "attempt failed");
    run.complete(
        &mut tx,
        Transition::Goto {
            step: crate::workflows::names::SPAWN,
            delay,
            output: json!({"worker_id": attempt.worker_id, "failed": reason}),
        },
        now,
    )
    .await?;
    tx.commit().await?;
    crate::telemetry::attempt_failed(reason);
    stop_worker(env, attempt).await;
    Ok(())
}

/// Stops an attempt's worker if it has a handle; a failure is logged, not returned: the
/// attempt is already failed, and the next `spawn` tries the stop again.
async fn stop_worker(env: &Env, attempt: &Attempt) {
    if let Some(handle) = &attempt.handle {
        if let Err(e) = env.spawner.stop(&attempt.worker_id, handle).await {
            tracing::warn!(worker_id = %attempt.worker_id, error = %e, "could not stop the worker");
        }
    }
}

/// The job workflow's [`OnFailure`](crate::engine::OnFailure): ends a job whose
/// run failed for good. Stops the latest attempt's worker (if still active), fails that
/// attempt, releases the repository claim and marks the job `failed` with the step and the
/// reason, unless it already ended. Retry safety: the stop comes first and is a no-op for a
/// worker already gone; the writes are conditional on the states they leave, so running it
/// again writes nothing new.
pub fn abandon<'a>(
    env: &'a Env,
    run: &'a StepRun,
    why: &'a str,
) -> futures::future::BoxFuture<'a, Result<(), StepError>> {
    use futures::FutureExt;
    async move {
        let job_id = job_id(run)?;
        let mut tx = env.db.begin().await?;
        let job = jobs::load_job(&mut tx, job_id).await?;
        let active = jobs::latest_attempt(&mut tx, job_id)
            .await?
            .filter(|a| a.is_active() && a.attempt > job.attempt_base);
        drop(tx);
        if let Some(a) = &active {
            if let Some(handle) = &a.handle {
                env.spawner.stop(&a.worker_id, handle).await?;
            }
        }
        let now = now_ms();
        let reason = format!("gave up at step {}: {why}", run.step);
        let mut tx = env.db.begin().await?;
        if let Some(a) = &active {
            jobs::fail_attempt(&mut tx, &a.worker_id, &reason, now).await?;
        }
        release_slot(&mut tx, job_id, now).await?;
        let job = jobs::load_job(&mut tx, job_id).await?;
        if !job.is_finished() {
            jobs::record_outcome(
                &mut tx,
                job_id,
                &Outcome::without_pull_request(jobs::JobState::Failed, reason.clone()),
                now,
            )
            .await?;
            super::notice::tell(&mut tx, job_id, run.run_id, Event::Ended, now).await?;
        }
        tx.commit().await?;
        tracing::error!(
            job_id = job_id,
            run_id = run.run_id,
            reason,
            "job abandoned"
        );
        Ok(())
    }
    .boxed()
}

/// Ends an incident job whose incident was merged into another before any worker of this job
/// started, while the surviving incident's job is still under way: that job's agent works the
/// merged incident. Returns whether it ended the job (the caller commits `tx`). A job that
/// already started a worker keeps going (two agents then work the one incident, which the
/// history shows through the merge), and so does one whose survivor has no job left to do it
/// (opened under shadow, or already ended): the alarms are never left without an agent.
/// It holds the account's lock (Postgres), so a merge cannot commit between this check and
/// the caller's next write.
pub async fn end_if_merged(tx: &mut Tx, run: &StepRun, job: &jobs::Job) -> Result<bool, StepError> {
    let Some(incident) = job.incident_id else {
        return Ok(false);
    };
    if job.attempts > 0 {
        return Ok(false);
    }
    let account = jobs::incident_account(tx, incident).await?;
    crate::scheduling::store::sql::lock_account(tx, &account).await?;
    let Some((into, Some(into_job))) = jobs::merged_into(tx, incident).await? else {
        return Ok(false);
    };
    // The surviving job covers this incident if it is still under way, or if its agent
    // started after the merge (its task files listed these alarms): jobs that share a
    // repository run one after another, so it may well have finished by now.
    if jobs::load_job(tx, into_job).await?.is_finished() {
        let merged = jobs::merged_ms(tx, incident).await?;
        let started = jobs::first_attempt_ms(tx, into_job).await?;
        let covered = matches!((merged, started), (Some(m), Some(s)) if s >= m);
        if !covered {
            return Ok(false);
        }
    }
    let why = format!("incident {incident} was merged into incident {into} (job {into_job}) before an agent started; that job's agent works it");
    tracing::info!(
        job = job.id,
        incident,
        into,
        "merged before its agent started: no agent"
    );
    give_up(tx, run, job.id, jobs::JobState::Merged, &why).await?;
    Ok(true)
}

/// Releases the job's slot (`repo_claims`) and wakes the `claim` of the jobs next in line
/// for it, in `tx`: a freed slot is taken at once, not at the waiters' next poll.
pub async fn release_slot(tx: &mut Tx, job: i64, now_ms: i64) -> Result<(), Error> {
    let waiting = jobs::caps::next_in_line(tx, job).await?;
    jobs::release_repo(tx, job).await?;
    for run in waiting {
        engine::wake_step(tx, run, names::CLAIM, now_ms).await?;
    }
    Ok(())
}

/// Ends the job without a pull request: releases its claim, records `state` and why, and
/// finishes the run — in `tx`, which the caller commits.
pub async fn give_up(
    tx: &mut Tx,
    run: &StepRun,
    job: i64,
    state: jobs::JobState,
    why: &str,
) -> Result<(), StepError> {
    let now = now_ms();
    release_slot(tx, job, now).await?;
    jobs::record_outcome(
        tx,
        job,
        &Outcome::without_pull_request(state, why.to_owned()),
        now,
    )
    .await?;
    super::notice::tell(tx, job, run.run_id, Event::Ended, now).await?;
    tracing::warn!(job, state = %state, why, "job ended without a pull request");
    run.complete(
        tx,
        Transition::Finish(json!({"state": state, "why": why})),
        now,
    )
    .await?;
    Ok(())
}
