//! The job workflow end to end, with real parts only: `conductor run` processes, real
//! `conductor-worker` processes over real gRPC, a bare git repository as the remote, the
//! scripted agent, and a local HTTP server speaking GitHub's pull request and issue endpoints.

use crate::common;

use std::time::Duration;

use wiremock::{
    matchers::{method, path},
    Mock, ResponseTemplate,
};

use common::jobs::{Bench, FORGE_TOKEN, GIT_TOKEN};
use conductor_proto::{
    conductor_client::ConductorClient, Credentials, FetchFilesRequest, HandshakeRequest,
    HeartbeatRequest, ReportRequest,
};

const JOB_DONE: &str =
    "SELECT COUNT(*) FROM agent_jobs WHERE state IN ('succeeded', 'failed', 'quarantined')";

/// A ticket becomes a pushed branch and a pull request whose head is that branch; the commit
/// recorded, reported and pushed is the same; nothing anywhere shows a secret.
async fn ticket_becomes_a_pull_request(postgres: bool) {
    let mut bench = Bench::new(postgres, "ok", |_, _| {}).await;
    bench.submit(&["ticket-bare.json"]);
    bench.start();
    bench.wait_for(JOB_DONE, 1).await;
    bench.stop();

    let state = bench
        .text("SELECT state FROM agent_jobs WHERE id = 1")
        .await;
    assert_eq!(state, "succeeded", "{}", bench.logs());
    let branch = bench
        .text("SELECT branch FROM agent_jobs WHERE id = 1")
        .await;
    let head = bench
        .text("SELECT head_sha FROM agent_jobs WHERE id = 1")
        .await;
    assert!(
        branch.starts_with("conductor/j1-a1/fix-ticket-pay-42"),
        "{branch}"
    );
    let pushed = conductor::jobs::local_git::branches(&bench.remote).unwrap();
    assert!(
        pushed.contains(&(branch.clone(), head.clone())),
        "{pushed:?} should hold {branch} at {head}"
    );
    let changed =
        conductor::jobs::local_git::changed_files(&bench.remote, "main", &branch).unwrap();
    assert!(changed.contains(&"CHANGELOG.md".to_owned()), "{changed:?}");
    assert!(
        !changed.iter().any(|f| f.starts_with("agent-meta")),
        "{changed:?}"
    );

    let pulls = bench.posts_to("/repos/acme/app/pulls").await;
    assert_eq!(pulls.len(), 1, "exactly one pull request");
    assert_eq!(pulls[0]["head"], branch.as_str());
    assert_eq!(pulls[0]["base"], "main");
    assert!(pulls[0]["title"].as_str().unwrap().contains("PAY-42"));
    assert!(bench.posts_to("/repos/acme/app/issues").await.is_empty());
    let requests = bench.forge_requests().await;
    assert_eq!(
        requests[0].0, "GET",
        "the forge is asked for an existing PR first"
    );
    assert_eq!(
        bench
            .text("SELECT pr_url FROM agent_jobs WHERE id = 1")
            .await,
        "https://forge.test/acme/app/pull/7"
    );
    assert_eq!(bench.count("SELECT COUNT(*) FROM repo_claims").await, 0);
    let (status, out, err) =
        common::conductor(&["history", "--database", &bench.url, "job", "1"], &[]);
    assert!(status.success(), "{err}");
    assert!(
        out.contains("attempts") && out.contains("j1-a1") && out.contains(&branch),
        "{out}"
    );
    assert!(out.contains("success") && out.contains("true"), "{out}");
    let (status, out, _) = common::conductor(&["jobs", "--database", &bench.url], &[]);
    assert!(status.success());
    assert!(
        out.contains("succeeded") && out.contains("https://forge.test/acme/app/pull/7"),
        "{out}"
    );

    // No secret in any log line, task file, report or pull request.
    let token = bench
        .text("SELECT token FROM job_attempts WHERE worker_id = 'j1-a1'")
        .await;
    let mut haystack = bench.logs();
    for f in bench.files_under("work", "") {
        if f.components().any(|c| c.as_os_str() == "task") {
            haystack.push_str(&std::fs::read_to_string(&f).unwrap_or_default());
        }
    }
    haystack.push_str(&bench.text("SELECT COALESCE(report, '') || COALESCE(title, '') || COALESCE(failure, '') FROM job_attempts").await);
    haystack.push_str(&format!("{:?}", bench.forge_requests().await));
    assert!(haystack.len() > 1000, "the logs were captured");
    for secret in [token.as_str(), FORGE_TOKEN, GIT_TOKEN] {
        assert!(!haystack.contains(secret), "a secret leaked");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ticket_becomes_a_pull_request_on_sqlite() {
    ticket_becomes_a_pull_request(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ticket_becomes_a_pull_request_on_postgres() {
    ticket_becomes_a_pull_request(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_that_reports_failure_gets_an_issue_not_a_pull_request() {
    let mut bench = Bench::new(false, "fail", |_, _| {}).await;
    bench.submit(&["ticket-bare.json"]);
    bench.start();
    bench.wait_for(JOB_DONE, 1).await;
    bench.stop();
    assert_eq!(bench.text("SELECT state FROM agent_jobs").await, "failed");
    assert!(bench.posts_to("/repos/acme/app/pulls").await.is_empty());
    let issues = bench.posts_to("/repos/acme/app/issues").await;
    assert_eq!(issues.len(), 1);
    let body = issues[0]["body"].as_str().unwrap();
    assert!(
        body.contains("the agent reported that the job failed"),
        "{body}"
    );
    assert!(
        body.contains("<!-- conductor:job-1-attempt-1 -->"),
        "{body}"
    );
    assert_eq!(issues[0]["labels"][0], "conductor");
    // Only main in the remote: a failed job pushes nothing.
    assert_eq!(
        conductor::jobs::local_git::branches(&bench.remote)
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_agent_meta_is_a_failed_job_with_the_reason() {
    let mut bench = Bench::new(false, "lie", |_, _| {}).await;
    bench.submit(&["ticket-bare.json"]);
    bench.start();
    bench.wait_for(JOB_DONE, 1).await;
    bench.stop();
    let issues = bench.posts_to("/repos/acme/app/issues").await;
    assert_eq!(issues.len(), 1);
    let body = issues[0]["body"].as_str().unwrap();
    assert!(
        body.contains("WAS_JOB_SUCCESSFUL must be exactly true or false, found \"yes\""),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_agent_is_timed_out() {
    let mut bench = Bench::new(false, "hang", |c, _| {
        c.worker.agent_timeout = Duration::from_secs(2);
    })
    .await;
    bench.submit(&["ticket-bare.json"]);
    bench.start();
    bench.wait_for(JOB_DONE, 1).await;
    bench.stop();
    assert_eq!(bench.text("SELECT state FROM agent_jobs").await, "failed");
    let failure = bench.text("SELECT failure FROM job_attempts").await;
    assert_eq!(failure, "the agent timed out after 2s");
    assert_eq!(bench.posts_to("/repos/acme/app/issues").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashing_worker_is_retried_then_quarantined_and_can_be_retried() {
    let mut bench = Bench::new(false, "crash-worker", |_, _| {}).await;
    bench.submit(&["ticket-bare.json"]);
    bench.start();
    bench
        .wait_for(
            "SELECT COUNT(*) FROM agent_jobs WHERE state = 'quarantined'",
            1,
        )
        .await;
    assert_eq!(bench.count("SELECT attempts FROM agent_jobs").await, 2);
    assert_eq!(
        bench.count("SELECT COUNT(*) FROM job_attempts WHERE state = 'failed' AND failure LIKE 'lease expired%'").await,
        2
    );
    assert_eq!(bench.count("SELECT COUNT(*) FROM repo_claims").await, 0);
    // Each crashed worker's agent (which outlived it, in a process group of its own) was
    // stopped with it.
    let agents = common::jobs::processes_with_env(
        "WORKER_DIR",
        &bench.dir.path().join("work").display().to_string(),
    );
    assert!(agents.is_empty(), "agents left running: {agents:?}");
    let (status, out, _) = common::conductor(&["quarantine", "--database", &bench.url], &[]);
    assert!(status.success());
    assert!(
        out.contains("quarantined") && out.contains("PAY-42"),
        "{out}"
    );

    // Retried on purpose, it gets max_attempts new attempts, numbered on from the old ones.
    let (status, out, err) = common::conductor(&["retry", "--database", &bench.url, "1"], &[]);
    assert!(status.success(), "{err}");
    assert!(out.contains("new run"), "{out}");
    bench
        .wait_for(
            "SELECT COUNT(*) FROM job_attempts WHERE worker_id = 'j1-a4' AND state = 'failed'",
            1,
        )
        .await;
    bench
        .wait_for(
            "SELECT COUNT(*) FROM agent_jobs WHERE state = 'quarantined'",
            1,
        )
        .await;
    bench.stop();
    assert_eq!(bench.count("SELECT attempts FROM agent_jobs").await, 4);
    assert!(bench.posts_to("/repos/acme/app/pulls").await.is_empty());
    // Retrying a job that is running is refused.
    let (status, _, err) = common::conductor(&["retry", "--database", &bench.url, "99"], &[]);
    assert!(!status.success() && err.contains("no job 99"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_that_never_handshakes_is_stopped_and_retried() {
    let mut bench = Bench::new(false, "ok", |c, dir| {
        // Not `exec sleep`: the shell keeps the `--worker-id` argument the spawner checks
        // before it kills a pid.
        let silent = dir.join("silent-worker.sh");
        std::fs::write(&silent, "#!/bin/sh\nsleep 600\n").unwrap();
        std::fs::set_permissions(&silent, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        c.worker.command = Some(silent);
        c.jobs.handshake_timeout = Duration::from_secs(1);
    })
    .await;
    bench.submit(&["ticket-bare.json"]);
    bench.start();
    bench
        .wait_for(
            "SELECT COUNT(*) FROM agent_jobs WHERE state = 'quarantined'",
            1,
        )
        .await;
    bench.stop();
    assert_eq!(
        bench
            .count("SELECT COUNT(*) FROM job_attempts WHERE failure = 'no handshake within 1s'")
            .await,
        2
    );
    // The silent workers were stopped (killed), not left behind.
    for handle in [
        bench
            .text("SELECT handle FROM job_attempts WHERE attempt = 1")
            .await,
        bench
            .text("SELECT handle FROM job_attempts WHERE attempt = 2")
            .await,
    ] {
        let pid: i32 = handle.trim_start_matches("pid:").parse().unwrap();
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false);
        assert!(!alive, "worker {pid} should have been stopped");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_tokens_unknown_workers_and_escaping_file_names_are_refused() {
    let mut bench = Bench::new(false, "ok", |c, dir| {
        // A worker that never calls: the test speaks for it.
        let silent = dir.join("silent-worker.sh");
        // It keeps the token it was started with where the test can read it (the database
        // holds only the token's hash).
        std::fs::write(
            &silent,
            "#!/bin/sh\necho \"$WORKER_TOKEN\" > token.txt\nexec sleep 600\n",
        )
        .unwrap();
        std::fs::set_permissions(&silent, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        c.worker.command = Some(silent);
        c.jobs.handshake_timeout = Duration::from_secs(60);
    })
    .await;
    bench.submit(&["ticket-bare.json"]);
    bench.start();
    bench
        .wait_for(
            "SELECT COUNT(*) FROM job_attempts WHERE state = 'spawned'",
            1,
        )
        .await;
    let token = bench.silent_worker_token("j1-a1").await;
    let addr = format!("http://{}", bench.config.grpc.listen);
    let mut client = ConductorClient::connect(addr).await.unwrap();
    let hello = |worker: &str, token: &str| HandshakeRequest {
        auth: Some(Credentials {
            worker_id: worker.into(),
            token: token.into(),
        }),
        hostname: "test".into(),
        pid: 1,
    };
    let e = client
        .handshake(hello("j1-a1", "not-the-token"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let e = client.handshake(hello("j1-a1", "")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let e = client.handshake(hello("j9-a9", &token)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    let e = client
        .handshake(HandshakeRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    assert!(!e.message().contains(&token));

    // The conductor refuses to send a file whose name would leave the worker's directory.
    let files = serde_json::json!([{"name": "../../etc/x", "content": "owned"}]).to_string();
    conductor::with_pool!(&bench.db, |p| sqlx::query(
        "UPDATE job_attempts SET files = $1"
    )
    .bind(&files)
    .execute(p)
    .await
    .unwrap()
    .rows_affected());
    let first = client.handshake(hello("j1-a1", &token)).await.unwrap();
    // The same process asking again (its reply was lost) is answered again...
    let again = client.handshake(hello("j1-a1", &token)).await.unwrap();
    assert_eq!(first.get_ref(), again.get_ref());
    // ...but a second process for the same attempt is refused.
    let mut other = hello("j1-a1", &token);
    other.pid = 2;
    let e = client.handshake(other).await.unwrap_err();
    assert_eq!(
        e.code(),
        tonic::Code::AlreadyExists,
        "one worker process per attempt"
    );
    let e = client
        .fetch_files(FetchFilesRequest {
            auth: Some(Credentials {
                worker_id: "j1-a1".into(),
                token: token.clone(),
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("../../etc/x"), "{e:?}");

    // This "worker" never heartbeats: once its lease (2 s) runs out, a heartbeat or a report
    // is refused, and after the await step gave the attempt up, so is every call.
    let creds = || {
        Some(Credentials {
            worker_id: "j1-a1".into(),
            token: token.clone(),
        })
    };
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let e = client
        .heartbeat(HeartbeatRequest {
            auth: creds(),
            phase: "agent".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    let e = client
        .report(ReportRequest {
            auth: creds(),
            success: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("lease expired") || e.message().contains("finished"),
        "{e:?}"
    );
    bench
        .wait_for(
            "SELECT COUNT(*) FROM job_attempts WHERE worker_id = 'j1-a1' AND state = 'failed'",
            1,
        )
        .await;
    let e = client
        .report(ReportRequest {
            auth: creds(),
            success: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("finished"), "{e:?}");
    bench.stop();
    assert!(
        !bench.logs().contains(&token),
        "the token leaked into a log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_tickets_for_one_repository_never_run_at_once() {
    let mut bench = Bench::new(false, "slow", |_, _| {}).await;
    bench.submit(&["ticket-bare.json", "ticket-webhook-created.json"]);
    bench.start();
    bench
        .wait_for(
            "SELECT COUNT(*) FROM agent_jobs WHERE state = 'succeeded'",
            2,
        )
        .await;
    bench.stop();
    let log = std::fs::read_to_string(&bench.agent_log).unwrap();
    let mut spans: Vec<(String, u128, u128)> = Vec::new();
    for line in log.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        let at: u128 = parts[2].parse().unwrap();
        match parts[0] {
            "start" => spans.push((parts[1].to_owned(), at, u128::MAX)),
            _ => spans.iter_mut().find(|s| s.0 == parts[1]).unwrap().2 = at,
        }
    }
    assert_eq!(spans.len(), 2, "{log}");
    spans.sort_by_key(|s| s.1);
    assert!(
        spans[0].2 <= spans[1].1,
        "the second agent started before the first ended: {log}"
    );
    assert!(
        bench
            .count("SELECT COUNT(*) FROM steps WHERE step = 'claim' AND status = 'done'")
            .await
            == 2
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn conductor_killed_while_a_worker_runs_accepts_its_report_after_restart_sqlite() {
    killed_while_a_worker_runs(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn conductor_killed_while_a_worker_runs_accepts_its_report_after_restart_postgres() {
    killed_while_a_worker_runs(true).await;
}

/// Killed right after the spawner started the worker, before the step recorded it: the re-run
/// starts the *same* attempt (same id and token) again; one of the two workers handshakes, the
/// other is refused and exits; one pull request.
#[tokio::test(flavor = "multi_thread")]
async fn killed_after_spawn_before_its_commit_spawns_no_second_attempt() {
    let mut bench = Bench::new(false, "ok", |_, _| {}).await;
    bench.submit(&["ticket-bare.json"]);
    bench.start_with(&[("CONDUCTOR_FAILPOINTS", "spawn.after_start")]);
    assert_eq!(bench.wait_exit(), Some(libc::SIGKILL), "{}", bench.logs());
    assert_eq!(
        bench
            .count("SELECT COUNT(*) FROM job_attempts WHERE state = 'spawning'")
            .await,
        1
    );
    bench.start();
    bench.wait_for(JOB_DONE, 1).await;
    bench.stop();
    assert_eq!(
        bench.text("SELECT state FROM agent_jobs").await,
        "succeeded",
        "{}",
        bench.logs()
    );
    assert_eq!(
        bench.count("SELECT COUNT(*) FROM job_attempts").await,
        1,
        "{}\n{}",
        bench.text("SELECT group_concat(worker_id || ' ' || state || ' ' || COALESCE(failure, ''), '; ') FROM job_attempts").await,
        common::jobs::tail(&bench.logs(), 8000)
    );
    assert_eq!(bench.posts_to("/repos/acme/app/pulls").await.len(), 1);
}

/// Killed after the forge opened the pull request, before the step committed: the re-run
/// finds that pull request by its head branch instead of opening a second.
#[tokio::test(flavor = "multi_thread")]
async fn killed_after_opening_the_pull_request_opens_no_second() {
    let mut bench = Bench::new(false, "ok", |_, _| {}).await;
    bench.submit(&["ticket-bare.json"]);
    bench.start_with(&[("CONDUCTOR_FAILPOINTS", "open_pr.after_forge")]);
    assert_eq!(bench.wait_exit(), Some(libc::SIGKILL), "{}", bench.logs());
    assert_eq!(bench.posts_to("/repos/acme/app/pulls").await.len(), 1);
    bench.start();
    bench.wait_for(JOB_DONE, 1).await;
    bench.stop();
    assert_eq!(
        bench.text("SELECT state FROM agent_jobs").await,
        "succeeded"
    );
    assert_eq!(
        bench.posts_to("/repos/acme/app/pulls").await.len(),
        1,
        "no second pull request"
    );
    let gets = bench
        .forge_requests()
        .await
        .into_iter()
        .filter(|(m, p, _)| m == "GET" && p == "/repos/acme/app/pulls")
        .count();
    assert_eq!(gets, 2, "each execution looked the pull request up first");
}

async fn killed_while_a_worker_runs(postgres: bool) {
    let mut bench = Bench::new(postgres, "slow", |c, _| {
        c.jobs.lease = Duration::from_secs(3);
    })
    .await;
    bench.submit(&["ticket-bare.json"]);
    bench.start();
    // The worker has its files and its agent is running (it takes 2 s).
    bench
        .wait_for(
            "SELECT COUNT(*) FROM job_attempts WHERE state = 'delivered'",
            1,
        )
        .await;
    bench.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    bench.start();
    bench.wait_for(JOB_DONE, 1).await;
    bench.stop();
    assert_eq!(
        bench.text("SELECT state FROM agent_jobs").await,
        "succeeded",
        "{}",
        bench.logs()
    );
    assert_eq!(
        bench.count("SELECT COUNT(*) FROM job_attempts").await,
        1,
        "nothing spawned twice"
    );
    assert_eq!(
        bench.posts_to("/repos/acme/app/pulls").await.len(),
        1,
        "one pull request"
    );
    assert_eq!(
        conductor::jobs::local_git::branches(&bench.remote)
            .unwrap()
            .len(),
        2
    );
}

/// The README's main command: the demo runs the whole product and prints jobs, branches and
/// pull requests.
#[tokio::test(flavor = "multi_thread")]
async fn the_demo_opens_a_pull_request_for_every_spawned_job() {
    // As the README runs it: `conductor demo` in an empty directory, nothing beside the binary.
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().to_owned();
    let (status, out, err) = tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(common::conductor_bin())
            .arg("demo")
            .current_dir(&cwd)
            .env_remove("CONDUCTOR_CONFIG")
            .env_remove("CONDUCTOR_DATABASE_URL")
            .env("CONDUCTOR_GRPC__LISTEN", "127.0.0.1:0")
            .output()
            .unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap();
    assert!(status.success(), "{err}");
    let jobs = out.lines().filter(|l| l.contains(" succeeded ")).count();
    let pulls = out
        .lines()
        .filter(|l| l.trim_start().starts_with("pull "))
        .count();
    assert_eq!(jobs, 5, "{out}");
    assert_eq!(pulls, 5, "{out}");
    assert!(out.contains("notes/j1-a1.md"), "{out}");
    // Each ticket was told when its agent started and when its job ended (local tracker).
    let started = out
        .lines()
        .filter(|l| l.contains(" posted ") && l.contains("Conductor started an agent on job"))
        .count();
    let ended = out
        .lines()
        .filter(|l| l.contains(" posted ") && l.contains("finished: pull request local://"))
        .count();
    assert!(started > 0 && started == ended, "{out}");
    common::jobs::kill_workers_under(dir.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forge_that_refuses_ends_the_job_failed_and_frees_its_repository() {
    let mut bench = Bench::new(false, "ok", |_, _| {}).await;
    // The forge refuses the first pull request for good (as GitHub does with a 422).
    Mock::given(method("POST"))
        .and(path("/repos/acme/app/pulls"))
        .respond_with(
            ResponseTemplate::new(422)
                .set_body_json(serde_json::json!({"message": "Validation Failed"})),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&bench.forge)
        .await;
    bench.submit(&["ticket-bare.json"]);
    bench.start();
    bench.wait_for(JOB_DONE, 1).await;
    let outcome = bench
        .text("SELECT state || ': ' || outcome FROM agent_jobs WHERE id = 1")
        .await;
    assert!(
        outcome.starts_with("failed: gave up at step open_pr") && outcome.contains("422"),
        "{outcome}"
    );
    assert_eq!(bench.count("SELECT COUNT(*) FROM repo_claims").await, 0);
    assert_eq!(
        bench
            .count("SELECT COUNT(*) FROM runs WHERE workflow = 'job' AND status = 'failed'")
            .await,
        1
    );
    // The report is kept (the agent's work is on its branch); retrying on purpose opens the
    // pull request once the forge accepts it.
    assert_eq!(
        bench
            .count("SELECT COUNT(*) FROM job_attempts WHERE state = 'reported'")
            .await,
        1
    );
    let (status, out, err) = common::conductor(&["retry", "--database", &bench.url, "1"], &[]);
    assert!(status.success(), "{err}");
    assert!(out.contains("new run"), "{out}");
    bench
        .wait_for(
            "SELECT COUNT(*) FROM agent_jobs WHERE state = 'succeeded'",
            1,
        )
        .await;
    bench.stop();
    assert_eq!(bench.posts_to("/repos/acme/app/pulls").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forge_outage_is_waited_out_and_the_pull_request_opened_once() {
    let mut bench = Bench::new(true, "ok", |c, _| {
        c.forge.retry_interval = Duration::from_secs(1);
    })
    .await;
    Mock::given(method("POST"))
        .and(path("/repos/acme/app/pulls"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(3)
        .with_priority(1)
        .mount(&bench.forge)
        .await;
    bench.submit(&["ticket-bare.json"]);
    bench.start();
    bench.wait_for(JOB_DONE, 1).await;
    bench.stop();
    let state = bench
        .text("SELECT state FROM agent_jobs WHERE id = 1")
        .await;
    assert_eq!(state, "succeeded", "{}", bench.logs());
    // Three refused by the outage, then the one that opened it; the attempt was not spent.
    assert_eq!(bench.posts_to("/repos/acme/app/pulls").await.len(), 4);
    assert_eq!(bench.count("SELECT attempts FROM agent_jobs").await, 1);
    assert!(bench.logs().contains("forge unavailable; will try again"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_report_is_cut_of_secrets_and_kept_to_its_own_branch() {
    let mut bench = Bench::new(false, "ok", |c, dir| {
        // A worker that never calls: the test speaks for it, as a compromised worker would.
        let silent = dir.join("silent-worker.sh");
        // It keeps the token it was started with where the test can read it (the database
        // holds only the token's hash).
        std::fs::write(
            &silent,
            "#!/bin/sh\necho \"$WORKER_TOKEN\" > token.txt\nexec sleep 600\n",
        )
        .unwrap();
        std::fs::set_permissions(&silent, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        c.worker.command = Some(silent);
        c.jobs.handshake_timeout = Duration::from_secs(60);
        c.jobs.lease = Duration::from_secs(60);
    })
    .await;
    bench.submit(&["ticket-bare.json"]);
    bench.start();
    bench
        .wait_for(
            "SELECT COUNT(*) FROM job_attempts WHERE state = 'spawned'",
            1,
        )
        .await;
    let token = bench.silent_worker_token("j1-a1").await;
    let creds = || {
        Some(Credentials {
            worker_id: "j1-a1".into(),
            token: token.clone(),
        })
    };
    let mut client = ConductorClient::connect(format!("http://{}", bench.config.grpc.listen))
        .await
        .unwrap();
    client
        .handshake(HandshakeRequest {
            auth: creds(),
            hostname: "test".into(),
            pid: 999_999,
        })
        .await
        .unwrap();
    client
        .report(ReportRequest {
            auth: creds(),
            success: true,
            title: format!("Fix {token}"),
            report: format!("found WORKER_TOKEN={token} and {FORGE_TOKEN}"),
            branch: "main".into(),
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            failure_reason: String::new(),
        })
        .await
        .unwrap();
    bench.wait_for(JOB_DONE, 1).await;
    bench.stop();
    let (success, failure) = (
        bench
            .count("SELECT CASE WHEN success THEN 1 ELSE 0 END FROM job_attempts")
            .await,
        bench.text("SELECT failure FROM job_attempts").await,
    );
    assert_eq!(
        success, 0,
        "a branch outside conductor/j1-a1/ is no success"
    );
    assert!(
        failure.contains("\"main\"") && failure.contains("conductor/j1-a1/"),
        "{failure}"
    );
    assert_eq!(
        bench.text("SELECT handle FROM job_attempts").await,
        "pid:999999",
        "the handshake names the process to stop"
    );
    // No pull request from another branch; a failure issue, with no secret in it.
    assert!(bench.posts_to("/repos/acme/app/pulls").await.is_empty());
    let issues = bench.posts_to("/repos/acme/app/issues").await;
    assert_eq!(issues.len(), 1);
    let everything = format!(
        "{issues:?} {} {}",
        bench.text("SELECT title || report FROM job_attempts").await,
        bench.logs()
    );
    assert!(everything.contains("[redacted]"), "{everything}");
    assert!(!everything.contains(&token), "the attempt token leaked");
    assert!(!everything.contains(FORGE_TOKEN), "the forge token leaked");
}

/// An agent's `git commit` in a clone of a busy remote (more packs than git's
/// `gc.autoPackLimit`) must not set off a detached `gc` that repacks and prunes refs while the
/// worker commits and pushes: the worker turns the clone's automatic maintenance off.
#[tokio::test(flavor = "multi_thread")]
async fn an_agents_commit_sets_off_no_gc_in_the_clone() {
    let mut bench = Bench::new(false, "ok", |_, _| {}).await;
    // 60 packs in the remote: each round commits a new object on a branch of its own and
    // repacks what is loose into one more pack.
    let git = |args: &[&str], input: &str| -> String {
        use std::io::Write;
        let mut child = std::process::Command::new("git")
            .arg("-C")
            .arg(&bench.remote)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "git {args:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    for i in 0..60 {
        let blob = git(&["hash-object", "-w", "--stdin"], &format!("pack {i}\n"));
        let tree = git(&["mktree"], &format!("100644 blob {blob}\tf{i}\n"));
        let commit = git(
            &[
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "commit-tree",
                &tree,
                "-m",
                "pack",
            ],
            "",
        );
        git(
            &["update-ref", &format!("refs/heads/pack-{i}"), &commit],
            "",
        );
        git(&["repack", "-d", "-q"], "");
    }
    bench.submit(&["ticket-bare.json"]);
    bench.start();
    bench.wait_for(JOB_DONE, 1).await;
    bench.stop();
    assert_eq!(
        bench
            .text("SELECT state FROM agent_jobs WHERE id = 1")
            .await,
        "succeeded",
        "{}",
        bench.logs()
    );
    let clone = bench.dir.path().join("work/j1-a1/repo");
    // A detached gc, had one started, would still be running in the clone: let it finish.
    for _ in 0..50 {
        if common::jobs::processes_in(&clone).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let packs = std::fs::read_dir(clone.join(".git/objects/pack"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
        .count();
    assert!(packs > 50, "the clone was repacked: {packs} pack(s) left");
}
