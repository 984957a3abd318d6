//! The soak at CI size (docs/design.md section 6): two `conductor run` replicas on one Postgres,
//! SIGKILLed and restarted ten times while 500 generated messages flow through the inbox and
//! the scripted agent works in real repositories. Nothing may be lost or done twice.

use crate::common;

/// The soaks here each start replicas, workers and agents: run one at a time, so each has the
/// machine a deploy would (two cores cannot host several soaks and mean anything).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_killed_ten_times_lose_nothing_and_do_nothing_twice() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (db, pg) = common::postgres("soak").await;
    db.close().await;
    let dir = tempfile::tempdir().unwrap();
    let (status, out, err) = common::conductor(
        &[
            "soak",
            "--database",
            &pg.url,
            "--messages",
            "500",
            "--kills",
            "10",
            "--replicas",
            "2",
            "--seed",
            "11",
            "--json",
            "--dir",
            dir.path().to_str().unwrap(),
        ],
        &[],
    );
    let report: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| {
        panic!(
            "soak printed no report ({e}): {out}\n{}",
            common::jobs::tail(&err, 4000)
        )
    });
    let n = |k: &str| report[k].as_i64().unwrap_or(-1);
    assert_eq!(n("kills"), 10, "{report}");
    assert_eq!(n("lost_messages"), 0, "{report}");
    assert_eq!(n("duplicate_spawns"), 0, "{report}");
    assert_eq!(n("extra_attempts"), 0, "{report}");
    assert_eq!(n("duplicate_pull_requests"), 0, "{report}");
    assert_eq!(n("orphaned_workers"), 0, "{report}");
    assert_eq!(report["mismatches"], serde_json::json!([]), "{report}");
    // Every job the sequential replay spawns ran once and opened its pull request (the
    // stream's bursts are hours apart: nothing merges).
    assert_eq!(n("cancelled_merged"), 0, "{report}");
    assert_eq!(n("undecided"), 0, "{report}");
    let expected = n("expected_ticket_spawns") + n("expected_incident_spawns");
    assert_eq!(n("expected_agents"), expected, "{report}");
    assert_eq!(n("agents_started"), expected, "{report}");
    assert!(expected > 20, "{report}");
    assert_eq!(n("jobs"), expected, "{report}");
    assert_eq!(n("jobs_succeeded"), expected, "{report}");
    assert_eq!(n("pull_requests"), expected, "{report}");
    assert_eq!(
        report["replica_exit_codes"],
        serde_json::json!([0, 0]),
        "each replica drained and exited 0: {report}"
    );
    assert!(status.success(), "{err}");
}

#[test]
fn a_soak_refuses_a_database_that_is_not_empty() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("c.db").display());
    let sample = common::samples().join("ticket-bare.json");
    let (status, _, err) = common::conductor(
        &["submit", "--database", &url, sample.to_str().unwrap()],
        &[],
    );
    assert!(status.success(), "{err}");
    let (status, _, err) = common::conductor(
        &[
            "soak",
            "--database",
            &url,
            "--dir",
            dir.path().join("s").to_str().unwrap(),
        ],
        &[],
    );
    assert!(!status.success());
    assert!(err.contains("needs an empty database"), "{err}");
}

/// A stream of late alarms (each bridging two incidents of its account, arriving after both)
/// with tickets and junk, as `conductor scenario gen late-alarms` writes it.
fn late_alarm_stream(dir: &std::path::Path, extra: &[&str]) -> std::path::PathBuf {
    let file = dir.join("late.jsonl");
    let mut args = vec![
        "scenario",
        "gen",
        "--out",
        file.to_str().unwrap(),
        "late-alarms",
    ];
    args.extend_from_slice(extra);
    let (status, _, err) = common::conductor(&args, &[]);
    assert!(status.success(), "{err}");
    file
}

/// Runs `conductor soak` on a replay file; its JSON report.
fn soak_events(
    url: &str,
    events: &std::path::Path,
    dir: &std::path::Path,
    extra: &[&str],
) -> serde_json::Value {
    let mut args = vec![
        "soak",
        "--database",
        url,
        "--events",
        events.to_str().unwrap(),
        "--json",
        "--dir",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (status, out, err) = common::conductor(&args, &[]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| {
        panic!(
            "soak printed no report ({e}): {out}\n{}",
            common::jobs::tail(&err, 4000)
        )
    });
    assert!(
        status.success(),
        "{report}\n{}",
        common::jobs::tail(&err, 4000)
    );
    report
}

/// The live pipeline's promise (docs/design.md section 3): whatever the number of deciders
/// and replicas and the order of arrival, the agents started are the final incidents plus
/// the tickets, when the alarms that bridge incidents arrive within the settle time. The
/// stream arrives within a few seconds; settle is 20 s.
async fn one_agent_per_final_incident(postgres: bool, shuffle: bool) {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut gen = vec![
        "--accounts",
        "4",
        "--pairs",
        "2",
        "--per-burst",
        "3",
        "--tickets",
        "10",
        "--junk",
        "3",
    ];
    if shuffle {
        gen.extend(["--shuffle", "--seed", "5"]);
    }
    let events = late_alarm_stream(dir.path(), &gen);
    let (url, _pg, replicas) = if postgres {
        let (db, pg) = common::postgres("late").await;
        db.close().await;
        (pg.url.clone(), Some(pg), "2")
    } else {
        (
            format!("sqlite:{}", dir.path().join("c.db").display()),
            None,
            "1",
        )
    };
    let report = soak_events(
        &url,
        &events,
        &dir.path().join("soak"),
        &["--kills", "0", "--replicas", replicas, "--settle", "20s"],
    );
    let n = |k: &str| report[k].as_i64().unwrap_or(-1);
    assert_eq!(n("undecided"), 0, "{report}");
    assert_eq!(n("lost_messages"), 0, "{report}");
    // 8 final incidents and 8 ticket spawns; 16 incidents opened (in order) before merges.
    assert_eq!(n("expected_agents"), 16, "{report}");
    assert_eq!(n("agents_started"), 16, "{report}");
    assert!(n("cancelled_merged") >= 1, "{report}");
    assert_eq!(n("jobs"), 16 + n("cancelled_merged"), "{report}");
    assert_eq!(report["mismatches"], serde_json::json!([]), "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn late_alarms_in_order_start_one_agent_per_incident_on_postgres() {
    one_agent_per_final_incident(true, false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn late_alarms_shuffled_start_one_agent_per_incident_on_postgres() {
    one_agent_per_final_incident(true, true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn late_alarms_in_order_start_one_agent_per_incident_on_sqlite() {
    one_agent_per_final_incident(false, false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn late_alarms_shuffled_start_one_agent_per_incident_on_sqlite() {
    one_agent_per_final_incident(false, true).await;
}

/// `conductor soak --events`: a mixed stream with junk and late alarms, two replicas on
/// Postgres SIGKILLed ten times. Nothing lost or undecided, no agent beyond the final
/// incidents and tickets.
#[tokio::test(flavor = "multi_thread")]
async fn a_late_alarm_stream_survives_ten_kills_of_two_replicas() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let events = late_alarm_stream(
        dir.path(),
        &[
            "--accounts",
            "6",
            "--pairs",
            "2",
            "--per-burst",
            "3",
            "--tickets",
            "40",
            "--junk",
            "8",
            "--seed",
            "9",
        ],
    );
    let (db, pg) = common::postgres("late_kills").await;
    db.close().await;
    let report = soak_events(
        &pg.url,
        &events,
        &dir.path().join("soak"),
        // The soak submits its batches between kills (each kill pauses it up to 1.5 s, kills
        // spread over 15 s): the last, bridging alarms arrive up to ~30 s after the first, so
        // the settle time covers that.
        &[
            "--kills",
            "10",
            "--replicas",
            "2",
            "--settle",
            "45s",
            "--seed",
            "4",
        ],
    );
    let n = |k: &str| report[k].as_i64().unwrap_or(-1);
    assert_eq!(n("kills"), 10, "{report}");
    assert_eq!(n("lost_messages"), 0, "{report}");
    assert_eq!(n("undecided"), 0, "{report}");
    assert!(n("agents_started") <= n("expected_agents"), "{report}");
    assert_eq!(n("duplicate_pull_requests"), 0, "{report}");
    assert_eq!(n("orphaned_workers"), 0, "{report}");
    assert_eq!(
        report["replica_exit_codes"],
        serde_json::json!([0, 0]),
        "{report}"
    );
}
