//! The workflow engine over apalis: a run and its steps live in Conductor's `runs` and `steps`
//! tables; each step is one apalis task on the queue named after the step, carrying only
//! `(run_id, step)`.
//!
//! Why not apalis-workflow's `SteppedFlow`: it pushes the next step before marking the current
//! one done, in separate transactions, addresses steps by position and keeps no SQL link to a
//! run (see docs/apalis.md). Here [`complete_step`] marks a step done *and* queues
//! the next one in the step's own transaction, so a crash either keeps both or neither, and a
//! duplicated apalis task finds its step done and does nothing ([`begin_step`]).

use std::{collections::HashMap, time::Duration};

use apalis_core::task::builder::TaskBuilder;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{db::Db, db::Tx, error::Error, with_conn};

pub mod batch;
pub mod wake;

/// The payload of every apalis task Conductor queues.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepTask {
    pub run_id: i64,
    pub step: String,
    /// The step row's queueing generation when this task was pushed; a task whose generation
    /// is not the row's current one was superseded (a timer overtaken by a wake-up) and is
    /// skipped. Tasks queued before generations existed carry 0, as do their rows.
    #[serde(default)]
    pub seq: i64,
}

/// What a workflow does when one of its runs fails for good (a fatal step error, or a step
/// past its attempt cap): it runs *before* the failure is recorded, so a crash in between runs
/// it again, and it must be idempotent. An error leaves the step to be tried again.
pub type OnFailure = for<'a> fn(
    &'a crate::context::Env,
    &'a StepRun,
    &'a str,
) -> futures::future::BoxFuture<'a, Result<(), StepError>>;

/// How a step failed: worth another attempt, or never going to work.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("{0}")]
    Retryable(String),
    #[error("{0}")]
    Fatal(String),
    /// Another execution of this step finished it first; this one ends without effect.
    #[error("{0}")]
    Superseded(String),
    /// The database cannot store anything now (a full disk, read-only): retried without
    /// counting toward the step's attempts, while intake waits.
    #[error("{0}")]
    Storage(String),
}

impl From<Error> for StepError {
    fn from(e: Error) -> Self {
        if let Error::Superseded(why) = e {
            StepError::Superseded(why)
        } else if e.is_storage() {
            crate::db::storage::trouble(&e.to_string());
            StepError::Storage(e.to_string())
        } else if e.is_retryable() {
            StepError::Retryable(e.to_string())
        } else {
            StepError::Fatal(e.to_string())
        }
    }
}

/// A named sequence of named steps.
pub struct Workflow {
    pub name: &'static str,
    pub steps: &'static [&'static str],
    /// Cleans up after a run that failed (a job's worker, claim and state); None: nothing to do.
    pub on_failure: Option<OnFailure>,
}

impl std::fmt::Debug for Workflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workflow")
            .field("name", &self.name)
            .field("steps", &self.steps)
            .finish()
    }
}

impl PartialEq for Workflow {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Workflow {
    /// The step after `step`, or None after the last one.
    pub fn next_after(&self, step: &str) -> Result<Option<&'static str>, Error> {
        let at = self.steps.iter().position(|s| *s == step).ok_or_else(|| {
            Error::Corrupt(format!("workflow {} has no step {step:?}", self.name))
        })?;
        Ok(self.steps.get(at + 1).copied())
    }
}

/// The apalis queue a step's tasks go to. One queue per step lets the shutdown gate stop
/// intake steps while the steps of running jobs go on.
pub fn queue_of(step: &str) -> String {
    format!("conductor.{step}")
}

/// How a finished step moves its run on.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// Record the output and queue the next step (or finish the run after the last).
    Next(Value),
    /// Record the output and finish the run here.
    Finish(Value),
    /// Not done yet: run this step again after the delay (a timer). Nothing is recorded, and
    /// the attempt count starts over: waiting is not failing. If the step was woken meanwhile
    /// ([`wake_step`]), the wake-up's task runs instead and no timer is set.
    Wait(Duration),
    /// Record the output and go back to an earlier (or any) step after the delay: a job's new
    /// attempt goes back to `spawn`.
    Goto {
        step: &'static str,
        delay: Duration,
        output: Value,
    },
}

/// Upper bound on apalis's own re-fetches of a failed task; the real cap on attempts is the
/// step's `attempts` column, checked in [`begin_step`].
const APALIS_MAX_ATTEMPTS: usize = 100;

/// Creates a run and queues its first step, in `tx`.
pub async fn start_run(
    tx: &mut Tx,
    wf: &Workflow,
    input: &Value,
    now_ms: i64,
) -> Result<i64, Error> {
    start_ordered_run(tx, wf, input, None, now_ms).await
}

/// [`start_run`] with an ordering key: runs of one key are the ones a step may wait on to keep
/// arrival order ([`earlier_running`]).
pub async fn start_ordered_run(
    tx: &mut Tx,
    wf: &Workflow,
    input: &Value,
    order_key: Option<&str>,
    now_ms: i64,
) -> Result<i64, Error> {
    let run_id = insert_run(tx, wf, input, order_key, now_ms).await?;
    queue_step(tx, run_id, wf.steps[0], now_ms, None).await?;
    Ok(run_id)
}

/// The row of a new running run, in `tx`; its id.
async fn insert_run(
    tx: &mut Tx,
    wf: &Workflow,
    input: &Value,
    order_key: Option<&str>,
    now_ms: i64,
) -> Result<i64, Error> {
    const SQL: &str = "INSERT INTO runs (workflow, status, input, created_ms, order_key) VALUES ($1, 'running', $2, $3, $4) RETURNING id";
    let input = input.to_string();
    Ok(with_conn!(tx, |c| sqlx::query_scalar(SQL)
        .bind(wf.name)
        .bind(&input)
        .bind(now_ms)
        .bind(order_key)
        .fetch_one(c)
        .await?))
}

/// The earliest running run sharing run `$1`'s ordering key and started before it.
const EARLIER_RUNNING: &str =
    "SELECT MIN(e.id) FROM runs r JOIN runs e ON e.order_key = r.order_key
    WHERE r.id = $1 AND e.status = 'running' AND e.id < r.id";

/// The earliest run still running with run `run_id`'s ordering key, if it started before it:
/// the run to let through first.
pub async fn earlier_running(tx: &mut Tx, run_id: i64) -> Result<Option<i64>, Error> {
    let id: Option<i64> = with_conn!(tx, |c| sqlx::query_scalar(EARLIER_RUNNING)
        .bind(run_id)
        .fetch_one(c)
        .await?);
    Ok(id)
}

/// [`earlier_running`] outside a transaction: a plain read that holds no lock (SQLite's write
/// transactions take the whole database), for waiting in a loop.
pub async fn earlier_running_now(db: &Db, run_id: i64) -> Result<Option<i64>, Error> {
    Ok(crate::with_pool!(db, |p| sqlx::query_scalar::<
        _,
        Option<i64>,
    >(EARLIER_RUNNING)
    .bind(run_id)
    .fetch_one(p)
    .await?))
}

/// How many runs with ordering key `key`, started by `started_by_ms`, are still running.
pub async fn running_with_key(tx: &mut Tx, key: &str, started_by_ms: i64) -> Result<i64, Error> {
    const SQL: &str = "SELECT CAST(COUNT(*) AS BIGINT) FROM runs
        WHERE order_key = $1 AND status = 'running' AND created_ms <= $2";
    Ok(with_conn!(tx, |c| sqlx::query_scalar(SQL)
        .bind(key)
        .bind(started_by_ms)
        .fetch_one(c)
        .await?))
}

/// Inserts (or re-queues) a step row and pushes its apalis task, in `tx`.
pub async fn queue_step(
    tx: &mut Tx,
    run_id: i64,
    step: &str,
    now_ms: i64,
    delay: Option<Duration>,
) -> Result<(), Error> {
    const SQL: &str =
        "INSERT INTO steps (run_id, step, status, queued_ms, seq, due_ms) VALUES ($1, $2, 'queued', $3, 1, $4)
        ON CONFLICT (run_id, step) DO UPDATE SET status = 'queued', queued_ms = excluded.queued_ms,
            finished_ms = NULL, error = NULL, attempts = 0, seq = steps.seq + 1, due_ms = excluded.due_ms
        RETURNING seq";
    let seq: i64 = with_conn!(tx, |c| sqlx::query_scalar::<_, i64>(SQL)
        .bind(run_id)
        .bind(step)
        .bind(now_ms)
        .bind(due(now_ms, delay))
        .fetch_one(c)
        .await?);
    push_task(tx, run_id, step, seq, delay).await
}

/// Runs a waiting step now instead of at its timer (the worker's report arrived, say), in `tx`.
/// A step that is done or failed is left alone; returns whether one was woken.
pub async fn wake_step(tx: &mut Tx, run_id: i64, step: &str, now_ms: i64) -> Result<bool, Error> {
    const SQL: &str =
        "UPDATE steps SET status = 'queued', queued_ms = $3, due_ms = $3, attempts = 0, seq = seq + 1
        WHERE run_id = $1 AND step = $2 AND status IN ('queued', 'running')
        RETURNING seq";
    let seq: Option<i64> = with_conn!(tx, |c| sqlx::query_scalar::<_, i64>(SQL)
        .bind(run_id)
        .bind(step)
        .bind(now_ms)
        .fetch_optional(c)
        .await?);
    match seq {
        Some(seq) => push_task(tx, run_id, step, seq, None).await.map(|_| true),
        None => Ok(false),
    }
}

/// When a step queued at `now_ms` after `delay` is due.
fn due(now_ms: i64, delay: Option<Duration>) -> i64 {
    now_ms.saturating_add(delay.map_or(0, |d| d.as_millis() as i64))
}

/// A step that stalled: queued and not started long after it was due, or running far longer
/// than a step takes. Its queue task is lost — apalis drops an acknowledgement that a
/// database restart cuts, and the task then stays locked by a worker that is alive and never
/// runs it again — or it is merely slow (a long backlog, a step waiting out a full disk).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Stalled {
    pub run_id: i64,
    pub step: String,
    pub seq: i64,
}

/// Steps of running runs stalled since before `cutoff_ms` (at most `limit`), oldest first,
/// leaving out the steps in `skip` (intake steps while the gate holds them back).
pub async fn stalled_steps(
    db: &Db,
    cutoff_ms: i64,
    skip: &[&str],
    limit: i64,
) -> Result<Vec<Stalled>, Error> {
    // The skipped names as one bound value, `,a,b,`: a pattern match that both backends read
    // the same way.
    const SQL: &str = "SELECT s.run_id, s.step, s.seq FROM steps s JOIN runs r ON r.id = s.run_id
        WHERE r.status = 'running'
            AND ((s.status = 'queued' AND COALESCE(s.due_ms, s.queued_ms) < $1)
                OR (s.status = 'running' AND s.started_ms < $1))
            AND $3 NOT LIKE ('%,' || s.step || ',%')
        ORDER BY s.run_id LIMIT $2";
    let skipped = format!(",{},", skip.join(","));
    Ok(crate::with_pool!(db, |p| sqlx::query_as::<_, Stalled>(SQL)
        .bind(cutoff_ms)
        .bind(limit)
        .bind(&skipped)
        .fetch_all(p)
        .await?))
}

/// Queues a stalled step again under a new generation, so the lost task (if it ever comes
/// back) is skipped, and pushes its task; its attempt count stays, so a step that stalls by
/// crashing still reaches its cap. Nothing happens if the step moved on since it was found
/// stalled (it started, finished, or another replica queued it again): the generation and
/// the cutoff are checked in the update. Whether it was queued again.
pub async fn requeue_stalled(
    db: &Db,
    stalled: &Stalled,
    cutoff_ms: i64,
    now_ms: i64,
) -> Result<bool, Error> {
    const SQL: &str =
        "UPDATE steps SET status = 'queued', queued_ms = $4, due_ms = $4, seq = seq + 1
        WHERE run_id = $1 AND step = $2 AND seq = $3
            AND ((status = 'queued' AND COALESCE(due_ms, queued_ms) < $5)
                OR (status = 'running' AND started_ms < $5))
        RETURNING seq";
    let mut tx = db.begin().await?;
    let seq: Option<i64> = with_conn!(&mut tx, |c| sqlx::query_scalar::<_, i64>(SQL)
        .bind(stalled.run_id)
        .bind(&stalled.step)
        .bind(stalled.seq)
        .bind(now_ms)
        .bind(cutoff_ms)
        .fetch_optional(c)
        .await?);
    let Some(seq) = seq else {
        return Ok(false);
    };
    push_task(&mut tx, stalled.run_id, &stalled.step, seq, None).await?;
    tx.commit().await?;
    Ok(true)
}

async fn push_task(
    tx: &mut Tx,
    run_id: i64,
    step: &str,
    seq: i64,
    delay: Option<Duration>,
) -> Result<(), Error> {
    push_tasks(tx, step, &[(run_id, seq)], delay).await
}

/// Pushes the apalis tasks of step `step` for each (run, generation) of `tasks`, due after
/// `delay`, in `tx`: one statement on Postgres.
async fn push_tasks(
    tx: &mut Tx,
    step: &str,
    tasks: &[(i64, i64)],
    delay: Option<Duration>,
) -> Result<(), Error> {
    // apalis schedules in whole seconds (run_at is epoch seconds): the due second is rounded
    // up, so a timer never fires early (a `Retry-After: 3` is 3 s at least) and a short one
    // never turns into an immediate re-run loop.
    let run_at = delay.filter(|d| !d.is_zero()).map(|delay| {
        let due = std::time::SystemTime::now() + delay;
        let since = due
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        since.as_secs() + u64::from(since.subsec_nanos() > 0)
    });
    let mut built = Vec::with_capacity(tasks.len());
    for &(run_id, seq) in tasks {
        let payload = serde_json::to_vec(&StepTask {
            run_id,
            step: step.to_owned(),
            seq,
        })
        .map_err(|e| Error::Invalid(e.to_string()))?;
        // Oldest run first: both backends fetch by `priority DESC, run_at ASC` (the Postgres
        // one with no tie-breaker, and a batch's tasks share their run_at), so without a
        // priority a queue's tasks come out in any order. Arrival order is what `decide` keeps
        // per account; fetching in it keeps that cheap. (Priorities are 32-bit: after 2^31
        // runs they wrap, and the order is only that of the ordering check for a moment.)
        let priority = (i32::MAX as i64 - run_id.rem_euclid(i32::MAX as i64)) as usize;
        // The key lets a batch that takes this step along delete the task with it
        // ([`batch::drop_tasks`]); every queueing of a step has a new generation, so it is
        // unique in its queue.
        let mut task = TaskBuilder::new(payload)
            .max_attempts(APALIS_MAX_ATTEMPTS)
            .priority(priority)
            .idempotency_key(batch::task_key(run_id, seq));
        if let Some(at) = run_at {
            task = task.run_at_timestamp(at);
        }
        built.push(task.build());
    }
    let queue = queue_of(step);
    match tx {
        Tx::Sqlite(t) => {
            apalis_sqlite::queries::push_tasks(&mut **t, &queue, &built)
                .await
                .map_err(|e| Error::Queue(e.to_string()))?;
            // A timer's task is found by the poll once due; anything else is wanted now.
            if run_at.is_none() {
                wake::queued(&queue);
            }
            Ok(())
        }
        Tx::Postgres(t) => apalis_postgres::queries::push_tasks(&mut **t, &queue, built)
            .await
            .map_err(|e| Error::Queue(e.to_string())),
    }
}

/// Deletes up to `limit` apalis tasks acknowledged as done at least `age_secs` ago; returns
/// how many. A task's history is its step row (`steps`), so a finished task is dead weight:
/// kept, it would grow the queue table, and every fetch's index, with each message.
/// Failed and killed tasks stay for inspection. Replicas may prune at once: on Postgres each
/// skips the rows another holds.
pub async fn prune_finished_tasks(db: &Db, age_secs: i64, limit: i64) -> Result<u64, Error> {
    const SQLITE: &str = "DELETE FROM Jobs WHERE rowid IN (SELECT rowid FROM Jobs
        WHERE status = 'Done' AND done_at <= CAST(strftime('%s', 'now') AS INTEGER) - $1 LIMIT $2)";
    const POSTGRES: &str = "DELETE FROM apalis.jobs WHERE id IN (SELECT id FROM apalis.jobs
        WHERE status = 'Done' AND done_at <= NOW() - make_interval(secs => $1)
        LIMIT $2 FOR UPDATE SKIP LOCKED)";
    Ok(match db {
        Db::Sqlite(p) => sqlx::query(SQLITE)
            .bind(age_secs)
            .bind(limit)
            .execute(p)
            .await?
            .rows_affected(),
        Db::Postgres(p) => sqlx::query(POSTGRES)
            .bind(age_secs as f64)
            .bind(limit)
            .execute(p)
            .await?
            .rows_affected(),
    })
}

/// On a Postgres server whose autovacuum is off, vacuums the tables every message updates
/// (the queue's, `steps`, `runs`), so their dead rows are reused instead of piling up and
/// slowing every fetch; a no-op where autovacuum runs, and on SQLite (whose freed pages are
/// reused as they are). A table this user does not own is skipped with a notice.
pub async fn vacuum_if_unattended(db: &Db) -> Result<bool, Error> {
    let Db::Postgres(p) = db else {
        return Ok(false);
    };
    let autovacuum: String = sqlx::query_scalar("SELECT current_setting('autovacuum')")
        .fetch_one(p)
        .await?;
    if autovacuum == "on" {
        return Ok(false);
    }
    sqlx::raw_sql("VACUUM (SKIP_LOCKED) apalis.jobs, steps, runs")
        .execute(p)
        .await?;
    Ok(true)
}

/// A step that is about to run: its run's input and the outputs of the steps before it.
#[derive(Debug, Clone)]
pub struct StepRun {
    pub run_id: i64,
    pub step: String,
    pub workflow: &'static Workflow,
    /// The queueing generation this execution belongs to.
    pub seq: i64,
    /// This execution's attempt number (1 for the first), monotonic across crashes.
    pub attempt: i64,
    pub input: Value,
    /// The run's ordering key ([`start_ordered_run`]), if it has one.
    pub order_key: Option<String>,
    pub outputs: HashMap<String, Value>,
}

/// A step's output as the steps after it read it: each step that others read declares its
/// output type, tied to its name, and writes it with [`Transition::next`]. The stored JSON is
/// the type's serde form, so a run recorded before a deploy reads the same after it.
pub trait StepOutput: Serialize + serde::de::DeserializeOwned {
    /// The step that records this output.
    const STEP: &'static str;
}

impl Transition {
    /// Moves on to the next step, recording `output`.
    pub fn next<T: StepOutput>(output: &T) -> Transition {
        Transition::Next(to_output(output))
    }

    /// Finishes the run here, recording `output`.
    pub fn finish<T: StepOutput>(output: &T) -> Transition {
        Transition::Finish(to_output(output))
    }
}

fn to_output<T: Serialize>(output: &T) -> Value {
    // Step outputs are plain data (strings, numbers, options, tagged enums): serde_json
    // cannot fail on them.
    serde_json::to_value(output).expect("a step output serialises")
}

impl StepRun {
    /// The typed output step `T::STEP` recorded.
    pub fn output<T: StepOutput>(&self) -> Result<T, Error> {
        serde_json::from_value(self.output_of(T::STEP)?.clone()).map_err(|e| {
            Error::Corrupt(format!(
                "run {}: the output of step {} is not what it writes: {e}",
                self.run_id,
                T::STEP
            ))
        })
    }

    /// The output a previous step recorded, untyped.
    fn output_of(&self, step: &str) -> Result<&Value, Error> {
        self.outputs.get(step).ok_or_else(|| {
            Error::Corrupt(format!(
                "run {} has no output from step {step}",
                self.run_id
            ))
        })
    }

    /// Marks this step done and moves the run on, in the step's own transaction `tx`.
    pub async fn complete(
        &self,
        tx: &mut Tx,
        transition: Transition,
        now_ms: i64,
    ) -> Result<(), Error> {
        complete_step(tx, self, transition, now_ms).await
    }
}

/// What [`begin_step`] found.
#[derive(Debug)]
pub enum Begin {
    /// Run it.
    Run(Box<StepRun>),
    /// Already done, failed or unknown: a duplicate or stale task, to be acknowledged.
    Skip(String),
}

/// Marks a step running and counts the attempt (committed on its own, so the count survives
/// a crash of the step), and reads what the step needs: one statement, one round trip.
pub async fn begin_step(
    db: &Db,
    workflows: &[&'static Workflow],
    run_id: i64,
    step: &str,
    seq: i64,
    now_ms: i64,
) -> Result<Begin, Error> {
    // The run's workflow, input and ordering key, and the outputs of its finished steps as one
    // JSON object (each backend has its own aggregate for it), come back with the attempt count.
    macro_rules! begin_sql {
        ($outputs:literal) => {
            concat!(
                "UPDATE steps SET status = 'running', attempts = attempts + 1, started_ms = $3
                WHERE run_id = $1 AND step = $2 AND status IN ('queued', 'running') AND seq = $4
                RETURNING attempts,
                    (SELECT workflow FROM runs WHERE id = $1),
                    (SELECT input FROM runs WHERE id = $1),
                    (SELECT order_key FROM runs WHERE id = $1),
                    (SELECT ",
                $outputs,
                " FROM steps o WHERE o.run_id = $1 AND o.status = 'done' AND o.output IS NOT NULL)"
            )
        };
    }
    const SQLITE: &str = begin_sql!("json_group_object(o.step, json(o.output))");
    const POSTGRES: &str = begin_sql!("json_object_agg(o.step, o.output::json)::text");
    type Row = (
        i32,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    let sql = match db {
        Db::Sqlite(_) => SQLITE,
        Db::Postgres(_) => POSTGRES,
    };
    let row: Option<Row> = crate::with_pool!(db, |p| sqlx::query_as(sql)
        .bind(run_id)
        .bind(step)
        .bind(now_ms)
        .bind(seq)
        .fetch_optional(p)
        .await?);
    let Some((attempt, workflow, input, order_key, outputs)) = row else {
        return Ok(Begin::Skip(format!(
            "step {step} of run {run_id} is not queued under generation {seq}"
        )));
    };
    let (Some(workflow), Some(input)) = (workflow, input) else {
        return Err(Error::Corrupt(format!("run {run_id} is missing")));
    };
    let workflow = workflows
        .iter()
        .copied()
        .find(|w| w.name == workflow)
        .ok_or_else(|| Error::Corrupt(format!("run {run_id} has unknown workflow {workflow:?}")))?;
    let parse = |s: &str| {
        serde_json::from_str::<Value>(s).map_err(|e| Error::Corrupt(format!("run {run_id}: {e}")))
    };
    let outputs: HashMap<String, Value> = match outputs {
        Some(o) => serde_json::from_str(&o)
            .map_err(|e| Error::Corrupt(format!("run {run_id}: step outputs: {e}")))?,
        None => HashMap::new(),
    };
    Ok(Begin::Run(Box::new(StepRun {
        run_id,
        step: step.to_owned(),
        workflow,
        seq,
        attempt: attempt as i64,
        input: parse(&input)?,
        order_key,
        outputs,
    })))
}

/// Marks the step done with its output and queues what follows, in `tx`. Fails with
/// [`Error::Superseded`] (the caller rolls `tx` back) if the step was already done: two
/// executions of one step can never both commit.
pub async fn complete_step(
    tx: &mut Tx,
    run: &StepRun,
    transition: Transition,
    now_ms: i64,
) -> Result<(), Error> {
    const DONE: &str =
        "UPDATE steps SET status = 'done', finished_ms = $3, output = $4, error = NULL
        WHERE run_id = $1 AND step = $2 AND status <> 'done'";
    const REARM: &str = "UPDATE steps SET status = 'queued', queued_ms = $3, due_ms = $5, attempts = 0, seq = seq + 1, error = NULL
        WHERE run_id = $1 AND step = $2 AND status = 'running' AND seq = $4
        RETURNING seq";
    let (run_id, step) = (run.run_id, run.step.as_str());
    let (output, next) = match transition {
        Transition::Next(out) => (out, run.workflow.next_after(step)?.map(|n| (n, None))),
        Transition::Finish(out) => (out, None),
        Transition::Goto {
            step: to,
            delay,
            output,
        } => {
            run.workflow.next_after(to)?; // the target must be a step of this workflow
            (output, Some((to, Some(delay))))
        }
        Transition::Wait(delay) => {
            let seq: Option<i64> = with_conn!(tx, |c| sqlx::query_scalar::<_, i64>(REARM)
                .bind(run_id)
                .bind(step)
                .bind(now_ms)
                .bind(run.seq)
                .bind(due(now_ms, Some(delay)))
                .fetch_optional(c)
                .await?);
            return match seq {
                Some(seq) => push_task(tx, run_id, step, seq, Some(delay)).await,
                None => Ok(()), // woken meanwhile: that task runs the step
            };
        }
    };
    let output = output.to_string();
    let updated = with_conn!(tx, |c| sqlx::query(DONE)
        .bind(run_id)
        .bind(step)
        .bind(now_ms)
        .bind(&output)
        .execute(c)
        .await?
        .rows_affected());
    if updated != 1 {
        return Err(Error::Superseded(format!(
            "step {step} of run {run_id} was completed concurrently"
        )));
    }
    match next {
        Some((next, delay)) => queue_step(tx, run_id, next, now_ms, delay).await,
        None => finish_run(tx, run_id, "done", now_ms).await,
    }
}

async fn finish_run(tx: &mut Tx, run_id: i64, status: &str, now_ms: i64) -> Result<(), Error> {
    const SQL: &str = "UPDATE runs SET status = $2, finished_ms = $3 WHERE id = $1";
    with_conn!(tx, |c| sqlx::query(SQL)
        .bind(run_id)
        .bind(status)
        .bind(now_ms)
        .execute(c)
        .await?
        .rows_affected());
    Ok(())
}

/// Records a step's error. A fatal one fails the step and its run; a retryable one leaves the
/// step running for the next attempt. A step already done (another execution of it won the
/// race) is left alone, and so is its run.
pub async fn record_error(
    db: &Db,
    run_id: i64,
    step: &str,
    error: &str,
    fatal: bool,
    now_ms: i64,
) -> Result<(), Error> {
    const SQL: &str = "UPDATE steps SET error = $3,
            status = CASE WHEN $4 = 1 THEN 'failed' ELSE status END,
            finished_ms = CASE WHEN $4 = 1 THEN $5 ELSE finished_ms END
        WHERE run_id = $1 AND step = $2 AND status <> 'done'";
    let mut tx = db.begin().await?;
    let fatal_flag: i32 = fatal.into();
    let updated = with_conn!(&mut tx, |c| sqlx::query(SQL)
        .bind(run_id)
        .bind(step)
        .bind(error)
        .bind(fatal_flag)
        .bind(now_ms)
        .execute(c)
        .await?
        .rows_affected());
    if fatal && updated == 1 {
        finish_run(&mut tx, run_id, "failed", now_ms).await?;
    }
    tx.commit().await
}

/// Number of runs not yet done or failed.
/// A workflow run that failed for good: which step, why, and for a message run its
/// transport id.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct FailedRun {
    pub run_id: i64,
    pub workflow: String,
    pub step: Option<String>,
    pub error: Option<String>,
    pub finished_ms: Option<i64>,
}

/// Runs that failed for good, finished at or after `since_ms`, newest first.
pub async fn failed_runs(db: &Db, since_ms: i64, limit: i64) -> Result<Vec<FailedRun>, Error> {
    const SQL: &str = "SELECT r.id AS run_id, r.workflow, s.step, s.error, r.finished_ms
        FROM runs r LEFT JOIN steps s ON s.run_id = r.id AND s.status = 'failed'
        WHERE r.status = 'failed' AND COALESCE(r.finished_ms, 0) >= $1
        ORDER BY r.id DESC LIMIT $2";
    Ok(crate::with_pool!(db, |p| sqlx::query_as::<_, FailedRun>(
        SQL
    )
    .bind(since_ms)
    .bind(limit)
    .fetch_all(p)
    .await?))
}

/// Number of runs of workflow `name` not yet done or failed.
pub async fn runs_of_in_flight(db: &Db, name: &str) -> Result<i64, Error> {
    const SQL: &str = "SELECT COUNT(*) FROM runs WHERE status = 'running' AND workflow = $1";
    Ok(crate::with_pool!(db, |p| sqlx::query_scalar::<_, i64>(SQL)
        .bind(name)
        .fetch_one(p)
        .await?))
}

pub async fn runs_in_flight(db: &Db) -> Result<i64, Error> {
    const SQL: &str = "SELECT COUNT(*) FROM runs WHERE status = 'running'";
    Ok(crate::with_pool!(db, |p| sqlx::query_scalar::<_, i64>(SQL)
        .fetch_one(p)
        .await?))
}
