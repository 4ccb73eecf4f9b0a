//! `serve`: attaches XDP, starts every service on the LAN address, and shuts down on
//! SIGTERM/SIGINT, detaching the program.
use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use tokio::{sync::watch, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    clients::{self, Clients},
    config::{Config, XdpMode},
    guard,
    hosts::{self, Hosts},
    http,
    inventory::{self, Inventory},
    lan::LanAddr,
    netlink::{LanState, LanWatcher},
    store::Store,
    templates::Templates,
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
    /// Registered hosts and their life cycle.
    pub hosts: Hosts,
    /// The seed templates; replaced whole, with the inventory, when files change.
    pub templates: RwLock<Arc<Templates>>,
    /// The LAN interface's live address; every listener follows it (see [`crate::lan`]).
    pub lan_addr: LanAddr,
    /// DHCP counters, per client and per drop reason.
    pub dhcp_stats: crate::dhcp::Stats,
    /// The address with the reason when there is none, for readiness.
    pub lan_state: watch::Receiver<LanState>,
    /// TFTP counters for `/metrics`.
    pub tftp: tftp::Stats,
}

impl Shared {
    /// Who is asking from a LAN address: the inventory host with that fixed address,
    /// else the client holding its lease.
    pub fn mac_by_ip(&self, ip: std::net::Ipv4Addr) -> Option<inventory::Mac> {
        self.inventory()
            .host_by_ip(ip)
            .map(|h| h.mac)
            .or_else(|| self.clients.mac_by_lease(ip))
    }

    /// The inventory as it is now (a cheap clone of the Arc).
    pub fn inventory(&self) -> Arc<Inventory> {
        self.inventory
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A state without sockets, XDP or files: in-memory store, built-in templates, the
    /// LAN address fixed at `lan_ip`. For tests and tools that call handlers directly.
    pub fn in_memory(config: Config, inventory: Inventory) -> Self {
        let addr = Some(config.lan_ip.addr());
        let (_, lan_addr) = watch::channel(addr);
        let (_, lan_state) = watch::channel(LanState {
            addr,
            reason: String::new(),
        });
        Self {
            config,
            xdp: None,
            store: Store::in_memory(),
            inventory: RwLock::new(Arc::new(inventory)),
            clients: Clients::default(),
            hosts: Hosts::default(),
            templates: RwLock::new(Arc::new(Templates::builtin())),
            lan_addr,
            lan_state,
            dhcp_stats: Default::default(),
            tftp: tftp::Stats::default(),
        }
    }

    /// The templates as they are now.
    pub fn templates(&self) -> Arc<Templates> {
        self.templates
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Runs the daemon until a signal asks it to stop.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    // Fails when lan_iface does not exist: never a fallback to other interfaces.
    let (watcher, lan_addr, lan_state) = LanWatcher::start(&config).await?;
    let store = Store::open(&config.data_path)?;
    // Strict templating is checked at start-up: a file that does not parse stops us, a
    // seed that does not render for a host is logged (that host's requests get 500).
    let (inventory, templates) = inventory::load_all(&config.data_path)?;
    inventory::check_logged(&inventory, &templates);
    let clients = Clients::open(store.clone())?;
    let hosts = Hosts::open(store.clone())?;
    hosts.sync_inventory(&inventory)?;
    let xdp = attach_xdp(&config)?;
    let shared = Arc::new(Shared {
        config,
        xdp,
        store,
        inventory: RwLock::new(Arc::new(inventory)),
        clients,
        hosts,
        templates: RwLock::new(Arc::new(templates)),
        lan_addr,
        dhcp_stats: Default::default(),
        lan_state,
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
    tasks.spawn({
        let token = token.clone();
        async move {
            watcher.run(token).await;
            Ok(())
        }
    });
    tasks.spawn(http::run(shared.clone(), token.clone()));
    tasks.spawn(crate::dhcp::server::run(shared.clone(), token.clone()));
    tasks.spawn(http::run_health(shared.clone(), token.clone()));
    tasks.spawn(guard::run(shared.clone(), token.clone()));
    tasks.spawn(hosts::run(shared.clone(), token.clone()));
    tasks.spawn(hosts::api::run_admin(shared.clone(), token.clone()));
    tasks.spawn({
        let (shared, token) = (shared.clone(), token.clone());
        async move {
            clients::flush_loop(shared, token).await;
            Ok(())
        }
    });
    tasks.spawn({
        let (shared, token) = (shared.clone(), token.clone());
        async move {
            inventory::watch(shared, token).await;
            Ok(())
        }
    });
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
    let xdp = attach_lan_program(config)?;
    if !xdp
        .as_ref()
        .is_some_and(|x| crate::xdp::checks_identity(x.guard_mode()))
    {
        warn!(
            "DHCP identity check off (it needs XDP attached and the guard on): any LAN client can ask for leases in another's name (gb10_dhcp_identity_check 0)"
        );
    }
    Ok(xdp)
}

fn attach_lan_program(config: &Config) -> anyhow::Result<Option<LanXdp>> {
    if config.xdp == XdpMode::Off {
        warn!("XDP is off (xdp.mode = off): no per-client counters, no guard");
        return Ok(None);
    }
    match LanXdp::attach(&config.lan_iface, &config.guard) {
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
