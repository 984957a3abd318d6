//! **decide** — classifies a stored message and schedules it (docs/design.md section 3).
//!
//! Reads: the message id from ingest's output and its body from the run's input; the flags
//! (`incidents`, `policy`, `candidate`); the tickets, alarms and open incidents the policy
//! needs (Postgres: under the message's row lock and its account's advisory lock).
//! Writes: the decision row, and depending on it a rejected row, a ticket, an alarm, an
//! incident (opened, extended or merged), and for a spawn a job row and the start of its job
//! workflow run; with a candidate set, its shadow state and evaluation row (in a savepoint:
//! its failure is recorded, never the step's) — with the step's completion, in one
//! transaction.
//! Arrival order: while an earlier message run with the same ordering key (an alarm of the same
//! account) is still running, it waits for it (polling without a lock for up to a second,
//! then completing with a `Wait` that gives its slot up), so each account's messages are
//! decided in the order they were received; other accounts go on meanwhile.
//! Retry safety: a re-run after a crash before the commit decides from scratch (nothing was
//! kept); a re-run after it finds the step done, and [`crate::scheduling::decide::decide`] itself returns
//! an already stored decision for the message instead of deciding twice.

use futures::{future::BoxFuture, FutureExt};

use super::{ingest::InboxMessage, Step, StepError};
use crate::{
    context::Env,
    db::now_ms,
    engine::{self, StepRun, Transition},
    failpoint,
    scheduling::decide,
    scheduling::domain::{parse_body, DecisionKind, Ingested, Rejection},
    scheduling::flags,
    scheduling::store::sql::Tables,
    telemetry, workflows,
};

pub const NAME: &str = crate::workflows::names::DECIDE;

/// How long a decision that gave its slot up waits before looking again for an earlier
/// message of its account (the queue rounds it up to a second).
const ORDER_WAIT: std::time::Duration = std::time::Duration::from_millis(20);
/// In-step polls for an earlier message of the account to be decided (by another decider),
/// and their interval.
const ORDER_POLLS: u32 = 20;
const ORDER_POLL: std::time::Duration = std::time::Duration::from_millis(10);

pub struct Decide;

impl Step for Decide {
    fn run<'a>(&'a self, env: &'a Env, run: &'a StepRun) -> BoxFuture<'a, Result<(), StepError>> {
        async move {
            let started = std::time::Instant::now();
            let ingested: Ingested = run.output()?;
            let message_id = ingested.message_id();
            // Arrival order within an account: an earlier alarm of the same account that is
            // still undecided goes first. Usually there is none, and the check is made once,
            // in the decision's transaction. Tasks are fetched oldest first, so an earlier
            // one is usually a moment from its decision (another decider has it): roll back,
            // wait for it holding no lock, for up to ORDER_POLLS × ORDER_POLL, and look
            // again; if it is still there, give the slot up and come back (ORDER_WAIT).
            let mut waited = false;
            let mut tx = loop {
                let mut tx = env.db.begin().await?;
                // Only runs with an ordering key (alarms) have anything to wait for.
                if run.order_key.is_none() {
                    break tx;
                }
                let Some(first) = engine::earlier_running(&mut tx, run.run_id).await? else {
                    break tx;
                };
                if waited {
                    tracing::debug!(
                        run_id = run.run_id,
                        waiting_for = first,
                        "an earlier message of this account is undecided"
                    );
                    run.complete(&mut tx, Transition::Wait(ORDER_WAIT), now_ms())
                        .await?;
                    tx.commit().await?;
                    return Ok(());
                }
                tx.rollback().await?;
                for _ in 0..ORDER_POLLS {
                    if engine::earlier_running_now(&env.db, run.run_id)
                        .await?
                        .is_none()
                    {
                        break;
                    }
                    tokio::time::sleep(ORDER_POLL).await;
                }
                waited = true;
            };
            // The body ingest stored is the one this run was started with: no need to read it back.
            let input = InboxMessage::of_run(run)?;
            let parsed = match ingested {
                Ingested::Reused { original_id, .. } => Err(Rejection::IdReused(original_id)),
                _ => parse_body(&input.body, input.raw()?.as_deref()),
            };
            let now = now_ms();
            // The flags are read here, in the decision's transaction: a change made on any
            // replica applies to the next message decided anywhere.
            let sched = env.flags.scheduling(&flags::read_tx(&mut tx).await?)?;
            let decision =
                decide::decide_parsed(&mut Tables::real(&mut tx), &sched, message_id, parsed, now)
                    .await?;
            tracing::info!(
                message_id,
                decision = decision.decision.as_str(),
                incident_id = decision.incident,
                ticket_key = decision.ticket_key.as_deref(),
                job_id = decision.job,
                "decided"
            );
            if let (DecisionKind::Spawn, Some(job)) = (decision.decision, decision.job) {
                workflows::job::start(&mut tx, job, now).await?;
            }
            failpoint::hit("decide.before_commit");
            run.complete(
                &mut tx,
                Transition::Next(serde_json::to_value(&decision).expect("Decision serialises")),
                now,
            )
            .await?;
            tx.commit().await?;
            telemetry::decided(
                decision.kind.map_or("unknown", |k| k.as_str()),
                decision.decision.as_str(),
                started.elapsed().as_secs_f64(),
            );
            Ok(())
        }
        .boxed()
    }
}
