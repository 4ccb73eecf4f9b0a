//! A bounded DHCP flood from thousands of random MACs beside one legitimate client, with
//! what the daemon spent on it: shared by the guard's lab test and `cargo xtask bench
//! flood`.
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{Daemon, Lab, RawSender, frames};

/// How hard and how long to flood.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// At most this many frames…
    pub frames: u64,
    /// …and for at most this long.
    pub time: Duration,
}

/// What a flood run saw.
#[derive(Clone, Debug)]
pub struct Report {
    pub sent: u64,
    pub elapsed: Duration,
    /// The legitimate client's address, if it got one.
    pub leased: Option<String>,
    /// Daemon CPU (user + system) over the flood, as a share of one core.
    pub daemon_cpu: f64,
    /// DHCP messages the daemon processed (its own counter) during the run.
    pub daemon_messages: f64,
    /// Requests the XDP program limited (dropped when enforcing).
    pub limited: f64,
}

impl Report {
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64()
    }
}

fn dhcp_messages(lab: &Lab) -> f64 {
    let m = lab.metrics();
    m.0.lines()
        .filter(|l| l.starts_with("gb10_dhcp_messages_total{"))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// Floods DISCOVERs from random MACs on the client end of `lab` within `budget` while
/// `dhclient` asks for the client end's own lease. `lab` is bare (the client end has no
/// address) and `daemon` serves it.
pub fn run(lab: &Lab, daemon: &Daemon, budget: Budget) -> Report {
    let sender = RawSender::open(&lab.client, &lab.client_if);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let messages_before = dhcp_messages(lab);
    let limited_before = lab.metrics().value("gb10_xdp_rate_limited_total", &[]);
    let cpu_before = crate::cpu_seconds(daemon.pid());
    let start = Instant::now();
    let flood = std::thread::spawn({
        let (stop, sent) = (stop.clone(), sent.clone());
        move || {
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            let mut n = 0;
            while n < budget.frames
                && start.elapsed() < budget.time
                && !stop.load(Ordering::Relaxed)
            {
                // xorshift: a fresh locally administered unicast MAC per frame.
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let b = x.to_le_bytes();
                let mac = [0x02, b[1], b[2], b[3], b[4], b[5]];
                // A full queue is back-pressure, not a failure: count what left.
                if sender
                    .try_send(&frames::dhcp_discover(mac, b[6] as u32))
                    .is_ok()
                {
                    n += 1;
                }
            }
            sent.store(n, Ordering::Relaxed);
        }
    });
    // Give the flood a head start so the legitimate client asks in the middle of it.
    std::thread::sleep(Duration::from_millis(300));
    let (leased, _dhclient) = lab.client.dhclient_once(&lab.client_if, &lab.dir, 20);
    // Keep flooding until the budget is spent, so the CPU figure covers the whole flood.
    let _ = flood.join();
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed();
    let cpu = crate::cpu_seconds(daemon.pid()) - cpu_before;
    Report {
        sent: sent.load(Ordering::Relaxed),
        elapsed,
        leased,
        daemon_cpu: cpu / elapsed.as_secs_f64(),
        daemon_messages: dhcp_messages(lab) - messages_before,
        limited: lab.metrics().value("gb10_xdp_rate_limited_total", &[]) - limited_before,
    }
}
