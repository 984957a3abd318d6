//! "Behind or stuck?": one read of the database that `conductor status`, `/metrics` and the
//! console's front page share. It counts the backlog (messages stored but not yet decided) and
//! the age of its oldest, jobs by state, failures of the last hour, steps overdue, the
//! replicas alive, and the two intake switches; [`Verdict`] says what they add up to.

use serde::Serialize;

use super::replicas::{self, Replica};
use crate::{
    db::Db,
    error::Error,
    intake::gate::{self, Switches},
    with_pool,
};

/// A message older than this still undecided means intake is behind.
pub const BEHIND_AFTER_MS: i64 = 60_000;
/// A step still queued this long past its due time has nobody taking it: stuck.
pub const OVERDUE_AFTER_MS: i64 = 5 * 60_000;
const HOUR_MS: i64 = 3_600_000;

/// What the numbers add up to, worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Work is waiting and nothing will take it: no replica alive, or steps long overdue.
    Stuck,
    /// Intake is held on purpose (pause or a closed gate) while messages wait.
    Held,
    /// Messages wait longer than [`BEHIND_AFTER_MS`] for their decision.
    Behind,
    /// Work in flight, none of it late.
    KeepingUp,
    /// Nothing waiting and nothing in flight.
    Idle,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Stuck => "stuck",
            Verdict::Held => "held",
            Verdict::Behind => "behind",
            Verdict::KeepingUp => "keeping up",
            Verdict::Idle => "idle",
        }
    }
}

/// Jobs in one state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct StateCount {
    pub state: String,
    pub jobs: i64,
}

/// The whole answer.
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    pub verdict: Verdict,
    /// Why, in one line.
    pub reason: String,
    /// Messages stored and not yet decided.
    pub backlog: i64,
    /// Age of the oldest of them, in milliseconds.
    pub oldest_age_ms: Option<i64>,
    pub jobs_by_state: Vec<StateCount>,
    /// Job workflow runs in flight (not finished).
    pub jobs_in_flight: i64,
    /// Workflow runs that failed for good, and worker attempts that failed, in the last hour.
    pub runs_failed_last_hour: i64,
    pub attempts_failed_last_hour: i64,
    /// Steps still queued [`OVERDUE_AFTER_MS`] past their due time.
    pub steps_overdue: i64,
    pub replicas: Vec<Replica>,
    pub switches: Switches,
    pub at_ms: i64,
}

/// Reads it all, at `now_ms`.
pub async fn read(db: &Db, now_ms: i64) -> Result<Health, Error> {
    const BACKLOG: &str = "SELECT CAST(COUNT(*) AS BIGINT), MIN(created_ms) FROM runs
        WHERE workflow = 'message' AND status = 'running'";
    const JOBS: &str = "SELECT state, CAST(COUNT(*) AS BIGINT) AS jobs FROM agent_jobs
        GROUP BY state ORDER BY state";
    const JOBS_IN_FLIGHT: &str = "SELECT CAST(COUNT(*) AS BIGINT) FROM runs
        WHERE workflow = 'job' AND status = 'running'";
    const RUNS_FAILED: &str = "SELECT CAST(COUNT(*) AS BIGINT) FROM runs
        WHERE status = 'failed' AND finished_ms > $1";
    const ATTEMPTS_FAILED: &str = "SELECT CAST(COUNT(*) AS BIGINT) FROM job_attempts
        WHERE state = 'failed' AND COALESCE(reported_ms, created_ms) > $1";
    const OVERDUE: &str = "SELECT CAST(COUNT(*) AS BIGINT) FROM steps
        WHERE status = 'queued' AND COALESCE(due_ms, queued_ms) < $1";
    let (backlog, oldest): (i64, Option<i64>) =
        with_pool!(db, |p| sqlx::query_as(BACKLOG).fetch_one(p).await?);
    let jobs_by_state: Vec<StateCount> =
        with_pool!(db, |p| sqlx::query_as(JOBS).fetch_all(p).await?);
    let jobs_in_flight: i64 = with_pool!(db, |p| sqlx::query_scalar(JOBS_IN_FLIGHT)
        .fetch_one(p)
        .await?);
    let hour_ago = now_ms - HOUR_MS;
    let runs_failed_last_hour: i64 = with_pool!(db, |p| sqlx::query_scalar(RUNS_FAILED)
        .bind(hour_ago)
        .fetch_one(p)
        .await?);
    let attempts_failed_last_hour: i64 = with_pool!(db, |p| sqlx::query_scalar(ATTEMPTS_FAILED)
        .bind(hour_ago)
        .fetch_one(p)
        .await?);
    let steps_overdue: i64 = with_pool!(db, |p| sqlx::query_scalar(OVERDUE)
        .bind(now_ms - OVERDUE_AFTER_MS)
        .fetch_one(p)
        .await?);
    let replicas = replicas::alive(db, now_ms).await?;
    let switches = gate::switches(db).await?;
    let oldest_age_ms = oldest.map(|t| (now_ms - t).max(0));
    let (verdict, reason) = judge(&Facts {
        backlog,
        oldest_age_ms,
        jobs_in_flight,
        steps_overdue,
        replicas_alive: replicas.len(),
        switches: &switches,
    });
    Ok(Health {
        verdict,
        reason,
        backlog,
        oldest_age_ms,
        jobs_by_state,
        jobs_in_flight,
        runs_failed_last_hour,
        attempts_failed_last_hour,
        steps_overdue,
        replicas,
        switches,
        at_ms: now_ms,
    })
}

/// What [`judge`] weighs.
struct Facts<'a> {
    backlog: i64,
    oldest_age_ms: Option<i64>,
    jobs_in_flight: i64,
    steps_overdue: i64,
    replicas_alive: usize,
    switches: &'a Switches,
}

fn judge(f: &Facts<'_>) -> (Verdict, String) {
    let waiting = f.backlog > 0 || f.jobs_in_flight > 0;
    let age =
        |ms: i64| humantime::format_duration(std::time::Duration::from_secs((ms / 1000) as u64));
    if waiting && f.replicas_alive == 0 {
        return (
            Verdict::Stuck,
            format!(
                "{} message(s) and {} job(s) wait, and no replica has been seen for a minute: start `conductor run`",
                f.backlog, f.jobs_in_flight
            ),
        );
    }
    // Held before overdue: while a switch is closed, intake steps wait queued on purpose.
    if (f.backlog > 0 || f.steps_overdue > 0) && f.switches.intake_closed() {
        let (what, by) = if f.switches.pause.closed {
            ("paused", &f.switches.pause.by)
        } else {
            ("gate closed", &f.switches.gate.by)
        };
        return (
            Verdict::Held,
            format!("{} message(s) wait: intake {what} by {by}", f.backlog),
        );
    }
    if f.steps_overdue > 0 {
        return (
            Verdict::Stuck,
            format!(
                "{} step(s) queued more than {} past their due time: no worker takes them (see `conductor quarantine` and the replicas' logs)",
                f.steps_overdue,
                age(OVERDUE_AFTER_MS)
            ),
        );
    }
    match f.oldest_age_ms {
        Some(ms) if ms > BEHIND_AFTER_MS => (
            Verdict::Behind,
            format!(
                "{} message(s) undecided, the oldest for {}",
                f.backlog,
                age(ms)
            ),
        ),
        _ if waiting => (
            Verdict::KeepingUp,
            format!(
                "{} message(s) waiting, {} job(s) in flight, none late",
                f.backlog, f.jobs_in_flight
            ),
        ),
        _ => (Verdict::Idle, "nothing waiting, nothing in flight".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intake::gate::GateState;

    fn open() -> GateState {
        GateState {
            closed: false,
            by: String::new(),
            since_ms: 0,
        }
    }

    fn facts(switches: &Switches) -> Facts<'_> {
        Facts {
            backlog: 0,
            oldest_age_ms: None,
            jobs_in_flight: 0,
            steps_overdue: 0,
            replicas_alive: 1,
            switches,
        }
    }

    #[test]
    fn verdicts_worst_first() {
        let open_switches = Switches {
            gate: open(),
            pause: open(),
        };
        assert_eq!(judge(&facts(&open_switches)).0, Verdict::Idle);
        let f = Facts {
            backlog: 3,
            oldest_age_ms: Some(2_000),
            ..facts(&open_switches)
        };
        assert_eq!(judge(&f).0, Verdict::KeepingUp);
        let f = Facts {
            oldest_age_ms: Some(BEHIND_AFTER_MS + 1),
            ..f
        };
        assert_eq!(judge(&f).0, Verdict::Behind);
        let paused = Switches {
            gate: open(),
            pause: GateState {
                closed: true,
                by: "cli:ops".into(),
                since_ms: 1,
            },
        };
        let held = Facts {
            switches: &paused,
            backlog: 3,
            oldest_age_ms: Some(BEHIND_AFTER_MS + 1),
            ..facts(&paused)
        };
        let (verdict, reason) = judge(&held);
        assert_eq!(verdict, Verdict::Held);
        assert!(reason.contains("paused by cli:ops"), "{reason}");
        // Intake steps queued long past their time under a pause are held, not stuck.
        let overdue_while_paused = Facts {
            steps_overdue: 4,
            ..held
        };
        assert_eq!(judge(&overdue_while_paused).0, Verdict::Held);
        let overdue = Facts {
            steps_overdue: 4,
            ..facts(&open_switches)
        };
        assert_eq!(judge(&overdue).0, Verdict::Stuck);
        let nobody = Facts {
            replicas_alive: 0,
            ..held
        };
        assert_eq!(judge(&nobody).0, Verdict::Stuck);
    }
}
