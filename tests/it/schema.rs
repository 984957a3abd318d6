//! Schema parity: the two migration trees (`migrations/sqlite`, `migrations/postgres`) are kept
//! by hand, and every named query runs on both. Migrated from scratch, they must give the same
//! tables, the same columns with the same kind of type and nullability, the same indexes on
//! the same columns, and the same views. Drop a column from one tree and this fails naming it.

use crate::common;

use std::collections::BTreeSet;

use conductor::db::Db;

/// One fact about a schema, comparable across backends.
type Facts = BTreeSet<String>;

/// A declared type as a kind both backends share: SQLite's affinities, Postgres's types.
fn kind(declared: &str) -> &'static str {
    let t = declared.to_ascii_lowercase();
    if t.contains("int") || t.contains("serial") {
        "integer"
    } else if t.contains("char") || t.contains("text") || t.contains("clob") {
        "text"
    } else if t.contains("blob") || t.contains("bytea") {
        "bytes"
    } else if t.contains("real") || t.contains("double") || t.contains("float") {
        "real"
    } else if t.contains("bool") {
        "boolean"
    } else {
        "other"
    }
}

/// One column as both backends can say it.
fn column_fact(table: &str, column: &str, declared: &str, not_null: bool) -> String {
    format!(
        "column {table}.{column} {} {}",
        kind(declared),
        if not_null { "not null" } else { "null" }
    )
}

/// Conductor's own tables and views: apalis's (SQLite's `Jobs` and `Workers`, Postgres's
/// `apalis` schema) and the migration bookkeeping are each backend's own business.
fn ours(table: &str) -> bool {
    let t = table.to_ascii_lowercase();
    !(t == "jobs" || t == "workers" || t.starts_with("_sqlx") || t.contains("migrations"))
}

async fn sqlite_facts(db: &Db) -> Facts {
    let Db::Sqlite(p) = db else { unreachable!() };
    let mut facts = Facts::new();
    // A primary key column counts as NOT NULL, as in Postgres (SQLite alone would let a
    // non-integer key be NULL unless it says so).
    let columns: Vec<(String, String, String, i64)> = sqlx::query_as(
        "SELECT m.name, c.name, c.type, MAX(c.\"notnull\", c.pk > 0) FROM sqlite_master m
         JOIN pragma_table_info(m.name) c WHERE m.type = 'table'",
    )
    .fetch_all(p)
    .await
    .unwrap();
    for (table, column, declared, not_null) in columns {
        if ours(&table) {
            facts.insert(column_fact(&table, &column, &declared, not_null == 1));
        }
    }
    let indexes: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT m.tbl_name, m.name, group_concat(i.name, ',') FROM sqlite_master m
         JOIN pragma_index_info(m.name) i WHERE m.type = 'index' AND m.sql IS NOT NULL
         GROUP BY m.name ORDER BY m.name",
    )
    .fetch_all(p)
    .await
    .unwrap();
    for (table, name, columns) in indexes {
        if ours(&table) {
            facts.insert(format!("index {name} on {table}({columns})"));
        }
    }
    let views: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'view'")
            .fetch_all(p)
            .await
            .unwrap();
    for v in views {
        facts.insert(format!("view {v}"));
    }
    facts
}

async fn postgres_facts(db: &Db) -> Facts {
    let Db::Postgres(p) = db else { unreachable!() };
    let mut facts = Facts::new();
    let columns: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT c.table_name::text, c.column_name::text, c.data_type::text, c.is_nullable::text
         FROM information_schema.columns c JOIN information_schema.tables t
           ON t.table_schema = c.table_schema AND t.table_name = c.table_name
         WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE'",
    )
    .fetch_all(p)
    .await
    .unwrap();
    for (table, column, declared, nullable) in columns {
        if ours(&table) {
            facts.insert(column_fact(&table, &column, &declared, nullable == "NO"));
        }
    }
    // Indexes a statement created (not those behind a primary key or a UNIQUE constraint,
    // which SQLite keeps unnamed), with their columns in order.
    let indexes: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT t.relname::text, i.relname::text,
                string_agg(a.attname::text, ',' ORDER BY k.ord)
         FROM pg_index x
         JOIN pg_class i ON i.oid = x.indexrelid
         JOIN pg_class t ON t.oid = x.indrelid
         JOIN pg_namespace n ON n.oid = t.relnamespace
         CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, ord)
         JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum
         WHERE n.nspname = 'public'
           AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)
         GROUP BY t.relname, i.relname",
    )
    .fetch_all(p)
    .await
    .unwrap();
    for (table, name, columns) in indexes {
        if ours(&table) {
            facts.insert(format!("index {name} on {table}({columns})"));
        }
    }
    let views: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.views WHERE table_schema = 'public'",
    )
    .fetch_all(p)
    .await
    .unwrap();
    for v in views {
        facts.insert(format!("view {v}"));
    }
    facts
}

#[tokio::test]
async fn both_migration_trees_give_the_same_schema() {
    let (sqlite, _, _dir) = common::sqlite().await;
    let (postgres, _guard) = common::postgres("schema").await;
    let (s, p) = (sqlite_facts(&sqlite).await, postgres_facts(&postgres).await);
    for facts in [&s, &p] {
        assert!(
            facts.iter().any(|f| f.starts_with("column steps.run_id")),
            "the facts are read: {facts:#?}"
        );
    }
    let only_sqlite: Vec<_> = s.difference(&p).collect();
    let only_postgres: Vec<_> = p.difference(&s).collect();
    assert!(
        only_sqlite.is_empty() && only_postgres.is_empty(),
        "the migration trees differ\n only in migrations/sqlite: {only_sqlite:#?}\n only in migrations/postgres: {only_postgres:#?}"
    );
}
