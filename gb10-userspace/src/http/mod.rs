//! The HTTP service on `lan_ip:http_port`: one router for static files, seeds, client
//! onboarding, `/explain`, `/metrics` and (without a separate admin address) the hosts
//! API, each part holding only what it uses (what names clients only with the admin
//! token); and the loopback health listener.
mod api;
mod conn;
mod explain;
mod health;
mod listener;
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
    api::Beats,
    explain::Explain,
    health::{Health, run as run_health},
    seeds::SeedRoutes,
    static_files::{Files, local_size},
};
use crate::{
    config::{HttpLimits, Secret},
    hosts::api::Admin,
    lan::{self, LanAddr},
};

/// Everything the LAN listener serves.
pub struct Routes {
    pub files: Files,
    pub seeds: SeedRoutes,
    /// Heartbeats and the client records.
    pub beats: Beats,
    pub explain: Explain,
    pub health: Health,
    /// The hosts API and dashboard under `/admin`, when they have no listener of their own.
    pub admin: Option<Admin>,
    /// What `/clients`, `/explain` and `/metrics` need (the `[admin]` token).
    pub token: Option<Secret>,
}

/// The router with every route the LAN listener serves.
pub fn router(routes: Routes) -> Router {
    let Routes {
        files,
        seeds,
        beats,
        explain,
        health,
        admin,
        token,
    } = routes;
    let mut router = Router::new()
        .merge(health.lan_routes(token.clone()))
        .merge(explain.routes(token.clone()))
        .merge(seeds::routes(seeds))
        .merge(api::routes(beats, token))
        // The handler itself, not a router around it: a second routing step (and its
        // URL-parameter bookkeeping) per static file was a tenth of a small file's cost.
        .fallback_service(axum::handler::Handler::with_state(
            static_files::serve,
            Arc::new(files),
        ));
    if let Some(admin) = admin {
        router = router
            .nest("/admin", crate::hosts::api::routes(admin))
            // `nest` answers `/admin` but not `/admin/`; the dashboard handles both.
            .route("/admin/", axum::routing::get(crate::hosts::dashboard::page));
    }
    router
}

/// Serves `app` on `lan_addr:port`, following the LAN address, until `token` fires.
/// HTTP/1.1 with header names in Title-Case, as nginx and busybox write them: GRUB's
/// http module matches `Content-Length: ` byte for byte, and without it waits 30 s for
/// each file before giving up.
pub async fn run(
    app: Router,
    port: u16,
    limits: HttpLimits,
    lan_addr: LanAddr,
    token: CancellationToken,
) -> anyhow::Result<()> {
    lan::follow("http", lan_addr, token, |ip, stop| {
        let app = app.clone();
        async move {
            let listener = TcpListener::bind((ip, port)).await?;
            info!(addr = %listener.local_addr()?, "HTTP listening");
            listener::serve("http", listener, app, limits, stop).await;
            Ok::<_, std::io::Error>(())
        }
    })
    .await;
    Ok(())
}

/// Serves `app` on a fixed address that is not the LAN's (the loopback health
/// listener, the admin listener) with the same `limits`, until `token` fires.
pub async fn run_fixed(
    name: &'static str,
    addr: SocketAddr,
    app: Router,
    limits: HttpLimits,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {name} listener to {addr}"))?;
    info!(addr = %listener.local_addr()?, "{name} listening");
    listener::serve(name, listener, app, limits, token).await;
    Ok(())
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
