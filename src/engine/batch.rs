//! Steps run in batches: one task's execution takes other queued executions of its step along
//! and finishes them all in its own transaction.
//!
//! Why: a message's `decide` costs a queue fetch, a start, a transaction and an
//! acknowledgement before its few statements of real work, and on two cores each round trip
//! is a wake-up of two processes. A batch shares all of that between the messages it takes.
//!
//! How it keeps the engine's guarantees:
//! - [`claim_queued`] takes only steps that are queued and due, and on Postgres locks their
//!   rows (`FOR UPDATE SKIP LOCKED`, so two batches never take the same step); on SQLite the
//!   transaction holds the write lock. A task of a taken step that another worker has already
//!   fetched finds its step done when the batch commits ([`super::begin_step`] skips it), or,
//!   if it started first, it is not queued and never taken.
//! - [`complete_last`] marks the batch's steps done and their runs finished in the same
//!   transaction as the steps' work: a crash keeps all of it or none of it.
//! - [`drop_tasks`] deletes the taken steps' queue tasks that no worker has fetched, in that
//!   transaction, so a batch of N costs one task's fetch and acknowledgement, not N. Tasks are
//!   found by their idempotency key (`run:seq`, set by [`super::push_task`]); a task pushed
//!   without one (before this code) stays, and is skipped when fetched.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::{StepRun, Workflow};
use crate::{db::Tx, error::Error, with_conn};

/// The idempotency key of a step's queue task: unique within its queue (one queue a step),
/// since each queueing of a step has a new generation.
pub fn task_key(run_id: i64, seq: i64) -> String {
    format!("{run_id}:{seq}")
}

/// Takes up to `limit` queued, due executions of `step` (runs of `wf`), oldest run first,
/// leaving out run `except`, in `tx`. They are returned as [`StepRun`]s whose `attempt` is the
/// one they would have had: the batch counts no attempt of theirs (if it fails, they are
/// queued as they were).
pub async fn claim_queued(
    tx: &mut Tx,
    wf: &'static Workflow,
    step: &str,
    except: i64,
    limit: usize,
    now_ms: i64,
) -> Result<Vec<StepRun>, Error> {
    macro_rules! claim_sql {
        ($outputs:literal, $lock:literal) => {
            concat!(
                "SELECT s.run_id, s.seq, s.attempts, r.input, r.order_key,
                    (SELECT ",
                $outputs,
                " FROM steps o WHERE o.run_id = s.run_id AND o.status = 'done' AND o.output IS NOT NULL)
                FROM steps s JOIN runs r ON r.id = s.run_id
                WHERE s.step = $1 AND s.status = 'queued' AND COALESCE(s.due_ms, s.queued_ms) <= $2
                    AND s.run_id <> $3 AND r.workflow = $5
                ORDER BY s.run_id LIMIT $4",
                $lock
            )
        };
    }
    const SQLITE: &str = claim_sql!("json_group_object(o.step, json(o.output))", "");
    const POSTGRES: &str = claim_sql!(
        "json_object_agg(o.step, o.output::json)::text",
        " FOR UPDATE OF s SKIP LOCKED"
    );
    type Row = (i64, i64, i32, String, Option<String>, Option<String>);
    let sql = match tx {
        Tx::Sqlite(_) => SQLITE,
        Tx::Postgres(_) => POSTGRES,
    };
    let rows: Vec<Row> = with_conn!(tx, |c| sqlx::query_as(sql)
        .bind(step)
        .bind(now_ms)
        .bind(except)
        .bind(limit as i64)
        .bind(wf.name)
        .fetch_all(c)
        .await?);
    rows.into_iter()
        .map(|(run_id, seq, attempts, input, order_key, outputs)| {
            let input: Value = serde_json::from_str(&input)
                .map_err(|e| Error::Corrupt(format!("run {run_id}: {e}")))?;
            let outputs: HashMap<String, Value> = match outputs {
                Some(o) => serde_json::from_str(&o)
                    .map_err(|e| Error::Corrupt(format!("run {run_id}: step outputs: {e}")))?,
                None => HashMap::new(),
            };
            Ok(StepRun {
                run_id,
                step: step.to_owned(),
                workflow: wf,
                seq,
                attempt: i64::from(attempts) + 1,
                input,
                order_key,
                outputs,
            })
        })
        .collect()
}

/// Of `batch` (sorted by run id), the runs that may go now without breaking arrival order:
/// a run with an ordering key goes only if every earlier run of its key still running is in
/// the batch and goes too. One query for the whole batch, in `tx`.
pub async fn in_order(tx: &mut Tx, batch: &[StepRun]) -> Result<HashSet<i64>, Error> {
    let keys: Vec<&str> = {
        let mut k: Vec<&str> = batch
            .iter()
            .filter_map(|r| r.order_key.as_deref())
            .collect();
        k.sort_unstable();
        k.dedup();
        k
    };
    let mut go: HashSet<i64> = batch
        .iter()
        .filter(|r| r.order_key.is_none())
        .map(|r| r.run_id)
        .collect();
    if keys.is_empty() {
        return Ok(go);
    }
    let last = batch.iter().map(|r| r.run_id).max().unwrap_or(0);
    // The keys as one bound JSON array: both backends read it as a set.
    const SQLITE: &str = "SELECT id, order_key FROM runs
        WHERE status = 'running' AND id <= $2 AND order_key IN (SELECT value FROM json_each($1))
        ORDER BY id";
    const POSTGRES: &str = "SELECT id, order_key FROM runs
        WHERE status = 'running' AND id <= $2
            AND order_key = ANY(ARRAY(SELECT json_array_elements_text($1::json)))
        ORDER BY id";
    let sql = match tx {
        Tx::Sqlite(_) => SQLITE,
        Tx::Postgres(_) => POSTGRES,
    };
    let keys_json = serde_json::to_string(&keys).expect("strings serialise");
    let running: Vec<(i64, String)> = with_conn!(tx, |c| sqlx::query_as(sql)
        .bind(&keys_json)
        .bind(last)
        .fetch_all(c)
        .await?);
    let in_batch: HashSet<i64> = batch.iter().map(|r| r.run_id).collect();
    // Walking each key's running runs in order: once one is not in the batch, none after it
    // may go.
    let mut blocked: HashSet<String> = HashSet::new();
    for (id, key) in running {
        if blocked.contains(&key) {
            continue;
        }
        if in_batch.contains(&id) {
            go.insert(id);
        } else {
            blocked.insert(key);
        }
    }
    Ok(go)
}

/// Marks the last step of each run in `done` finished with its output, and the runs done, in
/// `tx`: a batch's [`super::complete_step`] for a step with nothing after it, in two
/// statements. A step taken along (still queued) counts its one attempt and starts when the
/// batch does. Fails with [`Error::Superseded`] (the caller rolls back) unless every step was
/// still unfinished.
pub async fn complete_last(
    tx: &mut Tx,
    step: &str,
    done: &[(i64, Value)],
    now_ms: i64,
) -> Result<(), Error> {
    if done.is_empty() {
        return Ok(());
    }
    // The outputs as one JSON object keyed by run id, the ids as one JSON array: one
    // statement whatever the batch's size, with the same four parameters on both backends.
    const SQLITE_STEPS: &str = "UPDATE steps SET status = 'done', finished_ms = $2, error = NULL,
            attempts = attempts + (status = 'queued'),
            started_ms = CASE WHEN status = 'queued' THEN $2 ELSE started_ms END,
            output = json_extract($3, '$.\"' || run_id || '\"')
        WHERE step = $1 AND status <> 'done' AND run_id IN (SELECT value FROM json_each($4))";
    const POSTGRES_STEPS: &str = "UPDATE steps SET status = 'done', finished_ms = $2, error = NULL,
            attempts = attempts + CASE WHEN status = 'queued' THEN 1 ELSE 0 END,
            started_ms = CASE WHEN status = 'queued' THEN $2 ELSE started_ms END,
            output = ($3::json -> run_id::text)::text
        WHERE step = $1 AND status <> 'done'
            AND run_id = ANY(ARRAY(SELECT json_array_elements_text($4::json)::bigint))";
    const SQLITE_RUNS: &str = "UPDATE runs SET status = 'done', finished_ms = $1
        WHERE id IN (SELECT value FROM json_each($2))";
    const POSTGRES_RUNS: &str = "UPDATE runs SET status = 'done', finished_ms = $1
        WHERE id = ANY(ARRAY(SELECT json_array_elements_text($2::json)::bigint))";
    let outputs: serde_json::Map<String, Value> = done
        .iter()
        .map(|(id, out)| (id.to_string(), out.clone()))
        .collect();
    let outputs = Value::Object(outputs).to_string();
    let ids = serde_json::to_string(&done.iter().map(|(id, _)| *id).collect::<Vec<_>>())
        .expect("ids serialise");
    let (steps_sql, runs_sql) = match tx {
        Tx::Sqlite(_) => (SQLITE_STEPS, SQLITE_RUNS),
        Tx::Postgres(_) => (POSTGRES_STEPS, POSTGRES_RUNS),
    };
    let updated = with_conn!(tx, |c| sqlx::query(steps_sql)
        .bind(step)
        .bind(now_ms)
        .bind(&outputs)
        .bind(&ids)
        .execute(c)
        .await?
        .rows_affected());
    if updated != done.len() as u64 {
        return Err(Error::Superseded(format!(
            "{} of a batch of {} {step} steps were completed concurrently",
            done.len() as u64 - updated,
            done.len()
        )));
    }
    with_conn!(tx, |c| sqlx::query(runs_sql)
        .bind(now_ms)
        .bind(&ids)
        .execute(c)
        .await?
        .rows_affected());
    Ok(())
}

/// Deletes the queue tasks of `taken` (run id, generation) that no worker has fetched, in
/// `tx`; how many. A task already fetched stays: its worker finds the step done and skips it.
pub async fn drop_tasks(tx: &mut Tx, step: &str, taken: &[(i64, i64)]) -> Result<u64, Error> {
    if taken.is_empty() {
        return Ok(0);
    }
    const SQLITE: &str = "DELETE FROM Jobs WHERE job_type = $1 AND status = 'Pending'
        AND idempotency_key IN (SELECT value FROM json_each($2))";
    // `IS TRUE` keeps the planner off apalis's partial fetch index (`WHERE status =
    // 'Pending'`), which it otherwise picks on a table without statistics (autovacuum off)
    // and then reads every pending task of the queue; the unique key finds each task.
    const POSTGRES: &str = "DELETE FROM apalis.jobs WHERE job_type = $1
        AND idempotency_key = ANY(ARRAY(SELECT json_array_elements_text($2::json)))
        AND (status = 'Pending') IS TRUE";
    let keys: Vec<String> = taken.iter().map(|&(r, s)| task_key(r, s)).collect();
    let keys = serde_json::to_string(&keys).expect("strings serialise");
    let queue = super::queue_of(step);
    let sql = match tx {
        Tx::Sqlite(_) => SQLITE,
        Tx::Postgres(_) => POSTGRES,
    };
    Ok(with_conn!(tx, |c| sqlx::query(sql)
        .bind(&queue)
        .bind(&keys)
        .execute(c)
        .await?
        .rows_affected()))
}

/// Starts a run of `wf` for each of `inputs` and queues its first step, due after `delay`, in
/// `tx`: [`super::start_run`] for many, in three statements whatever their number. The new
/// runs' ids, in the order of `inputs`.
pub async fn start_runs(
    tx: &mut Tx,
    wf: &'static Workflow,
    inputs: &[Value],
    delay: Option<std::time::Duration>,
    now_ms: i64,
) -> Result<Vec<i64>, Error> {
    let rows: Vec<NewRun> = inputs
        .iter()
        .map(|i| NewRun {
            input: i.to_string(),
            key: None,
            done: false,
        })
        .collect();
    let ids = insert_runs(tx, wf, &rows, now_ms).await?;
    queue_steps(tx, wf.steps[0], &ids, delay, now_ms).await?;
    Ok(ids)
}

/// One run a transport starts with its first step already done (it did the step itself).
pub struct FirstDone {
    pub input: Value,
    pub order_key: Option<String>,
    /// `Next` or `Finish`, with the first step's output.
    pub transition: super::Transition,
}

/// Starts runs whose first step the caller has just done in `tx` (a transport that stores
/// the messages it received does the message workflow's `ingest` itself, so a message costs
/// no queue task for it), in four statements whatever their number: the step's work and the
/// runs are kept or lost together, as when the step runs as a task. Written: the runs (a
/// `Finish` one already done), their first steps done with their outputs, and the next step
/// of each `Next` one queued with its task. The new runs' ids, in order.
pub async fn start_runs_first_done(
    tx: &mut Tx,
    wf: &'static Workflow,
    runs: &[FirstDone],
    now_ms: i64,
) -> Result<Vec<i64>, Error> {
    use super::Transition;
    let first = wf.steps[0];
    let next = wf.next_after(first)?;
    let mut rows = Vec::with_capacity(runs.len());
    let mut outputs = Vec::with_capacity(runs.len());
    for r in runs {
        let (output, done) = match &r.transition {
            Transition::Next(out) if next.is_some() => (out, false),
            Transition::Next(out) | Transition::Finish(out) => (out, true),
            other => {
                return Err(Error::Invalid(format!(
                    "a run of {} cannot start with its first step done and then {other:?}",
                    wf.name
                )))
            }
        };
        rows.push(NewRun {
            input: r.input.to_string(),
            key: r.order_key.clone(),
            done,
        });
        outputs.push(output.to_string());
    }
    let ids = insert_runs(tx, wf, &rows, now_ms).await?;
    // The outputs as one JSON object keyed by run id (text values: stored as given).
    const SQLITE_DONE: &str = "INSERT INTO steps (run_id, step, status, attempts, queued_ms, started_ms, finished_ms, output, seq)
        SELECT CAST(key AS INTEGER), $1, 'done', 1, $2, $2, $2, value, 1 FROM json_each($3)";
    const POSTGRES_DONE: &str = "INSERT INTO steps (run_id, step, status, attempts, queued_ms, started_ms, finished_ms, output, seq)
        SELECT key::bigint, $1, 'done', 1, $2, $2, $2, value, 1 FROM json_each_text($3::json)";
    let done_outputs: serde_json::Map<String, Value> = ids
        .iter()
        .zip(outputs)
        .map(|(id, out)| (id.to_string(), Value::String(out)))
        .collect();
    let done_outputs = Value::Object(done_outputs).to_string();
    let sql = match tx {
        Tx::Sqlite(_) => SQLITE_DONE,
        Tx::Postgres(_) => POSTGRES_DONE,
    };
    with_conn!(tx, |c| sqlx::query(sql)
        .bind(first)
        .bind(now_ms)
        .bind(&done_outputs)
        .execute(c)
        .await?
        .rows_affected());
    if let Some(next) = next {
        let going: Vec<i64> = ids
            .iter()
            .zip(&rows)
            .filter(|(_, r)| !r.done)
            .map(|(id, _)| *id)
            .collect();
        queue_steps(tx, next, &going, None, now_ms).await?;
    }
    Ok(ids)
}

/// A run row to insert: its input as JSON text, its ordering key, and whether it is already
/// done (its only step was the first).
struct NewRun {
    input: String,
    key: Option<String>,
    done: bool,
}

/// Inserts `rows` into `runs` in one statement; their ids, in order.
async fn insert_runs(
    tx: &mut Tx,
    wf: &Workflow,
    rows: &[NewRun],
    now_ms: i64,
) -> Result<Vec<i64>, Error> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    // The rows as one JSON array, each input a JSON *string* holding its text, so it is stored
    // exactly as given. Ids are taken in insertion order (the sequence, or SQLite's largest
    // rowid plus one, row after row, and the rows go in in array order), so sorted they line
    // up with the array; the inputs they come back with confirm it.
    const SQLITE: &str =
        "INSERT INTO runs (workflow, status, input, created_ms, order_key, finished_ms)
        SELECT $1, CASE WHEN json_extract(value, '$.done') THEN 'done' ELSE 'running' END,
            json_extract(value, '$.input'), $2, json_extract(value, '$.key'),
            CASE WHEN json_extract(value, '$.done') THEN $2 END
        FROM json_each($3) ORDER BY key
        RETURNING id, input";
    const POSTGRES: &str =
        "INSERT INTO runs (workflow, status, input, created_ms, order_key, finished_ms)
        SELECT $1, CASE WHEN (e.v ->> 'done')::boolean THEN 'done' ELSE 'running' END,
            e.v ->> 'input', $2, e.v ->> 'key',
            CASE WHEN (e.v ->> 'done')::boolean THEN $2 END
        FROM json_array_elements($3::json) WITH ORDINALITY AS e(v, n) ORDER BY e.n
        RETURNING id, input";
    let array: Vec<Value> = rows
        .iter()
        .map(|r| serde_json::json!({ "input": r.input, "key": r.key, "done": r.done }))
        .collect();
    let array = Value::Array(array).to_string();
    let sql = match tx {
        Tx::Sqlite(_) => SQLITE,
        Tx::Postgres(_) => POSTGRES,
    };
    let mut inserted: Vec<(i64, String)> = with_conn!(tx, |c| sqlx::query_as(sql)
        .bind(wf.name)
        .bind(now_ms)
        .bind(&array)
        .fetch_all(c)
        .await?);
    inserted.sort_unstable_by_key(|(id, _)| *id);
    // The order is what links a run to what it is for (a job's run to its job): checked, not
    // assumed. Two runs with the same input are interchangeable.
    let lined_up = inserted.len() == rows.len()
        && inserted
            .iter()
            .zip(rows)
            .all(|((_, input), r)| *input == r.input);
    if !lined_up {
        return Err(Error::Corrupt(format!(
            "the {} runs of {} inserted do not line up with the {} asked for",
            inserted.len(),
            wf.name,
            rows.len()
        )));
    }
    Ok(inserted.into_iter().map(|(id, _)| id).collect())
}

/// Queues step `step` of each new run of `ids` (its first queueing), due after `delay`, with
/// its task, in `tx`: two statements.
async fn queue_steps(
    tx: &mut Tx,
    step: &str,
    ids: &[i64],
    delay: Option<std::time::Duration>,
    now_ms: i64,
) -> Result<(), Error> {
    if ids.is_empty() {
        return Ok(());
    }
    const SQLITE_STEPS: &str = "INSERT INTO steps (run_id, step, status, queued_ms, seq, due_ms)
        SELECT value, $1, 'queued', $2, 1, $4 FROM json_each($3)";
    const POSTGRES_STEPS: &str = "INSERT INTO steps (run_id, step, status, queued_ms, seq, due_ms)
        SELECT r::bigint, $1, 'queued', $2, 1, $4 FROM json_array_elements_text($3::json) AS r";
    let (steps_sql,) = match tx {
        Tx::Sqlite(_) => (SQLITE_STEPS,),
        Tx::Postgres(_) => (POSTGRES_STEPS,),
    };
    let ids_json = serde_json::to_string(ids).expect("ids serialise");
    with_conn!(tx, |c| sqlx::query(steps_sql)
        .bind(step)
        .bind(now_ms)
        .bind(&ids_json)
        .bind(super::due(now_ms, delay))
        .execute(c)
        .await?
        .rows_affected());
    let tasks: Vec<(i64, i64)> = ids.iter().map(|&id| (id, 1)).collect();
    super::push_tasks(tx, step, &tasks, delay).await
}
