//! Seed routes: iPXE and GRUB scripts, NoCloud cloud-init (incl. Ubuntu autoinstall),
//! Proxmox answers, Talos configs and the onboard unit, rendered per host from the
//! inventory. A seed goes only to its owner; a failed render is a 500 without any of it.
use std::{net::Ipv4Addr, sync::Arc};

use axum::{
    Router,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;
use tracing::{error, instrument, warn};

use super::Peer;
use crate::{
    clients::{ClientEvent, ClientState},
    daemon::Shared,
    inventory::Mac,
    templates::{self, Server},
};

/// The seed routes.
pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/boot.ipxe", get(boot_ipxe))
        .route("/ipxe/{mac}", get(ipxe_host))
        .route("/grub/grub.cfg", get(grub_cfg))
        .route("/grub/hosts/{file}", get(grub_host))
        .route("/cloud-init/{mac}/{file}", get(cloud_init))
        // The Proxmox installer POSTs its system information to the answer URL.
        .route("/proxmox/{mac}/answer.toml", get(proxmox).post(proxmox))
        // The installer's one fetch URL for every machine: the host is told by the MACs
        // in the system information it posts.
        .route("/proxmox/answer", axum::routing::post(proxmox_by_body))
        .route("/talos/{mac}/config.yaml", get(talos))
        .route("/onboard.service", get(onboard))
}

/// What a render is for: the template, who may fetch it, and the event it records.
struct Seed<'a> {
    template: &'a str,
    /// Only the host's fixed IP or DHCP lease may fetch it (when `seed_owner_check`).
    owner_only: bool,
    /// The event recorded for the client once served.
    event: Option<ClientEvent>,
    content_type: &'static str,
}

/// The server as the client addressed it (Host header), else the LAN address and port.
fn server(shared: &Shared, headers: &HeaderMap) -> Server {
    let port = shared.config.http_port;
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| Server::from_host_header(h, port))
        .unwrap_or_else(|| Server {
            host: (*shared.lan_addr.borrow())
                .unwrap_or(shared.config.lan_ip.addr())
                .to_string(),
            port,
        })
}

fn text(status: StatusCode, body: &'static str) -> Response {
    (status, body).into_response()
}

/// Whether `peer` may fetch `mac`'s seed: it is the host's fixed IP or its current lease.
pub(super) fn is_owner(shared: &Shared, mac: Mac, peer: Option<Ipv4Addr>) -> bool {
    let Some(peer) = peer else { return false };
    let fixed = shared.inventory().host(mac).and_then(|h| h.ip);
    let leased = shared.clients.get(mac).and_then(|r| r.lease_ip);
    fixed == Some(peer) || leased == Some(peer)
}

/// Renders `template` for `mac` (`None`: the global scripts) with the current inventory,
/// templates and client state.
pub fn render_for(
    shared: &Shared,
    mac: Option<Mac>,
    server: &Server,
    template: &str,
) -> Result<String, templates::TemplateError> {
    let inv = shared.inventory();
    // The host life cycle decides when it knows the host (a rebuild clears `installed`);
    // otherwise the client's own onboarding state.
    let installed = mac
        .and_then(|m| shared.hosts.boots_local(m))
        .unwrap_or_else(|| {
            mac.and_then(|m| shared.clients.state(m))
                .is_some_and(|s| matches!(s, ClientState::Installed | ClientState::Onboarded))
        });
    let host = mac.and_then(|m| shared.hosts.effective_host(&inv, m));
    let templates = shared.templates();
    let ctx = templates::host_context(
        &templates,
        &inv,
        mac.unwrap_or(Mac([0; 6])),
        host.as_ref().or_else(|| mac.and_then(|m| inv.host(m))),
        server,
        installed,
    )?;
    templates.render(template, &ctx)
}

/// Where per-host GRUB configs live, relative to the TFTP root and the HTTP root.
pub const GRUB_HOSTS: &str = "grub/hosts/";

/// The boot-loader scripts Debian's network GRUB reads over TFTP (its prefix is
/// `(tftp,<server>)/grub`): `grub/grub.cfg` and `grub/hosts/<mac>.cfg`, rendered as over
/// HTTP. `None` for any other path (the TFTP root serves it); `server_ip` is the address
/// the request reached. Records the fetch of a per-host config under the MAC it names
/// (the TFTP server then does not record it again).
pub fn tftp_script(
    shared: &Shared,
    path: &str,
    server_ip: Ipv4Addr,
) -> Option<Result<String, templates::TemplateError>> {
    let path = path.trim_start_matches('/');
    let server = Server {
        host: server_ip.to_string(),
        port: shared.config.http_port,
    };
    if path == "grub/grub.cfg" {
        return Some(render_for(shared, None, &server, "grub.cfg.j2"));
    }
    let mac: Mac = path
        .strip_prefix(GRUB_HOSTS)?
        .strip_suffix(".cfg")?
        .parse()
        .ok()?;
    let rendered = render_for(shared, Some(mac), &server, "grub-host.j2");
    if rendered.is_ok() {
        shared.clients.record(
            mac,
            ClientEvent::BootFile {
                path: path.to_owned(),
            },
        );
    }
    Some(rendered)
}

/// Renders `seed` for `mac` (`None`: the global scripts) and records what was served.
#[instrument(skip_all, fields(mac = %mac.map_or_else(|| "-".into(), |m| m.to_string()), template = seed.template))]
fn render(
    shared: &Shared,
    mac: Option<Mac>,
    peer: Peer,
    headers: &HeaderMap,
    seed: Seed<'_>,
) -> Response {
    if let Some(mac) = mac
        && seed.owner_only
        && shared.config.http.seed_owner_check
        && !is_owner(shared, mac, peer.0)
    {
        warn!(peer = ?peer.0, "seed requested from an address that is not the host's; 403");
        return text(
            StatusCode::FORBIDDEN,
            "this seed belongs to another host's address\n",
        );
    }
    let server = server(shared, headers);
    match render_for(shared, mac, &server, seed.template) {
        Ok(body) => {
            if let (Some(mac), Some(event)) = (mac, seed.event) {
                shared.clients.record(mac, event);
            }
            (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(seed.content_type),
                )],
                body,
            )
                .into_response()
        }
        Err(err) => {
            // The log names the template and the variable; the client gets none of it.
            error!(error = %crate::error_chain(&err), "rendering a seed failed");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "seed rendering failed; the server log names the template and variable\n",
            )
        }
    }
}

fn parse_mac(mac: &str) -> Option<Mac> {
    mac.parse().ok()
}

fn not_a_mac() -> Response {
    text(StatusCode::NOT_FOUND, "not a MAC address\n")
}

/// iPXE and GRUB scripts are plain text.
const SCRIPT: &str = "text/plain; charset=utf-8";

/// A script every client gets the same way (no MAC in the path, no event recorded).
fn shared_script(shared: &Shared, peer: Peer, headers: &HeaderMap, template: &str) -> Response {
    render(
        shared,
        None,
        peer,
        headers,
        Seed {
            template,
            owner_only: false,
            event: None,
            content_type: SCRIPT,
        },
    )
}

/// One host's script, the MAC taken from the URL; the fetch is recorded under `path`.
fn host_script(
    shared: &Shared,
    mac: &str,
    path: impl FnOnce(Mac) -> String,
    peer: Peer,
    headers: &HeaderMap,
    template: &str,
) -> Response {
    let Some(mac) = parse_mac(mac) else {
        return not_a_mac();
    };
    render(
        shared,
        Some(mac),
        peer,
        headers,
        Seed {
            template,
            owner_only: false,
            event: Some(ClientEvent::BootFile { path: path(mac) }),
            content_type: SCRIPT,
        },
    )
}

async fn boot_ipxe(State(shared): State<Arc<Shared>>, peer: Peer, headers: HeaderMap) -> Response {
    shared_script(&shared, peer, &headers, "boot.ipxe.j2")
}

async fn ipxe_host(
    State(shared): State<Arc<Shared>>,
    Path(mac): Path<String>,
    peer: Peer,
    headers: HeaderMap,
) -> Response {
    let path = |mac| format!("/ipxe/{mac}");
    host_script(&shared, &mac, path, peer, &headers, "ipxe-host.j2")
}

async fn grub_cfg(State(shared): State<Arc<Shared>>, peer: Peer, headers: HeaderMap) -> Response {
    shared_script(&shared, peer, &headers, "grub.cfg.j2")
}

async fn grub_host(
    State(shared): State<Arc<Shared>>,
    Path(file): Path<String>,
    peer: Peer,
    headers: HeaderMap,
) -> Response {
    let Some(mac) = file.strip_suffix(".cfg") else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    let path = |_| format!("/grub/hosts/{file}");
    host_script(&shared, mac, path, peer, &headers, "grub-host.j2")
}

async fn cloud_init(
    State(shared): State<Arc<Shared>>,
    Path((mac, file)): Path<(String, String)>,
    peer: Peer,
    headers: HeaderMap,
) -> Response {
    let mac = match parse_mac(&mac) {
        Some(mac) => mac,
        None => return not_a_mac(),
    };
    let inv = shared.inventory();
    // An API-registered host has its profile from its host record.
    let host = shared.hosts.effective_host(&inv, mac);
    let seed = inv
        .profile_for(host.as_ref())
        .and_then(|(_, p)| p.seed.as_deref());
    let Some(template) = templates::cloud_init_template(seed, &file) else {
        return text(
            StatusCode::NOT_FOUND,
            "no cloud-init seed for this host's profile\n",
        );
    };
    render(
        &shared,
        Some(mac),
        peer,
        &headers,
        Seed {
            template,
            owner_only: true,
            event: Some(ClientEvent::Seed {
                path: format!("/cloud-init/{mac}/{file}"),
            }),
            content_type: "text/plain; charset=utf-8",
        },
    )
}

/// A seed served only to hosts whose profile's `seed` is `kind`.
struct KindSeed {
    kind: &'static str,
    template: &'static str,
    /// The URL path, `{mac}` replaced, recorded in the client's timeline.
    path: &'static str,
    content_type: &'static str,
}

const PROXMOX: KindSeed = KindSeed {
    kind: "proxmox",
    template: "proxmox-answer.toml.j2",
    path: "/proxmox/{mac}/answer.toml",
    content_type: "application/toml",
};

const TALOS: KindSeed = KindSeed {
    kind: "talos",
    template: "talos.yaml.j2",
    path: "/talos/{mac}/config.yaml",
    content_type: "application/yaml",
};

fn kind_seed(
    shared: &Shared,
    mac: &str,
    KindSeed {
        kind,
        template,
        path,
        content_type,
    }: &KindSeed,
    peer: Peer,
    headers: &HeaderMap,
) -> Response {
    let mac = match parse_mac(mac) {
        Some(mac) => mac,
        None => return not_a_mac(),
    };
    let inv = shared.inventory();
    // An API-registered host has its profile from its host record.
    let host = shared.hosts.effective_host(&inv, mac);
    let seed = inv
        .profile_for(host.as_ref())
        .and_then(|(_, p)| p.seed.clone());
    if seed.as_deref() != Some(*kind) {
        return text(
            StatusCode::NOT_FOUND,
            "this host's profile has no such seed\n",
        );
    }
    render(
        shared,
        Some(mac),
        peer,
        headers,
        Seed {
            template,
            owner_only: true,
            event: Some(ClientEvent::Seed {
                path: path.replace("{mac}", &mac.to_string()),
            }),
            content_type,
        },
    )
}

async fn proxmox(
    State(shared): State<Arc<Shared>>,
    Path(mac): Path<String>,
    peer: Peer,
    headers: HeaderMap,
) -> Response {
    kind_seed(&shared, &mac, &PROXMOX, peer, &headers)
}

/// `POST /proxmox/answer`: the Proxmox installer's system information names its NICs
/// (`network_interfaces[].mac`); the first that is an inventory host picks the answer,
/// else the requester's address does.
async fn proxmox_by_body(
    State(shared): State<Arc<Shared>>,
    peer: Peer,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let info: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let inv = shared.inventory();
    let from_body = info["network_interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|nic| nic["mac"].as_str()?.parse::<Mac>().ok())
        .find(|mac| inv.host(*mac).is_some());
    let mac = from_body.or_else(|| peer.0.and_then(|ip| shared.mac_by_ip(ip)));
    let Some(mac) = mac else {
        return text(
            StatusCode::NOT_FOUND,
            "no inventory host among the posted network interfaces or this address\n",
        );
    };
    kind_seed(&shared, &mac.to_string(), &PROXMOX, peer, &headers)
}

async fn talos(
    State(shared): State<Arc<Shared>>,
    Path(mac): Path<String>,
    peer: Peer,
    headers: HeaderMap,
) -> Response {
    kind_seed(&shared, &mac, &TALOS, peer, &headers)
}

#[derive(Deserialize)]
struct OnboardQuery {
    mac: Option<String>,
}

/// The onboard unit for `?mac=`, or for the requester found by its address.
async fn onboard(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<OnboardQuery>,
    peer: Peer,
    headers: HeaderMap,
) -> Response {
    let mac = match q.mac.as_deref().map(str::parse::<Mac>) {
        Some(Ok(mac)) => Some(mac),
        Some(Err(_)) => return text(StatusCode::BAD_REQUEST, "`mac` is not a MAC address\n"),
        None => peer.0.and_then(|ip| shared.mac_by_ip(ip)),
    };
    let Some(mac) = mac else {
        return text(
            StatusCode::BAD_REQUEST,
            "unknown requester: ask for /onboard.service?mac=aa:bb:cc:dd:ee:ff\n",
        );
    };
    render(
        &shared,
        Some(mac),
        peer,
        &headers,
        Seed {
            template: "onboard.service.j2",
            owner_only: false,
            event: None,
            content_type: "text/plain; charset=utf-8",
        },
    )
}
