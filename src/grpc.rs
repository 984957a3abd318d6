//! The worker protocol's server side (`proto/proto/conductor.proto`), served by `conductor run`.
//!
//! Every call authenticates the worker (its id must name an attempt, its token must be that
//! attempt's) and runs in one transaction with the attempt row (locked on Postgres). A
//! handshake or a report wakes the job's waiting step, so nothing in the job workflow blocks
//! on a worker. No token is ever logged or put into a reply.

use std::{net::SocketAddr, sync::Arc};

use conductor_proto::{
    conductor_server::{Conductor, ConductorServer},
    Credentials, FetchFilesRequest, FileChunk, GitCredentialsReply, GitCredentialsRequest,
    HandshakeReply, HandshakeRequest, HeartbeatReply, HeartbeatRequest, ReportReply, ReportRequest,
};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::{
    context::Env,
    db::{now_ms, Tx},
    engine,
    error::Error,
    jobs::{self, Attempt, AttemptState, Report},
};

/// File content per streamed chunk.
const CHUNK: usize = 64 * 1024;

pub struct WorkerService {
    env: Arc<Env>,
}

fn db_status(e: Error) -> Status {
    if e.is_retryable() {
        Status::unavailable(e.to_string())
    } else {
        Status::internal(e.to_string())
    }
}

impl WorkerService {
    pub fn new(env: Arc<Env>) -> Self {
        WorkerService { env }
    }

    /// Opens the call's transaction and finds the caller's attempt, refusing strangers.
    async fn authenticate(&self, creds: Option<Credentials>) -> Result<(Tx, Attempt), Status> {
        let creds = creds.ok_or_else(|| Status::unauthenticated("missing worker credentials"))?;
        if creds.worker_id.is_empty() {
            return Err(Status::unauthenticated("missing worker id"));
        }
        let mut tx = self.env.db.begin().await.map_err(db_status)?;
        let attempt = jobs::attempt_by_worker(&mut tx, &creds.worker_id)
            .await
            .map_err(db_status)?
            .ok_or_else(|| Status::not_found(format!("unknown worker id {}", creds.worker_id)))?;
        if !crate::secrets::token_matches(&attempt.token, &creds.token) {
            tracing::warn!(worker_id = %creds.worker_id, "refused a call with a wrong or missing token");
            return Err(Status::unauthenticated(format!(
                "wrong or missing token for worker {}",
                creds.worker_id
            )));
        }
        Ok((tx, attempt))
    }

    fn finished(attempt: &Attempt) -> Status {
        Status::failed_precondition(format!(
            "worker {}'s attempt is finished ({})",
            attempt.worker_id,
            if attempt.state == AttemptState::Failed {
                attempt.failure.as_deref().unwrap_or("failed")
            } else {
                attempt.state.as_str()
            }
        ))
    }

    async fn wake(
        &self,
        tx: &mut Tx,
        attempt: &Attempt,
        step: &str,
        now: i64,
    ) -> Result<(), Status> {
        if let Some(run) = jobs::run_of_job(tx, attempt.job_id)
            .await
            .map_err(db_status)?
        {
            engine::wake_step(tx, run, step, now)
                .await
                .map_err(db_status)?;
        }
        Ok(())
    }

    fn handshake_reply(&self, attempt: &Attempt) -> Response<HandshakeReply> {
        let jobs = &self.env.config.jobs;
        Response::new(HandshakeReply {
            job_id: attempt.job_id,
            attempt: attempt.attempt as u32,
            heartbeat_interval_ms: jobs.heartbeat_interval.as_millis() as u64,
            lease_ms: jobs.lease.as_millis() as u64,
            max_total_bytes: jobs.max_task_bytes,
        })
    }

    /// What a report becomes once checked: secrets the conductor knows (the attempt's token,
    /// the forge token) are cut out of every text, and a success on a branch outside the
    /// attempt's own `conductor/<worker id>/` is turned into a failure saying so, so an agent
    /// can neither leak a token into a pull request nor have one opened from another branch.
    fn checked_report(&self, attempt: &Attempt, token: &str, mut report: Report) -> Report {
        // The attempt's token is stored only as its hash: the one to cut is the one the call
        // authenticated with.
        let mut secrets = crate::secrets::values();
        secrets.push(token.to_owned());
        if let Some(t) = crate::secrets::get(&self.env.config.forge.token_env) {
            secrets.push(t);
        }
        for text in [
            &mut report.title,
            &mut report.report,
            &mut report.failure,
            &mut report.branch,
        ] {
            *text = crate::jobs::task_files::redact(text, &secrets);
        }
        // An agent's report may quote anything it read, NULs included, which Postgres text
        // refuses: the store would fail the report forever. Control characters go (line
        // breaks stay in the multi-line texts).
        report.report = crate::scheduling::domain::clean_text(&report.report);
        report.failure = crate::scheduling::domain::clean_text(&report.failure);
        report.title = crate::scheduling::domain::clean_field(&report.title);
        report.branch = crate::scheduling::domain::clean_field(&report.branch);
        let prefix = format!("conductor/{}/", attempt.worker_id);
        // Its own namespace, or the earlier branch it was told to continue.
        let continued = crate::jobs::task_files::continued_branch(&attempt.files);
        if report.success
            && !report.branch.starts_with(&prefix)
            && continued.as_deref() != Some(report.branch.as_str())
        {
            tracing::warn!(worker_id = %attempt.worker_id, branch = %report.branch, "report names a branch outside the attempt's own; recorded as a failure");
            report.failure = format!(
                "the worker reported branch {:?}, outside its own {prefix}",
                report.branch
            );
            report.success = false;
        }
        report
    }

    fn lease_ms(&self) -> i64 {
        self.env.config.jobs.lease.as_millis() as i64
    }
}

#[tonic::async_trait]
impl Conductor for WorkerService {
    async fn handshake(
        &self,
        request: Request<HandshakeRequest>,
    ) -> Result<Response<HandshakeReply>, Status> {
        let req = request.into_inner();
        let (mut tx, attempt) = self.authenticate(req.auth).await?;
        let now = now_ms();
        match attempt.state {
            AttemptState::Spawning | AttemptState::Spawned => {}
            AttemptState::Handshaken | AttemptState::Delivered
                if attempt.worker_host.as_deref() == Some(req.hostname.as_str())
                    && attempt.worker_pid == Some(i64::from(req.pid)) =>
            {
                // The same process again: its first reply was lost. Answer it again.
                tracing::info!(worker_id = %attempt.worker_id, "repeated handshake answered again");
                return Ok(self.handshake_reply(&attempt));
            }
            AttemptState::Handshaken | AttemptState::Delivered => {
                return Err(Status::already_exists(format!(
                    "worker {} has already handshaken (from another process)",
                    attempt.worker_id
                )))
            }
            _ => return Err(Self::finished(&attempt)),
        }
        jobs::advance(
            &mut tx,
            &attempt.worker_id,
            &[AttemptState::Spawning, AttemptState::Spawned],
            AttemptState::Handshaken,
            Some(now + self.lease_ms()),
            now,
        )
        .await
        .map_err(db_status)?;
        // A local worker is its own process group: the pid it gives is the handle to stop it
        // by, even when the spawn that started it never got to record one.
        let handle =
            (attempt.spawner == "local" && req.pid > 0).then(|| format!("pid:{}", req.pid));
        jobs::record_worker(
            &mut tx,
            &attempt.worker_id,
            &req.hostname,
            i64::from(req.pid),
            handle.as_deref(),
        )
        .await
        .map_err(db_status)?;
        self.wake(&mut tx, &attempt, "deliver", now).await?;
        tx.commit().await.map_err(db_status)?;
        tracing::info!(worker_id = %attempt.worker_id, job_id = attempt.job_id, attempt = attempt.attempt, host = %req.hostname, pid = req.pid, "worker handshook");
        Ok(self.handshake_reply(&attempt))
    }

    /// Mints the git credentials of a working attempt for its job's one repository (a GitHub
    /// App's installation token: contents read to clone, contents and pull-request write to
    /// push); an empty reply when the forge mints none. Nothing is stored: each call mints
    /// afresh, just before the transfer it is for (GitHub lets each token live an hour).
    async fn git_credentials(
        &self,
        request: Request<GitCredentialsRequest>,
    ) -> Result<Response<GitCredentialsReply>, Status> {
        let req = request.into_inner();
        let purpose = crate::jobs::forge::GitPurpose::parse(&req.purpose).ok_or_else(|| {
            Status::invalid_argument(format!("unknown purpose {:?} (clone or push)", req.purpose))
        })?;
        let (mut tx, attempt) = self.authenticate(req.auth).await?;
        if !attempt.state.is_working() {
            return Err(Self::finished(&attempt));
        }
        let job = jobs::load_job(&mut tx, attempt.job_id)
            .await
            .map_err(db_status)?;
        drop(tx);
        let Some(repo) = job.forge_repo else {
            return Ok(Response::new(GitCredentialsReply::default()));
        };
        let minted = self.env.forge.git_credentials(&repo, purpose).await.map_err(|e| {
            tracing::warn!(worker_id = %attempt.worker_id, repo = %repo, error = %e, "could not mint push credentials");
            if e.is_retryable() {
                Status::unavailable(format!("minting push credentials for {repo}: {e}"))
            } else {
                Status::failed_precondition(format!("minting push credentials for {repo}: {e}"))
            }
        })?;
        let reply = match minted {
            Some(c) => {
                tracing::info!(worker_id = %attempt.worker_id, repo = %repo, "push credentials minted");
                GitCredentialsReply {
                    username: c.username,
                    password: c.password,
                    expires_ms: c.expires_ms,
                }
            }
            None => GitCredentialsReply::default(),
        };
        Ok(Response::new(reply))
    }

    type FetchFilesStream = tokio_stream::Iter<std::vec::IntoIter<Result<FileChunk, Status>>>;

    async fn fetch_files(
        &self,
        request: Request<FetchFilesRequest>,
    ) -> Result<Response<Self::FetchFilesStream>, Status> {
        let (mut tx, attempt) = self.authenticate(request.into_inner().auth).await?;
        match attempt.state {
            AttemptState::Handshaken | AttemptState::Delivered => {}
            AttemptState::Spawning | AttemptState::Spawned => {
                return Err(Status::failed_precondition(format!(
                    "worker {} must handshake first",
                    attempt.worker_id
                )))
            }
            _ => return Err(Self::finished(&attempt)),
        }
        let files = attempt.task_files().map_err(db_status)?;
        if let Some(bad) = files
            .iter()
            .find(|f| !crate::jobs::task_files::is_plain_file_name(&f.name))
        {
            tracing::error!(worker_id = %attempt.worker_id, name = %bad.name, "refusing to send a task file that would leave the work dir");
            return Err(Status::failed_precondition(format!(
                "refusing to send task file {:?}: it would leave the worker's directory",
                bad.name
            )));
        }
        let total: u64 = files.iter().map(|f| f.content.len() as u64).sum();
        if total > self.env.config.jobs.max_task_bytes {
            return Err(Status::resource_exhausted(format!(
                "task files are {total} bytes, over the limit of {}",
                self.env.config.jobs.max_task_bytes
            )));
        }
        let mut chunks = Vec::new();
        for f in &files {
            let bytes = f.content.as_bytes();
            let mut offset = 0;
            loop {
                let end = (offset + CHUNK).min(bytes.len());
                chunks.push(Ok(FileChunk {
                    name: f.name.clone(),
                    offset: offset as u64,
                    data: bytes[offset..end].to_vec(),
                    last: end == bytes.len(),
                }));
                offset = end;
                if offset >= bytes.len() {
                    break;
                }
            }
        }
        let now = now_ms();
        jobs::advance(
            &mut tx,
            &attempt.worker_id,
            &[AttemptState::Handshaken],
            AttemptState::Delivered,
            None,
            now,
        )
        .await
        .map_err(db_status)?;
        self.wake(&mut tx, &attempt, "deliver", now).await?;
        tx.commit().await.map_err(db_status)?;
        tracing::info!(worker_id = %attempt.worker_id, files = files.len(), bytes = total, "task files delivered");
        Ok(Response::new(tokio_stream::iter(chunks)))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        let req = request.into_inner();
        let (mut tx, attempt) = self.authenticate(req.auth).await?;
        if !attempt.state.is_working() {
            return Err(Self::finished(&attempt));
        }
        let now = now_ms();
        if let Some(until) = attempt.lease_until_ms.filter(|u| *u < now) {
            return Err(Status::failed_precondition(format!(
                "worker {}'s lease expired at {}",
                attempt.worker_id,
                crate::scheduling::domain::format_ms(until)
            )));
        }
        let until = now + self.lease_ms();
        jobs::heartbeat(&mut tx, &attempt.worker_id, &req.phase, until, now)
            .await
            .map_err(db_status)?;
        tx.commit().await.map_err(db_status)?;
        crate::telemetry::heartbeat();
        tracing::debug!(worker_id = %attempt.worker_id, phase = %req.phase, "heartbeat");
        Ok(Response::new(HeartbeatReply {
            lease_until_ms: until,
        }))
    }

    async fn report(
        &self,
        request: Request<ReportRequest>,
    ) -> Result<Response<ReportReply>, Status> {
        let req = request.into_inner();
        let token = req
            .auth
            .as_ref()
            .map(|c| c.token.clone())
            .unwrap_or_default();
        let (mut tx, attempt) = self.authenticate(req.auth).await?;
        let report = self.checked_report(
            &attempt,
            &token,
            Report {
                success: req.success,
                title: req.title,
                report: req.report,
                branch: req.branch,
                head_sha: req.commit,
                failure: req.failure_reason,
            },
        );
        if attempt.state == AttemptState::Reported {
            // The reply to an accepted report was lost (the conductor restarted, say): the
            // same report again is accepted again; a different one is refused.
            let same = attempt.success == Some(report.success)
                && attempt.head_sha.as_deref() == Some(report.head_sha.as_str())
                && attempt.branch.as_deref() == Some(report.branch.as_str());
            return if same {
                Ok(Response::new(ReportReply { accepted: true }))
            } else {
                Err(Status::already_exists(format!(
                    "worker {} has already reported",
                    attempt.worker_id
                )))
            };
        }
        if !attempt.state.is_working() {
            return Err(Self::finished(&attempt));
        }
        let now = now_ms();
        if let Some(until) = attempt.lease_until_ms.filter(|u| *u < now) {
            return Err(Status::failed_precondition(format!(
                "report after worker {}'s lease expired at {}",
                attempt.worker_id,
                crate::scheduling::domain::format_ms(until)
            )));
        }
        jobs::store_report(&mut tx, &attempt.worker_id, &report, now)
            .await
            .map_err(db_status)?;
        self.wake(&mut tx, &attempt, "await", now).await?;
        tx.commit().await.map_err(db_status)?;
        tracing::info!(worker_id = %attempt.worker_id, job_id = attempt.job_id, success = report.success, branch = %report.branch, "report accepted");
        Ok(Response::new(ReportReply { accepted: true }))
    }
}

/// Binds the protocol's listener, so a taken port fails at start (port 0: any free port).
pub async fn bind(listen: &str) -> Result<(tokio::net::TcpListener, SocketAddr), Error> {
    let addr: SocketAddr = listen
        .parse()
        .map_err(|e| Error::Config(format!("grpc.listen {listen:?}: {e}")))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Config(format!("cannot listen on {addr} for workers: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::Config(format!("listener address: {e}")))?;
    Ok((listener, bound))
}

/// Serves the worker protocol on `listener` until `stop`.
pub fn serve(
    env: Arc<Env>,
    listener: tokio::net::TcpListener,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Result<(), Error>> {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|e| format!("(unknown: {e})"));
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tracing::info!(addr = %addr, "worker protocol listening");
    let service = ConductorServer::new(WorkerService::new(env));
    // The standard gRPC health check (`grpc.health.v1.Health`) on the same port, for a load
    // balancer or `grpc_health_probe`: serving while this server runs.
    let (health, health_service) = tonic_health::server::health_reporter();
    tokio::spawn(async move {
        health.set_serving::<ConductorServer<WorkerService>>().await;
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
            .map_err(|e| Error::Unavailable(format!("worker protocol server: {e}")))
    })
}
