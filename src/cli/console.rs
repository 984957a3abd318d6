//! `conductor console`: the web console and `/metrics` over any database, served by the
//! library's [`conductor::http`] until Ctrl-C or SIGTERM.

use anyhow::Result;
use conductor::http;

use super::args::{ConfigArg, DbArg};

/// Where the console listens when neither `--listen` nor `http.listen` says.
const DEFAULT_LISTEN: &str = "127.0.0.1:7470";

/// `conductor console`.
pub async fn run(db: &DbArg, config: &ConfigArg, listen: Option<String>) -> Result<()> {
    let config = config.load()?;
    let listen = listen
        .or_else(|| Some(config.http.listen.clone()).filter(|l| !l.is_empty()))
        .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
    let db = super::open(db).await?;
    let token = conductor::secrets::get(&config.http.operator_token_env);
    let (listener, bound) = http::bind(&listen).await?;
    // The first line names the address (port 0 picks one): scripts and tests read it.
    println!(
        "console: http://{bound}/ over {} ({})",
        db.describe(),
        if token.is_some() {
            "operator actions on"
        } else {
            "read-only"
        }
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        let _ = stop_tx.send(true);
    });
    http::serve(
        listener,
        http::HttpState::new(db.clone(), None, token),
        stop_rx,
    )
    .await?;
    db.close().await;
    Ok(())
}
