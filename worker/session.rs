//! The worker's side of the protocol: calls that retry while the conductor is unreachable
//! (up to the deadline), and the heartbeat loop.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use conductor_proto::{
    conductor_client::ConductorClient, Credentials, FetchFilesRequest, FileChunk,
    GitCredentialsReply, GitCredentialsRequest, HandshakeReply, HandshakeRequest, HeartbeatRequest,
    ReportRequest,
};
use tokio::sync::watch;
use tonic::{transport::Channel, Code, Status};

#[derive(Clone)]
pub struct Session {
    /// One client per conductor address; calls go to `current` and move on to the next
    /// address when it is unreachable (any replica serves any worker: the state is in the
    /// database).
    clients: Arc<Vec<ConductorClient<Channel>>>,
    current: Arc<std::sync::atomic::AtomicUsize>,
    worker_id: String,
    token: String,
    deadline: Duration,
}

/// Whether a failed call may succeed later (the conductor restarting, the network).
fn transient(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Cancelled
    )
}

impl Session {
    /// Lazily connecting channels, one per comma-separated address in `addrs`: the first
    /// call dials, and every call redials after a conductor restart.
    pub async fn connect(
        addrs: &str,
        worker_id: &str,
        token: &str,
        deadline: Duration,
    ) -> Result<Session> {
        let mut clients = Vec::new();
        for addr in addrs.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            let endpoint = Channel::from_shared(addr.to_owned())
                .map_err(|e| anyhow::anyhow!("bad conductor address {addr:?}: {e}"))?
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(30));
            clients.push(ConductorClient::new(endpoint.connect_lazy()));
        }
        if clients.is_empty() {
            bail!("no conductor address given (CONDUCTOR_ADDR is empty)");
        }
        Ok(Session {
            clients: Arc::new(clients),
            current: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            worker_id: worker_id.to_owned(),
            token: token.to_owned(),
            deadline,
        })
    }

    fn client(&self) -> ConductorClient<Channel> {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed);
        self.clients[i % self.clients.len()].clone()
    }

    /// The conductor at the current address did not answer: use the next one.
    fn fail_over(&self) {
        if self.clients.len() > 1 {
            let i = self
                .current
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(
                address = (i + 1) % self.clients.len(),
                "trying the next conductor address"
            );
        }
    }

    fn auth(&self) -> Option<Credentials> {
        Some(Credentials {
            worker_id: self.worker_id.clone(),
            token: self.token.clone(),
        })
    }

    /// Runs `call` until it succeeds, fails for good, or the conductor has been unreachable
    /// for longer than the deadline.
    async fn retrying<T, F, Fut>(&self, what: &str, mut call: F) -> Result<T>
    where
        F: FnMut(ConductorClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let start = Instant::now();
        let mut pause = Duration::from_millis(200);
        loop {
            match call(self.client()).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) if transient(&s) && start.elapsed() < self.deadline => {
                    tracing::warn!(what, code = %s.code(), message = s.message(), "conductor unreachable or busy; retrying");
                    self.fail_over();
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                Err(s) if transient(&s) => bail!(
                    "{what}: the conductor was unreachable for {}: {}",
                    humantime::format_duration(self.deadline),
                    s.message()
                ),
                Err(s) => bail!("{what} refused ({:?}): {}", s.code(), s.message()),
            }
        }
    }

    pub async fn handshake(&self) -> Result<HandshakeReply> {
        let host = hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.retrying("handshake", |mut c| {
            let req = HandshakeRequest {
                auth: self.auth(),
                hostname: host.clone(),
                pid: std::process::id(),
            };
            async move { c.handshake(req).await }
        })
        .await
    }

    /// Credentials for the next clone or push (`purpose`) of the attempt's repository.
    pub async fn git_credentials(&self, purpose: &str) -> Result<GitCredentialsReply> {
        self.retrying("asking for git credentials", |mut c| {
            let req = GitCredentialsRequest {
                auth: self.auth(),
                purpose: purpose.to_owned(),
            };
            async move { c.git_credentials(req).await }
        })
        .await
    }

    /// All chunks of the task files, in order.
    pub async fn fetch_files(&self) -> Result<Vec<FileChunk>> {
        let mut stream = self
            .retrying("fetching task files", |mut c| {
                let req = FetchFilesRequest { auth: self.auth() };
                async move { c.fetch_files(req).await }
            })
            .await?;
        let mut chunks = Vec::new();
        while let Some(chunk) = stream.message().await? {
            chunks.push(chunk);
        }
        Ok(chunks)
    }

    pub async fn report(
        &self,
        success: bool,
        title: &str,
        report: &str,
        branch: &str,
        commit: &str,
        failure: &str,
    ) -> Result<()> {
        self.retrying("report", |mut c| {
            let req = ReportRequest {
                auth: self.auth(),
                success,
                title: title.to_owned(),
                report: report.to_owned(),
                branch: branch.to_owned(),
                commit: commit.to_owned(),
                failure_reason: failure.to_owned(),
            };
            async move { c.report(req).await }
        })
        .await
        .map(|_| ())
    }

    /// Heartbeats every `interval` in the background until dropped.
    pub fn start_heartbeats(&self, interval: Duration) -> Heartbeats {
        let phase = Arc::new(Mutex::new("receiving".to_owned()));
        let (lost_tx, lost_rx) = watch::channel(None::<String>);
        let session = self.clone();
        let p = phase.clone();
        let task = tokio::spawn(async move {
            let mut unreachable_since: Option<Instant> = None;
            loop {
                tokio::time::sleep(interval).await;
                let req = HeartbeatRequest {
                    auth: session.auth(),
                    phase: p.lock().expect("phase lock").clone(),
                };
                match session.client().heartbeat(req).await {
                    Ok(_) => unreachable_since = None,
                    Err(s) if transient(&s) => {
                        session.fail_over();
                        let since = *unreachable_since.get_or_insert_with(Instant::now);
                        tracing::warn!(code = %s.code(), "heartbeat failed: conductor unreachable");
                        if since.elapsed() > session.deadline {
                            let _ = lost_tx.send(Some(format!(
                                "the conductor was unreachable for {}",
                                humantime::format_duration(session.deadline)
                            )));
                            return;
                        }
                    }
                    Err(s) => {
                        let _ = lost_tx.send(Some(format!("heartbeat refused: {}", s.message())));
                        return;
                    }
                }
            }
        });
        Heartbeats {
            phase,
            lost: lost_rx,
            task,
        }
    }
}

pub struct Heartbeats {
    phase: Arc<Mutex<String>>,
    lost: watch::Receiver<Option<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Heartbeats {
    pub fn set_phase(&self, phase: &str) {
        *self.phase.lock().expect("phase lock") = phase.to_owned();
    }

    /// Resolves when heartbeats can no longer keep the attempt alive, with why.
    pub async fn lost(&self) -> String {
        let mut rx = self.lost.clone();
        let why = match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone(),
            Err(_) => None,
        };
        match why {
            Some(why) => why,
            None => std::future::pending().await,
        }
    }
}

impl Drop for Heartbeats {
    fn drop(&mut self) {
        self.task.abort();
    }
}
