//! `conductor bench decide`: the decision path's speed on SQLite and Postgres.

use anyhow::{bail, Result};

use super::{args::BenchCmd, progress};
use conductor::{
    bench,
    scenario::{self, replay},
    scheduling::policy::Policy,
};

/// `conductor bench`.
pub async fn run(cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Decide {
            events,
            postgres,
            clients,
            postgres_events,
            pipeline_events,
            statement_events,
            latency_messages,
            rate,
            peers,
            peer_jobs,
            docs,
            json,
        } => {
            let sizes = Sizes {
                events,
                clients,
                postgres_events,
                pipeline_events,
                statement_events,
                latency: (latency_messages, rate),
                peers: peers.then_some((docs, peer_jobs)),
            };
            let figures = decide(sizes, postgres, json).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&figures)?);
            }
        }
        BenchCmd::Ingest(args) => {
            let report = super::ingest_bench::run(&args).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
        }
        BenchCmd::Drain(args) => {
            let report = super::drain_bench::run(&args).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
            let clean = report
                .rounds
                .iter()
                .all(|r| r.exit_code == Some(0) && r.jobs_succeeded == report.agents as i64);
            if !clean {
                bail!("a drain did not end cleanly (exit code or jobs above)");
            }
        }
    }
    Ok(())
}

/// How much `bench decide` measures.
pub struct Sizes {
    events: usize,
    clients: Vec<usize>,
    postgres_events: usize,
    pipeline_events: usize,
    statement_events: usize,
    /// Messages for the latency run, and their rate a second.
    latency: (usize, u32),
    /// Where the limit scripts are, and the jobs each peer queue runs (`--peers`).
    peers: Option<(std::path::PathBuf, usize)>,
}

/// `conductor bench decide`: prints each figure as it is measured (unless `json`: then the
/// caller prints them all as one document) and returns them.
pub async fn decide(
    sizes: Sizes,
    postgres: Option<String>,
    json: bool,
) -> Result<Vec<bench::Figure>> {
    let Sizes {
        events,
        clients,
        postgres_events,
        pipeline_events,
        statement_events,
        latency,
        peers,
    } = sizes;
    let stream = bench::stream(
        events
            .max(postgres_events)
            .max(pipeline_events)
            .max(latency.0),
    );
    let measured = std::cell::RefCell::new(Vec::new());
    let print = |f: &bench::Figure| {
        match (json, f.latency_ms) {
            (true, _) => {}
            (false, None) => println!(
                "{:<60} {:>8} events {:>8.2} s {:>10.0} events/s",
                f.name, f.events, f.seconds, f.per_second
            ),
            (false, Some(l)) => println!(
                "{:<60} {:>8} events  p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
                f.name, f.events, l.p50, l.p99, l.max
            ),
        }
        measured.borrow_mut().push(f.clone());
    };
    let slice = 10_000;
    // The write-behind store is what a replay uses on SQLite; the statement store (the live
    // path's queries one by one) is measured beside it on a shorter stream for comparison.
    // The statement store again with a candidate in shadow: what shadow evaluation adds to
    // every decision.
    let candidate = Policy::inline(conductor::scheduling::policy::PolicySpec::parse(
        "window=30m",
    )?);
    for (mode, n, candidate) in [
        (replay::StoreMode::WriteBehind, events, None),
        (
            replay::StoreMode::Statements,
            events.min(statement_events),
            None,
        ),
        (
            replay::StoreMode::Statements,
            events.min(statement_events),
            Some(candidate),
        ),
    ] {
        if n == 0 {
            continue;
        }
        let spin = progress::spinner(format!("sqlite, {mode:?} store: deciding {n} events"));
        let figures =
            bench::decide_sqlite(&stream[..n], replay::DEFAULT_BATCH, slice, mode, candidate)
                .await?;
        spin.finish_and_clear();
        print(&figures[0]);
        if let Some(early) = figures.get(2) {
            print(early);
        }
        if let Some(late) = figures.last().filter(|_| figures.len() > 3) {
            print(late);
        }
    }
    if let Some(url) = &postgres {
        let candidate = Policy::inline(conductor::scheduling::policy::PolicySpec::parse(
            "window=30m",
        )?);
        for &clients in &clients {
            for candidate in [None, Some(candidate.clone())] {
                let spin = progress::spinner(format!(
                    "postgres, {clients} clients: deciding {postgres_events} events"
                ));
                let figure =
                    bench::decide_postgres(url, &stream[..postgres_events], clients, candidate)
                        .await?;
                spin.finish_and_clear();
                print(&figure);
            }
        }
    }
    // The live pipeline, then again with a candidate in shadow.
    for candidate in [None, Some("window=30m")]
        .into_iter()
        .filter(|_| pipeline_events > 0)
    {
        let (db, _dir) = scenario::temp_sqlite().await?;
        let messages = &stream[..pipeline_events];
        let spin = progress::spinner(format!("sqlite pipeline: {pipeline_events} messages"));
        let figure = bench::pipeline(db, messages, "sqlite", candidate).await?;
        spin.finish_and_clear();
        print(&figure);
        if let Some(url) = &postgres {
            let (db, _, cleanup) = bench::fresh_postgres(url, "conductor_bench_pipeline").await?;
            let spin = progress::spinner(format!("postgres pipeline: {pipeline_events} messages"));
            let figure = bench::pipeline(db.clone(), messages, "postgres", candidate).await?;
            spin.finish_and_clear();
            print(&figure);
            db.close().await;
            cleanup.await?;
        }
    }
    // Inbox to decision, one message at a time, on each backend.
    let (latency_messages, rate) = latency;
    if latency_messages > 0 {
        let messages = &stream[..latency_messages.min(stream.len())];
        let (db, _dir) = scenario::temp_sqlite().await?;
        let spin = progress::spinner(format!(
            "sqlite latency: {latency_messages} messages at {rate}/s"
        ));
        let figure = bench::latency(db, messages, rate, "sqlite").await?;
        spin.finish_and_clear();
        print(&figure);
        if let Some(url) = &postgres {
            let (db, _, cleanup) = bench::fresh_postgres(url, "conductor_bench_latency").await?;
            let spin = progress::spinner(format!(
                "postgres latency: {latency_messages} messages at {rate}/s"
            ));
            let figure = bench::latency(db.clone(), messages, rate, "postgres").await?;
            spin.finish_and_clear();
            print(&figure);
            db.close().await;
            cleanup.await?;
        }
    }
    if let (Some(url), Some((docs, jobs))) = (&postgres, &peers) {
        let mut limits = Vec::new();
        for &c in &clients {
            let spin = progress::spinner(format!("limit: pgbench, {c} clients, 30 s"));
            let figure = super::bench_peers::pgbench(docs, url, c, 30)?;
            spin.finish_and_clear();
            print(&figure);
            limits.push(figure);
        }
        for figure in super::bench_peers::peers(&docs.join("peers"), url, *jobs, 8)? {
            print(&figure);
            limits.push(figure);
        }
        if !json {
            print_ratios(&measured.borrow(), &limits);
        }
    }
    Ok(measured.into_inner())
}

/// Conductor's Postgres figures as shares of each limit measured beside them.
fn print_ratios(measured: &[bench::Figure], limits: &[bench::Figure]) {
    let ours: Vec<_> = measured
        .iter()
        .filter(|f| f.name.starts_with("postgres") && !f.name.contains("candidate"))
        .collect();
    println!("\nratios (Conductor / limit, same run):");
    for o in &ours {
        for l in limits {
            // Each decide run is read against pgbench at its own client count; the pipeline
            // against every limit.
            let same_clients = l.name.contains("pgbench")
                && clients_of(&o.name).is_some_and(|c| clients_of(&l.name) == Some(c));
            if o.name.contains("pipeline") || same_clients {
                println!(
                    "  {:<60} / {:<55} {:>6.0}%",
                    o.name,
                    l.name,
                    100.0 * o.per_second / l.per_second.max(1e-9)
                );
            }
        }
    }
}

/// The `N` of "N clients" in a figure's name.
fn clients_of(name: &str) -> Option<usize> {
    let end = name.find(" clients")?;
    name[..end]
        .rsplit(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}
