//! The admin API's view of every machine: `GET /api/clients` (one summary row per client
//! seen and per inventory host), `GET /api/clients/{mac}` (with the timeline) and
//! `GET /api/clients/events` (every client event live, as Server-Sent Events; `?mac=`
//! for one client), and `GET /fleet`, the page that shows them live and says why a
//! machine stopped. Read-only, like `GET /api/hosts`.
use std::{collections::BTreeMap, convert::Infallible, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::get,
};
use futures::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast::error::RecvError};

use super::api::Admin;
use crate::{
    clients::{ClientEvent, ClientRecord, ClientState, Stage, TimelineEntry},
    inventory::Inventory,
    mac::Mac,
};

/// Event streams served at once per listener. Each one turns every client event into a
/// lock, a lookup and a JSON line; without a cap, anyone who reaches `/admin` on the LAN
/// could multiply the cost of a DHCP storm by opening streams.
const STREAMS_MAX: usize = 32;

/// The data routes, merged into the admin router behind the token.
pub fn routes(admin: Admin) -> Router {
    let slots = Arc::new(Semaphore::new(STREAMS_MAX));
    Router::new()
        .route("/api/clients", get(list))
        .route(
            "/api/clients/events",
            get(events).layer(axum::Extension(slots)),
        )
        .route("/api/clients/{mac}", get(one))
        .with_state(admin)
}

/// The fleet view: one page, no external assets; it reads the routes below with the
/// admin token the operator types (kept in the tab's sessionStorage).
const PAGE: &str = include_str!("fleet.html");

/// The page, outside the token: a browser opening it cannot send one, and it holds no
/// data (every request it makes carries the token).
pub fn page_routes() -> Router {
    Router::new().route("/fleet", get(page))
}

async fn page() -> axum::response::Html<&'static str> {
    axum::response::Html(PAGE)
}

/// One machine: what the inventory and host records say, and what it did last.
#[derive(Debug, Serialize)]
struct Row {
    mac: Mac,
    hostname: Option<String>,
    profile: Option<String>,
    /// In the inventory or registered through the hosts API.
    known: bool,
    /// The host life-cycle state, for registered hosts.
    host_state: Option<&'static str>,
    /// `None` for an inventory host never seen on the LAN.
    state: Option<ClientState>,
    /// The address it holds a live lease on now (from the lease table).
    lease_ip: Option<std::net::Ipv4Addr>,
    reported_ip: Option<std::net::Ipv4Addr>,
    first_seen_ms: Option<u64>,
    last_seen_ms: Option<u64>,
    last_event: Option<TimelineEntry>,
    /// Option 93 of its newest DISCOVER that had one.
    arch: Option<u16>,
    /// Where in the boot chain its last step forward was, and since when.
    stage: Option<Stage>,
    stage_since_ms: Option<u64>,
    /// Why it stopped: its newest event, when that is a failure.
    stopped: Option<TimelineEntry>,
    /// Events in the timeline (at most `[clients] timeline`).
    events: usize,
}

fn row(
    admin: &Admin,
    inv: &Inventory,
    mac: Mac,
    record: Option<&ClientRecord>,
    lease_ip: Option<std::net::Ipv4Addr>,
) -> Row {
    let host = inv.host(mac);
    let registered = admin.hosts.get(mac);
    let stage = record.and_then(ClientRecord::stage);
    Row {
        mac,
        hostname: host.and_then(|h| h.hostname.clone()),
        profile: inv
            .profile_for(host)
            .map(|(n, _)| n.to_owned())
            .or_else(|| registered.as_ref().and_then(|r| r.identity.profile.clone())),
        known: host.is_some() || registered.is_some(),
        host_state: registered.map(|r| r.machine.state.label()),
        state: record.map(|r| r.state),
        lease_ip,
        reported_ip: record.and_then(|r| r.reported_ip),
        first_seen_ms: record.map(|r| r.first_seen_ms),
        last_seen_ms: record.map(|r| r.last_seen_ms),
        last_event: record.and_then(|r| r.timeline.back().cloned()),
        arch: record.and_then(ClientRecord::arch),
        stage: stage.map(|(s, _)| s),
        stage_since_ms: stage.map(|(_, since)| since),
        stopped: record.and_then(|r| r.stopped().cloned()),
        events: record.map_or(0, |r| r.timeline.len()),
    }
}

async fn list(State(admin): State<Admin>) -> Response {
    let snapshot = admin.live.now();
    let inv = &snapshot.inventory;
    let records: BTreeMap<Mac, ClientRecord> = admin
        .clients
        .all()
        .into_iter()
        .map(|r| (r.mac, r))
        .collect();
    let leased = admin.leases.live_by_mac(crate::clock::now_secs());
    let mut macs: Vec<Mac> = records.keys().copied().collect();
    macs.extend(inv.hosts.iter().map(|h| h.mac));
    macs.extend(admin.hosts.list().iter().map(|h| h.mac));
    macs.sort();
    macs.dedup();
    let rows: Vec<Row> = macs
        .into_iter()
        .map(|m| row(&admin, inv, m, records.get(&m), leased.get(&m).copied()))
        .collect();
    Json(rows).into_response()
}

fn bad_mac(text: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({ "error": format!("`{text}` is not a MAC address") })),
    )
        .into_response()
}

async fn one(State(admin): State<Admin>, Path(mac): Path<String>) -> Response {
    let Ok(mac) = mac.parse::<Mac>() else {
        return bad_mac(&mac);
    };
    let snapshot = admin.live.now();
    let record = admin.clients.get(mac);
    let leased = admin.leases.live_of(mac, crate::clock::now_secs());
    let r = row(&admin, &snapshot.inventory, mac, record.as_ref(), leased);
    if record.is_none() && !r.known {
        return (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": format!("no client {mac}") })),
        )
            .into_response();
    }
    let mut body = serde_json::to_value(&r).unwrap_or_default();
    body["timeline"] =
        serde_json::to_value(record.map(|r| r.timeline).unwrap_or_default()).unwrap_or_default();
    Json(body).into_response()
}

#[derive(Deserialize)]
struct Filter {
    mac: Option<String>,
}

/// A client event as streamed: the timeline entry with the client it is about, its
/// state after the event, and its inventory name.
#[derive(Serialize)]
struct Streamed<'a> {
    mac: Mac,
    state: Option<ClientState>,
    hostname: Option<String>,
    at_ms: u64,
    #[serde(flatten)]
    event: &'a ClientEvent,
}

/// Every client event as an `event: client` SSE message; `resync` when this listener
/// fell behind and missed some (the reader reloads what it shows).
async fn events(
    State(admin): State<Admin>,
    axum::Extension(slots): axum::Extension<Arc<Semaphore>>,
    Query(filter): Query<Filter>,
) -> Response {
    let Ok(slot) = slots.try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({
                "error": format!("{STREAMS_MAX} event streams are open already; try later")
            })),
        )
            .into_response();
    };
    let only = match filter.mac.as_deref().map(str::parse::<Mac>) {
        None => None,
        Some(Ok(m)) => Some(m),
        Some(Err(_)) => return bad_mac(filter.mac.as_deref().unwrap_or_default()),
    };
    // Subscribed before the response starts: a reader that fetches a snapshot after the
    // headers arrive misses nothing.
    let rx = admin.clients.subscribe();
    Sse::new(stream(admin, rx, only, slot))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn stream(
    admin: Admin,
    rx: tokio::sync::broadcast::Receiver<(Mac, ClientEvent)>,
    only: Option<Mac>,
    // Held as long as the stream lives.
    slot: OwnedSemaphorePermit,
) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold((admin, rx, slot), move |(admin, mut rx, slot)| async move {
        let event = loop {
            match rx.recv().await {
                Ok((mac, _)) if only.is_some_and(|m| m != mac) => continue,
                Ok((mac, event)) => {
                    let streamed = Streamed {
                        mac,
                        state: admin.clients.state(mac),
                        hostname: admin
                            .live
                            .now()
                            .inventory
                            .host(mac)
                            .and_then(|h| h.hostname.clone()),
                        at_ms: crate::clock::now_ms(),
                        event: &event,
                    };
                    break Event::default()
                        .event("client")
                        .data(serde_json::to_string(&streamed).unwrap_or_default());
                }
                Err(RecvError::Lagged(n)) => {
                    break Event::default()
                        .event("resync")
                        .data(format!("{{\"missed\":{n}}}"));
                }
                Err(RecvError::Closed) => return None,
            }
        };
        Some((Ok(event), (admin, rx, slot)))
    })
}
