//! The hosts API (JSON): list and get are open; register, delete and rebuild need the
//! `[admin] token` as `Authorization: Bearer …`. Errors are JSON `{"error": …}` and never
//! hold a secret.
use std::sync::Arc;

use anyhow::Context as _;
use axum::{
    Json, Router,
    extract::{Path, Request, State},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{HostsError, Registration, Trigger, redfish, ssh};
use crate::{daemon::Shared, inventory::Mac};

/// The admin router: the hosts API, the dashboard and its event stream.
pub fn routes(shared: Arc<Shared>) -> Router<Arc<Shared>> {
    let changing = Router::new()
        .route("/api/hosts", post(register))
        .route("/api/hosts/{mac}", axum::routing::delete(delete))
        .route("/api/hosts/{mac}/rebuild", post(rebuild))
        .route_layer(middleware::from_fn_with_state(shared, require_token));
    Router::new()
        .route("/api/hosts", get(list))
        .route("/api/hosts/{mac}", get(get_one))
        .merge(changing)
        .merge(super::dashboard::routes())
        .merge(crate::http::fleet::routes())
}

/// Serves the admin router on `[admin] listen` when set (not the LAN), until `token` fires.
pub async fn run_admin(shared: Arc<Shared>, token: CancellationToken) -> anyhow::Result<()> {
    let Some(addr) = shared.config.admin.listen else {
        return Ok(());
    };
    if shared.config.admin.token.is_none() {
        warn!("no [admin] token: the hosts API refuses every change");
    }
    let app = routes(shared.clone()).with_state(shared);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the admin listener to {addr}"))?;
    info!(addr = %listener.local_addr()?, "admin listening");
    let serve = axum::serve(listener, app).with_graceful_shutdown(token.clone().cancelled_owned());
    // Event streams (the dashboard, `clients watch`) never end by themselves, so a graceful
    // shutdown would wait for ever: open connections get 5 s, as on the LAN listener.
    tokio::select! {
        served = serve.into_future() => served?,
        () = async {
            token.cancelled().await;
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        } => info!("admin connections still open 5 s after stop: closed"),
    }
    Ok(())
}

/// Lets a request through only with the configured token; without one configured,
/// nothing that changes state is allowed.
async fn require_token(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let ok = match (&shared.config.admin.token, given) {
        (Some(token), Some(given)) => constant_time_eq(token.expose().as_bytes(), given.as_bytes()),
        _ => false,
    };
    if !ok {
        warn!(path = %req.uri().path(), "admin call without a valid token");
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(serde_json::json!({"error": "a valid admin token is required"})),
        )
            .into_response();
    }
    next.run(req).await
}

/// Compares without stopping at the first difference, so timing tells nothing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl IntoResponse for HostsError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::Exists { .. } | Self::FromInventory { .. } | Self::Refused { .. } => {
                StatusCode::CONFLICT
            }
            Self::Invalid { .. } => StatusCode::BAD_REQUEST,
            Self::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            warn!(error = %crate::error_chain(&self), "hosts API");
        }
        (
            status,
            Json(serde_json::json!({ "error": crate::error_chain(&self) })),
        )
            .into_response()
    }
}

fn parse_mac(text: &str) -> Result<Mac, HostsError> {
    text.parse().map_err(|reason| HostsError::Invalid {
        field: "mac",
        reason,
    })
}

async fn list(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    Json(shared.hosts.list())
}

async fn get_one(
    State(shared): State<Arc<Shared>>,
    Path(mac): Path<String>,
) -> Result<impl IntoResponse, HostsError> {
    let mac = parse_mac(&mac)?;
    shared
        .hosts
        .get(mac)
        .map(Json)
        .ok_or(HostsError::NotFound { mac })
}

async fn register(
    State(shared): State<Arc<Shared>>,
    body: axum::body::Bytes,
) -> Result<impl IntoResponse, HostsError> {
    let reg: Registration = serde_json::from_slice(&body).map_err(|e| HostsError::Invalid {
        field: "body",
        reason: e.to_string(),
    })?;
    let inv = shared.inventory();
    if inv.host(reg.mac).is_some() {
        return Err(HostsError::FromInventory { mac: reg.mac });
    }
    let record = shared.hosts.register(&inv, reg)?;
    info!(mac = %record.mac, "host registered");
    Ok((StatusCode::CREATED, Json(record)))
}

async fn delete(
    State(shared): State<Arc<Shared>>,
    Path(mac): Path<String>,
) -> Result<impl IntoResponse, HostsError> {
    let mac = parse_mac(&mac)?;
    let record = shared.hosts.delete(mac)?;
    ssh::delete(&shared.config.data_path, mac).await;
    info!(%mac, "host deleted");
    Ok(Json(record))
}

/// Marks the host `pxe_ready` with a fresh key, then (with a BMC) sets a one-time PXE
/// boot and resets it. A BMC failure fails the host with the reason: 502 with the record.
async fn rebuild(
    State(shared): State<Arc<Shared>>,
    Path(mac): Path<String>,
) -> Result<Response, HostsError> {
    let mac = parse_mac(&mac)?;
    let before = shared.hosts.get(mac).ok_or(HostsError::NotFound { mac })?;
    if super::Machine::next(before.machine.state, &Trigger::Rebuild).is_none() {
        // Refuse before touching the key of a rebuild under way.
        return Err(HostsError::Refused {
            mac,
            source: super::Refused {
                state: before.machine.state.label(),
                trigger: "rebuild".into(),
            },
        });
    }
    let data_path = &shared.config.data_path;
    let key = ssh::generate(data_path, mac).await;
    let key = match key {
        Ok(k) => Some(k),
        Err(err) => {
            warn!(%mac, error = %crate::error_chain(&err), "no ephemeral key: the join step will not log in");
            None
        }
    };
    let record = shared
        .hosts
        .apply(mac, Trigger::Rebuild, |r| r.ssh_public_key = key)?;
    let Some(bmc) = &record.bmc else {
        info!(%mac, "rebuild: pxe_ready (no BMC: power-cycle the machine by hand)");
        return Ok(Json(record).into_response());
    };
    match redfish::rebuild(mac, bmc, &shared.config.admin.credentials_dir).await {
        Ok(()) => Ok(Json(shared.hosts.get(mac).unwrap_or(record)).into_response()),
        Err(err) => {
            let reason = format!("rebuild: {}", crate::error_chain(&err));
            warn!(%mac, %reason, "rebuild failed");
            ssh::delete(data_path, mac).await;
            let failed = shared.hosts.fail(mac, reason).unwrap_or(record);
            Ok((StatusCode::BAD_GATEWAY, Json(failed)).into_response())
        }
    }
}
