//! Starting and stopping workers (docs/design.md section 4, `spawn`). One interface, several homes: a
//! local process (the embedded default, [`local`]) or an ECS Fargate task ([`ecs`]).

pub mod ecs;
pub mod local;

use futures::future::BoxFuture;

use crate::{config::Environment, error::Error};

/// What a worker is started with. The token is the attempt's secret: it goes into the
/// worker's environment only, never into a log line or a task file.
#[derive(Clone)]
pub struct WorkerSpec {
    pub worker_id: String,
    pub token: String,
    /// The conductor's gRPC address as the worker should dial it.
    pub conductor_addr: String,
    pub job_id: i64,
    pub attempt: i32,
    /// The route's development environment (a command prefix, an image, a task definition);
    /// None: the spawner's own.
    pub environment: Option<Environment>,
}

impl std::fmt::Debug for WorkerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerSpec")
            .field("worker_id", &self.worker_id)
            .field("token", &"<redacted>")
            .field("conductor_addr", &self.conductor_addr)
            .field("job_id", &self.job_id)
            .field("attempt", &self.attempt)
            .field("environment", &self.environment)
            .finish()
    }
}

/// Starts and stops workers.
pub trait Spawner: Send + Sync {
    /// Recorded with each attempt (`job_attempts.spawner`).
    fn name(&self) -> &'static str;
    /// Starts a worker and returns its handle (a pid, a task ARN). Starting the same attempt
    /// twice must not leave two workers able to work: the protocol accepts one handshake per
    /// attempt, and a spawner that can deduplicate (Fargate's `clientToken`) does.
    fn spawn<'a>(&'a self, spec: &'a WorkerSpec) -> BoxFuture<'a, Result<String, Error>>;
    /// Stops the worker behind `handle` (and its agent); a worker already gone is fine.
    fn stop<'a>(&'a self, worker_id: &'a str, handle: &'a str) -> BoxFuture<'a, Result<(), Error>>;
    /// Whether the worker behind `handle` still runs, as its home reports it. A spawner that
    /// cannot tell says `Running`, and the lease decides.
    fn state<'a>(&'a self, _handle: &'a str) -> BoxFuture<'a, Result<WorkerState, Error>> {
        Box::pin(async { Ok(WorkerState::Running) })
    }
}

/// What a spawner knows of a worker it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerState {
    Running,
    /// Ended (a stopped Fargate task), with why: its attempt ends with this reason.
    Gone(String),
}
