//! Jobs, their attempts and repository claims: the named queries of the job workflow
//! (docs/design.md section 4) and of the worker protocol. Every function runs in the caller's
//! transaction. Attempt states move forward only:
//! `spawning → spawned → handshaken → delivered → reported`, or to `failed` from any of them.
//!
//! The rest of a job's world lives beside these queries:
//!
//! - [`routing`]: which route a job takes (its repository and environment);
//!   [`caps`]: whether it may start now (slots, its place in line, its account's budget).
//! - [`task_files`]: the files its worker receives.
//! - [`spawner`]: starting workers (a local process or an ECS Fargate task).
//! - [`forge`]: opening pull requests (GitHub REST, or the local forge in the database);
//!   [`local_git`]: bare repositories on disk as remotes.
//! - [`history`]: the job history views, as `conductor history` prints them.

pub mod caps;
pub mod forge;
pub mod history;
pub mod local_git;
pub mod remote;
pub mod routing;
pub mod spawner;
pub mod task_files;
pub mod tracker;

use serde::{Deserialize, Serialize};

use crate::{db::Db, db::Tx, error::Error, with_conn, with_pool};

/// Declares a state enum stored as lowercase text: its names, parsing (a name the database
/// should never hold is [`Error::Corrupt`]) and its JSON form.
// Declared after it: `notices` declares its states with `text_states!`.
macro_rules! text_states {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// The name stored in the database.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = Error;
            fn from_str(text: &str) -> Result<Self, Error> {
                match text {
                    $($text => Ok($name::$variant),)+
                    other => Err(Error::Corrupt(format!(
                        concat!("unknown ", stringify!($name), " {:?}"),
                        other
                    ))),
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(text: String) -> Result<Self, Error> {
                text.parse()
            }
        }
    };
}

pub mod notices;

text_states! {
    /// Where a job stands (`agent_jobs.state`).
    JobState {
        /// Created or retried, its run not yet at a worker.
        Pending => "pending",
        /// Waiting for its repository's claim.
        Waiting => "waiting",
        /// A worker was started for it.
        Running => "running",
        /// Ended with a pull request.
        Succeeded => "succeeded",
        /// Ended without one (a failure issue, or a fatal error).
        Failed => "failed",
        /// Ended after `jobs.max_attempts` attempts.
        Quarantined => "quarantined",
        /// Its incident was merged into another's before its agent started.
        Merged => "merged",
        /// Its account had started its daily budget of agents (`caps`); `conductor retry`
        /// starts it anyway.
        OverBudget => "over_budget",
    }
}

impl JobState {
    /// Whether a job in this state has ended.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobState::Succeeded
                | JobState::Failed
                | JobState::Quarantined
                | JobState::Merged
                | JobState::OverBudget
        )
    }
}

text_states! {
    /// Where an attempt stands (`job_attempts.state`); it moves forward only, or to `Failed`.
    AttemptState {
        /// Recorded, its worker being started.
        Spawning => "spawning",
        /// Its worker was started; the handshake deadline runs.
        Spawned => "spawned",
        /// The worker proved its token.
        Handshaken => "handshaken",
        /// The worker has its task files.
        Delivered => "delivered",
        /// The worker reported.
        Reported => "reported",
        /// Given up: no handshake, an expired lease, a spawn that failed.
        Failed => "failed",
    }
}

impl AttemptState {
    /// Whether a worker may still be alive for an attempt in this state.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            AttemptState::Spawning
                | AttemptState::Spawned
                | AttemptState::Handshaken
                | AttemptState::Delivered
        )
    }

    /// Whether the worker has handshaken and not yet reported.
    pub fn is_working(self) -> bool {
        matches!(self, AttemptState::Handshaken | AttemptState::Delivered)
    }

    /// Whether the worker was started and has not handshaken yet.
    pub fn is_starting(self) -> bool {
        matches!(self, AttemptState::Spawning | AttemptState::Spawned)
    }
}

/// A job row, as the job workflow's steps read it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Job {
    pub id: i64,
    pub kind: String,
    pub ticket_key: Option<String>,
    pub incident_id: Option<i64>,
    pub message_id: i64,
    #[sqlx(try_from = "String")]
    pub state: JobState,
    pub attempts: i32,
    pub attempt_base: i32,
    pub repo: Option<String>,
    pub base_branch: Option<String>,
    pub forge_repo: Option<String>,
    /// The route taken, and its environment as JSON (set with the repository, at claim).
    pub route: Option<String>,
    pub environment: Option<String>,
    /// The AWS account an incident job counts against.
    pub account: Option<String>,
    /// An operator's retry waived the account's daily budget.
    pub budget_waived: bool,
    pub created_ms: i64,
}

impl Job {
    /// Whether the job has ended (with a pull request, a failure, in quarantine, or merged
    /// into another incident's job before its agent started).
    pub fn is_finished(&self) -> bool {
        self.state.is_finished()
    }
}

const JOB_COLUMNS: &str = "id, kind, ticket_key, incident_id, message_id, state, attempts, attempt_base, repo, base_branch, forge_repo, route, environment, account, budget_waived, created_ms";

/// When an incident was merged into another (None while it is not).
pub async fn merged_ms(tx: &mut Tx, incident: i64) -> Result<Option<i64>, Error> {
    const SQL: &str = "SELECT merged_ms FROM incidents WHERE id = $1";
    let ms: Option<Option<i64>> = with_conn!(tx, |c| sqlx::query_scalar(SQL)
        .bind(incident)
        .fetch_optional(c)
        .await?);
    Ok(ms.flatten())
}

/// When a job's first worker was started (its first attempt row), if ever.
pub async fn first_attempt_ms(tx: &mut Tx, job: i64) -> Result<Option<i64>, Error> {
    const SQL: &str = "SELECT MIN(created_ms) FROM job_attempts WHERE job_id = $1";
    let ms: Option<i64> = with_conn!(tx, |c| sqlx::query_scalar(SQL)
        .bind(job)
        .fetch_one(c)
        .await?);
    Ok(ms)
}

/// The AWS account of an incident.
pub async fn incident_account(tx: &mut Tx, incident: i64) -> Result<String, Error> {
    const SQL: &str = "SELECT account FROM incidents WHERE id = $1";
    Ok(with_conn!(tx, |c| sqlx::query_scalar(SQL)
        .bind(incident)
        .fetch_one(c)
        .await?))
}

/// Where an incident went when merges folded it into others: the incident that survived
/// (following merge chains) and that incident's job, or None while it is not merged.
pub async fn merged_into(tx: &mut Tx, incident: i64) -> Result<Option<(i64, Option<i64>)>, Error> {
    const INTO: &str = "SELECT merged_into FROM incidents WHERE id = $1";
    const JOB: &str = "SELECT id FROM agent_jobs WHERE incident_id = $1";
    let mut current = incident;
    // A merge folds into the earliest-opened incident, so a chain ends; the bound guards
    // against a corrupt cycle.
    for _ in 0..1000 {
        let next: Option<i64> = with_conn!(tx, |c| sqlx::query_scalar(INTO)
            .bind(current)
            .fetch_optional(c)
            .await?)
        .flatten();
        match next {
            Some(n) => current = n,
            None => break,
        }
    }
    if current == incident {
        return Ok(None);
    }
    let job: Option<i64> = with_conn!(tx, |c| sqlx::query_scalar(JOB)
        .bind(current)
        .fetch_optional(c)
        .await?);
    Ok(Some((current, job)))
}

pub async fn load_job(tx: &mut Tx, id: i64) -> Result<Job, Error> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM agent_jobs WHERE id = $1");
    let job: Option<Job> = with_conn!(tx, |c| sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(c)
        .await?);
    job.ok_or_else(|| Error::Invalid(format!("no job {id}")))
}

/// Records where the job works (routing is decided once, at claim): its repository, base
/// branch and forge name, the route taken and its environment, and its account.
pub async fn set_route(
    tx: &mut Tx,
    id: i64,
    target: &routing::Target,
    account: Option<&str>,
    now_ms: i64,
) -> Result<(), Error> {
    const SQL: &str =
        "UPDATE agent_jobs SET repo = $2, base_branch = $3, forge_repo = $4, route = $5,
            environment = $6, account = COALESCE(account, $7), updated_ms = $8,
            started_ms = COALESCE(started_ms, $8)
        WHERE id = $1";
    let environment = target
        .environment
        .as_ref()
        .map(|e| serde_json::to_string(e).expect("an environment serialises"));
    with_conn!(tx, |c| sqlx::query(SQL)
        .bind(id)
        .bind(&target.repo)
        .bind(&target.base)
        .bind(&target.forge_repo)
        .bind(&target.route)
        .bind(environment.as_deref())
        .bind(account)
        .bind(now_ms)
        .execute(c)
        .await?
        .rows_affected());
    Ok(())
}

/// The message that started a job, as stored.
pub async fn message_body(tx: &mut Tx, job: &Job) -> Result<String, Error> {
    const SQL: &str = "SELECT body FROM messages WHERE id = $1";
    Ok(with_conn!(tx, |c| sqlx::query_scalar(SQL)
        .bind(job.message_id)
        .fetch_one(c)
        .await?))
}

pub async fn set_state(tx: &mut Tx, id: i64, state: JobState, now_ms: i64) -> Result<(), Error> {
    const SQL: &str = "UPDATE agent_jobs SET state = $2, updated_ms = $3 WHERE id = $1";
    with_conn!(tx, |c| sqlx::query(SQL)
        .bind(id)
        .bind(state.as_str())
        .bind(now_ms)
        .execute(c)
        .await?
        .rows_affected());
    Ok(())
}

/// Binds a workflow run to its job (the job's current run, for wake-ups from the protocol).
pub async fn set_run(tx: &mut Tx, id: i64, run_id: i64, now_ms: i64) -> Result<(), Error> {
    const SQL: &str =
        "UPDATE agent_jobs SET run_id = $2, state = 'pending', updated_ms = $3 WHERE id = $1";
    with_conn!(tx, |c| sqlx::query(SQL)
        .bind(id)
        .bind(run_id)
        .bind(now_ms)
        .execute(c)
        .await?
        .rows_affected());
    Ok(())
}

/// [`set_run`] for many jobs at once, in one statement: each (job, run) of `runs`.
pub async fn set_runs(tx: &mut Tx, runs: &[(i64, i64)], now_ms: i64) -> Result<(), Error> {
    if runs.is_empty() {
        return Ok(());
    }
    // The pairs as one JSON object, job id to run id: the same parameters on both backends.
    const SQLITE: &str = "UPDATE agent_jobs SET state = 'pending', updated_ms = $1,
            run_id = json_extract($2, '$.\"' || id || '\"')
        WHERE id IN (SELECT CAST(key AS INTEGER) FROM json_each($2))";
    const POSTGRES: &str = "UPDATE agent_jobs SET state = 'pending', updated_ms = $1,
            run_id = ($2::json ->> id::text)::bigint
        WHERE id = ANY(ARRAY(SELECT key::bigint FROM json_each_text($2::json)))";
    let pairs: serde_json::Map<String, serde_json::Value> = runs
        .iter()
        .map(|(job, run)| (job.to_string(), serde_json::Value::from(*run)))
        .collect();
    let pairs = serde_json::Value::Object(pairs).to_string();
    let sql = match tx {
        Tx::Sqlite(_) => SQLITE,
        Tx::Postgres(_) => POSTGRES,
    };
    with_conn!(tx, |c| sqlx::query(sql)
        .bind(now_ms)
        .bind(&pairs)
        .execute(c)
        .await?
        .rows_affected());
    Ok(())
}

/// Of `jobs`, the ones that have no run yet, in id order.
pub async fn without_run(tx: &mut Tx, jobs: &[i64]) -> Result<Vec<i64>, Error> {
    const SQLITE: &str = "SELECT id FROM agent_jobs
        WHERE run_id IS NULL AND id IN (SELECT value FROM json_each($1)) ORDER BY id";
    const POSTGRES: &str = "SELECT id FROM agent_jobs
        WHERE run_id IS NULL AND id = ANY(ARRAY(SELECT json_array_elements_text($1::json)::bigint))
        ORDER BY id";
    let ids = serde_json::to_string(jobs).expect("ids serialise");
    let sql = match tx {
        Tx::Sqlite(_) => SQLITE,
        Tx::Postgres(_) => POSTGRES,
    };
    Ok(with_conn!(tx, |c| sqlx::query_scalar(sql)
        .bind(&ids)
        .fetch_all(c)
        .await?))
}

/// The job's ending: its final state and what it produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub state: JobState,
    pub outcome: String,
    pub branch: Option<String>,
    pub head_sha: Option<String>,
    pub pr_url: Option<String>,
    pub issue_url: Option<String>,
}

impl Outcome {
    /// A job's end with no branch and no pull request: `outcome` says why.
    pub fn without_pull_request(state: JobState, outcome: String) -> Outcome {
        Outcome {
            state,
            outcome,
            branch: None,
            head_sha: None,
            pr_url: None,
            issue_url: None,
        }
    }
}

pub async fn record_outcome(tx: &mut Tx, id: i64, o: &Outcome, now_ms: i64) -> Result<(), Error> {
    const SQL: &str = "UPDATE agent_jobs SET state = $2, outcome = $3,
            branch = COALESCE($4, branch), head_sha = COALESCE($5, head_sha),
            pr_url = COALESCE($6, pr_url), issue_url = COALESCE($7, issue_url),
            finished_ms = $8, updated_ms = $8
        WHERE id = $1";
    with_conn!(tx, |c| sqlx::query(SQL)
        .bind(id)
        .bind(o.state.as_str())
        .bind(&o.outcome)
        .bind(o.branch.as_deref())
        .bind(o.head_sha.as_deref())
        .bind(o.pr_url.as_deref())
        .bind(o.issue_url.as_deref())
        .bind(now_ms)
        .execute(c)
        .await?
        .rows_affected());
    Ok(())
}

/// The job's recorded outcome (why it ended, or its pull request) and its failure issue, once
/// it has ended.
pub async fn outcome_of(tx: &mut Tx, id: i64) -> Result<(Option<String>, Option<String>), Error> {
    const SQL: &str = "SELECT outcome, issue_url FROM agent_jobs WHERE id = $1";
    let o: Option<(Option<String>, Option<String>)> = with_conn!(tx, |c| sqlx::query_as(SQL)
        .bind(id)
        .fetch_optional(c)
        .await?);
    Ok(o.unwrap_or_default())
}

/// Releases the job's claim on its repository (nothing if it holds none).
pub async fn release_repo(tx: &mut Tx, job: i64) -> Result<(), Error> {
    const SQL: &str = "DELETE FROM repo_claims WHERE job_id = $1";
    with_conn!(tx, |c| sqlx::query(SQL)
        .bind(job)
        .execute(c)
        .await?
        .rows_affected());
    Ok(())
}

/// One worker started for a job.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Attempt {
    pub worker_id: String,
    pub job_id: i64,
    pub attempt: i32,
    /// The hash of the attempt's secret ([`crate::secrets::hash_token`]); the secret itself
    /// exists only in the spawning step's memory and the worker's.
    pub token: String,
    #[sqlx(try_from = "String")]
    pub state: AttemptState,
    pub spawner: String,
    pub handle: Option<String>,
    pub files: String,
    pub handshake_deadline_ms: Option<i64>,
    pub lease_until_ms: Option<i64>,
    pub success: Option<bool>,
    pub title: Option<String>,
    pub report: Option<String>,
    pub branch: Option<String>,
    pub head_sha: Option<String>,
    pub failure: Option<String>,
    /// The host and pid the worker gave in its handshake.
    pub worker_host: Option<String>,
    pub worker_pid: Option<i64>,
}

const ATTEMPT_COLUMNS: &str = "worker_id, job_id, attempt, token, state, spawner, handle, files, handshake_deadline_ms, lease_until_ms, success, title, report, branch, head_sha, failure, worker_host, worker_pid";

/// A task file as the worker receives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFile {
    pub name: String,
    pub content: String,
}

impl Attempt {
    pub fn task_files(&self) -> Result<Vec<TaskFile>, Error> {
        serde_json::from_str(&self.files)
            .map_err(|e| Error::Corrupt(format!("attempt {}: bad files: {e}", self.worker_id)))
    }

    pub fn is_active(&self) -> bool {
        self.state.is_active()
    }
}

/// The branch the job's latest successful attempt pushed, if any: where a new attempt (or
/// a retried run) continues.
pub async fn last_pushed_branch(db: &Db, job: i64) -> Result<Option<String>, Error> {
    const SQL: &str = "SELECT branch FROM job_attempts
        WHERE job_id = $1 AND success AND branch IS NOT NULL AND branch <> ''
        ORDER BY attempt DESC LIMIT 1";
    Ok(with_pool!(db, |p| sqlx::query_scalar(SQL)
        .bind(job)
        .fetch_optional(p)
        .await?))
}

/// The job's latest attempt.
pub async fn latest_attempt(tx: &mut Tx, job: i64) -> Result<Option<Attempt>, Error> {
    let sql = format!(
        "SELECT {ATTEMPT_COLUMNS} FROM job_attempts WHERE job_id = $1 ORDER BY attempt DESC LIMIT 1"
    );
    Ok(with_conn!(tx, |c| sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(job)
        .fetch_optional(c)
        .await?))
}

/// An attempt by its worker id; on Postgres the row is locked until the transaction ends, so
/// two protocol calls of one worker (or a call and a step) never interleave.
pub async fn attempt_by_worker(tx: &mut Tx, worker_id: &str) -> Result<Option<Attempt>, Error> {
    let lock = if matches!(tx, Tx::Postgres(_)) {
        " FOR UPDATE"
    } else {
        ""
    };
    let sql = format!("SELECT {ATTEMPT_COLUMNS} FROM job_attempts WHERE worker_id = $1{lock}");
    Ok(with_conn!(tx, |c| sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(worker_id)
        .fetch_optional(c)
        .await?))
}

/// Creates attempt `attempt` of `job` (state `spawning`) and counts it on the job.
/// Replaces an attempt's token hash: a spawn step re-run after a crash mints a new token,
/// since the first one was never stored. A worker started with the old one is refused.
/// Only while the attempt is still `spawning`: whether it was (a worker that handshook
/// meanwhile keeps its token).
pub async fn set_token_hash(tx: &mut Tx, worker_id: &str, hash: &str) -> Result<bool, Error> {
    const SQL: &str =
        "UPDATE job_attempts SET token = $2 WHERE worker_id = $1 AND state = 'spawning'";
    let n = with_conn!(tx, |c| sqlx::query(SQL)
        .bind(worker_id)
        .bind(hash)
        .execute(c)
        .await?
        .rows_affected());
    Ok(n == 1)
}

/// Records a new attempt; `token` is the hash of its secret, never the secret.
#[allow(clippy::too_many_arguments)]
pub async fn insert_attempt(
    tx: &mut Tx,
    worker_id: &str,
    job: i64,
    attempt: i32,
    token: &str,
    spawner: &str,
    files: &[TaskFile],
    now_ms: i64,
) -> Result<(), Error> {
    const INSERT: &str = "INSERT INTO job_attempts (worker_id, job_id, attempt, token, state, spawner, files, created_ms)
        VALUES ($1, $2, $3, $4, 'spawning', $5, $6, $7)";
    const COUNT: &str =
        "UPDATE agent_jobs SET attempts = $2, state = 'running', updated_ms = $3 WHERE id = $1";
    let files = serde_json::to_string(files).expect("task files serialise");
    with_conn!(tx, |c| sqlx::query(INSERT)
        .bind(worker_id)
        .bind(job)
        .bind(attempt)
        .bind(token)
        .bind(spawner)
        .bind(&files)
        .bind(now_ms)
        .execute(c)
        .await?
        .rows_affected());
    with_conn!(tx, |c| sqlx::query(COUNT)
        .bind(job)
        .bind(attempt)
        .bind(now_ms)
        .execute(c)
        .await?
        .rows_affected());
    Ok(())
}

/// The worker was started: its handle, and the deadline for its handshake.
pub async fn mark_spawned(
    tx: &mut Tx,
    worker_id: &str,
    handle: &str,
    deadline_ms: i64,
    now_ms: i64,
) -> Result<(), Error> {
    // The handle is kept whatever the state: the worker may have called in (and moved the
    // attempt on) before this commit. One the handshake already recorded wins: it names the
    // process that really answered.
    const SQL: &str = "UPDATE job_attempts SET handle = COALESCE(handle, $2),
            state = CASE WHEN state = 'spawning' THEN 'spawned' ELSE state END,
            handshake_deadline_ms = CASE WHEN state = 'spawning' THEN $3 ELSE handshake_deadline_ms END,
            spawned_ms = COALESCE(spawned_ms, $4)
        WHERE worker_id = $1";
    with_conn!(tx, |c| sqlx::query(SQL)
        .bind(worker_id)
        .bind(handle)
        .bind(deadline_ms)
        .bind(now_ms)
        .execute(c)
        .await?
        .rows_affected());
    Ok(())
}

/// Moves an attempt from one state to the next; false if it was not in `from`.
pub async fn advance(
    tx: &mut Tx,
    worker_id: &str,
    from: &[AttemptState],
    to: AttemptState,
    lease_until_ms: Option<i64>,
    now_ms: i64,
) -> Result<bool, Error> {
    // The states are this enum's names, never input.
    let states = from
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "UPDATE job_attempts SET state = $2, lease_until_ms = COALESCE($3, lease_until_ms),
            handshake_ms = CASE WHEN $2 = 'handshaken' THEN $4 ELSE handshake_ms END,
            last_heartbeat_ms = $4
        WHERE worker_id = $1 AND state IN ({states})"
    );
    let n = with_conn!(tx, |c| sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(worker_id)
        .bind(to.as_str())
        .bind(lease_until_ms)
        .bind(now_ms)
        .execute(c)
        .await?
        .rows_affected());
    Ok(n == 1)
}

/// Renews an attempt's lease.
pub async fn heartbeat(
    tx: &mut Tx,
    worker_id: &str,
    phase: &str,
    lease_until_ms: i64,
    now_ms: i64,
) -> Result<(), Error> {
    const SQL: &str =
        "UPDATE job_attempts SET lease_until_ms = $2, last_heartbeat_ms = $3, phase = $4
        WHERE worker_id = $1";
    with_conn!(tx, |c| sqlx::query(SQL)
        .bind(worker_id)
        .bind(lease_until_ms)
        .bind(now_ms)
        .bind(phase)
        .execute(c)
        .await?
        .rows_affected());
    Ok(())
}

/// What a worker reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub success: bool,
    pub title: String,
    pub report: String,
    pub branch: String,
    pub head_sha: String,
    pub failure: String,
}

/// Stores the attempt's report; false if the attempt was not active.
pub async fn store_report(
    tx: &mut Tx,
    worker_id: &str,
    r: &Report,
    now_ms: i64,
) -> Result<bool, Error> {
    const SQL: &str =
        "UPDATE job_attempts SET state = 'reported', reported_ms = $2, success = $3, title = $4,
            report = $5, branch = $6, head_sha = $7, failure = $8
        WHERE worker_id = $1 AND state IN ('handshaken', 'delivered')";
    let n = with_conn!(tx, |c| sqlx::query(SQL)
        .bind(worker_id)
        .bind(now_ms)
        .bind(r.success)
        .bind(&r.title)
        .bind(&r.report)
        .bind(&r.branch)
        .bind(&r.head_sha)
        .bind(&r.failure)
        .execute(c)
        .await?
        .rows_affected());
    Ok(n == 1)
}

/// Gives an active attempt up with the reason; false (and nothing written) when it had
/// already reported or failed, so failing it twice keeps the first reason.
pub async fn fail_attempt(
    tx: &mut Tx,
    worker_id: &str,
    reason: &str,
    now_ms: i64,
) -> Result<bool, Error> {
    const SQL: &str = "UPDATE job_attempts SET state = 'failed', failure = $2, reported_ms = $3
        WHERE worker_id = $1 AND state IN ('spawning', 'spawned', 'handshaken', 'delivered')";
    let n = with_conn!(tx, |c| sqlx::query(SQL)
        .bind(worker_id)
        .bind(reason)
        .bind(now_ms)
        .execute(c)
        .await?
        .rows_affected());
    Ok(n == 1)
}

/// Records who answered a handshake: the worker's host and pid, and for a local worker its
/// handle (`pid:N`, its process group), which replaces whatever `spawn` recorded: the process
/// that handshook is the one to stop.
pub async fn record_worker(
    tx: &mut Tx,
    worker_id: &str,
    host: &str,
    pid: i64,
    handle: Option<&str>,
) -> Result<(), Error> {
    const SQL: &str = "UPDATE job_attempts SET worker_host = $2, worker_pid = $3,
            handle = COALESCE($4, handle)
        WHERE worker_id = $1";
    with_conn!(tx, |c| sqlx::query(SQL)
        .bind(worker_id)
        .bind(host)
        .bind(pid)
        .bind(handle)
        .execute(c)
        .await?
        .rows_affected());
    Ok(())
}

/// A conductor that was down did not hear its workers: on start, give every live attempt a
/// full lease (and handshake window) from now, so none is retried for the conductor's absence.
pub async fn extend_live_attempts(
    db: &Db,
    lease_ms: i64,
    handshake_ms: i64,
    now_ms: i64,
) -> Result<u64, Error> {
    const LEASE: &str = "UPDATE job_attempts SET lease_until_ms = $1
        WHERE state IN ('handshaken', 'delivered') AND lease_until_ms < $1";
    const HANDSHAKE: &str = "UPDATE job_attempts SET handshake_deadline_ms = $1
        WHERE state = 'spawned' AND handshake_deadline_ms < $1";
    let a = with_pool!(db, |p| sqlx::query(LEASE)
        .bind(now_ms + lease_ms)
        .execute(p)
        .await?
        .rows_affected());
    let b = with_pool!(db, |p| sqlx::query(HANDSHAKE)
        .bind(now_ms + handshake_ms)
        .execute(p)
        .await?
        .rows_affected());
    Ok(a + b)
}

/// A line of `conductor jobs`.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct JobLine {
    pub id: i64,
    pub kind: String,
    pub subject: String,
    pub state: String,
    pub attempts: i32,
    pub repo: Option<String>,
    pub branch: Option<String>,
    pub pr_url: Option<String>,
    pub issue_url: Option<String>,
    pub outcome: Option<String>,
    /// Why a `waiting` job waits (a busy repository, a cap).
    pub wait_reason: Option<String>,
    pub route: Option<String>,
}

/// Jobs, newest first; only quarantined ones when `quarantined`.
pub async fn list(db: &Db, quarantined: bool, limit: i64) -> Result<Vec<JobLine>, Error> {
    const SQL: &str = "SELECT id, kind,
            COALESCE(ticket_key, 'incident ' || CAST(incident_id AS TEXT)) AS subject,
            state, attempts, repo, branch, pr_url, issue_url, outcome, wait_reason, route
        FROM agent_jobs WHERE ($1 = 0 OR state = 'quarantined')
        ORDER BY id DESC LIMIT $2";
    let flag: i32 = quarantined.into();
    Ok(with_pool!(db, |p| sqlx::query_as(SQL)
        .bind(flag)
        .bind(limit)
        .fetch_all(p)
        .await?))
}

/// What a task file is made from: the ticket or the incident with its alarms.
pub async fn subject_of(tx: &mut Tx, job: &Job) -> Result<serde_json::Value, Error> {
    use serde_json::json;
    if let Some(key) = &job.ticket_key {
        const SQL: &str = "SELECT m.body FROM tickets t JOIN messages m ON m.id = t.first_message_id WHERE t.key = $1";
        let body: String = with_conn!(tx, |c| sqlx::query_scalar(SQL)
            .bind(key)
            .fetch_one(c)
            .await?);
        return match crate::scheduling::domain::parse_message(&body) {
            Ok(crate::scheduling::domain::Message::Ticket(t)) => Ok(json!({"ticket": {
                "key": t.key, "summary": t.summary.unwrap_or_default(), "description": t.description,
                "labels": t.labels, "priority": t.priority, "project": t.project,
            }})),
            _ => Err(Error::Corrupt(format!(
                "ticket {key}'s first message is not a ticket"
            ))),
        };
    }
    let own = job
        .incident_id
        .ok_or_else(|| Error::Corrupt(format!("job {} has no subject", job.id)))?;
    // A job that goes on after its incident was merged (see workflows::job::end_if_merged) works
    // the surviving incident: its alarms moved there.
    let incident = match merged_into(tx, own).await? {
        Some((into, _)) => into,
        None => own,
    };
    const INCIDENT: &str = "SELECT account FROM incidents WHERE id = $1";
    const ALARMS: &str = "SELECT alarm_name, state, event_ms FROM alarms WHERE incident_id = $1 ORDER BY event_ms, id";
    let account: String = with_conn!(tx, |c| sqlx::query_scalar(INCIDENT)
        .bind(incident)
        .fetch_one(c)
        .await?);
    let alarms: Vec<(String, String, i64)> = with_conn!(tx, |c| sqlx::query_as(ALARMS)
        .bind(incident)
        .fetch_all(c)
        .await?);
    let alarms: Vec<_> = alarms
        .into_iter()
        .map(|(name, state, ms)| json!({"name": name, "state": state, "time": crate::scheduling::domain::format_ms(ms)}))
        .collect();
    Ok(json!({"incident": {"id": incident, "account": account, "alarms": alarms}}))
}

/// The job the workflow run `run_id` works on, and the step a protocol event should wake.
pub async fn run_of_job(tx: &mut Tx, job: i64) -> Result<Option<i64>, Error> {
    const SQL: &str = "SELECT run_id FROM agent_jobs WHERE id = $1";
    let run: Option<Option<i64>> = with_conn!(tx, |c| sqlx::query_scalar(SQL)
        .bind(job)
        .fetch_optional(c)
        .await?);
    Ok(run.flatten())
}

/// Resets an ended job for a new run: its attempts so far no longer count toward the
/// quarantine limit, its state and outcome are cleared. Only while its current run is still
/// `seen_run` (false, and nothing written, when another retry got there first: on Postgres
/// the second update waits for the first and then finds the row changed).
pub async fn reset_for_retry(
    tx: &mut Tx,
    job: i64,
    seen_run: Option<i64>,
    now_ms: i64,
) -> Result<bool, Error> {
    const SQL: &str =
        "UPDATE agent_jobs SET attempt_base = attempts, state = 'pending', outcome = NULL,
            finished_ms = NULL, wait_reason = NULL, budget_waived = TRUE, updated_ms = $2
        WHERE id = $1 AND COALESCE(run_id, 0) = $3";
    let n = with_conn!(tx, |c| sqlx::query(SQL)
        .bind(job)
        .bind(now_ms)
        .bind(seen_run.unwrap_or(0))
        .execute(c)
        .await?
        .rows_affected());
    Ok(n == 1)
}

/// The status of the job's current workflow run, if it has one.
pub async fn run_status(tx: &mut Tx, job: i64) -> Result<Option<String>, Error> {
    const SQL: &str =
        "SELECT r.status FROM agent_jobs j JOIN runs r ON r.id = j.run_id WHERE j.id = $1";
    Ok(with_conn!(tx, |c| sqlx::query_scalar(SQL)
        .bind(job)
        .fetch_optional(c)
        .await?))
}

/// A live worker, for `conductor status`.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct LiveWorker {
    pub worker_id: String,
    pub job_id: i64,
    pub state: String,
    pub phase: Option<String>,
    pub last_heartbeat_ms: Option<i64>,
}

pub async fn live_workers(db: &Db) -> Result<Vec<LiveWorker>, Error> {
    const SQL: &str = "SELECT worker_id, job_id, state, phase, last_heartbeat_ms FROM job_attempts
        WHERE state IN ('spawning', 'spawned', 'handshaken', 'delivered') ORDER BY job_id";
    Ok(with_pool!(db, |p| sqlx::query_as(SQL).fetch_all(p).await?))
}
