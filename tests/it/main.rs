//! The integration tests, one test crate so the shared helpers ([`common`]) compile once.
//! Each module is one concern, run against real parts: SQLite files, Postgres databases,
//! the `conductor` and `conductor-worker` binaries, git repositories, AWS-compatible servers.

mod common;

mod aws;
mod console;
mod crash;
mod field;
mod gate;
mod github_app;
mod history;
mod job_steps;
mod jobs;
mod order_independence;
mod pg_restart;
mod pipeline;
mod placement;
mod postgres_concurrency;
mod replay;
mod schema;
mod shadow;
mod soak;
mod store_conformance;
mod structure;
mod tracker;
mod webhooks;
mod worker;
mod write_behind;
