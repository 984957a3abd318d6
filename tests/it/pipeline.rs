//! The live pipeline: messages submitted to the inbox flow through the ingest and decide steps
//! as apalis tasks (real workers, real queues) on SQLite and Postgres, and decide as the
//! replay does.

use crate::common;

use std::{sync::Arc, time::Duration};

use conductor::{
    context::Env,
    db::Db,
    engine,
    intake::inbox,
    runtime::{self, RunOptions},
};
use tokio::sync::watch;

async fn run_until_idle(db: &Db) {
    run_until_idle_with(db, conductor::config::Config::default()).await;
}

/// The queue consumers running on `db` with `opts` until the returned sender says stop.
fn start_consumers(
    db: &Db,
    mut config: conductor::config::Config,
    opts: RunOptions,
) -> (
    watch::Sender<bool>,
    tokio::task::JoinHandle<Result<(), conductor::Error>>,
) {
    // An incident's job would otherwise settle for two minutes before failing on "no route".
    config.incidents.settle = Duration::ZERO;
    let env = Arc::new(Env::new(db.clone(), config).unwrap());
    let (stop_tx, stop_rx) = watch::channel(false);
    let pool = tokio::spawn(runtime::run(env, opts, stop_rx, runtime::always_open()));
    (stop_tx, pool)
}

async fn run_until_idle_with(db: &Db, config: conductor::config::Config) {
    let opts = RunOptions {
        poll_interval: Duration::from_millis(20),
        heartbeat: Duration::from_secs(2),
        ..RunOptions::default()
    };
    let (stop_tx, pool) = start_consumers(db, config, opts);
    for _ in 0..600 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if engine::runs_in_flight(db).await.unwrap() == 0 {
            break;
        }
    }
    stop_tx.send(true).unwrap();
    pool.await.unwrap().unwrap();
}

async fn check_pipeline(db: Db) {
    let samples = common::samples();
    // Tickets only: their decisions cannot depend on the order concurrent workers take them in.
    let files = [
        "ticket-bare.json",
        "ticket-webhook-created.json",
        "ticket-webhook-updated.json",
        "rejected/not-json.txt",
    ];
    let paths: Vec<_> = files.iter().map(|f| samples.join(f)).collect();
    let messages = inbox::read_inputs(&paths).unwrap();
    inbox::submit(&db, &messages, "inbox").await.unwrap();
    inbox::submit(&db, &messages[..1], "inbox").await.unwrap(); // a redelivery
    run_until_idle(&db).await;

    assert_eq!(
        common::count(
            &db,
            "SELECT COUNT(*) FROM runs WHERE status = 'done' AND workflow = 'message'"
        )
        .await,
        5
    );
    // Each spawn started its job workflow; with no route configured, each job ends at claim
    // as failed, saying so.
    assert_eq!(
        common::count(
            &db,
            "SELECT COUNT(*) FROM runs WHERE status = 'done' AND workflow = 'job'"
        )
        .await,
        2
    );
    assert_eq!(
        common::count(
            &db,
            "SELECT COUNT(*) FROM agent_jobs WHERE state = 'failed' AND outcome LIKE '%no route%'"
        )
        .await,
        2
    );
    assert_eq!(common::count(&db, "SELECT COUNT(*) FROM messages").await, 4);
    assert_eq!(
        common::count(&db, "SELECT COUNT(*) FROM decisions").await,
        4
    );
    assert_eq!(
        common::count(
            &db,
            "SELECT COUNT(*) FROM decisions WHERE decision = 'spawn'"
        )
        .await,
        2
    );
    assert_eq!(
        common::count(
            &db,
            "SELECT COUNT(*) FROM decisions WHERE decision = 'duplicate'"
        )
        .await,
        1
    );
    assert_eq!(common::count(&db, "SELECT COUNT(*) FROM rejected").await, 1);
    assert_eq!(
        common::count(&db, "SELECT COUNT(*) FROM agent_jobs").await,
        2
    );
    // The transport did every run's ingest; the redelivery's run ended there: 5 ingest steps,
    // 4 decide steps, all done, and no ingest task was ever queued.
    assert_eq!(
        common::count(
            &db,
            "SELECT COUNT(*) FROM steps WHERE step = 'ingest' AND status = 'done'"
        )
        .await,
        5
    );
    assert_eq!(
        common::count(
            &db,
            "SELECT COUNT(*) FROM steps WHERE step = 'decide' AND status = 'done'"
        )
        .await,
        4
    );
    // The history views answer plain SQL.
    assert_eq!(
        common::count(
            &db,
            "SELECT COUNT(*) FROM message_history WHERE deliveries = 2"
        )
        .await,
        1
    );
    assert_eq!(
        common::count(
            &db,
            "SELECT sightings FROM ticket_history WHERE key = 'PAY-43'"
        )
        .await,
        2
    );
    let sections = conductor::jobs::history::show(
        &db,
        &conductor::jobs::history::Subject::Ticket("PAY-43".into()),
    )
    .await
    .unwrap();
    let text = conductor::jobs::history::render(&sections);
    assert!(
        text.contains("jira:") || text.contains("duplicate"),
        "{text}"
    );
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_on_sqlite() {
    let (db, _, _dir) = common::sqlite().await;
    check_pipeline(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_on_postgres() {
    let (db, _guard) = common::postgres("pipeline").await;
    check_pipeline(db).await;
}

/// On Postgres one listener a process relays apalis's insert NOTIFY to the consumers of the
/// pushed task's queue: a push committed on any connection wakes them at once (not at their
/// heartbeat's fetch), and the consumers of another queue are not woken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_on_postgres_wakes_the_consumers_of_its_queue() {
    use futures::StreamExt;
    let (db, _guard) = common::postgres("relay").await;
    let Db::Postgres(pool) = &db else {
        unreachable!("a Postgres database")
    };
    let queue = format!("relay-test-{}", std::process::id());
    let mut wakes = engine::wake::subscribe(&queue);
    let mut other = engine::wake::subscribe(&format!("{queue}-other"));
    let (stop_tx, stop) = watch::channel(false);
    let listener = engine::wake::listen(pool).await.unwrap();
    let relay = tokio::spawn(engine::wake::relay_notifies(listener, Vec::new(), stop));
    let mut tx = pool.begin().await.unwrap();
    let task = apalis_core::task::builder::TaskBuilder::new(b"{}".to_vec()).build();
    apalis_postgres::queries::push_tasks(&mut *tx, &queue, vec![task])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), wakes.next())
        .await
        .expect("the push woke its queue's consumer")
        .expect("a wake-up");
    assert_eq!(
        futures::future::poll_immediate(other.next()).await,
        None,
        "another queue's consumer is not woken"
    );
    stop_tx.send(true).unwrap();
    relay.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_that_keeps_failing_is_given_up_and_recorded() {
    let (db, _, _dir) = common::sqlite().await;
    // A run whose input is not an inbox message: ingest fails fatally, once, with the reason.
    let mut tx = db.begin().await.unwrap();
    engine::start_run(
        &mut tx,
        &conductor::workflows::message::MESSAGE,
        &serde_json::json!({"nope": 1}),
        0,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    run_until_idle(&db).await;
    assert_eq!(
        common::count(&db, "SELECT COUNT(*) FROM runs WHERE status = 'failed'").await,
        1
    );
    assert_eq!(
        common::count(&db, "SELECT attempts FROM steps WHERE step = 'ingest'").await,
        1
    );
    let error: String =
        conductor::with_pool!(&db, |p| sqlx::query_scalar("SELECT error FROM steps")
            .fetch_one(p)
            .await
            .unwrap());
    assert!(error.contains("not an inbox message"), "{error}");
}

#[tokio::test]
async fn a_losing_duplicate_execution_does_not_fail_a_completed_step() {
    let (db, _, _dir) = common::sqlite().await;
    let wf = &conductor::workflows::message::MESSAGE;
    let mut tx = db.begin().await.unwrap();
    let run = engine::start_run(&mut tx, wf, &serde_json::json!({}), 0)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // Two executions of the same ingest task (generation 1) both start...
    let mut runs = Vec::new();
    for _ in 0..2 {
        match engine::begin_step(&db, conductor::workflows::ALL, run, "ingest", 1, 1)
            .await
            .unwrap()
        {
            engine::Begin::Run(r) => runs.push(r),
            engine::Begin::Skip(why) => panic!("skipped: {why}"),
        }
    }
    // ...the first completes (queuing decide),
    let mut tx = db.begin().await.unwrap();
    engine::complete_step(
        &mut tx,
        &runs[0],
        conductor::engine::Transition::Next(serde_json::json!({})),
        2,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    // the second cannot complete it again, and its failure leaves the run and the step alone.
    let mut tx = db.begin().await.unwrap();
    let again = engine::complete_step(
        &mut tx,
        &runs[1],
        conductor::engine::Transition::Next(serde_json::json!({})),
        3,
    )
    .await;
    // It is told it was superseded (not a failure: the runtime ends it without the run's
    // failure path, which for a job would stop its worker).
    assert!(
        matches!(again, Err(conductor::error::Error::Superseded(_))),
        "{again:?}"
    );
    drop(tx);
    engine::record_error(&db, run, "ingest", "completed concurrently", true, 4)
        .await
        .unwrap();
    assert_eq!(
        common::count(&db, "SELECT COUNT(*) FROM runs WHERE status = 'running'").await,
        1
    );
    assert_eq!(
        common::count(
            &db,
            "SELECT COUNT(*) FROM steps WHERE step = 'ingest' AND status = 'done'"
        )
        .await,
        1
    );
    assert_eq!(
        common::count(
            &db,
            "SELECT COUNT(*) FROM steps WHERE step = 'decide' AND status = 'queued'"
        )
        .await,
        1
    );
    // And a third start of the finished step is skipped.
    assert!(matches!(
        engine::begin_step(&db, conductor::workflows::ALL, run, "ingest", 1, 5)
            .await
            .unwrap(),
        engine::Begin::Skip(_)
    ));
}

/// Bodies no transport should send, and a transport id reused with another body: every one is
/// stored (its raw bytes kept where its text cannot hold them) and decided, on the live
/// pipeline and in a replay, on both databases. Nothing fails at ingest for its content.
async fn check_every_input_decided(db: Db, replay_db: Db) {
    use conductor::scheduling::domain::RawMessage;
    let msg = |id: &str, body: &str| RawMessage {
        transport_id: id.into(),
        body: body.into(),
        raw: None,
    };
    let alarm = conductor::scenario::gen::eventbridge_alarm(
        "ev-nul",
        "1234\u{0}56789012",
        "cpu\u{0}-high\u{1b}[2J",
        "ALARM",
        conductor::scenario::gen::BASE_MS,
    );
    let messages = vec![
        // A NUL escape in the key, the summary and the project: accepted, NUL removed.
        msg(
            "nul-key",
            r#"{"key":"NUL-\u00001","fields":{"summary":"a\u0000b","project":{"key":"N\u0000UL"}}}"#,
        ),
        // An ANSI escape in a key: accepted without the escape character.
        msg(
            "ansi-key",
            "{\"key\":\"\\u001b[31mRED-1\",\"fields\":{\"summary\":\"red\"}}",
        ),
        // NUL in the account and the alarm name of an alarm (escaped in the JSON text).
        msg(
            "nul-alarm",
            &alarm
                .replace("\u{0}", "\\u0000")
                .replace('\u{1b}', "\\u001b"),
        ),
        // A raw NUL character in the body: not JSON, rejected; its bytes kept.
        msg("raw-nul", "{\"key\":\"RAW-1\u{0}\"}"),
        // A key that is nothing but control characters: no identity.
        msg("only-nul", r#"{"key":"\u0000\u0007","fields":{}}"#),
        // Not UTF-8 at all.
        RawMessage::from_bytes("not-utf8".into(), b"{\"key\":\"BAD-\xff\xfe1\"}".to_vec()),
        // An id reused with another body, and then its first body again (a redelivery).
        msg("reused", r#"{"key":"FIRST-1","fields":{}}"#),
        msg("reused", r#"{"key":"SECOND-1","fields":{}}"#),
        msg("reused", r#"{"key":"FIRST-1","fields":{}}"#),
    ];
    // One at a time: which body of the reused id counts as the first is arrival order.
    for m in &messages {
        inbox::submit(&db, std::slice::from_ref(m), "inbox")
            .await
            .unwrap();
        run_until_idle(&db).await;
    }
    let count = |db: &Db, sql: &'static str| {
        let db = db.clone();
        async move { common::count(&db, sql).await }
    };
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM runs WHERE status = 'failed'").await,
        0
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM messages").await, 8);
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM messages m WHERE NOT EXISTS (SELECT 1 FROM decisions d WHERE d.message_id = m.id)").await,
        0,
        "a stored message has no decision"
    );
    let keys: Vec<String> = conductor::with_pool!(&db, |p| sqlx::query_scalar(
        "SELECT key FROM tickets ORDER BY key"
    )
    .fetch_all(p)
    .await
    .unwrap());
    assert_eq!(keys, ["FIRST-1", "NUL-1", "[31mRED-1"]);
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM alarms WHERE account = '123456789012' AND alarm_name = 'cpu-high[2J'").await,
        1
    );
    let reasons: Vec<String> = conductor::with_pool!(&db, |p| sqlx::query_scalar(
        "SELECT r.reason FROM rejected r JOIN messages m ON m.id = r.message_id ORDER BY m.id"
    )
    .fetch_all(p)
    .await
    .unwrap());
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    assert!(reasons[0].starts_with("not JSON"), "{reasons:?}");
    assert!(
        reasons[1].contains("neither a `key` nor an `id`"),
        "{reasons:?}"
    );
    assert!(
        reasons[2].starts_with("body is not UTF-8 text"),
        "{reasons:?}"
    );
    assert!(
        reasons[3].starts_with("id reused with a different body"),
        "{reasons:?}"
    );
    // The raw bytes of the two bodies whose text could not hold them.
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM messages WHERE raw IS NOT NULL").await,
        2
    );
    // Both bodies of the reused id are kept; the third delivery is a redelivery of the first.
    assert_eq!(
        count(
            &db,
            "SELECT deliveries FROM messages WHERE transport_id = 'reused'"
        )
        .await,
        2
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM messages WHERE reuses IS NOT NULL"
        )
        .await,
        1
    );

    // A replay of the same stream decides the same, on this backend too.
    let sched = conductor::scheduling::flags::Scheduling::only(
        conductor::scheduling::policy::Policy::default(),
    );
    let report = conductor::scenario::replay::replay_with(
        &replay_db,
        &sched,
        &messages,
        100,
        conductor::scenario::replay::StoreMode::Auto,
    )
    .await
    .unwrap();
    let rejected = report
        .decisions
        .iter()
        .filter(|l| l.decision == "rejected")
        .count();
    let redelivered = report
        .decisions
        .iter()
        .filter(|l| l.decision == "redelivered")
        .count();
    assert_eq!((rejected, redelivered), (4, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_input_is_decided_on_sqlite() {
    let (db, _, _dir) = common::sqlite().await;
    let (replay_db, _, _dir2) = common::sqlite().await;
    check_every_input_decided(db, replay_db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_input_is_decided_on_postgres() {
    let (db, _guard) = common::postgres("bytes").await;
    let (replay_db, _guard2) = common::postgres("bytes_replay").await;
    check_every_input_decided(db, replay_db).await;
}

/// A step whose queue task is lost (a database restart can cut the acknowledgement apalis
/// never retries) is found by the stall sweep and queued again: the message is still decided.
async fn check_a_lost_task_is_queued_again(db: Db) {
    let samples = common::samples();
    let messages = inbox::read_inputs(&[samples.join("ticket-bare.json")]).unwrap();
    inbox::submit(&db, &messages, "inbox").await.unwrap();
    // The decide step is queued (the transport did ingest); its task vanishes.
    let lost = match &db {
        Db::Sqlite(p) => sqlx::query("DELETE FROM Jobs")
            .execute(p)
            .await
            .unwrap()
            .rows_affected(),
        Db::Postgres(p) => sqlx::query("DELETE FROM apalis.jobs")
            .execute(p)
            .await
            .unwrap()
            .rows_affected(),
    };
    assert_eq!(lost, 1);
    let mut config = conductor::config::Config::default();
    config.jobs.stalled_after = Duration::from_secs(1);
    run_until_idle_with(&db, config).await;
    assert_eq!(
        common::count(&db, "SELECT COUNT(*) FROM decisions").await,
        1,
        "the message was never decided"
    );
    assert_eq!(
        common::count(&db, "SELECT COUNT(*) FROM runs WHERE status <> 'done'").await,
        0
    );
    // Queued again under a new generation, so the lost task would be skipped if it came back.
    assert!(common::count(&db, "SELECT seq FROM steps WHERE step = 'decide'").await >= 2);
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_task_is_queued_again_on_sqlite() {
    let (db, _, _dir) = common::sqlite().await;
    check_a_lost_task_is_queued_again(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_task_is_queued_again_on_postgres() {
    let (db, _guard) = common::postgres("lost_task").await;
    check_a_lost_task_is_queued_again(db).await;
}

/// A queue consumer that stops heartbeating (wedged: here its heartbeat waits on a row lock the
/// test holds, so it fetches nothing; after a Postgres restart, seen waiting for a wake-up that never came) is dropped
/// and replaced, and its queue is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_queue_consumer_is_replaced() {
    use sqlx::Connection;
    let (db, _guard) = common::postgres("wedged").await;
    let Db::Postgres(pool) = &db else {
        unreachable!()
    };
    let mut config = conductor::config::Config::default();
    config.incidents.settle = Duration::ZERO;
    let env = Arc::new(Env::new(db.clone(), config).unwrap());
    let (stop_tx, stop_rx) = watch::channel(false);
    let opts = RunOptions {
        poll_interval: Duration::from_millis(20),
        heartbeat: Duration::from_millis(200),
        ..RunOptions::default()
    };
    let workers = tokio::spawn(runtime::run(env, opts, stop_rx, runtime::always_open()));
    let ingest_workers =
        "SELECT COUNT(*) FROM apalis.workers WHERE worker_type = 'conductor.ingest'";
    common::wait_until(|| async { common::count(&db, ingest_workers).await >= 1 }).await;
    // Another connection locks the ingest worker's row: its heartbeat blocks, and so does the
    // worker.
    let mut locker = sqlx::PgConnection::connect_with(&pool.connect_options())
        .await
        .unwrap();
    let mut lock = locker.begin().await.unwrap();
    // NO KEY UPDATE: it blocks the heartbeat's update and nothing else (a task's lock_by
    // still points at the row).
    sqlx::query(
        "SELECT id FROM apalis.workers WHERE worker_type = 'conductor.ingest' FOR NO KEY UPDATE",
    )
    .fetch_all(&mut *lock)
    .await
    .unwrap();
    common::wait_until(|| async {
        common::count(
            &db,
            "SELECT COUNT(*) FROM apalis.workers WHERE worker_type = 'conductor.ingest' \
             AND NOW() - last_seen > INTERVAL '1 second'",
        )
        .await
            == 1
    })
    .await;
    // A message arrives while it is wedged.
    let messages = inbox::read_inputs(&[common::samples().join("ticket-bare.json")]).unwrap();
    inbox::submit(&db, &messages, "inbox").await.unwrap();
    // A new worker takes the queue, and the message is decided although the lock still holds.
    common::wait_until(|| async { common::count(&db, ingest_workers).await >= 2 }).await;
    common::wait_until(|| async {
        common::count(&db, "SELECT COUNT(*) FROM decisions").await == 1
    })
    .await;
    lock.rollback().await.unwrap();
    stop_tx.send(true).unwrap();
    workers.await.unwrap().unwrap();
    db.close().await;
}

/// A message stored by this process wakes the decide consumer at once: with a poll interval
/// of an hour, each of several messages submitted one after another is still decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_message_wakes_its_consumer_without_a_poll_on_sqlite() {
    let (db, _, _dir) = common::sqlite().await;
    let opts = RunOptions {
        poll_interval: Duration::from_secs(3600),
        steps: vec!["decide".into()],
        ..RunOptions::default()
    };
    let (stop_tx, pool) = start_consumers(&db, conductor::config::Config::default(), opts);
    let samples = common::samples();
    let messages = inbox::read_inputs(&[
        samples.join("ticket-bare.json"),
        samples.join("ticket-webhook-created.json"),
        samples.join("rejected/not-json.txt"),
    ])
    .unwrap();
    for (i, m) in messages.iter().enumerate() {
        inbox::submit(&db, std::slice::from_ref(m), "inbox")
            .await
            .unwrap();
        let decided = i as i64 + 1;
        common::wait_until(|| async {
            common::count(&db, "SELECT COUNT(*) FROM decisions").await == decided
        })
        .await;
    }
    stop_tx.send(true).unwrap();
    pool.await.unwrap().unwrap();
}

/// Finished queue tasks are deleted as the pipeline runs (their history is the step rows),
/// and failed ones are kept.
async fn check_finished_tasks_are_pruned(db: Db) {
    let (done, all) = match &db {
        Db::Sqlite(_) => (
            "SELECT COUNT(*) FROM Jobs WHERE status = 'Done'",
            "SELECT COUNT(*) FROM Jobs WHERE status NOT IN ('Failed', 'Killed')",
        ),
        Db::Postgres(_) => (
            "SELECT COUNT(*) FROM apalis.jobs WHERE status = 'Done'",
            "SELECT COUNT(*) FROM apalis.jobs WHERE status NOT IN ('Failed', 'Killed')",
        ),
    };
    let samples = common::samples();
    let messages = inbox::read_inputs(&[
        samples.join("ticket-bare.json"),
        samples.join("rejected/not-json.txt"),
    ])
    .unwrap();
    inbox::submit(&db, &messages, "inbox").await.unwrap();
    run_until_idle(&db).await;
    assert!(common::count(&db, done).await > 0, "tasks finished");
    // Pruned now (age 0): every finished task goes, the step rows stay.
    let pruned = engine::prune_finished_tasks(&db, 0, 1000).await.unwrap();
    assert!(pruned > 0);
    assert_eq!(common::count(&db, done).await, 0);
    assert_eq!(
        common::count(&db, all).await,
        0,
        "no task left but failed ones"
    );
    assert_eq!(
        common::count(
            &db,
            "SELECT COUNT(*) FROM steps WHERE step = 'decide' AND status = 'done'"
        )
        .await,
        2
    );
    // And by the running conductor, once they are a few seconds old.
    inbox::submit(&db, &messages[..1], "inbox").await.unwrap();
    let msg = inbox::read_inputs(&[samples.join("ticket-webhook-created.json")]).unwrap();
    inbox::submit(&db, &msg, "inbox").await.unwrap();
    let opts = RunOptions {
        poll_interval: Duration::from_millis(20),
        ..RunOptions::default()
    };
    let (stop_tx, pool) = start_consumers(&db, conductor::config::Config::default(), opts);
    common::wait_until(|| async {
        common::count(&db, "SELECT COUNT(*) FROM decisions").await == 3
            && engine::runs_in_flight(&db).await.unwrap() == 0
            && common::count(&db, all).await == 0
    })
    .await;
    stop_tx.send(true).unwrap();
    pool.await.unwrap().unwrap();
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_tasks_are_pruned_on_sqlite() {
    let (db, _, _dir) = common::sqlite().await;
    check_finished_tasks_are_pruned(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_tasks_are_pruned_on_postgres() {
    let (db, _guard) = common::postgres("prune").await;
    check_finished_tasks_are_pruned(db).await;
}

/// `conductor bench decide` measures every path it names, on both backends, and each figure
/// counts the events it was given (tiny sizes: this checks the paths, not their speed).
#[test]
fn bench_decide_measures_every_path_on_both_backends() {
    let admin = common::postgres_admin_url();
    let (status, stdout, stderr) = common::conductor(
        &[
            "bench",
            "decide",
            "--events",
            "300",
            "--statement-events",
            "200",
            "--postgres-events",
            "200",
            "--pipeline-events",
            "200",
            "--latency-messages",
            "30",
            "--rate",
            "50",
            "--clients",
            "2,3",
            "--postgres",
            &admin,
            "--json",
        ],
        &[],
    );
    assert!(status.success(), "{stderr}");
    let figures: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    let events = |prefix: &str| -> Vec<u64> {
        figures
            .iter()
            .filter(|f| f["name"].as_str().unwrap().starts_with(prefix))
            .map(|f| f["events"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(events("sqlite replay (write-behind"), [300]);
    assert_eq!(
        events("postgres, 2 clients"),
        [200, 200],
        "with and without a candidate"
    );
    assert_eq!(events("postgres, 3 clients"), [200, 200]);
    assert_eq!(events("sqlite full pipeline"), [200, 200]);
    assert_eq!(events("postgres full pipeline"), [200, 200]);
    // Every first delivery among the 30 but the first (the untimed warm-up) has its latency:
    // the stream's redeliveries have none.
    for backend in ["sqlite", "postgres"] {
        let latency: Vec<_> = figures
            .iter()
            .filter(|f| {
                f["name"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("{backend} inbox -> decision"))
            })
            .collect();
        assert_eq!(latency.len(), 1, "{figures:?}");
        let (n, l) = (
            latency[0]["events"].as_u64().unwrap(),
            &latency[0]["latency_ms"],
        );
        assert!((20..=29).contains(&n), "{n} of 30 timed");
        assert!(l["p50"].as_f64().unwrap() <= l["p99"].as_f64().unwrap());
        assert!(l["p99"].as_f64().unwrap() <= l["max"].as_f64().unwrap());
    }
    assert!(
        figures
            .iter()
            .all(|f| f["per_second"].as_f64().unwrap() > 0.0),
        "{figures:?}"
    );
}
