//! The worker binary against a conductor that misbehaves: a stand-in gRPC server (real tonic,
//! real sockets) that sends a task file named to escape the work dir. The real
//! `conductor-worker` must refuse it and write nothing outside its directory.

use std::{process::Command, time::Duration};

use conductor_proto::{
    conductor_server::{Conductor, ConductorServer},
    FetchFilesRequest, FileChunk, GitCredentialsReply, GitCredentialsRequest, HandshakeReply,
    HandshakeRequest, HeartbeatReply, HeartbeatRequest, ReportReply, ReportRequest,
};
use tonic::{Request, Response, Status};

struct Hostile;

#[tonic::async_trait]
impl Conductor for Hostile {
    async fn handshake(
        &self,
        _: Request<HandshakeRequest>,
    ) -> Result<Response<HandshakeReply>, Status> {
        Ok(Response::new(HandshakeReply {
            job_id: 1,
            attempt: 1,
            heartbeat_interval_ms: 200,
            lease_ms: 2000,
            max_total_bytes: 1 << 20,
        }))
    }

    type FetchFilesStream = tokio_stream::Iter<std::vec::IntoIter<Result<FileChunk, Status>>>;

    async fn fetch_files(
        &self,
        _: Request<FetchFilesRequest>,
    ) -> Result<Response<Self::FetchFilesStream>, Status> {
        Ok(Response::new(tokio_stream::iter(vec![Ok(FileChunk {
            name: "../../escaped".into(),
            offset: 0,
            data: b"owned".to_vec(),
            last: true,
        })])))
    }

    async fn heartbeat(
        &self,
        _: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        Ok(Response::new(HeartbeatReply { lease_until_ms: 0 }))
    }

    async fn report(&self, _: Request<ReportRequest>) -> Result<Response<ReportReply>, Status> {
        Err(Status::internal("no report expected"))
    }

    async fn git_credentials(
        &self,
        _: Request<GitCredentialsRequest>,
    ) -> Result<Response<GitCredentialsReply>, Status> {
        Err(Status::internal("no clone expected"))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_worker_refuses_a_task_file_that_escapes_its_directory() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ConductorServer::new(Hostile))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let root = tempfile::tempdir().unwrap();
    let work = root.path().join("a/b");
    std::fs::create_dir_all(&work).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_conductor-worker"))
            .env("WORKER_ID", "w1")
            .env("WORKER_TOKEN", "t")
            .env("CONDUCTOR_ADDR", format!("http://{addr}"))
            .env("WORKER_DIR", &work)
            .env("UNREACHABLE_DEADLINE", "5s")
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    });
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("refusing task file name \"../../escaped\""),
        "{stderr}"
    );
    // Neither where the name points (a/b/task/../../escaped = a/escaped) nor anywhere else.
    assert!(!root.path().join("a/escaped").exists());
    assert!(!root.path().join("escaped").exists());
}

/// A worker whose conductor never answers gives up after its deadline and exits (code 2),
/// rather than waiting forever.
#[tokio::test(flavor = "multi_thread")]
async fn the_worker_gives_up_when_the_conductor_stays_unreachable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_conductor-worker"))
            .env("WORKER_ID", "w1")
            .env("WORKER_TOKEN", "secret-token-value")
            .env("CONDUCTOR_ADDR", format!("http://127.0.0.1:{port}"))
            .env("WORKER_DIR", &work)
            .env("UNREACHABLE_DEADLINE", "1s")
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    });
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("the conductor was unreachable for 1s"),
        "{stderr}"
    );
    assert!(!stderr.contains("secret-token-value"), "{stderr}");
}
