//! `conductor bench ingest`: the SQS transport into decisions, against any SQS-compatible
//! endpoint (a moto or ministack on loopback, or AWS itself with a throwaway queue). Two runs,
//! each on a queue of its own and a fresh database, with the real receivers and the real
//! ingest and decide steps (no job steps: nothing is spawned as a process):
//!
//! - **throughput**: `--messages` are sent first, then the transport starts; messages per
//!   second from the first receive to the last decision.
//! - **latency**: messages sent one at a time at `--rate` per second while the transport
//!   runs; for each, the time from SendMessage returning to its decision being committed
//!   (`decisions.decided_ms`), reported as p50 and p99.
//!
//! Nothing here asserts a time; it measures and prints.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use conductor::{
    bench,
    config::{AwsConfig, SqsConfig},
    context::Env,
    db::{now_ms, Db},
    intake::sqs::{Counters, Queue},
    runtime::{self, RunOptions},
    scenario::gen,
    with_pool,
};
use serde::Serialize;
use tokio::sync::watch;

#[derive(Debug, Clone, clap::Args)]
pub struct IngestArgs {
    /// The SQS endpoint (e.g. http://127.0.0.1:4566); default: the AWS_* environment's.
    #[arg(long)]
    pub endpoint_url: Option<String>,
    #[arg(long, default_value = "us-east-1")]
    pub region: String,
    /// Postgres server to create scratch databases on; default: SQLite files.
    #[arg(long)]
    pub postgres: Option<String>,
    /// Messages for the throughput run (a ticket each, a quarter of them repeats).
    #[arg(long, default_value_t = 2_000)]
    pub messages: usize,
    /// Messages for the latency run.
    #[arg(long, default_value_t = 200)]
    pub latency_messages: usize,
    /// Messages per second in the latency run.
    #[arg(long, default_value_t = 20)]
    pub rate: u32,
    /// Concurrent long polls.
    #[arg(long, default_value_t = 2)]
    pub receivers: usize,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct IngestReport {
    pub backend: &'static str,
    pub receivers: usize,
    pub messages: usize,
    pub seconds: f64,
    pub per_second: f64,
    pub latency_messages: usize,
    pub rate: u32,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
}

impl IngestReport {
    pub fn render(&self) -> String {
        format!(
            "SQS -> decisions on {} with {} receivers\n  throughput: {} messages in {:.2} s = {:.0} messages/s\n  latency (SendMessage -> decision committed), {} messages at {}/s: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms\n",
            self.backend,
            self.receivers,
            self.messages,
            self.seconds,
            self.per_second,
            self.latency_messages,
            self.rate,
            self.latency_p50_ms,
            self.latency_p99_ms,
            self.latency_max_ms
        )
    }
}

fn bodies(n: usize, tag: &str) -> Vec<String> {
    (0..n)
        .map(|i| {
            // A quarter are repeats of an earlier key: decided as duplicates.
            let key = if i % 4 == 3 { i - 1 } else { i };
            gen::ticket(&format!("ING{tag}-{key}"), "ingest bench", None)
        })
        .collect()
}

/// A database for one run, and what drops it afterwards.
async fn scratch(
    args: &IngestArgs,
    dir: &std::path::Path,
    name: &str,
) -> Result<(
    Db,
    Option<std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), conductor::Error>>>>>,
)> {
    Ok(match &args.postgres {
        Some(admin) => {
            let (db, _, cleanup) = bench::fresh_postgres(admin, "conductor_ingest").await?;
            (db, Some(Box::pin(cleanup)))
        }
        None => (
            Db::connect(&format!(
                "sqlite:{}",
                dir.join(format!("{name}.db")).display()
            ))
            .await?,
            None,
        ),
    })
}

/// The transport and the ingest and decide steps, running until the returned sender says stop.
fn start_pipeline(
    db: &Db,
    queue: Queue,
    counters: Arc<Counters>,
) -> Result<(watch::Sender<bool>, Vec<tokio::task::JoinHandle<()>>)> {
    let env = Arc::new(Env::new(db.clone(), conductor::config::Config::default())?);
    let (stop_tx, stop_rx) = watch::channel(false);
    // The shipped defaults: what `conductor run` does.
    let opts = RunOptions {
        concurrency: conductor::runtime::default_concurrency(db.backend()),
        steps: vec!["ingest".into(), "decide".into()],
        ..RunOptions::default()
    };
    let pool = tokio::spawn({
        let stop = stop_rx.clone();
        async move {
            if let Err(e) = runtime::run(env, opts, stop, runtime::always_open()).await {
                tracing::error!(error = %e, "worker pool failed");
            }
        }
    });
    let transport = tokio::spawn(conductor::intake::sqs::run(
        queue,
        db.clone(),
        stop_rx,
        runtime::always_open(),
        counters,
    ));
    Ok((stop_tx, vec![pool, transport]))
}

/// A database's clean-up, when it was a scratch Postgres database.
type Cleanup =
    Option<std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), conductor::Error>>>>>;

/// Stops a run's transport and steps, then drops its database and its queue.
async fn end_run(
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    db: Db,
    cleanup: Cleanup,
    sqs: &aws_sdk_sqs::Client,
    url: &str,
) -> Result<()> {
    let _ = stop.send(true);
    for t in tasks {
        let _ = t.await;
    }
    db.close().await;
    if let Some(c) = cleanup {
        c.await?;
    }
    let _ = sqs.delete_queue().queue_url(url).send().await;
    Ok(())
}

/// Waits until `db` holds at least `n` decisions.
async fn until_decided(db: &Db, n: i64) -> Result<()> {
    loop {
        let decided = with_pool!(db, |p| sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM decisions"
        )
        .fetch_one(p)
        .await?);
        if decided >= n {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn new_queue(sqs: &aws_sdk_sqs::Client, name: &str) -> Result<String> {
    sqs.create_queue()
        .queue_name(name)
        .send()
        .await
        .context("CreateQueue")?
        .queue_url
        .context("CreateQueue returned no URL")
}

pub async fn run(args: &IngestArgs) -> Result<IngestReport> {
    let sdk = conductor::aws::sdk_config(&AwsConfig {
        region: Some(args.region.clone()),
        endpoint_url: args.endpoint_url.clone(),
    })
    .await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    // One spinner for the whole run (its phases log at INFO when asked).
    let spin = super::progress::spinner(format!(
        "SQS ingest: {} messages through {}",
        args.messages,
        args.endpoint_url.as_deref().unwrap_or("AWS")
    ));
    let dir = tempfile::tempdir()?;
    let tag = format!("{}", now_ms());
    let sqs_config = |url: String| SqsConfig {
        queue_url: Some(url),
        receivers: args.receivers,
        wait: Duration::from_secs(1),
        batch: 10,
        visibility: Duration::from_secs(60),
    };

    // Throughput: a full queue, then the transport.
    let url = new_queue(&sqs, &format!("conductor-bench-ingest-{tag}")).await?;
    for chunk in bodies(args.messages, &format!("{tag}T")).chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, b)| {
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(b)
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        sqs.send_message_batch()
            .queue_url(&url)
            .set_entries(Some(entries))
            .send()
            .await
            .context("SendMessageBatch")?;
    }
    let (db, cleanup) = scratch(args, dir.path(), "throughput").await?;
    let counters = Arc::new(Counters::default());
    let queue = Queue::new(&sdk, &sqs_config(url.clone()))?;
    let started = Instant::now();
    let (stop, tasks) = start_pipeline(&db, queue, counters.clone())?;
    until_decided(&db, args.messages as i64).await?;
    let seconds = started.elapsed().as_secs_f64();
    end_run(stop, tasks, db, cleanup, &sqs, &url).await?;

    // Latency: paced sends while the transport runs.
    let url = new_queue(&sqs, &format!("conductor-bench-latency-{tag}")).await?;
    let (db, cleanup) = scratch(args, dir.path(), "latency").await?;
    let queue = Queue::new(&sdk, &sqs_config(url.clone()))?;
    let (stop, tasks) = start_pipeline(&db, queue, Arc::new(Counters::default()))?;
    // Warm-up, not counted: one message decided before the clock starts, so what is timed is
    // a running transport and pipeline (receivers polling, consumers listening), not its start.
    for body in bodies(1, &format!("{tag}W")) {
        sqs.send_message()
            .queue_url(&url)
            .message_body(body)
            .send()
            .await
            .context("SendMessage")?;
    }
    until_decided(&db, 1).await?;
    let mut sent: HashMap<String, i64> = HashMap::new();
    let gap = Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1)));
    let mut next = tokio::time::Instant::now();
    for body in bodies(args.latency_messages, &format!("{tag}L")) {
        tokio::time::sleep_until(next).await;
        next += gap;
        let id = sqs
            .send_message()
            .queue_url(&url)
            .message_body(body)
            .send()
            .await
            .context("SendMessage")?
            .message_id
            .context("SendMessage returned no id")?;
        sent.insert(id, now_ms());
    }
    until_decided(&db, args.latency_messages as i64 + 1).await?;
    let rows: Vec<(String, i64)> = with_pool!(&db, |p| {
        sqlx::query_as(
        "SELECT m.transport_id, d.decided_ms FROM decisions d JOIN messages m ON m.id = d.message_id"
    )
    .fetch_all(p)
    .await?
    });
    end_run(stop, tasks, db, cleanup, &sqs, &url).await?;
    let samples: Vec<f64> = rows
        .iter()
        .filter_map(|(id, decided)| sent.get(id).map(|s| (decided - s) as f64))
        .collect();
    let timed = samples.len();
    let latency = bench::Percentiles::of(samples);
    spin.finish_and_clear();
    Ok(IngestReport {
        backend: if args.postgres.is_some() {
            "postgres"
        } else {
            "sqlite"
        },
        receivers: args.receivers,
        messages: args.messages,
        seconds,
        per_second: args.messages as f64 / seconds,
        latency_messages: timed,
        rate: args.rate,
        latency_p50_ms: latency.p50,
        latency_p99_ms: latency.p99,
        latency_max_ms: latency.max,
    })
}
