//! The guard's life in userspace: attaches it to every interface but the LAN (or the
//! configured ones) as interfaces come and go, gives inventory hosts their allowance,
//! and reports each foreign DHCP server once.
use std::{collections::HashSet, sync::Arc, time::Duration};

use futures::StreamExt as _;
use gb10_common::{Rate, ServerKey};
use rtnetlink::MulticastGroup;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    config::{GuardMode, Mode},
    daemon::Shared,
    inventory::Inventory,
    netlink,
    xdp::{LanXdp, format_mac},
};

/// Runs until `token` fires. Without XDP there is nothing to do.
pub async fn run(shared: Arc<Shared>, token: CancellationToken) -> anyhow::Result<()> {
    let Some(xdp) = shared.xdp.as_ref() else {
        return Ok(());
    };
    let (handle, mut events) = netlink::subscribe(&[MulticastGroup::Link])?;
    let mut state = State::default();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut since_links = Duration::MAX;
    loop {
        let mut links_changed = false;
        tokio::select! {
            _ = token.cancelled() => return Ok(()),
            event = events.next() => {
                links_changed = event.is_some();
                if event.is_none() {
                    // Fall back to the periodic look below.
                    (_, events) = netlink::subscribe(&[MulticastGroup::Link])?;
                }
            }
            _ = tick.tick() => since_links = since_links.saturating_add(Duration::from_millis(250)),
        }
        if xdp.guard_mode() != GuardMode::Off
            && (links_changed || since_links >= Duration::from_secs(5))
        {
            since_links = Duration::ZERO;
            match netlink::links(&handle).await {
                Ok(links) => state.reconcile(&shared, xdp, &links),
                Err(err) => warn!(%err, "listing interfaces for the guard failed"),
            }
        }
        state.sync_allowances(&shared, xdp);
        state.report_servers(&shared, xdp);
    }
}

#[derive(Default)]
struct State {
    /// (name, ifindex) pairs whose attach failed, so each failure is logged once.
    failed: HashSet<(String, u32)>,
    inventory: Option<Arc<Inventory>>,
    servers: HashSet<ServerKey>,
}

impl State {
    fn reconcile(&mut self, shared: &Shared, xdp: &LanXdp, links: &[(String, u32, bool)]) {
        let config = &shared.config;
        let wanted: Vec<(&str, u32)> = links
            .iter()
            .filter(|(name, _, up)| match &config.guard.interfaces {
                Some(list) => list.iter().any(|i| i == name),
                None => *up && name != "lo" && *name != config.lan_iface,
            })
            .map(|(name, index, _)| (name.as_str(), *index))
            .collect();
        for (name, _) in xdp.guarded() {
            if !wanted.iter().any(|(n, _)| *n == name) && xdp.guard_detach(&name) {
                info!(iface = %name, "guard detached (interface gone or down)");
            }
        }
        for (name, index) in wanted {
            match xdp.guard_attach(name, index) {
                Ok(true) => {
                    info!(iface = %name, mode = ?xdp.guard_mode(), "guard attached: no provisioning traffic in or out here");
                    self.failed.remove(&(name.to_owned(), index));
                }
                Ok(false) => {}
                Err(err) => {
                    if self.failed.insert((name.to_owned(), index)) {
                        warn!(iface = %name, error = %crate::error_chain(&err), "guard not attached");
                    }
                }
            }
        }
    }

    fn sync_allowances(&mut self, shared: &Shared, xdp: &LanXdp) {
        let inventory = shared.inventory();
        if self
            .inventory
            .as_ref()
            .is_some_and(|i| Arc::ptr_eq(i, &inventory))
        {
            return;
        }
        let macs: Vec<[u8; 6]> = inventory.hosts.iter().map(|h| h.mac.0).collect();
        let (rate, burst) = shared.config.guard.known;
        xdp.set_allowances(&macs, Rate::new(rate, burst));
        self.inventory = Some(inventory);
    }

    fn report_servers(&mut self, shared: &Shared, xdp: &LanXdp) {
        for (key, seen) in xdp.snapshot_servers() {
            if !self.servers.insert(key) {
                continue;
            }
            let (mac, ip) = (format_mac(&key.mac), std::net::Ipv4Addr::from(key.ip));
            match shared.config.mode {
                Mode::Direct => warn!(
                    server_mac = %mac, server_ip = %ip, packets = seen.packets,
                    "rogue DHCP server on the provisioning LAN: another server is answering clients"
                ),
                Mode::Proxy => info!(
                    server_mac = %mac, server_ip = %ip,
                    "site DHCP server seen on the LAN (expected in proxy mode)"
                ),
            }
        }
    }
}
