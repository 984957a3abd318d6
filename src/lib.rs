//! Conductor: schedules and supervises AI coding agents in reaction to tickets and AWS
//! incidents. See docs/design.md for the design. The tree reads as the pipeline:
//!
//! - [`intake`]: messages in (the inbox of `conductor submit`, SQS) and the shutdown gate.
//! - [`scheduling`]: what a message is ([`scheduling::domain`]), the policy, the decision,
//!   the tables it reads and writes, the shared flags and the shadow candidate.
//! - [`engine`]: runs and steps in the database, each step one apalis task, handed over in
//!   one transaction; the step contract ([`engine::Transition`], [`engine::StepError`]);
//!   in-process wake-ups of SQLite consumers ([`engine::wake`]).
//! - [`steps`] (top-level `steps/`): one step per file, on the engine, and their registry.
//! - [`workflows`] (top-level `workflows/`): each pipeline as a named list of those steps.
//! - [`jobs`]: jobs, attempts and claims, and what a job needs: task files, spawners (local
//!   process, ECS Fargate), forges (GitHub, local), the history views.
//! - [`runtime`]: the queue consumers (apalis workers) of `conductor run`, and the guards
//!   against a lost task; [`grpc`]: the worker protocol's server, where workers fetch their
//!   files and report; [`server`]: `conductor run` as one call, `server::run`.
//! - [`observe`]: what an operator sees from outside — the replicas alive, "behind or
//!   stuck?" ([`observe::status`]), the gauges read from the database; [`http`]: the
//!   operator's listener (`/healthz`, `/readyz`, `/metrics`) and the web console.
//! - [`scenario`]: replay, scenario files, generators; [`bench`](mod@bench): `conductor bench`.
//! - Shared ground: [`config`] (`conductor.toml`), [`db`] (the pool on SQLite or Postgres),
//!   [`context`] (what every step is given), [`error`] (retryable or fatal), [`secrets`]
//!   (out of an agent's reach), [`aws`] (the SDK's configuration), [`duration`],
//!   [`failpoint`] (crash points for the tests), [`telemetry`] (the event counters any layer
//!   may bump).
//!
//! The binary (`src/main.rs`, `src/cli/`) parses the command line and calls into these; the
//! worker beside each agent is `worker/`. The modules import one another without a cycle, file
//! by file and folder by folder: `error`, `db`, `secrets` at the bottom; then `scheduling`
//! (whose `[flags]`, `[policies]` and `[shadow]` sections `config` composes) and `config`;
//! `jobs`, `context` and the `engine`; `workflows` (the pipelines as lists of step names, and
//! how a run is routed) under `steps` (the code of each name); `intake`, `runtime`, `grpc`;
//! `observe` and `http` over them; `server` on top.

pub mod aws;
pub mod bench;
pub mod config;
pub mod context;
pub mod db;
pub mod duration;
pub mod engine;
pub mod error;
pub mod failpoint;
pub mod grpc;
pub mod http;
pub mod intake;
pub mod jobs;
pub mod observe;
pub mod runtime;
pub mod scenario;
pub mod scheduling;
pub mod secrets;
pub mod server;
#[path = "../steps/mod.rs"]
pub mod steps;
pub mod telemetry;
#[path = "../workflows/mod.rs"]
pub mod workflows;

pub use error::Error;
