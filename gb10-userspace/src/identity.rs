//! Who a LAN client is: the MAC asking from an address, the owner of a host's seeds, and
//! the address a host is reached at. One place, so HTTP, TFTP and the join step agree.
//!
//! An address belongs to whoever holds its live lease now (the lease table: released,
//! declined, expired and superseded leases hold nothing), else to the inventory host
//! with that fixed address. For the owner check the kernel's neighbour entry for an
//! address on the LAN must name that same MAC too: a client that forged another's
//! `chaddr` in DHCP still answers ARP with its own Ethernet address. Clients behind a
//! relay have no neighbour entry of ours (their router's stands in): the lease alone
//! decides for them. A client that forges its Ethernet address as well passes; that is
//! for switch port security (and, for the secrets of an install, handing them out once).
use std::{
    net::Ipv4Addr,
    sync::{Arc, Mutex},
};

use ipnet::Ipv4Net;

use crate::{clients::Clients, clock, dhcp::LeaseTable, live::Live, mac::Mac};

/// Answers identity questions from the live inventory, the lease table, the kernel's
/// neighbour table and (for where a host is reached) the client records.
#[derive(Clone)]
pub struct Identity {
    live: Live,
    leases: LeaseTable,
    clients: Arc<Clients>,
    neighbours: Neighbours,
    /// Subnets served through relays: their clients are not on the LAN's link.
    relayed: Arc<[Ipv4Net]>,
}

/// Where the neighbour (ARP) table is read.
#[derive(Clone, Debug)]
pub enum Neighbours {
    /// The kernel's (`/proc/net/arp`), entries on the LAN interface.
    Kernel { iface: String },
    /// A table in `/proc/net/arp`'s format, for tests.
    Fixed(Arc<Mutex<String>>),
}

impl Neighbours {
    /// The MAC of the complete neighbour entry for `ip`, if there is one.
    pub fn lookup(&self, ip: Ipv4Addr) -> Option<Mac> {
        match self {
            Self::Kernel { iface } => {
                let table = std::fs::read_to_string("/proc/net/arp").ok()?;
                mac_from_arp(&table, ip, Some(iface))
            }
            Self::Fixed(table) => {
                let table = table.lock().unwrap_or_else(|p| p.into_inner());
                mac_from_arp(&table, ip, None)
            }
        }
    }
}

/// Why an address does not own a MAC's seeds. Logged, never sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotOwner {
    #[error("the requester's address is unknown")]
    NoAddress,
    #[error("the address is not the host's (its holder: {holder:?})")]
    NotHolder { holder: Option<Mac> },
    #[error("the address is the host's, but its neighbour entry names {seen:?}")]
    Neighbour { seen: Option<Mac> },
}

impl Identity {
    pub fn new(
        live: Live,
        leases: LeaseTable,
        clients: Arc<Clients>,
        neighbours: Neighbours,
        relayed: impl Into<Arc<[Ipv4Net]>>,
    ) -> Self {
        Self {
            live,
            leases,
            clients,
            neighbours,
            relayed: relayed.into(),
        }
    }

    /// Who holds `ip` now: its live lease's client, else the inventory host with that
    /// fixed address.
    fn holder(&self, ip: Ipv4Addr) -> Option<Mac> {
        self.leases
            .live(ip, clock::now_secs())
            .map(|l| l.mac)
            .or_else(|| self.live.now().inventory.host_by_ip(ip).map(|h| h.mac))
    }

    /// Whether `ip` is on the LAN's link (not behind a relay).
    fn on_link(&self, ip: Ipv4Addr) -> bool {
        !self.relayed.iter().any(|n| n.contains(&ip))
    }

    /// Who is asking from `ip`: its holder, unless the neighbour entry for it names
    /// another MAC (then nobody known).
    pub fn who(&self, ip: Ipv4Addr) -> Option<Mac> {
        let holder = self.holder(ip)?;
        if self.on_link(ip)
            && let Some(seen) = self.neighbours.lookup(ip)
            && seen != holder
        {
            return None;
        }
        Some(holder)
    }

    /// [`Self::who`], else the neighbour entry for `ip` (a client that has just talked
    /// to us, e.g. over TFTP in proxy mode where we lease nothing).
    pub fn who_or_neighbour(&self, ip: Ipv4Addr) -> Option<Mac> {
        self.who(ip).or_else(|| self.neighbours.lookup(ip))
    }

    /// Whether `peer` may fetch `mac`'s seeds: `mac` holds the address now (live lease,
    /// else fixed IP) and, on the LAN's link, the neighbour entry for it names `mac`.
    pub fn owns(&self, mac: Mac, peer: Option<Ipv4Addr>) -> Result<(), NotOwner> {
        let ip = peer.ok_or(NotOwner::NoAddress)?;
        let holder = self.holder(ip);
        if holder != Some(mac) {
            return Err(NotOwner::NotHolder { holder });
        }
        if self.on_link(ip) {
            let seen = self.neighbours.lookup(ip);
            if seen != Some(mac) {
                return Err(NotOwner::Neighbour { seen });
            }
        }
        Ok(())
    }

    /// Whether a request from `peer` speaks for `mac`, so its anonymous heartbeats may
    /// move `mac`'s client state: `peer`'s holder is `mac` (its neighbour entry agreeing
    /// on the LAN's link), or nobody holds `peer` and its neighbour entry names `mac` (a
    /// proxy-DHCP or static address: its Ethernet address is `mac`).
    pub fn speaks_for(&self, mac: Mac, peer: Option<Ipv4Addr>) -> bool {
        peer.and_then(|ip| self.who_or_neighbour(ip)) == Some(mac)
    }

    /// Where `mac` is reached: its fixed IP, its live lease, or what its heartbeat said.
    pub fn address(&self, mac: Mac) -> Option<Ipv4Addr> {
        let fixed = self.live.now().inventory.host(mac).and_then(|h| h.ip);
        fixed
            .or_else(|| self.leases.live_of(mac, clock::now_secs()))
            .or_else(|| self.clients.get(mac).and_then(|c| c.reported_ip))
    }
}

/// The MAC of `ip` in a `/proc/net/arp` table (on `iface` when given), when the entry
/// is complete.
pub fn mac_from_arp(table: &str, ip: Ipv4Addr, iface: Option<&str>) -> Option<Mac> {
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (addr, flags, mac) = (cols.first()?, cols.get(2)?, cols.get(3)?);
        let on_iface = iface.is_none_or(|i| cols.get(5) == Some(&i));
        // Flags 0x0 = incomplete: the MAC column is all zeros then.
        (addr.parse::<Ipv4Addr>().ok()? == ip && *flags != "0x0" && on_iface)
            .then(|| mac.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::{Config, RawConfig},
        dhcp::{self, leases::ClientId},
        inventory::Inventory,
        live::Snapshot,
        store::Store,
    };

    const HEADER: &str =
        "IP address       HW type     Flags       HW address            Mask     Device\n";

    struct Fixture {
        id: Identity,
        leases: LeaseTable,
        arp: Arc<Mutex<String>>,
    }

    fn fixture(inventory: &str) -> Fixture {
        let inv = Inventory::parse(std::path::Path::new("inventory.toml"), inventory).unwrap();
        let raw = RawConfig::from_toml(
            "lan_iface = \"lo\"\nlan_ip = \"198.18.0.1/24\"\n[dhcp]\nrange = \"198.18.0.100-198.18.0.150\"\n\
             relay_ranges = [\"198.19.1.0/24=198.19.1.100-198.19.1.150\"]\n",
        )
        .unwrap();
        let config = Config::try_from(raw).unwrap();
        let leases = LeaseTable::open(&config, &Store::in_memory(), &dhcp::Stats::default());
        let arp = Arc::new(Mutex::new(HEADER.to_owned()));
        let id = Identity::new(
            Live::fixed(Snapshot::builtin(inv)),
            leases.clone(),
            Arc::new(Clients::in_memory()),
            Neighbours::Fixed(arp.clone()),
            vec!["198.19.1.0/24".parse().unwrap()],
        );
        Fixture { id, leases, arp }
    }

    fn neighbour(f: &Fixture, ip: &str, mac: &str) {
        f.arp.lock().unwrap().push_str(&format!(
            "{ip:<16} 0x1         0x2         {mac}     *        gs1\n"
        ));
    }

    fn lease(f: &Fixture, ip: &str, mac: Mac, secs: u64) {
        let now = clock::now_secs();
        let id = ClientId([&[1u8][..], &mac.0].concat());
        f.leases
            .lock()
            .commit(ip.parse().unwrap(), &id, mac, None, now, secs);
    }

    const A: &str = "02:00:00:00:00:01";
    const B: &str = "02:00:00:00:00:02";
    fn mac(s: &str) -> Mac {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> Option<Ipv4Addr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn owner_is_the_live_holder_with_its_neighbour_entry() {
        let f = fixture(&format!(
            "[[hosts]]\nmac = \"{A}\"\nip = \"198.18.0.10\"\n[[hosts]]\nmac = \"{B}\"\n"
        ));
        // The fixed IP, with no neighbour entry yet: not proven.
        assert_eq!(
            f.id.owns(mac(A), ip("198.18.0.10")),
            Err(NotOwner::Neighbour { seen: None })
        );
        neighbour(&f, "198.18.0.10", A);
        assert_eq!(f.id.owns(mac(A), ip("198.18.0.10")), Ok(()));
        assert!(f.id.owns(mac(A), ip("198.18.0.11")).is_err());
        assert!(f.id.owns(mac(B), None).is_err());
        // B leases .11; its seed goes to .11 once ARP agrees.
        lease(&f, "198.18.0.11", mac(B), 3600);
        neighbour(&f, "198.18.0.11", B);
        assert_eq!(f.id.owns(mac(B), ip("198.18.0.11")), Ok(()));
        assert!(f.id.owns(mac(A), ip("198.18.0.11")).is_err());
        assert_eq!(f.id.who(ip("198.18.0.10").unwrap()), Some(mac(A)));
        assert_eq!(f.id.who(ip("198.18.0.11").unwrap()), Some(mac(B)));
        assert_eq!(f.id.address(mac(B)), ip("198.18.0.11"));
    }

    /// Whose heartbeats an address sends: its holder's (ARP agreeing), else, when nobody
    /// holds it, the MAC its neighbour entry names; never another MAC.
    #[test]
    fn an_address_speaks_for_its_holder_or_its_neighbour_only() {
        let f = fixture("");
        lease(&f, "198.18.0.11", mac(B), 3600);
        neighbour(&f, "198.18.0.11", B);
        assert!(f.id.speaks_for(mac(B), ip("198.18.0.11")));
        assert!(!f.id.speaks_for(mac(A), ip("198.18.0.11")));
        // A static address nobody leased (proxy DHCP gives ours none): its ARP entry.
        neighbour(&f, "198.18.0.20", A);
        assert!(f.id.speaks_for(mac(A), ip("198.18.0.20")));
        assert!(!f.id.speaks_for(mac(B), ip("198.18.0.20")));
        // Unknown address, no address.
        assert!(!f.id.speaks_for(mac(A), ip("198.18.0.30")));
        assert!(!f.id.speaks_for(mac(A), None));
        // A takes B's leased address (its own Ethernet address in ARP): it speaks for
        // itself there, not for B.
        lease(&f, "198.18.0.12", mac(B), 3600);
        neighbour(&f, "198.18.0.12", A);
        assert!(!f.id.speaks_for(mac(B), ip("198.18.0.12")));
        assert!(f.id.speaks_for(mac(A), ip("198.18.0.12")));
    }

    /// A lease taken in B's name by a client whose Ethernet address is C: the neighbour
    /// entry names C, so neither the seed nor the attribution go to B.
    #[test]
    fn a_forged_chaddr_lease_is_not_the_owner() {
        let f = fixture("");
        lease(&f, "198.18.0.12", mac(B), 3600);
        neighbour(&f, "198.18.0.12", "02:00:00:00:00:0c");
        assert_eq!(
            f.id.owns(mac(B), ip("198.18.0.12")),
            Err(NotOwner::Neighbour {
                seen: Some(mac("02:00:00:00:00:0c"))
            })
        );
        assert_eq!(f.id.who(ip("198.18.0.12").unwrap()), None);
        assert_eq!(
            f.id.who_or_neighbour(ip("198.18.0.12").unwrap()),
            Some(mac("02:00:00:00:00:0c"))
        );
    }

    /// Expired and released leases hold nothing: whoever gets the address next is not
    /// the old holder.
    #[test]
    fn stale_leases_hold_nothing() {
        let f = fixture("");
        lease(&f, "198.18.0.13", mac(B), 0);
        neighbour(&f, "198.18.0.13", B);
        assert_eq!(
            f.id.owns(mac(B), ip("198.18.0.13")),
            Err(NotOwner::NotHolder { holder: None })
        );
        assert_eq!(f.id.address(mac(B)), None);
    }

    /// Behind a relay there is no neighbour entry of ours: the lease decides.
    #[test]
    fn relayed_clients_own_by_their_lease() {
        let f = fixture("");
        lease(&f, "198.19.1.100", mac(B), 3600);
        assert_eq!(f.id.owns(mac(B), ip("198.19.1.100")), Ok(()));
        assert!(f.id.owns(mac(A), ip("198.19.1.100")).is_err());
    }

    #[test]
    fn arp_lookup() {
        let table = format!(
            "{HEADER}198.18.0.2       0x1         0x2         02:aa:bb:cc:dd:ee     *        gs1\n\
            198.18.0.3       0x1         0x0         00:00:00:00:00:00     *        gs1\n\
            198.18.0.5       0x1         0x2         02:aa:bb:cc:dd:05     *        eth9\n"
        );
        let at = |s: &str| s.parse().unwrap();
        assert_eq!(
            mac_from_arp(&table, at("198.18.0.2"), Some("gs1")),
            Some(mac("02:aa:bb:cc:dd:ee"))
        );
        assert_eq!(mac_from_arp(&table, at("198.18.0.3"), None), None);
        assert_eq!(mac_from_arp(&table, at("198.18.0.4"), None), None);
        assert_eq!(mac_from_arp(&table, at("198.18.0.5"), Some("gs1")), None);
    }
}
