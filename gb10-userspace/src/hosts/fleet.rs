//! The admin API's view of every machine: `GET /api/clients` (one summary row per client
//! seen and per inventory host), `GET /api/clients/{mac}` (with the timeline) and
//! `GET /api/clients/events` (every client event live, and every [`TICK`] the XDP
//! counters of the clients that sent frames since, as Server-Sent Events; `?mac=` for
//! one client), and `GET /fleet`, the page that shows them live and says why a machine
//! stopped. Read-only, like `GET /api/hosts`.
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
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, broadcast::error::RecvError},
    time::{Interval, MissedTickBehavior},
};

use super::{api::Admin, counters::Counters};
use crate::{
    clients::{ClientEvent, ClientRecord, ClientState, ProgressMark, Stage, TimelineEntry},
    inventory::Inventory,
    mac::Mac,
};

/// Event streams served at once per listener. Each one turns every client event into a
/// lock, a lookup and a JSON line; without a cap, anyone who reaches `/admin` on the LAN
/// could multiply the cost of a DHCP storm by opening streams.
const STREAMS_MAX: usize = 32;

/// How often a stream sends the counters that moved. Ticks of every stream share one
/// walk of the map per [`super::counters::MAX_AGE`].
const TICK: Duration = Duration::from_secs(2);

/// Counters rows in one tick at most: a flood of new MACs sends the rest on the next
/// ticks, oldest change first, rather than one huge message.
const TICK_ROWS_MAX: usize = 2048;

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
    /// What the XDP program counted from this MAC; `None` when XDP is not attached (no
    /// counters exist, which is not the same as zero).
    xdp: Option<Counters>,
    /// The image install under way, while the client is `installing` and its installer
    /// reports progress.
    progress: Option<InstallProgress>,
}

/// An image install's latest progress beat, and where the run started (how fast it
/// writes follows from the two).
#[derive(Debug, Serialize)]
struct InstallProgress {
    /// Bytes streamed to the disk so far, of `total` when known.
    written: u64,
    total: Option<u64>,
    at_ms: u64,
    start: Option<ProgressMark>,
}

fn install_progress(record: &ClientRecord) -> Option<InstallProgress> {
    if record.state != ClientState::Installing {
        return None;
    }
    let entry = record.progress.as_ref()?;
    let ClientEvent::Heartbeat {
        progress: Some(p), ..
    } = &entry.event
    else {
        return None;
    };
    Some(InstallProgress {
        written: p.written,
        total: p.total,
        at_ms: entry.at_ms,
        start: record.progress_start,
    })
}

fn row(
    admin: &Admin,
    inv: &Inventory,
    mac: Mac,
    record: Option<&ClientRecord>,
    lease_ip: Option<std::net::Ipv4Addr>,
    xdp: Option<Counters>,
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
        xdp,
        progress: record.and_then(install_progress),
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
    // One walk of the XDP map for the whole list (shared with other readers), not a
    // lookup per row.
    let walk = admin.counters.walk().await;
    let mut macs: Vec<Mac> = records.keys().copied().collect();
    macs.extend(inv.hosts.iter().map(|h| h.mac));
    macs.extend(admin.hosts.list().iter().map(|h| h.mac));
    macs.sort();
    macs.dedup();
    let rows: Vec<Row> = macs
        .into_iter()
        .map(|m| {
            let xdp = walk.as_ref().map(|w| w.get(m));
            row(
                &admin,
                inv,
                m,
                records.get(&m),
                leased.get(&m).copied(),
                xdp,
            )
        })
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
    let xdp = admin.counters.one(mac);
    let r = row(
        &admin,
        &snapshot.inventory,
        mac,
        record.as_ref(),
        leased,
        xdp,
    );
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
    /// Whether XDP counts frames (its counters come in `counters` messages).
    xdp_attached: bool,
    #[serde(flatten)]
    event: &'a ClientEvent,
}

/// Every client event as an `event: client` SSE message; every [`TICK`], an `event:
/// counters` message with the XDP counters of the shown clients that sent frames since
/// the last one (none without XDP); `resync` when this listener fell behind and missed
/// some events (the reader reloads what it shows).
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
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let state = Streaming {
        admin,
        rx,
        only,
        tick,
        counters_after: None,
        _slot: slot,
    };
    Sse::new(stream(state))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// One open event stream.
struct Streaming {
    admin: Admin,
    rx: tokio::sync::broadcast::Receiver<(Mac, ClientEvent)>,
    only: Option<Mac>,
    tick: Interval,
    /// Counters of frames at or after this `bpf_ktime_get_ns` go in the next tick;
    /// `None` before the first (which sends every shown client's).
    counters_after: Option<u64>,
    /// Held as long as the stream lives.
    _slot: OwnedSemaphorePermit,
}

/// The counters of clients the view shows, as a tick carries them.
#[derive(Serialize)]
struct CountersRow {
    mac: Mac,
    #[serde(flatten)]
    counters: Counters,
}

impl Streaming {
    fn client(&self, mac: Mac, event: &ClientEvent) -> Event {
        let streamed = Streamed {
            mac,
            state: self.admin.clients.state(mac),
            hostname: self
                .admin
                .live
                .now()
                .inventory
                .host(mac)
                .and_then(|h| h.hostname.clone()),
            at_ms: crate::clock::now_ms(),
            xdp_attached: self.admin.counters.attached(),
            event,
        };
        Event::default()
            .event("client")
            .data(serde_json::to_string(&streamed).unwrap_or_default())
    }

    /// The counters that moved since the last tick, of clients the view shows (a client
    /// record or an inventory host: not every MAC a flood made up); `None` when there
    /// are none (or no XDP).
    async fn counters(&mut self) -> Option<Event> {
        let walk = self.admin.counters.walk().await?;
        let snapshot = self.admin.live.now();
        let shown = |mac: Mac| match self.only {
            Some(m) => m == mac,
            None => {
                self.admin.clients.state(mac).is_some() || snapshot.inventory.host(mac).is_some()
            }
        };
        let changed = walk.changed(self.counters_after);
        let mut rows = Vec::new();
        let mut last_ns = None;
        for (mac, counters, seen) in changed {
            if rows.len() == TICK_ROWS_MAX {
                break;
            }
            if shown(mac) {
                rows.push(CountersRow { mac, counters });
                last_ns = Some(seen);
            }
        }
        // Cut short: the next tick goes on from the last row sent (it is sent again).
        self.counters_after = Some(if rows.len() == TICK_ROWS_MAX {
            last_ns.unwrap_or(walk.started_ns)
        } else {
            walk.started_ns
        });
        if rows.is_empty() {
            return None;
        }
        let body = serde_json::json!({ "at_ms": crate::clock::now_ms(), "clients": rows });
        Some(Event::default().event("counters").data(body.to_string()))
    }
}

fn stream(state: Streaming) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(state, |mut st| async move {
        let event = loop {
            tokio::select! {
                got = st.rx.recv() => match got {
                    Ok((mac, _)) if st.only.is_some_and(|m| m != mac) => continue,
                    Ok((mac, event)) => break st.client(mac, &event),
                    Err(RecvError::Lagged(n)) => {
                        break Event::default()
                            .event("resync")
                            .data(format!("{{\"missed\":{n}}}"));
                    }
                    Err(RecvError::Closed) => return None,
                },
                _ = st.tick.tick() => {
                    if let Some(event) = st.counters().await {
                        break event;
                    }
                }
            }
        };
        Some((Ok(event), st))
    })
}
