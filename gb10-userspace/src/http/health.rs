//! `/healthz` (readiness, with the reason), `/livez` and `/metrics`: on the loopback
//! health listener probes and Prometheus on the node use, which answers while the LAN has
//! no address (proxy mode waiting for its lease); on the LAN router `/healthz` as it is
//! and `/metrics` (per-client MACs) only with the admin token.
use std::{net::Ipv4Addr, sync::Arc};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    middleware,
    response::IntoResponse,
    routing::get,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    config::{HttpLimits, Mode, Secret},
    metrics,
    netlink::LanState,
};

/// What the health routes use.
#[derive(Clone)]
pub struct Health {
    pub lan_iface: String,
    pub mode: Mode,
    /// The address with the reason when there is none.
    pub lan_state: watch::Receiver<LanState>,
    pub metrics: Arc<metrics::Sources>,
}

impl Health {
    /// `/healthz`, and `/metrics` behind `token`, as the LAN router has them.
    pub fn lan_routes(self, token: Option<Secret>) -> Router {
        Router::new()
            .route("/metrics", get(render_metrics))
            .route_layer(middleware::from_fn_with_state(token, crate::auth::require))
            .route("/healthz", get(healthz))
            .with_state(self)
    }
}

/// Serves `/healthz`, `/livez` and `/metrics` on 127.0.0.1:`port` (0: not at all),
/// within `limits`, until `token` fires.
pub async fn run(
    port: u16,
    health: Health,
    limits: HttpLimits,
    token: CancellationToken,
) -> anyhow::Result<()> {
    if port == 0 {
        return Ok(());
    }
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(render_metrics))
        .route("/livez", get(livez))
        .with_state(health);
    super::run_fixed(
        "health",
        (Ipv4Addr::LOCALHOST, port).into(),
        app,
        limits,
        token,
    )
    .await
}

/// Readiness: 200 while the LAN has an address, 503 with the reason while it has none.
async fn healthz(State(health): State<Health>) -> impl IntoResponse {
    let lan = health.lan_state.borrow().clone();
    let ready = lan.addr.is_some();
    let body = serde_json::json!({
        "ready": ready,
        "reason": (!ready).then_some(lan.reason),
        "lan_iface": health.lan_iface,
        "lan_addr": lan.addr,
        "mode": health.mode,
        "xdp_attached": health.metrics.xdp.as_ref().is_some_and(|x| x.lan_attached()),
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

async fn render_metrics(State(health): State<Health>) -> impl IntoResponse {
    // The map walk is a few thousand syscalls at most: off the async workers.
    let sources = health.metrics.clone();
    let text = tokio::task::spawn_blocking(move || sources.render())
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
