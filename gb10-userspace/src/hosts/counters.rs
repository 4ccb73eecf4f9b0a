//! The XDP program's per-client counters as the fleet view shows them: the map walked at
//! most once per [`MAX_AGE`], whatever the number of lists and streams reading it.
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use gb10_common::{ClientCounters, Kind};
use serde::Serialize;

use crate::{
    mac::Mac,
    xdp::{LanXdp, ktime_now_ns, ktime_to_unix},
};

/// How old a walk of the map may be when a list or a stream tick reuses it. A full map
/// is [`gb10_common::CLIENTS_MAX`] lookups (tens of milliseconds); without the cache
/// every list, and every tick of every open stream, would walk it.
pub const MAX_AGE: Duration = Duration::from_secs(1);

/// One client's counters as the rows carry them, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Frames of every kind from this MAC.
    pub frames: u64,
    /// Frames by kind (DHCP to port 67, proxy DHCP to 4011, TFTP, anything else).
    pub dhcp: u64,
    pub proxy_dhcp: u64,
    pub tftp: u64,
    pub other: u64,
    pub bytes: u64,
    /// Frames whose IPv4/UDP/DHCP/TFTP headers were malformed.
    pub malformed: u64,
    /// Requests over the client's rate (dropped when the guard enforces).
    pub rate_limited: u64,
    /// DHCP frames naming another client in `chaddr`.
    pub forged: u64,
    /// Unix ms of its last frame; `None` when the program has not seen it (never, or
    /// evicted from its bounded table).
    pub last_frame_ms: Option<u64>,
}

impl From<&ClientCounters> for Counters {
    fn from(c: &ClientCounters) -> Self {
        let kind = |k: Kind| c.packets[k as usize];
        Self {
            frames: c.packets.iter().sum(),
            dhcp: kind(Kind::Dhcp),
            proxy_dhcp: kind(Kind::ProxyDhcp),
            tftp: kind(Kind::Tftp),
            other: kind(Kind::Other),
            bytes: c.bytes.iter().sum(),
            malformed: c.malformed,
            rate_limited: c.limited,
            forged: c.forged,
            last_frame_ms: (c.last_seen_ns > 0)
                .then(|| (ktime_to_unix(c.last_seen_ns) * 1000.0) as u64),
        }
    }
}

/// The whole map at one moment.
pub struct Walk {
    /// `bpf_ktime_get_ns` when the walk started: an entry changed after it has a later
    /// last frame, so the next walk finds it (see [`Walk::changed`]).
    pub started_ns: u64,
    read_at: Instant,
    by_mac: HashMap<Mac, (Counters, u64)>,
}

impl Walk {
    fn read(xdp: &LanXdp) -> Self {
        let (read_at, started_ns) = (Instant::now(), ktime_now_ns());
        let by_mac = xdp
            .clients()
            .iter()
            .map(|(k, c)| (Mac(k.addr), (Counters::from(c), c.last_seen_ns)))
            .collect();
        Self {
            started_ns,
            read_at,
            by_mac,
        }
    }

    /// A client's counters: zeros when the program has none for it.
    pub fn get(&self, mac: Mac) -> Counters {
        self.by_mac.get(&mac).map(|(c, _)| *c).unwrap_or_default()
    }

    /// The clients whose last frame came at or after `after_ns` (every one for `None`),
    /// oldest change first, with that frame's `bpf_ktime_get_ns`.
    pub fn changed(&self, after_ns: Option<u64>) -> Vec<(Mac, Counters, u64)> {
        let mut v: Vec<(Mac, Counters, u64)> = self
            .by_mac
            .iter()
            .filter(|(_, (_, seen))| after_ns.is_none_or(|a| *seen >= a))
            .map(|(m, (c, seen))| (*m, *c, *seen))
            .collect();
        v.sort_unstable_by_key(|(m, _, seen)| (*seen, *m));
        v
    }
}

/// The counters reader the admin routes share.
pub struct XdpCounters {
    xdp: Option<Arc<LanXdp>>,
    /// The newest walk. Held across a walk, so readers that find it stale wait for the
    /// one walk under way rather than each starting their own.
    cache: tokio::sync::Mutex<Option<Arc<Walk>>>,
}

impl XdpCounters {
    /// `None`: XDP is not attached, and every row says its counters are unavailable.
    pub fn new(xdp: Option<Arc<LanXdp>>) -> Self {
        Self {
            xdp,
            cache: tokio::sync::Mutex::new(None),
        }
    }

    pub fn attached(&self) -> bool {
        self.xdp.is_some()
    }

    /// The newest walk, read again when older than [`MAX_AGE`]; `None` without XDP.
    pub async fn walk(&self) -> Option<Arc<Walk>> {
        let xdp = self.xdp.clone()?;
        let mut cache = self.cache.lock().await;
        if let Some(walk) = cache.as_ref().filter(|w| w.read_at.elapsed() < MAX_AGE) {
            return Some(walk.clone());
        }
        // Blocking syscalls, one per entry: off the async workers.
        let walk = Arc::new(
            tokio::task::spawn_blocking(move || Walk::read(&xdp))
                .await
                .ok()?,
        );
        *cache = Some(walk.clone());
        Some(walk)
    }

    /// One client's counters, read now (a single lookup); `None` without XDP.
    pub fn one(&self, mac: Mac) -> Option<Counters> {
        let xdp = self.xdp.as_ref()?;
        Some(
            xdp.client(mac.0)
                .map(|c| Counters::from(&c))
                .unwrap_or_default(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_sum_kinds_and_name_them() {
        let mut c = ClientCounters::default();
        c.packets[Kind::Dhcp as usize] = 4;
        c.packets[Kind::Tftp as usize] = 10;
        c.packets[Kind::Other as usize] = 1;
        c.bytes = [400, 0, 9000, 60];
        c.malformed = 2;
        c.limited = 3;
        let n = Counters::from(&c);
        assert_eq!(
            (n.frames, n.dhcp, n.proxy_dhcp, n.tftp, n.other, n.bytes),
            (15, 4, 0, 10, 1, 9460)
        );
        assert_eq!((n.malformed, n.rate_limited, n.forged), (2, 3, 0));
        // Never seen by the program: no time, not the epoch.
        assert_eq!(n.last_frame_ms, None);
        let json = serde_json::to_value(n).unwrap();
        assert_eq!(json["rate_limited"], 3, "{json}");
    }

    #[test]
    fn changed_is_oldest_first_and_bounded_by_time() {
        let mac = |n| Mac([2, 0, 0, 0, 0, n]);
        let walk = Walk {
            started_ns: 50,
            read_at: Instant::now(),
            by_mac: [(mac(1), 30), (mac(2), 10), (mac(3), 20)]
                .into_iter()
                .map(|(m, seen)| (m, (Counters::default(), seen)))
                .collect(),
        };
        let order = |after| {
            walk.changed(after)
                .iter()
                .map(|(m, ..)| m.0[5])
                .collect::<Vec<_>>()
        };
        assert_eq!(order(None), [2, 3, 1]);
        assert_eq!(order(Some(20)), [3, 1]);
        assert_eq!(order(Some(31)), Vec::<u8>::new());
        assert_eq!(walk.get(mac(9)), Counters::default());
    }
}
