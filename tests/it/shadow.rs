//! Flags and shadow scheduling (docs/design.md §8), against real SQLite files and real Postgres
//! databases, through the same decide code the live pipeline runs, and through real
//! `conductor` processes.

use crate::common;

use conductor::{
    db::Db,
    scenario::{gen, replay},
    scheduling::decide,
    scheduling::domain::RawMessage,
    scheduling::flags::{Incidents, Scheduling},
    scheduling::policy::{Policy, PolicySpec},
    scheduling::shadow,
};

const MIN: i64 = 60_000;
const T0: i64 = 1_750_000_000_000;

fn alarm(id: &str, account: &str, name: &str, at_ms: i64) -> RawMessage {
    RawMessage {
        transport_id: id.to_owned(),
        body: gen::sns_alarm(id, account, name, "ALARM", at_ms),
        raw: None,
    }
}

fn ticket(id: &str, key: &str) -> RawMessage {
    RawMessage {
        transport_id: id.to_owned(),
        body: gen::ticket(key, "shadow test", None),
        raw: None,
    }
}

fn inline(spec: &str) -> Policy {
    Policy::inline(PolicySpec::parse(spec).unwrap())
}

fn with_candidate(candidate: Policy) -> Scheduling {
    Scheduling {
        candidate: Some(Ok(candidate)),
        ..Scheduling::only(Policy::default())
    }
}

/// A realistic generated stream: tickets with duplicates, alarms with OK transitions,
/// malformed bodies and redeliveries.
fn mixed(count: usize, seed: u64) -> Vec<RawMessage> {
    gen::generate(&gen::GenSpec::Mixed {
        count,
        accounts: 20,
        seed,
    })
    .unwrap()
}

/// Per account `a{k}`, in arrival order: an alarm at T (both policies open), one at T+45m
/// (the hour chains it; 30 minutes opens a second incident: AUTHORITATIVE_EMPTY), a late one
/// at T+20m (within the hour of both: chained; within 30 minutes of both of the candidate's
/// incidents: merged, so DIVERGE), one at T+4h (both open: AGREE), and a ticket (AGREE).
fn thirty_minute_stream(accounts: usize) -> Vec<RawMessage> {
    let mut out = Vec::new();
    for k in 0..accounts {
        let account = format!("{:012}", 100 + k);
        let t = T0 + k as i64 * 10 * 60 * MIN;
        out.push(alarm(&format!("a{k}-0"), &account, "cpu", t));
        out.push(alarm(&format!("a{k}-45"), &account, "cpu", t + 45 * MIN));
        out.push(alarm(&format!("a{k}-20"), &account, "cpu", t + 20 * MIN));
        out.push(alarm(&format!("a{k}-4h"), &account, "cpu", t + 240 * MIN));
        out.push(ticket(&format!("t{k}"), &format!("SHD-{k}")));
    }
    out
}

async fn verdicts(db: &Db) -> std::collections::BTreeMap<String, i64> {
    let rows: Vec<(String, i64)> = conductor::with_pool!(db, |p| sqlx::query_as(
        "SELECT verdict, CAST(COUNT(*) AS BIGINT) FROM shadow_evaluations GROUP BY verdict"
    )
    .fetch_all(p)
    .await
    .unwrap());
    rows.into_iter().collect()
}

/// Every row of Conductor's real tables (not the shadow ones), as text, table by table.
async fn real_tables(db: &Db) -> Vec<(String, Vec<String>)> {
    const REAL: &[&str] = &[
        "messages",
        "rejected",
        "tickets",
        "incidents",
        "alarms",
        "agent_jobs",
        "decisions",
        "flags",
        "runs",
        "steps",
        "job_attempts",
        "repo_claims",
        "forge_records",
    ];
    let mut out = Vec::new();
    for table in REAL {
        let rows: Vec<String> = match db {
            Db::Postgres(p) => sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT row_to_json(t)::text FROM {table} t ORDER BY 1"
            )))
            .fetch_all(p)
            .await
            .unwrap(),
            Db::Sqlite(p) => {
                let cols: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT name FROM pragma_table_info('{table}') ORDER BY cid"
                )))
                .fetch_all(p)
                .await
                .unwrap();
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT json_array({}) FROM {table} ORDER BY 1",
                    cols.join(", ")
                )))
                .fetch_all(p)
                .await
                .unwrap()
            }
        };
        out.push((table.to_string(), rows));
    }
    out
}

async fn replay_into(db: &Db, sched: &Scheduling, messages: &[RawMessage]) -> replay::Report {
    replay::replay_with(db, sched, messages, 50, replay::StoreMode::Statements)
        .await
        .unwrap()
}

#[tokio::test]
async fn without_a_candidate_nothing_is_evaluated_or_stored() {
    let (db, _, _dir) = common::sqlite().await;
    let report = replay_into(&db, &Scheduling::only(Policy::default()), &mixed(500, 3)).await;
    assert!(report.summary.incident_spawns > 0 && report.summary.ticket_spawns > 0);
    for table in [
        "shadow_evaluations",
        "shadow_tickets",
        "shadow_alarms",
        "shadow_incidents",
    ] {
        assert_eq!(
            common::count(&db, &format!("SELECT COUNT(*) FROM {table}")).await,
            0,
            "{table}"
        );
    }
    let r = shadow::report(&db, None, 0, 10).await.unwrap();
    assert!(r.candidates.is_empty() && r.divergences.is_empty());
}

#[tokio::test]
async fn a_candidate_with_identical_behaviour_agrees_on_every_message() {
    let (sqlite, _, _dir) = common::sqlite().await;
    let (pg, _guard) = common::postgres("shadow_same").await;
    let stream = mixed(1500, 7);
    for db in [&sqlite, &pg] {
        let same = Policy::named("same-as-default", PolicySpec::default());
        let report = replay_into(db, &with_candidate(same), &stream).await;
        let decided = common::count(db, "SELECT COUNT(*) FROM decisions").await;
        assert!(decided > 1000, "{decided}");
        assert_eq!(
            verdicts(db).await,
            [("AGREE".to_string(), decided)].into_iter().collect(),
            "{:?}",
            db.backend()
        );
        let r = shadow::report(db, Some("same-as-default"), 0, 10)
            .await
            .unwrap();
        assert_eq!(r.candidates[0].agreement(), Some(1.0));
        let spawns = report.summary.ticket_spawns + report.summary.incident_spawns;
        assert_eq!(r.candidates[0].authoritative_spawns, spawns as i64);
        assert_eq!(r.candidates[0].candidate_spawns, spawns as i64);
        assert!(r.divergences.is_empty());
    }
}

#[tokio::test]
async fn a_thirty_minute_window_diverges_exactly_where_the_stream_says() {
    const ACCOUNTS: usize = 12;
    let (sqlite, _, _dir) = common::sqlite().await;
    let (pg, _guard) = common::postgres("shadow_30m").await;
    for db in [&sqlite, &pg] {
        let report = replay_into(
            db,
            &with_candidate(inline("window=30m")),
            &thirty_minute_stream(ACCOUNTS),
        )
        .await;
        let n = ACCOUNTS as i64;
        // The real decisions are the hour's: spawn, chained, chained, spawn per account.
        assert_eq!(report.summary.incident_spawns as i64, 2 * n);
        assert_eq!(report.summary.chained as i64, 2 * n);
        assert_eq!(
            verdicts(db).await,
            [
                ("AGREE".to_string(), 3 * n),
                ("AUTHORITATIVE_EMPTY".to_string(), n),
                ("DIVERGE".to_string(), n),
            ]
            .into_iter()
            .collect(),
            "{:?}",
            db.backend()
        );
        // The divergences are the late alarms: chained for real, merged by the candidate.
        let r = shadow::report(db, None, 0, 1000).await.unwrap();
        let diverged: Vec<_> = r
            .divergences
            .iter()
            .filter(|d| d.verdict == "DIVERGE")
            .collect();
        assert_eq!(diverged.len(), ACCOUNTS);
        for d in diverged {
            assert!(d.transport_id.ends_with("-20"), "{d:?}");
            assert_eq!(d.authoritative["decision"], "chained");
            assert_eq!(d.candidate_decision.as_ref().unwrap()["decision"], "merged");
        }
        let c = &r.candidates[0];
        assert_eq!((c.authoritative_spawns, c.candidate_spawns), (3 * n, 4 * n));
    }
}

/// Two alarm names in one account: the hour groups the account into one incident; a
/// candidate grouping by account and alarm name keeps a second one for the disk alarms. Both
/// then say `chained` for the second disk alarm, into different incidents: DIVERGE, and the
/// stored pair names the message that opened each.
#[tokio::test]
async fn chaining_into_a_different_incident_diverges() {
    let (sqlite, _, _dir) = common::sqlite().await;
    let (pg, _guard) = common::postgres("shadow_group").await;
    let account = "444444444444";
    let stream = vec![
        alarm("cpu-0", account, "cpu-high", T0),
        alarm("disk-5", account, "disk-full", T0 + 5 * MIN),
        alarm("cpu-10", account, "cpu-high", T0 + 10 * MIN),
        alarm("disk-15", account, "disk-full", T0 + 15 * MIN),
    ];
    for db in [&sqlite, &pg] {
        let report = replay_into(db, &with_candidate(inline("group=account+alarm")), &stream).await;
        assert_eq!(
            (report.summary.incident_spawns, report.summary.chained),
            (1, 3)
        );
        assert_eq!(
            verdicts(db).await,
            [
                ("AGREE".to_string(), 2),
                ("AUTHORITATIVE_EMPTY".to_string(), 1),
                ("DIVERGE".to_string(), 1),
            ]
            .into_iter()
            .collect(),
            "{:?}",
            db.backend()
        );
        let id = |transport: &str| {
            let transport = transport.to_owned();
            async move {
                common::count(
                    db,
                    &format!("SELECT id FROM messages WHERE transport_id = '{transport}'"),
                )
                .await
            }
        };
        let r = shadow::report(db, None, 0, 10).await.unwrap();
        let d = r
            .divergences
            .iter()
            .find(|d| d.verdict == "DIVERGE")
            .unwrap();
        assert_eq!(d.transport_id, "disk-15");
        assert_eq!(d.authoritative["decision"], "chained");
        assert_eq!(d.authoritative["incident_opened_by"], id("cpu-0").await);
        let c = d.candidate_decision.as_ref().unwrap();
        assert_eq!(c["decision"], "chained");
        assert_eq!(c["incident_opened_by"], id("disk-5").await);
        // The CPU alarm chained by both joins the incident the same alarm opened: AGREE.
        let agreed: String = conductor::with_pool!(db, |p| {
            sqlx::query_scalar(
            "SELECT e.candidate_detail FROM shadow_evaluations e JOIN messages m ON m.id = e.message_id
             WHERE m.transport_id = 'cpu-10' AND e.verdict = 'AGREE'"
        )
        .fetch_one(p)
        .await
        .unwrap()
        });
        assert!(
            agreed.contains(&format!("\"incident_opened_by\":{}", id("cpu-0").await)),
            "{agreed}"
        );
        let text = r.render();
        assert!(
            text.contains(&format!(
                "chained incident 1 (opened by message {})",
                id("cpu-0").await
            )),
            "{text}"
        );
    }
}

/// A candidate stuck on a lock does not hold up the real decision: another session holds its
/// `shadow_alarms` table for the whole test, the candidate's statement is cancelled after
/// `shadow.timeout`, the evaluation is recorded as ERROR and the decision commits.
#[tokio::test]
async fn a_candidate_stuck_on_a_lock_is_cut_off_and_the_decision_commits() {
    let (pg, _guard) = common::postgres("shadow_stuck").await;
    let Db::Postgres(pool) = &pg else {
        unreachable!()
    };
    let mut blocker = Some(pool.begin().await.unwrap());
    sqlx::query("LOCK TABLE shadow_alarms IN ACCESS EXCLUSIVE MODE")
        .execute(&mut **blocker.as_mut().unwrap())
        .await
        .unwrap();
    let sched = Scheduling {
        candidate_timeout: std::time::Duration::from_millis(100),
        ..with_candidate(inline("window=30m"))
    };
    let stream = vec![
        alarm("stuck-0", "555555555555", "cpu-high", T0),
        ticket("stuck-t", "STK-1"),
    ];
    let mut replay = tokio::spawn({
        let pg = pg.clone();
        async move { replay_into(&pg, &sched, &stream).await }
    });
    // Without the cut-off the replay waits for the lock as long as it is held. It is let go
    // after a while only so that such a failure shows as the wrong verdicts below, not a hang.
    let report = tokio::select! {
        r = &mut replay => r.unwrap(),
        _ = tokio::time::sleep(std::time::Duration::from_secs(30)) => {
            blocker.take().unwrap().rollback().await.unwrap();
            replay.await.unwrap()
        }
    };
    let still_held = blocker.is_some();
    if let Some(b) = blocker.take() {
        b.rollback().await.unwrap();
    }
    assert_eq!(
        (report.summary.incident_spawns, report.summary.ticket_spawns),
        (1, 1)
    );
    assert_eq!(
        verdicts(&pg).await,
        [("AGREE".to_string(), 1), ("ERROR".to_string(), 1)]
            .into_iter()
            .collect()
    );
    let (transport, error): (String, String) = sqlx::query_as(
        "SELECT m.transport_id, e.error FROM shadow_evaluations e JOIN messages m ON m.id = e.message_id
         WHERE e.verdict = 'ERROR'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(transport, "stuck-0");
    assert!(error.contains("statement timeout"), "{error}");
    assert!(
        still_held,
        "the replay finished only once the lock was let go"
    );
    assert_eq!(
        common::count(&pg, "SELECT COUNT(*) FROM shadow_alarms").await,
        0
    );
    // After an evaluation, finished or cut off, the rest of the real transaction runs under
    // the session's own statement_timeout (none) again.
    let sched = Scheduling {
        candidate_timeout: std::time::Duration::from_millis(100),
        ..with_candidate(inline("window=30m"))
    };
    for (k, locked) in [(1, false), (2, true)] {
        let mut blocker = None;
        if locked {
            let mut b = pool.begin().await.unwrap();
            sqlx::query("LOCK TABLE shadow_alarms IN ACCESS EXCLUSIVE MODE")
                .execute(&mut *b)
                .await
                .unwrap();
            blocker = Some(b);
        }
        let m = alarm(
            &format!("after-{k}"),
            "555555555555",
            "cpu-high",
            T0 + k * MIN,
        );
        let mut tx = pg.begin().await.unwrap();
        let d = decide::deliver(
            &mut conductor::scheduling::store::sql::Tables::real(&mut tx),
            &sched,
            &m.transport_id,
            "test",
            &m.body,
            T0,
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(d.decision.as_str(), "chained");
        let setting: String = conductor::with_conn!(&mut tx, |c| sqlx::query_scalar(
            "SELECT current_setting('statement_timeout')"
        )
        .fetch_one(c)
        .await
        .unwrap());
        assert_eq!(setting, "0", "locked: {locked}");
        tx.commit().await.unwrap();
        if let Some(b) = blocker {
            b.rollback().await.unwrap();
        }
    }
    assert_eq!(
        verdicts(&pg).await,
        [
            ("AGREE".to_string(), 1),
            ("ERROR".to_string(), 2),
            ("AUTHORITATIVE_EMPTY".to_string(), 1)
        ]
        .into_iter()
        .collect()
    );
}

#[tokio::test]
async fn a_tickets_only_candidate_leaves_every_incident_spawn_empty() {
    let (db, _, _dir) = common::sqlite().await;
    replay_into(
        &db,
        &with_candidate(inline("tickets-only")),
        &thirty_minute_stream(5),
    )
    .await;
    assert_eq!(
        verdicts(&db).await,
        [
            ("AGREE".to_string(), 5),            // tickets
            ("CANDIDATE_EMPTY".to_string(), 10), // the alarms that open incidents
            ("DIVERGE".to_string(), 10),         // chained against ignored
        ]
        .into_iter()
        .collect()
    );
}

#[tokio::test]
async fn the_report_counts_match_the_stored_rows() {
    let (pg, _guard) = common::postgres("shadow_report").await;
    let mut stream = mixed(800, 11);
    stream.extend(thirty_minute_stream(6));
    let report = replay_into(
        &pg,
        &with_candidate(inline("window=30m,max_age=2h")),
        &stream,
    )
    .await;
    let r = shadow::report(&pg, None, 0, 7).await.unwrap();
    assert_eq!(r.candidates.len(), 1);
    let c = &r.candidates[0];
    let count = |sql: String| {
        let pg = pg.clone();
        async move { common::count(&pg, &sql).await }
    };
    for (verdict, got) in [
        ("AGREE", c.agree),
        ("DIVERGE", c.diverge),
        ("CANDIDATE_EMPTY", c.candidate_empty),
        ("AUTHORITATIVE_EMPTY", c.authoritative_empty),
        ("ERROR", c.error),
    ] {
        let want = count(format!(
            "SELECT COUNT(*) FROM shadow_evaluations WHERE verdict = '{verdict}'"
        ))
        .await;
        assert_eq!(got, want, "{verdict}");
    }
    assert_eq!(
        c.evaluated,
        count("SELECT COUNT(*) FROM decisions".into()).await
    );
    let spawn_lines = report
        .decisions
        .iter()
        .filter(|l| l.decision == "spawn")
        .count() as i64;
    assert_eq!(c.authoritative_spawns, spawn_lines);
    assert_eq!(
        c.candidate_spawns,
        count("SELECT COUNT(*) FROM shadow_evaluations WHERE candidate_decision = 'spawn'".into())
            .await
    );
    let rate = c.agree as f64 / (c.evaluated - c.error) as f64;
    assert_eq!(c.agreement(), Some(rate));
    assert!(rate < 1.0);
    // The last 7 non-agreements, newest first.
    let newest: Vec<i64> = conductor::with_pool!(&pg, |p| {
        sqlx::query_scalar(
        "SELECT message_id FROM shadow_evaluations WHERE verdict <> 'AGREE' ORDER BY message_id DESC LIMIT 7"
    )
    .fetch_all(p)
    .await
    .unwrap()
    });
    assert_eq!(
        r.divergences
            .iter()
            .map(|d| d.message_id)
            .collect::<Vec<_>>(),
        newest
    );
}

#[tokio::test]
async fn shadow_never_writes_the_real_tables() {
    let stream = {
        let mut s = mixed(1200, 5);
        s.extend(thirty_minute_stream(8));
        s
    };
    let (a, _, _da) = common::sqlite().await;
    let (b, _, _db) = common::sqlite().await;
    let (pa, _ga) = common::postgres("shadow_real_a").await;
    let (pb, _gb) = common::postgres("shadow_real_b").await;
    for (without, with) in [(&a, &b), (&pa, &pb)] {
        replay_into(without, &Scheduling::only(Policy::default()), &stream).await;
        replay_into(
            with,
            &with_candidate(inline("window=30m,group=account+alarm")),
            &stream,
        )
        .await;
        assert!(common::count(with, "SELECT COUNT(*) FROM shadow_incidents").await > 0);
        assert_eq!(real_tables(without).await, real_tables(with).await);
    }
}

#[tokio::test]
async fn a_failing_candidate_leaves_the_real_decisions_as_they_would_have_been() {
    let stream = {
        let mut s = mixed(600, 9);
        s.extend(thirty_minute_stream(4));
        s
    };
    let (a, _, _da) = common::sqlite().await;
    let (b, _, _db) = common::sqlite().await;
    let (pa, _ga) = common::postgres("shadow_err_a").await;
    let (pb, _gb) = common::postgres("shadow_err_b").await;
    let mut plain_decisions = Vec::new();
    for (without, with) in [(&a, &b), (&pa, &pb)] {
        let plain = replay_into(without, &Scheduling::only(Policy::default()), &stream).await;
        if plain_decisions.is_empty() {
            // SQLite's: Postgres sequences skip ids on conflicts, so ids differ by backend.
            plain_decisions = plain.decisions.clone();
        }
        // A broken shadow schema: every candidate decision that needs its incidents fails
        // with a real database error (on Postgres, one that aborts a transaction).
        conductor::with_pool!(with, |p| sqlx::query(
            "ALTER TABLE shadow_incidents RENAME TO shadow_incidents_gone"
        )
        .execute(p)
        .await
        .unwrap()
        .rows_affected());
        let shadowed = replay_into(with, &with_candidate(inline("window=30m")), &stream).await;
        assert_eq!(plain.decisions, shadowed.decisions);
        assert_eq!(real_tables(without).await, real_tables(with).await);
        let v = verdicts(with).await;
        let new_alarms = common::count(
            with,
            "SELECT COUNT(*) FROM decisions WHERE decision IN ('spawn', 'chained', 'merged') AND kind = 'alarm'",
        )
        .await;
        assert_eq!(v.get("ERROR"), Some(&new_alarms), "{v:?}");
        assert!(v.get("AGREE").copied().unwrap_or(0) > 0, "{v:?}");
        let (error,): (String,) = conductor::with_pool!(with, |p| sqlx::query_as(
            "SELECT error FROM shadow_evaluations WHERE verdict = 'ERROR' LIMIT 1"
        )
        .fetch_one(p)
        .await
        .unwrap());
        assert!(error.contains("shadow_incidents"), "{error}");
    }
    // A candidate this replica cannot resolve (another replica's configuration named it) is
    // recorded as an error for every message, and decides nothing.
    let (c, _, _dc) = common::sqlite().await;
    let sched = Scheduling {
        candidate: Some(Err("candidate: no policy named \"elsewhere\"".into())),
        ..Scheduling::only(Policy::default())
    };
    let unresolved = replay_into(&c, &sched, &stream).await;
    assert_eq!(unresolved.decisions, plain_decisions);
    let decided = common::count(&c, "SELECT COUNT(*) FROM decisions").await;
    assert_eq!(
        verdicts(&c).await,
        [("ERROR".to_string(), decided)].into_iter().collect()
    );
}

/// `incidents = off` stores alarms and decides nothing; `shadow` decides and records
/// incidents without agents; back `on`, the next alarm of an incident opened in shadow starts
/// its agent, once.
#[tokio::test]
async fn incidents_off_shadow_on() {
    let (pg, _guard) = common::postgres("incidents_flag").await;
    let run = |incidents: Incidents, m: RawMessage| {
        let pg = pg.clone();
        async move {
            let sched = Scheduling {
                incidents,
                ..Scheduling::only(Policy::default())
            };
            let mut tx = pg.begin().await.unwrap();
            let d = decide::deliver(
                &mut conductor::scheduling::store::sql::Tables::real(&mut tx),
                &sched,
                &m.transport_id,
                "test",
                &m.body,
                T0,
            )
            .await
            .unwrap()
            .unwrap();
            tx.commit().await.unwrap();
            d
        }
    };
    let acct = "123456789012";
    let d = run(Incidents::Off, alarm("off-1", acct, "cpu", T0)).await;
    assert_eq!(d.decision.as_str(), "ignored");
    assert!(d.reason.unwrap().contains("incidents = off"));
    assert_eq!(common::count(&pg, "SELECT COUNT(*) FROM alarms").await, 1);
    assert_eq!(
        common::count(&pg, "SELECT COUNT(*) FROM incidents").await,
        0
    );

    let d = run(Incidents::Shadow, alarm("sh-1", acct, "cpu", T0 + 10 * MIN)).await;
    assert_eq!(
        (d.decision.as_str(), d.job, d.incident.is_some()),
        ("spawn", None, true)
    );
    let d = run(Incidents::Shadow, alarm("sh-2", acct, "cpu", T0 + 20 * MIN)).await;
    assert_eq!((d.decision.as_str(), d.job), ("chained", None));
    // Tickets are unaffected by the flag.
    let d = run(Incidents::Shadow, ticket("tk-1", "INC-1")).await;
    assert!(d.job.is_some());
    assert_eq!(
        common::count(
            &pg,
            "SELECT COUNT(*) FROM agent_jobs WHERE kind = 'incident'"
        )
        .await,
        0
    );

    let d = run(Incidents::On, alarm("on-1", acct, "cpu", T0 + 30 * MIN)).await;
    assert_eq!(d.decision.as_str(), "spawn");
    assert!(d.job.is_some());
    assert!(d.reason.unwrap().contains("opened without an agent"));
    let d = run(Incidents::On, alarm("on-2", acct, "cpu", T0 + 40 * MIN)).await;
    assert_eq!((d.decision.as_str(), d.job.is_some()), ("chained", false));
    assert_eq!(
        common::count(
            &pg,
            "SELECT COUNT(*) FROM agent_jobs WHERE kind = 'incident'"
        )
        .await,
        1
    );
    assert_eq!(
        common::count(&pg, "SELECT COUNT(*) FROM incidents").await,
        1
    );
}

/// A merge carries the agent. An incident opened under `incidents = shadow` has no agent; once
/// the flag is `on`, a later incident gets one, and a bridging alarm merges it into the earlier
/// incident. The next alarm chains into the survivor and must not start a second agent for
/// the merged incident. Checked on the statement store (SQLite and Postgres) and on the
/// write-behind store.
#[tokio::test]
async fn a_merge_carries_the_agent_so_no_second_one_starts() {
    let acct = "123456789012";
    let under_shadow = [alarm("m-1", acct, "cpu", T0)];
    let under_on = [
        alarm("m-2", acct, "cpu", T0 + 120 * MIN), // two hours later: a new incident, an agent
        alarm("m-3", acct, "cpu", T0 + 60 * MIN),  // within the hour of both: merged into the first
        alarm("m-4", acct, "cpu", T0 + 70 * MIN),  // chains into the merged incident
    ];
    let sched = |incidents| Scheduling {
        incidents,
        ..Scheduling::only(Policy::default())
    };
    let (sqlite, _, _d1) = common::sqlite().await;
    let (write_behind, _, _d2) = common::sqlite().await;
    let (pg, _guard) = common::postgres("merge_carries_agent").await;
    for (name, db, mode) in [
        ("sqlite", &sqlite, replay::StoreMode::Statements),
        ("postgres", &pg, replay::StoreMode::Statements),
        (
            "write-behind",
            &write_behind,
            replay::StoreMode::WriteBehind,
        ),
    ] {
        replay::replay_with(db, &sched(Incidents::Shadow), &under_shadow, 50, mode)
            .await
            .unwrap();
        replay::replay_with(db, &sched(Incidents::On), &under_on, 50, mode)
            .await
            .unwrap();
        let decided: Vec<(String, Option<i64>)> = match db {
            Db::Sqlite(p) => {
                sqlx::query_as("SELECT decision, job_id FROM decisions ORDER BY message_id")
                    .fetch_all(p)
                    .await
                    .unwrap()
            }
            Db::Postgres(p) => {
                sqlx::query_as("SELECT decision, job_id FROM decisions ORDER BY message_id")
                    .fetch_all(p)
                    .await
                    .unwrap()
            }
        };
        let kinds: Vec<&str> = decided.iter().map(|(d, _)| d.as_str()).collect();
        assert_eq!(kinds, ["spawn", "spawn", "merged", "chained"], "{name}");
        assert!(
            decided[0].1.is_none() && decided[1].1.is_some(),
            "{name}: {decided:?}"
        );
        assert!(
            decided[2].1.is_none() && decided[3].1.is_none(),
            "{name}: {decided:?}"
        );
        assert_eq!(
            common::count(db, "SELECT COUNT(*) FROM agent_jobs").await,
            1,
            "{name}: one agent for the merged incident"
        );
        assert_eq!(
            common::count(
                db,
                "SELECT COUNT(*) FROM incidents WHERE merged_into IS NULL AND has_agent"
            )
            .await,
            1,
            "{name}: the survivor carries the agent"
        );
    }
}

/// A running conductor follows flags another process sets, message by message, without a
/// restart; and a contradictory configuration is refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flag_set_elsewhere_applies_to_a_running_replica() {
    let mut bench = common::jobs::Bench::new(true, "commit", |c, _| {
        c.policies
            .insert("short".into(), PolicySpec::parse("window=30m").unwrap());
    })
    .await;
    let config = bench.config_path.to_str().unwrap().to_owned();
    let url = bench.url.clone();
    let flags = |args: &[&str]| {
        // The options after the subcommand (`flags set X --database D`), as users type them.
        let mut all = vec!["flags"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--database", &url, "--config", &config]);
        let (status, out, err) = common::conductor(&all, &[]);
        assert!(status.success(), "{out}\n{err}");
        out
    };
    flags(&["set", "incidents=off", "--by", "replica-a"]);
    bench.start();
    let submit = |bench: &common::jobs::Bench, id: &str, at: i64| {
        bench.submit_bodies(&[(
            id.to_owned(),
            gen::sns_alarm(id, "210987654321", "cpu", "ALARM", at),
        )]);
    };
    submit(&bench, "x-1", T0);
    bench.wait_for("SELECT COUNT(*) FROM decisions", 1).await;
    assert_eq!(
        bench.text("SELECT decision FROM decisions").await,
        "ignored"
    );
    let out = flags(&[
        "set",
        "incidents=shadow",
        "candidate=short",
        "--by",
        "replica-a",
    ]);
    assert!(out.contains("incidents: off -> shadow"), "{out}");
    submit(&bench, "x-2", T0 + 5 * 60 * MIN);
    bench.wait_for("SELECT COUNT(*) FROM decisions", 2).await;
    assert_eq!(
        bench
            .text("SELECT decision || ':' || COALESCE(CAST(job_id AS TEXT), '-') FROM decisions ORDER BY message_id DESC LIMIT 1")
            .await,
        "spawn:-"
    );
    assert_eq!(
        bench
            .text("SELECT candidate || ':' || verdict FROM shadow_evaluations")
            .await,
        "short:AGREE"
    );
    let history = flags(&["history"]);
    assert!(
        history.contains("incidents  off -> shadow  by replica-a"),
        "{history}"
    );
    let report = common::conductor(&["shadow-report", "--database", &url], &[]).1;
    assert!(
        report.contains("candidate short (window=30m)") && report.contains("AGREE 1"),
        "{report}"
    );
    let status = common::conductor(&["status", "--database", &url, "--config", &config], &[]).1;
    assert!(status.contains("incidents: shadow (database)"), "{status}");
    assert!(status.contains("candidate: short (database)"), "{status}");
    bench.stop();

    // A replica whose configuration pins a candidate identical to the authoritative policy
    // (here through the environment, CONDUCTOR_FLAGS__CANDIDATE) refuses to start, naming why.
    let (status, _, err) = common::conductor(
        &[
            "run",
            "--database",
            &url,
            "--config",
            &config,
            "--until-idle",
        ],
        &[
            ("CONDUCTOR_FLAGS__CANDIDATE", "default"),
            ("RUST_BACKTRACE", "0"),
        ],
    );
    assert!(!status.success());
    assert!(
        err.contains("refusing to start")
            && err.contains("authoritative policy \"default\" itself"),
        "{err}"
    );
}

#[test]
fn the_replay_cli_reports_a_candidates_verdicts() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stream.jsonl");
    std::fs::write(&file, gen::to_jsonl(&thirty_minute_stream(3))).unwrap();
    let (status, out, err) = common::conductor(
        &[
            "scenario",
            "replay",
            "--events",
            file.to_str().unwrap(),
            "--candidate",
            "window=30m",
            "--json",
        ],
        &[],
    );
    assert!(status.success(), "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let c = &doc["shadow"]["candidates"][0];
    assert_eq!(c["candidate"], "window=30m");
    assert_eq!(
        (
            c["agree"].as_i64(),
            c["diverge"].as_i64(),
            c["authoritative_empty"].as_i64()
        ),
        (Some(9), Some(3), Some(3))
    );
    assert_eq!(doc["summary"]["incident_spawns"], 6);
    // A candidate identical by name to the authoritative policy is refused.
    let (status, _, err) = common::conductor(
        &[
            "scenario",
            "replay",
            "--events",
            file.to_str().unwrap(),
            "--candidate",
            "default",
        ],
        &[("RUST_BACKTRACE", "0")],
    );
    assert!(!status.success());
    assert!(
        err.contains("authoritative policy \"default\" itself"),
        "{err}"
    );
}
