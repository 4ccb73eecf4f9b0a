//! The hosts API (JSON): list, get, register, delete and rebuild, each with the
//! `[admin] token` as `Authorization: Bearer …` (see [`crate::auth`]). Errors are JSON
//! `{"error": …}` and never hold a secret.
use std::{path::PathBuf, sync::Arc};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    middleware,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use tracing::{info, warn};

use super::{Hosts, HostsError, Registration, Trigger, bmc_tls::BmcSettings, redfish, ssh};
use crate::{config::Secret, live::Live, mac::Mac};

/// What the admin routes use.
#[derive(Clone)]
pub struct Admin {
    pub hosts: Arc<Hosts>,
    /// Every client seen, and their events live (the fleet view).
    pub clients: Arc<crate::clients::Clients>,
    /// Who holds which address now (the fleet view's `lease_ip`).
    pub leases: crate::dhcp::LeaseTable,
    /// The XDP program's per-client counters (the fleet view's `xdp`).
    pub counters: Arc<super::counters::XdpCounters>,
    /// The inventory, which registrations must not shadow.
    pub live: Live,
    /// The bearer token every admin route needs; none refuses them all.
    pub token: Option<Secret>,
    /// Where rebuild keys are kept.
    pub data_path: PathBuf,
    /// BMC credential and CA files.
    pub bmc: BmcSettings,
}

/// The admin router: the hosts API, the fleet view, the dashboard's event stream (all
/// behind the token, reads too) and the dashboard and fleet pages (no data in them: each
/// page asks for the token and fetches the rest with it).
pub fn routes(admin: Admin) -> Router {
    let token = admin.token.clone();
    Router::new()
        .route("/api/hosts", get(list).post(register))
        .route("/api/hosts/{mac}", get(get_one).delete(delete))
        .route("/api/hosts/{mac}/rebuild", post(rebuild))
        .with_state(admin.clone())
        .merge(super::dashboard::events(admin.hosts.clone()))
        .merge(super::fleet::routes(admin))
        .route_layer(middleware::from_fn_with_state(token, crate::auth::require))
        .merge(super::dashboard::pages())
        .merge(super::fleet::page_routes())
}

impl IntoResponse for HostsError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::Exists { .. } | Self::FromInventory { .. } | Self::Refused { .. } => {
                StatusCode::CONFLICT
            }
            Self::Invalid { .. } | Self::BmcTrust(_) => StatusCode::BAD_REQUEST,
            Self::Store(_) | Self::Keys { .. } => StatusCode::INTERNAL_SERVER_ERROR,
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

async fn list(State(admin): State<Admin>) -> impl IntoResponse {
    Json(admin.hosts.list())
}

async fn get_one(
    State(admin): State<Admin>,
    Path(mac): Path<String>,
) -> Result<impl IntoResponse, HostsError> {
    let mac = parse_mac(&mac)?;
    admin
        .hosts
        .get(mac)
        .map(Json)
        .ok_or(HostsError::NotFound { mac })
}

async fn register(
    State(admin): State<Admin>,
    body: axum::body::Bytes,
) -> Result<impl IntoResponse, HostsError> {
    let reg: Registration = serde_json::from_slice(&body).map_err(|e| HostsError::Invalid {
        field: "body",
        reason: e.to_string(),
    })?;
    let snapshot = admin.live.now();
    if snapshot.inventory.host(reg.mac).is_some() {
        return Err(HostsError::FromInventory { mac: reg.mac });
    }
    if let Some(bmc) = &reg.bmc {
        redfish::check_trust(bmc, &admin.bmc)?;
    }
    let record = admin.hosts.register(&snapshot.inventory, reg)?;
    info!(mac = %record.mac, "host registered");
    Ok((StatusCode::CREATED, Json(record)))
}

async fn delete(
    State(admin): State<Admin>,
    Path(mac): Path<String>,
) -> Result<impl IntoResponse, HostsError> {
    let mac = parse_mac(&mac)?;
    let record = admin.hosts.delete(mac)?;
    ssh::delete(&admin.data_path, mac).await;
    info!(%mac, "host deleted");
    Ok(Json(record))
}

/// Starts a new install (the host moves to `pxe_ready`; its next network boot installs
/// again, overwriting its disk), then (with a BMC) sets a one-time PXE boot and resets it. A BMC failure fails the host with the reason: 502 with the record.
async fn rebuild(
    State(admin): State<Admin>,
    Path(mac): Path<String>,
) -> Result<Response, HostsError> {
    let mac = parse_mac(&mac)?;
    let before = admin.hosts.get(mac).ok_or(HostsError::NotFound { mac })?;
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
    let data_path = &admin.data_path;
    // A new install: token, instance id, host key and join key, all rotated.
    super::install::begin(&admin.hosts, data_path, mac, true).await?;
    let record = admin.hosts.get(mac).ok_or(HostsError::NotFound { mac })?;
    let Some(bmc) = &record.bmc else {
        info!(%mac, "rebuild: pxe_ready (no BMC: power-cycle the machine by hand)");
        return Ok(Json(record).into_response());
    };
    match redfish::rebuild(mac, bmc, &admin.bmc).await {
        Ok(()) => Ok(Json(admin.hosts.get(mac).unwrap_or(record)).into_response()),
        Err(err) => {
            let reason = format!("rebuild: {}", crate::error_chain(&err));
            warn!(%mac, %reason, "rebuild failed");
            ssh::delete(data_path, mac).await;
            let failed = admin.hosts.fail(mac, reason).unwrap_or(record);
            Ok((StatusCode::BAD_GATEWAY, Json(failed)).into_response())
        }
    }
}
