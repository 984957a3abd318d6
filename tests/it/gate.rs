//! The shutdown gate (docs/design.md section 6) with real processes: closing it pauses intake while the
//! agents already running finish and their pull requests open; then the conductor writes the
//! ready file and exits 0. Reopening before the drain ends resumes intake.

use crate::common;

use std::time::Duration;

use common::jobs::Bench;
use conductor::{config::Route, intake::gate, scenario::gen};

const PROJECTS: &[&str] = &["AAA", "BBB", "CCC", "DDD", "EEE"];

/// A bench whose tickets of each project go to a repository of their own (no claim waits), with
/// an agent that works for `seconds`.
async fn bench(seconds: u32) -> Bench {
    Bench::new(false, "slow", |c, dir| {
        c.worker.agent_command.push_str(&format!(" {seconds}"));
        c.jobs.lease = Duration::from_secs(5);
        // Tickets only: no account routes, so alarms are off.
        c.flags.incidents = Some("off".into());
        c.routes = PROJECTS
            .iter()
            .map(|p| {
                let repo = dir.join(format!("{p}.git"));
                conductor::jobs::local_git::init_bare(&repo, "main", "# r\n").unwrap();
                Route {
                    project: Some((*p).into()),
                    repo: repo.display().to_string(),
                    forge_repo: Some("acme/app".into()),
                    ..Route::default()
                }
            })
            .collect();
    })
    .await
}

fn tickets(projects: &[&str]) -> Vec<(String, String)> {
    projects
        .iter()
        .map(|p| {
            (
                format!("t-{p}"),
                gen::ticket(&format!("{p}-1"), "slow work", None),
            )
        })
        .collect()
}

fn write_gate(bench: &Bench, value: &str) {
    std::fs::write(bench.dir.path().join(gate::GATE_FILE), value).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn closing_the_gate_drains_running_agents_and_pools_new_messages() {
    let mut bench = bench(3).await;
    bench.start();
    bench.submit_bodies(&tickets(&PROJECTS[..3]));
    bench
        .wait_for(
            "SELECT COUNT(*) FROM job_attempts WHERE state = 'delivered'",
            3,
        )
        .await;
    // Three agents are working. Close the gate, then more messages arrive.
    write_gate(&bench, "true\n");
    bench
        .wait_for(
            "SELECT COUNT(*) FROM flags WHERE name = 'gate' AND value = 'closed'",
            1,
        )
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    bench.submit_bodies(&tickets(&PROJECTS[3..]));
    let (status, out, _) = common::conductor(&["status", "--database", &bench.url], &[]);
    assert!(status.success());
    assert!(out.contains("gate: closed"), "{out}");
    assert!(out.contains("3 worker(s)"), "{out}");

    assert_eq!(bench.exited().await, Some(0), "{}", bench.logs());
    assert!(bench.dir.path().join(gate::READY_FILE).exists());
    // The three running jobs finished and opened their pull requests; nothing new started.
    assert_eq!(
        bench
            .count("SELECT COUNT(*) FROM agent_jobs WHERE state = 'succeeded'")
            .await,
        3
    );
    assert_eq!(bench.posts_to("/repos/acme/app/pulls").await.len(), 3);
    assert_eq!(bench.count("SELECT COUNT(*) FROM agent_jobs").await, 3);
    assert_eq!(bench.count("SELECT COUNT(*) FROM job_attempts").await, 3);
    // The new messages were stored by the transport (nothing is lost) and wait, undecided.
    assert_eq!(bench.count("SELECT COUNT(*) FROM decisions").await, 3);
    assert_eq!(bench.count("SELECT COUNT(*) FROM messages").await, 5);
    assert_eq!(
        bench
            .count("SELECT COUNT(*) FROM steps WHERE step = 'decide' AND status = 'queued'")
            .await,
        2
    );

    // A fresh conductor (a deploy's new version) reopens the gate and takes them.
    bench.start();
    bench
        .wait_for(
            "SELECT COUNT(*) FROM agent_jobs WHERE state = 'succeeded'",
            5,
        )
        .await;
    bench.stop();
    assert_eq!(bench.count("SELECT COUNT(*) FROM decisions").await, 5);
    assert_eq!(bench.posts_to("/repos/acme/app/pulls").await.len(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn reopening_the_gate_before_the_drain_ends_resumes_intake() {
    let mut bench = bench(4).await;
    bench.start();
    bench.submit_bodies(&tickets(&PROJECTS[..1]));
    bench
        .wait_for(
            "SELECT COUNT(*) FROM job_attempts WHERE state = 'delivered'",
            1,
        )
        .await;
    write_gate(&bench, "true\n");
    bench
        .wait_for(
            "SELECT COUNT(*) FROM flags WHERE name = 'gate' AND value = 'closed'",
            1,
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    bench.submit_bodies(&tickets(&PROJECTS[1..2]));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        bench.count("SELECT COUNT(*) FROM decisions").await,
        1,
        "intake is paused: the new message is stored, not decided"
    );
    write_gate(&bench, "false\n");
    bench
        .wait_for(
            "SELECT COUNT(*) FROM agent_jobs WHERE state = 'succeeded'",
            2,
        )
        .await;
    assert!(bench.running(), "a reopened gate cancels the drain");
    assert!(!bench.dir.path().join(gate::READY_FILE).exists());
    bench.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_and_a_second_signal_does_not_skip_it() {
    let mut bench = bench(3).await;
    bench.start();
    bench.submit_bodies(&tickets(&PROJECTS[..1]));
    bench
        .wait_for(
            "SELECT COUNT(*) FROM job_attempts WHERE state = 'delivered'",
            1,
        )
        .await;
    bench.signal(libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    bench.signal(libc::SIGINT);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(bench.running(), "still draining");
    assert_eq!(bench.exited().await, Some(0), "{}", bench.logs());
    assert_eq!(
        bench
            .count("SELECT COUNT(*) FROM agent_jobs WHERE state = 'succeeded'")
            .await,
        1
    );
    assert!(bench.dir.path().join(gate::READY_FILE).exists());
    assert!(bench.logs().contains("only SIGKILL skips the drain"));
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_and_resume_commands_set_the_gate_for_every_replica() {
    let mut bench = bench(1).await;
    bench.start();
    bench
        .wait_for(
            "SELECT COUNT(*) FROM flags WHERE name = 'gate' AND value = 'open'",
            1,
        )
        .await;
    let (status, _, err) = common::conductor(&["drain", "--database", &bench.url], &[]);
    assert!(status.success(), "{err}");
    // Nothing is in flight: the replica drains at once and exits 0.
    assert_eq!(bench.exited().await, Some(0), "{}", bench.logs());
    let (_, out, _) = common::conductor(&["status", "--database", &bench.url], &[]);
    assert!(
        out.contains("gate: closed") && out.contains("by cli:"),
        "{out}"
    );
    let (status, _, _) = common::conductor(&["resume", "--database", &bench.url], &[]);
    assert!(status.success());
    let (_, out, _) = common::conductor(&["status", "--database", &bench.url], &[]);
    assert!(out.contains("gate: open"), "{out}");
}

/// `conductor bench drain` runs its rounds against real `conductor run` children and reports
/// figures from a clean drain: every agent that was working finished, the process exited 0,
/// and what arrived after the gate closed waits in the inbox.
#[test]
fn bench_drain_measures_a_clean_drain() {
    let dir = tempfile::tempdir().unwrap();
    let (status, out, stderr) = common::conductor(
        &[
            "bench",
            "drain",
            "--rounds",
            "1",
            "--agents",
            "2",
            "--agent-seconds",
            "1",
            "--dir",
            dir.path().to_str().unwrap(),
            "--json",
        ],
        &[],
    );
    // The report (stdout) says which round was not clean, and its conductor's log is kept.
    assert!(
        status.success(),
        "{stderr}\n{out}\n{}",
        std::fs::read_to_string(dir.path().join("round-0/conductor.log")).unwrap_or_default()
    );
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let round = &report["rounds"][0];
    assert_eq!(round["exit_code"], 0, "{out}");
    assert_eq!(round["jobs_succeeded"], 2, "{out}");
    assert!(round["pooled"].as_i64().unwrap() > 0, "{out}");
    for figure in [
        "gate_to_intake_stopped_ms",
        "last_report_to_ready_ms",
        "gate_to_exit_ms",
    ] {
        assert!(round[figure].as_f64().unwrap() >= 0.0, "{figure}: {out}");
    }
    assert!(dir
        .path()
        .join("round-0/run")
        .join(gate::READY_FILE)
        .exists());
}

/// A SIGTERM that arrives while the conductor is still starting (a deploy replacing a replica
/// that just came up) drains it like any other: it comes up, finds nothing in flight, writes
/// the ready file and exits 0. It is caught from the first moments of `conductor run`.
#[tokio::test(flavor = "multi_thread")]
async fn a_sigterm_during_startup_drains_instead_of_killing() {
    let mut bench = bench(1).await;
    // Held for a second at the start of `conductor run`, before it opens its database.
    bench.start_with(&[("CONDUCTOR_FAILPOINTS", "run.starting=pause")]);
    let paused = || bench.logs().contains("failpoint armed: pausing");
    for _ in 0..2000 {
        if paused() {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(paused(), "{}", bench.logs());
    assert!(bench.catches(libc::SIGTERM), "{}", bench.logs());
    assert!(!bench.logs().contains("queue consumers running"));
    bench.signal(libc::SIGTERM);
    assert_eq!(bench.exited().await, Some(0), "{}", bench.logs());
    assert!(bench.dir.path().join(gate::READY_FILE).exists());
}
