//! The lease table: pools and explicit lease states (offered → leased → released /
//! expired; declined on probation). Pure and in memory; [`super::store`] makes it
//! durable.
use std::{
    collections::{BTreeSet, HashMap},
    net::Ipv4Addr,
};

use ipnet::Ipv4Net;
use serde::Serialize;

use crate::{bounded::Bounded, mac::Mac};

/// How long an offered address is held for the client that was offered it. EDK2
/// collects offers for ~4 s before it requests; a minute covers slow firmware.
pub const OFFER_HOLD_SECS: u64 = 60;
/// How long a declined address (in use by someone we don't know) stays out of the pool.
pub const DECLINE_PROBATION_SECS: u64 = 600;
/// A client checks its address for conflicts right after the ACK (RFC 2131 §4.4.1) and
/// declines then or never: a DECLINE later than this after the lease's last ACK is not
/// the holder's conflict check (a stranger replaying the holder's identity) and ends nothing.
pub const DECLINE_WINDOW_SECS: u64 = 60;
/// Offers taken back for a newcomer that are remembered, so their client can still
/// request them (see [`Leases::pick`]); the oldest are forgotten first. Under a flood
/// of made-up MACs at the guard's rate this covers seconds, far longer than any client
/// takes to answer its offer, and bounds what a flood can make us keep.
const YIELDED_MAX: usize = 4096;
/// Addresses a DISCOVER looks at, once the pool is taken, before it settles for the
/// oldest offer among them (see [`Leases::pick`]).
const STEAL_SCAN: u32 = 256;

/// Who holds a lease: option 61 when the client sent one, else htype + chaddr (RFC 2131
/// §4.2).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ClientId(pub Vec<u8>);

/// Where a lease is in its life. "Expired" is a leased state whose time has passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseState {
    /// Offered, held for [`OFFER_HOLD_SECS`]; in memory only.
    Offered,
    /// ACKed; on disk before the ACK left.
    Leased,
    /// The client said the address is in use by another host; on probation.
    Declined,
    /// Given back by the client; free, but remembered for it.
    Released,
}

impl LeaseState {
    /// The name on `/metrics` and in JSON.
    pub fn label(self) -> &'static str {
        match self {
            Self::Offered => "offered",
            Self::Leased => "leased",
            Self::Declined => "declined",
            Self::Released => "released",
        }
    }
}

/// One address and who holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Lease {
    pub ip: Ipv4Addr,
    pub client: ClientId,
    pub mac: Mac,
    pub state: LeaseState,
    /// Unix seconds when the state ends (offer hold, lease end, probation end).
    pub expires: u64,
    pub hostname: Option<String>,
}

impl Lease {
    /// Whether the address is taken at `now` (so not for anyone else).
    pub fn active(&self, now: u64) -> bool {
        match self.state {
            LeaseState::Released => false,
            LeaseState::Offered | LeaseState::Leased | LeaseState::Declined => self.expires > now,
        }
    }

    /// Whether the address is leased (ACKed, not released, declined or expired) at `now`:
    /// its holder is who the address is.
    pub fn live(&self, now: u64) -> bool {
        self.state == LeaseState::Leased && self.expires > now
    }
}

/// An address pool on one subnet.
#[derive(Clone, Debug)]
pub struct Pool {
    pub subnet: Ipv4Net,
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
    pub router: Option<Ipv4Addr>,
    /// Where the next search for a free address starts, so allocation is amortised O(1)
    /// and recently released addresses are handed out last.
    cursor: u32,
}

impl Pool {
    pub fn new(
        subnet: Ipv4Net,
        (start, end): (Ipv4Addr, Ipv4Addr),
        router: Option<Ipv4Addr>,
    ) -> Self {
        Self {
            subnet: subnet.trunc(),
            start,
            end,
            router,
            cursor: u32::from(start),
        }
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (self.start..=self.end).contains(&ip)
    }
}

/// Every pool and every lease.
#[derive(Debug)]
pub struct Leases {
    pools: Vec<Pool>,
    by_ip: HashMap<Ipv4Addr, Lease>,
    by_client: HashMap<ClientId, Ipv4Addr>,
    /// The address each client has leased (not merely offered): leasing it another one
    /// releases this one, so a client that moved does not stay the holder of its old
    /// address until that lease would have run out.
    leased: HashMap<ClientId, Ipv4Addr>,
    /// Addresses with a lease (any state) per MAC, for the per-MAC bound.
    by_mac: HashMap<Mac, BTreeSet<Ipv4Addr>>,
    /// Offers taken back from their client for a newcomer, with when the offer would
    /// have run out: the client may still request it while nobody has leased it. At
    /// most [`YIELDED_MAX`], the least recent going first.
    yielded: Bounded<ClientId, (Ipv4Addr, u64)>,
    /// Addresses [`Self::pick`] looked at, for the tests' bound on its cost.
    #[cfg(test)]
    probes: u64,
}

impl Leases {
    /// Pools: the LAN's first, then relayed subnets.
    pub fn new(pools: Vec<Pool>) -> Self {
        Self {
            pools,
            by_ip: HashMap::new(),
            by_client: HashMap::new(),
            leased: HashMap::new(),
            by_mac: HashMap::new(),
            yielded: Bounded::new(YIELDED_MAX),
            #[cfg(test)]
            probes: 0,
        }
    }

    pub fn pools(&self) -> &[Pool] {
        &self.pools
    }

    /// The pool index serving a request relayed by `giaddr` (0.0.0.0: the LAN's). A
    /// non-zero giaddr is looked up among the relay pools only: a LAN client that writes
    /// a LAN address there (or a relay on the LAN itself) gets nothing, rather than a LAN
    /// lease answered to an address it chose.
    pub fn pool_for(&self, giaddr: Ipv4Addr) -> Option<usize> {
        if giaddr.is_unspecified() {
            return Some(0);
        }
        self.pools
            .iter()
            .skip(1)
            .position(|p| p.subnet.contains(&giaddr))
            .map(|i| i + 1)
    }

    /// Restores a lease read from the store. Restore oldest first (by `expires`): a
    /// client's newer lease then releases its older one, as [`Leases::commit`] did (that
    /// release is not written back; the store keeps the older record until it is reused).
    pub fn restore(&mut self, lease: Lease) {
        if lease.state == LeaseState::Leased {
            // When the older one was given up is not known: it keeps its end time.
            self.release_other(&lease.client, lease.ip, u64::MAX);
        }
        self.insert(lease);
    }

    pub fn get(&self, ip: Ipv4Addr) -> Option<&Lease> {
        self.by_ip.get(&ip)
    }

    /// The lease on `ip` when it is live at `now` (see [`Lease::live`]).
    pub fn live(&self, ip: Ipv4Addr, now: u64) -> Option<&Lease> {
        self.by_ip.get(&ip).filter(|l| l.live(now))
    }

    /// The lease (any state) the client holds.
    pub fn of_client(&self, client: &ClientId) -> Option<&Lease> {
        self.by_client.get(client).and_then(|ip| self.by_ip.get(ip))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Lease> {
        self.by_ip.values()
    }

    /// Whether `client` may have `ip` at `now`.
    pub fn free_for(&self, ip: Ipv4Addr, client: &ClientId, now: u64) -> bool {
        self.free_with(ip, client, self.yielded.get(client).copied(), now)
    }

    /// [`Self::free_for`], with `client`'s entry in `yielded` looked up by the caller
    /// (once for a whole scan of the pool).
    fn free_with(
        &self,
        ip: Ipv4Addr,
        client: &ClientId,
        claim: Option<(Ipv4Addr, u64)>,
        now: u64,
    ) -> bool {
        match self.by_ip.get(&ip) {
            None => true,
            Some(l) if l.state == LeaseState::Declined => !l.active(now),
            Some(l) if l.client == *client || !l.active(now) => true,
            // Offered to another after it was taken back from this client: the first
            // REQUEST wins an offer.
            Some(l) => {
                l.state == LeaseState::Offered
                    && claim.is_some_and(|(y, until)| y == ip && until > now)
            }
        }
    }

    /// An address for `client` in pool `pool`: its current one, else `requested` when
    /// free, else the next free one. `reserved` addresses (fixed hosts) are skipped.
    pub fn pick(
        &mut self,
        pool: usize,
        client: &ClientId,
        requested: Option<Ipv4Addr>,
        now: u64,
        reserved: impl Fn(Ipv4Addr) -> bool,
    ) -> Option<Ipv4Addr> {
        let p = self.pools.get(pool)?;
        let claim = self.yielded.get(client).copied();
        let usable = |ip: Ipv4Addr| {
            p.contains(ip) && !reserved(ip) && self.free_with(ip, client, claim, now)
        };
        if let Some(ip) = self.by_client.get(client).copied()
            && usable(ip)
            && self
                .by_ip
                .get(&ip)
                .is_some_and(|l| l.state != LeaseState::Declined)
        {
            return Some(ip);
        }
        if let Some(ip) = requested
            && usable(ip)
        {
            return Some(ip);
        }
        let (start, end) = (u32::from(p.start), u32::from(p.end));
        let size = end - start + 1;
        let mut candidate = p.cursor.clamp(start, end);
        // The offer closest to running out among those seen, should every address be
        // taken.
        let mut oldest_offer: Option<(u64, Ipv4Addr)> = None;
        let mut scanned = 0;
        while scanned < size {
            if scanned >= STEAL_SCAN && oldest_offer.is_some() {
                // Every address seen so far is taken and some are only on offer: a
                // flood of made-up MACs keeps a pool on offer, and scanning all of a
                // /16 for each of its DISCOVERs would cost milliseconds apiece. The next
                // scan starts where this one stopped, so steals spread over the pool.
                break;
            }
            let ip = Ipv4Addr::from(candidate);
            let next = if candidate == end {
                start
            } else {
                candidate + 1
            };
            if usable(ip) {
                self.pools[pool].cursor = next;
                #[cfg(test)]
                {
                    self.probes += u64::from(scanned) + 1;
                }
                return Some(ip);
            }
            if let Some(l) = self.by_ip.get(&ip)
                && l.state == LeaseState::Offered
                && !reserved(ip)
                && oldest_offer.is_none_or(|(e, _)| l.expires < e)
            {
                oldest_offer = Some((l.expires, ip));
            }
            candidate = next;
            scanned += 1;
        }
        self.pools[pool].cursor = candidate;
        #[cfg(test)]
        {
            self.probes += u64::from(scanned);
        }
        // Pool exhausted: an offer is a promise, not a lease. Clients that DISCOVER and
        // never REQUEST (a port rotating made-up MACs) would otherwise keep every address
        // on offer; the oldest offer goes to the newcomer, while the flood's own offers
        // churn among themselves. The client it was taken from keeps its claim (see
        // `yielded`): a flood fast enough to churn through the pool before a real
        // client's REQUEST arrives would otherwise NAK every client, again and again.
        oldest_offer.map(|(_, ip)| ip)
    }

    /// Makes room for `client` (of `mac`) to get an address: while `mac` holds `max`
    /// addresses or more under other client identifiers, its least recent one ends
    /// (released, in memory; a restart restores a reclaimed lease until the next
    /// request of that MAC reclaims it again). What ended.
    pub fn bound_mac(&mut self, mac: Mac, client: &ClientId, max: usize, now: u64) -> Vec<Lease> {
        let mut ended = Vec::new();
        loop {
            let others: Vec<&Lease> = self
                .by_mac
                .get(&mac)
                .into_iter()
                .flatten()
                .filter_map(|ip| self.by_ip.get(ip))
                .filter(|l| l.client != *client && l.active(now) && l.state != LeaseState::Declined)
                .collect();
            if others.len() < max {
                return ended;
            }
            // Least recent: the one that runs out first.
            let Some(oldest) = others
                .iter()
                .min_by_key(|l| l.expires)
                .map(|l| (l.ip, l.client.clone()))
            else {
                return ended;
            };
            let (ip, holder) = oldest;
            match self.end(ip, &holder, LeaseState::Released, now) {
                Some(lease) => ended.push(lease),
                None => return ended,
            }
            self.by_client.remove(&holder);
        }
    }

    /// Holds `ip` for `client` as offered.
    pub fn offer(&mut self, ip: Ipv4Addr, client: &ClientId, mac: Mac, now: u64) -> Lease {
        let lease = Lease {
            ip,
            client: client.clone(),
            mac,
            state: LeaseState::Offered,
            expires: now + OFFER_HOLD_SECS,
            hostname: None,
        };
        // An offer never shortens a lease the client already holds on this address.
        match self.by_ip.get(&ip) {
            Some(l) if l.client == *client && l.state == LeaseState::Leased && l.active(now) => {
                l.clone()
            }
            _ => {
                self.insert(lease.clone());
                lease
            }
        }
    }

    /// Leases `ip` to `client` until `now + secs`.
    pub fn commit(
        &mut self,
        ip: Ipv4Addr,
        client: &ClientId,
        mac: Mac,
        hostname: Option<String>,
        now: u64,
        secs: u64,
    ) -> Lease {
        let lease = Lease {
            ip,
            client: client.clone(),
            mac,
            state: LeaseState::Leased,
            expires: now + secs,
            hostname,
        };
        self.release_other(client, ip, now);
        self.insert(lease.clone());
        lease
    }

    /// Ends `client`'s lease on an address other than `ip` (it is taking `ip`), and
    /// notes `ip` as the one it holds.
    fn release_other(&mut self, client: &ClientId, ip: Ipv4Addr, now: u64) {
        if let Some(old) = self.leased.insert(client.clone(), ip)
            && old != ip
            && let Some(l) = self.by_ip.get_mut(&old)
            && l.client == *client
            && l.state == LeaseState::Leased
        {
            l.state = LeaseState::Released;
            l.expires = l.expires.min(now);
        }
    }

    /// Moves the client's lease on `ip` to `state` (released or declined). `None` when
    /// the client holds no lease there.
    pub fn end(
        &mut self,
        ip: Ipv4Addr,
        client: &ClientId,
        state: LeaseState,
        now: u64,
    ) -> Option<Lease> {
        let lease = self.by_ip.get_mut(&ip).filter(|l| l.client == *client)?;
        if self.leased.get(client) == Some(&ip) {
            self.leased.remove(client);
        }
        lease.state = state;
        lease.expires = match state {
            LeaseState::Declined => now + DECLINE_PROBATION_SECS,
            _ => now,
        };
        let lease = lease.clone();
        if state == LeaseState::Declined {
            // The client must get another address next time.
            self.by_client.remove(client);
        }
        Some(lease)
    }

    /// Drops an offer the client did not take (it chose another server).
    pub fn withdraw_offer(&mut self, client: &ClientId) {
        if let Some(ip) = self.by_client.get(client).copied()
            && self
                .by_ip
                .get(&ip)
                .is_some_and(|l| l.state == LeaseState::Offered)
        {
            if let Some(old) = self.by_ip.remove(&ip) {
                self.unindex_mac(old.mac, ip);
            }
            self.by_client.remove(client);
        }
    }

    fn insert(&mut self, lease: Lease) {
        if let Some(old) = self.by_ip.get(&lease.ip)
            && old.client != lease.client
        {
            let (client, offered, until) = (
                old.client.clone(),
                old.state == LeaseState::Offered,
                old.expires,
            );
            if self.by_client.get(&client) == Some(&lease.ip) {
                self.by_client.remove(&client);
            }
            if offered && lease.state == LeaseState::Offered {
                // Any entry may make room; admitted always, so never handed back.
                let _ = self
                    .yielded
                    .insert(client, (lease.ip, until), |_, _| false, true);
            }
        }
        if let Some(old_ip) = self.by_client.get(&lease.client).copied()
            && old_ip != lease.ip
            && self
                .by_ip
                .get(&old_ip)
                .is_some_and(|l| l.state == LeaseState::Offered)
            && let Some(old) = self.by_ip.remove(&old_ip)
        {
            self.unindex_mac(old.mac, old_ip);
        }
        if lease.state != LeaseState::Declined {
            self.by_client.insert(lease.client.clone(), lease.ip);
        }
        self.by_mac.entry(lease.mac).or_default().insert(lease.ip);
        if let Some(old) = self.by_ip.insert(lease.ip, lease)
            && old.mac != self.by_ip[&old.ip].mac
        {
            self.unindex_mac(old.mac, old.ip);
        }
    }

    fn unindex_mac(&mut self, mac: Mac, ip: Ipv4Addr) {
        if let Some(ips) = self.by_mac.get_mut(&mac) {
            ips.remove(&ip);
            if ips.is_empty() {
                self.by_mac.remove(&mac);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leases(start: u8, end: u8) -> Leases {
        Leases::new(vec![Pool::new(
            "198.18.0.0/24".parse().unwrap(),
            (
                Ipv4Addr::new(198, 18, 0, start),
                Ipv4Addr::new(198, 18, 0, end),
            ),
            None,
        )])
    }
    fn id(n: u8) -> ClientId {
        ClientId(vec![1, 2, 0, 0, 0, 0, n])
    }
    const MAC: Mac = Mac([2, 0, 0, 0, 0, 1]);
    const NONE: fn(Ipv4Addr) -> bool = |_| false;

    #[test]
    fn offer_then_lease_keeps_the_address_and_others_get_another() {
        let mut l = leases(10, 11);
        let a = l.pick(0, &id(1), None, 100, NONE).unwrap();
        l.offer(a, &id(1), MAC, 100);
        let b = l.pick(0, &id(2), Some(a), 100, NONE).unwrap();
        assert_ne!(a, b, "an offered address is held");
        l.offer(b, &id(2), MAC, 100);
        // Pool exhausted: the oldest offer yields to a newcomer (offers are promises).
        assert!(matches!(l.pick(0, &id(3), None, 100, NONE), Some(ip) if ip == a || ip == b));
        assert_eq!(
            l.pick(0, &id(1), None, 101, NONE),
            Some(a),
            "same client, same address"
        );
        l.commit(a, &id(1), MAC, None, 101, 3600);
        // Only b is on offer now: a newcomer takes it, never a's lease.
        assert_eq!(l.pick(0, &id(3), None, 102, NONE), Some(b));
        // b's offer runs out: someone else may have it.
        assert_eq!(
            l.pick(0, &id(3), None, 100 + OFFER_HOLD_SECS + 1, NONE),
            Some(b)
        );
        // a's lease does not run out that soon.
        assert!(!l.free_for(a, &id(3), 200));
        assert!(l.free_for(a, &id(3), 101 + 3600));
    }

    #[test]
    fn released_is_free_and_declined_is_on_probation() {
        let mut l = leases(10, 10);
        let a = Ipv4Addr::new(198, 18, 0, 10);
        l.commit(a, &id(1), MAC, None, 0, 3600);
        assert_eq!(
            l.end(a, &id(2), LeaseState::Released, 5),
            None,
            "not its lease"
        );
        l.end(a, &id(1), LeaseState::Released, 5).unwrap();
        assert_eq!(l.pick(0, &id(2), None, 6, NONE), Some(a));
        l.commit(a, &id(2), MAC, None, 6, 3600);
        l.end(a, &id(2), LeaseState::Declined, 7).unwrap();
        assert_eq!(
            l.pick(0, &id(2), None, 8, NONE),
            None,
            "declined: probation"
        );
        assert_eq!(
            l.pick(0, &id(3), None, 8 + DECLINE_PROBATION_SECS, NONE),
            Some(a)
        );
    }

    #[test]
    fn a_client_that_moves_gives_up_its_old_address() {
        let (a, b) = (Ipv4Addr::new(198, 18, 0, 10), Ipv4Addr::new(198, 18, 0, 11));
        let mut l = leases(10, 11);
        l.commit(a, &id(1), MAC, None, 0, 3600);
        // An offer of another address in between does not hide the old lease.
        l.offer(b, &id(1), MAC, 4);
        l.commit(b, &id(1), MAC, None, 5, 3600);
        assert!(l.live(a, 6).is_none(), "the old address has no holder");
        assert_eq!(l.live(b, 6).map(|x| x.ip), Some(b));
        assert!(l.free_for(a, &id(2), 6));
        // The store still holds both as leased: restored oldest first, the same result.
        let mut again = leases(10, 11);
        let mut old = l.get(a).unwrap().clone();
        old.state = LeaseState::Leased;
        old.expires = 3600;
        again.restore(old);
        again.restore(l.get(b).unwrap().clone());
        assert!(again.live(a, 6).is_none());
        assert!(again.live(b, 6).is_some());
        // Released and expired leases have no holder either.
        l.end(b, &id(1), LeaseState::Released, 7).unwrap();
        assert!(l.live(b, 8).is_none());
        l.commit(a, &id(2), MAC, None, 8, 10);
        assert!(l.live(a, 17).is_some() && l.live(a, 18).is_none());
    }

    #[test]
    fn one_mac_holds_a_bounded_number_and_offers_yield_when_exhausted() {
        let mut l = leases(10, 20);
        // One MAC under many client identifiers: at most 3 at once.
        for n in 0..11 {
            l.bound_mac(MAC, &id(n), 3, 100 + u64::from(n));
            let ip = l.pick(0, &id(n), None, 100, NONE).unwrap();
            l.commit(ip, &id(n), MAC, None, 100 + u64::from(n), 3600);
        }
        let held = l.iter().filter(|x| x.active(200) && x.mac == MAC).count();
        assert_eq!(held, 3);
        // The pool on offer to others: a newcomer takes the oldest offer.
        let other = Mac([2, 0, 0, 0, 0, 2]);
        for n in 20..40 {
            if let Some(ip) = l.pick(0, &id(n), None, 100 + u64::from(n), NONE) {
                l.offer(ip, &id(n), other, 100 + u64::from(n));
            }
        }
        let newcomer = l.pick(0, &id(99), None, 150, NONE).unwrap();
        assert_eq!(l.get(newcomer).unwrap().state, LeaseState::Offered);
        l.offer(newcomer, &id(99), other, 150);
        l.commit(newcomer, &id(99), other, None, 150, 3600);
        // Leases are never taken: only offers yield.
        let leased = l.iter().filter(|x| x.state == LeaseState::Leased).count();
        assert_eq!(leased, 3 + 1);
    }

    #[test]
    fn offers_taken_back_are_remembered_within_a_bound() {
        let mut l = leases(10, 11);
        // Twice the bound of made-up clients through a two-address pool.
        for n in 0..2 * YIELDED_MAX as u32 {
            let client = ClientId(n.to_be_bytes().to_vec());
            let ip = l.pick(0, &client, None, 100, NONE).unwrap();
            l.offer(ip, &client, MAC, 100);
        }
        assert_eq!(l.yielded.len(), YIELDED_MAX);
        // The latest are kept: the last client whose offer was taken may still claim it.
        let last = ClientId((2 * YIELDED_MAX as u32 - 3).to_be_bytes().to_vec());
        let &(ip, _) = l.yielded.get(&last).unwrap();
        assert!(l.free_for(ip, &last, 101));
        // Not once its offer would have run out, while another's offer is live.
        l.offer(ip, &id(1), MAC, 150);
        assert!(l.free_for(ip, &last, 100 + OFFER_HOLD_SECS - 1));
        assert!(!l.free_for(ip, &last, 100 + OFFER_HOLD_SECS));
        // Never a lease.
        l.commit(ip, &id(1), MAC, None, 150, 3600);
        assert!(!l.free_for(ip, &last, 101));
    }

    #[test]
    fn a_pool_on_offer_costs_a_bounded_scan_per_discover() {
        // A /16 pool, every address on offer to a made-up MAC.
        let mut l = Leases::new(vec![Pool::new(
            "198.18.0.0/16".parse().unwrap(),
            (
                Ipv4Addr::new(198, 18, 1, 0),
                Ipv4Addr::new(198, 18, 255, 255),
            ),
            None,
        )]);
        let size = 255 * 256;
        let made_up = |n: u32| ClientId(n.to_be_bytes().to_vec());
        for n in 0..size {
            let ip = l.pick(0, &made_up(n), None, 100, NONE).unwrap();
            l.offer(ip, &made_up(n), MAC, 100);
        }
        assert!(
            l.probes <= u64::from(size) * 2,
            "filling: {} probes",
            l.probes
        );
        // The flood goes on: each DISCOVER looks at a bounded number of addresses (it
        // was the whole pool, 65,280, each), and the steals spread over the pool.
        l.probes = 0;
        let mut stolen = BTreeSet::new();
        for n in size..size + 1000 {
            let ip = l.pick(0, &made_up(n), None, 101, NONE).unwrap();
            l.offer(ip, &made_up(n), MAC, 101);
            stolen.insert(ip);
        }
        assert!(l.probes <= 1000 * 256, "{} probes", l.probes);
        assert_eq!(stolen.len(), 1000, "a steal took a just-stolen offer again");
        // An address that comes free is still found, within a few scans.
        let freed = Ipv4Addr::new(198, 18, 200, 7);
        l.end(
            freed,
            &l.get(freed).unwrap().client.clone(),
            LeaseState::Released,
            101,
        );
        let newcomer = ClientId(vec![0xee]);
        let found = (0..size / 256 + 1)
            .map(|n| {
                let client = if n == 0 {
                    newcomer.clone()
                } else {
                    made_up(size * 2 + n)
                };
                let ip = l.pick(0, &client, None, 102, NONE).unwrap();
                l.offer(ip, &client, MAC, 102);
                ip
            })
            .any(|ip| ip == freed);
        assert!(found, "the released address was never offered");
        // A pool of leases alone is exhausted: nothing to take.
        let mut l = leases(10, 11);
        for n in 0..2 {
            let ip = l.pick(0, &id(n), None, 100, NONE).unwrap();
            l.commit(ip, &id(n), MAC, None, 100, 3600);
        }
        assert_eq!(l.pick(0, &id(9), None, 100, NONE), None);
    }

    #[test]
    fn reserved_and_relay_pools() {
        let mut l = Leases::new(vec![
            Pool::new(
                "198.18.0.0/24".parse().unwrap(),
                (
                    "198.18.0.10".parse().unwrap(),
                    "198.18.0.11".parse().unwrap(),
                ),
                None,
            ),
            Pool::new(
                "198.18.1.0/24".parse().unwrap(),
                (
                    "198.18.1.10".parse().unwrap(),
                    "198.18.1.10".parse().unwrap(),
                ),
                None,
            ),
        ]);
        let fixed: Ipv4Addr = "198.18.0.10".parse().unwrap();
        assert_eq!(
            l.pick(0, &id(1), None, 0, |ip| ip == fixed),
            Some("198.18.0.11".parse().unwrap())
        );
        assert_eq!(l.pool_for("198.18.1.1".parse().unwrap()), Some(1));
        assert_eq!(l.pool_for("198.18.2.1".parse().unwrap()), None);
        assert_eq!(
            l.pick(1, &id(1), None, 0, NONE),
            Some("198.18.1.10".parse().unwrap())
        );
    }
}
