//! The operator's HTTP listener (docs/design.md section 10), on axum: `/healthz` and `/readyz`
//! for a load balancer or an ECS health check, `/metrics` for Prometheus, and the web console
//! for people ([`console`]). `conductor run` serves it beside the worker protocol when
//! `http.listen` is set; `conductor console --database URL` serves the same pages (without the
//! process's own health) for any database: the demo's, or a copy of production.

pub mod console;
pub mod health;

use std::sync::{atomic::AtomicI64, Arc};

use axum::{routing::get, Router};
use tokio::{net::TcpListener, sync::watch};

use crate::{db::Db, error::Error, observe::replicas::Intake};

/// What the handlers share.
#[derive(Clone)]
pub struct HttpState {
    pub db: Db,
    /// The serving process, under `conductor run`; `None` under `conductor console`.
    pub process: Option<Process>,
    /// The operator token; without one the console is read-only.
    pub operator_token: Option<Arc<str>>,
    pages: Arc<console::Pages>,
}

/// What `/healthz` and `/readyz` know of the process that serves them.
#[derive(Clone)]
pub struct Process {
    /// When the supervising loop last went round (milliseconds since the epoch).
    pub last_tick_ms: Arc<AtomicI64>,
    /// This process's intake: open, paused, draining (the gate, a signal), closed (storage).
    pub intake: watch::Receiver<Intake>,
}

impl HttpState {
    pub fn new(db: Db, process: Option<Process>, operator_token: Option<String>) -> HttpState {
        HttpState {
            db,
            process,
            operator_token: operator_token.filter(|t| !t.is_empty()).map(Arc::from),
            pages: Arc::new(console::Pages::new()),
        }
    }
}

/// Every route: health, metrics, and the console.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .merge(console::routes())
        .with_state(state)
}

/// Binds the listener (port 0 picks one); the address it got.
pub async fn bind(addr: &str) -> Result<(TcpListener, std::net::SocketAddr), Error> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Config(format!("cannot listen for HTTP on {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::Config(format!("HTTP listener on {addr}: {e}")))?;
    Ok((listener, bound))
}

/// Serves until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    state: HttpState,
    mut stop: watch::Receiver<bool>,
) -> Result<(), Error> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
        .map_err(|e| Error::Config(format!("the HTTP listener failed: {e}")))
}
