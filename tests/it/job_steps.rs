//! The job workflow's steps in process: each step's own code, run by name from the registry on
//! a real SQLite database, with a test spawner and a test forge that record what they were
//! asked. The end-to-end tests (`jobs.rs`, `field.rs`) run the same steps through a
//! `conductor run` process with real workers; these show each step's contract alone: what it
//! reads, what it writes, where it sends the run, and what it asks of the outside.
//!
//! Where a step waits on a worker, the test plays the worker's part through the same named
//! queries the protocol server runs (`jobs::advance`, `jobs::store_report`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;

use crate::common;
use conductor::{
    config::{Config, Route},
    context::Env,
    db::{now_ms, Db},
    engine::{self, Begin},
    error::Error,
    jobs::{
        self,
        forge::{Forge, IssueSpec, Opened, PullRequestSpec, PullRequestState},
        spawner::{Spawner, WorkerSpec},
        AttemptState, JobState, Report,
    },
    scenario::gen,
    scheduling::{decide, flags},
    steps, workflows,
};

/// Starts nothing; remembers every spawn and stop.
#[derive(Default)]
struct TestSpawner {
    spawned: Mutex<Vec<WorkerSpec>>,
    stopped: Mutex<Vec<String>>,
}

impl Spawner for TestSpawner {
    fn name(&self) -> &'static str {
        "test"
    }
    fn spawn<'a>(&'a self, spec: &'a WorkerSpec) -> BoxFuture<'a, Result<String, Error>> {
        self.spawned.lock().unwrap().push(spec.clone());
        let handle = format!("test:{}", spec.worker_id);
        Box::pin(async move { Ok(handle) })
    }
    fn stop<'a>(
        &'a self,
        worker_id: &'a str,
        _handle: &'a str,
    ) -> BoxFuture<'a, Result<(), Error>> {
        self.stopped.lock().unwrap().push(worker_id.to_owned());
        Box::pin(async { Ok(()) })
    }
}

/// Remembers what it opened and finds it again, as GitHub does for a head branch or an
/// issue's marker.
#[derive(Default)]
struct TestForge {
    pulls: Mutex<Vec<PullRequestSpec>>,
    issues: Mutex<Vec<IssueSpec>>,
}

impl Forge for TestForge {
    fn name(&self) -> &'static str {
        "test"
    }
    fn open_pull_request<'a>(
        &'a self,
        pr: &'a PullRequestSpec,
    ) -> BoxFuture<'a, Result<Opened, Error>> {
        let mut pulls = self.pulls.lock().unwrap();
        let found = pulls.iter().position(|p| p.head == pr.head);
        let (number, existed) = match found {
            Some(i) => (i as i64 + 1, true),
            None => {
                pulls.push(pr.clone());
                (pulls.len() as i64, false)
            }
        };
        let opened = Opened {
            number,
            url: format!("https://forge.test/{}/pull/{number}", pr.repo),
            existed,
        };
        Box::pin(async move { Ok(opened) })
    }
    fn open_issue<'a>(&'a self, issue: &'a IssueSpec) -> BoxFuture<'a, Result<Opened, Error>> {
        let mut issues = self.issues.lock().unwrap();
        issues.push(issue.clone());
        let number = issues.len() as i64;
        let opened = Opened {
            number,
            url: format!("https://forge.test/{}/issues/{number}", issue.repo),
            existed: false,
        };
        Box::pin(async move { Ok(opened) })
    }
    fn pull_request_for<'a>(
        &'a self,
        repo: &'a str,
        head: &'a str,
    ) -> BoxFuture<'a, Result<Option<PullRequestState>, Error>> {
        let pulls = self.pulls.lock().unwrap();
        let found = pulls
            .iter()
            .position(|p| p.head == head && p.repo == repo)
            .map(|i| PullRequestState {
                url: format!("https://forge.test/{repo}/pull/{}", i + 1),
                open: true,
            });
        Box::pin(async move { Ok(found) })
    }
}

struct Harness {
    env: Env,
    spawner: Arc<TestSpawner>,
    forge: Arc<TestForge>,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn new(tweak: impl FnOnce(&mut Config)) -> Harness {
        let (db, _url, dir) = common::sqlite().await;
        let mut config = Config {
            routes: vec![Route {
                default: true,
                repo: REPO.into(),
                forge_repo: Some("acme/app".into()),
                ..Default::default()
            }],
            ..Config::default()
        };
        config.jobs.retry_backoff = Duration::from_secs(1);
        tweak(&mut config);
        let spawner = Arc::new(TestSpawner::default());
        let forge = Arc::new(TestForge::default());
        let env = Env {
            db,
            flags: Arc::new(flags::Settings::from_config(config.flag_config()).unwrap()),
            config: Arc::new(config),
            spawner: spawner.clone(),
            forge: forge.clone(),
            tracker: Arc::new(conductor::jobs::tracker::local::LocalTracker),
        };
        Harness {
            env,
            spawner,
            forge,
            _dir: dir,
        }
    }

    fn db(&self) -> &Db {
        &self.env.db
    }

    /// A ticket decided the way the `decide` step decides it, and its job workflow started:
    /// the job and its run.
    async fn ticket_job(&self, key: &str) -> (i64, i64) {
        let sched = flags::Scheduling::only(conductor::scheduling::policy::Policy::default());
        let mut tx = self.db().begin().await.unwrap();
        let body = gen::ticket(key, "the disk is full", None);
        let decision = decide::deliver(
            &mut conductor::scheduling::store::sql::Tables::real(&mut tx),
            &sched,
            &format!("t-{key}"),
            "test",
            &body,
            0,
        )
        .await
        .unwrap()
        .expect("a decision");
        let job = decision.job.expect("a new ticket spawns a job");
        let run = workflows::job::start(&mut tx, job, now_ms())
            .await
            .unwrap()
            .expect("a new run");
        tx.commit().await.unwrap();
        (job, run)
    }

    /// Runs step `name` of `run` once, as a queue consumer would: begin (the attempt counted),
    /// then the step's code from the registry.
    async fn run_step(&self, run: i64, name: &str) {
        let seq = self.seq(run, name).await;
        let begun = engine::begin_step(self.db(), workflows::ALL, run, name, seq, now_ms())
            .await
            .unwrap();
        let Begin::Run(step_run) = begun else {
            panic!("step {name} of run {run} is not queued: {begun:?}");
        };
        steps::by_name(name)
            .expect("a registered step")
            .run(&self.env, &step_run)
            .await
            .unwrap_or_else(|e| panic!("step {name}: {e:?}"));
    }

    async fn seq(&self, run: i64, name: &str) -> i64 {
        self.row(run, name).await.1
    }

    /// A step's status and queueing generation.
    async fn row(&self, run: i64, name: &str) -> (String, i64) {
        self.find_row(run, name)
            .await
            .unwrap_or_else(|| panic!("step {name} of run {run} was never queued"))
    }

    async fn find_row(&self, run: i64, name: &str) -> Option<(String, i64)> {
        conductor::with_pool!(self.db(), |p| sqlx::query_as(
            "SELECT status, seq FROM steps WHERE run_id = $1 AND step = $2"
        )
        .bind(run)
        .bind(name)
        .fetch_optional(p)
        .await
        .unwrap())
    }

    async fn status(&self, run: i64, name: &str) -> String {
        self.row(run, name).await.0
    }

    async fn job(&self, id: i64) -> jobs::Job {
        let mut tx = self.db().begin().await.unwrap();
        jobs::load_job(&mut tx, id).await.unwrap()
    }

    async fn claim_holder(&self, repo: &str) -> Option<i64> {
        conductor::with_pool!(self.db(), |p| sqlx::query_scalar(
            "SELECT job_id FROM repo_claims WHERE repo = $1"
        )
        .bind(repo)
        .fetch_optional(p)
        .await
        .unwrap())
    }

    /// Plays the worker: its handshake, the files fetched, and its report.
    async fn worker_reports(&self, worker_id: &str, report: &Report) {
        let now = now_ms();
        let mut tx = self.db().begin().await.unwrap();
        let steps = [
            (
                &[AttemptState::Spawning, AttemptState::Spawned][..],
                AttemptState::Handshaken,
            ),
            (&[AttemptState::Handshaken][..], AttemptState::Delivered),
        ];
        for (from, to) in steps {
            assert!(
                jobs::advance(&mut tx, worker_id, from, to, Some(now + 60_000), now)
                    .await
                    .unwrap(),
                "{worker_id} moves to {to}"
            );
        }
        assert!(jobs::store_report(&mut tx, worker_id, report, now)
            .await
            .unwrap());
        tx.commit().await.unwrap();
    }
}

const REPO: &str = "https://git.test/acme/app.git";

fn success(branch: &str) -> Report {
    Report {
        success: true,
        title: "Free the disk".into(),
        report: "Removed the old logs.".into(),
        branch: branch.into(),
        head_sha: "0123456789abcdef0123456789abcdef01234567".into(),
        failure: String::new(),
    }
}

#[tokio::test]
async fn a_ticket_job_goes_from_claim_to_a_pull_request_step_by_step() {
    let h = Harness::new(|_| {}).await;
    let (job, run) = h.ticket_job("OPS-1").await;

    h.run_step(run, "settle").await;
    assert_eq!(
        h.status(run, "settle").await,
        "done",
        "a ticket does not settle"
    );
    h.run_step(run, "claim").await;
    assert_eq!(
        h.claim_holder(REPO).await,
        Some(job),
        "claim holds the repository"
    );
    assert_eq!(h.status(run, "spawn").await, "queued");

    h.run_step(run, "spawn").await;
    let spec = {
        let spawned = h.spawner.spawned.lock().unwrap();
        assert_eq!(spawned.len(), 1, "one worker started");
        spawned[0].clone()
    };
    assert_eq!((spec.job_id, spec.attempt), (job, 1));
    assert_eq!(spec.token.len(), 64, "a fresh 256-bit token, hex");
    let mut tx = h.db().begin().await.unwrap();
    let attempt = jobs::attempt_by_worker(&mut tx, &spec.worker_id)
        .await
        .unwrap()
        .expect("the attempt is recorded");
    drop(tx);
    assert_eq!(attempt.state, AttemptState::Spawned);
    assert_eq!(
        attempt.handle.as_deref(),
        Some(&*format!("test:{}", spec.worker_id))
    );
    assert_eq!(
        attempt.token,
        conductor::secrets::hash_token(&spec.token),
        "only the token's hash is stored"
    );

    h.worker_reports(&spec.worker_id, &success("conductor/job-1"))
        .await;
    h.run_step(run, "deliver").await;
    h.run_step(run, "await").await;
    h.run_step(run, "open_pr").await;
    {
        let pulls = h.forge.pulls.lock().unwrap();
        assert_eq!(pulls.len(), 1);
        assert_eq!(
            (
                pulls[0].repo.as_str(),
                pulls[0].head.as_str(),
                pulls[0].title.as_str()
            ),
            ("acme/app", "conductor/job-1", "Free the disk")
        );
        // The agent's report, then the footer naming what it was opened for.
        assert_eq!(
            pulls[0].body,
            format!(
                "Removed the old logs.\n\n---\nOpened by Conductor for ticket OPS-1, job {job}."
            )
        );
    }
    h.run_step(run, "finish").await;
    let job = h.job(job).await;
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(
        h.claim_holder(REPO).await,
        None,
        "finish releases the claim"
    );
    assert!(
        h.spawner.stopped.lock().unwrap().is_empty(),
        "nothing was stopped"
    );
}

#[tokio::test]
async fn a_second_job_on_a_claimed_repository_waits_for_the_claim() {
    let h = Harness::new(|_| {}).await;
    let (first, first_run) = h.ticket_job("OPS-1").await;
    let (_second, second_run) = h.ticket_job("OPS-2").await;
    for run in [first_run, second_run] {
        h.run_step(run, "settle").await;
        h.run_step(run, "claim").await;
    }
    assert_eq!(h.claim_holder(REPO).await, Some(first));
    assert_eq!(
        h.status(second_run, "claim").await,
        "queued",
        "the second job's claim waits to look again"
    );
    assert_eq!(
        h.find_row(second_run, "spawn").await,
        None,
        "nothing is spawned for it"
    );
}

#[tokio::test]
async fn a_worker_that_never_handshakes_is_stopped_and_the_run_goes_back_to_spawn() {
    let h = Harness::new(|c| c.jobs.handshake_timeout = Duration::ZERO).await;
    let (job, run) = h.ticket_job("OPS-3").await;
    for step in ["settle", "claim", "spawn"] {
        h.run_step(run, step).await;
    }
    let first = h.spawner.spawned.lock().unwrap()[0].worker_id.clone();
    let spawn_seq = h.seq(run, "spawn").await;

    h.run_step(run, "deliver").await;
    assert_eq!(*h.spawner.stopped.lock().unwrap(), vec![first.clone()]);
    let mut tx = h.db().begin().await.unwrap();
    let failed = jobs::attempt_by_worker(&mut tx, &first)
        .await
        .unwrap()
        .unwrap();
    drop(tx);
    assert_eq!(failed.state, AttemptState::Failed);
    let (status, seq) = h.row(run, "spawn").await;
    assert_eq!(
        (status.as_str(), seq > spawn_seq),
        ("queued", true),
        "spawn is queued again, under a new generation"
    );

    h.run_step(run, "spawn").await;
    let spawned = h.spawner.spawned.lock().unwrap().clone();
    assert_eq!(spawned.len(), 2);
    assert_eq!((spawned[1].job_id, spawned[1].attempt), (job, 2));
    assert_ne!(spawned[1].worker_id, first, "a new worker id");
    assert_ne!(spawned[1].token, spawned[0].token, "and a new token");
}

#[tokio::test]
async fn a_failed_report_opens_one_issue_and_fails_the_job() {
    let h = Harness::new(|_| {}).await;
    let (job, run) = h.ticket_job("OPS-4").await;
    for step in ["settle", "claim", "spawn"] {
        h.run_step(run, step).await;
    }
    let worker = h.spawner.spawned.lock().unwrap()[0].worker_id.clone();
    let report = Report {
        success: false,
        failure: "the tests do not build".into(),
        ..success("")
    };
    h.worker_reports(&worker, &report).await;
    for step in ["deliver", "await", "open_pr", "finish"] {
        h.run_step(run, step).await;
    }
    assert!(h.forge.pulls.lock().unwrap().is_empty(), "no pull request");
    let issues = h.forge.issues.lock().unwrap().clone();
    assert_eq!(issues.len(), 1);
    assert_eq!(issues[0].key, format!("job-{job}-attempt-1"));
    assert!(issues[0].body.contains("the tests do not build"));
    assert_eq!(h.job(job).await.state, JobState::Failed);
    assert_eq!(h.claim_holder(REPO).await, None);
}
