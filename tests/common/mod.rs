//! Helpers shared by the integration tests: real SQLite files, real Postgres databases (one
//! per test, dropped after), the real `conductor` binary.
#![allow(dead_code)]

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
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/samples")
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
