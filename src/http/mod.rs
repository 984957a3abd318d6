//! The operator's HTTP listener (docs/design.md section 10), on axum: `/healthz` for a
//! liveness check (the only one an ECS container health check should use: ECS replaces a task
//! that fails it), `/readyz` for a load balancer's target health, `/metrics` for Prometheus,
//! and the web console for people ([`console`]).
//!
//! Every answer carries headers that keep a page from being framed or sniffed and its
//! address from leaking; a listener on loopback answers only requests addressed to loopback
//! (a web page elsewhere cannot reach it through DNS rebinding); at most
//! [`CONCURRENT_REQUESTS`] requests are served at once, so a burst cannot take every
//! database connection from the pipeline. `conductor run` serves it beside the worker protocol when
//! `http.listen` is set; `conductor console --database URL` serves the same pages (without the
//! process's own health) for any database: the demo's, or a copy of production.

pub mod console;
pub mod health;
pub mod webhooks;

use std::sync::{atomic::AtomicI64, Arc};

use axum::{
    extract::{Request, State},
    http::{header, HeaderValue, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
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
    /// The listener is on loopback: only requests addressed to loopback are answered.
    loopback_only: bool,
    pages: Arc<console::Pages>,
    /// Intake over HTTP (`[webhooks]`), under `conductor run` when configured.
    pub webhooks: Option<Arc<webhooks::Webhooks>>,
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
            loopback_only: false,
            pages: Arc::new(console::Pages::new()),
            webhooks: None,
        }
    }
}

/// Requests served at once; more wait their turn.
pub const CONCURRENT_REQUESTS: usize = 8;

/// Every route: health, metrics, the console, and the webhooks.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .merge(webhooks::routes())
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .merge(console::routes())
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(tower::limit::ConcurrencyLimitLayer::new(
            CONCURRENT_REQUESTS,
        ))
        .with_state(state)
}

/// The checks and headers every request gets (see the module's doc).
async fn guard(State(state): State<HttpState>, request: Request, next: Next) -> Response {
    if state.loopback_only {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        if !is_loopback_host(host) {
            return (
                StatusCode::MISDIRECTED_REQUEST,
                "this listener is on loopback and answers only requests addressed to it\n",
            )
                .into_response();
        }
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Whether a Host header names loopback (`localhost`, `127.x`, `[::1]`, with any port).
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
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
    mut state: HttpState,
    mut stop: watch::Receiver<bool>,
) -> Result<(), Error> {
    state.loopback_only = listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
        .map_err(|e| Error::Config(format!("the HTTP listener failed: {e}")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "localhost:7470",
            "127.0.0.1:80",
            "127.1.2.3",
            "[::1]:7470",
            "[::1]",
        ] {
            assert!(super::is_loopback_host(host), "{host}");
        }
        for host in [
            "",
            "evil.example",
            "evil.example:7470",
            "10.0.0.1:7470",
            "localhost.evil.example",
        ] {
            assert!(!super::is_loopback_host(host), "{host}");
        }
    }
}
