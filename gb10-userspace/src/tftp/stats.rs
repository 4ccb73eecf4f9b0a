//! TFTP counters per client IP and the live-session gauge, read by `/metrics`.
//!
//! Keyed by client IP, not MAC: a UDP socket sees addresses only (the MAC is looked up
//! for client events, but counters must not depend on the neighbour table).
use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

/// Distinct client IPs tracked; beyond this, new clients are counted under 0.0.0.0 so
/// a flood of spoofed sources cannot grow memory without bound.
pub const MAX_CLIENTS: usize = 4096;

/// Why a transfer ended without completing (the `reason` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Failure {
    BadRequest,
    WriteRefused,
    Busy,
    NotFound,
    Denied,
    Aborted,
    Timeout,
    Io,
}

impl Failure {
    pub const fn label(self) -> &'static str {
        match self {
            Failure::BadRequest => "bad_request",
            Failure::WriteRefused => "write_refused",
            Failure::Busy => "busy",
            Failure::NotFound => "not_found",
            Failure::Denied => "denied",
            Failure::Aborted => "aborted",
            Failure::Timeout => "timeout",
            Failure::Io => "io",
        }
    }
}

/// One client's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Transfers that completed (the last block acknowledged).
    pub transfers: u64,
    /// DATA payload bytes put on the wire, retransmissions included.
    pub bytes: u64,
    /// DATA and OACK packets sent again after a timeout or a partial window.
    pub retransmits: u64,
    /// Requests and transfers that ended without completing, by reason.
    pub errors: BTreeMap<Failure, u64>,
}

/// The counters of the TFTP service.
#[derive(Debug, Default)]
pub struct Stats {
    // An Arc so a session task can hold its slot beyond any borrow of the stats.
    sessions: Arc<AtomicU64>,
    clients: Mutex<BTreeMap<Ipv4Addr, ClientStats>>,
}

/// Counters read at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub sessions: u64,
    pub clients: Vec<(Ipv4Addr, ClientStats)>,
}

/// Holds one place on the session gauge; gives it back when dropped (also on abort).
pub struct SessionSlot(Arc<AtomicU64>);

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Stats {
    /// Updates `client`'s counters.
    pub fn update(&self, client: Ipv4Addr, f: impl FnOnce(&mut ClientStats)) {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let key = if clients.len() >= MAX_CLIENTS && !clients.contains_key(&client) {
            Ipv4Addr::UNSPECIFIED
        } else {
            client
        };
        f(clients.entry(key).or_default());
    }

    /// Counts a failure for `client`.
    pub fn failed(&self, client: Ipv4Addr, why: Failure) {
        self.update(client, |c| *c.errors.entry(why).or_default() += 1);
    }

    /// Sessions running now.
    pub fn sessions(&self) -> u64 {
        self.sessions.load(Ordering::Relaxed)
    }

    /// Takes a place on the session gauge whatever the cap: for a request that replaces
    /// a session being ended (its place comes back as it ends).
    pub fn start(&self) -> SessionSlot {
        self.sessions.fetch_add(1, Ordering::Relaxed);
        SessionSlot(self.sessions.clone())
    }

    /// Takes a place on the session gauge when fewer than `max` are taken.
    pub fn try_start(&self, max: usize) -> Option<SessionSlot> {
        self.sessions
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max as u64).then_some(n + 1)
            })
            .ok()
            .map(|_| SessionSlot(self.sessions.clone()))
    }

    pub fn snapshot(&self) -> Snapshot {
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        Snapshot {
            sessions: self.sessions(),
            clients: clients.iter().map(|(ip, c)| (*ip, c.clone())).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauge_caps_and_returns() {
        let stats = Stats::default();
        let a = stats.try_start(2).unwrap();
        let _b = stats.try_start(2).unwrap();
        assert!(stats.try_start(2).is_none());
        drop(a);
        assert_eq!(stats.sessions(), 1);
        assert!(stats.try_start(2).is_some());
    }

    #[test]
    fn clients_are_bounded() {
        let stats = Stats::default();
        for i in 0..(MAX_CLIENTS as u32 + 10) {
            stats.failed(Ipv4Addr::from(0xc612_0000 + i), Failure::NotFound);
        }
        let snap = stats.snapshot();
        assert_eq!(snap.clients.len(), MAX_CLIENTS + 1);
        let other = &snap.clients[0];
        assert_eq!(other.0, Ipv4Addr::UNSPECIFIED);
        assert_eq!(other.1.errors[&Failure::NotFound], 10);
    }
}
