//! The DHCP responder: direct mode (leases from pools, durable before the ACK) and
//! proxy mode (boot files only, beside the site's DHCP server), on the LAN interface
//! only.
pub mod fuzz;
pub mod handler;
pub mod leases;
mod log;
pub mod server;
pub mod store;
pub mod wire;

pub use self::server::{Dhcp, run};

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use dhcproto::v4::MessageType;
use tracing::info;

use crate::{
    config::{Config, Mode},
    mac::Mac,
    store::Store,
};

/// Most clients tracked individually; beyond it their counts go to one `other` row, so
/// a flood of random MACs cannot grow memory without bound.
pub const MAX_TRACKED_CLIENTS: usize = 65_536;
/// An offer with no REQUEST after this long counts as unanswered.
pub const OFFER_FOLLOW_UP: Duration = Duration::from_secs(10);

/// Message types by metric label, index = type code (0: other).
pub const TYPE_LABELS: [&str; 9] = [
    "other", "discover", "offer", "request", "decline", "ack", "nak", "release", "inform",
];

fn type_index(ty: Option<MessageType>) -> usize {
    match ty.map(u8::from) {
        Some(n @ 1..=8) => usize::from(n),
        _ => 0,
    }
}

/// One client's DHCP counters.
#[derive(Clone, Debug, Default)]
pub struct ClientStats {
    /// Messages received by type.
    pub received: [u64; 9],
    /// Replies sent by type.
    pub sent: [u64; 9],
    /// Offers (direct or proxy) followed by no REQUEST.
    pub offers_unanswered: u64,
    /// The last offer still waiting for its REQUEST.
    pending_offer: Option<Instant>,
}

impl ClientStats {
    /// How long the last offer has waited for its REQUEST, when it still waits.
    pub fn offer_waiting(&self, now: Instant) -> Option<Duration> {
        self.pending_offer.map(|t| now.duration_since(t))
    }

    /// Unanswered offers including a pending one older than [`OFFER_FOLLOW_UP`].
    pub fn unanswered(&self, now: Instant) -> u64 {
        self.offers_unanswered
            + u64::from(
                self.pending_offer
                    .is_some_and(|t| now.duration_since(t) > OFFER_FOLLOW_UP),
            )
    }
}

/// Every DHCP counter the responder keeps, read by `/metrics`.
#[derive(Default)]
pub struct Stats {
    pub malformed: [AtomicU64; wire::Malformed::LABELS.len()],
    pub silent: [AtomicU64; handler::Silent::LABELS.len()],
    /// Lease records skipped at start (corrupt, poisoned).
    pub store_skipped: AtomicU64,
    /// Leases restored from the store at start.
    pub restored: AtomicU64,
    /// ACKs not sent because their lease could not be written.
    pub store_failures: AtomicU64,
    clients: Mutex<HashMap<Option<Mac>, ClientStats>>,
}

impl Stats {
    pub fn malformed(&self, why: wire::Malformed) {
        let i = wire::Malformed::LABELS
            .iter()
            .position(|l| *l == why.label())
            .unwrap_or(0);
        self.malformed[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn silent(&self, why: handler::Silent) {
        let i = handler::Silent::LABELS
            .iter()
            .position(|l| *l == why.label())
            .unwrap_or(0);
        self.silent[i].fetch_add(1, Ordering::Relaxed);
    }

    fn with_client(&self, mac: Mac, f: impl FnOnce(&mut ClientStats)) {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let key = if clients.contains_key(&Some(mac)) || clients.len() < MAX_TRACKED_CLIENTS {
            Some(mac)
        } else {
            None
        };
        f(clients.entry(key).or_default());
    }

    /// A message from `mac` arrived.
    pub fn received(&self, mac: Mac, ty: Option<MessageType>) {
        self.with_client(mac, |c| {
            c.received[type_index(ty)] += 1;
            if ty == Some(MessageType::Request) {
                c.pending_offer = None;
            }
        });
    }

    /// A reply to `mac` left. True when it is an offer that replaces one still waiting
    /// for its REQUEST: that one was not answered.
    pub fn sent(&self, mac: Mac, ty: Option<MessageType>) -> bool {
        let mut ignored = false;
        self.with_client(mac, |c| {
            c.sent[type_index(ty)] += 1;
            if ty == Some(MessageType::Offer) {
                // A new offer while the last one still waits: the last one was ignored.
                if c.pending_offer.replace(Instant::now()).is_some() {
                    c.offers_unanswered += 1;
                    ignored = true;
                }
            }
        });
        ignored
    }

    /// Every tracked client (`None`: the overflow row).
    pub fn clients(&self) -> Vec<(Option<Mac>, ClientStats)> {
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = clients.iter().map(|(k, v)| (*k, v.clone())).collect();
        all.sort_by_key(|(k, _)| *k);
        all
    }

    /// One client's counters.
    pub fn client(&self, mac: Mac) -> Option<ClientStats> {
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients.get(&Some(mac)).cloned()
    }
}

/// The lease table: the responder decides and commits in it; `/metrics` and
/// `/explain` read it. Cheap to clone.
#[derive(Clone)]
pub struct LeaseTable(Arc<Mutex<leases::Leases>>);

impl LeaseTable {
    /// The pools of `config` (the LAN's, then the relayed subnets'), with the leases an
    /// earlier run saved in `store` (direct mode: proxy mode leases nothing), counted in
    /// `stats`.
    pub fn open(config: &Config, store: &Store, stats: &Stats) -> Self {
        let mut table = leases::Leases::new(server::pools(config));
        if config.mode == Mode::Direct {
            let (mut loaded, skipped) = store::load(store, &store::log_dir(&config.data_path));
            // Oldest first: a client's newer lease supersedes its older one.
            loaded.sort_by_key(|l| l.expires);
            stats.restored.store(loaded.len() as u64, Ordering::Relaxed);
            stats.store_skipped.store(skipped as u64, Ordering::Relaxed);
            info!(leases = loaded.len(), skipped, "leases restored");
            for lease in loaded {
                table.restore(lease);
            }
        }
        Self(Arc::new(Mutex::new(table)))
    }

    pub fn lock(&self) -> MutexGuard<'_, leases::Leases> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Active leases by state at `now` (unix seconds): offered, leased, declined.
    pub fn counts(&self, now: u64) -> [(leases::LeaseState, u64); 3] {
        use leases::LeaseState as S;
        let mut counts = [(S::Offered, 0), (S::Leased, 0), (S::Declined, 0)];
        for lease in self.lock().iter().filter(|l| l.active(now)) {
            if let Some(c) = counts.iter_mut().find(|(s, _)| *s == lease.state) {
                c.1 += 1;
            }
        }
        counts
    }

    /// Who holds `ip` now: the live lease on it (see [`leases::Lease::live`]).
    pub fn live(&self, ip: std::net::Ipv4Addr, now: u64) -> Option<leases::Lease> {
        self.lock().live(ip, now).cloned()
    }

    /// The address of each client with a live lease at `now`, by MAC (the newest when
    /// one MAC holds several, under different client identifiers).
    pub fn live_by_mac(&self, now: u64) -> HashMap<Mac, std::net::Ipv4Addr> {
        let mut live: Vec<_> = self
            .lock()
            .iter()
            .filter(|l| l.live(now))
            .map(|l| (l.expires, l.mac, l.ip))
            .collect();
        live.sort_unstable();
        live.into_iter().map(|(_, mac, ip)| (mac, ip)).collect()
    }

    /// The address `mac` holds a live lease on (its newest, when several).
    pub fn live_of(&self, mac: Mac, now: u64) -> Option<std::net::Ipv4Addr> {
        self.lock()
            .iter()
            .filter(|l| l.mac == mac && l.live(now))
            .max_by_key(|l| l.expires)
            .map(|l| l.ip)
    }

    /// The newest lease record (any state) of `mac`.
    pub fn of(&self, mac: Mac) -> Option<leases::Lease> {
        self.lock()
            .iter()
            .filter(|l| l.mac == mac)
            .max_by_key(|l| l.expires)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_without_request_are_counted() {
        let s = Stats::default();
        let mac = Mac([2, 0, 0, 0, 0, 1]);
        s.received(mac, Some(MessageType::Discover));
        assert!(!s.sent(mac, Some(MessageType::Offer)));
        s.received(mac, Some(MessageType::Discover));
        assert!(
            s.sent(mac, Some(MessageType::Offer)),
            "the first offer went unanswered"
        );
        let c = s.client(mac).unwrap();
        assert!(c.offer_waiting(Instant::now()).is_some());
        assert_eq!(c.offers_unanswered, 1);
        assert_eq!(c.received[1], 2);
        s.received(mac, Some(MessageType::Request));
        let c = s.client(mac).unwrap();
        assert_eq!(c.unanswered(Instant::now() + OFFER_FOLLOW_UP * 2), 1);
        assert_eq!(c.offer_waiting(Instant::now()), None);
    }
}
