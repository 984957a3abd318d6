//! The operator's view from outside: `/healthz`, `/readyz` and `/metrics` of a running
//! conductor, the pause that holds through restarts, and the web console loaded in a real
//! browser (headless Chromium) over the demo's SQLite database and over Postgres.

use std::{collections::BTreeMap, time::Duration};

use crate::common::{
    self, browser,
    jobs::{free_port, kill_workers_under, Bench},
};

/// On a machine busy with the whole suite a queue consumer can miss its heartbeats and be
/// replaced; the step it held is queued again after this (as `tests/it/pg_restart.rs` does),
/// not after the 5 minutes of the default, so the tests wait on the job and not on the guard.
const STALLED_AFTER: Duration = Duration::from_secs(30);

const ALL_SAMPLES: [&str; 5] = [
    "ticket-bare.json",
    "ticket-webhook-created.json",
    "alarm-eventbridge.json",
    "alarm-sns.json",
    "alarm-eventbridge-ok.json",
];

/// An HTTP client (reqwest is built without a default TLS provider: the product picks ring).
fn client() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none())
}

async fn get(url: &str) -> Option<(u16, String)> {
    let resp = client()
        .build()
        .unwrap()
        .get(url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.text().await.unwrap_or_default()))
}

/// Polls `url` until `want` says yes (giving up after three minutes, with what it last saw).
async fn wait_http(url: &str, mut want: impl FnMut(u16, &str) -> bool) -> String {
    let mut last = None;
    for _ in 0..1800 {
        if let Some((status, body)) = get(url).await {
            if want(status, &body) {
                return body;
            }
            last = Some((status, body));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting on {url}; last answer: {last:?}");
}

/// The samples of a Prometheus text: `name{labels}` → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// Decisions on record by kind and decision, as `/metrics` labels them.
async fn decisions_in_db(bench: &Bench) -> BTreeMap<String, f64> {
    let rows: Vec<(Option<String>, String, i64)> = conductor::with_pool!(&bench.db, |p| {
        sqlx::query_as(
            "SELECT kind, decision, CAST(COUNT(*) AS BIGINT) FROM decisions GROUP BY kind, decision",
        )
        .fetch_all(p)
        .await
        .unwrap()
    });
    rows.into_iter()
        .map(|(kind, decision, n)| {
            (
                format!(
                    "conductor_messages_decided_total{{kind=\"{}\",decision=\"{decision}\"}}",
                    kind.as_deref().unwrap_or("unknown")
                ),
                n as f64,
            )
        })
        .collect()
}

fn decided_in(metrics: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    metrics
        .iter()
        .filter(|(k, _)| k.starts_with("conductor_messages_decided_total{"))
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

/// A running conductor answers `/healthz` and `/readyz`; after the samples are decided its
/// `/metrics` counters equal the decisions in the database; once drained it is alive but not
/// ready, so a load balancer stops sending it anything.
#[tokio::test(flavor = "multi_thread")]
async fn health_readiness_and_metrics_of_a_running_conductor() {
    let port = free_port();
    // The agents hang: the drain below has work in flight and waits for it.
    let mut bench = Bench::new(false, "hang", |c, _| {
        c.http.listen = format!("127.0.0.1:{port}");
        c.worker.agent_timeout = Duration::from_secs(600);
        c.jobs.stalled_after = STALLED_AFTER;
    })
    .await;
    bench.start();
    let base = format!("http://127.0.0.1:{port}");
    wait_http(&format!("{base}/healthz"), |s, b| s == 200 && b == "ok\n").await;
    let (status, body) = get(&format!("{base}/readyz")).await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "ready\n"),
        "{}",
        bench.logs()
    );
    // The worker port answers the standard gRPC health check, for the server and the protocol.
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", bench.config.grpc.listen))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for service in ["", "conductor.worker.v1.Conductor"] {
        let reply = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            reply.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service:?}"
        );
    }

    bench.submit(&ALL_SAMPLES);
    bench
        .wait_for("SELECT COUNT(*) FROM decisions", ALL_SAMPLES.len() as i64)
        .await;
    let want = decisions_in_db(&bench).await;
    assert!(
        want.len() >= 3,
        "tickets, alarms and an ignored OK: {want:?}"
    );
    // Each counter is bumped just after its step commits: wait until they agree. (Messages
    // received are counted by the process whose transport stored them: here `conductor
    // submit`, not this conductor.)
    let text = wait_http(&format!("{base}/metrics"), |s, b| {
        let m = samples(b);
        s == 200 && decided_in(&m) == want
    })
    .await;
    let m = samples(&text);
    assert_eq!(
        m.get("conductor_decide_seconds_count"),
        Some(&(ALL_SAMPLES.len() as f64)),
        "{text}"
    );
    let jobs = bench.count("SELECT COUNT(*) FROM agent_jobs").await;
    let gauged: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("conductor_jobs{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(gauged, jobs as f64, "{text}");
    assert_eq!(m.get("conductor_gate_closed"), Some(&0.0), "{text}");
    assert_eq!(m.get("conductor_replicas_alive"), Some(&1.0), "{text}");

    // An agent is working; drain: the replica stays alive, stops being ready.
    bench
        .wait_for(
            "SELECT COUNT(*) FROM job_attempts WHERE state = 'delivered'",
            1,
        )
        .await;
    let (status, _, err) = common::conductor(&["drain", "--database", &bench.url], &[]);
    assert!(status.success(), "{err}");
    let body = wait_http(&format!("{base}/readyz"), |s, _| s == 503).await;
    assert!(body.contains("draining"), "{body}");
    let (status, _) = get(&format!("{base}/healthz")).await.unwrap();
    assert_eq!(status, 200);
    let text = wait_http(&format!("{base}/metrics"), |s, _| s == 200).await;
    assert_eq!(samples(&text).get("conductor_gate_closed"), Some(&1.0));
    bench.kill();
    kill_workers_under(&bench.dir.path().join("work"));
}

/// `conductor pause` is kept in the database: a replica that restarts (SIGTERM, then
/// SIGKILL) comes back paused, decides nothing, says so in `/readyz`, `status` and the
/// replicas table, and `unpause` lets the waiting message through.
#[tokio::test(flavor = "multi_thread")]
async fn pause_holds_through_every_restart() {
    let port = free_port();
    let mut bench = Bench::new(true, "ok", |c, _| {
        c.http.listen = format!("127.0.0.1:{port}");
        c.jobs.stalled_after = STALLED_AFTER;
    })
    .await;
    let base = format!("http://127.0.0.1:{port}");
    bench.start();
    wait_http(&format!("{base}/readyz"), |s, b| s == 200 && b == "ready\n").await;
    let (status, out, err) = common::conductor(&["pause", "--database", &bench.url], &[]);
    assert!(status.success(), "{err}");
    assert!(out.contains("paused"), "{out}");
    // The running replica follows, and stays ready (a pause is not a drain).
    wait_http(&format!("{base}/readyz"), |s, b| {
        s == 200 && b.contains("paused")
    })
    .await;

    // Restart it twice, gracefully and by a crash; a message waits meanwhile.
    bench.stop();
    bench.submit(&["ticket-bare.json"]);
    for crash in [false, true] {
        let before = conductor::db::now_ms();
        bench.start();
        // The new process recorded itself, paused from its first record.
        bench
            .wait_for(
                &format!(
                    "SELECT COUNT(*) FROM replicas WHERE started_ms >= {before} AND intake = 'paused'"
                ),
                1,
            )
            .await;
        wait_http(&format!("{base}/readyz"), |s, b| {
            s == 200 && b.contains("paused")
        })
        .await;
        assert_eq!(bench.count("SELECT COUNT(*) FROM decisions").await, 0);
        let (_, out, _) = common::conductor(&["status", "--database", &bench.url], &[]);
        assert!(
            out.starts_with("held: 1 message(s) wait: intake paused by cli:"),
            "{out}"
        );
        assert!(out.contains("pause: paused since"), "{out}");
        if crash {
            bench.kill();
        } else {
            bench.stop();
        }
    }
    bench.start();
    let (status, _, err) = common::conductor(&["unpause", "--database", &bench.url], &[]);
    assert!(status.success(), "{err}");
    bench.wait_for("SELECT COUNT(*) FROM decisions", 1).await;
    let history = bench
        .count("SELECT COUNT(*) FROM flag_changes WHERE name = 'pause'")
        .await;
    assert_eq!(
        history, 2,
        "paused once, unpaused once: no start touched it"
    );
    bench.stop();
}

/// A job id and the number of steps its run has.
async fn jobs_and_steps(db: &conductor::db::Db) -> Vec<(i64, i64)> {
    conductor::with_pool!(db, |p| sqlx::query_as(
        "SELECT j.id, CAST(COUNT(s.step) AS BIGINT) FROM agent_jobs j
         LEFT JOIN steps s ON s.run_id = j.run_id GROUP BY j.id ORDER BY j.id"
    )
    .fetch_all(p)
    .await
    .unwrap())
}

/// Each incident with an agent, its alarms, and its job.
async fn incidents_with_jobs(db: &conductor::db::Db) -> Vec<(i64, i64, i64)> {
    conductor::with_pool!(db, |p| {
        sqlx::query_as(
        "SELECT i.id, (SELECT CAST(COUNT(*) AS BIGINT) FROM alarms a WHERE a.incident_id = i.id), j.id
         FROM incidents i JOIN agent_jobs j ON j.incident_id = i.id ORDER BY i.id"
    )
    .fetch_all(p)
    .await
    .unwrap()
    })
}

/// A `conductor console` process, killed when dropped (a failing test leaves none behind).
struct Console(std::process::Child);

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `conductor console` over `url` and returns it with its address.
fn console(url: &str, envs: &[(&str, &str)]) -> (Console, String) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(common::conductor_bin())
        .args(["console", "--database", url, "--listen", "127.0.0.1:0"])
        .envs(envs.iter().copied())
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("console's first line names its address: {first:?}"))
        .trim_end_matches('/')
        .to_owned();
    (Console(child), addr)
}

/// What a person would check, page by page, in a real browser: the job list holds every job,
/// each job's page draws one bar per step of its run, each incident's picture one dot per
/// alarm and the agent it started. A screenshot of each kind of page is kept.
fn check_console(base: &str, jobs: &[(i64, i64)], incidents: &[(i64, i64, i64)], tag: &str) {
    let shots = browser::artifacts(tag);
    let status = browser::load(&format!("{base}/"), Some(&shots.join("status.png")));
    assert!(status.contains("replicas alive"), "{status}");
    assert!(status.contains("shutdown gate"), "{status}");

    let list = browser::load(&format!("{base}/jobs"), Some(&shots.join("jobs.png")));
    for (id, _) in jobs {
        assert!(
            list.contains(&format!("href=\"/jobs/{id}\"")),
            "job {id} missing from the list: {list}"
        );
    }
    assert_eq!(list.matches("href=\"/jobs/").count(), jobs.len(), "{list}");

    for (i, (id, steps)) in jobs.iter().enumerate() {
        let shot = shots.join(format!("job-{id}.png"));
        let page = browser::load(
            &format!("{base}/jobs/{id}"),
            (i == 0).then_some(shot.as_path()),
        );
        assert!(page.contains(&format!("Job {id}")), "{page}");
        assert!(page.contains("aria-label=\"step timeline\""), "{page}");
        assert_eq!(
            page.matches("<rect class=\"bar-").count() as i64,
            *steps,
            "one bar per step of job {id}'s run: {page}"
        );
        assert!(page.contains("attempts"), "{page}");
        // The agent's report, as its worker handed it over.
        assert!(
            page.contains("reports <span class=\"muted\">(1)</span>"),
            "{page}"
        );
    }
    // A step row links to its run's page.
    let first = browser::load(&format!("{base}/jobs/{}", jobs[0].0), None);
    let run: String = first
        .split("href=\"/runs/")
        .nth(1)
        .expect("a link to the job's run")
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let run_page = browser::load(&format!("{base}/runs/{run}"), None);
    assert!(run_page.contains(&format!("Run {run}")), "{run_page}");
    assert_eq!(
        run_page.matches("<tr>").count() as i64 - 1,
        jobs[0].1,
        "one row per step: {run_page}"
    );
    assert!(!incidents.is_empty(), "the samples open an incident");
    for (i, (id, alarms, job)) in incidents.iter().enumerate() {
        let shot = shots.join(format!("incident-{id}.png"));
        let page = browser::load(
            &format!("{base}/incidents/{id}"),
            (i == 0).then_some(shot.as_path()),
        );
        assert_eq!(
            page.matches("<circle class=\"dot-").count() as i64,
            *alarms,
            "one dot per alarm of incident {id}: {page}"
        );
        assert!(page.contains(&format!("agent: job {job}")), "{page}");
        // Every value read: a column the history could not decode shows `?`.
        assert!(!page.contains("<td>?</td>"), "{page}");
    }
    // A message's page shows its run: the ingest and decide steps.
    let message = browser::load(
        &format!("{base}/messages/1"),
        Some(&shots.join("message.png")),
    );
    assert!(message.contains("Message 1"), "{message}");
    for step in ["ingest", "decide"] {
        assert!(
            message.contains(&format!("<td>{step}</td>")),
            "{step}: {message}"
        );
    }
    for (path, shot, expect) in [
        ("/messages", "messages.png", "latest messages"),
        ("/flags", "flags.png", "intake switches"),
        ("/shadow", "shadow.png", "candidates"),
    ] {
        let page = browser::load(&format!("{base}{path}"), Some(&shots.join(shot)));
        assert!(page.contains(expect), "{path}: {page}");
    }
}

/// `conductor demo`, then `conductor console --database sqlite:<the demo's database>`: every
/// job, each job's timeline and each incident's picture, in Chromium.
#[tokio::test(flavor = "multi_thread")]
async fn console_in_a_browser_after_the_demo() {
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    let (status, out, err) = common::conductor(&["demo", "--dir", demo.to_str().unwrap()], &[]);
    assert!(status.success(), "{out}\n{err}");
    let url = format!("sqlite:{}", demo.join("conductor.db").display());
    let db = conductor::db::Db::connect_only(&url).await.unwrap();
    let jobs = jobs_and_steps(&db).await;
    assert_eq!(jobs.len(), 5, "the demo's five jobs");
    let incidents = incidents_with_jobs(&db).await;
    let (child, base) = console(&url, &[]);
    tokio::task::spawn_blocking(move || check_console(&base, &jobs, &incidents, "sqlite-demo"))
        .await
        .unwrap();
    drop(child);
}

/// The same pages over Postgres, after real workers served the samples.
#[tokio::test(flavor = "multi_thread")]
async fn console_in_a_browser_on_postgres() {
    let mut bench = Bench::new(true, "ok", |c, _| c.jobs.stalled_after = STALLED_AFTER).await;
    bench.start();
    bench.submit(&ALL_SAMPLES);
    bench
        .wait_for(
            "SELECT COUNT(*) FROM agent_jobs WHERE state = 'succeeded'",
            3,
        )
        .await;
    bench.stop();
    let jobs = jobs_and_steps(&bench.db).await;
    let incidents = incidents_with_jobs(&bench.db).await;
    let (child, base) = console(&bench.url, &[]);
    tokio::task::spawn_blocking(move || check_console(&base, &jobs, &incidents, "postgres"))
        .await
        .unwrap();
    drop(child);
}

/// Without the operator token the console changes nothing; with it, a form pauses intake
/// and closes the gate, each change recorded as the console's, and a retry of an unknown job
/// says so.
#[tokio::test(flavor = "multi_thread")]
async fn console_actions_need_the_operator_token() {
    let (db, url, _dir) = common::sqlite().await;
    let (read_only, base) = console(&url, &[]);
    let client = client().build().unwrap();
    let post = |base: String, token: &'static str| {
        let client = client.clone();
        async move {
            client
                .post(format!("{base}/actions/pause"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("state=paused&token={token}"))
                .send()
                .await
                .unwrap()
        }
    };
    let resp = post(base.clone(), "anything").await;
    assert_eq!(resp.status().as_u16(), 403);
    assert!(resp.text().await.unwrap().contains("read-only"));
    drop(read_only);

    let (_operator, base) = console(&url, &[("CONDUCTOR_OPERATOR_TOKEN", "s3cret-op")]);
    assert_eq!(post(base.clone(), "wrong").await.status().as_u16(), 403);
    assert_eq!(
        common::count(&db, "SELECT COUNT(*) FROM flags WHERE name = 'pause'").await,
        0
    );
    let resp = post(base.clone(), "s3cret-op").await;
    assert_eq!(resp.status().as_u16(), 303);
    let by: String = conductor::with_pool!(&db, |p| sqlx::query_scalar(
        "SELECT updated_by FROM flags WHERE name = 'pause' AND value = 'paused'"
    )
    .fetch_one(p)
    .await
    .unwrap());
    assert!(by.starts_with("console:"), "{by}");
    // The gate, with a bearer token this time; a bad state and an unknown job are refused.
    let gate = |body: &'static str| {
        let client = client.clone();
        let base = base.clone();
        async move {
            client
                .post(format!("{base}/actions/gate"))
                .header("authorization", "Bearer s3cret-op")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(gate("state=ajar").await.status().as_u16(), 400);
    assert_eq!(gate("state=closed").await.status().as_u16(), 303);
    assert_eq!(
        common::count(
            &db,
            "SELECT COUNT(*) FROM flags WHERE name = 'gate' AND value = 'closed' AND updated_by LIKE 'console:%'"
        )
        .await,
        1
    );
    let resp = client
        .post(format!("{base}/actions/retry/99"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=s3cret-op")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 409);
    assert!(resp.text().await.unwrap().contains("no job 99"));
}

/// With `--log-json` (here `CONDUCTOR_LOG_JSON`), every line the conductor and its workers
/// write is one JSON object; a step's lines carry its span with the SQL views' names and
/// values as JSON numbers and strings (no `Some(..)` debug text), and nothing carries colour
/// codes.
#[tokio::test(flavor = "multi_thread")]
async fn json_logs_carry_the_views_names() {
    let mut bench = Bench::new(false, "ok", |c, _| c.jobs.stalled_after = STALLED_AFTER).await;
    bench.start_with(&[("CONDUCTOR_LOG_JSON", "true")]);
    bench.submit(&["ticket-bare.json"]);
    bench
        .wait_for(
            "SELECT COUNT(*) FROM agent_jobs WHERE state = 'succeeded'",
            1,
        )
        .await;
    bench.stop();
    let conductor_log = std::fs::read_to_string(&bench.log_path).unwrap();
    let lines: Vec<serde_json::Value> = conductor_log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        !conductor_log.contains('\u{1b}'),
        "colour codes in a log file"
    );
    // Conductor's own fields hold values, not Rust debug text (`Some(1)`, `None`).
    let debug_text: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| {
            l["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("conductor"))
        })
        .filter(|l| {
            let f = l["fields"].to_string();
            f.contains("Some(") || f.contains(":\"None\"")
        })
        .collect();
    assert!(
        debug_text.is_empty(),
        "debug text in a value: {debug_text:#?}"
    );
    let decided = lines
        .iter()
        .find(|l| l["fields"]["message"] == "decided")
        .unwrap_or_else(|| panic!("a decided line: {conductor_log}"));
    assert!(decided["fields"]["message_id"].is_i64(), "{decided}");
    assert!(decided["fields"]["job_id"].is_i64(), "{decided}");
    let span = &decided["span"];
    assert_eq!(span["name"], "step", "{decided}");
    assert_eq!(span["step"], "decide", "{decided}");
    assert!(span["run_id"].is_i64(), "{decided}");
    assert!(span["message_id"].is_i64(), "{decided}");
    assert!(span["transport_id"].is_string(), "{decided}");
    // A step of the job's run names the job in its span; the worker protocol's lines name
    // the worker and the job.
    let opened = lines
        .iter()
        .find(|l| l["fields"]["message"] == "pull request open")
        .unwrap_or_else(|| panic!("a pull request line: {conductor_log}"));
    assert_eq!(opened["span"]["step"], "open_pr", "{opened}");
    assert!(opened["span"]["job_id"].is_i64(), "{opened}");
    assert!(opened["span"]["run_id"].is_i64(), "{opened}");
    let report = lines
        .iter()
        .find(|l| l["fields"]["message"] == "report accepted")
        .unwrap_or_else(|| panic!("a report line: {conductor_log}"));
    assert!(report["fields"]["worker_id"].is_string(), "{report}");
    assert!(report["fields"]["job_id"].is_i64(), "{report}");
    // The worker logs JSON too, every line in its span.
    let worker_logs = bench.files_under("work", "worker.log");
    assert!(!worker_logs.is_empty());
    for f in worker_logs {
        let text = std::fs::read_to_string(&f).unwrap();
        let mut spanned = 0;
        for l in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("worker line not JSON ({e}): {l}"));
            spanned += usize::from(v["span"]["worker_id"].is_string());
        }
        assert!(spanned > 0, "{text}");
    }
}

/// Every metric the Grafana dashboard in `deploy/` queries is one the code records.
#[test]
fn the_dashboard_queries_metrics_that_exist() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dashboard = std::fs::read_to_string(root.join("deploy/grafana-dashboard.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let code = ["src/telemetry.rs", "src/observe/gauges.rs"]
        .iter()
        .map(|f| std::fs::read_to_string(root.join(f)).unwrap())
        .collect::<String>();
    let mut names = std::collections::BTreeSet::new();
    for panel in doc["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for (i, _) in expr.match_indices("conductor_") {
                let name: String = expr[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                names.insert(name);
            }
        }
    }
    assert!(names.len() >= 15, "{names:?}");
    for name in names {
        // A histogram's series carry suffixes the exporter adds.
        let base = name.trim_end_matches("_bucket");
        assert!(
            code.contains(&format!("\"{base}\"")),
            "the dashboard queries {name}, which the code does not record"
        );
    }
}

/// What senders wrote reaches the pages as text, never as markup: a body, a ticket summary
/// and an alarm name carrying HTML are shown escaped, in the browser too; a transport id that
/// looks like an internal id never stands in for that message.
#[tokio::test(flavor = "multi_thread")]
async fn the_console_shows_what_senders_wrote_as_text() {
    use conductor::{
        scenario::replay,
        scheduling::{domain::RawMessage, flags::Scheduling, policy::Policy},
    };
    let (db, url, _dir) = common::sqlite().await;
    let alarm = std::fs::read_to_string(common::samples().join("alarm-eventbridge.json"))
        .unwrap()
        .replace("api-5xx-rate", "<script>alert(1)</script>");
    let ticket = std::fs::read_to_string(common::samples().join("ticket-bare.json"))
        .unwrap()
        .replace(
            "Checkout returns 500 when the cart has m",
            "<img src=x onerror=alert(2)>",
        );
    // Transport ids that look like other messages' internal ids: message 1 is sent as "2".
    let messages = [
        ("2", "<script>alert(3)</script> not a message".to_owned()),
        ("3", ticket),
        ("1", alarm),
    ]
    .map(|(id, body)| RawMessage {
        transport_id: id.into(),
        body,
        raw: None,
    });
    replay::replay_with(
        &db,
        &Scheduling::only(Policy::default()),
        &messages,
        10,
        replay::StoreMode::Statements,
    )
    .await
    .unwrap();
    let (_console, base) = console(&url, &[]);
    for path in [
        "/messages",
        "/messages/1",
        "/messages/2",
        "/messages/3",
        "/incidents/1",
        "/jobs",
        "/jobs/1",
    ] {
        let (status, page) = get(&format!("{base}{path}")).await.unwrap();
        assert_eq!(status, 200, "{path}: {page}");
        for raw in ["<script>alert", "<img src=x"] {
            assert!(
                !page.contains(raw),
                "{path} carries markup a sender wrote: {page}"
            );
        }
    }
    let (_, page) = get(&format!("{base}/messages/1")).await.unwrap();
    assert!(
        page.contains("Message 1") && page.contains("&lt;script&gt;alert(3)"),
        "{page}"
    );
    // /messages/2 is internal id 2 (the ticket), not the message whose transport id is "2".
    let (_, page) = get(&format!("{base}/messages/2")).await.unwrap();
    assert!(
        page.contains("Message 2") && page.contains("&lt;img src=x"),
        "{page}"
    );
    // The browser builds no script element from them, and the picture names the alarm as text.
    let dom =
        tokio::task::spawn_blocking(move || browser::load(&format!("{base}/incidents/1"), None))
            .await
            .unwrap();
    assert!(!dom.contains("<script"), "{dom}");
    assert!(
        dom.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{dom}"
    );
}
