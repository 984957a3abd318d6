//! Helpers shared by the integration tests: real SQLite files, real Postgres databases (one
//! per test, dropped after), the real `conductor` binary.

pub mod aws;
pub mod browser;
pub mod git_http;
pub mod jira;
pub mod jobs;

use std::path::{Path, PathBuf};

use conductor::db::Db;

/// The Postgres server tests create their databases on.
pub fn postgres_admin_url() -> String {
    std::env::var("CONDUCTOR_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh, migrated SQLite database in a temporary directory.
pub async fn sqlite() -> (Db, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("conductor.db").display());
    let db = Db::connect(&url).await.unwrap();
    (db, url, dir)
}

/// A fresh, migrated Postgres database; dropped when the guard drops.
pub struct PgGuard {
    pub url: String,
    name: String,
}

impl Drop for PgGuard {
    fn drop(&mut self) {
        let admin = postgres_admin_url();
        let _ = std::process::Command::new("psql")
            .args([
                &admin,
                "-q",
                "-c",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}

pub async fn postgres(tag: &str) -> (Db, PgGuard) {
    use sqlx::Connection;
    let admin = postgres_admin_url();
    let name = format!(
        "conductor_test_{tag}_{}_{}",
        std::process::id(),
        rand_suffix()
    );
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("Postgres on 127.0.0.1:5432 (see README)");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
    let url = conductor::bench::replace_db_name(&admin, &name);
    let db = Db::connect(&url).await.unwrap();
    (db, PgGuard { url, name })
}

fn rand_suffix() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{n:x}")
}

pub fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("samples")
}

pub fn conductor_bin() -> &'static str {
    env!("CARGO_BIN_EXE_conductor")
}

/// Runs `conductor ARGS` to completion and returns (status, stdout, stderr).
pub fn conductor(
    args: &[&str],
    envs: &[(&str, &str)],
) -> (std::process::ExitStatus, String, String) {
    let out = std::process::Command::new(conductor_bin())
        .args(args)
        // Tests run in parallel: each conductor's worker protocol takes any free port, and its
        // shutdown gate files go to a directory of its own.
        .env("CONDUCTOR_GRPC__LISTEN", "127.0.0.1:0")
        .env("CONDUCTOR_RUN_DIR", tempfile::tempdir().unwrap().keep())
        .envs(envs.iter().copied())
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One integer from a query (cast to BIGINT so INTEGER columns read alike on both backends).
pub async fn count(db: &Db, sql: &str) -> i64 {
    let sql = format!("SELECT CAST(({sql}) AS BIGINT)");
    conductor::with_pool!(db, |p| sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(
        sql.clone()
    ))
    .fetch_one(p)
    .await
    .unwrap())
}

/// A Postgres server of the test's own (initdb into a temporary directory, run as the
/// `postgres` user on a free port), so a test can restart it without disturbing the shared
/// server other tests use.
pub struct PrivatePostgres {
    pub dir: tempfile::TempDir,
    pub port: u16,
    bin: PathBuf,
}

impl PrivatePostgres {
    pub fn start() -> PrivatePostgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries under /usr/lib/postgresql")
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").exists())
            .max()
            .expect("an initdb under /usr/lib/postgresql/*/bin");
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = PrivatePostgres { dir, port, bin };
        pg.as_postgres(
            "initdb",
            &[
                "-D",
                pg.data().to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        pg.pg_ctl(&["start"]);
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn as_postgres(&self, program: &str, args: &[&str]) {
        let out = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join(program))
            .args(args)
            .output()
            .expect("runuser");
        assert!(
            out.status.success(),
            "{program} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn pg_ctl(&self, action: &[&str]) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let data = self.data().display().to_string();
        let log = self.dir.path().join("postgres.log").display().to_string();
        let mut args = vec!["-D", &data, "-o", &opts, "-l", &log, "-w"];
        args.extend_from_slice(action);
        self.as_postgres("pg_ctl", &args);
    }

    /// Stops the server the way a crash or a failover would (connections cut, no checkpoint)
    /// and starts it again.
    pub fn restart(&self) {
        self.pg_ctl(&["-m", "immediate", "restart"]);
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub async fn create_database(&self, name: &str) -> String {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&self.url("postgres"))
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        self.url(name)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args([
                "-D",
                self.data().to_str().unwrap(),
                "-m",
                "immediate",
                "stop",
            ])
            .output();
    }
}

/// Waits for `cond` to hold, checking every 50 ms; panics after three minutes (a busy
/// machine's margin, never a measure of speed).
pub async fn wait_until<F, Fut>(mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..3600 {
        if cond().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("condition not met within three minutes");
}
