//! Admission: whether a routed job may take a slot and start its agent now, against `[caps]`
//! (docs/design.md section 12). A slot is a `repo_claims` row, held from `claim` to `finish`
//! (or the job given up): at most `caps.per_repo` per repository, `caps.per_account` per AWS
//! account, `caps.total` in all.
//!
//! In order: a job never overtakes an earlier job (a lower id) that shares a capped scope
//! with it and has not started yet — the earlier job's place is kept for it, so an alarm storm
//! is served in the order it was decided. One exception keeps slots from idling: in the
//! account's and the total line, an earlier job held up by its own full repository keeps no
//! place (it takes the next free one once its repository frees).
//! Budget: an account's `daily` agents counts the jobs admitted since 00:00 UTC and its earlier
//! jobs still to start (the budget goes in order too); a job past it ends `over_budget` unless
//! an operator's `conductor retry` waived the budget.
//!
//! Race-free across replicas: on Postgres every admission takes one advisory lock (claims
//! are rare, one per job); SQLite's write transactions are serial already (`BEGIN IMMEDIATE`).

use crate::{config::Caps, db::Tx, error::Error, with_conn};

/// What admission says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// The job holds its slot (now, or from before).
    Admitted,
    /// Over a cap, or behind earlier jobs: the reason, as `jobs` and the history show it.
    Wait(String),
    /// Past its account's daily budget: the reason.
    OverBudget(String),
}

/// The job as admission sees it.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    pub job_id: i64,
    pub repo: &'a str,
    pub account: Option<&'a str>,
    pub budget_waived: bool,
}

const DAY_MS: i64 = 86_400_000;

/// Admits `job` if its caps, its place in line and its budget allow; records the slot.
pub async fn admit(
    tx: &mut Tx,
    caps: &Caps,
    job: &Candidate<'_>,
    now_ms: i64,
) -> Result<Admission, Error> {
    const HOLDS: &str = "SELECT COUNT(*) FROM repo_claims WHERE job_id = $1";
    let holds: i64 = with_conn!(tx, |c| sqlx::query_scalar(HOLDS)
        .bind(job.job_id)
        .fetch_one(c)
        .await?);
    if holds > 0 {
        return Ok(Admission::Admitted);
    }
    if let Tx::Postgres(t) = tx {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('conductor.slots', 0))")
            .execute(&mut **t)
            .await?;
    }
    if let (Some(account), false) = (job.account, job.budget_waived) {
        if let Some(daily) = caps.daily_for(account) {
            // Today's starts, and the account's earlier jobs still to start: the budget goes
            // to jobs in the order they were decided.
            const TODAY: &str = "SELECT COUNT(*) FROM agent_jobs j WHERE j.id <> $3 AND (
                    (j.account = $1 AND j.admitted_ms >= $2)
                    OR (j.id < $3 AND j.state IN ('pending', 'waiting') AND j.budget_waived = FALSE
                        AND COALESCE(j.account, (SELECT i.account FROM incidents i WHERE i.id = j.incident_id)) = $1
                        AND NOT EXISTS (SELECT 1 FROM repo_claims c WHERE c.job_id = j.id)
                        AND EXISTS (SELECT 1 FROM runs r WHERE r.id = j.run_id AND r.status = 'running')))";
            let used: i64 = with_conn!(tx, |c| sqlx::query_scalar(TODAY)
                .bind(account)
                .bind(now_ms - now_ms.rem_euclid(DAY_MS))
                .bind(job.job_id)
                .fetch_one(c)
                .await?);
            if used >= i64::from(daily) {
                return Ok(Admission::OverBudget(format!(
                    "over budget: account {account} has started or queued {used} agent(s) today \
                     (UTC) and its daily budget is {daily}; `conductor retry {}` starts it anyway",
                    job.job_id
                )));
            }
        }
    }
    // Each capped scope: its running slots, and the jobs before this one still to start —
    // jobs whose run is alive (one that died before its give-up holds no place), and, in the
    // account's and the total line, not those held up by their own full repository: they
    // would idle the free slots until their repository frees.
    const REPO_RUNNING: &str = "SELECT COUNT(*) FROM repo_claims WHERE repo = $1";
    const REPO_AHEAD: &str = "SELECT COUNT(*) FROM agent_jobs j WHERE j.repo = $1 AND j.id < $2
        AND CAST($3 AS BIGINT) > 0 AND j.state IN ('pending', 'waiting')
        AND NOT EXISTS (SELECT 1 FROM repo_claims c WHERE c.job_id = j.id)
        AND EXISTS (SELECT 1 FROM runs r WHERE r.id = j.run_id AND r.status = 'running')";
    const ACCOUNT_RUNNING: &str = "SELECT COUNT(*) FROM repo_claims WHERE account = $1";
    // An incident job's account is known from its decision on, before `claim` stores it.
    const ACCOUNT_AHEAD: &str = "SELECT COUNT(*) FROM agent_jobs j
        WHERE COALESCE(j.account, (SELECT i.account FROM incidents i WHERE i.id = j.incident_id)) = $1
        AND j.id < $2 AND j.state IN ('pending', 'waiting')
        AND NOT EXISTS (SELECT 1 FROM repo_claims c WHERE c.job_id = j.id)
        AND EXISTS (SELECT 1 FROM runs r WHERE r.id = j.run_id AND r.status = 'running')
        AND (j.repo IS NULL OR (SELECT COUNT(*) FROM repo_claims c WHERE c.repo = j.repo) < $3)";
    const TOTAL_RUNNING: &str = "SELECT COUNT(*) FROM repo_claims WHERE CAST($1 AS TEXT) = ''";
    const TOTAL_AHEAD: &str = "SELECT COUNT(*) FROM agent_jobs j WHERE CAST($1 AS TEXT) = ''
        AND j.id < $2 AND j.state IN ('pending', 'waiting')
        AND NOT EXISTS (SELECT 1 FROM repo_claims c WHERE c.job_id = j.id)
        AND EXISTS (SELECT 1 FROM runs r WHERE r.id = j.run_id AND r.status = 'running')
        AND (j.repo IS NULL OR (SELECT COUNT(*) FROM repo_claims c WHERE c.repo = j.repo) < $3)";
    let mut scopes: Vec<(String, &'static str, &'static str, String, u32)> = vec![(
        format!("repository {}", job.repo),
        REPO_RUNNING,
        REPO_AHEAD,
        job.repo.to_owned(),
        caps.per_repo,
    )];
    if let Some(account) = job.account {
        if let Some(cap) = caps.concurrent_for(account) {
            scopes.push((
                format!("account {account}"),
                ACCOUNT_RUNNING,
                ACCOUNT_AHEAD,
                account.to_owned(),
                cap,
            ));
        }
    }
    if let Some(cap) = caps.total {
        scopes.push((
            "all repositories".into(),
            TOTAL_RUNNING,
            TOTAL_AHEAD,
            String::new(),
            cap,
        ));
    }
    for (scope, running_sql, ahead_sql, key, cap) in &scopes {
        let running: i64 = with_conn!(tx, |c| sqlx::query_scalar(*running_sql)
            .bind(key)
            .fetch_one(c)
            .await?);
        let ahead: i64 = with_conn!(tx, |c| sqlx::query_scalar(*ahead_sql)
            .bind(key)
            .bind(job.job_id)
            .bind(i64::from(caps.per_repo))
            .fetch_one(c)
            .await?);
        if running + ahead >= i64::from(*cap) {
            let line = if ahead > 0 {
                format!(", {ahead} earlier job(s) waiting first")
            } else {
                String::new()
            };
            return Ok(Admission::Wait(format!(
                "{scope}: {running} agent(s) running, cap {cap}{line}"
            )));
        }
    }
    // Stamped under the lock (admissions are recorded in the order they were made) and after
    // the reads that found a free slot: on Postgres (read committed) the slot may have been
    // freed by a `finish` that committed after the lock was taken, and a stamp read before
    // that would put this job's start before the other's end in the history.
    let now_ms = now_ms.max(crate::db::now_ms());
    const TAKE: &str =
        "INSERT INTO repo_claims (repo, job_id, claimed_ms, account) VALUES ($1, $2, $3, $4)";
    // Back to `pending` (not yet at a worker): `waiting` is for jobs without a slot.
    const ADMITTED: &str = "UPDATE agent_jobs SET state = 'pending', admitted_ms = $2,
            wait_reason = NULL, updated_ms = $2
        WHERE id = $1";
    with_conn!(tx, |c| sqlx::query(TAKE)
        .bind(job.repo)
        .bind(job.job_id)
        .bind(now_ms)
        .bind(job.account)
        .execute(c)
        .await?
        .rows_affected());
    with_conn!(tx, |c| sqlx::query(ADMITTED)
        .bind(job.job_id)
        .bind(now_ms)
        .execute(c)
        .await?
        .rows_affected());
    Ok(Admission::Admitted)
}

/// Marks the job waiting, with why; its place in line is its id.
pub async fn wait(tx: &mut Tx, job: i64, reason: &str, now_ms: i64) -> Result<(), Error> {
    const SQL: &str = "UPDATE agent_jobs SET state = 'waiting', wait_reason = $2,
            queued_ms = COALESCE(queued_ms, $3), updated_ms = $3
        WHERE id = $1";
    with_conn!(tx, |c| sqlx::query(SQL)
        .bind(job)
        .bind(reason)
        .bind(now_ms)
        .execute(c)
        .await?
        .rows_affected());
    Ok(())
}

/// The workflow runs of the jobs next in line for `job`'s slot — the earliest waiting jobs of
/// its repository, of its account, and overall — so releasing it can wake their `claim` at
/// once instead of at their next poll. Empty when `job` holds no slot.
pub async fn next_in_line(tx: &mut Tx, job: i64) -> Result<Vec<i64>, Error> {
    const SLOT: &str = "SELECT repo, account FROM repo_claims WHERE job_id = $1";
    const WAITING: &str = "SELECT run_id FROM agent_jobs j
        WHERE j.state = 'waiting' AND j.run_id IS NOT NULL AND (
            ($2 = 0 AND j.repo = $1)
            OR ($2 = 1 AND COALESCE(j.account, (SELECT i.account FROM incidents i WHERE i.id = j.incident_id)) = $1)
            OR $2 = 2)
        ORDER BY j.id LIMIT 2";
    let slot: Option<(String, Option<String>)> = with_conn!(tx, |c| sqlx::query_as(SLOT)
        .bind(job)
        .fetch_optional(c)
        .await?);
    let Some((repo, account)) = slot else {
        return Ok(Vec::new());
    };
    let mut runs = Vec::new();
    for (scope, key) in [(0, Some(repo)), (1, account), (2, Some(String::new()))] {
        let Some(key) = key else { continue };
        let found: Vec<i64> = with_conn!(tx, |c| sqlx::query_scalar(WAITING)
            .bind(&key)
            .bind(scope)
            .fetch_all(c)
            .await?);
        for run in found {
            if !runs.contains(&run) {
                runs.push(run);
            }
        }
    }
    Ok(runs)
}
