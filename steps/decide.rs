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
//! Batches: a first attempt takes up to `pipeline.decide_batch - 1` other queued messages
//! along, oldest first ([`engine::batch`]), and decides them all in its transaction, one after
//! the other in run order, as if each had run on its own: their steps done, their runs
//! finished and their queue tasks deleted in that same transaction. A message whose account
//! has an earlier message outside the batch still running is left for later. Without a
//! candidate the batch decides in memory over the rows it loaded and writes them back with
//! multi-row statements ([`decide::decide_stored_batch`]); on Postgres it first takes every
//! account and ticket lock it needs, in one order. If the batch fails for
//! any reason, it is rolled back whole and this message is decided alone; a retry (an
//! attempt after the first) is always decided alone, so one message that keeps failing never
//! takes others down with it.
//! Retry safety: a re-run after a crash before the commit decides from scratch (nothing was
//! kept, for any message of the batch: the others are queued as they were); a re-run after it
//! finds the step done, and [`crate::scheduling::decide::decide`] itself returns an already
//! stored decision for the message instead of deciding twice.

use futures::{future::BoxFuture, FutureExt};

use super::{ingest::InboxMessage, Step, StepError};
use crate::{
    context::Env,
    db::now_ms,
    engine::{self, StepRun, Transition},
    failpoint,
    scheduling::decide,
    scheduling::domain::{parse_body, Decision, DecisionKind, Ingested, Message, Rejection},
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
            if run.attempt == 1 && env.config.pipeline.decide_batch > 1 {
                match decide_batch(env, run).await {
                    Ok(Batched::Done) => return Ok(()),
                    Ok(Batched::Alone) => {}
                    Err(e) => tracing::warn!(
                        run_id = run.run_id,
                        error = %e,
                        "a batch of decisions failed and was rolled back; deciding this message alone"
                    ),
                }
            }
            decide_one(env, run).await
        }
        .boxed()
    }
}

/// What [`decide_batch`] did.
enum Batched {
    /// The message is decided, with others.
    Done,
    /// Nothing: no other message was waiting, or this one must wait for an earlier one of
    /// its account; [`decide_one`] goes on (and waits).
    Alone,
}

/// One message of a batch, read from its run.
struct Item<'r> {
    run: &'r StepRun,
    message_id: i64,
    input: InboxMessage,
    raw: Option<Vec<u8>>,
    parsed: Result<Message, Rejection>,
}

impl<'r> Item<'r> {
    fn of(run: &'r StepRun) -> Result<Item<'r>, StepError> {
        let ingested: Ingested = run.output()?;
        let input = InboxMessage::of_run(run)?;
        let raw = input.raw()?;
        let parsed = match ingested {
            Ingested::Reused { original_id, .. } => Err(Rejection::IdReused(original_id)),
            _ => parse_body(&input.body, raw.as_deref()),
        };
        Ok(Item {
            run,
            message_id: ingested.message_id(),
            input,
            raw,
            parsed,
        })
    }
}

/// Decides `own` together with the messages waiting behind it in the queue, in one
/// transaction (see the module docs).
async fn decide_batch(env: &Env, own: &StepRun) -> Result<Batched, StepError> {
    let started = std::time::Instant::now();
    let mut tx = env.db.begin().await?;
    let now = now_ms();
    let mut batch = engine::batch::claim_queued(
        &mut tx,
        &workflows::message::MESSAGE,
        NAME,
        own.run_id,
        env.config.pipeline.decide_batch - 1,
        now,
    )
    .await?;
    if batch.is_empty() {
        tx.rollback().await?;
        return Ok(Batched::Alone);
    }
    batch.push(own.clone());
    batch.sort_by_key(|r| r.run_id);
    let go = engine::batch::in_order(&mut tx, &batch).await?;
    if !go.contains(&own.run_id) {
        tx.rollback().await?;
        return Ok(Batched::Alone);
    }
    batch.retain(|r| go.contains(&r.run_id));
    let items = batch.iter().map(Item::of).collect::<Result<Vec<_>, _>>()?;
    let sched = env.flags.scheduling(&flags::read_tx(&mut tx).await?)?;
    let stored: Vec<decide::Stored<'_>> = items
        .iter()
        .map(|i| decide::Stored {
            message_id: i.message_id,
            transport_id: &i.input.transport_id,
            body: &i.input.body,
            raw: i.raw.as_deref(),
            parsed: &i.parsed,
        })
        .collect();
    let decisions = decide::decide_stored_batch(&mut tx, &sched, &stored, now).await?;
    let spawns = || {
        decisions
            .iter()
            .filter(|d| d.decision == DecisionKind::Spawn)
    };
    let spawned: Vec<i64> = spawns().filter_map(|d| d.job).collect();
    let incident_jobs: Vec<i64> = spawns()
        .filter(|d| d.incident.is_some())
        .filter_map(|d| d.job)
        .collect();
    workflows::job::start_many(
        &mut tx,
        &spawned,
        &incident_jobs,
        env.config.incidents.settle,
        now,
    )
    .await?;
    let mut done = Vec::with_capacity(items.len());
    for (i, d) in items.iter().zip(&decisions) {
        done.push((
            i.run.run_id,
            serde_json::to_value(d).expect("Decision serialises"),
        ));
    }
    engine::batch::complete_last(&mut tx, NAME, &done, now).await?;
    let taken: Vec<(i64, i64)> = items
        .iter()
        .filter(|i| i.run.run_id != own.run_id)
        .map(|i| (i.run.run_id, i.run.seq))
        .collect();
    engine::batch::drop_tasks(&mut tx, NAME, &taken).await?;
    failpoint::hit("decide.before_commit");
    tx.commit().await?;
    let seconds = started.elapsed().as_secs_f64();
    for (i, d) in items.iter().zip(&decisions) {
        log_decided(i.message_id, d);
        telemetry::decided(
            d.kind.map_or("unknown", |k| k.as_str()),
            d.decision.as_str(),
            seconds,
        );
    }
    tracing::debug!(run_id = own.run_id, batch = items.len(), "decided a batch");
    Ok(Batched::Done)
}

fn log_decided(message_id: i64, decision: &Decision) {
    tracing::info!(
        message_id,
        decision = decision.decision.as_str(),
        incident_id = decision.incident,
        ticket_key = decision.ticket_key.as_deref(),
        job_id = decision.job,
        "decided"
    );
}

/// Decides `run`'s message on its own, waiting first for an earlier message of its account.
async fn decide_one(env: &Env, run: &StepRun) -> Result<(), StepError> {
    let started = std::time::Instant::now();
    let message_id = run.output::<Ingested>()?.message_id();
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
    let Item { parsed, .. } = Item::of(run)?;
    let now = now_ms();
    // The flags are read here, in the decision's transaction: a change made on any
    // replica applies to the next message decided anywhere.
    let sched = env.flags.scheduling(&flags::read_tx(&mut tx).await?)?;
    let decision =
        decide::decide_parsed(&mut Tables::real(&mut tx), &sched, message_id, parsed, now).await?;
    log_decided(message_id, &decision);
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
