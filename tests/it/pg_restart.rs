//! A Postgres restart in the middle of a run (docs/design.md section 6): every connection the conductor
//! holds is cut while agents work and messages wait. The conductor reconnects by itself and
//! ends with the same result as an undisturbed run: one job, one attempt and one pull request
//! per ticket, every duplicate recorded as one.
//!
//! It runs a private Postgres server (initdb as the `postgres` user) that it restarts, leaving
//! the shared server, and the tests running beside it, alone. Alone:
//! `cargo test --locked --test it -- pg_restart`.

use crate::common;

use common::{jobs::Bench, PrivatePostgres};
use conductor::{db::Db, scenario::gen};

const TICKETS: usize = 6;

#[tokio::test(flavor = "multi_thread")]
async fn the_conductor_rides_out_a_postgres_restart() {
    let pg = PrivatePostgres::start();
    let url = pg.create_database("conductor").await;
    let db = Db::connect(&url).await.unwrap();
    // Every ticket goes to the one default repository, so the jobs run one after another and
    // the restart lands while some are done, one works and the rest wait for the claim.
    let mut bench = Bench::on_database(db, url, "slow", |c, _| {
        c.worker.agent_command.push_str(" 1");
        // A step whose task the restart lost is queued again well within the test's waits.
        c.jobs.stalled_after = std::time::Duration::from_secs(30);
    })
    .await;
    let mut messages: Vec<(String, String)> = (0..TICKETS)
        .map(|i| {
            (
                format!("t-{i}"),
                gen::ticket(&format!("RST-{i}"), "restart", None),
            )
        })
        .collect();
    // A duplicate of each of the first three, under another transport id.
    for i in 0..3 {
        messages.push((
            format!("dup-{i}"),
            gen::ticket(&format!("RST-{i}"), "restart", None),
        ));
    }
    bench.submit_bodies(&messages);
    bench.start();
    bench
        .wait_for(
            "SELECT COUNT(*) FROM agent_jobs WHERE state = 'succeeded'",
            2,
        )
        .await;

    pg.restart();

    bench
        .wait_for(
            "SELECT COUNT(*) FROM agent_jobs WHERE state = 'succeeded'",
            TICKETS as i64,
        )
        .await;
    assert!(
        bench.running(),
        "the conductor died with the database connection\n{}",
        common::jobs::tail(&bench.logs(), 6000)
    );
    // The restart really happened mid-run: jobs still finished after the server came back,
    // so the conductor worked on through new connections. (Whether a queue worker noticed the
    // outage, and logged its replacement, depends on where each was when the server went.)
    assert!(
        bench
            .count(
                "SELECT COUNT(*) FROM agent_jobs WHERE state = 'succeeded' \
                 AND updated_ms > CAST(EXTRACT(EPOCH FROM pg_postmaster_start_time()) * 1000 AS BIGINT)"
            )
            .await
            >= 1,
        "no job finished after the restart\n{}",
        common::jobs::tail(&bench.logs(), 6000)
    );
    // The same result an undisturbed run has.
    assert_eq!(
        bench.count("SELECT COUNT(*) FROM agent_jobs").await,
        TICKETS as i64
    );
    assert_eq!(
        bench.count("SELECT COUNT(*) FROM job_attempts").await,
        TICKETS as i64,
        "{}",
        common::jobs::tail(&bench.logs(), 6000)
    );
    assert_eq!(bench.posts_to("/repos/acme/app/pulls").await.len(), TICKETS);
    assert_eq!(
        bench.count("SELECT COUNT(*) FROM decisions").await,
        messages.len() as i64
    );
    assert_eq!(
        bench
            .count("SELECT COUNT(*) FROM decisions WHERE decision = 'duplicate'")
            .await,
        3
    );
    bench.stop();
}
