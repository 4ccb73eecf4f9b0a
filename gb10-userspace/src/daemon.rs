//! `serve`: attaches XDP, starts every service on the LAN address, and shuts down on
//! SIGTERM/SIGINT, detaching the program.
use std::{
    ffi::CString,
    sync::{Arc, RwLock},
};

use anyhow::{Context as _, bail};
use tokio::{sync::watch, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    clients::Clients,
    config::{Config, XdpMode},
    http,
    inventory::Inventory,
    lan::LanAddr,
    store::Store,
    tftp,
    xdp::LanXdp,
};

/// What every service shares.
pub struct Shared {
    pub config: Config,
    /// The attached LAN program, or None when serving without it.
    pub xdp: Option<LanXdp>,
    /// Leases, client state, host records.
    pub store: Store,
    /// The current inventory; replaced whole when the file changes.
    pub inventory: RwLock<Arc<Inventory>>,
    /// Where DHCP, TFTP and HTTP report what clients do.
    pub clients: Clients,
    /// The LAN interface's live address; every listener follows it (see [`crate::lan`]).
    pub lan_addr: LanAddr,
    /// TFTP counters for `/metrics`.
    pub tftp: tftp::Stats,
}

impl Shared {
    /// The inventory as it is now (a cheap clone of the Arc).
    pub fn inventory(&self) -> Arc<Inventory> {
        self.inventory
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Runs the daemon until a signal asks it to stop.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let iface = CString::new(config.lan_iface.as_str()).context("lan_iface")?;
    // SAFETY: a plain libc call on a NUL-terminated string we own.
    if unsafe { libc::if_nametoindex(iface.as_ptr()) } == 0 {
        bail!(
            "lan_iface `{}` does not exist; gb10-provision serves only that interface and \
             never falls back to another",
            config.lan_iface
        );
    }
    let store = Store::open(&config.data_path)?;
    let inventory = Inventory::load(&config.data_path)?;
    let xdp = attach_xdp(&config)?;
    // TODO(#6): rtnetlink asserts/watches the address; until then it is the configured one.
    let (_lan_tx, lan_addr) = watch::channel(Some(config.lan_ip.addr()));
    let shared = Arc::new(Shared {
        config,
        xdp,
        store,
        inventory: RwLock::new(Arc::new(inventory)),
        clients: Clients::default(),
        lan_addr,
        tftp: tftp::Stats::default(),
    });
    let token = CancellationToken::new();
    tokio::spawn(cancel_on_signal(token.clone()));

    info!(
        iface = %shared.config.lan_iface,
        mode = ?shared.config.mode,
        xdp = shared.xdp.is_some(),
        "gb10-provision starting"
    );
    let mut tasks = JoinSet::new();
    tasks.spawn(http::run(shared.clone(), token.clone()));
    tasks.spawn(tftp::run(shared.clone(), token.clone()));
    // The first service to fail takes the daemon down; the others stop with it.
    let mut result = Ok(());
    while let Some(joined) = tasks.join_next().await {
        let outcome = joined.context("a service task panicked").and_then(|r| r);
        if let Err(err) = outcome {
            if result.is_ok() {
                result = Err(err);
            }
            token.cancel();
        }
    }
    result?;

    match Arc::try_unwrap(shared) {
        Ok(Shared { xdp: Some(xdp), .. }) => {
            let iface = xdp.iface().to_owned();
            drop(xdp);
            info!(%iface, "XDP program detached");
        }
        Ok(_) => {}
        Err(_) => warn!("a task still holds the shared state; XDP detaches at exit"),
    }
    info!("stopped");
    Ok(())
}

fn attach_xdp(config: &Config) -> anyhow::Result<Option<LanXdp>> {
    if config.xdp == XdpMode::Off {
        warn!("XDP is off (xdp.mode = off): no per-client counters, no guard");
        return Ok(None);
    }
    match LanXdp::attach(&config.lan_iface) {
        Ok(xdp) => {
            info!(iface = %config.lan_iface, "XDP program attached");
            Ok(Some(xdp))
        }
        Err(err) if config.xdp == XdpMode::Required => {
            Err(anyhow::Error::new(err).context(format!(
                "XDP is required (xdp.mode = required) on {}",
                config.lan_iface
            )))
        }
        Err(err) => {
            warn!(
                error = %crate::error_chain(&err),
                "XDP not attached; serving without it (gb10_xdp_attached 0)"
            );
            Ok(None)
        }
    }
}

async fn cancel_on_signal(token: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = int.recv() => info!("SIGINT: shutting down"),
    }
    token.cancel();
}
