//! Where and how many agents run (docs/design.md section 12), end to end with real parts:
//! `conductor run` on SQLite and Postgres, real `conductor-worker` processes over gRPC, bare
//! git repositories as remotes, the scripted agent, a local server speaking GitHub's API.
//!
//! - routes with matchers: an alarm routed by its name to the second of two repositories of
//!   one account, and `conductor routes test` saying so;
//! - a cap of 2 agents per account under a storm of 10 incidents: never more than 2 at once,
//!   none overtaking an earlier incident's place, the waiting ones showing why;
//! - a budget of 3 agents a day: the 4th and 5th end `over_budget`, `conductor retry` starts
//!   one anyway, and the agent time is in the history;
//! - a job's second run continuing the first run's unmerged branch and updating its pull
//!   request instead of opening another;
//! - a route's development environment: the worker started through a command prefix, as
//!   argv (`devcontainer exec`) and as one command string (`vagrant ssh -c`).

use std::path::{Path, PathBuf};

use crate::common;
use common::jobs::Bench;
use conductor::{config::Route, jobs::local_git};

const ACCOUNT: &str = "111111111111";
const FINISHED: &str = "SELECT COUNT(*) FROM agent_jobs WHERE state IN ('succeeded', 'failed', 'quarantined', 'over_budget', 'merged')";

/// A CloudWatch alarm's EventBridge event. `hours` apart puts alarms of one account in
/// separate incidents (the chaining window is one hour).
fn alarm(id: &str, account: &str, name: &str, hours: u32) -> (String, String) {
    let time = format!("2026-03-0{}T{:02}:00:00Z", 1 + hours / 24, hours % 24);
    let body = serde_json::json!({
        "version": "0", "id": id, "detail-type": "CloudWatch Alarm State Change",
        "source": "aws.cloudwatch", "account": account, "time": time, "region": "eu-west-1",
        "resources": [format!("arn:aws:cloudwatch:eu-west-1:{account}:alarm:{name}")],
        "detail": {"alarmName": name, "state": {"value": "ALARM", "reason": "Threshold Crossed"},
            "previousState": {"value": "OK"},
            "configuration": {"metrics": [{"metricStat": {"metric": {"namespace": "AWS/RDS"}}}]}}
    });
    (id.to_owned(), body.to_string())
}

fn route(name: &str, repo: &Path) -> Route {
    Route {
        name: Some(name.into()),
        repo: repo.display().to_string(),
        forge_repo: Some("acme/app".into()),
        ..Default::default()
    }
}

/// The largest number of agents that ran at once, from the scripted agent's start/end lines.
fn most_at_once(agent_log: &Path) -> usize {
    let text = std::fs::read_to_string(agent_log).unwrap_or_default();
    let mut events: Vec<(u128, i32)> = text
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let kind = parts.next()?;
            let _dir = parts.next()?;
            let ns: u128 = parts.next()?.parse().ok()?;
            Some((ns, if kind == "start" { 1 } else { -1 }))
        })
        .collect();
    // At one instant, an end before a start: touching runs did not overlap.
    events.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in events {
        now += d;
        most = most.max(now);
    }
    most as usize
}

async fn alarm_routed_by_name_to_the_second_repository(postgres: bool) {
    let mut payments = PathBuf::new();
    let mut bench = Bench::new(postgres, "ok", |c, dir| {
        payments = dir.join("payments.git");
        local_git::init_bare(&payments, "main", "# payments\n").unwrap();
        let api = PathBuf::from(&c.routes[0].repo);
        c.routes = vec![
            Route {
                account: Some(ACCOUNT.into()),
                alarm: Some("api-*".into()),
                ..route("api", &api)
            },
            Route {
                account: Some(ACCOUNT.into()),
                alarm_regex: Some("^payments-(db|queue)-".into()),
                ..route("payments", &payments)
            },
            Route {
                default: true,
                ..route("rest", &api)
            },
        ];
    })
    .await;
    let message = alarm("e-1", ACCOUNT, "payments-db-connections", 0);

    // What an operator asks first: which route does this message take?
    let file = bench.dir.path().join("alarm.json");
    std::fs::write(&file, &message.1).unwrap();
    let config = bench.config_path.display().to_string();
    let (status, out, err) = common::conductor(
        &[
            "routes",
            "test",
            "--config",
            &config,
            file.to_str().unwrap(),
        ],
        &[],
    );
    assert!(status.success(), "{out}{err}");
    assert!(
        out.contains(
            "no    routes[0] \"api\": alarm \"payments-db-connections\" does not match \"api-*\""
        ),
        "{out}"
    );
    assert!(out.contains("MATCH routes[1] \"payments\""), "{out}");
    assert!(out.contains(&format!("→ {}", payments.display())), "{out}");

    bench.submit_bodies(&[message]);
    bench.start();
    bench.wait_for(FINISHED, 1).await;
    bench.stop();
    assert_eq!(
        bench
            .text("SELECT state FROM agent_jobs WHERE id = 1")
            .await,
        "succeeded",
        "{}",
        bench.logs()
    );
    assert_eq!(
        bench
            .text("SELECT route FROM agent_jobs WHERE id = 1")
            .await,
        "routes[1] \"payments\""
    );
    assert_eq!(
        bench.text("SELECT repo FROM agent_jobs WHERE id = 1").await,
        payments.display().to_string()
    );
    let branch = bench
        .text("SELECT branch FROM agent_jobs WHERE id = 1")
        .await;
    let pushed = local_git::branches(&payments).unwrap();
    assert!(pushed.iter().any(|(b, _)| *b == branch), "{pushed:?}");
    let other = local_git::branches(&bench.remote).unwrap();
    assert!(
        other.iter().all(|(b, _)| b == "main"),
        "nothing went to the first repository: {other:?}"
    );
    // The history names the route.
    let (status, out, err) =
        common::conductor(&["history", "--database", &bench.url, "job", "1"], &[]);
    assert!(status.success(), "{err}");
    assert!(out.contains("routes[1] \"payments\""), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn alarm_routed_by_name_sqlite() {
    alarm_routed_by_name_to_the_second_repository(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn alarm_routed_by_name_postgres() {
    alarm_routed_by_name_to_the_second_repository(true).await;
}

async fn a_storm_waits_for_the_account_cap_in_order(postgres: bool) {
    let mut bench = Bench::new(postgres, "slow", |c, _| {
        c.caps.per_account = Some(2);
        // Several agents may share the repository: the account's cap is what holds them.
        c.caps.per_repo = 10;
        c.jobs.max_attempts = 3;
    })
    .await;
    let storm: Vec<(String, String)> = (0..10)
        .map(|i| alarm(&format!("storm-{i}"), ACCOUNT, &format!("db-{i}"), i * 2))
        .collect();
    bench.submit_bodies(&storm);
    bench.start();
    // While the first two run, the others wait, and say why.
    bench
        .wait_for(
            "SELECT COUNT(*) FROM agent_jobs WHERE state = 'waiting' AND wait_reason LIKE '%account 111111111111: 2 agent(s) running, cap 2%'",
            1,
        )
        .await;
    let (status, out, err) = common::conductor(&["jobs", "--database", &bench.url], &[]);
    assert!(status.success(), "{err}");
    assert!(
        out.lines()
            .any(|l| l.contains("waiting") && l.contains("cap 2")),
        "`conductor jobs` shows why a job waits:\n{out}"
    );
    bench.wait_for(FINISHED, 10).await;
    bench.stop();
    assert_eq!(
        bench
            .count("SELECT COUNT(*) FROM agent_jobs WHERE state = 'succeeded'")
            .await,
        10,
        "{}",
        bench.logs()
    );
    // Never more than 2 agents at once: neither slots (admitted to finished) nor agents.
    let spans: Vec<(i64, i64, i64)> = conductor::with_pool!(&bench.db, |p| sqlx::query_as(
        "SELECT id, admitted_ms, finished_ms FROM agent_jobs ORDER BY id"
    )
    .fetch_all(p)
    .await
    .unwrap());
    for (id, start, _) in &spans {
        let at_once = spans
            .iter()
            .filter(|(_, s, f)| s <= start && start < f)
            .count();
        assert!(
            at_once <= 2,
            "{at_once} slots held when job {id} started: {spans:?}"
        );
    }
    let agents = most_at_once(&bench.agent_log);
    assert!((1..=2).contains(&agents), "{agents} agents ran at once");
    // Served in order: no job took a slot that an earlier job of the account still needed —
    // when each started, the slots held plus the earlier jobs still to start fit the cap.
    for (id, start, _) in &spans {
        let held = spans
            .iter()
            .filter(|(_, s, f)| s <= start && start < f)
            .count();
        let earlier_waiting = spans
            .iter()
            .filter(|(other, s, _)| other < id && s > start)
            .count();
        assert!(
            held + earlier_waiting <= 2,
            "job {id} started while {earlier_waiting} earlier job(s) waited and {held} slot(s) were held: {spans:?}"
        );
    }
    assert!(
        bench
            .count("SELECT COUNT(*) FROM agent_jobs WHERE queued_ms IS NOT NULL")
            .await
            >= 1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn storm_capped_per_account_sqlite() {
    a_storm_waits_for_the_account_cap_in_order(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn storm_capped_per_account_postgres() {
    a_storm_waits_for_the_account_cap_in_order(true).await;
}

async fn a_daily_budget_of_three(postgres: bool) {
    let mut bench = Bench::new(postgres, "ok", |c, _| {
        c.caps.daily_per_account = Some(3);
    })
    .await;
    let alarms: Vec<(String, String)> = (0..5)
        .map(|i| alarm(&format!("b-{i}"), ACCOUNT, &format!("queue-{i}"), i * 2))
        .collect();
    bench.submit_bodies(&alarms);
    bench.start();
    bench.wait_for(FINISHED, 5).await;
    let states: Vec<(i64, String, Option<String>)> =
        conductor::with_pool!(&bench.db, |p| sqlx::query_as(
            "SELECT id, state, outcome FROM agent_jobs ORDER BY id"
        )
        .fetch_all(p)
        .await
        .unwrap());
    let names: Vec<&str> = states.iter().map(|(_, s, _)| s.as_str()).collect();
    // The budget goes in order: the first three decided start, the other two do not.
    assert_eq!(
        names,
        [
            "succeeded",
            "succeeded",
            "succeeded",
            "over_budget",
            "over_budget"
        ],
        "{}",
        bench.logs()
    );
    let why = states[3].2.clone().unwrap_or_default();
    assert!(
        why.contains("account 111111111111")
            && why.contains("daily budget is 3")
            && why.contains("conductor retry 4"),
        "{why}"
    );
    // The operator starts one anyway.
    let (status, _, err) = common::conductor(&["retry", "--database", &bench.url, "4"], &[]);
    assert!(status.success(), "{err}");
    bench
        .wait_for(
            "SELECT COUNT(*) FROM agent_jobs WHERE id = 4 AND state = 'succeeded'",
            1,
        )
        .await;
    bench.stop();
    assert_eq!(
        bench
            .text("SELECT state FROM agent_jobs WHERE id = 5")
            .await,
        "over_budget"
    );
    // Agent time per account and day, in the history.
    let (status, out, err) = common::conductor(
        &[
            "history",
            "--database",
            &bench.url,
            "--json",
            "agent-time",
            ACCOUNT,
        ],
        &[],
    );
    assert!(status.success(), "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let row = &doc["sections"][0]["rows"][0];
    assert_eq!(row["account"], ACCOUNT, "{doc}");
    assert_eq!(row["jobs"], "4", "{doc}");
    let seconds: f64 = row["agent_seconds"].as_str().unwrap().parse().unwrap();
    assert!(seconds > 0.0, "{doc}");
}

#[tokio::test(flavor = "multi_thread")]
async fn daily_budget_sqlite() {
    a_daily_budget_of_three(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn daily_budget_postgres() {
    a_daily_budget_of_three(true).await;
}

async fn a_second_run_continues_the_unmerged_branch(postgres: bool) {
    let mut bench = Bench::new(postgres, "ok", |_, _| {}).await;
    bench.submit(&["ticket-bare.json"]);
    bench.start();
    bench
        .wait_for(
            "SELECT COUNT(*) FROM agent_jobs WHERE id = 1 AND state = 'succeeded'",
            1,
        )
        .await;
    let branch = bench
        .text("SELECT branch FROM agent_jobs WHERE id = 1")
        .await;
    let pr = bench
        .text("SELECT pr_url FROM agent_jobs WHERE id = 1")
        .await;
    // The pull request is still open (the forge says so): a second run builds on it.
    let (status, _, err) = common::conductor(&["retry", "--database", &bench.url, "1"], &[]);
    assert!(status.success(), "{err}");
    bench
        .wait_for(
            "SELECT COUNT(*) FROM agent_jobs WHERE id = 1 AND state = 'succeeded' AND attempts = 2",
            1,
        )
        .await;
    bench.stop();
    let second: (Option<String>, String) = conductor::with_pool!(&bench.db, |p| sqlx::query_as(
        "SELECT branch, files FROM job_attempts WHERE worker_id = 'j1-a2'"
    )
    .fetch_one(p)
    .await
    .unwrap());
    assert_eq!(
        second.0.as_deref(),
        Some(branch.as_str()),
        "pushed to the same branch"
    );
    // Its agent was told, in TASK.md and job.json.
    let files: Vec<serde_json::Value> = serde_json::from_str(&second.1).unwrap();
    let file = |name: &str| {
        files
            .iter()
            .find(|f| f["name"] == name)
            .and_then(|f| f["content"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let task = file("TASK.md");
    assert!(
        task.contains(&format!("continues the branch `{branch}`")) && task.contains(&pr),
        "{task}"
    );
    let spec: serde_json::Value = serde_json::from_str(&file("job.json")).unwrap();
    assert_eq!(spec["continuing"]["branch"], branch.as_str());
    // Both agents' work is on the branch, and the one pull request was updated, not doubled.
    let changed = local_git::changed_files(&bench.remote, "main", &branch).unwrap();
    assert!(
        changed.contains(&"notes/j1-a1.md".to_owned())
            && changed.contains(&"notes/j1-a2.md".to_owned()),
        "{changed:?}"
    );
    assert_eq!(bench.posts_to("/repos/acme/app/pulls").await.len(), 1);
    assert_eq!(
        bench
            .text("SELECT pr_url FROM agent_jobs WHERE id = 1")
            .await,
        pr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn second_run_continues_sqlite() {
    a_second_run_continues_the_unmerged_branch(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn second_run_continues_postgres() {
    a_second_run_continues_the_unmerged_branch(true).await;
}

/// The continuing run killed where a duplicate could arise — right after its worker started,
/// and right after the forge answered `open PR` — and restarted: still one pull request, on
/// the one branch, holding both runs' work.
async fn a_continuing_run_killed_and_restarted(postgres: bool, failpoint: &str) {
    let mut bench = Bench::new(postgres, "ok", |_, _| {}).await;
    bench.submit(&["ticket-bare.json"]);
    bench.start();
    bench
        .wait_for(
            "SELECT COUNT(*) FROM agent_jobs WHERE id = 1 AND state = 'succeeded'",
            1,
        )
        .await;
    bench.stop();
    let branch = bench
        .text("SELECT branch FROM agent_jobs WHERE id = 1")
        .await;
    let (status, _, err) = common::conductor(&["retry", "--database", &bench.url, "1"], &[]);
    assert!(status.success(), "{err}");
    bench.start_with(&[("CONDUCTOR_FAILPOINTS", failpoint)]);
    assert_eq!(
        bench.wait_exit(),
        Some(9),
        "killed at {failpoint}: {}",
        bench.logs()
    );
    bench.start();
    bench
        .wait_for(
            "SELECT COUNT(*) FROM agent_jobs WHERE id = 1 AND state = 'succeeded' AND attempts >= 2",
            1,
        )
        .await;
    bench.stop();
    assert_eq!(
        bench
            .text("SELECT branch FROM agent_jobs WHERE id = 1")
            .await,
        branch
    );
    assert_eq!(
        bench.posts_to("/repos/acme/app/pulls").await.len(),
        1,
        "{}",
        bench.logs()
    );
    let changed = local_git::changed_files(&bench.remote, "main", &branch).unwrap();
    assert!(
        changed.contains(&"notes/j1-a1.md".to_owned())
            && changed
                .iter()
                .any(|f| f.starts_with("notes/j1-a") && f != "notes/j1-a1.md"),
        "{changed:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn continuing_run_killed_after_its_worker_started_sqlite() {
    a_continuing_run_killed_and_restarted(false, "spawn.after_start").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn continuing_run_killed_after_the_forge_answered_postgres() {
    a_continuing_run_killed_and_restarted(true, "open_pr.after_forge").await;
}

/// Admission's line, on both databases, job by job: a job held up by its own full
/// repository keeps no place in the total line (it would idle the free slot), and a job whose
/// run died before its give-up holds no place at all.
async fn admission_skips_jobs_that_cannot_start(db: conductor::db::Db) {
    use conductor::jobs::caps::{self, Admission, Candidate};
    let policy = conductor::scheduling::policy::Policy::default();
    let scheduling = conductor::scheduling::flags::Scheduling::only(policy);
    for i in 1..=4 {
        let mut tx = db.begin().await.unwrap();
        let body = conductor::scenario::gen::ticket(&format!("ADM-{i}"), "admission", None);
        conductor::scheduling::decide::deliver(
            &mut conductor::scheduling::store::sql::Tables::real(&mut tx),
            &scheduling,
            &format!("m{i}"),
            "test",
            &body,
            0,
        )
        .await
        .unwrap();
        conductor::workflows::job::start(&mut tx, i, 0)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let caps = conductor::config::Caps {
        total: Some(2),
        ..Default::default()
    };
    let admit = |job: i64, repo: &'static str| {
        let (db, caps) = (db.clone(), caps.clone());
        async move {
            let mut tx = db.begin().await.unwrap();
            let c = Candidate {
                job_id: job,
                repo,
                account: None,
                budget_waived: false,
            };
            let a = caps::admit(&mut tx, &caps, &c, 1).await.unwrap();
            if let Admission::Wait(why) = &a {
                caps::wait(&mut tx, job, why, 1).await.unwrap();
            }
            conductor::with_conn!(&mut tx, |c| sqlx::query(
                "UPDATE agent_jobs SET repo = $2 WHERE id = $1"
            )
            .bind(job)
            .bind(repo)
            .execute(c)
            .await
            .unwrap()
            .rows_affected());
            tx.commit().await.unwrap();
            a
        }
    };
    // Job 1 is a dead run (crashed before its give-up): it holds no place.
    conductor::with_pool!(&db, |p| sqlx::query(
        "UPDATE runs SET status = 'failed' WHERE id = (SELECT run_id FROM agent_jobs WHERE id = 1)"
    )
    .execute(p)
    .await
    .unwrap()
    .rows_affected());
    assert_eq!(admit(2, "/x.git").await, Admission::Admitted);
    match admit(3, "/x.git").await {
        Admission::Wait(why) => assert!(why.contains("repository /x.git"), "{why}"),
        other => panic!("job 3 should wait for its repository: {other:?}"),
    }
    // Job 3 waits for /x.git only: job 4 takes the second of the two slots.
    assert_eq!(admit(4, "/y.git").await, Admission::Admitted);
}

#[tokio::test(flavor = "multi_thread")]
async fn admission_line_sqlite() {
    let (db, _url, _dir) = common::sqlite().await;
    admission_skips_jobs_that_cannot_start(db).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn admission_line_postgres() {
    let (db, _guard) = common::postgres("admission").await;
    admission_skips_jobs_that_cannot_start(db).await;
}

/// Two routes with development environments: tickets through an argv prefix (what
/// `devcontainer exec --workspace-folder DIR` is), alarms through a prefix that takes one
/// command string and carries no environment (what `vagrant ssh -c` is).
#[tokio::test(flavor = "multi_thread")]
async fn workers_run_inside_their_routes_environments() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut markers = (PathBuf::new(), PathBuf::new());
    let mut bench = Bench::new(false, "ok", |c, dir| {
        markers = (dir.join("devcontainer.log"), dir.join("vagrant.log"));
        let repo = PathBuf::from(&c.routes[0].repo);
        c.routes = vec![
            Route {
                project: Some("PAY".into()),
                environment: Some(conductor::config::Environment {
                    command_prefix: vec![
                        "sh".into(),
                        fixtures.join("devcontainer-exec.sh").display().to_string(),
                        markers.0.display().to_string(),
                    ],
                    ..Default::default()
                }),
                ..route("payments", &repo)
            },
            Route {
                account: Some("210987654321".into()),
                environment: Some(conductor::config::Environment {
                    command_prefix: vec![
                        "sh".into(),
                        fixtures.join("vagrant.sh").display().to_string(),
                        markers.1.display().to_string(),
                        "ssh".into(),
                        "-c".into(),
                        "{command}".into(),
                    ],
                    ..Default::default()
                }),
                ..route("api", &repo)
            },
        ];
        // One repository for both: one job after the other.
        c.incidents.settle = std::time::Duration::ZERO;
    })
    .await;
    bench.submit(&["ticket-bare.json", "alarm-eventbridge.json"]);
    bench.start();
    bench.wait_for(FINISHED, 2).await;
    bench.stop();
    assert_eq!(
        bench
            .count("SELECT COUNT(*) FROM agent_jobs WHERE state = 'succeeded'")
            .await,
        2,
        "{}",
        bench.logs()
    );
    let devcontainer = std::fs::read_to_string(&markers.0).unwrap();
    assert!(
        devcontainer.contains("conductor-worker --worker-id j1-a1 --env-file"),
        "{devcontainer}"
    );
    assert!(
        !devcontainer.contains("prefix environment: WORKER_TOKEN"),
        "the prefix tool held the worker's token: {devcontainer}"
    );
    let vagrant = std::fs::read_to_string(&markers.1).unwrap();
    assert!(
        vagrant.contains("--worker-id j2-a1 --env-file"),
        "{vagrant}"
    );
    // The variables crossed in a file the worker deleted before its agent ran; its token is
    // on no command line.
    assert!(bench.files_under("work", "worker.env").is_empty());
    let token_hash = bench
        .text("SELECT token FROM job_attempts WHERE worker_id = 'j2-a1'")
        .await;
    assert!(!vagrant.contains(&token_hash));
    assert!(!vagrant.contains("WORKER_TOKEN"), "{vagrant}");
}
