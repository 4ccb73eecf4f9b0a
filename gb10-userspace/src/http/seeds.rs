//! Seed routes on HTTP, one per path of [`crate::seeds::ROUTES`]: iPXE and GRUB scripts,
//! NoCloud cloud-init (incl. Ubuntu autoinstall), Proxmox answers, Talos configs and the
//! onboard unit. A seed goes only to its owner; a failed render is a 500 without any of
//! it; what was served is recorded in the client's timeline.
use std::{collections::BTreeSet, net::Ipv4Addr, sync::Arc};

use axum::{
    Router,
    extract::{Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::{MethodRouter, get, post},
};
use serde::Deserialize;
use tracing::{error, instrument, warn};

use super::Peer;
use crate::{
    clients::{ClientEvent, Clients, Stage},
    identity::Identity,
    lan::LanAddr,
    live::Live,
    mac::{Mac, or_dash},
    seeds::{ROUTES, Record, Scope, SeedError, SeedRoute, Seeds, Server, table},
};

/// What the seed routes use.
#[derive(Clone)]
pub struct SeedRoutes {
    pub seeds: Seeds,
    /// Who asks, and who owns a seed.
    pub identity: Identity,
    pub events: Arc<Clients>,
    /// `[http] seed_owner_check`.
    pub owner_check: bool,
    pub http_port: u16,
    /// The server named in seeds when the request has no usable Host header.
    pub lan_addr: LanAddr,
    pub fallback_ip: Ipv4Addr,
    /// The inventory, for the Proxmox installer's one URL for every machine.
    pub live: Live,
}

/// A route for every path of the table, plus the Proxmox installer's one fetch URL.
pub fn routes(state: SeedRoutes) -> Router {
    let mut router = Router::new();
    let mut seen = BTreeSet::new();
    for row in ROUTES.iter().filter(|r| seen.insert(r.path)) {
        let path = row.path;
        let handler = move |State(s): State<SeedRoutes>,
                            uri: Uri,
                            Query(q): Query<MacQuery>,
                            peer: Peer,
                            headers: HeaderMap| async move {
            let mac = match requested_mac(&s, row, &uri, q, peer) {
                Ok(mac) => mac,
                Err((status, body)) => return text(status, body),
            };
            serve(&s, path, mac, peer, &headers).await
        };
        let method: MethodRouter<SeedRoutes> = if row.post {
            get(handler).post(handler)
        } else {
            get(handler)
        };
        router = router.route(&axum_path(row), method);
    }
    router
        // The installer's one fetch URL for every machine: the host is told by the MACs
        // in the system information it posts.
        .route("/proxmox/answer", post(proxmox_by_body))
        .with_state(state)
}

/// The route's path for the router: the segment holding `{mac}` becomes `{mac}` whole
/// (axum matches whole segments), the handler checks what surrounds it.
fn axum_path(row: &SeedRoute) -> String {
    match row.mac_segment() {
        Some((dir, before, after)) => {
            let rest = &row.path[dir.len() + before.len() + "{mac}".len() + after.len()..];
            format!("{dir}{{mac}}{rest}")
        }
        None => row.path.to_owned(),
    }
}

#[derive(Deserialize)]
struct MacQuery {
    mac: Option<String>,
}

/// The MAC a request is for: from its path; for a client's own file without one in the
/// path (the onboard unit), `?mac=` or the requester by its address.
fn requested_mac(
    s: &SeedRoutes,
    row: &SeedRoute,
    uri: &Uri,
    q: MacQuery,
    peer: Peer,
) -> Result<Option<Mac>, (StatusCode, &'static str)> {
    if row.mac_segment().is_some() {
        // Decoded once, as the router matched it: iPXE escapes the colons
        // (`/ipxe/52%3A54%3A…`).
        let path = percent_encoding::percent_decode_str(uri.path()).decode_utf8();
        return match path.ok().and_then(|p| row.matches(&p)) {
            Some(mac) => Ok(mac),
            None => Err((StatusCode::NOT_FOUND, "not a MAC address\n")),
        };
    }
    if row.scope != Scope::AnyClient {
        return Ok(None);
    }
    match q.mac.as_deref().map(str::parse::<Mac>) {
        Some(Ok(mac)) => Ok(Some(mac)),
        Some(Err(_)) => Err((StatusCode::BAD_REQUEST, "`mac` is not a MAC address\n")),
        None => peer.0.and_then(|ip| s.identity.who(ip)).map(Some).ok_or((
            StatusCode::BAD_REQUEST,
            "unknown requester: ask for /onboard.service?mac=aa:bb:cc:dd:ee:ff\n",
        )),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response {
    (status, body).into_response()
}

/// The server as the client addressed it (Host header), else the LAN address and port.
fn server(s: &SeedRoutes, headers: &HeaderMap) -> Server {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| Server::from_host_header(h, s.http_port))
        .unwrap_or_else(|| Server {
            host: (*s.lan_addr.borrow()).unwrap_or(s.fallback_ip).to_string(),
            port: s.http_port,
        })
}

/// Serves the row at `path` that `mac`'s profile gets, to its owner, and records it: a
/// boot script that sends an installed host to its disk as `local_boot`. A seed whose
/// secrets went out already is refused (403, an alarm on the host).
#[instrument(skip_all, fields(mac = %or_dash(mac), path = %path))]
async fn serve(
    s: &SeedRoutes,
    path: &str,
    mac: Option<Mac>,
    peer: Peer,
    headers: &HeaderMap,
) -> Response {
    // What went wrong goes on the timeline of the host the seed is for (the fleet
    // view's "why it stopped"), never making a record for a MAC not seen.
    let failed = |stage, reason: &str| {
        if let Some(mac) = mac {
            let mut asked = path.replace("{mac}", &mac.to_string());
            // A refusal names who asked: the host from an unexpected address, or not
            // the host at all.
            if reason == "forbidden" {
                let from = peer.0.map_or_else(|| "?".to_owned(), |ip| ip.to_string());
                asked = format!("{asked} from {from}");
            }
            s.events
                .record(mac, ClientEvent::failure(stage, &asked, reason));
        }
    };
    let Some(row) = s.seeds.row(path, mac) else {
        // Only from the host's own address: anyone can put a MAC in a URL, and a
        // stranger's request must not become a healthy machine's "why it stopped".
        if mac.is_some_and(|m| s.identity.owns(m, peer.0).is_ok()) {
            failed(Stage::Seed, "not_found");
        }
        return text(
            StatusCode::NOT_FOUND,
            "this host's profile has no such seed\n",
        );
    };
    if let Some(mac) = mac
        && row.owner_only
        && s.owner_check
        && let Err(why) = s.identity.owns(mac, peer.0)
    {
        warn!(peer = ?peer.0, %why, "seed requested from an address that is not the host's; 403");
        failed(stage_of(row), "forbidden");
        return text(
            StatusCode::FORBIDDEN,
            "this seed belongs to another host's address\n",
        );
    }
    match s.seeds.seed(mac, row, &server(s, headers), peer.0).await {
        Ok(body) => {
            if let Some(mac) = mac {
                let path = row.path_for(mac);
                match row.record {
                    Record::Nothing => {}
                    Record::BootFile if s.seeds.installed(mac) => {
                        s.events.record(mac, ClientEvent::LocalBoot { path });
                    }
                    Record::BootFile => {
                        s.events.record(mac, ClientEvent::BootFile { path });
                    }
                    Record::Seed => {
                        s.events.record(mac, ClientEvent::Seed { path });
                    }
                }
            }
            (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(row.content_type),
                )],
                body,
            )
                .into_response()
        }
        // Logged as an alarm where it was decided.
        Err(SeedError::Refused(_)) => text(
            StatusCode::FORBIDDEN,
            "this install's secrets were handed out already; the host is failed: rebuild it\n",
        ),
        Err(err) => {
            // The log names the template and the variable; the client gets none of it.
            error!(template = row.template, error = %crate::error_chain(&err), "rendering a seed failed");
            failed(stage_of(row), "render_failed");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "seed rendering failed; the server log names the template and variable\n",
            )
        }
    }
}

/// Where in the chain a row's request is: a boot loader's script is HTTP, the rest seeds.
fn stage_of(row: &SeedRoute) -> Stage {
    match row.record {
        Record::BootFile => Stage::Http,
        Record::Seed | Record::Nothing => Stage::Seed,
    }
}

/// `POST /proxmox/answer`: the Proxmox installer's system information names its NICs
/// (`network_interfaces[].mac`); the first that is an inventory host picks the answer,
/// else the requester's address does.
async fn proxmox_by_body(
    State(s): State<SeedRoutes>,
    peer: Peer,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let info: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let snapshot = s.live.now();
    let from_body = info["network_interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|nic| nic["mac"].as_str()?.parse::<Mac>().ok())
        .find(|mac| snapshot.inventory.host(*mac).is_some());
    let Some(mac) = from_body.or_else(|| peer.0.and_then(|ip| s.identity.who(ip))) else {
        return text(
            StatusCode::NOT_FOUND,
            "no inventory host among the posted network interfaces or this address\n",
        );
    };
    let Some(answer) = table::rows_at("/proxmox/{mac}/answer.toml").next() else {
        return text(StatusCode::NOT_FOUND, "no Proxmox answer route\n");
    };
    serve(&s, answer.path, Some(mac), peer, &headers).await
}
