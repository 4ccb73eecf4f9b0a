//! The HTTP service on `lan_ip:http_port`: one axum router.
use std::sync::Arc;

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::{daemon::Shared, lan, metrics};

/// Serves HTTP on `lan_addr:http_port`, following the LAN address, until `token` fires.
pub async fn run(shared: Arc<Shared>, token: CancellationToken) -> anyhow::Result<()> {
    let port = shared.config.http_port;
    let app = router(shared.clone());
    lan::follow("http", shared.lan_addr.clone(), token, |ip, stop| {
        let app = app.clone();
        async move {
            let listener = TcpListener::bind((ip, port)).await?;
            info!(addr = %listener.local_addr()?, "HTTP listening");
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        }
    })
    .await;
    Ok(())
}

/// The router with every route the daemon serves.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(render_metrics))
        .with_state(shared)
}

async fn healthz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let body = serde_json::json!({
        "status": "ok",
        "lan_iface": shared.config.lan_iface,
        "mode": shared.config.mode,
        "xdp_attached": shared.xdp.is_some(),
    });
    (StatusCode::OK, axum::Json(body))
}

async fn render_metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    // The map walk is a few thousand syscalls at most: off the async workers.
    let text = tokio::task::spawn_blocking(move || {
        let mut w = metrics::Writer::default();
        let snapshot = shared.xdp.as_ref().map(|x| x.snapshot());
        metrics::write_xdp(&mut w, snapshot.as_ref());
        metrics::write_tftp(&mut w, &shared.tftp.snapshot());
        w.finish()
    })
    .await
    .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}
