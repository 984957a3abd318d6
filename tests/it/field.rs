//! Ready for the field: what a new user, an operator at 3 a.m. and an attacker meet first.
//! A first real run from a relative configuration, errors that name their cause and never a
//! password, read-only commands that create nothing, `config check`, and a hostile agent that
//! goes looking for secrets on SQLite and on Postgres.

use crate::common;

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::jobs::{Bench, FORGE_TOKEN, GIT_TOKEN};

/// Runs `conductor ARGS` in `cwd` with a clean configuration environment and
/// `RUST_BACKTRACE=1` (as many shells have it): (exit code, stdout, stderr).
fn conductor_in(cwd: &Path, args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(common::conductor_bin())
        .args(args)
        .current_dir(cwd)
        .env_remove("CONDUCTOR_CONFIG")
        .env_remove("CONDUCTOR_DATABASE_URL")
        .env("RUST_BACKTRACE", "1")
        .env("NO_COLOR", "1")
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The error a command ended with: its last stderr line, which must be `Error: ...`, with no
/// backtrace anywhere.
fn error_line(code: i32, stderr: &str) -> String {
    assert_eq!(code, 1, "{stderr}");
    assert!(!stderr.contains("backtrace"), "{stderr}");
    assert!(!stderr.contains("Stack"), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default().to_owned();
    assert!(last.starts_with("Error: "), "{stderr}");
    last
}

/// The README's first real run, from a configuration that uses relative paths only: the work
/// root, the repository and the templates resolve against the config file's directory (not
/// the working directory), the worker and the agent get absolute paths, and the scripted
/// agent reads its task file.
#[test]
fn a_first_run_with_relative_paths_works() {
    let root = tempfile::tempdir().unwrap();
    let conf = root.path().join("conf");
    std::fs::create_dir_all(&conf).unwrap();
    conductor::jobs::local_git::init_bare(&conf.join("remotes/app.git"), "main", "# app\n")
        .unwrap();
    std::fs::write(
        conf.join("conductor.toml"),
        format!(
            r#"
[grpc]
listen = "127.0.0.1:0"
[worker]
work_root = "work"
command = "{worker}"
agent_command = "sh {agent}"
[jobs]
heartbeat_interval = "200ms"
lease = "10s"
[[routes]]
default = true
repo = "remotes/app.git"
forge_repo = "acme/app"
"#,
            worker = env!("CARGO_BIN_EXE_conductor-worker"),
            agent = common::jobs::scripted_agent().display(),
        ),
    )
    .unwrap();
    let ticket = common::samples().join("ticket-bare.json");
    let (code, out, err) = conductor_in(
        root.path(),
        &[
            "run",
            "--until-idle",
            "--config",
            "conf/conductor.toml",
            "--database",
            "sqlite:state/conductor.db",
            "--run-dir",
            "state",
            ticket.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("succeeded"), "{out}\n{err}");
    // The startup line says which file was read and where agents work.
    assert!(
        err.contains(&format!("config {}", conf.join("conductor.toml").display())),
        "{err}"
    );
    let work = conf.join("work/j1-a1");
    assert!(work.join("task/TASK.md").is_file(), "{err}");
    assert!(!work.join("work").exists(), "the worker nested its files");
    assert!(!root.path().join("work").exists());
    // The agent read TASK.md: its notes carry the ticket's text, pushed to the remote.
    let remote = conf.join("remotes/app.git");
    let branches = conductor::jobs::local_git::branches(&remote).unwrap();
    let (branch, _) = branches
        .iter()
        .find(|(b, _)| b.starts_with("conductor/j1-a1/"))
        .unwrap_or_else(|| panic!("no branch pushed: {branches:?}"));
    let notes = Command::new("git")
        .args(["--git-dir", remote.to_str().unwrap(), "show"])
        .arg(format!("{branch}:notes/j1-a1.md"))
        .output()
        .unwrap();
    let notes = String::from_utf8_lossy(&notes.stdout);
    assert!(notes.contains("PAY-42"), "{notes}");
    // Created private to this user.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&root.path().join("state/conductor.db")), 0o600);
    assert_eq!(mode(&conf.join("work")), 0o700);
}

/// A kind of job that can start with no route refuses the start, naming the missing
/// `[[routes]]`, instead of using up tickets on "no route" failures.
#[test]
fn run_refuses_to_start_without_a_route() {
    let root = tempfile::tempdir().unwrap();
    let (code, _, err) = conductor_in(
        root.path(),
        &["run", "--until-idle", "--database", "sqlite:c.db"],
        &[("CONDUCTOR_GRPC__LISTEN", "127.0.0.1:0")],
    );
    let line = error_line(code, &err);
    assert!(line.contains("[[routes]]"), "{line}");
    assert!(
        line.contains("tickets") && line.contains("incidents"),
        "{line}"
    );
    assert!(line.contains("none was loaded"), "{line}");
}

/// Commands that read or steer a deployment never create a database: a missing SQLite file
/// is one line naming the path and how to pass the right one.
#[test]
fn read_only_commands_create_nothing() {
    let root = tempfile::tempdir().unwrap();
    for args in [
        &["jobs"][..],
        &["status"],
        &["quarantine"],
        &["history", "recent"],
        &["shadow-report"],
        &["flags"],
        &["drain"],
        &["resume"],
        &["pause"],
        &["unpause"],
        &["console"],
        &["retry", "1"],
    ] {
        let (code, _, err) = conductor_in(root.path(), args, &[]);
        let line = error_line(code, &err);
        assert!(
            line.contains("conductor.db does not exist"),
            "{args:?}: {line}"
        );
        assert!(line.contains("--database"), "{args:?}: {line}");
    }
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
}

/// A loopback port that accepts connections and never answers: a database host that is
/// "up" but hung.
fn silent_server() -> (std::net::TcpListener, u16) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

/// No command prints a database password, whatever goes wrong: refused, hung, unknown
/// database, bad URL. Each fails with the cause in one line, and a hung server fails on the
/// connect deadline rather than after a pool's minute.
#[test]
fn database_errors_name_the_cause_and_never_the_password() {
    const PASSWORD: &str = "hunter2-Very-Secret";
    let root = tempfile::tempdir().unwrap();
    let (_silent, silent_port) = silent_server();
    let ticket = common::samples().join("ticket-bare.json");
    let cases = [
        (
            format!("postgres://app:{PASSWORD}@127.0.0.1:1/conductor"),
            "refused",
        ),
        (
            format!("postgres://app:{PASSWORD}@127.0.0.1:{silent_port}/conductor"),
            "no answer within 5s",
        ),
        (
            format!(
                "{}_no_such_database",
                common::postgres_admin_url().replace("postgres@", &format!("postgres:{PASSWORD}@"))
            ),
            "does not exist",
        ),
        (
            format!("postgres://app:{PASSWORD}@[::1/x"),
            "bad Postgres URL",
        ),
    ];
    for (url, cause) in &cases {
        for args in [
            vec!["status", "--database", url],
            vec!["jobs", "--database", url],
            vec!["history", "--database", url, "recent"],
            vec!["submit", "--database", url, ticket.to_str().unwrap()],
            vec!["run", "--until-idle", "--database", url],
            vec![
                "scenario",
                "replay",
                "--events",
                "samples/replay-small.jsonl",
                "--database",
                url,
            ],
        ] {
            let started = Instant::now();
            let (code, out, err) = conductor_in(
                Path::new(env!("CARGO_MANIFEST_DIR")),
                &args,
                &[("CONDUCTOR_RUN_DIR", root.path().to_str().unwrap())],
            );
            let line = error_line(code, &err);
            assert!(line.contains(cause), "{args:?}: {line}");
            assert!(
                !out.contains(PASSWORD) && !err.contains(PASSWORD),
                "{args:?} printed the password:\n{out}\n{err}"
            );
            // A guard against hanging, not a timing claim: the deadline itself is 5 s.
            assert!(started.elapsed() < Duration::from_secs(60), "{args:?} hung");
        }
    }
    // The URL given by environment is hidden the same way.
    let (code, _, err) = conductor_in(
        root.path(),
        &["status"],
        &[("CONDUCTOR_DATABASE_URL", &cases[0].0)],
    );
    error_line(code, &err);
    assert!(!err.contains(PASSWORD), "{err}");
}

/// `config check` passes a good configuration and names what is wrong with bad ones, the
/// way `promtool check config` does; `config show` says where each value came from.
#[test]
fn config_check_passes_a_good_config_and_names_each_fault() {
    let dir = tempfile::tempdir().unwrap();
    conductor::jobs::local_git::init_bare(&dir.path().join("app.git"), "main", "# app\n").unwrap();
    let good = format!(
        "[worker]\ncommand = \"{}\"\nagent_command = \"sh agent.sh\"\n\
         [[routes]]\ndefault = true\nrepo = \"app.git\"\n",
        env!("CARGO_BIN_EXE_conductor-worker")
    );
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let check = |path: &str, envs: &[(&str, &str)]| {
        conductor_in(dir.path(), &["config", "check", "--config", path], envs)
    };
    let (code, out, err) = check(&write("good.toml", &good), &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("FAILED"), "{out}");

    // An unknown key.
    let (code, out, err) = check(
        &write("typo.toml", &format!("{good}[jobs]\nleese = \"1m\"\n")),
        &[],
    );
    error_line(code, &err);
    assert!(out.contains("FAILED") && out.contains("leese"), "{out}");
    // No route for incidents.
    let no_route = good.replace("default = true", "project = \"PAY\"");
    let (code, out, err) = check(&write("route.toml", &no_route), &[]);
    error_line(code, &err);
    assert!(
        out.contains("FAILED routes") || out.contains("FAILED  routes"),
        "{out}"
    );
    assert!(out.contains("incidents"), "{out}");
    // GitHub without its token, and an agent that is not installed.
    let github = format!(
        "{}[forge]\nkind = \"github\"\ntoken_env = \"CONDUCTOR_TEST_NO_SUCH_TOKEN\"\n",
        good.replace("sh agent.sh", "no-such-agent-binary --go")
    );
    let (code, out, err) = check(&write("forge.toml", &github), &[]);
    error_line(code, &err);
    assert!(out.contains("CONDUCTOR_TEST_NO_SUCH_TOKEN"), "{out}");
    assert!(out.contains("no-such-agent-binary"), "{out}");

    // show: the file's value, an environment override, a default.
    let (code, out, err) = conductor_in(
        dir.path(),
        &["config", "show", "--config", "good.toml"],
        &[("CONDUCTOR_JOBS__MAX_ATTEMPTS", "7")],
    );
    assert_eq!(code, 0, "{err}");
    let line = |key: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{key} ")))
            .unwrap_or_else(|| panic!("{key} missing:\n{out}"))
            .to_owned()
    };
    assert!(
        line("jobs.max_attempts").contains("7")
            && line("jobs.max_attempts").contains("CONDUCTOR_JOBS__MAX_ATTEMPTS")
    );
    assert!(line("worker.agent_command").contains("good.toml"), "{out}");
    assert!(line("jobs.lease").contains("default"), "{out}");
}

fn read_all(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let mut bytes = Vec::new();
        let _ = f.read_to_end(&mut bytes);
        s = String::from_utf8_lossy(&bytes).into_owned();
    }
    s
}

/// Every file under `dir`, as text (lossy), for searching.
fn all_text_under(dir: &Path) -> String {
    let mut out = String::new();
    let mut stack: Vec<PathBuf> = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push_str(&read_all(&p));
            }
        }
    }
    out
}

async fn hostile_agent_finds_nothing(postgres: bool) {
    let agent = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/agents/hostile.sh");
    let mut bench = Bench::new(postgres, "ok", |_, _| {}).await;
    let root = bench.dir.path().to_owned();
    let url = if postgres {
        bench.url.clone()
    } else {
        String::new()
    };
    bench.config.worker.agent_command =
        format!("sh {} {} '{}'", agent.display(), root.display(), url);
    std::fs::write(&bench.config_path, toml::to_string(&bench.config).unwrap()).unwrap();
    bench.submit(&["ticket-bare.json"]);
    bench.start();
    bench
        .wait_for(
            "SELECT COUNT(*) FROM agent_jobs WHERE state = 'succeeded'",
            1,
        )
        .await;
    let report = bench
        .text("SELECT report FROM job_attempts WHERE worker_id = 'j1-a1'")
        .await;
    // The attack was real: the agent read the conductor's and the worker's /proc entries and
    // the stored attempts.
    assert!(report.contains("/environ"), "{report}");
    assert!(report.contains("conductor-worker"), "{report}");
    let pid = bench.conductor_pid().unwrap();
    assert!(report.contains(&format!("/proc/{pid}/environ")), "{report}");
    assert!(report.contains("sha256:"), "the stored attempts: {report}");
    // A NUL and a stray byte in the report neither lose it nor fail the store.
    assert!(report.contains("nul: latin1:\u{fffd}"), "{report}");
    bench.stop();

    let remote = Command::new("git")
        .args([
            "--git-dir",
            bench.remote.to_str().unwrap(),
            "log",
            "--all",
            "-p",
        ])
        .output()
        .unwrap();
    let remote = String::from_utf8_lossy(&remote.stdout).into_owned();
    assert!(remote.contains("loot.txt"), "the loot was pushed: {remote}");
    let posts = bench.posts_to("/repos/acme/app/pulls").await;
    let places = [
        ("the remote", remote),
        ("the report", report),
        ("the pull request", format!("{posts:?}")),
        ("the conductor's log", bench.logs()),
        ("the worker's files", all_text_under(&root.join("work"))),
    ];
    for (place, text) in &places {
        for secret in [FORGE_TOKEN, GIT_TOKEN] {
            assert!(!text.contains(secret), "{place} holds a secret");
        }
        // The attempt's token: 64 hex digits after WORKER_TOKEN= (a wiped value reads xxx...).
        let leaked = text.lines().find(|l| {
            l.split("WORKER_TOKEN=")
                .skip(1)
                .any(|v| v.len() >= 64 && v[..64].bytes().all(|b| b.is_ascii_hexdigit()))
        });
        assert!(
            leaked.is_none(),
            "{place} holds the attempt's token: {leaked:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_agent_finds_no_secret_on_sqlite() {
    hostile_agent_finds_nothing(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_agent_finds_no_secret_on_postgres() {
    hostile_agent_finds_nothing(true).await;
}

/// A credential the worker holds, committed by the agent (here handed to it by the test, as if
/// it had found it), is never pushed: the worker refuses and reports why, without the secret.
#[tokio::test(flavor = "multi_thread")]
async fn the_worker_refuses_to_push_a_credential_it_holds() {
    let agent = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/agents/hostile.sh");
    let mut bench = Bench::new(false, "ok", |c, dir| {
        c.worker.agent_command =
            format!("sh {} {} '' '{GIT_TOKEN}'", agent.display(), dir.display());
        c.jobs.max_attempts = 1;
    })
    .await;
    bench.submit(&["ticket-bare.json"]);
    bench.start();
    bench
        .wait_for(
            "SELECT COUNT(*) FROM job_attempts WHERE worker_id = 'j1-a1' AND state = 'reported'",
            1,
        )
        .await;
    let failure = bench
        .text("SELECT failure FROM job_attempts WHERE worker_id = 'j1-a1'")
        .await;
    assert!(failure.contains("refusing to push"), "{failure}");
    assert!(failure.contains("loot.txt"), "{failure}");
    assert!(!failure.contains(GIT_TOKEN));
    bench.stop();
    let branches = conductor::jobs::local_git::branches(&bench.remote).unwrap();
    assert_eq!(branches.len(), 1, "only main: {branches:?}");
}

/// A tmpfs of `size` mounted on a fresh directory (this suite runs as root, as CI does);
/// unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs to fill (it needs root, as CI has): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { dir }
    }

    /// Fills the disk but for about `keep` bytes; the filler's path.
    fn fill(&self, keep: u64) -> PathBuf {
        let stat = nix_statvfs(self.dir.path());
        let filler = self.dir.path().join("filler");
        let size = stat.saturating_sub(keep);
        std::fs::write(&filler, vec![0u8; size as usize]).unwrap();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .output();
    }
}

/// Bytes available on the filesystem of `path`.
fn nix_statvfs(path: &Path) -> u64 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail as u64 * st.f_frsize as u64
}

/// A full disk stops intake with a clear error, loses nothing and gives nothing up; when space
/// returns, everything is decided. (SQLite on a small tmpfs, really filled.)
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_stops_intake_loses_nothing_and_resumes() {
    const MESSAGES: usize = 400;
    // Room for the database and its WAL once the filler goes; the filler takes the rest.
    let disk = SmallDisk::mount("32m");
    let url = format!("sqlite:{}", disk.dir.path().join("c.db").display());
    let stream = tempfile::Builder::new()
        .suffix(".jsonl")
        .tempfile()
        .unwrap();
    let (code, _, err) = conductor_in(
        disk.dir.path(),
        &[
            "scenario",
            "gen",
            "--out",
            stream.path().to_str().unwrap(),
            "alarm-storm",
            "--alarms",
            &MESSAGES.to_string(),
            "--accounts",
            "5",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = conductor_in(
        disk.dir.path(),
        &[
            "submit",
            "--database",
            &url,
            stream.path().to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    // Alarms only, and no agents: every message is decided in the database alone.
    let conf = tempfile::tempdir().unwrap();
    let config = conf.path().join("conductor.toml");
    std::fs::write(
        &config,
        "[flags]\nincidents = \"shadow\"\n[grpc]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    // Room to open the database (its WAL and shared-memory files) and decide a few dozen.
    let filler = disk.fill(512 * 1024);
    let log_path = conf.path().join("conductor.log");
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = KillOnDrop(
        Command::new(common::conductor_bin())
            .args(["run", "--allow-unrouted", "--database", &url, "--config"])
            .arg(&config)
            .arg("--run-dir")
            .arg(conf.path())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let wait = |what: &str, cond: &dyn Fn() -> bool| {
        for _ in 0..1200 {
            if cond() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "{what} never happened\n{}",
            common::jobs::tail(&log(), 6000)
        );
    };
    // The disk has room for far fewer than 400 decisions: intake stops, saying why.
    wait("intake stopping", &|| log().contains("intake stopped"));
    let line = log()
        .lines()
        .find(|l| l.contains("intake stopped"))
        .unwrap()
        .to_owned();
    assert!(line.contains("database or disk is full"), "{line}");
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "the conductor exited\n{}",
        log()
    );
    // Space returns: everything is decided, nothing failed for good.
    std::fs::remove_file(&filler).unwrap();
    let db = conductor::db::Db::connect_only(&url).await.unwrap();
    for _ in 0..1200 {
        if common::count(&db, "SELECT COUNT(*) FROM decisions").await >= MESSAGES as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        common::count(&db, "SELECT COUNT(*) FROM messages").await,
        MESSAGES as i64,
        "{}",
        log()
    );
    assert_eq!(
        common::count(&db, "SELECT COUNT(*) FROM decisions").await,
        MESSAGES as i64,
        "{}",
        log()
    );
    assert_eq!(
        common::count(&db, "SELECT COUNT(*) FROM runs WHERE status = 'failed'").await,
        0,
        "{}",
        log()
    );
    wait("intake resuming", &|| log().contains("intake resumes"));
    db.close().await;
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let status = child.0.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", log());
}

/// Shell completions come from the command line's own definition: every command is offered.
#[test]
fn completions_offer_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let (status, out, err) = common::conductor(&["completions", shell], &[]);
        assert!(status.success(), "{shell}: {err}");
        for command in ["run", "pause", "unpause", "console", "status", "history"] {
            assert!(out.contains(command), "{shell} completions lack {command}");
        }
    }
}
