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
    config::{GuardConfig, GuardMode, Mode},
    live::Live,
    mac::Mac,
    netlink,
    xdp::LanXdp,
};

/// What the guard's userspace side uses.
pub struct Guard {
    pub xdp: Arc<LanXdp>,
    pub config: GuardConfig,
    /// Never guarded: the provisioning LAN itself.
    pub lan_iface: String,
    /// Whether a foreign DHCP server is an alarm (direct) or the site's (proxy).
    pub mode: Mode,
    /// Inventory hosts get the known-host allowance.
    pub live: Live,
}

/// Runs until `token` fires.
pub async fn run(mut guard: Guard, token: CancellationToken) -> anyhow::Result<()> {
    let (handle, mut events) = netlink::subscribe(&[MulticastGroup::Link])?;
    let mut failed = HashSet::new();
    let mut servers = HashSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut since_links = Duration::MAX;
    guard.set_allowances(&guard.live.now().inventory.hosts);
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
            snapshot = guard.live.changed() => guard.set_allowances(&snapshot.inventory.hosts),
            _ = tick.tick() => since_links = since_links.saturating_add(Duration::from_millis(250)),
        }
        if guard.xdp.guard_mode() != GuardMode::Off
            && (links_changed || since_links >= Duration::from_secs(5))
        {
            since_links = Duration::ZERO;
            match netlink::links(&handle).await {
                Ok(links) => guard.reconcile(&mut failed, &links),
                Err(err) => warn!(%err, "listing interfaces for the guard failed"),
            }
        }
        guard.report_servers(&mut servers);
    }
}

impl Guard {
    /// Attaches to the interfaces that must be guarded, detaches from those gone;
    /// `failed` holds (name, ifindex) pairs whose attach failed, so each is logged once.
    fn reconcile(&self, failed: &mut HashSet<(String, u32)>, links: &[(String, u32, bool)]) {
        let xdp = &self.xdp;
        let wanted: Vec<(&str, u32)> = links
            .iter()
            .filter(|(name, _, up)| match &self.config.interfaces {
                Some(list) => list.iter().any(|i| i == name),
                None => *up && name != "lo" && *name != self.lan_iface,
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
                    failed.remove(&(name.to_owned(), index));
                }
                Ok(false) => {}
                Err(err) => {
                    if failed.insert((name.to_owned(), index)) {
                        warn!(iface = %name, error = %crate::error_chain(&err), "guard not attached");
                    }
                }
            }
        }
    }

    /// Gives inventory hosts the known-host allowance.
    fn set_allowances(&self, hosts: &[crate::inventory::Host]) {
        let macs: Vec<[u8; 6]> = hosts.iter().map(|h| h.mac.0).collect();
        let (rate, burst) = self.config.known;
        self.xdp.set_allowances(&macs, Rate::new(rate, burst));
    }

    /// Logs each foreign DHCP server once (`logged` holds those already logged).
    fn report_servers(&self, logged: &mut HashSet<ServerKey>) {
        for (key, seen) in self.xdp.snapshot_servers() {
            if !logged.insert(key) {
                continue;
            }
            let (mac, ip) = (Mac(key.mac), std::net::Ipv4Addr::from(key.ip));
            match self.mode {
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
