//! The steps workflows are made of, one per file, named by what it does. Each step's doc
//! comment says what it reads, what it writes, and why running it again is safe: apalis
//! re-runs a step whose process died mid-way (docs/apalis.md), so every step must
//! tolerate being started twice.

use futures::future::BoxFuture;

use crate::{context::Env, engine::StepRun, workflows::names};

pub mod await_report;
pub mod claim;
pub mod decide;
pub mod deliver;
pub mod finish;
pub mod ingest;
pub mod notify;
pub mod open_pr;
pub mod settle;
pub mod spawn;

/// A step of a workflow; its name is its [`Registered`] variant's. `run` does the step's work
/// and, on success, must finish by calling [`StepRun::complete`] inside the same transaction
/// as its own writes.
pub trait Step: Send + Sync {
    fn run<'a>(&'a self, env: &'a Env, run: &'a StepRun) -> BoxFuture<'a, Result<(), StepError>>;
}

pub use crate::engine::StepError;

/// Every step of this build, in pipeline order: the one place a step is registered, the way
/// mini-redis's `Command` lists its commands. Its name (its apalis queue,
/// `conductor.<name>`), whether it takes in new work, and its code all come from here: a new
/// step is a variant, and the compiler asks for the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    Ingest,
    Decide,
    Settle,
    Claim,
    Spawn,
    Deliver,
    Await,
    OpenPr,
    Finish,
    Notify,
}

impl Registered {
    pub const ALL: [Registered; 10] = [
        Registered::Ingest,
        Registered::Decide,
        Registered::Settle,
        Registered::Claim,
        Registered::Spawn,
        Registered::Deliver,
        Registered::Await,
        Registered::OpenPr,
        Registered::Finish,
        Registered::Notify,
    ];

    /// The step's name: what runs store and what its queue is called.
    pub const fn name(self) -> &'static str {
        match self {
            Registered::Ingest => names::INGEST,
            Registered::Decide => names::DECIDE,
            Registered::Settle => names::SETTLE,
            Registered::Claim => names::CLAIM,
            Registered::Spawn => names::SPAWN,
            Registered::Deliver => names::DELIVER,
            Registered::Await => names::AWAIT,
            Registered::OpenPr => names::OPEN_PR,
            Registered::Finish => names::FINISH,
            Registered::Notify => names::NOTIFY,
        }
    }

    /// Whether the step takes in new work: paused while the shutdown gate is closed. The
    /// steps of jobs whose worker may already run never are.
    pub const fn intake(self) -> bool {
        matches!(
            self,
            Registered::Ingest
                | Registered::Decide
                | Registered::Settle
                | Registered::Claim
                | Registered::Spawn
        )
    }

    /// The step's code.
    pub fn step(self) -> &'static dyn Step {
        match self {
            Registered::Ingest => &ingest::Ingest,
            Registered::Decide => &decide::Decide,
            Registered::Settle => &settle::Settle,
            Registered::Claim => &claim::ClaimRepo,
            Registered::Spawn => &spawn::SpawnWorker,
            Registered::Deliver => &deliver::DeliverFiles,
            Registered::Await => &await_report::AwaitReport,
            Registered::OpenPr => &open_pr::OpenPullRequest,
            Registered::Finish => &finish::FinishJob,
            Registered::Notify => &notify::Notify,
        }
    }

    /// The step registered under `name`.
    pub fn by_name(name: &str) -> Option<Registered> {
        Registered::ALL.into_iter().find(|r| r.name() == name)
    }
}

/// Every step name this build can run (one apalis queue each).
pub const ALL: [&str; Registered::ALL.len()] = {
    let mut names = [""; Registered::ALL.len()];
    let mut i = 0;
    while i < Registered::ALL.len() {
        names[i] = Registered::ALL[i].name();
        i += 1;
    }
    names
};

/// The step implementation registered under `name`.
pub fn by_name(name: &str) -> Option<&'static dyn Step> {
    Registered::by_name(name).map(Registered::step)
}

/// Whether step `name` takes in new work (see [`Registered::intake`]).
pub fn is_intake(name: &str) -> bool {
    Registered::by_name(name).is_some_and(Registered::intake)
}

/// The steps that take in new work.
pub fn intake() -> impl Iterator<Item = &'static str> {
    Registered::ALL
        .into_iter()
        .filter(|r| r.intake())
        .map(Registered::name)
}
