//! The HTTP service on `lan_ip:http_port`: one axum router.
use std::sync::Arc;

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};

use anyhow::Context as _;
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

/// Serves `/healthz`, `/livez` and `/metrics` on 127.0.0.1:health_port, for probes that
/// must work while the LAN has no address (proxy mode waiting for its lease). Loopback
/// only: nothing is exposed beyond the host.
pub async fn run_health(shared: Arc<Shared>, token: CancellationToken) -> anyhow::Result<()> {
    let port = shared.config.health_port;
    if port == 0 {
        return Ok(());
    }
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .route("/metrics", get(render_metrics))
        .with_state(shared);
    let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port))
        .await
        .with_context(|| format!("binding the health listener to 127.0.0.1:{port}"))?;
    info!(addr = %listener.local_addr()?, "health listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(token.cancelled_owned())
        .await?;
    Ok(())
}

/// Readiness: 200 while the LAN has an address, 503 with the reason while it has none.
async fn healthz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let lan = shared.lan_state.borrow().clone();
    let ready = lan.addr.is_some();
    let body = serde_json::json!({
        "ready": ready,
        "reason": (!ready).then_some(lan.reason),
        "lan_iface": shared.config.lan_iface,
        "lan_addr": lan.addr,
        "mode": shared.config.mode,
        "xdp_attached": shared.xdp.is_some(),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body))
}

/// Liveness: the process serves. A LAN without an address is not a reason to restart.
async fn livez() -> &'static str {
    "ok\n"
}

async fn render_metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    // The map walk is a few thousand syscalls at most: off the async workers.
    let text = tokio::task::spawn_blocking(move || {
        let mut w = metrics::Writer::default();
        let snapshot = shared.xdp.as_ref().map(|x| x.snapshot());
        metrics::write_xdp(&mut w, snapshot.as_ref());
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
