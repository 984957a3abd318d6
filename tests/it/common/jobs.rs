//! The job workflow's test bench, all real parts: a `conductor run` process (SQLite file or
//! Postgres database), real `conductor-worker` processes talking gRPC, a bare git repository
//! as the remote, the scripted agent, and a local HTTP server speaking GitHub's endpoints.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use conductor::{config::Config, db::Db};
use std::sync::{Arc, Mutex};

use wiremock::{
    matchers::{method, path},
    Mock, MockServer, Request, Respond, ResponseTemplate,
};

/// A forge that remembers what it created, as GitHub does: listing pull requests by head (or
/// issues) returns the ones opened before.
#[derive(Clone, Default)]
struct Remembering {
    created: Arc<Mutex<Vec<serde_json::Value>>>,
    kind: &'static str,
}

impl Respond for Remembering {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let mut created = self.created.lock().unwrap();
        if req.method.as_str() == "POST" {
            let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
            let number = 7 + created.len() as i64;
            let item = serde_json::json!({
                "number": number,
                "html_url": format!("https://forge.test/acme/app/{}/{number}", self.kind),
                "head": {"ref": body["head"]},
                "body": body["body"],
            });
            created.push(item.clone());
            return ResponseTemplate::new(201).set_body_json(item);
        }
        let head = req
            .url
            .query_pairs()
            .find(|(k, _)| k == "head")
            .map(|(_, v)| v.split(':').nth(1).unwrap_or_default().to_owned());
        let found: Vec<_> = created
            .iter()
            .filter(|i| head.as_ref().is_none_or(|h| i["head"]["ref"] == h.as_str()))
            .cloned()
            .collect();
        ResponseTemplate::new(200).set_body_json(found)
    }
}

/// The forge token the conductor reads from its environment: it must never be printed.
pub const FORGE_TOKEN: &str = "ghp_TESTSECRET_forge_token_0123456789abcdef";
/// A git token passed through to workers: it must never be printed either.
pub const GIT_TOKEN: &str = "glpat_TESTSECRET_git_token_0123456789";

pub fn scripted_agent() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("worker/agents/scripted.sh")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs a blocking wait without stalling the test's tokio runtime: its other tasks (the forge,
/// say) move to another thread meanwhile.
fn off_runtime<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

pub struct Bench {
    pub dir: tempfile::TempDir,
    pub db: Db,
    pub url: String,
    _pg: Option<super::PgGuard>,
    pub config: Config,
    pub config_path: PathBuf,
    pub remote: PathBuf,
    pub forge: MockServer,
    conductor: Option<Child>,
    pub log_path: PathBuf,
    pub agent_log: PathBuf,
}

impl Bench {
    /// A bench whose agent runs `mode` (see worker/agents/scripted.sh); `tweak` adjusts the
    /// configuration before it is written.
    pub async fn new(postgres: bool, mode: &str, tweak: impl FnOnce(&mut Config, &Path)) -> Bench {
        let (db, url, dir, pg) = if postgres {
            let (db, guard) = super::postgres("jobs").await;
            let url = guard.url.clone();
            (db, url, tempfile::tempdir().unwrap(), Some(guard))
        } else {
            let (db, url, dir) = super::sqlite().await;
            (db, url, dir, None)
        };
        Self::build(db, url, dir, pg, mode, tweak).await
    }

    /// A bench on a database the caller made (a private Postgres server, say).
    pub async fn on_database(
        db: Db,
        url: String,
        mode: &str,
        tweak: impl FnOnce(&mut Config, &Path),
    ) -> Bench {
        Self::build(db, url, tempfile::tempdir().unwrap(), None, mode, tweak).await
    }

    async fn build(
        db: Db,
        url: String,
        dir: tempfile::TempDir,
        pg: Option<super::PgGuard>,
        mode: &str,
        tweak: impl FnOnce(&mut Config, &Path),
    ) -> Bench {
        let remote = dir.path().join("remote.git");
        conductor::jobs::local_git::init_bare(&remote, "main", "# app\n").unwrap();
        let forge = MockServer::start().await;
        for (p, kind) in [
            ("/repos/acme/app/pulls", "pull"),
            ("/repos/acme/app/issues", "issues"),
        ] {
            let responder = Remembering {
                kind,
                ..Remembering::default()
            };
            for m in ["GET", "POST"] {
                Mock::given(method(m))
                    .and(path(p))
                    .respond_with(responder.clone())
                    .mount(&forge)
                    .await;
            }
        }
        // Labels on a pull request (an issue to the labels API).
        Mock::given(method("POST"))
            .and(wiremock::matchers::path_regex(
                r"^/repos/acme/app/issues/\d+/labels$",
            ))
            .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!([
                {"name": "conductor"}
            ])))
            .mount(&forge)
            .await;
        let agent_log = dir.path().join("agent.log");
        let mut config = Config::default();
        config.grpc.listen = format!("127.0.0.1:{}", free_port());
        config.forge.kind = conductor::config::ForgeKind::Github;
        config.forge.base_url = forge.uri();
        config.forge.token_env = "CONDUCTOR_TEST_FORGE_TOKEN".into();
        config.worker.work_root = dir.path().join("work");
        config.worker.agent_command = format!(
            "sh {} {mode} {}",
            scripted_agent().display(),
            agent_log.display()
        );
        config.worker.agent_timeout = Duration::from_secs(30);
        config.worker.unreachable_deadline = Duration::from_secs(30);
        config.worker.command = Some(PathBuf::from(env!("CARGO_BIN_EXE_conductor-worker")));
        config.jobs.heartbeat_interval = Duration::from_millis(200);
        config.jobs.lease = Duration::from_secs(2);
        config.jobs.handshake_timeout = Duration::from_secs(3);
        config.jobs.retry_backoff = Duration::from_secs(1);
        config.jobs.claim_poll = Duration::from_secs(1);
        config.jobs.await_poll = Duration::from_secs(1);
        config.jobs.max_attempts = 2;
        // Incident jobs start at once unless a test is about settling.
        config.incidents.settle = Duration::ZERO;
        config.routes = vec![conductor::config::Route {
            default: true,
            repo: remote.display().to_string(),
            forge_repo: Some("acme/app".into()),
            ..Default::default()
        }];
        tweak(&mut config, dir.path());
        let config_path = dir.path().join("conductor.toml");
        std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();
        let log_path = dir.path().join("conductor.log");
        Bench {
            db,
            url,
            _pg: pg,
            config,
            config_path,
            remote,
            forge,
            conductor: None,
            log_path,
            agent_log,
            dir,
        }
    }

    pub fn submit(&self, samples: &[&str]) {
        let paths: Vec<String> = samples
            .iter()
            .map(|s| super::samples().join(s).display().to_string())
            .collect();
        let mut args = vec!["submit", "--database", &self.url];
        args.extend(paths.iter().map(String::as_str));
        let (status, _, stderr) = super::conductor(&args, &[]);
        assert!(status.success(), "{stderr}");
    }

    /// Submits messages given as (transport id, body).
    pub fn submit_bodies(&self, messages: &[(String, String)]) {
        let path = self
            .dir
            .path()
            .join(format!("batch-{}.jsonl", messages[0].0));
        let lines: Vec<String> = messages
            .iter()
            .map(|(id, body)| serde_json::json!({"message_id": id, "body": body}).to_string())
            .collect();
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let (status, _, stderr) = super::conductor(
            &["submit", "--database", &self.url, path.to_str().unwrap()],
            &[],
        );
        assert!(status.success(), "{stderr}");
    }

    /// The token a silent test worker (a script that writes `$WORKER_TOKEN` into `token.txt`
    /// in its work dir) was started with: the database keeps only its hash.
    pub async fn silent_worker_token(&self, worker_id: &str) -> String {
        let file = self
            .dir
            .path()
            .join("work")
            .join(worker_id)
            .join("token.txt");
        for _ in 0..600 {
            if let Ok(t) = std::fs::read_to_string(&file) {
                if t.ends_with('\n') {
                    return t.trim().to_owned();
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{} never appeared", file.display());
    }

    /// The running conductor's process id.
    pub fn conductor_pid(&self) -> Option<u32> {
        self.conductor.as_ref().map(|c| c.id())
    }

    /// Whether the conductor process is still running.
    pub fn running(&mut self) -> bool {
        match self.conductor.as_mut() {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// Waits for the conductor to exit by itself; its exit code.
    pub async fn exited(&mut self) -> Option<i32> {
        // Three minutes: a drain waits for agents, pull requests and every step in flight,
        // which a busy machine slows down.
        for _ in 0..1800 {
            if let Some(c) = self.conductor.as_mut() {
                if let Some(status) = c.try_wait().unwrap() {
                    self.conductor = None;
                    return status.code();
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the conductor did not exit\n{}", tail(&self.logs(), 6000));
    }

    /// Whether the conductor has installed its own handler for `sig` (`SigCgt` in
    /// /proc/PID/status): from then on the signal is the conductor's to act on.
    pub fn catches(&self, sig: i32) -> bool {
        let Some(c) = self.conductor.as_ref() else {
            return false;
        };
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", c.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .is_some_and(|mask| mask & (1 << (sig - 1)) != 0)
    }

    /// Sends a signal to the conductor.
    pub fn signal(&self, sig: i32) {
        if let Some(c) = self.conductor.as_ref() {
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// Starts `conductor run` (its log appends to `conductor.log` across restarts).
    pub fn start(&mut self) {
        self.start_with(&[]);
    }

    /// Starts `conductor run` with extra environment (a failpoint, say).
    pub fn start_with(&mut self, envs: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let child = Command::new(super::conductor_bin())
            .args([
                "run",
                "--run-dir",
                self.dir.path().to_str().unwrap(),
                "--database",
                &self.url,
                "--config",
                self.config_path.to_str().unwrap(),
                "--poll-interval",
                "50ms",
                "--heartbeat",
                "1s",
            ])
            .env("CONDUCTOR_TEST_FORGE_TOKEN", FORGE_TOKEN)
            .env("GIT_TOKEN", GIT_TOKEN)
            .env("CONDUCTOR_LOG", "debug,sqlx=warn,h2=info,hyper=info,tower=info,apalis=info,apalis_core=info,apalis_sqlite=info,apalis_postgres=info")
            .env("NO_COLOR", "1")
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.conductor = Some(child);
    }

    /// Waits for the running conductor to exit by itself (a failpoint killed it); returns the
    /// signal that ended it.
    pub fn wait_exit(&mut self) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        let mut c = self.conductor.take()?;
        off_runtime(|| c.wait().ok().and_then(|s| s.signal()))
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.conductor.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the graceful stop. The drain may still need this test's own
    /// servers (the forge runs on the test's runtime), so the wait gives up this runtime
    /// thread rather than blocking it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.conductor.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            off_runtime(|| {
                let _ = c.wait();
            });
        }
    }

    pub async fn count(&self, sql: &str) -> i64 {
        super::count(&self.db, sql).await
    }

    /// Polls until `sql` counts at least `want` (giving up after three minutes, with the logs:
    /// generous, for a machine busy with other work).
    pub async fn wait_for(&self, sql: &str, want: i64) {
        for _ in 0..1800 {
            if self.count(sql).await >= want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "timed out waiting for `{sql}` >= {want}\n--- logs ---\n{}",
            tail(&self.logs(), 6000)
        );
    }

    pub async fn text(&self, sql: &str) -> String {
        conductor::with_pool!(&self.db, |p| sqlx::query_scalar::<_, String>(
            sqlx::AssertSqlSafe(sql.to_owned())
        )
        .fetch_one(p)
        .await
        .unwrap())
    }

    /// The conductor's log and every worker's.
    pub fn logs(&self) -> String {
        let mut out = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        for f in self.files_under("work", "worker.log") {
            out.push_str(&format!("\n--- {} ---\n", f.display()));
            out.push_str(&std::fs::read_to_string(&f).unwrap_or_default());
        }
        out
    }

    /// Files named `name` (or all files, for "") under `sub` of the bench directory.
    pub fn files_under(&self, sub: &str, name: &str) -> Vec<PathBuf> {
        fn walk(dir: &Path, name: &str, out: &mut Vec<PathBuf>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    if p.file_name().is_some_and(|n| n == ".git") {
                        continue;
                    }
                    walk(&p, name, out);
                } else if name.is_empty() || p.file_name().is_some_and(|n| n == name) {
                    out.push(p);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.dir.path().join(sub), name, &mut out);
        out
    }

    /// Every received request to the forge, as "METHOD path body".
    pub async fn forge_requests(&self) -> Vec<(String, String, serde_json::Value)> {
        self.forge
            .received_requests()
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|r| {
                (
                    r.method.to_string(),
                    r.url.path().to_owned(),
                    serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null),
                )
            })
            .collect()
    }

    pub async fn posts_to(&self, p: &str) -> Vec<serde_json::Value> {
        self.forge_requests()
            .await
            .into_iter()
            .filter(|(m, path, _)| m == "POST" && path == p)
            .map(|(_, _, b)| b)
            .collect()
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        self.kill();
        kill_workers_under(self.dir.path());
    }
}

/// Live (not zombie) processes for which `keep(pid)` holds.
fn live_processes(keep: impl Fn(i32) -> bool) -> Vec<i32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|p| p.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| {
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true);
            !zombie && keep(*pid)
        })
        .collect()
}

/// Live processes whose environment has `key` starting with `value_prefix`.
pub fn processes_with_env(key: &str, value_prefix: &str) -> Vec<i32> {
    let want = format!("{key}={value_prefix}");
    live_processes(|pid| {
        std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
            env.split(|b| *b == 0)
                .any(|kv| kv.starts_with(want.as_bytes()))
        })
    })
}

/// Live processes whose working directory is under `dir`.
pub fn processes_in(dir: &Path) -> Vec<i32> {
    live_processes(|pid| {
        std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(dir))
    })
}

/// Kills worker processes (and their agents) whose WORKER_DIR is under `root`.
pub fn kill_workers_under(root: &Path) {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    let want = format!("WORKER_DIR={}", root.display());
    for p in procs.flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if env
            .split(|b| *b == 0)
            .any(|kv| kv.starts_with(want.as_bytes()))
        {
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

pub fn tail(s: &str, n: usize) -> &str {
    let start = s.len().saturating_sub(n);
    let start = (start..s.len())
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(s.len());
    &s[start..]
}
