//! Conductor: schedules and supervises AI coding agents in reaction to tickets and AWS
//! incidents. See docs/design.md for the design; the module map:
//!
//! - [`domain`]: messages, decisions and the parsing that builds them.
//! - [`policy`]: the scheduling policy — the decision given the stored state, no I/O.
//! - [`store`]: named queries over Conductor's tables; [`db`]: the pool on SQLite or Postgres.
//! - [`schedule`]: ingest and decide, shared by the live pipeline and the scenario replay;
//!   [`schedule::decision`]: the decision itself, on the real tables or a candidate's.
//! - [`engine`]: runs and steps in the database, each step one apalis task, handed over in
//!   one transaction; the step contract ([`engine::Transition`], [`engine::StepError`]).
//! - [`steps`] (top-level `steps/`): one step per file, on the engine.
//! - [`workflows`] (top-level `workflows/`): each pipeline as a named list of those steps.
//! - [`runtime`]: the queue consumers (apalis workers) of `conductor run`, and the guards
//!   against a lost task; [`inbox`]: `conductor submit`.
//! - [`scenario`]: replay, scenario files, generators; [`history`]: job history views.
//! - [`jobs`]: jobs, attempts and repository claims (the job workflow's named queries);
//!   [`task_files`]: routing and the files a worker receives; [`config`]: `conductor.toml`.
//! - [`grpc`]: the worker protocol's server; [`spawner`]: starting workers (local process or
//!   ECS Fargate task); [`sqs`]: the SQS transport; [`aws`]: the AWS SDK's configuration;
//!   [`forge`]: opening pull requests (GitHub REST, or the local forge in the database).
//! - [`server`]: `conductor run` as one call, the way the binary uses it; [`gate`]: the
//!   shutdown gate (pause intake, drain, ready file).
//! - [`flags`]: `incidents`, `policy` and `candidate`, shared in the database; [`shadow`]: the
//!   candidate policy deciding beside the authoritative one, its verdicts and report.
//! - [`secrets`]: secrets out of an agent's reach (taken from the environment, hashed tokens,
//!   private directories).
//! - [`bench`]: `conductor bench`; [`duration`]: durations as people write them;
//!   [`context`]: what every step is given ([`context::Env`]); [`error`]: retryable or fatal.
//!
//! The modules import one another without a cycle: `domain`, `policy`, `error` and `db` at
//! the bottom, then `store`, `schedule`, `shadow` and `flags`, the `engine` under `steps`
//! under `workflows`, and `runtime` and `server` on top.

pub mod aws;
pub mod bench;
pub mod config;
pub mod context;
pub mod db;
pub mod domain;
pub mod duration;
pub mod engine;
pub mod error;
pub mod failpoint;
pub mod flags;
pub mod forge;
pub mod gate;
pub mod grpc;
pub mod history;
pub mod inbox;
pub mod jobs;
pub mod local_git;
pub mod policy;
pub mod runtime;
pub mod scenario;
pub mod schedule;
pub mod secrets;
pub mod server;
pub mod shadow;
pub mod spawner;
pub mod sqs;
#[path = "../steps/mod.rs"]
pub mod steps;
pub mod store;
pub mod task_files;
#[path = "../workflows/mod.rs"]
pub mod workflows;

pub use error::Error;
