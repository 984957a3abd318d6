//! Crash safety of the message workflow: the real `conductor run` process is SIGKILLed at a
//! step boundary (a failpoint makes it kill itself there, as `kill -9` would), restarted, and
//! the database shows nothing lost and nothing decided twice.

use crate::common;

use std::os::unix::process::ExitStatusExt;

use conductor::db::Db;

async fn state(db: &Db) -> (i64, i64, i64, i64) {
    (
        common::count(db, "SELECT COUNT(*) FROM messages").await,
        common::count(db, "SELECT COUNT(*) FROM decisions").await,
        common::count(db, "SELECT COUNT(*) FROM agent_jobs").await,
        common::count(
            db,
            "SELECT COALESCE(MAX(attempts), 0) FROM steps WHERE step = 'decide'",
        )
        .await,
    )
}

fn run(url: &str, failpoint: Option<&str>) -> std::process::ExitStatus {
    run_with(url, failpoint, &[])
}

fn run_with(
    url: &str,
    failpoint: Option<&str>,
    extra: &[(&str, &str)],
) -> std::process::ExitStatus {
    let mut envs = vec![("CONDUCTOR_DATABASE_URL", url)];
    envs.extend_from_slice(extra);
    if let Some(f) = failpoint {
        envs.push(("CONDUCTOR_FAILPOINTS", f));
    }
    let (status, _, stderr) = common::conductor(
        &[
            "run",
            "--until-idle",
            // Only the message workflow is under test: its ticket's job has nowhere to go.
            "--allow-unrouted",
            "--heartbeat",
            "1s",
            "--poll-interval",
            "50ms",
        ],
        &envs,
    );
    if failpoint.is_none() {
        assert!(status.success(), "{stderr}");
    }
    status
}

/// Submits one ticket, runs until the failpoint kills the process, checks the database, then
/// restarts and checks that the message was decided exactly once (`decide_attempts` counts the
/// killed attempt too: attempt numbers are monotonic across crashes).
async fn kill_and_restart(
    db: Db,
    url: &str,
    failpoint: &str,
    expect_after_kill: (i64, i64, i64, i64),
    decide_attempts: i64,
) {
    let ticket = common::samples().join("ticket-bare.json");
    // The transport's own commit (message stored, run started at decide) is killed in
    // `submit`; every other point in `run`.
    let in_submit = failpoint.starts_with("inbox.");
    let mut envs = vec![("CONDUCTOR_DATABASE_URL", url)];
    if in_submit {
        envs.push(("CONDUCTOR_FAILPOINTS", failpoint));
    }
    let (status, _, stderr) = common::conductor(&["submit", ticket.to_str().unwrap()], &envs);
    if !in_submit {
        assert!(status.success(), "{stderr}");
    }
    let status = if in_submit {
        status
    } else {
        run(url, Some(failpoint))
    };
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the failpoint {failpoint} should have killed the process"
    );
    assert_eq!(
        state(&db).await,
        expect_after_kill,
        "after the kill at {failpoint}"
    );

    run(url, None);
    let (messages, decisions, jobs, _) = state(&db).await;
    assert_eq!(
        (messages, decisions, jobs),
        (1, 1, 1),
        "after restart from {failpoint}"
    );
    assert_eq!(state(&db).await.3, decide_attempts);
    assert_eq!(
        common::count(
            &db,
            "SELECT COUNT(*) FROM runs WHERE status = 'done' AND workflow = 'message'"
        )
        .await,
        1
    );
    assert_eq!(
        common::count(
            &db,
            "SELECT COUNT(*) FROM steps s JOIN runs r ON r.id = s.run_id WHERE s.status = 'done' AND r.workflow = 'message'"
        )
        .await,
        2
    );
    // The spawn started exactly one job workflow run (this test routes nowhere, so the job
    // ends at claim, recorded as failed for want of a route).
    assert_eq!(
        common::count(&db, "SELECT COUNT(*) FROM runs WHERE workflow = 'job'").await,
        1
    );

    // The same message delivered again is a redelivery: no second decision, no second job.
    let (status, _, _) = common::conductor(
        &["submit", ticket.to_str().unwrap()],
        &[("CONDUCTOR_DATABASE_URL", url)],
    );
    assert!(status.success());
    run(url, None);
    let (messages, decisions, jobs, _) = state(&db).await;
    assert_eq!(
        (messages, decisions, jobs),
        (1, 1, 1),
        "after the redelivery"
    );
    assert_eq!(
        common::count(&db, "SELECT deliveries FROM messages").await,
        2
    );
}

#[tokio::test]
async fn killed_between_ingest_and_decide_sqlite() {
    let (db, url, _dir) = common::sqlite().await;
    // The transport's commit made (message stored and ingested, decide queued), no decision
    // yet.
    kill_and_restart(db, &url, "inbox.after_commit", (1, 0, 0, 0), 1).await;
}

/// A message run queued the way it was before transports did `ingest` themselves (its first
/// step a task), as a deploy finds a backlog: the task still runs, and a kill right after its
/// commit loses nothing and decides nothing twice.
#[tokio::test]
async fn a_run_queued_at_ingest_is_ingested_by_its_task_and_survives_a_kill() {
    let (db, url, _dir) = common::sqlite().await;
    let body = std::fs::read_to_string(common::samples().join("ticket-bare.json")).unwrap();
    let input = conductor::steps::ingest::InboxMessage {
        transport_id: "queued-before-the-deploy".into(),
        body: body.clone(),
        raw_hex: None,
        source: "sqs".into(),
        received_ms: 1,
    };
    let mut tx = db.begin().await.unwrap();
    conductor::engine::start_ordered_run(
        &mut tx,
        &conductor::workflows::message::MESSAGE,
        &serde_json::to_value(&input).unwrap(),
        conductor::workflows::message::order_key(&body).as_deref(),
        1,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let status = run(&url, Some("ingest.after_commit"));
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert_eq!(state(&db).await, (1, 0, 0, 0), "stored, not decided");
    run(&url, None);
    assert_eq!(state(&db).await, (1, 1, 1, 1), "decided once");
    assert_eq!(
        common::count(
            &db,
            "SELECT COUNT(*) FROM steps WHERE status = 'done' AND step IN ('ingest', 'decide')"
        )
        .await,
        2
    );
}

#[tokio::test]
async fn killed_inside_decide_before_commit_sqlite() {
    let (db, url, _dir) = common::sqlite().await;
    // Decide ran but did not commit: nothing of it is kept except its attempt count.
    kill_and_restart(db.clone(), &url, "decide.before_commit", (1, 0, 0, 1), 2).await;
}

#[tokio::test]
async fn killed_between_ingest_and_decide_postgres() {
    let (db, guard) = common::postgres("crash_ingest").await;
    let url = guard.url.clone();
    kill_and_restart(db, &url, "inbox.after_commit", (1, 0, 0, 0), 1).await;
}

#[tokio::test]
async fn killed_inside_decide_before_commit_postgres() {
    let (db, guard) = common::postgres("crash_decide").await;
    let url = guard.url.clone();
    kill_and_restart(db, &url, "decide.before_commit", (1, 0, 0, 1), 2).await;
}

/// Every decision as comparable across two databases: ids replaced by the transport ids of
/// the messages they stand for (an incident by the message that opened it). A ticket's
/// messages are counted by decision: which of two deliveries of one ticket decided at once
/// (two tasks, no ordering key) spawns and which is its duplicate is a race on either side.
async fn decisions_by_transport_id(db: &Db) -> Vec<String> {
    const SQL: &str = "SELECT m.transport_id || ' ' || d.decision || ' ' || COALESCE(d.kind, '-')
            || ' ' || COALESCE(d.account, '-')
            || ' incident:' || COALESCE(o.transport_id, '-')
            || ' job:' || CASE WHEN d.job_id IS NULL THEN 'no' ELSE 'yes' END
            || ' of:' || COALESCE(dm.transport_id, '-')
        FROM decisions d JOIN messages m ON m.id = d.message_id
        LEFT JOIN incidents i ON i.id = d.incident_id
        LEFT JOIN messages o ON o.id = i.opened_by_message_id
        LEFT JOIN messages dm ON dm.id = d.duplicate_of
        WHERE d.ticket_key IS NULL
        UNION ALL
        SELECT 'ticket ' || d.ticket_key || ' ' || d.decision || ' x' || COUNT(*)
        FROM decisions d WHERE d.ticket_key IS NOT NULL GROUP BY d.ticket_key, d.decision
        ORDER BY 1";
    conductor::with_pool!(db, |p| sqlx::query_scalar(SQL).fetch_all(p).await.unwrap())
}

/// A batch of decisions killed just before its commit keeps nothing of any of its messages:
/// they are all queued again as they were. The restart decides every message exactly once,
/// and the same as a conductor deciding one message at a time (`decide_batch = 1`) decides
/// the same stream.
async fn killed_inside_a_batch(db: Db, url: &str, alone: Db, alone_url: &str) {
    use conductor::scenario::gen;
    let messages = gen::generate(&gen::GenSpec::Mixed {
        count: 300,
        accounts: 4,
        seed: 11,
    })
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("mixed.jsonl");
    std::fs::write(&file, gen::to_jsonl(&messages)).unwrap();
    for u in [url, alone_url] {
        let (status, _, stderr) = common::conductor(
            &["submit", file.to_str().unwrap()],
            &[("CONDUCTOR_DATABASE_URL", u)],
        );
        assert!(status.success(), "{stderr}");
    }
    let stored = common::count(&db, "SELECT COUNT(*) FROM messages").await;
    // Incidents' jobs start without settling: `--until-idle` waits for every job run.
    let no_settle = ("CONDUCTOR_INCIDENTS__SETTLE", "0s");
    let status = run_with(url, Some("decide.before_commit"), &[no_settle]);
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert_eq!(
        common::count(&db, "SELECT COUNT(*) FROM decisions").await,
        0,
        "a killed batch keeps no decision"
    );
    run_with(url, None, &[no_settle]);
    run_with(
        alone_url,
        None,
        &[no_settle, ("CONDUCTOR_PIPELINE__DECIDE_BATCH", "1")],
    );
    let new_messages = common::count(
        &db,
        "SELECT COUNT(*) FROM runs r JOIN steps s ON s.run_id = r.id
        WHERE r.workflow = 'message' AND s.step = 'decide'",
    )
    .await;
    assert_eq!(
        common::count(&db, "SELECT COUNT(*) FROM decisions").await,
        new_messages,
        "each stored message decided once"
    );
    assert!(new_messages > 200 && new_messages <= stored);
    // Batches did form: a batch's steps start together, at the batch's start.
    let starts = common::count(
        &db,
        "SELECT COUNT(DISTINCT started_ms) FROM steps WHERE step = 'decide'",
    )
    .await;
    assert!(
        starts * 4 < new_messages,
        "{starts} distinct starts for {new_messages} decisions: no batches"
    );
    assert_eq!(
        common::count(
            &db,
            "SELECT COUNT(*) FROM runs WHERE workflow = 'message' AND status <> 'done'"
        )
        .await,
        0
    );
    assert_eq!(
        common::count(
            &db,
            "SELECT COUNT(*) FROM agent_jobs j WHERE NOT EXISTS
                (SELECT 1 FROM decisions d WHERE d.job_id = j.id AND d.decision = 'spawn')"
        )
        .await,
        0,
        "every job belongs to one spawn decision"
    );
    let (batched, one_at_a_time) = (
        decisions_by_transport_id(&db).await,
        decisions_by_transport_id(&alone).await,
    );
    assert_eq!(batched.len(), one_at_a_time.len());
    for (b, a) in batched.iter().zip(&one_at_a_time) {
        assert_eq!(b, a, "batched vs one at a time");
    }
}

#[tokio::test]
async fn killed_inside_a_batch_sqlite() {
    let (db, url, _dir) = common::sqlite().await;
    let (alone, alone_url, _alone_dir) = common::sqlite().await;
    killed_inside_a_batch(db, &url, alone, &alone_url).await;
}

#[tokio::test]
async fn killed_inside_a_batch_postgres() {
    let (db, guard) = common::postgres("crash_batch").await;
    let (alone, alone_guard) = common::postgres("crash_batch_alone").await;
    killed_inside_a_batch(db, &guard.url.clone(), alone, &alone_guard.url.clone()).await;
}

/// Killed while the candidate policy decides in shadow (inside the decision's transaction):
/// neither the decision nor the evaluation is kept, and after the restart there is exactly one
/// of each, with the candidate's shadow ticket recorded once.
async fn killed_inside_shadow_evaluation(db: Db, url: &str) {
    let (status, out, err) = common::conductor(
        &["flags", "set", "candidate=window=30m"],
        &[("CONDUCTOR_DATABASE_URL", url)],
    );
    assert!(status.success(), "{out}{err}");
    kill_and_restart(db.clone(), url, "shadow.decide", (1, 0, 0, 1), 2).await;
    assert_eq!(
        common::count(
            &db,
            "SELECT COUNT(*) FROM shadow_evaluations WHERE verdict = 'AGREE'"
        )
        .await,
        1
    );
    assert_eq!(
        common::count(&db, "SELECT COUNT(*) FROM shadow_tickets").await,
        1
    );
}

#[tokio::test]
async fn killed_inside_shadow_evaluation_sqlite() {
    let (db, url, _dir) = common::sqlite().await;
    killed_inside_shadow_evaluation(db, &url).await;
}

#[tokio::test]
async fn killed_inside_shadow_evaluation_postgres() {
    let (db, guard) = common::postgres("crash_shadow").await;
    let url = guard.url.clone();
    killed_inside_shadow_evaluation(db, &url).await;
}
