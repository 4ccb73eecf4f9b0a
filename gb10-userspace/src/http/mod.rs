//! The HTTP service on `lan_ip:http_port`: one axum router for static files, seeds,
//! client onboarding and metrics.
mod api;
pub mod fleet;
mod seeds;
pub mod static_files;

pub use seeds::{GRUB_HOSTS, render_for, tftp_script};

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
};

use anyhow::Context as _;
use axum::{
    Router,
    extract::{ConnectInfo, FromRequestParts, State},
    http::{StatusCode, header, request::Parts},
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
    let max_connections = shared.config.http.max_connections;
    let app = router(shared.clone());
    lan::follow("http", shared.lan_addr.clone(), token, |ip, stop| {
        let app = app.clone();
        async move {
            let listener = TcpListener::bind((ip, port)).await?;
            info!(addr = %listener.local_addr()?, "HTTP listening");
            serve_lan(listener, app, max_connections, stop).await;
            Ok::<_, std::io::Error>(())
        }
    })
    .await;
    Ok(())
}

/// Accepts connections until `stop` fires, then lets the open ones finish their
/// response and close. HTTP/1.1 with header names in Title-Case, as nginx and busybox
/// write them: GRUB's http module matches `Content-Length: ` byte for byte, and without
/// it waits 30 s for each file before giving up. At most `max_connections` are served
/// at once; the next waits in the kernel's accept queue until one ends.
async fn serve_lan(
    listener: TcpListener,
    app: Router,
    max_connections: usize,
    stop: CancellationToken,
) {
    use hyper_util::{rt::TokioIo, server::graceful::GracefulShutdown};
    use tower::ServiceExt as _;

    let graceful = GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    loop {
        let slot = tokio::select! {
            () = stop.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // Out of descriptors and the like: pause instead of spinning.
                    tracing::warn!(%err, "HTTP accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Headers and a small body go out as separate writes: without TCP_NODELAY
        // Nagle holds the body until the client's delayed ACK, ~40 ms a request.
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(%err, "TCP_NODELAY not set");
        }
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(req.map(axum::body::Body::new))
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .title_case_headers(true)
            // A client that opens a connection and sends no request (or trickles one)
            // is let go, rather than holding a socket and a task for ever.
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(std::time::Duration::from_secs(30))
            .serve_connection(TokioIo::new(tcp), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(err) = conn.await {
                tracing::debug!(%err, %peer, "HTTP connection ended");
            }
            drop(slot);
        });
    }
    drop(listener);
    // Requests in flight finish (bounded: a renumber must not wait on a slow client).
    if tokio::time::timeout(std::time::Duration::from_secs(5), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("HTTP connections still open 5 s after stop; dropping them");
    }
}

/// The router with every route the daemon serves.
pub fn router(shared: Arc<Shared>) -> Router {
    // Without a separate admin address, the hosts API and dashboard live under /admin.
    let admin = if shared.config.admin.listen.is_none() {
        Router::new()
            .nest("/admin", crate::hosts::api::routes(shared.clone()))
            // `nest` answers `/admin` but not `/admin/`; the dashboard handles both.
            .route("/admin/", get(crate::hosts::dashboard::page))
    } else {
        Router::new()
    };
    Router::new()
        .merge(admin)
        .route("/healthz", get(healthz))
        .route("/metrics", get(render_metrics))
        .route("/explain", get(explain))
        .merge(seeds::routes())
        .merge(api::routes())
        .fallback(static_files::serve)
        .with_state(shared)
}

/// The requester's IPv4 address (`None` when unknown, e.g. in-process tests).
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub Option<Ipv4Addr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .and_then(|ConnectInfo(addr)| match addr.ip() {
                IpAddr::V4(v4) => Some(v4),
                IpAddr::V6(v6) => v6.to_ipv4_mapped(),
            });
        Ok(Self(ip))
    }
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
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
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

/// `/explain?mac=…&arch=…&user_class=…`: the boot decision for a client as JSON, with
/// its DHCP counters.
async fn explain(
    State(shared): State<Arc<Shared>>,
    axum::extract::Query(query): axum::extract::Query<crate::explain::Query>,
) -> axum::response::Response {
    let server = (*shared.lan_addr.borrow()).unwrap_or(shared.config.lan_ip.addr());
    let inventory = shared.inventory();
    match crate::explain::explain(&shared.config, &inventory, server, &query) {
        Ok(e) => {
            let counters = shared.dhcp_stats.client(e.mac).map(|c| {
                serde_json::json!({
                    "received": crate::dhcp::TYPE_LABELS.iter().zip(c.received).filter(|(_, n)| *n > 0)
                        .map(|(t, n)| (t.to_string(), n)).collect::<std::collections::BTreeMap<_, _>>(),
                    "sent": crate::dhcp::TYPE_LABELS.iter().zip(c.sent).filter(|(_, n)| *n > 0)
                        .map(|(t, n)| (t.to_string(), n)).collect::<std::collections::BTreeMap<_, _>>(),
                    "offers_unanswered": c.unanswered(std::time::Instant::now()),
                })
            });
            let mut body = serde_json::to_value(&e).unwrap_or_default();
            body["dhcp_counters"] = counters.unwrap_or_default();
            body["lease"] =
                serde_json::to_value(shared.dhcp_stats.lease_of(e.mac)).unwrap_or_default();
            axum::Json(body).into_response()
        }
        Err(err) => (
            StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({ "error": err.to_string() })),
        )
            .into_response(),
    }
}

async fn render_metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    // The map walk is a few thousand syscalls at most: off the async workers.
    let text = tokio::task::spawn_blocking(move || {
        let mut w = metrics::Writer::default();
        let snapshot = shared.xdp.as_ref().map(|x| x.snapshot());
        metrics::write_xdp(&mut w, snapshot.as_ref());
        metrics::write_tftp(&mut w, &shared.tftp.snapshot());
        if let Some(snapshot) = &snapshot {
            let role = match shared.config.mode {
                crate::config::Mode::Direct => "rogue",
                crate::config::Mode::Proxy => "site",
            };
            metrics::write_guard(&mut w, snapshot, role);
        }
        metrics::write_clients(&mut w, &shared.clients.counts());
        metrics::write_hosts(&mut w, &shared.hosts.counts());
        metrics::write_dhcp(&mut w, &shared.dhcp_stats);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::{Config, RawConfig},
        inventory::Inventory,
    };

    /// A daemon state without sockets, for calling handlers' helpers directly.
    fn shared(inventory: &str) -> Arc<Shared> {
        let config = Config::try_from(RawConfig {
            lan_iface: Some("lo".into()),
            lan_ip: Some("198.18.0.1/24".into()),
            ..Default::default()
        })
        .unwrap();
        let inv = Inventory::parse(std::path::Path::new("inventory.toml"), inventory).unwrap();
        Arc::new(Shared::in_memory(config, inv))
    }

    #[test]
    fn owner_is_the_fixed_ip_or_the_lease() {
        let shared = shared(
            "[[hosts]]\nmac = \"02:00:00:00:00:01\"\nip = \"198.18.0.10\"\n\
             [[hosts]]\nmac = \"02:00:00:00:00:02\"\n",
        );
        let (a, b) = (
            "02:00:00:00:00:01".parse().unwrap(),
            "02:00:00:00:00:02".parse().unwrap(),
        );
        let ip = |last| Some(Ipv4Addr::new(198, 18, 0, last));
        assert!(seeds::is_owner(&shared, a, ip(10)));
        assert!(!seeds::is_owner(&shared, a, ip(11)));
        assert!(!seeds::is_owner(&shared, b, ip(11)));
        assert!(!seeds::is_owner(&shared, b, None));
        shared.clients.record(
            b,
            crate::clients::ClientEvent::Leased {
                ip: Ipv4Addr::new(198, 18, 0, 11),
            },
        );
        assert!(seeds::is_owner(&shared, b, ip(11)));
        assert!(!seeds::is_owner(&shared, a, ip(11)));
    }

    #[test]
    fn grub_scripts_over_tftp() {
        let shared = shared(
            "[profiles.deb]\nkernel = \"d/linux\"\ninitrd = \"d/initrd.gz\"\ncmdline = \"ds=nocloud;s={{ seed_url }}\"\n\
             [[hosts]]\nmac = \"02:00:00:00:00:01\"\nhostname = \"h1\"\nprofile = \"deb\"\n",
        );
        let ip = Ipv4Addr::new(198, 18, 0, 1);
        let cfg = tftp_script(&shared, "/grub/grub.cfg", ip).unwrap().unwrap();
        assert!(cfg.contains("${net_default_mac}"), "{cfg}");
        let host = tftp_script(&shared, "grub/hosts/02:00:00:00:00:01.cfg", ip)
            .unwrap()
            .unwrap();
        assert!(
            host.contains("linux (http,198.18.0.1)/d/linux 'ds=nocloud;s=http://198.18.0.1/cloud-init/02:00:00:00:00:01/'"),
            "{host}"
        );
        assert!(tftp_script(&shared, "grub/x86_64-efi/normal.mod", ip).is_none());
        let mac = "02:00:00:00:00:01".parse().unwrap();
        assert_eq!(
            shared.clients.state(mac),
            Some(crate::clients::ClientState::PxeBooted)
        );
    }
}
