//! The steps workflows are made of, one per file, named by what it does. Each step's doc
//! comment says what it reads, what it writes, and why running it again is safe: apalis
//! re-runs a step whose process died mid-way (docs/apalis.md), so every step must
//! tolerate being started twice.

use futures::future::BoxFuture;

use crate::{context::Env, engine::StepRun};

pub mod await_report;
pub mod claim_repo;
pub mod decide;
pub mod deliver_files;
pub mod finish_job;
pub mod ingest;
pub mod job;
pub mod names;
pub mod open_pull_request;
pub mod settle;
pub mod spawn_worker;

/// A step of a workflow. `run` does the step's work and, on success, must finish by calling
/// [`StepRun::complete`] inside the same transaction as its own writes.
pub trait Step: Send + Sync {
    fn name(&self) -> &'static str;
    fn run<'a>(&'a self, env: &'a Env, run: &'a StepRun) -> BoxFuture<'a, Result<(), StepError>>;
}

pub use crate::engine::StepError;

/// The step implementation registered under `name`.
pub fn by_name(name: &str) -> Option<&'static dyn Step> {
    match name {
        ingest::NAME => Some(&ingest::Ingest),
        decide::NAME => Some(&decide::Decide),
        settle::NAME => Some(&settle::Settle),
        claim_repo::NAME => Some(&claim_repo::ClaimRepo),
        spawn_worker::NAME => Some(&spawn_worker::SpawnWorker),
        deliver_files::NAME => Some(&deliver_files::DeliverFiles),
        await_report::NAME => Some(&await_report::AwaitReport),
        open_pull_request::NAME => Some(&open_pull_request::OpenPullRequest),
        finish_job::NAME => Some(&finish_job::FinishJob),
        _ => None,
    }
}

/// Every step name this build can run (one apalis queue each).
pub const ALL: &[&str] = &[
    ingest::NAME,
    decide::NAME,
    settle::NAME,
    claim_repo::NAME,
    spawn_worker::NAME,
    deliver_files::NAME,
    await_report::NAME,
    open_pull_request::NAME,
    finish_job::NAME,
];
