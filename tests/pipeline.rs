//! The live pipeline: messages submitted to the inbox flow through the ingest and decide steps
//! as apalis tasks (real workers, real queues) on SQLite and Postgres, and decide as the
//! replay does.

mod common;

use std::{sync::Arc, time::Duration};

use conductor::{
    context::Env,
    db::Db,
    inbox,
    runtime::{self, RunOptions},
    workflows::engine,
};
use tokio::sync::watch;

async fn run_until_idle(db: &Db) {
    let env = Arc::new(Env::new(db.clone(), conductor::config::Config::default()).unwrap());
    let (stop_tx, stop_rx) = watch::channel(false);
    let opts = RunOptions {
        poll_interval: Duration::from_millis(20),
        heartbeat: Duration::from_secs(2),
        ..RunOptions::default()
    };
    let pool = tokio::spawn(runtime::run(env, opts, stop_rx, runtime::always_open()));
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
    // The redelivery's run ended at ingest: 5 ingest steps, 4 decide steps, all done.
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
    let sections =
        conductor::history::show(&db, &conductor::history::Subject::Ticket("PAY-43".into()))
            .await
            .unwrap();
    let text = conductor::history::render(&sections);
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
        match engine::begin_step(&db, run, "ingest", 1, 1).await.unwrap() {
            engine::Begin::Run(r) => runs.push(r),
            engine::Begin::Skip(why) => panic!("skipped: {why}"),
        }
    }
    // ...the first completes (queuing decide),
    let mut tx = db.begin().await.unwrap();
    engine::complete_step(
        &mut tx,
        &runs[0],
        conductor::workflows::Transition::Next(serde_json::json!({})),
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
        conductor::workflows::Transition::Next(serde_json::json!({})),
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
        engine::begin_step(&db, run, "ingest", 1, 5).await.unwrap(),
        engine::Begin::Skip(_)
    ));
}
