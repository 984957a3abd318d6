//! `conductor run` as a library call: the worker protocol, the step queues, the SQS transport
//! and the shutdown gate, run until the conductor is idle or drained (docs/design.md section
//! 6). The binary only parses its arguments and calls [`run`], as tokio's mini-redis calls
//! `server::run(listener, shutdown)`.

use std::{
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::sync::watch;

use crate::{
    config::Config,
    context::Env,
    db::{now_ms, Db},
    engine,
    error::Error,
    grpc,
    intake::gate,
    jobs,
    observe::replicas::{self, Intake},
    runtime::{self, RunOptions},
    scheduling::flags,
};

/// How [`run`] runs: until idle or until drained; whether a missing route refuses the start.
#[derive(Debug, Clone, Copy, Default)]
pub struct Serving {
    /// Stop once no run is in flight (`conductor run --until-idle`), as well as when drained.
    pub until_idle: bool,
    /// Start even when a kind of job has no route (such jobs fail).
    pub allow_unrouted: bool,
}

/// Runs the worker protocol and the step workers until idle, or until the shutdown gate is
/// closed and the drain is complete ([`gate`]): the whole of `conductor run`. `signals` are
/// taken before anything else starts, so a SIGTERM during start-up drains instead of killing.
pub async fn run(
    db: Db,
    mut config: Config,
    opts: RunOptions,
    serving: Serving,
    run_dir: &std::path::Path,
    signals: Signals,
) -> Result<(), Error> {
    let until_idle = serving.until_idle;
    // The metrics recorder, installed before any step counts anything.
    crate::telemetry::handle();
    let (listener, bound) = grpc::bind(&config.grpc.listen).await?;
    if config.grpc.advertise.is_none() {
        config.grpc.advertise = Some(format!("http://{bound}"));
    }
    let http = match config.http.listen.as_str() {
        "" => None,
        addr => Some(crate::http::bind(addr).await?),
    };
    let (lease, handshake) = (config.jobs.lease, config.jobs.handshake_timeout);
    let resolved = check_flags(&config, &db).await?;
    check_routes(&config, &resolved, serving.allow_unrouted)?;
    let startup = describe(&config, &db, http.as_ref().map(|(_, a)| *a));
    let operator_token = crate::secrets::get(&config.http.operator_token_env);
    let webhooks = crate::http::webhooks::Webhooks::new(&config.webhooks)?;
    if webhooks.is_some() && config.http.listen.is_empty() {
        return Err(Error::Config(
            "webhooks are configured (a Jira secret or webhooks.sns_topics) but http.listen is not set: nothing would receive them".into(),
        ));
    }
    let env = Arc::new(Env::load(db.clone(), config).await?);
    let queue = match &env.config.sqs.queue_url {
        Some(_) => {
            let sdk = crate::aws::sdk_config(&env.config.aws).await;
            let queue = crate::intake::sqs::Queue::new(&sdk, &env.config.sqs)?;
            queue.check().await?;
            Some(queue)
        }
        None => None,
    };
    let extended = jobs::extend_live_attempts(
        &db,
        lease.as_millis() as i64,
        handshake.as_millis() as i64,
        now_ms(),
    )
    .await?;
    if extended > 0 {
        tracing::info!(
            extended,
            "gave live workers a fresh lease after the restart"
        );
    }
    // A starting conductor's gate file says false, and so does the gate: a deploy's new
    // replicas reopen intake that the old ones closed.
    gate::init_files(run_dir)?;
    gate::set(&db, false, &format!("start:{}", replicas::whoami())).await?;
    tracing::info!("{startup}, gate open");
    let (_watcher, file_rx) = gate::watch_file(run_dir)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    // A paused deployment stays paused through the start: intake opens only if no pause is
    // recorded, before any step worker runs.
    let paused = gate::switches(&db).await?.pause.closed;
    if paused {
        tracing::warn!(
            "intake paused (`conductor pause`): nothing new starts until `conductor unpause`"
        );
    }
    let (open_tx, open_rx) = watch::channel(!paused);
    let running = runtime::IntakeRunning::default();
    let (intake_tx, intake_rx) = watch::channel(if paused { Intake::Paused } else { Intake::Open });
    let last_tick_ms = Arc::new(AtomicI64::new(now_ms()));
    let web = http.map(|(listener, bound)| {
        let process = crate::http::Process {
            last_tick_ms: last_tick_ms.clone(),
            intake: intake_rx,
        };
        let mut state = crate::http::HttpState::new(db.clone(), Some(process), operator_token);
        state.webhooks = webhooks.map(Arc::new);
        (
            bound,
            tokio::spawn(crate::http::serve(listener, state, stop_rx.clone())),
        )
    });
    let protocol = grpc::serve(env.clone(), listener, stop_rx.clone());
    let transport = queue.map(|queue| {
        tokio::spawn(crate::intake::sqs::run(
            queue,
            db.clone(),
            stop_rx.clone(),
            open_rx.clone(),
            Default::default(),
        ))
    });
    let pool = tokio::spawn(runtime::run_counted(
        env,
        opts,
        stop_rx,
        open_rx,
        running.clone(),
    ));
    let watch = Watch {
        replica: Replica {
            id: replicas::whoami(),
            started_ms: now_ms(),
            http: web.as_ref().map(|(bound, _)| format!("http://{bound}")),
        },
        last_tick_ms,
        intake: intake_tx,
    };
    let file = GateFile {
        run_dir,
        changes: file_rx,
    };
    let reason = supervise(&db, file, until_idle, open_tx, running, signals, &watch).await?;
    tracing::info!(reason, "stopping: waiting for in-flight steps");
    watch.publish(&db, Intake::Stopped).await;
    let _ = stop_tx.send(true);
    if let Some(transport) = transport {
        transport
            .await
            .map_err(|e| Error::Queue(format!("the SQS transport panicked: {e}")))?;
    }
    pool.await
        .map_err(|e| Error::Queue(format!("the worker pool panicked: {e}")))??;
    protocol
        .await
        .map_err(|e| Error::Queue(format!("the worker protocol panicked: {e}")))??;
    if let Some((_, web)) = web {
        web.await
            .map_err(|e| Error::Queue(format!("the HTTP listener panicked: {e}")))??;
    }
    Ok(())
}

/// How long one pass of the supervising loop waits for the database before it goes round
/// again (so `/healthz` stays true through a database outage).
const DB_PATIENCE: Duration = Duration::from_secs(5);

/// This replica as `replicas` records it.
struct Replica {
    id: String,
    started_ms: i64,
    http: Option<String>,
}

/// What the supervising loop tells the outside: `/healthz` (it went round), `/readyz` (the
/// intake), and the `replicas` table (both, every [`replicas::HEARTBEAT`]).
struct Watch {
    replica: Replica,
    last_tick_ms: Arc<AtomicI64>,
    intake: watch::Sender<Intake>,
}

impl Watch {
    /// The loop went round.
    fn alive(&self) {
        self.last_tick_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// One round of the loop: the intake, and the replica's row when due.
    async fn tick(&self, db: &Db, intake: Intake, last_recorded: &mut Option<std::time::Instant>) {
        let changed = self.intake.send_if_modified(|current| {
            let changed = *current != intake;
            *current = intake;
            changed
        });
        let due = last_recorded.is_none_or(|t| t.elapsed() >= replicas::HEARTBEAT);
        if changed || due {
            self.publish(db, intake).await;
            *last_recorded = Some(std::time::Instant::now());
        }
    }

    /// Records the replica's row now. A database outage only delays it: the gate follower
    /// reports the outage.
    async fn publish(&self, db: &Db, intake: Intake) {
        let r = &self.replica;
        let _ = self.intake.send(intake);
        let record = replicas::record(db, &r.id, r.started_ms, intake, r.http.as_deref(), now_ms());
        match tokio::time::timeout(DB_PATIENCE, record).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "cannot record this replica"),
            Err(_) => tracing::debug!("recording this replica timed out"),
        }
    }
}

/// The flags as this replica resolves them: a contradiction refuses to start, anything merely
/// odd is logged.
async fn check_flags(config: &Config, db: &Db) -> Result<flags::Resolved, Error> {
    // The flags as this replica resolves them: a contradiction refuses to start, anything
    // merely odd is logged.
    let (resolved, warnings) = flags::Settings::from_config(config.flag_config())?
        .check(&flags::read(db).await?)
        .map_err(|e| {
            Error::Config(format!(
                "refusing to start: the flags contradict each other: {e}"
            ))
        })?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    tracing::info!(
        incidents = resolved.incidents.value.as_str(),
        policy = %resolved.policy.value,
        candidate = resolved.candidate.value.as_deref().unwrap_or(flags::NONE),
        "flags"
    );
    Ok(resolved)
}

/// Refuses to start when a kind of job that can start has no route, unless told to.
fn check_routes(
    config: &Config,
    resolved: &flags::Resolved,
    allow_unrouted: bool,
) -> Result<(), Error> {
    let unrouted = config.unrouted_kinds(resolved.incidents.value == flags::Incidents::On);
    if !unrouted.is_empty() {
        let file = config
            .source
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "conductor.toml (none was loaded; pass --config)".into());
        if !allow_unrouted {
            return Err(Error::Config(format!(
                "refusing to start: {} — add it to {file}, or pass --allow-unrouted",
                unrouted.join("; ")
            )));
        }
        tracing::warn!(missing = %unrouted.join("; "), "starting without a route: such jobs will fail");
    }
    Ok(())
}

/// The start-up line: version, configuration, database, intake, spawner, forge and the HTTP
/// listener.
fn describe(config: &Config, db: &Db, http: Option<std::net::SocketAddr>) -> String {
    format!(
        "conductor {} starting: config {}, database {}, intake {}, spawner {}, forge {}, http {}",
        env!("CARGO_PKG_VERSION"),
        config
            .source
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "defaults (no file)".into()),
        db.describe(),
        match &config.sqs.queue_url {
            Some(q) => format!("inbox + SQS {q}"),
            None => "inbox".into(),
        },
        match config.worker.spawner {
            crate::config::SpawnerKind::Local =>
                format!("local (work root {})", config.worker.work_root.display()),
            crate::config::SpawnerKind::Ecs => format!("ecs (cluster {})", config.ecs.cluster),
        },
        match config.forge.kind {
            crate::config::ForgeKind::Local => "local".to_owned(),
            crate::config::ForgeKind::Github => format!("github {}", config.forge.base_url),
        },
        match http {
            Some(addr) => format!("http://{addr} (/healthz /readyz /metrics, console at /)"),
            None => "off (set http.listen)".into(),
        },
    )
}

/// The run directory's gate file: where the ready file goes, and the file's changes.
struct GateFile<'a> {
    run_dir: &'a std::path::Path,
    changes: tokio::sync::mpsc::UnboundedReceiver<bool>,
}

/// Follows the gate (the file, the database flag, signals) until it is time to stop. The
/// database may be unreachable for a while (a restart, a failover): the gate then keeps its
/// last state, a signal still closes this process's intake, and a file change waits to be
/// written.
async fn supervise(
    db: &Db,
    GateFile {
        run_dir,
        changes: mut file_rx,
    }: GateFile<'_>,
    until_idle: bool,
    open_tx: watch::Sender<bool>,
    intake_running: runtime::IntakeRunning,
    Signals { mut term, mut int }: Signals,
    watch: &Watch,
) -> Result<&'static str, Error> {
    let mut gate = GateFollower {
        paused: *watch.intake.borrow() == Intake::Paused,
        ..GateFollower::default()
    };
    let mut outage = false;
    let mut recorded = None;
    loop {
        tokio::select! {
            _ = term.recv() => on_signal("SIGTERM", &mut gate.local_closed),
            _ = int.recv() => on_signal("SIGINT", &mut gate.local_closed),
            Some(closed) = file_rx.recv() => gate.file_says = Some(closed),
            // While draining, the ready file follows the last job's end closely.
            _ = tokio::time::sleep(Duration::from_millis(if gate.announced { 20 } else { 100 })) => {}
        }
        // Alive as long as the loop goes round, whatever the database does (`/healthz`).
        watch.alive();
        if gate.local_closed {
            close_intake(&open_tx, true);
        }
        // A database that takes no writes (a full disk, read-only) closes intake until a
        // write succeeds again; the steps in flight wait for it themselves. A database that
        // does not answer at all holds a pass for DB_PATIENCE at most: the gate then keeps its
        // last state until the next.
        let _ = tokio::time::timeout(DB_PATIENCE, gate.storage_check(db, &open_tx)).await;
        let followed = tokio::time::timeout(
            DB_PATIENCE,
            gate.follow(db, until_idle, &open_tx, &intake_running),
        )
        .await
        .unwrap_or_else(|_| {
            Err(Error::Unavailable(format!(
                "the database did not answer within {}",
                humantime::format_duration(DB_PATIENCE)
            )))
        });
        watch.tick(db, gate.intake(), &mut recorded).await;
        match followed {
            Ok(done) => {
                if outage {
                    tracing::info!("database reachable again");
                    outage = false;
                }
                if let Some(reason) = done {
                    if reason == "drained" {
                        let ready = gate::write_ready(run_dir)?;
                        tracing::info!(file = %ready.display(), "drained: ready for a safe shutdown");
                    }
                    return Ok(reason);
                }
            }
            Err(e) if !outage => {
                tracing::warn!(error = %e, "cannot read the gate from the database; keeping its last state");
                outage = true;
            }
            Err(_) => {}
        }
    }
}

/// SIGTERM and SIGINT, caught from the moment `conductor run` starts (a signal that arrives
/// before the gate is followed waits for it).
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn new() -> Result<Signals, Error> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())
                .map_err(|e| Error::Config(format!("cannot catch SIGTERM: {e}")))?,
            int: signal(SignalKind::interrupt())
                .map_err(|e| Error::Config(format!("cannot catch SIGINT: {e}")))?,
        })
    }
}

/// Sets the intake switch; whether it changed.
fn close_intake(open_tx: &watch::Sender<bool>, closed: bool) -> bool {
    open_tx.send_if_modified(|open| {
        let changed = *open == closed;
        *open = !closed;
        changed
    })
}

/// What [`supervise`] knows of the gate between ticks.
#[derive(Default)]
struct GateFollower {
    /// A signal closed this process's gate (not the shared one).
    local_closed: bool,
    /// The gate file's latest word, not yet written to the database.
    file_says: Option<bool>,
    /// "gate closed" has been logged for the current closing.
    announced: bool,
    /// The operator's pause, as last seen (a change is logged once).
    paused: bool,
    /// Intake is closed because the database takes no writes; when it was last probed.
    storage_closed: Option<std::time::Instant>,
}

impl GateFollower {
    /// The intake as this replica runs it now, worst first.
    fn intake(&self) -> Intake {
        if self.local_closed || self.announced {
            Intake::Draining
        } else if self.storage_closed.is_some() {
            Intake::Closed
        } else if self.paused {
            Intake::Paused
        } else {
            Intake::Open
        }
    }

    /// Follows storage trouble: closes intake (saying why, once) while the database takes no
    /// writes, probes it every second, and hands intake back to the gate once a write
    /// succeeds. Whether intake is held closed for it now.
    async fn storage_check(&mut self, db: &Db, open_tx: &watch::Sender<bool>) -> bool {
        use crate::db::storage;
        match (self.storage_closed, storage::in_trouble()) {
            (None, None) => false,
            (None, Some(cause)) => {
                tracing::error!(cause = %cause, "the database cannot store anything (disk or database full, or read-only): intake stopped; nothing is lost, and it resumes once writes succeed");
                close_intake(open_tx, true);
                self.storage_closed = Some(std::time::Instant::now());
                true
            }
            (Some(last), _) if last.elapsed() < Duration::from_secs(1) => true,
            (Some(_), _) => match storage::probe(db).await {
                Ok(()) => {
                    tracing::info!("the database takes writes again: intake resumes");
                    self.storage_closed = None;
                    false
                }
                Err(_) => {
                    self.storage_closed = Some(std::time::Instant::now());
                    true
                }
            },
        }
    }

    /// One look at the database: applies the file's word, opens or closes intake, and says
    /// whether it is time to stop ("drained", or "idle" under `--until-idle`).
    async fn follow(
        &mut self,
        db: &Db,
        until_idle: bool,
        open_tx: &watch::Sender<bool>,
        intake_running: &runtime::IntakeRunning,
    ) -> Result<Option<&'static str>, Error> {
        if let Some(closed) = self.file_says {
            // One write raises several events: act when the file disagrees with the gate.
            if gate::state(db).await?.closed != closed {
                gate::set(db, closed, &format!("file:{}", replicas::whoami())).await?;
            }
            self.file_says = None;
        }
        let switches = gate::switches(db).await?;
        let closed = self.local_closed || switches.gate.closed;
        let paused = switches.pause.closed;
        close_intake(open_tx, closed || paused || self.storage_closed.is_some());
        if paused != self.paused {
            if paused {
                tracing::warn!(by = %switches.pause.by, "intake paused on every replica until `conductor unpause`; running jobs go on");
            } else {
                tracing::info!(by = %switches.pause.by, "intake unpaused");
            }
            self.paused = paused;
        }
        if !closed {
            if self.announced {
                tracing::info!("gate reopened: intake resumes");
                self.announced = false;
            }
            if until_idle && engine::runs_in_flight(db).await? == 0 {
                return Ok(Some("idle"));
            }
            return Ok(None);
        }
        let intake = intake_running.load(std::sync::atomic::Ordering::SeqCst);
        let busy = gate::in_flight(db).await?;
        if !self.announced {
            tracing::info!(
                job_steps = busy.job_steps,
                workers = busy.workers,
                "gate closed: intake stopped, draining"
            );
            self.announced = true;
        }
        Ok((busy.is_empty() && intake == 0).then_some("drained"))
    }
}

fn on_signal(name: &str, local_closed: &mut bool) {
    if *local_closed {
        tracing::warn!(
            signal = name,
            "already draining; only SIGKILL skips the drain"
        );
    } else {
        tracing::info!(signal = name, "closing this conductor's gate; draining");
        *local_closed = true;
    }
}
