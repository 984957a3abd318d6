//! **spawn** — starts a worker for a new attempt of the job (or quarantines the job).
//!
//! Reads: the job, its latest attempt, the claimed target (claim's output: repository and
//! environment), the task templates, and — when an earlier attempt or run of the job pushed a
//! branch — whether that branch's pull request is still open (the forge): the new attempt then
//! continues that branch, and its task files say so.
//! Writes: first, in its own transaction, the attempt row (`spawning`: worker id
//! `j<job>-a<n>`, the hash of a fresh random token, the rendered task files, fixed from then
//! on; the token itself lives only in this step's memory and the worker's); then it
//! starts the worker through the spawner; then, with the step's completion, the worker's
//! handle and handshake deadline (`spawned`).
//! When the job has used `jobs.max_attempts` attempts since its last retry, it is quarantined
//! instead: claim released, run finished.
//! Retry safety: a re-run that finds its own attempt (the latest, not failed, made since the
//! last retry) reuses it. Still `spawning` (a crash after the first commit): the *same*
//! attempt is started again — same id, same files, a fresh token whose hash replaces the
//! stored one (the first token was never stored) — so a deduplicating spawner (Fargate's
//! `startedBy` lookup) starts nothing new, and the protocol accepts one handshake per
//! attempt: a worker the first run started either handshook already (then this re-run starts
//! nothing) or holds the old token and is refused, leaving the attempt to the new worker or,
//! on Fargate, to the handshake deadline and a new attempt. Already further (the
//! worker called in before the step re-ran): nothing is started, the step just completes (the
//! handshake recorded the worker's handle). Before a new attempt, the previous attempt's
//! worker is stopped again, in case the step that failed it died before its stop.
//! Attempt numbers only grow.

use futures::{future::BoxFuture, FutureExt};
use serde_json::json;

use super::{Step, StepError};
use crate::workflows::job;
use crate::{
    context::Env,
    db::{now_ms, Tx},
    engine::{StepRun, Transition},
    jobs::routing::Target,
    jobs::spawner::WorkerSpec,
    jobs::task_files::{self, Continuing, JobSpec},
    jobs::{self, Attempt, AttemptState},
};

pub const NAME: &str = crate::workflows::names::SPAWN;

pub struct SpawnWorker;

/// 32 random bytes from the kernel, as hex.
fn new_token() -> Result<String, StepError> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| StepError::Retryable(format!("reading /dev/urandom: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl Step for SpawnWorker {
    fn run<'a>(&'a self, env: &'a Env, run: &'a StepRun) -> BoxFuture<'a, Result<(), StepError>> {
        async move {
            let job_id = job::job_id(run)?;
            let target: Target = run.output()?;
            // Asked before the transaction: it may call the forge.
            let continuing = continuation(env, job_id, &target).await?;
            let mut tx = env.db.begin().await?;
            let job = jobs::load_job(&mut tx, job_id).await?;
            if job.is_finished() {
                // Given up meanwhile (workflows::job::abandon): nothing more to start.
                tracing::warn!(job_id = job_id, state = %job.state, "job already ended; not spawning");
                run.complete(
                    &mut tx,
                    Transition::Finish(json!({"state": job.state})),
                    now_ms(),
                )
                .await?;
                tx.commit().await?;
                return Ok(());
            }
            let latest = jobs::latest_attempt(&mut tx, job_id).await?;
            let prepared = match latest {
                // This step's own attempt, from before a crash: started or not, it is reused.
                Some(a) if a.state != AttemptState::Failed && a.attempt > job.attempt_base => {
                    resume_attempt(run, tx, a).await?
                }
                latest => new_attempt(env, run, tx, &job, &target, latest, continuing).await?,
            };
            match prepared {
                Prepared::Start(attempt) => start_worker(env, run, &attempt, &target).await,
                Prepared::Done => Ok(()),
            }
        }
        .boxed()
    }
}

/// What the first part of the step leaves to the second.
enum Prepared {
    /// An attempt to start a worker for, its token in memory (committed as `spawning`).
    Start(Box<Attempt>),
    /// The step completed already (the worker called in, the job ended or was quarantined).
    Done,
}

/// This step's own attempt from before a crash. Further than `spawning` (the worker called in
/// while the step was down): only the step is completed. Still `spawning`: a fresh token's
/// hash replaces the stored one, since only the hash was kept, and a worker the first run may
/// have started holds the old token and is refused.
async fn resume_attempt(run: &StepRun, mut tx: Tx, mut a: Attempt) -> Result<Prepared, StepError> {
    if a.state != AttemptState::Spawning {
        run.complete(
            &mut tx,
            Transition::next(&Spawned {
                worker_id: a.worker_id.clone(),
                attempt: a.attempt,
                handle: a.handle.clone(),
            }),
            now_ms(),
        )
        .await?;
        tx.commit().await?;
        return Ok(Prepared::Done);
    }
    let token = new_token()?;
    if !jobs::set_token_hash(&mut tx, &a.worker_id, &crate::secrets::hash_token(&token)).await? {
        // Its worker handshook in between: look again.
        return Err(StepError::Retryable(format!(
            "attempt {} moved on; looking again",
            a.worker_id
        )));
    }
    tx.commit().await?;
    a.token = token;
    Ok(Prepared::Start(Box::new(a)))
}

/// A new attempt: the previous attempt's worker stopped again (the step that failed it may
/// have died before its stop), then the job ended if its incident was merged away or
/// quarantined past `jobs.max_attempts`; otherwise the attempt row, committed `spawning` with
/// its rendered files and the hash of a fresh token.
async fn new_attempt(
    env: &Env,
    run: &StepRun,
    mut tx: Tx,
    job: &jobs::Job,
    target: &Target,
    latest: Option<Attempt>,
    continuing: Option<Continuing>,
) -> Result<Prepared, StepError> {
    if let Some(prev) = latest
        .as_ref()
        .filter(|a| a.state != AttemptState::Reported)
    {
        if let Some(handle) = &prev.handle {
            env.spawner.stop(&prev.worker_id, handle).await?;
        }
    }
    // Merged into another incident while waiting for its repository: no agent.
    if job::end_if_merged(&mut tx, run, job).await? {
        tx.commit().await?;
        return Ok(Prepared::Done);
    }
    let used = job.attempts - job.attempt_base;
    if used >= env.config.jobs.max_attempts as i32 {
        let last = latest
            .and_then(|a| a.failure)
            .unwrap_or_else(|| "unknown".into());
        let why = format!("quarantined after {used} attempts; last: {last}");
        job::give_up(&mut tx, run, job.id, jobs::JobState::Quarantined, &why).await?;
        tx.commit().await?;
        return Ok(Prepared::Done);
    }
    let n = job.attempts + 1;
    let worker_id = format!("j{}-a{n}", job.id);
    let spec = JobSpec {
        job_id: job.id,
        attempt: n,
        worker_id: worker_id.clone(),
        kind: job.kind.clone(),
        repo: target.repo.clone(),
        base: target.base.clone(),
        branch_prefix: format!("conductor/{worker_id}/"),
        continuing,
    };
    let subject = jobs::subject_of(&mut tx, job).await?;
    let files = match task_files::render(&env.config, &spec, &subject) {
        Ok(f) => f,
        Err(e) => {
            job::give_up(&mut tx, run, job.id, jobs::JobState::Failed, &e.to_string()).await?;
            tx.commit().await?;
            return Ok(Prepared::Done);
        }
    };
    let token = new_token()?;
    let hash = crate::secrets::hash_token(&token);
    jobs::insert_attempt(
        &mut tx,
        &worker_id,
        job.id,
        n,
        &hash,
        env.spawner.name(),
        &files,
        now_ms(),
    )
    .await?;
    tx.commit().await?;
    let mut tx = env.db.begin().await?;
    let mut a = jobs::attempt_by_worker(&mut tx, &worker_id)
        .await?
        .ok_or_else(|| StepError::Retryable(format!("attempt {worker_id} vanished")))?;
    a.token = token;
    Ok(Prepared::Start(Box::new(a)))
}

/// The earlier work a new attempt continues: the branch this job's last successful attempt
/// pushed (an attempt whose pull request failed, or a run before `conductor retry`), with its
/// pull request when one is open (or none yet), unless its pull request was merged or closed
/// meanwhile — then the agent starts from the base.
async fn continuation(
    env: &Env,
    job_id: i64,
    target: &Target,
) -> Result<Option<Continuing>, StepError> {
    let Some(branch) = jobs::last_pushed_branch(&env.db, job_id).await? else {
        return Ok(None);
    };
    // The forge down (or refusing) does not hold the attempt up: the branch is continued, and
    // `open PR` finds its pull request by the head anyway.
    let pull = match env
        .forge
        .pull_request_for(&target.forge_repo, &branch)
        .await
    {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(job_id, branch, error = %e, "could not ask the forge about the earlier branch; continuing it");
            None
        }
    };
    Ok(match pull {
        Some(p) if !p.open => {
            tracing::info!(job_id, branch, pull_request = %p.url, "earlier branch merged or closed; starting from the base");
            None
        }
        pull => Some(Continuing {
            branch,
            pull_request: pull.map(|p| p.url),
        }),
    })
}

/// Starts the attempt's worker through the spawner, then records its handle and handshake
/// deadline (`spawned`) with the step's completion.
async fn start_worker(
    env: &Env,
    run: &StepRun,
    attempt: &Attempt,
    target: &Target,
) -> Result<(), StepError> {
    let spec = WorkerSpec {
        worker_id: attempt.worker_id.clone(),
        token: attempt.token.clone(),
        conductor_addr: env.config.grpc.advertised(),
        job_id: attempt.job_id,
        attempt: attempt.attempt,
        environment: target.environment.clone(),
    };
    let handle = env.spawner.spawn(&spec).await?;
    crate::failpoint::hit("spawn.after_start");
    let now = now_ms();
    let deadline = now + env.config.jobs.handshake_timeout.as_millis() as i64;
    let mut tx = env.db.begin().await?;
    jobs::mark_spawned(&mut tx, &attempt.worker_id, &handle, deadline, now).await?;
    run.complete(
        &mut tx,
        Transition::next(&Spawned {
            worker_id: attempt.worker_id.clone(),
            attempt: attempt.attempt,
            handle: Some(handle),
        }),
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// What the steps after `spawn` read: the attempt's worker and where it runs.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Spawned {
    pub worker_id: String,
    pub attempt: i32,
    /// The spawner's handle (a pid, an ECS task ARN), once known.
    pub handle: Option<String>,
}

impl crate::engine::StepOutput for Spawned {
    const STEP: &'static str = crate::workflows::names::SPAWN;
}

/// The attempt whose worker the `spawn` step started, as it stands now. Its worker id joins
/// the step's span, so every line the step logs names the worker.
pub async fn attempt_of(tx: &mut Tx, run: &StepRun) -> Result<Attempt, StepError> {
    let worker_id = run.output::<Spawned>()?.worker_id;
    tracing::Span::current().record("worker_id", worker_id.as_str());
    jobs::attempt_by_worker(tx, &worker_id)
        .await?
        .ok_or_else(|| StepError::Fatal(format!("no attempt for worker {worker_id}")))
}
