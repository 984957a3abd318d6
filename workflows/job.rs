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

use super::Workflow;
use crate::steps::{
    await_report, claim_repo, deliver_files, finish_job, job, open_pull_request, settle,
    spawn_worker,
};

pub const JOB: Workflow = Workflow {
    name: "job",
    steps: &[
        settle::NAME,
        claim_repo::NAME,
        spawn_worker::NAME,
        deliver_files::NAME,
        await_report::NAME,
        open_pull_request::NAME,
        finish_job::NAME,
    ],
    on_failure: Some(job::abandon),
};
