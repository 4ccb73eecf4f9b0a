//! The composition root: the one place that sees everything. `serve` opens the store,
//! the live snapshot and the XDP program, builds each service with exactly what it
//! uses, runs them under one cancellation, and on SIGTERM/SIGINT stops them and
//! detaches the program.
use std::{future::Future, sync::Arc};

use anyhow::Context as _;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    auth,
    clients::{self, Clients},
    config::{Config, Mode, XdpMode},
    dhcp::{self, LeaseTable},
    guard::{self, Guard},
    hosts::{self, Hosts, api::Admin, ssh::Joiner},
    http::{self, Explain, Files, Health, SeedRoutes},
    identity::{Identity, Neighbours},
    live, metrics,
    netlink::LanWatcher,
    seeds::{self, Seeds},
    store::Store,
    tftp::{self, Tftp},
    xdp::LanXdp,
};

/// The configured admin token, else the one made at first start in
/// `data_path/state/admin-token` (a fresh install works out of the box: the CLI on this
/// host reads that file).
fn admin_token(config: &Config) -> anyhow::Result<crate::config::Secret> {
    if let Some(token) = &config.admin.token {
        return Ok(token.clone());
    }
    let path = Store::dir(&config.data_path).join(auth::TOKEN_FILE);
    let (token, made) = auth::load_or_make(&path)?;
    if made {
        warn!(path = %path.display(), "no [admin] token configured: made one (0600); the admin routes need it as `Authorization: Bearer …`");
    } else {
        info!(path = %path.display(), "admin token read (none configured)");
    }
    Ok(token)
}

/// Runs the daemon until a signal asks it to stop.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let config = Arc::new(config);
    // Fails when lan_iface does not exist: never a fallback to other interfaces.
    let (watcher, lan_addr, lan_state) = LanWatcher::start(&config).await?;
    let store = Store::open(&config.data_path)?;
    let admin_token = admin_token(&config)?;
    // Strict templating is checked at start-up: a file that does not parse stops us, a
    // seed that does not render for a host is logged (that host's requests get 500).
    let (live, publisher) = live::start(&config.data_path)?;
    check(&live.now());
    let holders = match config.mode {
        Mode::Direct => config.dhcp.pool_addresses(),
        Mode::Proxy => 0,
    };
    let clients = Arc::new(Clients::open(
        store.clone(),
        config.clients.clone(),
        config.dhcp.lease_time,
        holders,
    )?);
    let hosts = Arc::new(Hosts::open(store.clone())?);
    hosts.sync_inventory(&live.now().inventory)?;
    // Keys and known_hosts of hosts that are gone (deleted or dropped from the file
    // while we were down, or a crash between a record and its files) go now.
    hosts::ssh::prune(&config.data_path, &hosts.registered()).await;
    let bmc = hosts::bmc_tls::BmcSettings {
        credentials_dir: config.admin.credentials_dir.clone(),
        ca_file: config.admin.bmc_ca_file.clone(),
    };
    hosts::redfish::warn_untrusted(&live.now().inventory, &bmc);
    // Inventory and API hosts are never forgotten to make room (nor leaseholders).
    clients.keep_with(Box::new(hosts.registered()));
    let xdp = attach_xdp(&config)?.map(Arc::new);
    let dhcp_stats = Arc::new(dhcp::Stats::default());
    let leases = LeaseTable::open(&config, &store, &dhcp_stats);
    let tftp_stats = Arc::new(tftp::Stats::default());
    let neighbours = Neighbours::Kernel {
        iface: config.lan_iface.clone(),
    };
    let identity = Identity::new(
        live.clone(),
        leases.clone(),
        clients.clone(),
        neighbours.clone(),
        config
            .dhcp
            .relay_ranges
            .iter()
            .map(|r| r.subnet)
            .collect::<Vec<_>>(),
    );
    let www = config.data_path.join("www");
    let mounts: Arc<[(String, std::path::PathBuf)]> = config.http.mounts.clone().into();
    let local_size: seeds::LocalSize = {
        let (www, mounts) = (www.clone(), mounts.clone());
        Arc::new(move |path: &str| http::local_size(&www, &mounts, path))
    };
    let seeds = Seeds::new(
        live.clone(),
        hosts.clone(),
        clients.clone(),
        &config.data_path,
        Some(local_size),
    );

    let token = CancellationToken::new();
    tokio::spawn(cancel_on_signal(token.clone()));
    info!(
        iface = %config.lan_iface,
        mode = ?config.mode,
        xdp = xdp.is_some(),
        "gb10-provision starting"
    );
    let mut services = Services::new(token.clone());
    services.spawn(move |token| async move {
        watcher.run(token).await;
        Ok(())
    });
    services.spawn({
        let dhcp = dhcp::Dhcp {
            config: config.clone(),
            live: live.clone(),
            leases: leases.clone(),
            store: store.clone(),
            events: clients.clone(),
            stats: dhcp_stats.clone(),
            lan_addr: lan_addr.clone(),
            neighbours,
            local_disk: seeds.local_disk(),
        };
        move |token| async move { dhcp::run(dhcp, token).await }
    });
    services.spawn({
        let tftp = Tftp {
            config: config.tftp.clone(),
            root: config.data_path.join(tftp::ROOT_DIR),
            lan_iface: config.lan_iface.clone(),
            lan_addr: lan_addr.clone(),
            seeds: seeds.clone(),
            http_port: config.http_port,
            identity: identity.clone(),
            events: clients.clone(),
            stats: tftp_stats.clone(),
            xdp: xdp.clone(),
        };
        move |token| async move { tftp::run(tftp, token).await }
    });
    let admin = Admin {
        hosts: hosts.clone(),
        clients: clients.clone(),
        leases: leases.clone(),
        counters: Arc::new(hosts::counters::XdpCounters::new(xdp.clone())),
        live: live.clone(),
        token: Some(admin_token.clone()),
        data_path: config.data_path.clone(),
        bmc: bmc.clone(),
    };
    let health = Health {
        lan_iface: config.lan_iface.clone(),
        mode: config.mode,
        lan_state,
        metrics: Arc::new(metrics::Sources {
            xdp: xdp.clone(),
            mode: config.mode,
            tftp: tftp_stats,
            clients: clients.clone(),
            hosts: hosts.clone(),
            dhcp: dhcp_stats.clone(),
            leases: leases.clone(),
        }),
    };
    let lan_router = http::router(http::Routes {
        files: Files {
            www,
            mounts,
            identity: identity.clone(),
            events: clients.clone(),
            live: live.clone(),
        },
        seeds: SeedRoutes {
            seeds,
            identity: identity.clone(),
            events: clients.clone(),
            owner_check: config.http.seed_owner_check,
            http_port: config.http_port,
            lan_addr: lan_addr.clone(),
            fallback_ip: config.lan_ip.addr(),
            live: live.clone(),
        },
        beats: http::Beats {
            clients: clients.clone(),
            hosts: hosts.clone(),
            identity: identity.clone(),
            owner_check: config.http.seed_owner_check,
        },
        explain: Explain {
            config: config.clone(),
            live: live.clone(),
            lan_addr: lan_addr.clone(),
            dhcp: dhcp_stats,
            leases,
        },
        health: health.clone(),
        // Without a separate admin address, the hosts API and dashboard live under /admin.
        admin: config.admin.listen.is_none().then(|| admin.clone()),
        token: Some(admin_token),
    });
    services.spawn({
        let (port, limits) = (config.http_port, config.http.limits);
        let lan_addr = lan_addr.clone();
        move |token| async move { http::run(lan_router, port, limits, lan_addr, token).await }
    });
    services.spawn({
        let (port, limits) = (config.health_port, config.http.limits);
        move |token| async move { http::run_health(port, health, limits, token).await }
    });
    if let Some(listen) = config.admin.listen {
        let (app, limits) = (hosts::api::routes(admin.clone()), config.http.limits);
        services.spawn(move |token| async move {
            http::run_fixed("admin", listen, app, limits, token).await
        });
    }
    if let Some(xdp) = &xdp {
        let guard = Guard {
            xdp: xdp.clone(),
            config: config.guard.clone(),
            lan_iface: config.lan_iface.clone(),
            mode: config.mode,
            live: live.clone(),
        };
        services.spawn(move |token| async move { guard::run(guard, token).await });
    }
    services.spawn({
        let (hosts, clients, events, live) = (
            hosts.clone(),
            clients.clone(),
            clients.subscribe(),
            live.clone(),
        );
        let joiner = Joiner {
            hosts: hosts.clone(),
            identity,
            live: live.clone(),
            data_path: config.data_path.clone(),
        };
        move |token| async move { hosts::run(hosts, clients, events, live, joiner, bmc, token).await }
    });
    services.spawn({
        let clients = clients.clone();
        move |token| async move {
            clients::flush_loop(clients, token).await;
            Ok(())
        }
    });
    services.spawn(move |token| async move {
        publisher.run(token, check).await;
        Ok(())
    });
    let result = services.join().await;
    // The admin routes' counters reader holds the XDP program too.
    drop(admin);
    drop(clients);
    drop(hosts);
    match xdp.map(Arc::try_unwrap) {
        Some(Ok(xdp)) => {
            let iface = xdp.iface().to_owned();
            drop(xdp);
            info!(%iface, "XDP program detached");
        }
        Some(Err(_)) => warn!("a task still holds the XDP program; it detaches at exit"),
        None => {}
    }
    result?;
    info!("stopped");
    Ok(())
}

/// What a reload (and the start) checks: every seed rendered for every host, failures
/// logged.
fn check(snapshot: &live::Snapshot) {
    seeds::check_logged(&snapshot.inventory, &snapshot.templates);
}

/// The running services: the first to fail takes the daemon down; the others stop with
/// it, through the one cancellation token.
struct Services {
    tasks: JoinSet<anyhow::Result<()>>,
    token: CancellationToken,
}

impl Services {
    fn new(token: CancellationToken) -> Self {
        Self {
            tasks: JoinSet::new(),
            token,
        }
    }

    fn spawn<F, Fut>(&mut self, service: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.tasks.spawn(service(self.token.clone()));
    }

    async fn join(mut self) -> anyhow::Result<()> {
        let mut result = Ok(());
        while let Some(joined) = self.tasks.join_next().await {
            let outcome = joined.context("a service task panicked").and_then(|r| r);
            if let Err(err) = outcome {
                if result.is_ok() {
                    result = Err(err);
                }
                self.token.cancel();
            }
        }
        result
    }
}

fn attach_xdp(config: &Config) -> anyhow::Result<Option<LanXdp>> {
    let xdp = attach_lan_program(config)?;
    // Loading parsed the kernel's BTF into about 16 MiB of small allocations, all freed
    // now; glibc keeps such memory (other allocations sit above it) unless asked.
    release_freed_memory();
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

/// Returns the heap's free pages to the kernel (glibc `malloc_trim`): freed memory below
/// live allocations otherwise stays in the process's RSS.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks glibc's own heaps; no pointer is passed.
    unsafe {
        libc::malloc_trim(0);
    }
}
