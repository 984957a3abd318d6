//! Starting and stopping workers (DESIGN section 4, `spawn`). One interface, several homes: a
//! local process (the embedded default, [`local`]); ECS Fargate arrives with the AWS issue.

pub mod local;

use futures::future::BoxFuture;

use crate::error::Error;

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
}

impl std::fmt::Debug for WorkerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerSpec")
            .field("worker_id", &self.worker_id)
            .field("token", &"<redacted>")
            .field("conductor_addr", &self.conductor_addr)
            .field("job_id", &self.job_id)
            .field("attempt", &self.attempt)
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
}
