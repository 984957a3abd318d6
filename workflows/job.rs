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
//! through [`job::abandon`]: its worker stopped, its attempt failed, its claim released, the
//! job `failed` with the reason — and `conductor retry JOB` can start it again.

use crate::engine::{self, Workflow};
use crate::{
    db::Tx,
    error::Error,
    jobs,
    steps::{await_report, claim, deliver, finish, job, open_pr, settle, spawn},
};

pub const JOB: Workflow = Workflow {
    name: "job",
    steps: &[
        settle::NAME,
        claim::NAME,
        spawn::NAME,
        deliver::NAME,
        await_report::NAME,
        open_pr::NAME,
        finish::NAME,
    ],
    on_failure: Some(job::abandon),
};

/// Starts the job workflow for a job that has no run yet (the decide step, on a spawn), in
/// `tx`. Returns the new run, or None if the job already had one.
pub async fn start(tx: &mut Tx, job: i64, now_ms: i64) -> Result<Option<i64>, Error> {
    if jobs::run_of_job(tx, job).await?.is_some() {
        return Ok(None);
    }
    new_run(tx, job, now_ms).await.map(Some)
}

/// `conductor retry`: a new run for a job that has ended (succeeded, failed or quarantined).
/// Its attempt numbers continue; the quarantine limit counts from here.
pub async fn retry(tx: &mut Tx, job: i64, now_ms: i64) -> Result<i64, Error> {
    let j = jobs::load_job(tx, job).await?;
    // A job whose run failed before its give-up path ran (a crash, a database older than
    // it) counts as ended too.
    let run_status = jobs::run_status(tx, job).await?;
    if !j.is_finished() && run_status.as_deref() != Some("failed") {
        return Err(Error::Invalid(format!(
            "job {job} is {}; only a succeeded, failed or quarantined job can be retried",
            j.state
        )));
    }
    jobs::release_repo(tx, job).await?;
    jobs::reset_for_retry(tx, job, now_ms).await?;
    new_run(tx, job, now_ms).await
}

async fn new_run(tx: &mut Tx, job: i64, now_ms: i64) -> Result<i64, Error> {
    let run = engine::start_run(tx, &JOB, &serde_json::json!({ "job_id": job }), now_ms).await?;
    jobs::set_run(tx, job, run, now_ms).await?;
    Ok(run)
}
