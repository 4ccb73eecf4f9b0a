//! Who a LAN client is: the MAC asking from an address, the owner of a host's seeds, and
//! the address a host is reached at. One place, so HTTP, TFTP and the join step agree.
use std::{net::Ipv4Addr, sync::Arc};

use crate::{clients::Clients, live::Live, mac::Mac};

/// Answers identity questions from the live inventory and the client records.
#[derive(Clone)]
pub struct Identity {
    live: Live,
    clients: Arc<Clients>,
}

impl Identity {
    pub fn new(live: Live, clients: Arc<Clients>) -> Self {
        Self { live, clients }
    }

    /// Who is asking from `ip`: the inventory host with that fixed address, else the
    /// client holding its lease.
    pub fn who(&self, ip: Ipv4Addr) -> Option<Mac> {
        self.live
            .now()
            .inventory
            .host_by_ip(ip)
            .map(|h| h.mac)
            .or_else(|| self.clients.mac_by_lease(ip))
    }

    /// [`Self::who`], else the kernel's neighbour entry for `ip` (a client that has
    /// just talked to us, e.g. over TFTP in proxy mode where we lease nothing).
    pub fn who_or_neighbour(&self, ip: Ipv4Addr) -> Option<Mac> {
        self.who(ip).or_else(|| {
            let table = std::fs::read_to_string("/proc/net/arp").ok()?;
            mac_from_arp(&table, ip)
        })
    }

    /// Whether `peer` may fetch `mac`'s seeds: it is the host's fixed IP or its lease.
    pub fn owns(&self, mac: Mac, peer: Option<Ipv4Addr>) -> bool {
        let Some(peer) = peer else { return false };
        let fixed = self.live.now().inventory.host(mac).and_then(|h| h.ip);
        let leased = self.clients.get(mac).and_then(|r| r.lease_ip);
        fixed == Some(peer) || leased == Some(peer)
    }

    /// Where `mac` is reached: its fixed IP, its lease, or what its heartbeat said.
    pub fn address(&self, mac: Mac) -> Option<Ipv4Addr> {
        let fixed = self.live.now().inventory.host(mac).and_then(|h| h.ip);
        let client = self.clients.get(mac);
        fixed
            .or_else(|| client.as_ref().and_then(|c| c.lease_ip))
            .or_else(|| client.and_then(|c| c.reported_ip))
    }
}

/// The MAC of `ip` in a `/proc/net/arp` table, when the entry is complete.
pub fn mac_from_arp(table: &str, ip: Ipv4Addr) -> Option<Mac> {
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (addr, flags, mac) = (cols.first()?, cols.get(2)?, cols.get(3)?);
        // Flags 0x0 = incomplete: the MAC column is all zeros then.
        (addr.parse::<Ipv4Addr>().ok()? == ip && *flags != "0x0")
            .then(|| mac.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{clients::ClientEvent, inventory::Inventory, live::Snapshot};

    fn identity(inventory: &str) -> (Identity, Arc<Clients>) {
        let inv = Inventory::parse(std::path::Path::new("inventory.toml"), inventory).unwrap();
        let clients = Arc::new(Clients::in_memory());
        let live = Live::fixed(Snapshot::builtin(inv));
        (Identity::new(live, clients.clone()), clients)
    }

    #[test]
    fn owner_is_the_fixed_ip_or_the_lease() {
        let (id, clients) = identity(
            "[[hosts]]\nmac = \"02:00:00:00:00:01\"\nip = \"198.18.0.10\"\n\
             [[hosts]]\nmac = \"02:00:00:00:00:02\"\n",
        );
        let (a, b) = (
            "02:00:00:00:00:01".parse().unwrap(),
            "02:00:00:00:00:02".parse().unwrap(),
        );
        let ip = |last| Some(Ipv4Addr::new(198, 18, 0, last));
        assert!(id.owns(a, ip(10)));
        assert!(!id.owns(a, ip(11)));
        assert!(!id.owns(b, ip(11)));
        assert!(!id.owns(b, None));
        clients.record(
            b,
            ClientEvent::Leased {
                ip: Ipv4Addr::new(198, 18, 0, 11),
            },
        );
        assert!(id.owns(b, ip(11)));
        assert!(!id.owns(a, ip(11)));
        assert_eq!(id.who(Ipv4Addr::new(198, 18, 0, 10)), Some(a));
        assert_eq!(id.who(Ipv4Addr::new(198, 18, 0, 11)), Some(b));
        assert_eq!(id.address(b), ip(11));
    }

    #[test]
    fn arp_lookup() {
        let table = "IP address       HW type     Flags       HW address            Mask     Device\n\
            198.18.0.2       0x1         0x2         02:aa:bb:cc:dd:ee     *        gs1\n\
            198.18.0.3       0x1         0x0         00:00:00:00:00:00     *        gs1\n";
        assert_eq!(
            mac_from_arp(table, "198.18.0.2".parse().unwrap()),
            Some("02:aa:bb:cc:dd:ee".parse().unwrap())
        );
        assert_eq!(mac_from_arp(table, "198.18.0.3".parse().unwrap()), None);
        assert_eq!(mac_from_arp(table, "198.18.0.4".parse().unwrap()), None);
    }
}
