//! `conductor demo`: the whole product on one machine, with no AWS account. SQLite, two bare
//! repositories as remotes (tickets of project PAY go to `app.git`, everything else to
//! `platform.git`), the scripted agent, the sample tickets and alarms plus a generated alarm
//! storm; then the jobs, the pushed branches and the pull requests.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use conductor::{
    config::{Config, Route},
    db::Db,
    intake::inbox,
    jobs,
    jobs::history,
    jobs::local_git,
    runtime::RunOptions,
    scenario::gen,
    with_pool,
};

const AGENT: &str = include_str!("../../worker/agents/scripted.sh");

/// The demo's messages, built into the binary so `conductor demo` needs nothing beside it:
/// the repository's `samples/` (two tickets, an alarm over EventBridge and over SNS, and an
/// OK transition that is ignored).
const SAMPLES: [(&str, &str); 5] = [
    (
        "ticket-bare.json",
        include_str!("../../samples/ticket-bare.json"),
    ),
    (
        "ticket-webhook-created.json",
        include_str!("../../samples/ticket-webhook-created.json"),
    ),
    (
        "alarm-eventbridge.json",
        include_str!("../../samples/alarm-eventbridge.json"),
    ),
    (
        "alarm-sns.json",
        include_str!("../../samples/alarm-sns.json"),
    ),
    (
        "alarm-eventbridge-ok.json",
        include_str!("../../samples/alarm-eventbridge-ok.json"),
    ),
];

/// `conductor demo`: the main job on the embedded default, start to finish, in `dir`.
pub async fn run(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    clean(&dir)?;
    let (app, platform) = remotes(&dir)?;
    let agent = dir.join("agent.sh");
    std::fs::write(&agent, AGENT)?;
    let config = demo_config(&dir, &agent, &app, &platform);
    std::fs::write(dir.join("conductor.toml"), toml::to_string(&config)?)?;
    let inputs = inputs(&dir)?;

    let url = format!("sqlite:{}", dir.join("conductor.db").display());
    let db = Db::connect(&url).await?;
    inbox::submit(&db, &inputs, "demo").await?;
    eprintln!(
        "demo: {} messages submitted; running until every job is done (logs: {}/work/*/worker.log)",
        inputs.len(),
        dir.display()
    );
    let opts = RunOptions {
        concurrency: 1,
        heartbeat: std::time::Duration::from_secs(1),
        ..RunOptions::default()
    };
    let serving = conductor::server::Serving {
        until_idle: true,
        allow_unrouted: false,
    };
    conductor::server::run(
        db.clone(),
        config,
        opts,
        serving,
        &dir,
        conductor::server::Signals::new()?,
    )
    .await?;

    show(&db, &app, &platform).await?;
    println!("\nDatabase: {url}  (try: conductor history --database {url} recent)");
    println!("Console:  conductor console --database {url}   (then open http://127.0.0.1:7470/)");
    db.close().await;
    Ok(())
}

/// Removes what an earlier demo left in `dir`.
fn clean(dir: &Path) -> Result<()> {
    for old in [
        "conductor.db",
        "conductor.db-wal",
        "conductor.db-shm",
        "remotes",
        "work",
    ] {
        let p = dir.join(old);
        if p.is_dir() {
            std::fs::remove_dir_all(&p)?;
        } else if p.exists() {
            std::fs::remove_file(&p)?;
        }
    }
    Ok(())
}

/// The two bare repositories the demo's routes point at: app (project PAY) and platform.
fn remotes(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let app = dir.join("remotes/app.git");
    let platform = dir.join("remotes/platform.git");
    local_git::init_bare(&app, "main", "# app\n\nThe checkout service.\n")?;
    local_git::init_bare(&platform, "main", "# platform\n\nInfrastructure as code.\n")?;
    Ok((app, platform))
}

/// The demo's configuration: the scripted agent, quick timers, a short settle, and a route
/// per repository.
fn demo_config(dir: &Path, agent: &Path, app: &Path, platform: &Path) -> Config {
    let mut config = Config::default();
    config.grpc.listen = "127.0.0.1:0".into();
    config.worker.work_root = dir.join("work");
    config.worker.agent_command = format!("sh {}", agent.display());
    config.worker.agent_timeout = std::time::Duration::from_secs(120);
    config.jobs.heartbeat_interval = std::time::Duration::from_secs(1);
    config.jobs.lease = std::time::Duration::from_secs(15);
    config.jobs.retry_backoff = std::time::Duration::from_secs(1);
    config.jobs.claim_poll = std::time::Duration::from_secs(1);
    config.jobs.await_poll = std::time::Duration::from_secs(5);
    // A short settle: the storm's alarms arrive at once, so a demo needs none of the default.
    config.incidents.settle = std::time::Duration::from_secs(2);
    config.routes = vec![
        Route {
            project: Some("PAY".into()),
            repo: app.display().to_string(),
            forge_repo: Some("acme/app".into()),
            ..Route::default()
        },
        Route {
            default: true,
            repo: platform.display().to_string(),
            forge_repo: Some("acme/platform".into()),
            ..Route::default()
        },
    ];
    config
}

/// The sample messages and a seeded alarm storm (also written to `storm.jsonl`).
fn inputs(dir: &Path) -> Result<Vec<conductor::scheduling::domain::RawMessage>> {
    let mut inputs: Vec<_> = SAMPLES
        .iter()
        .map(|(_, body)| conductor::scheduling::domain::RawMessage {
            transport_id: inbox::content_id(body),
            body: (*body).to_owned(),
            raw: None,
        })
        .collect();
    let storm = gen::generate(&gen::GenSpec::AlarmStorm {
        alarms: 12,
        accounts: 2,
        span: "40m".into(),
        shuffle: false,
        seed: 7,
    })
    .map_err(anyhow::Error::msg)?;
    std::fs::write(dir.join("storm.jsonl"), gen::to_jsonl(&storm))?;
    inputs.extend(storm);

    Ok(inputs)
}

/// Prints the decisions, the jobs, the pushed branches and the pull requests.
async fn show(db: &Db, app: &Path, platform: &Path) -> Result<()> {
    print!(
        "{}",
        history::render(&history::show(db, &history::Subject::DecisionCounts).await?)
    );
    println!("\nJobs:");
    print!(
        "{}",
        super::render::jobs(&jobs::list(db, false, 100).await?)
    );
    for (name, path) in [("app.git", app), ("platform.git", platform)] {
        println!("\nBranches in {name}:");
        for (branch, sha) in local_git::branches(path)? {
            let changed = if branch == "main" {
                String::new()
            } else {
                local_git::changed_files(path, "main", &branch)?.join(", ")
            };
            println!("  {branch:<60} {}  {changed}", &sha[..12.min(sha.len())]);
        }
    }
    println!("\nPull requests and issues (local forge):");
    const PRS: &str =
        "SELECT kind, repo, id, COALESCE(head, ''), title FROM forge_records ORDER BY id";
    let rows: Vec<(String, String, i64, String, String)> =
        with_pool!(db, |p| sqlx::query_as(PRS).fetch_all(p).await?);
    for (kind, repo, id, head, title) in rows {
        println!("  {kind:<5} {repo}#{id:<3} {head:<56} {title}");
    }
    println!("\nWhat the tickets were told (local tracker; with Jira, these are comments):");
    const NOTICES: &str = "SELECT subject_kind, subject, state, body FROM notices ORDER BY id";
    let rows: Vec<(String, String, String, String)> =
        with_pool!(db, |p| sqlx::query_as(NOTICES).fetch_all(p).await?);
    for (kind, subject, state, body) in rows {
        let subject = if kind == "incident" {
            format!("incident {subject}")
        } else {
            subject
        };
        println!("  {subject:<12} {state:<8} {body}");
    }
    Ok(())
}
