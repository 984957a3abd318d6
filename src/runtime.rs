//! `conductor run`'s queue consumers: one apalis worker per step queue (called a *queue
//! consumer* here, so that "worker" keeps one meaning: the process an agent runs in), on the
//! configured backend, all executing `handle_step`; shutdown by a watch channel that every
//! consumer listens to (graceful: in-flight steps finish, nothing new is fetched). A consumer
//! whose backend fails (the database restarted) or that stops heartbeating is replaced by a
//! new one, so a database outage stalls the conductor but does not end it.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use apalis::prelude::*;
use tokio::sync::watch;
use tower::retry::backoff::{ExponentialBackoffMaker, MakeBackoff};
use tower::util::rng::HasherRng;

use crate::{
    context::Env,
    db::{now_ms, Db},
    engine::{self, Begin, StepTask},
    error::Error,
    steps::{self, StepError},
};

/// How the worker pool runs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Tasks one step queue runs at once ([`default_concurrency`] for `conductor run`).
    pub concurrency: usize,
    /// How often an idle SQLite worker looks for new tasks (Postgres consumers are woken by
    /// NOTIFY, relayed by [`crate::engine::wake::relay_notifies`]).
    pub poll_interval: Duration,
    /// apalis worker heartbeat; a dead worker's tasks are re-queued after `3 ×` this, and a
    /// worker silent for `30 ×` this is dropped and replaced.
    pub heartbeat: Duration,
    /// A step is given up (failed, its run failed) when it starts for the `max_attempts + 1`th time.
    pub max_attempts: i64,
    /// In-process retries (with exponential backoff) before a task goes back to the queue.
    pub retries: usize,
    /// The step queues this process serves (default: every step).
    pub steps: Vec<String>,
}

/// The tasks per step queue `conductor run` uses on `backend` (docs/benchmarks.md, "Shipped
/// defaults"). On Postgres 8 decided fastest on 2 cores. On SQLite 4 and 8 decided faster than
/// 1 (142–153 and 183 messages/s against 87), but under load some writers then waited out
/// SQLite's busy timeout (its busy handler sleeps between tries and queues no one), and a
/// drain in the test suite stalled for a minute; 1 stays until writers queue in-process.
pub fn default_concurrency(backend: crate::db::Backend) -> usize {
    match backend {
        crate::db::Backend::Sqlite => 1,
        crate::db::Backend::Postgres => 8,
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            concurrency: 4,
            poll_interval: Duration::from_millis(100),
            heartbeat: Duration::from_secs(2),
            max_attempts: 5,
            retries: 3,
            steps: steps::ALL.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// What every step task's handler is given besides the environment.
#[derive(Debug, Clone)]
struct Limits {
    max_attempts: i64,
    /// Where the queue's bookkeeping commits ([`Db::bookkeeping`]): a step's start and
    /// attempt count.
    bookkeeping: Db,
}

/// Runs one step task in its span ([`step_span`]).
async fn handle_step(
    task: StepTask,
    env: Data<Arc<Env>>,
    limits: Data<Limits>,
) -> Result<(), BoxDynError> {
    use tracing::Instrument;
    let span = step_span(&task);
    run_step(task, env, limits).instrument(span).await
}

/// The span every log line of a step carries, named as the SQL views name them: `run_id`,
/// `step`, `attempt`, and once the run is read `job_id` (a job's run), `message_id` and
/// `transport_id` (a message's run); the steps that talk to a worker add `worker_id`.
fn step_span(task: &StepTask) -> tracing::Span {
    tracing::info_span!(
        "step",
        run_id = task.run_id,
        step = %task.step,
        attempt = tracing::field::Empty,
        job_id = tracing::field::Empty,
        message_id = tracing::field::Empty,
        transport_id = tracing::field::Empty,
        worker_id = tracing::field::Empty,
    )
}

/// Fills the span's fields from the run as read.
fn record_run(run: &engine::StepRun) {
    let span = tracing::Span::current();
    span.record("attempt", run.attempt);
    if let Some(job) = run.input.get("job_id").and_then(|j| j.as_i64()) {
        span.record("job_id", job);
    }
    // A message run's input names its transport id; ingest's output names the stored message.
    if let Some(t) = run.input.get("transport_id").and_then(|t| t.as_str()) {
        span.record("transport_id", t);
    }
    if let Some(id) = run
        .outputs
        .get(crate::workflows::names::INGEST)
        .and_then(|o| o.get("message_id"))
        .and_then(|v| v.as_i64())
    {
        span.record("message_id", id);
    }
}

/// Runs one step task: skips it if its step is already finished, gives up past the attempt
/// cap, records every error on the step row.
async fn run_step(
    task: StepTask,
    env: Data<Arc<Env>>,
    limits: Data<Limits>,
) -> Result<(), BoxDynError> {
    let Some(step) = steps::by_name(&task.step) else {
        let msg = format!("no step named {:?} in this build", task.step);
        engine::record_error(&env.db, task.run_id, &task.step, &msg, true, now_ms()).await?;
        return Err(AbortError::new(Error::Corrupt(msg)).into());
    };
    let begun = loop {
        match engine::begin_step(
            &limits.bookkeeping,
            crate::workflows::ALL,
            task.run_id,
            &task.step,
            task.seq,
            now_ms(),
        )
        .await
        {
            Err(e) if e.is_storage() => {
                crate::db::storage::trouble(&e.to_string());
                wait_for_storage(&env, task.run_id, &task.step, &e.to_string()).await?;
            }
            other => break other,
        }
    };
    let run = match begun? {
        Begin::Skip(why) => {
            tracing::debug!(run_id = task.run_id, step = %task.step, why, "skipping task");
            return Ok(());
        }
        Begin::Run(run) => run,
    };
    record_run(&run);
    if run.attempt > limits.max_attempts {
        let msg = format!("given up after {} attempts", limits.max_attempts);
        tracing::error!(run_id = run.run_id, step = %run.step, "{msg}");
        fail_run(&env, &run, &msg).await?;
        return Err(AbortError::new(Error::Invalid(msg)).into());
    }
    // A step that meets a full disk or a read-only database waits for writes to work again and
    // runs again as the same attempt: storage trouble never uses up attempts or fails a run.
    let mut result = step.run(&env, &run).await;
    let mut passes = 0;
    while let Err(StepError::Storage(e)) = &result {
        passes += 1;
        if passes > STORAGE_PASSES {
            // Back to apalis: the task runs again later, as a new attempt.
            return Err(format!("the database still takes no writes: {e}").into());
        }
        wait_for_storage(&env, run.run_id, &run.step, e).await?;
        result = step.run(&env, &run).await;
    }
    match result {
        Ok(()) => Ok(()),
        Err(StepError::Storage(_)) => unreachable!("storage errors are waited out above"),
        Err(StepError::Retryable(e)) => {
            tracing::warn!(run_id = run.run_id, step = %run.step, attempt = run.attempt, error = %e, "step failed, will retry");
            let _ = engine::record_error(&env.db, run.run_id, &run.step, &e, false, now_ms()).await;
            Err(e.into())
        }
        Err(StepError::Superseded(why)) => {
            tracing::info!(run_id = run.run_id, step = %run.step, why, "another execution finished this step first");
            Ok(())
        }
        Err(StepError::Fatal(e)) => {
            tracing::error!(run_id = run.run_id, step = %run.step, error = %e, "step failed for good");
            fail_run(&env, &run, &e).await?;
            Err(AbortError::new(Error::Invalid(e)).into())
        }
    }
}

/// How long one step waits for the database to take writes again before its task errs (and
/// apalis runs it again later).
/// Short, so a drain during the outage is not held up for long by a waiting step.
const STORAGE_WAIT: Duration = Duration::from_secs(30);
/// Runs of one step within one task while writes keep failing for lack of storage (each after
/// a wait for a write to succeed).
const STORAGE_PASSES: u32 = 5;

/// Waits until the database takes writes again; an error for apalis after [`STORAGE_WAIT`].
async fn wait_for_storage(
    env: &Env,
    run_id: i64,
    step: &str,
    cause: &str,
) -> Result<(), BoxDynError> {
    tracing::warn!(run_id = run_id, step, error = %cause, "the database cannot store anything; the step waits and runs again");
    // At least a second between passes: a probe can succeed where real work still fails.
    tokio::time::sleep(Duration::from_secs(1)).await;
    if crate::db::storage::wait_writable(&env.db, STORAGE_WAIT).await {
        Ok(())
    } else {
        Err(format!(
            "the database took no writes for {}s: {cause}",
            STORAGE_WAIT.as_secs()
        )
        .into())
    }
}

/// Fails the step and its run, after the workflow's own clean-up ([`engine::OnFailure`]). If
/// the clean-up fails, nothing is recorded and the task errs, to be run again.
async fn fail_run(env: &Env, run: &engine::StepRun, why: &str) -> Result<(), BoxDynError> {
    if let Some(on_failure) = run.workflow.on_failure {
        if let Err(e) = on_failure(env, run, why).await {
            tracing::warn!(run_id = run.run_id, step = %run.step, error = %e, "clean-up of a failed run failed; will retry");
            return Err(e.to_string().into());
        }
    }
    engine::record_error(&env.db, run.run_id, &run.step, why, true, now_ms()).await?;
    Ok(())
}

fn backoff() -> tower::retry::backoff::ExponentialBackoff {
    ExponentialBackoffMaker::new(
        Duration::from_millis(100),
        Duration::from_secs(10),
        0.5,
        HasherRng::default(),
    )
    .expect("valid backoff bounds")
    .make_backoff()
}

/// A unique worker name per process and start (apalis requires it, see the apalis notes).
fn worker_name(step: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static GENERATION: AtomicUsize = AtomicUsize::new(0);
    let generation = GENERATION.fetch_add(1, Ordering::Relaxed);
    format!("conductor-{step}-{}-{generation}", std::process::id())
}

macro_rules! spawn_worker {
    ($storage:expr, $name:expr, $env:expr, $queues:expr, $opts:expr, $stop:expr) => {{
        let worker = WorkerBuilder::new($name)
            .backend($storage)
            .data($env.clone())
            .data(Limits {
                max_attempts: $opts.max_attempts,
                bookkeeping: $queues.clone(),
            })
            .concurrency($opts.concurrency)
            .retry(RetryPolicy::retries($opts.retries).with_backoff(backoff()))
            .build(handle_step);
        let stop = $stop.clone();
        tokio::spawn(async move {
            worker
                .run_with_ctx(move |ctx| {
                    let mut stop = stop.clone();
                    async move {
                        let _ = stop.wait_for(|s| *s).await;
                        ctx.stop()
                    }
                })
                .await
        })
    }};
}

/// Starts one apalis worker named `name` for `step` that stops (gracefully) when `stop`
/// turns true.
fn start_worker(
    env: &Arc<Env>,
    queues: &Db,
    opts: &RunOptions,
    step: &str,
    name: &str,
    stop: &watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Result<(), apalis::prelude::WorkerError>> {
    let queue = engine::queue_of(step);
    // Woken at once by every task pushed to the queue (engine::wake: in-process on SQLite, the
    // relayed NOTIFY on Postgres).
    let woken = apalis::prelude::Strategy::new().stream(engine::wake::subscribe(&queue));
    match queues {
        Db::Sqlite(pool) => {
            let config = apalis_sqlite::Config::default()
                .queue(&queue)
                .batch_size(opts.concurrency.max(1))
                .heartbeat_interval(opts.heartbeat)
                .missed_heartbeats(3);
            // Only this process's pushes wake it: the poll finds the rest (other processes'
            // tasks, timers that came due).
            let storage = PollWith::new(
                apalis_sqlite::SqliteStorage::<StepTask>::new(pool).with_config(config),
                woken.interval(opts.poll_interval),
            );
            spawn_worker!(storage, name, env, queues, opts, stop)
        }
        Db::Postgres(pool) => {
            let config = apalis_postgres::Config::default()
                .queue(&queue)
                .batch_size(opts.concurrency.max(1))
                .heartbeat_interval(opts.heartbeat)
                .missed_heartbeats(3);
            // The heartbeat's fetch finds the rest (timers that came due).
            let storage = PollWith::new(
                apalis_postgres::PostgresStorage::<StepTask>::new(pool).with_config(config),
                woken,
            );
            spawn_worker!(storage, name, env, queues, opts, stop)
        }
    }
}

/// Runs `step`'s apalis worker until `until` turns true, starting a new one whenever it ends
/// by itself. An apalis worker ends for good when its backend fails (a database restart or
/// failover cuts every connection it holds); the tasks it held come back to the queue when
/// its heartbeat lapses, and every step is safe to run again.
async fn keep_worker(
    env: Arc<Env>,
    queues: Db,
    opts: RunOptions,
    step: String,
    until: watch::Receiver<bool>,
) {
    const FIRST_DELAY: Duration = Duration::from_millis(200);
    let mut delay = FIRST_DELAY;
    loop {
        let started = std::time::Instant::now();
        let name = worker_name(&step);
        let mut worker = start_worker(&env, &queues, &opts, &step, &name, &until);
        let ended = tokio::select! {
            ended = &mut worker => Some(ended),
            why = heartbeat_lapsed(&env.db, &name, opts.heartbeat, until.clone()) => {
                // Dropping the worker is what a crash does: the steps it had in hand run
                // again (the next worker re-queues its orphaned tasks), and every step is
                // safe to run twice.
                worker.abort();
                let _ = (&mut worker).await;
                tracing::warn!(step, consumer = %name, why, "queue consumer stopped heartbeating; dropped it");
                None
            }
        };
        let stopped = *until.borrow();
        let ended_by_watchdog = ended.is_none();
        let failure = match ended {
            Some(Ok(Ok(()))) if stopped => return,
            Some(Ok(Ok(()))) => "ended by itself".to_owned(),
            Some(Ok(Err(e))) => e.to_string(),
            Some(Err(e)) => format!("panicked: {e}"),
            None => "stopped heartbeating".to_owned(),
        };
        if stopped {
            tracing::warn!(
                step,
                error = failure,
                "queue consumer failed while stopping"
            );
            return;
        }
        if started.elapsed() > Duration::from_secs(60) {
            delay = FIRST_DELAY;
        }
        // apalis reports its backend's failure as text only: a full or read-only database is
        // recognised by SQLite's and Postgres's own words, so intake stops for it too.
        if crate::error::is_storage_message(&failure) {
            crate::db::storage::trouble(&failure);
        }
        if ended_by_watchdog {
            tracing::info!(step, retry_in = %humantime::format_duration(delay), "starting a new queue consumer");
        } else {
            tracing::error!(step, error = failure, retry_in = %humantime::format_duration(delay), "queue consumer ended; starting a new one");
        }
        let mut until = until.clone();
        tokio::select! {
            _ = until.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// Resolves when apalis worker `name` has not heartbeated for a long while although the
/// database answers: the worker is wedged. Seen after a Postgres restart: a worker that was
/// idle when its connections were cut can wait for a wake-up that never comes, neither
/// fetching nor failing, while its queue fills. Never resolves once `until` (the stop) is
/// set: a stopping worker may stop heartbeating while it drains.
async fn heartbeat_lapsed(
    db: &Db,
    name: &str,
    heartbeat: Duration,
    until: watch::Receiver<bool>,
) -> String {
    // Far beyond a busy machine's lag (a heartbeat may wait out SQLite's busy timeout), and
    // beyond apalis's own orphan limit (3 heartbeats), so the worker's tasks are free for its
    // successor by the time it starts.
    let limit = heartbeat * 30;
    let every = (heartbeat * 2).max(Duration::from_secs(1));
    let started = std::time::Instant::now();
    loop {
        tokio::time::sleep(every).await;
        if *until.borrow() {
            std::future::pending::<()>().await;
        }
        // Unknown (the database is down): the worker itself fails on it, or carries on.
        let Ok(age) = crate::db::apalis_worker_silence(db, name).await else {
            continue;
        };
        match age {
            Some(age) if age > limit => {
                return format!("its last heartbeat was {}s ago", age.as_secs())
            }
            None if started.elapsed() > limit => {
                return format!("it never registered in {}s", started.elapsed().as_secs())
            }
            _ => {}
        }
    }
}

/// Queues again the steps that stalled ([`engine::Stalled`]) among those this process serves,
/// every few seconds until `stop`; intake steps only while `intake_open` (a closed gate holds
/// them back on purpose).
async fn sweep_stalled(
    env: Arc<Env>,
    served: Vec<String>,
    mut stop: watch::Receiver<bool>,
    intake_open: watch::Receiver<bool>,
) -> Result<(), Error> {
    let after = env.config.jobs.stalled_after;
    let every = (after / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return Ok(()),
            _ = tokio::time::sleep(every) => {}
        }
        let mut skip: Vec<&str> = steps::ALL
            .iter()
            .copied()
            .filter(|s| !served.iter().any(|x| x == s))
            .collect();
        if !*intake_open.borrow() {
            skip.extend(steps::intake());
        }
        let now = now_ms();
        let cutoff = now - after.as_millis() as i64;
        // A database that does not answer: the next sweep tries again.
        let Ok(stalled) = engine::stalled_steps(&env.db, cutoff, &skip, 100).await else {
            continue;
        };
        for s in stalled {
            match engine::requeue_stalled(&env.db, &s, cutoff, now).await {
                Ok(true) => {
                    tracing::warn!(run_id = s.run_id, step = %s.step, stalled_for = %humantime::format_duration(after), "step stalled (its queue task was lost, or the queue is far behind); queued it again")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!(run_id = s.run_id, step = %s.step, error = %e, "could not queue a stalled step again");
                    break;
                }
            }
        }
    }
}

/// How long a finished apalis task is kept before [`prune_finished`] deletes it.
const FINISHED_TASK_AGE_SECS: i64 = 5;
/// How often finished tasks are pruned, and (where autovacuum is off) the queue vacuumed.
const PRUNE_EVERY: Duration = Duration::from_secs(5);
const VACUUM_EVERY: Duration = Duration::from_secs(30);

/// Deletes finished apalis tasks every few seconds until `stop`
/// ([`engine::prune_finished_tasks`]), and vacuums where nothing else does
/// ([`engine::vacuum_if_unattended`]): the queue stays as small as its backlog.
async fn prune_finished(env: Arc<Env>, mut stop: watch::Receiver<bool>) -> Result<(), Error> {
    const BATCH: i64 = 5_000;
    let mut last_vacuum = std::time::Instant::now();
    let mut pruned_since_vacuum = 0u64;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return Ok(()),
            _ = tokio::time::sleep(PRUNE_EVERY) => {}
        }
        loop {
            match engine::prune_finished_tasks(&env.db, FINISHED_TASK_AGE_SECS, BATCH).await {
                Ok(n) => {
                    pruned_since_vacuum += n;
                    if (n as i64) < BATCH {
                        break;
                    }
                }
                // The database does not answer (or is busy): the next round tries again.
                Err(e) => {
                    tracing::debug!(error = %e, "could not prune finished queue tasks");
                    break;
                }
            }
        }
        if pruned_since_vacuum > 0 && last_vacuum.elapsed() >= VACUUM_EVERY {
            match engine::vacuum_if_unattended(&env.db).await {
                Ok(_) => {}
                // Said at warn: with autovacuum off, nothing else will.
                Err(e) => tracing::warn!(error = %e, "could not vacuum the queue tables"),
            }
            last_vacuum = std::time::Instant::now();
            pruned_since_vacuum = 0;
        }
    }
}

/// Runs an intake step's worker while `open` says the gate is open: closing the gate stops
/// the worker gracefully (its in-flight task finishes, nothing new is fetched); reopening
/// starts a new one (apalis workers cannot be paused safely: docs/apalis.md).
async fn supervise_intake(
    env: Arc<Env>,
    queues: Db,
    opts: RunOptions,
    step: String,
    mut stop: watch::Receiver<bool>,
    mut open: watch::Receiver<bool>,
    running: Arc<AtomicUsize>,
) -> Result<(), Error> {
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return Ok(()),
            r = open.wait_for(|o| *o) => { if r.is_err() { return Ok(()); } }
        }
        let (pause_tx, pause_rx) = watch::channel(false);
        running.fetch_add(1, Ordering::SeqCst);
        let worker = tokio::spawn(keep_worker(
            env.clone(),
            queues.clone(),
            opts.clone(),
            step.clone(),
            pause_rx,
        ));
        tracing::debug!(step, "intake running");
        let gate_gone = tokio::select! {
            _ = stop.wait_for(|s| *s) => None,
            r = open.wait_for(|o| !*o) => Some(r.is_err()),
        };
        let stopping = match gate_gone {
            None => true,
            Some(false) => false,
            // Nobody can close the gate any more: run until the stop.
            Some(true) => {
                let _ = stop.wait_for(|s| *s).await;
                true
            }
        };
        let _ = pause_tx.send(true);
        let ended = worker.await;
        if running.fetch_sub(1, Ordering::SeqCst) == 1 {
            // `conductor bench drain` times the gate by this line.
            tracing::info!("intake stopped");
        }
        if let Err(e) = ended {
            return Err(Error::Queue(format!("queue consumer {step} panicked: {e}")));
        }
        if stopping {
            return Ok(());
        }
        tracing::info!(step, "intake paused (shutdown gate closed)");
    }
}

/// An intake switch that is always open (no gate: benchmarks, embedded uses).
pub fn always_open() -> watch::Receiver<bool> {
    watch::channel(true).1
}

/// Runs the step workers until `stop` turns true, then lets in-flight steps finish. Intake
/// steps ([`steps::is_intake`]) run only while `intake_open` is true.
/// How many intake workers are running: a drain is complete only once this is 0 (a spawn that
/// was mid-way when the gate closed has finished, and its worker is counted as in flight).
pub type IntakeRunning = Arc<AtomicUsize>;

pub async fn run(
    env: Arc<Env>,
    opts: RunOptions,
    stop: watch::Receiver<bool>,
    intake_open: watch::Receiver<bool>,
) -> Result<(), Error> {
    run_counted(env, opts, stop, intake_open, IntakeRunning::default()).await
}

/// [`run`], counting running intake workers in `running`.
pub async fn run_counted(
    env: Arc<Env>,
    opts: RunOptions,
    stop: watch::Receiver<bool>,
    intake_open: watch::Receiver<bool>,
    running: IntakeRunning,
) -> Result<(), Error> {
    let mut handles: Vec<(String, tokio::task::JoinHandle<Result<(), Error>>)> = Vec::new();
    // Each consumer borrows connections for its fetches, acknowledgements and heartbeats, and
    // its tasks for `begin_step`; on Postgres one more listens for pushed tasks.
    let queues = env
        .db
        .bookkeeping(opts.steps.len() as u32 + 2 * opts.concurrency as u32 + 4);
    // Listening before any consumer starts: no push after their first fetch goes unseen.
    let listener = match &queues {
        Db::Postgres(pool) => Some(engine::wake::listen(pool).await?),
        Db::Sqlite(_) => None,
    };
    for step in &opts.steps {
        if steps::by_name(step).is_none() {
            return Err(Error::Config(format!(
                "unknown step {step:?}; known: {}",
                steps::ALL.join(", ")
            )));
        }
        let handle = if steps::is_intake(step) {
            tokio::spawn(supervise_intake(
                env.clone(),
                queues.clone(),
                opts.clone(),
                step.clone(),
                stop.clone(),
                intake_open.clone(),
                running.clone(),
            ))
        } else {
            let kept = keep_worker(
                env.clone(),
                queues.clone(),
                opts.clone(),
                step.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                kept.await;
                Ok(())
            })
        };
        handles.push((step.clone(), handle));
    }
    if let Some(listener) = listener {
        let names = opts.steps.iter().map(|s| engine::queue_of(s)).collect();
        handles.push((
            "wake-up relay".to_owned(),
            tokio::spawn(engine::wake::relay_notifies(listener, names, stop.clone())),
        ));
    }
    handles.push((
        "stall sweep".to_owned(),
        tokio::spawn(sweep_stalled(
            env.clone(),
            opts.steps.clone(),
            stop.clone(),
            intake_open.clone(),
        )),
    ));
    handles.push((
        "finished task pruning".to_owned(),
        tokio::spawn(prune_finished(env.clone(), stop.clone())),
    ));
    tracing::info!(steps = %opts.steps.join(","), backend = ?env.db.backend(), "queue consumers running");
    let mut first_error = None;
    for (step, handle) in handles {
        match handle.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(step, error = %e, "queue consumer ended with an error");
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error
                    .get_or_insert(Error::Queue(format!("queue consumer {step} panicked: {e}")));
            }
        }
    }
    if let Db::Postgres(pool) = &queues {
        // The bookkeeping pool is this run's own (on SQLite it is the shared one).
        pool.close().await;
    }
    first_error.map_or(Ok(()), Err)
}
