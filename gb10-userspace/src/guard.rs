//! The guard's life in userspace: attaches it to every interface but the LAN (or the
//! configured ones) as interfaces come and go, puts the LAN program back on a recreated
//! LAN interface, gives inventory hosts their allowance, and reports each foreign DHCP
//! server once.
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
    xdp::{LanChange, LanXdp},
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
    let mut lan_failed = None;
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
        if links_changed || since_links >= Duration::from_secs(5) {
            since_links = Duration::ZERO;
            match netlink::links(&handle).await {
                Ok(links) => {
                    guard.follow_lan(&mut lan_failed, &links);
                    if guard.xdp.guard_mode() != GuardMode::Off {
                        guard.reconcile(&mut failed, &links);
                    }
                }
                Err(err) => warn!(%err, "listing interfaces for the guard failed"),
            }
        }
        guard.report_servers(&mut servers);
    }
}

impl Guard {
    /// Keeps the LAN program on the LAN interface as it is deleted and recreated;
    /// `failed` holds the index whose attach failed, so that it is logged once.
    fn follow_lan(&self, failed: &mut Option<u32>, links: &[netlink::Link]) {
        let index = links
            .iter()
            .find(|l| l.name == self.lan_iface)
            .map(|l| l.index);
        let iface = &self.lan_iface;
        match self.xdp.follow_lan(index) {
            Ok(LanChange::Same) => {}
            Ok(LanChange::Gone) => {
                warn!(%iface, "LAN interface gone, the XDP program with it (gb10_xdp_attached 0)");
            }
            Ok(LanChange::Attached) => {
                info!(%iface, "XDP program attached to the recreated LAN interface");
                *failed = None;
            }
            Err(err) => {
                if failed.replace(index.unwrap_or(0)) != index {
                    warn!(%iface, error = %crate::error_chain(&err), "XDP program not attached to the recreated LAN interface (gb10_xdp_attached 0)");
                }
            }
        }
    }

    /// Attaches to the interfaces that must be guarded, detaches from those gone;
    /// `failed` holds (name, ifindex) pairs whose attach failed, so each is logged once.
    fn reconcile(&self, failed: &mut HashSet<(String, u32)>, links: &[netlink::Link]) {
        let xdp = &self.xdp;
        let wanted = guarded_links(links, &self.lan_iface, self.config.interfaces.as_deref());
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

/// The interfaces the guard attaches to: the configured list, or every interface that is
/// up except loopback, the LAN and the LAN bridge's own ports (a VM's tap or a veth
/// enslaved to the LAN bridge carries the LAN itself: guarding it would drop the very
/// replies the LAN clients wait for).
fn guarded_links<'a>(
    links: &'a [netlink::Link],
    lan_iface: &str,
    configured: Option<&[String]>,
) -> Vec<(&'a str, u32)> {
    let lan_index = links.iter().find(|l| l.name == lan_iface).map(|l| l.index);
    links
        .iter()
        .filter(|l| match configured {
            Some(list) => list.contains(&l.name),
            None => {
                l.up && l.name != "lo"
                    && l.name != lan_iface
                    && (lan_index.is_none() || l.master != lan_index)
            }
        })
        .map(|l| (l.name.as_str(), l.index))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(w: Vec<(&str, u32)>) -> Vec<&str> {
        w.into_iter().map(|(n, _)| n).collect()
    }

    fn link(name: &str, index: u32, master: Option<u32>) -> netlink::Link {
        netlink::Link {
            name: name.into(),
            index,
            up: true,
            master,
        }
    }

    #[test]
    fn the_lan_bridge_ports_are_not_guarded() {
        let links = [
            link("lo", 1, None),
            link("eth0", 2, None),
            link("br-lan", 3, None),
            link("tap0", 4, Some(3)),
            link("veth-up", 5, Some(6)),
            link("br-up", 6, None),
        ];
        assert_eq!(
            names(guarded_links(&links, "br-lan", None)),
            ["eth0", "veth-up", "br-up"]
        );
        // A configured list is taken as it is, ports included.
        let list = ["tap0".to_owned()];
        assert_eq!(
            names(guarded_links(&links, "br-lan", Some(&list))),
            ["tap0"]
        );
        // A LAN that is not a bridge: nothing is anyone's port of it.
        assert_eq!(names(guarded_links(&links, "eth0", None)).len(), 4);
    }
}
