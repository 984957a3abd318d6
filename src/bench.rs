//! `conductor bench`: throughput figures printed for `docs/benchmarks.md`. Nothing here
//! asserts a time; it measures and prints.

use std::{sync::Arc, time::Instant};

use tokio::sync::watch;

use crate::{
    context::Env,
    db::{now_ms, Db},
    error::Error,
    intake::inbox,
    runtime::{self, RunOptions},
    scenario::{
        gen,
        replay::{self, StoreMode},
    },
    scheduling::decide,
    scheduling::domain::RawMessage,
    scheduling::flags::Scheduling,
    scheduling::policy::Policy,
    scheduling::store::sql::Tables,
};

/// One measured figure.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Figure {
    pub name: String,
    pub events: usize,
    pub seconds: f64,
    pub per_second: f64,
    /// For a latency figure: each event's latency, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<Percentiles>,
}

/// A latency distribution, in milliseconds.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `samples` (NaN for none).
    pub fn of(mut samples: Vec<f64>) -> Percentiles {
        samples.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            samples
                .get(((samples.len() as f64 * p).ceil() as usize).saturating_sub(1))
                .copied()
                .unwrap_or(f64::NAN)
        };
        Percentiles {
            p50: rank(0.50),
            p99: rank(0.99),
            max: samples.last().copied().unwrap_or(f64::NAN),
        }
    }
}

impl Figure {
    fn new(name: impl Into<String>, events: usize, seconds: f64) -> Self {
        Figure {
            name: name.into(),
            events,
            seconds,
            per_second: events as f64 / seconds.max(1e-9),
            latency_ms: None,
        }
    }
}

/// The stream the benchmarks decide: tickets with duplicates, alarms of many accounts in time
/// order with OK transitions, malformed bodies and redeliveries.
pub fn stream(count: usize) -> Vec<RawMessage> {
    gen::generate(&gen::GenSpec::Mixed {
        count,
        accounts: 500,
        seed: 42,
    })
    .expect("valid spec")
}

/// Replays `messages` into a fresh SQLite file in transactions of `batch` with `mode`'s store,
/// timing each slice of `slice` events so the cost at different history sizes can be read off.
pub async fn decide_sqlite(
    messages: &[RawMessage],
    batch: usize,
    slice: usize,
    mode: StoreMode,
    candidate: Option<Policy>,
) -> Result<Vec<Figure>, Error> {
    let (db, _dir) = crate::scenario::temp_sqlite().await?;
    let sched = Scheduling {
        candidate: candidate.map(Ok),
        ..Scheduling::only(Policy::default())
    };
    let label = match (mode, &sched.candidate) {
        (_, Some(Ok(c))) => format!("statements + candidate {}", c.name),
        (StoreMode::Statements, _) => "statements".into(),
        _ => "write-behind".into(),
    };
    let mut figures = Vec::new();
    let start = Instant::now();
    for (i, chunk) in messages.chunks(slice).enumerate() {
        let t = Instant::now();
        replay::decide_all(&db, &sched, chunk, batch, mode).await?;
        figures.push(Figure::new(
            format!("sqlite {label}: slice after {} stored", i * slice),
            chunk.len(),
            t.elapsed().as_secs_f64(),
        ));
    }
    let total = Figure::new(
        format!("sqlite replay ({label} store), every decision persisted"),
        messages.len(),
        start.elapsed().as_secs_f64(),
    );
    figures.insert(0, total);
    db.close().await;
    Ok(figures)
}

/// Decides on Postgres with `clients` concurrent deciders, one transaction per message (as the
/// live decide step commits), into a fresh database created next to `admin_url`'s.
pub async fn decide_postgres(
    admin_url: &str,
    messages: &[RawMessage],
    clients: usize,
    candidate: Option<Policy>,
) -> Result<Figure, Error> {
    let (db, _, cleanup) = fresh_postgres(admin_url, "conductor_bench").await?;
    let with = candidate
        .as_ref()
        .map(|c| format!(" + candidate {}", c.name))
        .unwrap_or_default();
    let sched = Arc::new(Scheduling {
        candidate: candidate.map(Ok),
        ..Scheduling::only(Policy::default())
    });
    let messages = Arc::new(messages.to_vec());
    let start = Instant::now();
    let mut handles = Vec::new();
    for c in 0..clients {
        let (db, sched, messages) = (db.clone(), sched.clone(), messages.clone());
        handles.push(tokio::spawn(async move {
            for m in messages.iter().skip(c).step_by(clients) {
                let mut tx = db.begin().await?;
                decide::deliver(
                    &mut Tables::real(&mut tx),
                    &sched,
                    &m.transport_id,
                    "bench",
                    &m.body,
                    0,
                )
                .await?;
                tx.commit().await?;
            }
            Ok::<_, Error>(())
        }));
    }
    for h in handles {
        h.await.map_err(|e| Error::Queue(e.to_string()))??;
    }
    let fig = Figure::new(
        format!("postgres, {clients} clients, one transaction per event{with}"),
        messages.len(),
        start.elapsed().as_secs_f64(),
    );
    db.close().await;
    cleanup.await?;
    Ok(fig)
}

/// Submits `messages` to the inbox and runs the apalis worker pool until every run finished.
/// With `candidate` (a policy spec such as `window=30m`), the candidate flag is set first, as
/// `conductor flags set` would, so every decision is also evaluated in shadow.
pub async fn pipeline(
    db: Db,
    messages: &[RawMessage],
    label: &str,
    candidate: Option<&str>,
) -> Result<Figure, Error> {
    let env = Arc::new(Env::new(db.clone(), crate::config::Config::default())?);
    if let Some(spec) = candidate {
        let pair = [(
            crate::scheduling::flags::CANDIDATE.to_owned(),
            spec.to_owned(),
        )];
        crate::scheduling::flags::set_many(&db, &env.flags, &pair, "bench").await?;
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    // The shipped defaults: what `conductor run` does.
    let opts = RunOptions {
        concurrency: runtime::default_concurrency(db.backend()),
        ..RunOptions::default()
    };
    // Timed from the first message stored to the last decided: the transport stores (and
    // ingests) in batches while the consumers decide, as live.
    let start = Instant::now();
    let pool = tokio::spawn(runtime::run(env, opts, stop_rx, runtime::always_open()));
    inbox::submit(&db, messages, "bench").await?;
    // Every message decided (the jobs that spawned wait out their settling: not this figure's
    // business).
    until_messages_decided(&db).await?;
    let secs = start.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    pool.await.map_err(|e| Error::Queue(e.to_string()))??;
    let mut with = String::new();
    if let Some(c) = candidate {
        // Shows the candidate really ran: one evaluation per decided message.
        let evaluated: i64 = crate::scheduling::shadow::verdict_counts(&db, 0)
            .await?
            .values()
            .sum();
        with = format!(" + candidate {c} ({evaluated} evaluated)");
    }
    Ok(Figure::new(
        format!("{label} full pipeline (stored and ingested by the transport, decide step){with}"),
        messages.len(),
        secs,
    ))
}

/// Waits until no message run is in flight: every message submitted so far is decided.
async fn until_messages_decided(db: &Db) -> Result<(), Error> {
    while crate::engine::runs_of_in_flight(db, crate::workflows::message::MESSAGE.name).await? > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Inbox to decision: runs the worker pool as `conductor run` does and submits `messages` one
/// at a time, `rate` a second, as a transport would. Each message's latency is from just
/// before its submit to its decision's timestamp (`decisions.decided_ms`, stamped in the
/// decision's transaction). A redelivery has no decision of its own and is not counted.
pub async fn latency(
    db: Db,
    messages: &[RawMessage],
    rate: u32,
    label: &str,
) -> Result<Figure, Error> {
    let env = Arc::new(Env::new(db.clone(), crate::config::Config::default())?);
    let (stop_tx, stop_rx) = watch::channel(false);
    let opts = RunOptions {
        concurrency: runtime::default_concurrency(db.backend()),
        ..RunOptions::default()
    };
    let pool = tokio::spawn(runtime::run(env, opts, stop_rx, runtime::always_open()));
    // Warm-up, not counted: the first message is decided before the clock starts, so what is
    // timed is a running conductor (its consumers registered and listening), not its start.
    let Some((first, messages)) = messages.split_first() else {
        return Err(Error::Invalid("the latency run needs messages".into()));
    };
    inbox::submit(&db, std::slice::from_ref(first), "bench").await?;
    until_messages_decided(&db).await?;
    let mut submitted = std::collections::HashMap::new();
    let gap = std::time::Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let start = Instant::now();
    let mut next = tokio::time::Instant::now();
    for m in messages {
        tokio::time::sleep_until(next).await;
        next += gap;
        // The first delivery's time: a redelivery finds the message stored.
        submitted.entry(m.transport_id.clone()).or_insert(now_ms());
        inbox::submit(&db, std::slice::from_ref(m), "bench").await?;
    }
    until_messages_decided(&db).await?;
    let secs = start.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    pool.await.map_err(|e| Error::Queue(e.to_string()))??;
    let rows: Vec<(String, i64)> = crate::with_pool!(&db, |p| {
        sqlx::query_as(
        "SELECT m.transport_id, d.decided_ms FROM decisions d JOIN messages m ON m.id = d.message_id"
    )
    .fetch_all(p)
    .await?
    });
    let samples: Vec<f64> = rows
        .iter()
        .filter_map(|(id, decided)| submitted.get(id).map(|s| (decided - s) as f64))
        .collect();
    let mut figure = Figure::new(
        format!("{label} inbox -> decision latency, one message at a time, {rate}/s"),
        samples.len(),
        secs,
    );
    figure.latency_ms = Some(Percentiles::of(samples));
    Ok(figure)
}

/// Creates a uniquely named database beside `admin_url`'s and connects to it; the returned
/// future drops it.
pub async fn fresh_postgres(
    admin_url: &str,
    prefix: &str,
) -> Result<
    (
        Db,
        String,
        impl std::future::Future<Output = Result<(), Error>>,
    ),
    Error,
> {
    use sqlx::Connection;
    let name = format!("{prefix}_{}_{}", std::process::id(), now_ms());
    let mut admin = sqlx::PgConnection::connect(admin_url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await?;
    let url = replace_db_name(admin_url, &name);
    let db = Db::connect(&url).await?;
    let admin_url = admin_url.to_owned();
    let cleanup = async move {
        let mut admin = sqlx::PgConnection::connect(&admin_url).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await?;
        Ok(())
    };
    Ok((db, url, cleanup))
}

/// `postgres://host/db?x` with the database name replaced.
pub fn replace_db_name(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{name}", &base[..path_start]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn replaces_database_names() {
        assert_eq!(
            super::replace_db_name("postgres://u@127.0.0.1:5432/postgres", "x"),
            "postgres://u@127.0.0.1:5432/x"
        );
        assert_eq!(
            super::replace_db_name("postgres://127.0.0.1/test?sslmode=disable", "y"),
            "postgres://127.0.0.1/y?sslmode=disable"
        );
        assert_eq!(
            super::replace_db_name("postgres://127.0.0.1", "z"),
            "postgres://127.0.0.1/z"
        );
    }
}
