//! **deliver** — waits for the worker's handshake; the protocol server streams its task files.
//!
//! Reads: the attempt the `spawn` step started.
//! Writes: nothing while it waits (a timer until the handshake deadline; the handshake wakes
//! it at once); on a handshake, the "started" notice (workflows::notice) and the step's
//! completion, in one transaction; past the deadline, the worker is
//! stopped, the attempt failed ("no handshake"), and the run goes back to `spawn` after the
//! backoff.
//! Retry safety: it only reads the attempt's state and moves on from it; the notice is keyed
//! by run and event, so a re-run records none twice; stopping a worker
//! that is already gone is a no-op, and failing an attempt twice writes the same thing.

use futures::{future::BoxFuture, FutureExt};
use serde_json::json;

use super::{spawn, Step, StepError};
use crate::workflows::job;
use crate::{
    context::Env,
    db::now_ms,
    engine::{StepRun, Transition},
    jobs::{notices::Event, AttemptState},
};

pub const NAME: &str = crate::workflows::names::DELIVER;

pub struct DeliverFiles;

impl Step for DeliverFiles {
    fn run<'a>(&'a self, env: &'a Env, run: &'a StepRun) -> BoxFuture<'a, Result<(), StepError>> {
        async move {
            let mut tx = env.db.begin().await?;
            let attempt = spawn::attempt_of(&mut tx, run).await?;
            let now = now_ms();
            match attempt.state {
                AttemptState::Handshaken | AttemptState::Delivered | AttemptState::Reported => {
                    // The agent has started: the ticket hears of it (once per run).
                    crate::workflows::notice::tell(
                        &mut tx,
                        attempt.job_id,
                        run.run_id,
                        Event::Started,
                        now,
                    )
                    .await?;
                    run.complete(
                        &mut tx,
                        Transition::Next(json!({"worker_id": attempt.worker_id})),
                        now,
                    )
                    .await?;
                    tx.commit().await?;
                    Ok(())
                }
                AttemptState::Spawned | AttemptState::Spawning => {
                    let deadline = attempt.handshake_deadline_ms.unwrap_or(now);
                    if now < deadline {
                        let wait = std::time::Duration::from_millis((deadline - now) as u64 + 50);
                        run.complete(&mut tx, Transition::Wait(wait), now).await?;
                        tx.commit().await?;
                        return Ok(());
                    }
                    drop(tx);
                    let reason = format!(
                        "no handshake within {}",
                        humantime::format_duration(env.config.jobs.handshake_timeout)
                    );
                    job::retry_attempt(env, run, &attempt, &reason).await
                }
                _ => {
                    drop(tx);
                    let reason = attempt
                        .failure
                        .clone()
                        .unwrap_or_else(|| "attempt failed".into());
                    job::retry_attempt(env, run, &attempt, &reason).await
                }
            }
        }
        .boxed()
    }
}
