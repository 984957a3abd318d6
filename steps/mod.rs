//! The steps workflows are made of, one per file, named by what it does. Each step's doc
//! comment says what it reads, what it writes, and why running it again is safe: apalis
//! re-runs a step whose process died mid-way (docs/apalis.md), so every step must
//! tolerate being started twice.

use futures::future::BoxFuture;

use crate::{context::Env, engine::StepRun};

pub mod await_report;
pub mod claim;
pub mod decide;
pub mod deliver;
pub mod finish;
pub mod ingest;
pub mod open_pr;
pub mod settle;
pub mod spawn;

/// A step of a workflow; its name is its entry in [`REGISTRY`]. `run` does the step's work
/// and, on success, must finish by calling [`StepRun::complete`] inside the same transaction
/// as its own writes.
pub trait Step: Send + Sync {
    fn run<'a>(&'a self, env: &'a Env, run: &'a StepRun) -> BoxFuture<'a, Result<(), StepError>>;
}

pub use crate::engine::StepError;

/// A step of this build: its name (its apalis queue, `conductor.<name>`), whether it takes in
/// new work (paused while the shutdown gate is closed; the steps of jobs whose worker may
/// already run never are), and its code.
pub struct Registered {
    pub name: &'static str,
    pub intake: bool,
    pub step: &'static dyn Step,
}

/// Every step of this build, in pipeline order: the one place a step is registered. Names,
/// queues, intake membership and dispatch all come from here.
pub const REGISTRY: [Registered; 9] = [
    Registered {
        name: ingest::NAME,
        intake: true,
        step: &ingest::Ingest,
    },
    Registered {
        name: decide::NAME,
        intake: true,
        step: &decide::Decide,
    },
    Registered {
        name: settle::NAME,
        intake: true,
        step: &settle::Settle,
    },
    Registered {
        name: claim::NAME,
        intake: true,
        step: &claim::ClaimRepo,
    },
    Registered {
        name: spawn::NAME,
        intake: true,
        step: &spawn::SpawnWorker,
    },
    Registered {
        name: deliver::NAME,
        intake: false,
        step: &deliver::DeliverFiles,
    },
    Registered {
        name: await_report::NAME,
        intake: false,
        step: &await_report::AwaitReport,
    },
    Registered {
        name: open_pr::NAME,
        intake: false,
        step: &open_pr::OpenPullRequest,
    },
    Registered {
        name: finish::NAME,
        intake: false,
        step: &finish::FinishJob,
    },
];

/// Every step name this build can run (one apalis queue each).
pub const ALL: [&str; REGISTRY.len()] = {
    let mut names = [""; REGISTRY.len()];
    let mut i = 0;
    while i < REGISTRY.len() {
        names[i] = REGISTRY[i].name;
        i += 1;
    }
    names
};

/// The step implementation registered under `name`.
pub fn by_name(name: &str) -> Option<&'static dyn Step> {
    REGISTRY.iter().find(|r| r.name == name).map(|r| r.step)
}

/// Whether step `name` takes in new work (see [`Registered::intake`]).
pub fn is_intake(name: &str) -> bool {
    REGISTRY.iter().any(|r| r.intake && r.name == name)
}

/// The steps that take in new work.
pub fn intake() -> impl Iterator<Item = &'static str> {
    REGISTRY.iter().filter(|r| r.intake).map(|r| r.name)
}
