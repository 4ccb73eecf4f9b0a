//! The HTTP service on `lan_ip:http_port`: one router for static files, seeds, client
//! onboarding, `/explain`, `/metrics` and (without a separate admin address) the hosts
//! API, each part holding only what it uses; and the loopback health listener.
mod api;
mod explain;
mod health;
mod seeds;
pub mod static_files;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
};

use anyhow::Context as _;
use axum::{
    Router,
    extract::{ConnectInfo, FromRequestParts},
    http::request::Parts,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use self::{
    explain::Explain,
    health::{Health, run as run_health},
    seeds::SeedRoutes,
    static_files::{Files, local_size},
};
use crate::{
    clients::Clients,
    hosts::{Hosts, api::Admin},
    lan::{self, LanAddr},
};

/// Everything the LAN listener serves.
pub struct Routes {
    pub files: Files,
    pub seeds: SeedRoutes,
    /// Heartbeats and the client records.
    pub clients: Arc<Clients>,
    /// Whose installs heartbeats prove themselves to.
    pub hosts: Arc<Hosts>,
    pub explain: Explain,
    pub health: Health,
    /// The hosts API and dashboard under `/admin`, when they have no listener of their own.
    pub admin: Option<Admin>,
}

/// The router with every route the LAN listener serves.
pub fn router(routes: Routes) -> Router {
    let Routes {
        files,
        seeds,
        clients,
        hosts,
        explain,
        health,
        admin,
    } = routes;
    let mut router = Router::new()
        .merge(health.routes())
        .merge(explain.routes())
        .merge(seeds::routes(seeds))
        .merge(api::routes(clients, hosts))
        .fallback_service(
            Router::new()
                .fallback(static_files::serve)
                .with_state(files),
        );
    if let Some(admin) = admin {
        router = router
            .nest("/admin", crate::hosts::api::routes(admin))
            // `nest` answers `/admin` but not `/admin/`; the dashboard handles both.
            .route("/admin/", axum::routing::get(crate::hosts::dashboard::page));
    }
    router
}

/// Serves `app` on `lan_addr:port`, following the LAN address, until `token` fires.
pub async fn run(
    app: Router,
    port: u16,
    max_connections: usize,
    lan_addr: LanAddr,
    token: CancellationToken,
) -> anyhow::Result<()> {
    lan::follow("http", lan_addr, token, |ip, stop| {
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

/// Serves `app` on a fixed address that is not the LAN's (the loopback health
/// listener, the admin listener), until `token` fires.
pub async fn run_fixed(
    name: &'static str,
    addr: SocketAddr,
    app: Router,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {name} listener to {addr}"))?;
    info!(addr = %listener.local_addr()?, "{name} listening");
    let serve = axum::serve(listener, app).with_graceful_shutdown(token.clone().cancelled_owned());
    // Event streams (the dashboard, `clients watch`) never end by themselves, so a
    // graceful shutdown would wait for ever: open connections get 5 s, as on the LAN.
    tokio::select! {
        served = serve.into_future() => served?,
        () = async {
            token.cancelled().await;
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        } => info!("{name} connections still open 5 s after stop: closed"),
    }
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
